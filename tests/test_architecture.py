"""The import arrows of docs/ARCHITECTURE.md, enforced on every module of ``bcfl_cli/``.

Every ``import`` and ``from ... import`` is read with ``ast`` (those inside functions and under
``TYPE_CHECKING`` too: a lazy import is still an arrow), resolved to the top-level package it
names, and checked against ``ARROWS``: the packages each package may import. ``DEBT`` lists the
arrows the code still has against that table and who removes them; a failure names the file,
the line and the arrow. Third-party libraries are checked the same way where the architecture
makes a promise about them (only ``store`` speaks SQL, ``chain`` never loads torch, ...).

If a change needs an arrow that is not here, the design is asking to be changed, not the
table; a new package gets a row here and a line in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bcfl_cli"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"

#: Imported by everyone: the error base, the package root itself, and the two checks a helper
#: process runs without importing the rest of bcfl (``primitives``: Ed25519, a blob's SHA-256).
BASE = frozenset({"errors", "primitives"})
#: Below the edges: the member's directory layout (a leaf beside ``errors``).
HOME = frozenset({"home"})

#: What each part of bcfl_cli/ may import (besides itself and ``BASE``): the target shape.
ARROWS: dict[str, frozenset[str]] = {
    "__init__": frozenset(),
    "errors": frozenset(),
    # a leaf beside errors: PyNaCl, hashlib and os only (a helper starts it in a fresh process)
    "primitives": frozenset(),
    "home": frozenset(),
    # exactly what PROTOCOL.md specifies (the FL spec types of the genesis included)
    "protocol": frozenset(),
    # the pure Tendermint state machine
    "consensus": frozenset({"protocol"}),
    # the ledger in SQL; the vote guard persists the engine's messages
    "store": frozenset({"protocol", "consensus"}) | HOME,
    # one Chain: opens a home's ledger, replays, imports blocks; never fl
    "chain": frozenset({"protocol", "store"}) | HOME,
    # models, training, aggregation, the contract: no ledger, no HTTP, no SQL
    "fl": frozenset({"protocol"}),
    # the glue of `bcfl train`: the member's Chain, fl on its data, the update written
    "training": frozenset({"chain", "fl", "apps", "store", "protocol"}) | HOME,
    # model apps (issue 18) on top of fl
    "apps": frozenset({"fl", "protocol"}),
    "identity": frozenset({"protocol"}) | HOME,
    "consortium": frozenset({"protocol", "identity", "store", "chain", "fl", "apps"}) | HOME,
    "verify": frozenset({"chain", "store", "protocol", "fl"}),
    "provenance": frozenset({"chain", "protocol", "verify"}),
    # the HTTP shapes shared by client and node
    "wire": frozenset({"protocol"}),
    # the SDK the commands use; never the server package
    "client": frozenset(
        {"wire", "protocol", "chain", "store", "identity", "provenance", "fl", "apps"}
    )
    | HOME,
    # the long-running peer: everything below it, nothing above
    "node": frozenset(
        {
            "protocol",
            "consensus",
            "store",
            "chain",
            "fl",
            "apps",
            "identity",
            "consortium",
            "verify",
            "provenance",
            "wire",
            "client",
            "training",
        }
    )
    | HOME,
    # a local consortium (the harness of bcfl demo, the tests and the benches)
    "demo": frozenset(
        {
            "protocol",
            "consensus",
            "store",
            "chain",
            "fl",
            "apps",
            "identity",
            "consortium",
            "verify",
            "provenance",
            "wire",
            "client",
            "training",
            "node",
        }
    )
    | HOME,
    # `bcfl simulate`: N members in one process on the real rules, never the node
    "simulation": frozenset(
        {"demo", "consortium", "chain", "consensus", "store", "fl", "apps", "training", "protocol"}
    )
    | HOME,
    # the edge: anything of bcfl (its SQL and tensors only through the library, see LIBRARIES)
    "cli": frozenset(
        {
            "protocol",
            "consensus",
            "store",
            "chain",
            "fl",
            "apps",
            "identity",
            "consortium",
            "verify",
            "provenance",
            "wire",
            "client",
            "training",
            "node",
            "demo",
            "simulation",
        }
    )
    | HOME,
}

#: Today's arrows against ARROWS, each with what removes it. The lead deletes a row when the
#: branch that removes the arrow lands (``test_no_debt_row_outlives_its_arrow`` says which).
DEBT: dict[tuple[str, str], str] = {
    ("provenance", "store"): "provenance/build.py reads the ledger; through chain's Chain "
    "once it exists (no branch does it yet)",
}

#: Third-party libraries only some parts may import: library -> the parts that may.
LIBRARIES: dict[str, frozenset[str]] = {
    # "store is the only module with SQL"
    "sqlalchemy": frozenset({"store"}),
    "alembic": frozenset({"store"}),
    "psycopg": frozenset({"store"}),
    "psycopg2": frozenset({"store"}),
    # tensors: the FL engine, model apps, bcfl train, the node's trainer and bcfl simulate;
    # never chain, cli or protocol
    "torch": frozenset({"fl", "apps", "training", "node", "simulation"}),
    "safetensors": frozenset({"fl", "apps"}),
    "numpy": frozenset({"fl", "apps"}),
    # HTTP: the node, the client and the demo's observer
    "starlette": frozenset({"node"}),
    "uvicorn": frozenset({"node"}),
    "aiohttp": frozenset({"node", "client"}),
    "httpx": frozenset({"node", "client", "demo"}),
}


@dataclass(frozen=True)
class Arrow:
    """One import: where it stands and the part (or library) it reaches."""

    where: str  # path:line, from the folder above the package
    source: str
    target: str
    module: str


def part_of(path: Path, package: Path = PACKAGE) -> str:
    """The part a file belongs to: its top-level package, or the module's name at the top."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path, package: Path = PACKAGE) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``, relative ones resolved.

    ``from bcfl_cli import fl`` may name a submodule, so each name counts as ``bcfl_cli.NAME``.
    """
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    here = parts[:-1]  # the package a relative import starts from
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if node.module is None or module == package.name:
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            else:
                yield node.lineno, module


def arrows(package: Path = PACKAGE) -> Iterator[Arrow]:
    """Every import of ``package`` that leaves its part: of bcfl, or a library in LIBRARIES."""
    for path in sorted(package.rglob("*.py")):
        source = part_of(path, package)
        for line, module in imported_modules(path, package):
            where = f"{path.relative_to(package.parent)}:{line}"
            top = module.split(".")
            if top[0] == package.name:
                target = top[1] if len(top) > 1 else "__init__"
                if target != source:
                    yield Arrow(where, source, target, module)
            elif top[0] in LIBRARIES:
                yield Arrow(where, source, top[0], module)


def violations(package: Path = PACKAGE) -> list[str]:
    """One line per import against ARROWS (less DEBT) or LIBRARIES: file:line, arrow, rule."""
    found = []
    for arrow in arrows(package):
        head = f"{arrow.where}: {arrow.source} -> {arrow.target} (import {arrow.module})"
        if arrow.target in LIBRARIES:
            owners = LIBRARIES[arrow.target]
            if arrow.source not in owners:
                found.append(f"{head}: only {sorted(owners)} may import {arrow.target}")
            continue
        allowed = ARROWS.get(arrow.source)
        if allowed is None:
            found.append(
                f"{head}: {arrow.source} has no row in tests/test_architecture.py's ARROWS;"
                " give it one, and a line in docs/ARCHITECTURE.md"
            )
        elif arrow.target not in allowed | BASE and (arrow.source, arrow.target) not in DEBT:
            found.append(f"{head}: {arrow.source} may import only {sorted(allowed | BASE)}")
    return found


def test_every_import_follows_the_arrows() -> None:
    found = violations()
    assert not found, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(found)


def test_every_part_of_the_package_has_a_row() -> None:
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(ARROWS), f"parts without a row in ARROWS: {sorted(parts - set(ARROWS))}"


def test_no_debt_row_outlives_its_arrow() -> None:
    """A debt row whose arrow is gone is deleted, so that the arrow cannot come back."""
    present = {(a.source, a.target) for a in arrows()}
    paid = {edge: why for edge, why in DEBT.items() if edge not in present}
    assert not paid, f"arrows no longer in the code; delete their DEBT rows: {paid}"


def test_the_arrows_point_one_way() -> None:
    """No part of the target shape reaches itself through others (DEBT aside)."""

    def reaches(start: str, goal: str, seen: frozenset[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in ARROWS[start] - BASE
        )

    cycles = sorted(part for part in ARROWS if reaches(part, part, frozenset({part})))
    assert not cycles, f"parts on an import cycle in ARROWS: {cycles}"


def test_a_forbidden_import_is_named_by_file_line_and_arrow(tmp_path: Path) -> None:
    """The checker itself, on a made-up package: relative, lazy and library imports count."""
    package = tmp_path / "bcfl_cli"
    (package / "fl").mkdir(parents=True)
    (package / "fl" / "__init__.py").write_text("from . import training\n")
    (package / "fl" / "training.py").write_text(
        "from ..protocol import encoding\n"
        "from bcfl_cli import errors\n"
        "\n"
        "def f():\n"
        "    from ..node import server\n"
        "    import sqlalchemy\n"
    )
    (package / "gadgets").mkdir()
    (package / "gadgets" / "x.py").write_text("import bcfl_cli.fl\n")
    assert violations(package) == [
        "bcfl_cli/fl/training.py:5: fl -> node (import bcfl_cli.node): fl may import only"
        " ['errors', 'primitives', 'protocol']",
        "bcfl_cli/fl/training.py:6: fl -> sqlalchemy (import sqlalchemy): only ['store'] may"
        " import sqlalchemy",
        "bcfl_cli/gadgets/x.py:1: gadgets -> fl (import bcfl_cli.fl): gadgets has no row in"
        " tests/test_architecture.py's ARROWS; give it one, and a line in"
        " docs/ARCHITECTURE.md",
    ]


def _code_block_after(heading: str) -> list[str]:
    """The lines of the first fenced block under ``heading`` in docs/ARCHITECTURE.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```", 2)[1].splitlines()[1:]


def test_the_document_draws_the_same_arrows() -> None:
    """docs/ARCHITECTURE.md's arrow table lists, part by part, what ARROWS allows.

    ``cli`` and ``demo`` say "anything below" in words; every other row names its parts.
    """
    rows: dict[str, str] = {}
    part = ""
    for line in _code_block_after("## The arrows"):
        if line[:1].strip():
            part, _, line = line.partition(" ")
            rows[part] = ""
        rows[part] += " " + re.sub(r"\([^)]*\)", "", line)  # asides in brackets name no arrow
    assert set(rows) == set(ARROWS) - {"__init__", "errors", "home"}
    for part, text in rows.items():
        if part in {"cli", "demo"}:
            continue
        named = set(re.findall(r"[a-z]+", text)) & set(ARROWS)
        assert named - BASE == ARROWS[part], f"docs/ARCHITECTURE.md's row {part}: {text.strip()}"


def test_the_document_has_every_part_in_its_tree() -> None:
    tree = _code_block_after("## Who owns what")
    listed = {line.split()[0].rstrip("/").removesuffix(".py") for line in tree if line[2:3].strip()}
    assert set(ARROWS) - {"__init__"} <= listed, sorted(set(ARROWS) - {"__init__"} - listed)
