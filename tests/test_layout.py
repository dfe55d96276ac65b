"""The shape of the code base: imports go lvm_base <- tokenizer <- data_builders <- lvm, library code never imports the
CLI, no module imports itself back through others, and no file grows past one job's size.

Imports are read from the source (ast), function-level ones included, so a lazy import that closes a
circle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lvm_base", "tokenizer", "data_builders", "lvm")
RANK = {p: i for i, p in enumerate(PACKAGES)}  # a package may import only packages of lower or equal rank
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that module `name` imports (a `from pkg import sub` of a submodule names the sub)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import lvm.eval.tasks.run as x` names a module; trim attributes
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_packages_import_downward_only():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if RANK[b.split(".")[0]] > RANK[a.split(".")[0]]]
    assert not bad, "upward imports (lvm_base <- tokenizer <- data_builders <- lvm): " + ", ".join(sorted(bad))


def test_library_code_never_imports_the_cli():
    cli = ("lvm.cli", "lvm.commands", "lvm.__main__")
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if not a.startswith(cli) and b.startswith(cli)]
    assert not bad, "library modules importing the CLI: " + ", ".join(sorted(bad))


def test_no_import_circles():
    graph = _graph()
    circles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not circles, "import circles: " + "; ".join(circles)


def test_files_keep_to_one_job_size():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_walker_sees_circles_and_upward_imports(tmp_path):
    """The checks above would pass vacuously if the walker missed imports; it must see these."""
    pkg = tmp_path / "tokenizer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from tokenizer.a import x\n    import lvm.tokens\n")
    known = {"tokenizer", "tokenizer.a", "tokenizer.b", "lvm", "lvm.tokens"}
    assert _imports("tokenizer.a", pkg / "a.py", known) == {"tokenizer.b"}
    assert _imports("tokenizer.b", pkg / "b.py", known) == {"tokenizer.a", "lvm.tokens"}
