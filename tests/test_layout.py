"""The package structure stays as docs/architecture.md draws it: imaginet_train depends on
imaginet_shards and never the other way round, neither package imports tests or tools, and no
module imports itself back through a cycle (imports inside functions count too)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("imaginet_shards", "imaginet_train")
# imaginet_shards' subpackages, lowest first: a module may import its own layer and those below.
LAYERS = (
    ("env", "errors", "cli_common", "procs", "format"),
    ("io", "codecs"),
    ("augment",),
    ("loaders",),
    ("ops", "sample"),
    ("bench",),
    ("cli", "__init__", "__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_shards_never_imports_train_tests_or_tools():
    offenders = {name: sorted(m for m in imports_of(path) if m.split(".")[0] in
                              {"imaginet_train", "tests", "tools", "helpers", "conftest"})
                 for name, path in ((module_name(p), p) for p in (REPO / "imaginet_shards").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_train_never_imports_tests_or_tools():
    for path in (REPO / "imaginet_train").rglob("*.py"):
        assert not {m.split(".")[0] for m in imports_of(path)} & {"tests", "tools", "helpers", "conftest"}, path


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_shards_subpackages_depend_downwards():
    upward = sorted((name, target) for name, targets in graph().items()
                    if name.startswith("imaginet_shards.") for target in targets
                    if target.startswith("imaginet_shards.") and layer(target) > layer(name))
    assert upward == []


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycle_finder(edges, expected):
    assert cycles(edges) == expected


def test_modules_stay_small():
    sizes = {module_name(p): len(p.read_text().splitlines())
             for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_public_api_resolves(package):
    """Every name in `__all__` resolves, and the package is marked typed."""
    module = importlib.import_module(package)
    assert all(getattr(module, name) is not None for name in module.__all__)
    assert (REPO / package / "py.typed").is_file()
