"""Store URLs: two backends and no others, one spelling recorded, the password never shown."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.errors import StoreError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.store.location import (
    home_store_url,
    is_sqlite,
    normalise_store_url,
    parse_store_url,
    record_store_url,
    redact,
)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+psycopg://u@h/db",
        " postgresql://u@h/db\n",
    ],
)
def test_postgresql_urls_mean_psycopg_3(url):
    assert normalise_store_url(url) == "postgresql+psycopg://u@h/db"
    assert not is_sqlite(normalise_store_url(url))


def test_sqlite_urls_are_kept_and_others_refused(tmp_path):
    assert normalise_store_url(f"sqlite:///{tmp_path}/x.sqlite") == f"sqlite:///{tmp_path}/x.sqlite"
    assert is_sqlite(f"sqlite:///{tmp_path}/x.sqlite")
    for url in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db", "oracle://u@h/db"):
        with pytest.raises(UsageError, match="unsupported database"):
            parse_store_url(url)
    with pytest.raises(UsageError, match="name the database"):
        parse_store_url("postgresql://u:hunter2x@h")


@given(st.text(alphabet="0123456789!$&()*,;=~_-", min_size=4, max_size=40))
def test_redact_never_shows_the_password(password):
    url = f"postgresql+psycopg://u:{quote(password, safe='')}@h:5432/db"
    assert parse_store_url(url).password == password
    shown = redact(url)
    assert password not in shown and quote(password, safe="") not in shown
    assert shown == "postgresql+psycopg://u:***@h:5432/db"


def test_redact_of_garbage_says_so():
    assert redact("::not a url::") == "<unreadable store URL>"


def test_a_home_records_one_store_mode_0600(tmp_path):
    home = Home.resolve(tmp_path / "h")
    assert home.store_url == f"sqlite:///{home.store_file}" and not home.has_ledger
    assert (
        record_store_url(home, "postgresql://u:hunter2x@h/db")
        == "postgresql+psycopg://u:hunter2x@h/db"
    )
    assert home.store_url == "postgresql+psycopg://u:hunter2x@h/db" and home.has_ledger
    assert home.store_url_file.stat().st_mode & 0o777 == 0o600
    assert record_store_url(home, "postgres://u:hunter2x@h/db") == home.store_url  # same: a no-op
    with pytest.raises(StoreError, match="already keeps its ledger") as info:
        record_store_url(home, "postgresql://u:hunter2x@h/other")
    assert "hunter2x" not in info.value.message
    sqlite_home = Home.resolve(tmp_path / "s").ensure()
    sqlite_home.store_file.write_bytes(b"")
    assert record_store_url(sqlite_home, sqlite_home.store_url) == sqlite_home.store_url
    with pytest.raises(StoreError):
        record_store_url(sqlite_home, "postgresql://u@h/db")
    assert not sqlite_home.store_url_file.exists()


def test_a_garbled_store_url_file_is_named_not_shown(tmp_path):
    from typer.testing import CliRunner

    from bcfl_cli.cli.app import app

    home = Home.resolve(tmp_path / "h").ensure()
    home.store_url_file.write_text("mysql://u:hunter2x@h/db\n", encoding="utf-8")
    with pytest.raises(StoreError, match="holds no usable store URL") as info:
        home_store_url(home)
    assert "hunter2x" not in info.value.message
    result = CliRunner().invoke(app, ["verify-chain", "--home", str(home.root)])
    assert result.exit_code == 1 and "store.url holds no usable store URL" in result.stderr
    assert "hunter2x" not in result.output
