"""The two ledger backends for tests: SQLite in the home, and a throwaway PostgreSQL server.

``store_backend`` is parametrised over both, so one test body runs against each (as Flower runs
one suite against its in-memory and SQL states). For PostgreSQL every test gets an empty
database of its own, on a server that ``BCFL_TEST_POSTGRES_URL`` names (a role allowed to
create databases) or else on one this module starts for the session from the binaries on
PATH (``initdb``, ``pg_ctl``), on 127.0.0.1 and a free port, as an unprivileged user when the
tests run as root (initdb refuses root), and always stops. Without binaries the PostgreSQL
half is skipped with the reason, except under CI (``CI`` set), where it fails: CI must run it.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bcfl_cli.home import Home
from bcfl_cli.store.location import record_store_url

ENV_URL = "BCFL_TEST_POSTGRES_URL"
#: The password the throwaway server's URLs carry (trust authentication ignores it): tests
#: check that no command ever shows it (``secret_of``: the password of a given server's URL).
TEST_PASSWORD = "s3cret-not-shown"
_START_TRIES = 3
_START_TIMEOUT_S = 60
_names = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid to run the server with: ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    user = pwd.getpwnam("nobody")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root without runuser: cannot start PostgreSQL unprivileged")
    return [runuser, "-u", "nobody", "--"], user.pw_uid, user.pw_gid


@dataclass
class _Server:
    admin_url: str
    stop: list[str]  # the pg_ctl command that stops it


def _start_server(root: Path) -> _Server:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    assert initdb is not None and pg_ctl is not None
    prefix, uid, gid = _as_user()
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    data = root / "data"
    made = subprocess.run(  # in a directory the server's user can enter (the checkout may not)
        [*prefix, initdb, "-D", str(data), "-U", "bcfl", "--auth=trust", "--no-sync", "-E", "UTF8"],
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        cwd=root,
        check=False,
    )
    if made.returncode != 0:
        pytest.fail(f"initdb failed ({made.returncode}): {made.stderr[-2000:]}")
    last = ""
    for _ in range(_START_TRIES):  # a free port may be taken between the probe and the start
        port = _free_port()
        # a throwaway server need not survive a power cut (a killed client is what the kill -9
        # test kills): no fsync, which keeps the suite's added time small
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        started = subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-o",
                options,
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "start",
            ],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S + 10,
            cwd=root,
        )
        if started.returncode == 0:
            url = f"postgresql+psycopg://bcfl:{TEST_PASSWORD}@127.0.0.1:{port}/postgres"
            stop = [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]
            return _Server(url, stop)
        last = started.stderr + (root / "log").read_text(errors="replace")[-2000:]
    pytest.fail(f"PostgreSQL did not start in {_START_TRIES} tries: {last}")


def secret_of(url: str) -> str:
    """The password in ``url``, which no output may show; a placeholder when it has none (a
    server given by BCFL_TEST_POSTGRES_URL may authenticate otherwise), so that the checks
    that it is not shown stay meaningful."""
    return make_url(url).password or TEST_PASSWORD


def hides_password(url: str) -> bool:
    """Whether ``url`` carries a password, so that its masked form shows ``***``."""
    return bool(make_url(url).password)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this session (see the module docstring)."""
    given = os.environ.get(ENV_URL)
    if given:
        yield given
        return
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        reason = (
            "no PostgreSQL binaries (initdb, pg_ctl) on PATH and no "
            f"{ENV_URL}: the PostgreSQL store tests cannot run"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must run them: `make test` installs PostgreSQL as root)")
        pytest.skip(reason)
    # as root, under /tmp: the server runs as nobody, who must reach it ($TMPDIR may be private)
    root = Path(tempfile.mkdtemp(prefix="bcfl-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    server: _Server | None = None
    try:
        server = _start_server(root)
        yield server.admin_url
    finally:
        if server is not None:
            subprocess.run(server.stop, capture_output=True, timeout=60, check=False, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty database on the session's server, dropped afterwards."""
    name = f"bcfl_t{os.getpid()}_{next(_names)}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@dataclass(frozen=True)
class StoreBackend:
    """One backend under test: ``use(home)`` points a fresh home's ledger at it."""

    name: str
    url: str | None  # None: the home's own SQLite file

    def use(self, home: Home) -> Home:
        if self.url is not None:
            record_store_url(home, self.url)
        return home

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgresql"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> StoreBackend:
    """Parametrises a test over both ledger backends (each PostgreSQL test: a new database)."""
    if request.param == "sqlite":
        return StoreBackend("sqlite", None)
    return StoreBackend("postgresql", request.getfixturevalue("postgres_url"))
