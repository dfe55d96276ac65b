"""README.md and docs/ stay true to the code: every `lvm ...` command their code blocks show exists (its
`--help` succeeds) and knows the flags shown with it, every relative link resolves, and every docs page is
reachable from README."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lvm.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\s*$")
# `lvm` as a program: at the start, after whitespace (`-m lvm`, `RANK=0 lvm`) or a path (`.venv/bin/lvm`)
LVM = re.compile(r"(?:^|(?<=[\s/]))lvm\s+(?=(?P<rest>\S.*)$)")  # a lookahead: `a, lvm b` finds both
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _code_lines(page: Path):
    """(line number, text) of the lines of shell-like fenced blocks, continuation lines joined."""
    lang, joined, start = None, "", 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if m:
            lang = None if lang is not None else m.group(1)
            continue
        if lang is None or lang not in SHELL_BLOCKS:
            continue
        joined, start = (joined + " " + line.strip(), start) if joined else (line.strip(), n)
        if joined.endswith("\\"):
            joined = joined[:-1]
            continue
        yield start, joined
        joined = ""


def _words(rest: str) -> tuple[list[str], list[str]]:
    """(command words, --flags) of what follows `lvm` on one line, up to a comment, a pipe or `&&`."""
    rest = re.split(r"\s#|\s&&|\s\||;", rest)[0]
    try:
        tokens = shlex.split(rest)
    except ValueError:  # an unbalanced quote of a wrapping `bash -c '...'`
        tokens = rest.replace("'", " ").split()
    words = []
    for t in (t.rstrip(",") for t in tokens):
        if not re.fullmatch(r"[a-z][a-z0-9-]*", t) or len(words) == 2:
            break
        words.append(t)
        if len(words) == 1 and not isinstance(COMMANDS.get(t, (None, None))[1], dict):
            break  # a leaf command: what follows is its arguments
    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("--")]
    return words, flags


def _commands():
    out = {}
    for page in PAGES:
        for n, line in _code_lines(page):
            for m in LVM.finditer(line):
                words, flags = _words(m.group("rest"))
                if words:
                    where = f"{page.relative_to(ROOT)}:{n}"
                    seen = out.setdefault(" ".join(words), (words, {}, where))[1]
                    for f in flags:
                        seen.setdefault(f, where)
    return out


COMMANDS_SHOWN = _commands()


def test_readme_shows_commands():
    readme = [k for k, (_, _, where) in COMMANDS_SHOWN.items() if where.startswith("README.md")]
    assert {"data build", "data tokenize", "train", "prompt", "demo"} <= set(readme)


@pytest.mark.parametrize("key", sorted(COMMANDS_SHOWN))
def test_every_command_shown_exists_with_its_flags(key, capsys):
    words, flags, where = COMMANDS_SHOWN[key]
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, f"{where}: `lvm {key}` is no command: {err.strip()}"
    missing = [f"{f} ({at})" for f, at in sorted(flags.items()) if f not in ("--help", "--debug")
               and not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", out)]
    assert not missing, f"`lvm {key}` has no {', '.join(missing)} (see `lvm {key} --help`)"


def _links():
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code are code
        for m in LINK.finditer(text):
            target = m.group(1) or m.group(2)
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor of this page
            yield page, target


@pytest.mark.parametrize("page,target", list(_links()),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_every_relative_link_resolves(page, target):
    path = (page.parent / target.split("#", 1)[0]).resolve()
    assert path.exists(), f"{page.relative_to(ROOT)}: link {target} -> {path} does not exist"


def test_every_docs_page_is_linked_from_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for p, t in _links() if p.name == "README.md"}
    pages = set(p.resolve() for p in (ROOT / "docs").glob("*.md"))
    assert not pages - linked, f"docs pages README does not link: {sorted(p.name for p in pages - linked)}"
