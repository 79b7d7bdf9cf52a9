"""No import cycle inside ``bcfl_cli/node/`` (issue 17, item 2).

Every import counts, wherever it stands: at the top, inside a function, or under
``if TYPE_CHECKING:``; a cycle hidden behind one of those is still a cycle between the modules.
The services meet through ``node/interfaces.py`` and are wired in ``node/server.py``, which
nothing else in ``node/`` imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import bcfl_cli.node

NODE = Path(bcfl_cli.node.__file__).parent
PACKAGE = "bcfl_cli.node"


def _module_name(path: Path) -> str:
    parts = path.relative_to(NODE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(NODE.rglob("*.py"))}


def _imported(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports, in any place."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # ``import a.b.c`` runs a, a.b and a.b.c: the deepest known one is the edge
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: set(_imported(path, name, known)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated), or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph.get(name, ())):
            found = visit(target, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_node_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.interfaces" in graph and f"{PACKAGE}.server" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_only_the_wiring_imports_the_wiring() -> None:
    """No service reaches back for the node: ``server`` (``Node``) is imported by no module
    of ``node/``."""
    graph = import_graph()
    importers = sorted(name for name, targets in graph.items() if f"{PACKAGE}.server" in targets)
    assert importers == []


def test_a_hidden_cycle_is_found(tmp_path: Path) -> None:
    """The check sees imports inside functions and under TYPE_CHECKING (what hid the cycle
    between app, server, consensus_driver and sync before issue 17)."""
    graph = {
        "bcfl_cli.node.a": {"bcfl_cli.node.b"},
        "bcfl_cli.node.b": {"bcfl_cli.node.c"},
        "bcfl_cli.node.c": {"bcfl_cli.node.a"},
        "bcfl_cli.node.d": set(),
    }
    a, b, c = (f"{PACKAGE}.{n}" for n in "abc")
    assert find_cycle(graph) == [a, b, c, a]
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bcfl_cli.node.server import Node\n"
        "def later():\n"
        "    from bcfl_cli.node import app\n"
        "    import bcfl_cli.node.sync.helpers\n",
        encoding="utf-8",
    )
    server, app, sync = (f"{PACKAGE}.{n}" for n in ("server", "app", "sync"))
    found = set(_imported(hidden, f"{PACKAGE}.hidden", {server, app, sync, PACKAGE}))
    assert found == {server, app, sync, PACKAGE}
