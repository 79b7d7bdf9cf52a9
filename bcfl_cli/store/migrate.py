"""The bridge to Alembic: find the migrations, upgrade a store, refuse one from the future.

In a source checkout the scripts live in the top-level ``migrations/``; in an installed wheel
they are packaged as ``bcfl_cli/_migrations`` (hatch force-include), so an installed ``bcfl``
can create and upgrade its store without a checkout. No ``alembic.ini`` is involved.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from bcfl_cli.errors import StoreError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


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
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migration scripts found")
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> str:
    """Bring the schema to the head revision inside the caller's transaction.

    A store written by a newer bcfl (a revision this one does not know) is refused rather than
    guessed at: its rows may mean things this code cannot check.
    """
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
