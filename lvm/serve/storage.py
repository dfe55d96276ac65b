"""The server's own files on disk, capped: uploads/ (re-encoded prompt images), runs/ (results) and the web
cache (where Gradio writes raw uploads and the copies of results it serves), all under the work folder.

    store = Storage(Path("out/serve"), max_bytes=500 * 2**20, max_age_s=24 * 3600)
    store.make_room(len(data))   # prunes the oldest entries; an InputError when it still does not fit
    store.close()                # at shutdown: the temporary folders (uploads, cache) go

Each folder's entries (its immediate children: a file, a run folder, a cache hash folder) are the units that
age and go, oldest first, so a run is never half removed. An entry past the age limit goes at the next
prune, however much room there is; in the cache that limit is at most an hour, since a raw upload there is
needed only until its request has run. Raw uploads are not removed as soon as they are read: two clients
that upload the same bytes share one cache entry, and the second request may still wait in the queue.
Only paths inside these folders are ever removed.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from pathlib import Path

from lvm_base.errors import InputError

MB = 2**20
CACHE_AGE_S = 3600


def _entry_stats(p: Path) -> tuple[float, int]:
    """(newest mtime, bytes) of a file or a whole folder; links are counted, never followed."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return 0.0, 0
    if not p.is_dir() or p.is_symlink():
        return st.st_mtime, st.st_size
    newest, size = st.st_mtime, 0
    for root, _dirs, files in os.walk(p):
        for name in files:
            try:
                s = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed meanwhile by another request
                continue
            newest, size = max(newest, s.st_mtime), size + s.st_size
    return newest, size


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


class Storage:
    """uploads/, runs/ and cache/ under `work`, kept under `max_bytes` and `max_age_s` (see the module)."""

    def __init__(self, work: Path, max_bytes: float = 500 * MB, max_age_s: float = 24 * 3600):
        if not (math.isfinite(max_bytes) and max_bytes >= MB):
            raise InputError(f"--max-disk-mb must be a finite number >= 1, got {max_bytes / MB:g}")
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise InputError(f"--max-age-hours must be a finite number > 0, got {max_age_s / 3600:g}")
        self.work = Path(work).resolve()
        self.uploads, self.runs, self.cache = self.work / "uploads", self.work / "runs", self.work / "cache"
        self.max_bytes, self.max_age_s = int(max_bytes), float(max_age_s)
        # The web layer copies a response's files into the cache after a handler has made room for its own
        # files; an eighth of the cap stays free for them, so the total stays under the cap.
        self.budget = self.max_bytes - self.max_bytes // 8
        self.cache_age_s = min(self.max_age_s, CACHE_AGE_S)
        self._lock = threading.Lock()

    @property
    def roots(self) -> list[Path]:
        return [self.uploads, self.runs, self.cache]

    def entry_of(self, path) -> Path | None:
        """The entry (child of one of the folders) that holds `path`; None for a path outside them."""
        p = Path(path)
        p = Path(os.path.abspath(p.parent)).resolve() / p.name  # folders resolved, a link itself is not
        for root in self.roots:
            if p != root and p.is_relative_to(root):
                return root / p.relative_to(root).parts[0]
        return None

    def _entries(self) -> list[tuple[float, int, Path, float]]:
        """(newest mtime, bytes, path, age limit) of every entry."""
        out = []
        for root in self.roots:
            age = self.cache_age_s if root == self.cache else self.max_age_s
            if root.is_dir():
                for p in root.iterdir():
                    out.append((*_entry_stats(p), p, age))
        return out

    def usage(self) -> int:
        """Bytes in the folders."""
        return sum(e[1] for e in self._entries())

    def prune(self, room: int = 0, keep=()) -> int:
        """Remove entries past the age limit, then the oldest until `room` more bytes fit the budget; the
        entries holding the paths in `keep` stay. Returns the bytes left."""
        kept = {e for e in map(self.entry_of, keep) if e is not None}
        now = time.time()
        with self._lock:
            entries = sorted(self._entries(), key=lambda e: e[0])
            used = sum(e[1] for e in entries)
            for mtime, size, p, max_age in entries:
                if p in kept:
                    continue
                if now - mtime > max_age or used + room > self.budget:
                    _remove(p)
                    used -= size
            return used

    def make_room(self, need: int, keep=(), what: str = "this upload") -> None:
        """Prune so that `need` more bytes fit; an InputError (refused) when they still do not."""
        if need > self.budget or self.prune(need, keep) + need > self.budget:
            raise InputError(f"{what} ({need / MB:.1f} MB) does not fit the server's disk cap of "
                             f"{self.max_bytes / MB:g} MB for uploads and results; try again later or with "
                             "fewer or smaller images")

    def close(self) -> None:
        """At shutdown: the temporary folders go; runs/ stays (pruned by age and the cap at the next start)."""
        for p in (self.uploads, self.cache):
            shutil.rmtree(p, ignore_errors=True)
