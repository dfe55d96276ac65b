"""Checkpoint specs that name a Hugging Face hub repository instead of a local directory.

`resolve_checkpoint(spec)` turns what a user typed after `--model` / `--tokenizer` into a local path:
- a path that exists is returned as is (a local directory always wins over a hub id of the same spelling);
- `owner/name`, `owner/name/sub/folder`, `owner/name@revision[/sub/folder]` (the `hf://` URI order) go through
  `huggingface_hub.snapshot_download`, i.e. the Hugging Face cache (HF_HUB_CACHE / HF_HOME); with
  HF_HUB_OFFLINE=1 that is the cache alone. The result is the snapshot directory, or the folder inside it;
- anything else is a local path that is not there: it comes back as is, so that the loader, which knows the
  layout it expects, says what is missing in its own words.

Whatever goes wrong on the hub side is one `InputError` line naming the spec and what to do.

This module imports `huggingface_hub` only when a hub id is resolved, so local loads never pay for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from .errors import InputError

# owner/name as the hub spells them (letters, digits, '-', '_', '.'; starting with a letter or digit),
# then an optional @revision (no '/'; a branch such as refs/pr/1 is written refs%2Fpr%2F1), then an
# optional folder inside the repository. Absolute paths, ./ ../ ~ and backslashes never match.
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
                     r"(?:@(?P<revision>[^/@\s]+))?"
                     r"(?:/(?P<sub>[\w.-]+(?:/[\w.-]+)*))?/?")


def _parse(spec: str) -> tuple[str, str | None, str | None] | None:
    """(repo id, revision, subfolder) of a hub id, or None when `spec` cannot be one."""
    m = _HUB_ID.fullmatch(spec)
    if m is None:
        return None
    repo, sub = m["repo"], m["sub"]
    # The hub refuses '--' and '..' in repo ids; a '.' or '..' folder would leave the snapshot.
    if "--" in repo or ".." in repo or repo.endswith((".", "-")):
        return None
    if sub is not None and any(part in (".", "..") for part in sub.split("/")):
        return None
    return repo, unquote(m["revision"]) if m["revision"] else None, sub


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's own base errors (huggingface_hub re-raises a proxy error as is); connection
    errors that are OSErrors are caught as such."""
    out = []
    for name in ("httpx2", "httpx"):
        try:
            out.append(__import__(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def resolve_checkpoint(spec: str | os.PathLike, kind: str = "model", *, cache_dir: str | os.PathLike | None = None
                       ) -> Path:
    """The local path of checkpoint `spec` ("model" | "tokenizer" is `kind`, used in messages).

    An existing path, or a spec that cannot be a hub id, is returned as `Path(spec)`. A hub id
    `owner/name[@revision][/sub/folder]` resolves through the Hugging Face cache (`cache_dir`, default
    HF_HUB_CACHE), downloading what is missing unless HF_HUB_OFFLINE=1; only `sub/folder` is fetched when
    one is given. Raises a one-line `InputError` when the id is neither cached nor reachable, or the folder
    is not in the snapshot.
    """
    text = os.fspath(spec)
    path = Path(text)
    if path.exists():
        return path
    parsed = _parse(text)
    if parsed is None:
        return path
    repo, revision, sub = parsed

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                       OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    from .errors import one_line

    try:  # newer huggingface_hub: a cached snapshot that a cut-short download left partial
        from huggingface_hub.errors import IncompleteSnapshotError
    except ImportError:
        IncompleteSnapshotError = ()
    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    where = f"{repo}@{revision}" if revision else repo
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, library_name="lvm",
                                          allow_patterns=[sub, f"{sub}/*"] if sub else None))
    except RevisionNotFoundError:
        raise InputError(f"{text}: the hub repository {repo} has no revision {revision!r}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise InputError(f"{text}: not a local path, and the hub has no {kind} repository {repo} that this "
                         f"login can read (check the id; for a private or gated one run 'hf auth login')") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if isinstance(e, IncompleteSnapshotError):
            raise InputError(f"{text}: the cached snapshot of {where} in {cache} is incomplete; "
                             f"download it again with network access ('hf download {repo}')") from None
        if offline:
            raise InputError(f"{text}: not a local path and not in the Hugging Face cache {cache} "
                             f"(offline: HF_HUB_OFFLINE=1); download it with network access ('hf download "
                             f"{repo}'), set HF_HUB_CACHE to the cache that holds it, or unset HF_HUB_OFFLINE"
                             ) from None
        cause = e.__cause__ or e
        raise InputError(f"{text}: not a local path, not in the Hugging Face cache {cache}, and the hub cannot "
                         f"be reached ({type(cause).__name__}: {one_line(cause)[:160]}); check the network, or "
                         f"set HF_HUB_CACHE to the cache that holds it") from None
    except HFValidationError as e:
        raise InputError(f"{text}: not a local path, and not a valid hub id ({one_line(e)[:160]})") from None
    except (HfHubHTTPError, OSError, *_transport_errors()) as e:
        raise InputError(f"{text}: not a local path, and fetching {where} from the hub failed "
                         f"({type(e).__name__}: {one_line(e)[:160]}); check the network, or set "
                         f"HF_HUB_OFFLINE=1 to use the cache {cache} alone") from None
    if sub is None:
        return snapshot
    target = snapshot / sub
    if not target.exists():
        # The repositories' layouts are not documented: show what is there to pick from.
        # Online, a folder that matches no file leaves no snapshot directory at all.
        top = sorted(p.name + ("/" if p.is_dir() else "") for p in snapshot.iterdir()) if snapshot.is_dir() else []
        shown = ", ".join(top[:12]) + (f", ... (+{len(top) - 12} more)" if len(top) > 12 else "")
        raise InputError(f"{text}: no {sub} in the snapshot of {where} ({snapshot}); "
                         f"the cached snapshot's top level holds: {shown or 'nothing'}")
    return target


__all__ = ["resolve_checkpoint"]
