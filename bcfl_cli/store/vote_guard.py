"""The write-ahead record that keeps a validator from ever double signing, even across crashes.

Before the node signs a vote or a proposal it records (chain, height, round, step, block) here,
durably (SQLite, WAL, ``synchronous=FULL``), in the same transaction as the engine's lock state
(lockedValue/lockedRound/validValue/validRound). Only then does it sign. Signing the exact same
message again is allowed (Ed25519 is deterministic, so it is the same signature); signing a
different block for a recorded (height, round, step) raises ``DoubleSignError``. A crash between
the record and the send only loses a message; a crash before the record loses nothing signed.

A tiny stdlib ``sqlite3`` file of its own (HOME/node/vote_guard.sqlite) rather than the ledger:
it is written on every vote and must never wait behind a block append. When the home keeps its
ledger in PostgreSQL (``--store-url``), the record goes to two tables of that database instead
(``PostgresVoteGuard``): a node on managed infrastructure may lose its local disk, and a lost
vote guard is how an honest validator comes to double sign. Row locks there mean no waiting
behind an append.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any

import nacl.signing
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bcfl_cli.consensus.messages import EngineState, Proposal
from bcfl_cli.errors import StoreError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Vote, VoteType
from bcfl_cli.protocol.encoding import parse_json
from bcfl_cli.store.backends import PostgresBackend
from bcfl_cli.store.db import apply_sqlite_settings
from bcfl_cli.store.location import home_store_url, is_sqlite, redact

PROPOSAL_STEP = "proposal"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signed (
    chain  TEXT    NOT NULL,
    height INTEGER NOT NULL,
    round  INTEGER NOT NULL,
    step   TEXT    NOT NULL,
    block  TEXT    NOT NULL,
    PRIMARY KEY (chain, height, round, step)
);
CREATE TABLE IF NOT EXISTS engine_state (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    chain TEXT NOT NULL,
    state TEXT NOT NULL
);
"""


class DoubleSignError(StoreError):
    """Refused: this validator already signed a different message for that height/round/step."""


class VoteGuard:
    def __init__(self, path: Path | str) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            apply_sqlite_settings(self._db)  # the ledger's: WAL, synchronous=FULL, ...
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the vote guard {path}: {exc}",
                hint="check the permissions of HOME/node/",
            ) from exc

    @classmethod
    def for_home(cls, home: Home) -> VoteGuard:
        """The home's guard: beside its ledger in PostgreSQL, else HOME/node/vote_guard.sqlite."""
        url = home_store_url(home)
        if not is_sqlite(url):
            return PostgresVoteGuard(url)
        home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(home.node_dir / "vote_guard.sqlite")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VoteGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- record, then sign ------------------------------------------------------------------
    def record_vote(self, vote: Vote, state: EngineState) -> None:
        self._record(vote.chain, vote.height, vote.round, str(vote.type), vote.block, state)

    def record_proposal(self, proposal: Proposal, state: EngineState) -> None:
        p = proposal
        self._record(p.chain, p.height, p.round, PROPOSAL_STEP, p.block_hash, state)

    def sign_vote(self, vote: Vote, key: nacl.signing.SigningKey, state: EngineState) -> Vote:
        self.record_vote(vote, state)
        return vote.signed(key)

    def sign_proposal(
        self, proposal: Proposal, key: nacl.signing.SigningKey, state: EngineState
    ) -> Proposal:
        self.record_proposal(proposal, state)
        return proposal.signed(key)

    def _record(
        self, chain: str, height: int, round: int, step: str, block: str, state: EngineState
    ) -> None:
        state_json = json.dumps(state.to_dict(), sort_keys=True, separators=(",", ":"))
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT block FROM signed WHERE chain=? AND height=? AND round=? AND step=?",
                    (chain, height, round, step),
                ).fetchone()
                if row is not None and row[0] != block:
                    raise DoubleSignError(
                        f"refusing to sign {step} at height {height} round {round} for "
                        f"{block or 'nil'}: already signed {row[0] or 'nil'}",
                        hint="this would be equivocation; another process may use this key",
                    )
                if row is None:
                    self._db.execute(
                        "INSERT INTO signed (chain, height, round, step, block) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (chain, height, round, step, block),
                    )
                self._db.execute(
                    "INSERT INTO engine_state (id, chain, state) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET chain = excluded.chain, "
                    "state = excluded.state",
                    (chain, state_json),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"vote guard write failed: {exc}") from exc

    # --- restart ----------------------------------------------------------------------------
    def state(self, chain: str) -> EngineState | None:
        """The lock state saved with the last signature for ``chain``, to restore the engine."""
        row = self._db.execute("SELECT chain, state FROM engine_state WHERE id = 1").fetchone()
        if row is None or row[0] != chain:
            return None
        return EngineState.from_dict(parse_json(row[1]))

    def votes_at(self, chain: str, height: int, validator: str) -> list[Vote]:
        """Unsigned votes recorded at ``height``: re-sign (same signature) and re-send them."""
        rows = self._db.execute(
            "SELECT round, step, block FROM signed WHERE chain=? AND height=? AND step != ? "
            "ORDER BY round, step",
            (chain, height, PROPOSAL_STEP),
        ).fetchall()
        return [Vote(chain, height, r, VoteType(s), b, validator) for r, s, b in rows]

    def signed_block(self, chain: str, height: int, round: int, step: str) -> str | None:
        row = self._db.execute(
            "SELECT block FROM signed WHERE chain=? AND height=? AND round=? AND step=?",
            (chain, height, round, step),
        ).fetchone()
        return None if row is None else str(row[0])


