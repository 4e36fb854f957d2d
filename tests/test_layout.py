"""The package's shape, as issue 26 set it: no import circles, nothing imports the CLI, every
module short enough to read in one sitting, and constants documented in a line or three (the
measurements behind a default live in docs/*.md, not in its docstring)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jdm"
MAX_LINES = {"__main__.py": 400, "train.py": 500}  # the rest: DEFAULT_MAX
DEFAULT_MAX = 500
MAX_CONSTANT_DOC = 3


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The jdm modules ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules()}
    return found - {name}


def test_no_import_circles():
    graph = {name: imports_of(name, path) for name, path in modules().items()
             if not name.endswith("__init__")}
    graph = {k: {v for v in vs if v in graph} for k, vs in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = {tuple(c) for c in map(cycle_from, graph) if c}
    assert not circles, f"import circles: {sorted(circles)}"


def test_only_the_cli_imports_the_cli():
    """The CLI (``jdm.cli``, run by ``jdm/__main__.py``) parses, calls and prints: the package,
    the benchmarks, the tools and the notebooks call the package, never the CLI."""
    cli = {name for name in modules() if name == "jdm.__main__" or name.startswith("jdm.cli.")
           or name == "jdm.cli"}
    users = [name for name, path in modules().items()
             if name not in cli and imports_of(name, path) & cli]
    scripts = [p for folder in ("benchmarks", "tools") for p in (ROOT / folder).rglob("*.py")]
    scripts += list((ROOT / "notebooks").glob("*.ipynb"))
    users += [str(p.relative_to(ROOT)) for p in scripts
              if re.search(r"(from|import) jdm(\.cli\b|\.__main__)", p.read_text())]
    assert not users, f"these import the CLI (call the package instead): {users}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_fits_one_sitting(name):
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    limit = MAX_LINES.get(path.name, DEFAULT_MAX)
    assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines (at most {limit})"


def test_constants_have_short_docstrings():
    long = []
    for name, path in modules().items():
        body = ast.parse(path.read_text()).body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                lines = len(after.value.value.strip().splitlines())
                if lines > MAX_CONSTANT_DOC:
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    long.append(f"{name}.{ast.unparse(target)}: {lines} lines")
    assert not long, "constant docstrings over 3 lines (move the measurements to docs/*.md): " \
                     + "; ".join(long)
