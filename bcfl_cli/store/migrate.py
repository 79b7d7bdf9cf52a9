"""The bridge to Alembic: find the migrations, upgrade a store, refuse one from the future.

In a source checkout the scripts live in the top-level ``migrations/``; in an installed wheel
they are packaged as ``bcfl_cli/_migrations`` (hatch force-include), so an installed ``bcfl``
can create and upgrade its store without a checkout. No ``alembic.ini`` is involved.

Alembic is imported only when a store is not at :data:`HEAD_REVISION` (new, older, or from
the future): importing it is ~0.12 CPU-s, a quarter of what ``bcfl verify-chain``, ``log``
and ``inspect`` spend before their first row, and a store at the head needs nothing of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from bcfl_cli.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: The newest migration's revision (``migrations/versions``); a test holds it to Alembic's
#: head, so a new migration without it fails there, never opens a store as current.
HEAD_REVISION = "0002"
#: Alembic's table of the store's revision (its default name; ``migrations/env.py`` keeps it).
_VERSION_TABLE = "alembic_version"


def migrations_dir() -> Path:
    """The packaged copy if present (installed wheel), else the checkout's ``migrations/``."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise StoreError(
        "the ledger's migration scripts are missing from this installation",
        hint="reinstall bcfl (the wheel ships them as bcfl_cli/_migrations)",
    )


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migration scripts found")
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> str:
    """Bring the schema to the head revision inside the caller's transaction.

    A store written by a newer bcfl (a revision this one does not know) is refused rather than
    guessed at: its rows may mean things this code cannot check.
    """
    if _at_head(connection):
        return HEAD_REVISION
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    current = current_revision(connection)
    head = script.get_current_head()
    if current is not None:
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise StoreError(
                f"the store's schema revision {current!r} is newer than this bcfl knows "
                f"(latest known: {head!r})",
                hint="upgrade bcfl to open this store",
            )
    if current != head:
        command.upgrade(config, "head")
    return head or ""


def _at_head(connection: Connection) -> bool:
    """Whether the store records exactly :data:`HEAD_REVISION`, read without Alembic (one
    row of its version table; anything else, no table included, goes through Alembic)."""
    if not inspect(connection).has_table(_VERSION_TABLE):
        return False
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    return [tuple(row) for row in rows] == [(HEAD_REVISION,)]
