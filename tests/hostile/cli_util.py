"""What every hostile-input test checks: the real CLI run in process, a refusal that is one `error:` line
naming the file and the problem with no traceback, and inputs left byte for byte as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys, *args) -> tuple[int, str, str]:
    """`lvm ARGS` in this process: (exit code, stdout, stderr); argparse's errors exit as in the executable."""
    from lvm.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(*roots) -> dict[str, str]:
    """sha256 of every file under `roots` (or of each root that is a file), by path."""
    files = [f for r in map(Path, roots) for f in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def assert_one_line_error(rc, err: str, *names) -> str:
    """Exit 2 with one `error: ...` line that names each of `names`; returns that line."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]
