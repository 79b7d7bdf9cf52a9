"""The ledger on both backends (SQLite, PostgreSQL): migrations, append-only triggers, atomic
appends, tampered rows; and SQLite's pragmas."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from bcfl_cli.errors import StoreError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store import migrate
from bcfl_cli.store.db import SQLITE_PRAGMAS, make_engine
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.store.location import record_store_url
from bcfl_cli.store.tables import metadata
from bcfl_cli.store.vote_guard import VoteGuard
from tests.chain.factories import (
    FOUR,
    did_for,
    make_consortium,
    make_document,
    make_genesis,
    realistic_chain,
)
from tests.store_backends import StoreBackend, hides_password, secret_of


def test_every_connection_carries_the_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    expected = {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "trusted_schema": 0,
        "recursive_triggers": 1,
    }
    conns = [engine.connect() for _ in range(3)]  # distinct pooled connections
    for conn in conns:
        for name, value in expected.items():
            assert conn.execute(text(f"PRAGMA {name}")).scalar() == value
    for conn in conns:
        conn.close()
    engine.dispose()


def test_the_vote_guard_carries_the_same_pragmas(tmp_path):
    as_read = {"ON": "1", "OFF": "0", "FULL": "2"}  # how SQLite reports what was set
    with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
        for name, value in SQLITE_PRAGMAS:
            found = guard._db.execute(f"PRAGMA {name}").fetchone()[0]
            assert str(found).lower() == as_read.get(value, value.lower()), name


_open: list[Ledger] = []


@pytest.fixture(autouse=True)
def _close_ledgers():
    """Close the consortia's ledgers: a PostgreSQL connection left to the collector warns."""
    yield
    while _open:
        _open.pop().close()


def _consortium(tmp_path, backend: StoreBackend):
    backend.use(Home.resolve(tmp_path))
    c = make_consortium(tmp_path)
    _open.append(c.ledger)
    return c


def test_migrations_match_the_table_definitions(tmp_path, store_backend):
    url = store_backend.url or f"sqlite:///{tmp_path / 'x.sqlite'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        migrate.upgrade(conn)
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diffs == []


def test_the_head_revision_is_alembics():
    """``Ledger.open`` takes a store at ``HEAD_REVISION`` as current without Alembic: a new
    migration must move the constant, or this fails."""
    assert migrate.head_revision() == migrate.HEAD_REVISION