_POSTGRES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS vote_guard_signed (
        chain  TEXT   NOT NULL,
        height BIGINT NOT NULL,
        round  BIGINT NOT NULL,
        step   TEXT   NOT NULL,
        block  TEXT   NOT NULL,
        PRIMARY KEY (chain, height, round, step)
    )""",
    """CREATE TABLE IF NOT EXISTS vote_guard_engine_state (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        chain TEXT NOT NULL,
        state TEXT NOT NULL
    )""",
)


class PostgresVoteGuard(VoteGuard):
    """The same record in the ledger's PostgreSQL database (see the module docstring).

    Two processes signing with one key on one database cannot both win: the first INSERT of a
    (chain, height, round, step) holds its row until it commits, the second waits, does
    nothing, and then reads the first one's block.
    """

    def __init__(self, url: str) -> None:  # not the SQLite file: no super().__init__
        self._where = redact(url)
        self._engine = PostgresBackend().make_engine(url)
        try:
            with self._engine.begin() as conn:
                for statement in _POSTGRES_SCHEMA:
                    conn.execute(text(statement))
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(
                f"cannot open the vote guard in {self._where}: {exc}",
                hint="the node's database role must be able to create tables",
            ) from exc

    def close(self) -> None:
        self._engine.dispose()

    def _record(
        self, chain: str, height: int, round: int, step: str, block: str, state: EngineState
    ) -> None:
        state_json = json.dumps(state.to_dict(), sort_keys=True, separators=(",", ":"))
        key = {"chain": chain, "height": height, "round": round, "step": step}
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO vote_guard_signed (chain, height, round, step, block) "
                        "VALUES (:chain, :height, :round, :step, :block) ON CONFLICT DO NOTHING"
                    ),
                    {**key, "block": block},
                )
                signed: str = conn.execute(
                    text(
                        "SELECT block FROM vote_guard_signed WHERE chain=:chain AND "
                        "height=:height AND round=:round AND step=:step"
                    ),
                    key,
                ).scalar_one()
                if signed != block:
                    raise DoubleSignError(
                        f"refusing to sign {step} at height {height} round {round} for "
                        f"{block or 'nil'}: already signed {signed or 'nil'}",
                        hint="this would be equivocation; another process may use this key",
                    )
                conn.execute(
                    text(
                        "INSERT INTO vote_guard_engine_state (id, chain, state) "
                        "VALUES (1, :chain, :state) ON CONFLICT (id) DO UPDATE SET "
                        "chain = excluded.chain, state = excluded.state"
                    ),
                    {"chain": chain, "state": state_json},
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"vote guard write failed: {exc}") from exc

    def state(self, chain: str) -> EngineState | None:
        row = self._read("SELECT chain, state FROM vote_guard_engine_state WHERE id = 1", {})
        if not row or row[0][0] != chain:
            return None
        return EngineState.from_dict(parse_json(row[0][1]))

    def votes_at(self, chain: str, height: int, validator: str) -> list[Vote]:
        rows = self._read(
            "SELECT round, step, block FROM vote_guard_signed WHERE chain=:chain AND "
            "height=:height AND step != :proposal ORDER BY round, step",
            {"chain": chain, "height": height, "proposal": PROPOSAL_STEP},
        )
        return [Vote(chain, height, int(r), VoteType(s), str(b), validator) for r, s, b in rows]

    def signed_block(self, chain: str, height: int, round: int, step: str) -> str | None:
        rows = self._read(
            "SELECT block FROM vote_guard_signed WHERE chain=:chain AND height=:height AND "
            "round=:round AND step=:step",
            {"chain": chain, "height": height, "round": round, "step": step},
        )
        return str(rows[0][0]) if rows else None

    def _read(self, statement: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
        try:
            with self._engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(statement), params)]
        except SQLAlchemyError as exc:
            raise StoreError(f"vote guard read failed: {exc}") from exc
