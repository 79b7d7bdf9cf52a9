"""Where a home's ledger lives: its SQLite file, or a PostgreSQL database named by a URL.

A member who runs the node on managed infrastructure points the ledger at PostgreSQL with
``--store-url postgresql+psycopg://USER@HOST/DB``. The URL is checked here (two backends, no
others), recorded once in ``HOME/store.url`` (mode 0600: it may carry a password) so that every
later command on that home finds the same store, and shown only with the password masked.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bcfl_cli.errors import StoreError, UsageError
from bcfl_cli.home import Home

#: The drivers each backend runs on; a bare ``postgresql://`` means psycopg 3 (the only
#: PostgreSQL driver bcfl depends on, through its ``postgres`` extra).
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
POSTGRES_DRIVER = "postgresql+psycopg"
_POSTGRES_ALIASES = ("postgresql", "postgres", POSTGRES_DRIVER)


def parse_store_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it, with PostgreSQL on psycopg 3; any other database refused."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise UsageError(
            "--store-url: not a database URL",
            hint="e.g. postgresql+psycopg://bcfl@db.example.org:5432/bcfl",
        ) from exc
    if parsed.drivername in _POSTGRES_ALIASES:
        if not parsed.database:
            raise UsageError(
                f"--store-url {redact(parsed)}: name the database",
                hint="e.g. postgresql+psycopg://bcfl@db.example.org:5432/bcfl",
            )
        return parsed.set(drivername=POSTGRES_DRIVER)
    if parsed.drivername in SQLITE_DRIVERS:
        return parsed
    raise UsageError(
        f"--store-url {redact(parsed)}: unsupported database {parsed.drivername!r}",
        hint="bcfl stores its ledger in SQLite (the default) or PostgreSQL (postgresql+psycopg://)",
    )


def normalise_store_url(url: str) -> str:
    """The canonical text of ``url`` (password kept): what is recorded and connected to."""
    return parse_store_url(url).render_as_string(hide_password=False)


def redact(url: str | URL) -> str:
    """``url`` for messages and logs: the password, if any, replaced by ``***``."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<unreadable store URL>"
    return parsed.render_as_string(hide_password=True)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def home_store_url(home: Home) -> str:
    """The home's store URL, checked: ``HOME/store.url`` if recorded, else its SQLite file.

    A recorded file that holds no usable URL is refused naming the file (never its content,
    which may hold a password), rather than let a parser's exception escape.
    """
    try:
        return normalise_store_url(home.store_url)
    except UsageError as exc:
        raise StoreError(
            f"{home.store_url_file} holds no usable store URL: {exc.message}",
            hint="write one SQLAlchemy URL in it, or remove it to use HOME/chain.sqlite",
        ) from exc


def record_store_url(home: Home, url: str) -> str:
    """Make ``url`` this home's store, for this and every later command; the normalised URL.

    A home holds one ledger: a home whose ledger is already elsewhere (its own SQLite file,
    or another recorded URL) is refused rather than silently switched. Recording the same URL
    again is a no-op; naming the home's own SQLite file records nothing.
    """
    wanted = normalise_store_url(url)
    current = home_store_url(home)
    if wanted == current:
        return wanted
    if home.has_ledger:
        raise StoreError(
            f"the home {home.root} already keeps its ledger at {redact(current)}, "
            f"not {redact(wanted)}",
            hint="a home holds one ledger; use another --home, or leave out --store-url",
        )
    home.ensure()
    path = home.store_url_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(wanted + "\n")
    return wanted


__all__ = [
    "POSTGRES_DRIVER",
    "home_store_url",
    "is_sqlite",
    "normalise_store_url",
    "parse_store_url",
    "record_store_url",
    "redact",
]
