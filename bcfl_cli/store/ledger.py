"""The ledger: blocks and their transactions in SQL, models in the blob store.

This is the only module that speaks SQL (through SQLAlchemy Core), so that a member can point
the store at another database with a URL: SQLite (the default, ``HOME/chain.sqlite``) or
PostgreSQL; what differs between the two is ``bcfl_cli.store.backends``'s. Rows hold the
exact canonical JSON that was hashed and signed; every read re-parses it, refuses
non-canonical bytes, and checks the index columns against it, so a tampered row surfaces as an
error instead of a silently different block.
Whether a block obeys the chain rules is not checked here: that is ``bcfl_cli.chain``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, bindparam, func, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from bcfl_cli.errors import EncodingError, StoreError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block, BlockHeader, CommitCertificate
from bcfl_cli.protocol.encoding import (
    NotCanonicalError,
    canonical,
    hash_object,
    is_hash_hex,
    parse_canonical,
)
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store import migrate
from bcfl_cli.store.backends import Backend, backend_for
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.location import (
    home_store_url,
    is_sqlite,
    normalise_store_url,
    record_store_url,
    redact,
)
from bcfl_cli.store.pin import pin_genesis, read_pin
from bcfl_cli.store.tables import blocks, meta, txs

_HINT_MISSING = "run `bcfl init` or `bcfl join`"
_READ_BATCH = 256
#: The columns every block and transaction read selects, in the order the rows are unpacked.
_BLOCK_COLUMNS = (
    blocks.c.height,
    blocks.c.hash,
    blocks.c.prev,
    blocks.c.time,
    blocks.c.proposer,
    blocks.c.header,
    blocks.c.commit,
)
_TX_COLUMNS = (txs.c.hash, txs.c.height, txs.c.idx, txs.c.kind, txs.c.author, txs.c.body)
#: The two reads of a range of heights (``height_1`` to ``height_2``), built once: building
#: a ``select`` and its cache key at every call cost more than SQLAlchemy's fetch of its rows
#: (verify-chain reads 10,000 blocks in 80 such calls: ~0.05 CPU-s a pass). The parameters
#: carry the names SQLAlchemy gives literal values, so the SQL sent, and an error quoting it,
#: are those of ``select(...).where(height >= low, height <= high)`` (a test compares them).
_BLOCKS_BETWEEN = (
    select(*_BLOCK_COLUMNS)
    .where(blocks.c.height >= bindparam("height_1"), blocks.c.height <= bindparam("height_2"))
    .order_by(blocks.c.height)
)
_TXS_BETWEEN = (
    select(*_TX_COLUMNS)
    .where(txs.c.height >= bindparam("height_1"), txs.c.height <= bindparam("height_2"))
    .order_by(txs.c.height, txs.c.idx)
)
_T = TypeVar("_T")


def _text(obj: Any) -> str:
    return canonical(obj).decode("utf-8")


class Ledger:
    """An open ledger store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, engine: Engine, blobs: BlobStore, *, url: str) -> None:
        self._engine = engine
        self._backend: Backend = backend_for(url)
        self.blobs = blobs
        self.url = url  # may hold a password: pass it on, never show it (``display_url``)
        self.display_url = redact(url)
        with self._read() as conn:
            rows: dict[str, str] = {
                str(k): str(v) for k, v in conn.execute(select(meta.c.key, meta.c.value))
            }
        genesis_hash = rows.get("genesis_hash")
        document_text = rows.get("document")
        if genesis_hash is None or document_text is None or not is_hash_hex(genesis_hash):
            raise StoreError(
                f"the store at {self.display_url} holds no genesis", hint=_HINT_MISSING
            )
        self.genesis_hash: str = genesis_hash
        document = _from_canonical(parse_canonical, document_text, "genesis document")
        if not isinstance(document, dict):
            raise StoreError("genesis document is not a JSON object")
        self.document: dict[str, Any] = document

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, home: Home, genesis: Block, document: dict[str, Any]) -> Ledger:
        """A new store holding ``genesis``; refuses to touch an existing one.

        The store is the home's (``home.store_url``: its SQLite file, or the URL recorded by
        ``store.location.record_store_url``). The genesis is also pinned in ``HOME/pin.json``,
        outside the store, so that a store replaced later fails verification; a pin of another
        consortium is refused.
        """
        home.ensure()
        url = home_store_url(home)
        if ledger_exists(url):
            raise StoreError(
                f"a ledger already exists at {redact(url)}",
                hint="use another --home, or delete that directory to start over"
                if is_sqlite(url)
                else "a database holds one ledger: create an empty database for this home",
            )
        if genesis.height != 0 or genesis.commit is not None or genesis.txs:
            raise StoreError("a genesis block has height 0, no transactions and no commit")
        document_bytes = canonical(document)
        if hash_object(document) != genesis.header.config:
            raise StoreError("the genesis header's config hash is not the document's hash")
        pinned = read_pin(home.pin_file)
        if pinned is not None and pinned.genesis != genesis.hash:
            pin_genesis(home.pin_file, genesis.hash)  # raises, naming the pinned consortium
        blobs = BlobStore(home.blob_dir)
        blobs.put(document_bytes)
        backend = backend_for(url)
        engine = backend.make_engine(url)
        try:
            with engine.begin() as conn:
                migrate.upgrade(conn)
                conn.execute(
                    insert(meta),
                    [
                        {"key": "genesis_hash", "value": genesis.hash},
                        {"key": "document", "value": document_bytes.decode("utf-8")},
                    ],
                )
                _insert_blocks(conn, [genesis])
        except BaseException as exc:
            engine.dispose()
            backend.discard_failed_create(url)
            if isinstance(exc, SQLAlchemyError):
                raise StoreError(f"cannot create the ledger at {redact(url)}: {exc}") from exc
            raise
        if pinned is None:
            pin_genesis(home.pin_file, genesis.hash)
        return cls(engine, blobs, url=url)

    @classmethod
    def open(cls, home: Home, store_url: str | None = None) -> Ledger:
        """Open the member's store, upgrading an older schema; a newer one is refused.

        ``store_url`` reads another store with this home's blobs (``verify-chain --store-url``)
        without recording it; by default the home's own (``home.store_url``).
        """
        url = home_store_url(home) if store_url is None else normalise_store_url(store_url)
        if is_sqlite(url) and not _sqlite_file(url).is_file():
            raise StoreError(f"no ledger at {_sqlite_file(url)}", hint=_HINT_MISSING)
        return cls.open_url(url, home.blob_dir)

    @classmethod
    def open_url(cls, url: str, blob_dir: Path, *, upgrade: bool = True) -> Ledger:
        """Open by SQLAlchemy URL; ``upgrade=False`` for extra readers of a store already open."""
        engine = backend_for(url).make_engine(url)
        try:
            if upgrade:
                with engine.begin() as conn:
                    migrate.upgrade(conn)
            return cls(engine, BlobStore(blob_dir), url=url)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the ledger at {redact(url)}: {exc}") from exc
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc

    # --- reading ---------------------------------------------------------------------------
    @property
    def height(self) -> int:
        with self._read() as conn:
            value = conn.execute(select(func.max(blocks.c.height))).scalar()
        if value is None:
            raise StoreError("the store holds no blocks", hint=_HINT_MISSING)
        return int(value)

    def head(self) -> Block:
        return self.block(self.height)

    def block(self, height: int) -> Block:
        for block in self.blocks(height, height):
            return block
        raise StoreError(f"no block at height {height} (head is {self.height})")

    def block_by_hash(self, block_hash: str) -> Block:
        with self._read() as conn:
            height = conn.execute(
                select(blocks.c.height).where(blocks.c.hash == block_hash)
            ).scalar()
        if height is None:
            raise StoreError(f"no block with hash {block_hash}")
        return self.block(int(height))

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[Block]:
        """Blocks with ``start <= height <= end`` (``end`` None: up to the head), in order."""
        if end is None:
            end = self.height
        low = start
        while low <= end:
            high = min(end, low + _READ_BATCH - 1)
            heights = {"height_1": low, "height_2": high}
            with self._read() as conn:
                block_rows = conn.execute(_BLOCKS_BETWEEN, heights).all()
                tx_rows = conn.execute(_TXS_BETWEEN, heights).all()
            by_height: dict[int, list[Row[Any]]] = {}
            for row in tx_rows:
                by_height.setdefault(int(row[1]), []).append(row)
            for row in block_rows:
                yield _block_from_rows(row, by_height.get(int(row[0]), []))
            low = high + 1

    def tx(self, tx_hash: str) -> tuple[Transaction, int]:
        """A committed transaction and the height of its block."""
        with self._read() as conn:
            row = conn.execute(select(*_TX_COLUMNS).where(txs.c.hash == tx_hash)).first()
        if row is None:
            raise StoreError(f"no transaction with hash {tx_hash}")
        return _tx_from_row(row), int(row[1])

    def txs_of_kind(self, kind: str) -> Iterator[tuple[Transaction, int]]:
        """Committed transactions of one kind with their heights, in chain order."""
        with self._read() as conn:
            rows = conn.execute(
                select(*_TX_COLUMNS)
                .where(txs.c.kind == str(kind))
                .order_by(txs.c.height, txs.c.idx)
            ).all()
        for row in rows:
            yield _tx_from_row(row), int(row[1])

    def blob_references(self, *, above: int = -1) -> tuple[set[str], int]:
        """Every blob hash the transactions of blocks above height ``above`` name (update blobs
        and base models, aggregate models, round base models), and the highest height read.

        For the node's blob collection, which must never remove what the chain names: read
        with SQLite's JSON functions, not re-verified (the store's owner is the only one who
        could make it lie, and only to their own loss). Raises StoreError if a value is not a
        hash, so that a caller collects nothing rather than guess.
        """
        fields = [
            self._backend.json_field(txs.c.body, "tx", "body", name)
            for name in ("blob", "base_model", "model")
        ]
        found: set[str] = set()
        with self._read() as conn:
            top = conn.execute(select(func.max(blocks.c.height))).scalar()
            rows = conn.execute(
                select(*fields).where(
                    txs.c.height > above,
                    txs.c.height <= (top if top is not None else above),
                    txs.c.kind.in_(("update", "aggregate", "open_round")),
                )
            ).all()
        for row in rows:
            for value in row:
                if value is None:
                    continue
                if not isinstance(value, str) or not is_hash_hex(value):
                    raise StoreError(f"a stored transaction names a blob {str(value)[:80]!r}")
                found.add(value)
        return found, int(top) if top is not None else above

    def find_tx_hashes(self, prefix: str, *, limit: int = 5) -> list[str]:
        """Transaction hashes starting with ``prefix`` (for short forms typed by a user)."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        with self._read() as conn:
            found: Any = conn.execute(
                select(txs.c.hash).where(txs.c.hash.startswith(prefix)).limit(limit)
            ).scalars()
            return [str(h) for h in found]

    def find_block_hashes(self, prefix: str, *, limit: int = 5) -> list[str]:
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        with self._read() as conn:
            found: Any = conn.execute(
                select(blocks.c.hash).where(blocks.c.hash.startswith(prefix)).limit(limit)
            ).scalars()
            return [str(h) for h in found]

    def tx_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(txs)).scalar() or 0)

    # --- writing ---------------------------------------------------------------------------
    def append(self, block: Block) -> None:
        """Append a committed block and its transactions in one database transaction.

        Only the link to the head is checked here; the chain rules are ``ChainState.apply``'s.
        """
        self.append_many([block])

    def append_many(self, chain: Sequence[Block]) -> None:
        """Append consecutive committed blocks in one database transaction: all or none.

        For a syncing node or a bulk import, one commit (one fsync) instead of one a block, and
        the rows of all blocks inserted in two statements. Each block must link to the one
        before it (the first to the head), as :meth:`append` checks for one.
        """
        if not chain:
            return
        first = chain[0]
        try:
            with self._engine.begin() as conn:
                head = conn.execute(
                    select(blocks.c.height, blocks.c.hash).order_by(blocks.c.height.desc()).limit(1)
                ).first()
                if head is None:
                    raise StoreError("the store holds no genesis", hint=_HINT_MISSING)
                height, prev = int(head.height), str(head.hash)
                for block in chain:
                    if block.commit is None:
                        raise StoreError(f"block {block.height} has no commit certificate")
                    if block.height != height + 1:
                        raise StoreError(
                            f"cannot append block {block.height}: expected height {height + 1}"
                        )
                    if block.header.prev != prev:
                        raise StoreError(
                            f"cannot append block {block.height}: prev is {block.header.prev}, "
                            f"expected the head's hash {prev}"
                        )
                    height, prev = block.height, block.hash
                _insert_blocks(conn, chain)
        except IntegrityError as exc:
            raise StoreError(f"block {first.height} conflicts with the store: {exc.orig}") from exc
        except OperationalError as exc:
            raise StoreError(f"cannot append block {first.height}: {exc.orig}") from exc


def ledger_exists(url: str) -> bool:
    """Whether the store at ``url`` is taken: a SQLite file that exists, or a database that
    holds a genesis (an empty PostgreSQL database is free).

    Raises StoreError when the database cannot be reached, so that ``bcfl init`` fails before
    building a model rather than after.
    """
    if is_sqlite(url):
        return _sqlite_file(url).exists()
    engine = backend_for(url).make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(meta.name):
                return False
            found = conn.execute(select(meta.c.value).where(meta.c.key == "genesis_hash"))
            return found.first() is not None
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot reach the ledger at {redact(url)}: {exc}") from exc
    finally:
        engine.dispose()


def use_store_url(home: Home, store_url: str) -> str:
    """Make the ledger at ``store_url`` this home's, for this and every later command.

    The store must already hold a ledger (``bcfl init --store-url`` creates one); a home that
    keeps its ledger elsewhere is refused (``location.record_store_url``). The normalised URL.
    """
    url = normalise_store_url(store_url)
    if not ledger_exists(url):
        raise StoreError(
            f"no ledger at {redact(url)}",
            hint=f"create it with `bcfl init CONSORTIUM.toml --store-url {redact(url)}`",
        )
    return record_store_url(home, url)


def _sqlite_file(url: str) -> Path:
    return Path(make_url(url).database or "")


def _insert_blocks(conn: Connection, chain: Sequence[Block]) -> None:
    conn.execute(
        insert(blocks),
        [
            {
                "height": block.header.height,
                "hash": block.hash,
                "prev": block.header.prev,
                "time": block.header.time,
                "proposer": block.header.proposer,
                "header": _text(block.header.to_dict()),
                "commit": None if block.commit is None else _text(block.commit.to_dict()),
            }
            for block in chain
        ],
    )
    tx_rows = [
        {
            "hash": tx.hash,
            "height": block.header.height,
            "idx": index,
            "kind": str(tx.kind),
            "author": tx.author,
            "body": tx.signed_text(),
        }
        for block in chain
        for index, tx in enumerate(block.txs)
    ]
    if tx_rows:
        conn.execute(insert(txs), tx_rows)


def _from_canonical(parse: Callable[[str], _T], text: str, what: str | Callable[[], str]) -> _T:
    """Parse a stored row with ``parse`` (canonical bytes only); any failure is a StoreError.

    ``what`` names the row in the error, or is called to name it: verify-chain reads every row
    of the chain, and formatting a name for each that parses was ~3% of its replay.
    """
    try:
        return parse(text)
    except NotCanonicalError as exc:
        name = what if isinstance(what, str) else what()
        raise StoreError(f"{name}: stored JSON is not in canonical form") from exc
    except EncodingError as exc:
        name = what if isinstance(what, str) else what()
        raise StoreError(f"{name}: stored JSON unreadable: {exc.message}") from exc


def _tx_from_row(row: Sequence[Any]) -> Transaction:
    """A row of ``_TX_COLUMNS``, read by position: a named ``Row`` attribute costs ~0.3 us
    (verify-chain reads 13 columns of every block and its transactions, ~0.1 CPU-s a chain of
    10,000 blocks)."""
    tx_hash, _, _, kind, author, body = row
    tx = _from_canonical(Transaction.from_canonical, body, lambda: f"transaction {tx_hash}")
    # ``TxKind`` is a ``StrEnum``: equal to a string exactly when its text is
    if tx.hash != tx_hash or tx.kind != kind or tx.author != author:
        raise StoreError(f"transaction {tx_hash}: stored index columns do not match its content")
    return tx


def _block_from_rows(row: Sequence[Any], tx_rows: Sequence[Sequence[Any]]) -> Block:
    """A row of ``_BLOCK_COLUMNS`` and its transactions' rows, read by position."""
    height, block_hash, prev, time_ms, proposer, header_text, commit_text = row
    header = _from_canonical(
        BlockHeader.from_canonical, header_text, lambda: f"block {height} header"
    )
    commit = None
    if commit_text is not None:
        commit = _from_canonical(
            CommitCertificate.from_canonical, commit_text, lambda: f"block {height} commit"
        )
    stored = (height, block_hash, prev, time_ms, proposer)
    if stored != (header.height, header.hash, header.prev, header.time, header.proposer):
        raise StoreError(f"block {height}: stored index columns do not match its header")
    # compared as stored: ``int()`` of a tampered ``idx`` ("x") raised ValueError, which no
    # caller turned into a verdict
    if [r[2] for r in tx_rows] != list(range(len(tx_rows))):
        raise StoreError(f"block {height}: transaction positions are not 0..{len(tx_rows) - 1}")
    return Block(header, tuple([_tx_from_row(r) for r in tx_rows]), commit)


__all__ = ["Ledger", "ledger_exists", "use_store_url"]
