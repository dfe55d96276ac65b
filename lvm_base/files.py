"""Atomic file writing: a reader (or a killed job's rerun) never sees a half-written file.

Every file appears with the mode a plain `open(path, "w")` would give it (0o666 less the umask), set on
the temp file just before the rename: `mkstemp` makes it private (0600), some writers replace it with
their own private temp file (safetensors' `save_file` does), and a rename keeps the mode, so without this
another user or a web server could not read what lvm wrote. `give_normal_modes` does the same for a
directory that is written whole and then renamed into place (checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux /proc), since setting it
    to read it (`os.umask`) briefly changes the mode of files that other threads create meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed.

    The temp file keeps the final suffix so writers that infer the format from it (PIL, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def give_normal_modes(root: str | os.PathLike) -> None:
    """Give every regular file under `root` the mode `open(path, "w")` would (call before renaming a
    directory that writers such as safetensors filled into place). Links are not followed."""
    mode = file_mode()
    for folder, _, files in os.walk(root):
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