def test_a_store_at_the_head_opens_without_alembic(tmp_path):
    import subprocess
    import sys

    c = _consortium(tmp_path, StoreBackend("sqlite", None))
    c.ledger.close()
    probe = (
        "import sys; from pathlib import Path; from bcfl_cli.home import Home; "
        "from bcfl_cli.store.ledger import Ledger; "
        f"ledger = Ledger.open(Home.resolve(Path({str(tmp_path)!r}))); "
        "print(ledger.height, 'alembic' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_older_schema_is_upgraded_on_open(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    c.commit(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    c.ledger.close()
    engine = make_engine(c.home.store_url)
    with engine.begin() as conn:
        config = migrate.alembic_config(conn)
        command.downgrade(config, "0001")
        assert migrate.current_revision(conn) == "0001"
    engine.dispose()
    with Ledger.open(c.home) as ledger:
        assert ledger.height == 1 and ledger.tx_count() == 1
    engine = make_engine(c.home.store_url)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        names = {index["name"] for index in inspect(conn).get_indexes("txs")}
        assert {"ix_txs_kind", "ix_txs_author"} <= names
    engine.dispose()


def test_newer_schema_is_refused(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    c.ledger.close()
    engine = make_engine(c.home.store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num='9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(StoreError) as info:
        Ledger.open(c.home)
    assert "9999_from_the_future" in info.value.message and "newer" in info.value.message
    # the store opened at the head without Alembic reads the version row itself: any other
    # revision still goes through Alembic, which names it
    assert "'9999_from_the_future' is newer than this bcfl knows" in info.value.message


def test_create_refuses_an_existing_store_and_a_mismatched_document(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    with pytest.raises(StoreError, match="already exists") as info:
        Ledger.create(c.home, c.genesis, c.document)
    assert secret_of(c.home.store_url) not in info.value.message
    if store_backend.is_postgres:  # another home on the same database: one database, one ledger
        with pytest.raises(StoreError, match="already exists"):
            Ledger.create(store_backend.use(Home.resolve(tmp_path / "o2")), c.genesis, c.document)
    other = Home.resolve(tmp_path / "other")
    with pytest.raises(StoreError):
        Ledger.create(other, c.genesis, {**c.document, "v": 1, "initial_model": "ab" * 32})
    assert not other.store_file.exists()


def test_open_failures_never_show_the_password(tmp_path, postgres_url):
    """Only a PostgreSQL URL carries a password: an unreachable server, then a ledger."""
    url = postgres_url.replace("127.0.0.1:", "127.0.0.1:1") + "_missing"
    with pytest.raises(StoreError) as info:
        Ledger.open_url(url, tmp_path / "blobs")
    secret = secret_of(postgres_url)
    assert secret not in str(info.value)
    assert "***" in info.value.message or not hides_password(postgres_url)
    c = _consortium(tmp_path, StoreBackend("postgresql", postgres_url))
    assert secret not in c.ledger.display_url
    assert secret in c.ledger.url or not hides_password(postgres_url)


def _raw(c) -> sqlite3.Connection:
    conn = sqlite3.connect(c.home.store_file, isolation_level=None)
    conn.execute("PRAGMA recursive_triggers=ON")
    return conn


_TAMPERING = (
    "UPDATE blocks SET time=0 WHERE height=1",
    "DELETE FROM blocks WHERE height=1",
    "UPDATE txs SET kind='x'",
    "DELETE FROM txs",
)


def test_blocks_and_txs_are_append_only(tmp_path):
    c = make_consortium(tmp_path)
    c.commit(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    conn = _raw(c)
    for statement in _TAMPERING:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    conn.close()


def test_the_database_itself_refuses_changes_to_blocks_and_txs(tmp_path, store_backend):
    """On both backends through SQLAlchemy, each statement in its own transaction; PostgreSQL's
    TRUNCATE (no row trigger fires) and UPSERT (fires the UPDATE trigger) too."""
    c = _consortium(tmp_path, store_backend)
    c.commit(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    statements = list(_TAMPERING)
    if store_backend.is_postgres:
        statements += [
            "TRUNCATE txs",
            "TRUNCATE blocks CASCADE",
            "INSERT INTO blocks SELECT * FROM blocks WHERE height=1 "
            "ON CONFLICT (height) DO UPDATE SET time=0",
        ]
    engine = make_engine(c.home.store_url)
    for statement in statements:
        with pytest.raises(SQLAlchemyError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()
    assert c.ledger.height == 1 and c.ledger.tx_count() == 1
    assert c.ledger.block(1).header.time == c.ledger.head().header.time > 0


def test_insert_or_replace_fails_through_the_delete_trigger(tmp_path):
    c = make_consortium(tmp_path)
    c.commit(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    engine = make_engine(c.home.store_url)  # the store's own settings (recursive_triggers=ON)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM txs")).mappings().one()
        with pytest.raises(Exception, match="append-only"):
            conn.execute(
                text(
                    "INSERT OR REPLACE INTO txs (hash, height, idx, kind, author, body) "
                    "VALUES (:hash, :height, :idx, 'update', :author, :body)"
                ),
                dict(row),
            )
        with pytest.raises(Exception, match="append-only"):
            conn.execute(
                text(
                    "INSERT OR REPLACE INTO blocks (height, hash, prev, time, proposer, header) "
                    "VALUES (1, 'x', 'y', 1, 'z', '{}')"
                )
            )
    engine.dispose()
    assert c.ledger.tx_count() == 1 and c.ledger.block(1).txs[0].kind is TxKind.JOIN_REQUEST


def test_append_checks_the_link_and_is_atomic(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    block = c.next_block(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    with pytest.raises(StoreError):
        c.ledger.append(Block(block.header, block.txs, None))
    c.ledger.append(block)
    with pytest.raises(StoreError):
        c.ledger.append(block)  # height taken
    # a block whose tx hash collides with a committed one fails as a whole: no half block
    c.state = c.state.apply(block)
    c.clock += 100
    dup = c.next_block(
        [
            c.tx("frank", TxKind.JOIN_REQUEST, {"name": "f", "roles": ["trainer"], "power": 0}),
            block.txs[0],
        ]
    )
    with pytest.raises(StoreError):
        c.ledger.append(dup)
    assert c.ledger.height == 1 and c.ledger.tx_count() == 1


def test_reads_refuse_tampered_rows(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    c.commit(
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    engine = make_engine(c.home.store_url)
    with engine.begin() as conn:  # the owner of the database can drop the triggers
        trigger = (
            "blocks_append_only ON blocks" if store_backend.is_postgres else "blocks_no_update"
        )
        conn.execute(text(f"DROP TRIGGER {trigger}"))
        conn.execute(text("UPDATE blocks SET proposer=:p WHERE height=1"), {"p": did_for("bob")})
    engine.dispose()
    with pytest.raises(StoreError, match="index columns"):
        c.ledger.block(1)


def test_lookups(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    join = c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})
    block = c.commit([join])
    assert c.ledger.tx(join.hash) == (join, 1)
    assert c.ledger.block_by_hash(block.hash) == block
    assert c.ledger.head() == block and c.ledger.block(0) == c.genesis
    assert [b.height for b in c.ledger.blocks()] == [0, 1]
    assert c.ledger.find_tx_hashes(join.hash[:10]) == [join.hash]
    assert list(c.ledger.txs_of_kind("join_request")) == [(join, 1)]
    with pytest.raises(StoreError):
        c.ledger.tx("ab" * 32)
    with pytest.raises(StoreError):
        c.ledger.block(7)


def test_genesis_document_stored_as_blob(tmp_path, store_backend):
    doc = make_document(FOUR, "ab" * 32)
    home = store_backend.use(Home.resolve(tmp_path))
    with Ledger.create(home, make_genesis(doc), doc) as ledger:
        assert ledger.document == doc
        assert ledger.blobs.has(ledger.block(0).header.config)


def test_blob_references_read_the_same_hashes_on_both_backends(tmp_path, store_backend):
    """SQLite's json_extract and PostgreSQL's json_extract_path_text name the same blobs."""
    store_backend.use(Home.resolve(tmp_path))
    c = realistic_chain(tmp_path)
    _open.append(c.ledger)
    expected = {
        tx.body[field]
        for block in c.ledger.blocks()
        for tx in block.txs
        for field in ("blob", "base_model", "model")
        if str(tx.kind) in ("update", "aggregate", "open_round") and field in tx.body
    }
    found, top = c.ledger.blob_references()
    assert found == expected and len(found) == 5 and top == c.ledger.height
    assert c.ledger.blob_references(above=top) == (set(), top)


def test_a_home_keeps_the_store_it_recorded(tmp_path, store_backend):
    c = _consortium(tmp_path, store_backend)
    c.ledger.close()
    with Ledger.open(Home.resolve(tmp_path)) as ledger:  # a later command finds the same store
        assert ledger.genesis_hash == c.genesis.hash and ledger.url == c.home.store_url
    assert c.home.has_ledger
    if store_backend.is_postgres:
        assert not c.home.store_file.exists()
        assert c.home.store_url_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(StoreError, match="already keeps its ledger") as info:
        record_store_url(c.home, "postgresql://someone:pw@elsewhere/db")
    assert "pw@" not in info.value.message


#: The SQLite schema text of a new store, as bcfl wrote it before PostgreSQL came (read from
#: main's code): 64-bit columns on PostgreSQL must leave the SQLite file format as it was.
_SQLITE_BLOCKS = (
    "CREATE TABLE blocks (\n\theight INTEGER NOT NULL, \n\thash VARCHAR(64) NOT NULL, \n\t"
    "prev VARCHAR(64) NOT NULL, \n\ttime INTEGER NOT NULL, \n\tproposer VARCHAR(64) NOT NULL, "
    '\n\theader TEXT NOT NULL, \n\t"commit" TEXT, \n\tPRIMARY KEY (height), \n\tUNIQUE (hash)\n)'
)
_SQLITE_TXS = (
    "CREATE TABLE txs (\n\thash VARCHAR(64) NOT NULL, \n\theight INTEGER NOT NULL, \n\t"
    "idx INTEGER NOT NULL, \n\tkind VARCHAR(32) NOT NULL, \n\tauthor VARCHAR(64) NOT NULL, "
    "\n\tbody TEXT NOT NULL, \n\tPRIMARY KEY (hash), \n\tCONSTRAINT uq_txs_height_idx "
    "UNIQUE (height, idx), \n\tFOREIGN KEY(height) REFERENCES blocks (height)\n)"
)


def test_the_sqlite_file_format_is_unchanged(tmp_path):
    c = make_consortium(tmp_path)
    c.ledger.close()
    conn = sqlite3.connect(c.home.store_file)
    schema = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    conn.close()
    assert schema["blocks"] == _SQLITE_BLOCKS and schema["txs"] == _SQLITE_TXS
    assert sorted(schema) == [
        "alembic_version",
        "blocks",
        "blocks_no_delete",
        "blocks_no_update",
        "ix_txs_author",
        "ix_txs_kind",
        "meta",
        "txs",
        "txs_no_delete",
        "txs_no_update",
    ]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("table", ["blocks", "txs"])
def test_the_prebuilt_range_reads_send_the_sql_a_select_built_per_call_sent(dialect, table):
    """``Ledger.blocks`` reads with statements built once; the SQL and its parameters are the
    ones the ``select`` it used to build per call compiles to, on both backends (so an error
    quoting the SQL reads the same)."""
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql, sqlite

    from bcfl_cli.store import ledger as ledger_module
    from bcfl_cli.store.tables import blocks, txs

    low, high = 257, 512
    if table == "blocks":
        prebuilt, columns = ledger_module._BLOCKS_BETWEEN, ledger_module._BLOCK_COLUMNS
        per_call = select(*columns).where(blocks.c.height >= low, blocks.c.height <= high)
        per_call = per_call.order_by(blocks.c.height)
    else:
        prebuilt, columns = ledger_module._TXS_BETWEEN, ledger_module._TX_COLUMNS
        per_call = select(*columns).where(txs.c.height >= low, txs.c.height <= high)
        per_call = per_call.order_by(txs.c.height, txs.c.idx)
    engine_dialect = {"sqlite": sqlite.dialect(), "postgresql": postgresql.psycopg.dialect()}
    d = engine_dialect[dialect]
    old, new = per_call.compile(dialect=d), prebuilt.compile(dialect=d)
    assert str(new) == str(old)
    assert new.construct_params({"height_1": low, "height_2": high}) == old.params
