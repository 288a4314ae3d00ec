"""The house rules, checked on the source: no import cycles, the domain free of HTTP, thin
handlers that call services rather than the store."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "handlers")


def modules() -> dict[str, Path]:
    """Every module of server/ and handlers/ by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports, type-checking imports included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from server.app import schemas`` imports the module server.app.schemas.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and known[name].name != "__init__.py":
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(edges.get(name, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle(tmp_path):
    """The cycle check itself can fail: two modules importing each other are caught."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from server.b import x\n")
    b.write_text("import server.a\n")
    known = {"server.a": a, "server.b": b}
    assert imports_of(a, known) == {"server.b"} and imports_of(b, known) == {"server.a"}


def test_the_domain_knows_no_http_and_no_handlers():
    for name, path in modules().items():
        if not name.startswith("server."):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("handlers", "tornado.web")), (name, node.module)
                if node.module == "tornado":
                    assert "web" not in {a.name for a in node.names}, name


def test_handlers_call_services_never_the_store():
    for name, path in modules().items():
        if not name.startswith("handlers"):
            continue
        source = path.read_text()
        assert "server.app.store" not in source, name
        assert ".store." not in source, name
