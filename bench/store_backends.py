"""The ledger on PostgreSQL against SQLite (the baseline), same blocks, same process.

Appends one block per database transaction (as a node commits), reads every block back, and
verifies the chain (one worker: the store's share, not the signatures', is what differs):

    .venv/bin/python bench/store_backends.py --url postgresql+psycopg://USER@HOST/EMPTY_DB
    .venv/bin/python bench/store_backends.py  # $BCFL_TEST_POSTGRES_URL; --blocks N (300)

The database must be empty (it receives a ledger). Figures are printed as ratios to SQLite.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.chain import build_block, commit_with_keys  # noqa: E402
from bcfl_cli.home import Home  # noqa: E402
from bcfl_cli.protocol.block import Block, Vote, VoteType  # noqa: E402
from bcfl_cli.protocol.tx import TxKind, make_tx  # noqa: E402
from bcfl_cli.store.location import record_store_url, redact  # noqa: E402
from bcfl_cli.verify import verify_chain  # noqa: E402
from tests.chain.factories import Consortium, did_for, key_for, make_consortium  # noqa: E402

NAMES = ("alice", "bob", "carol", "dave")


def chain_of(c: Consortium, count: int) -> list[Block]:
    """``count`` committed blocks after genesis, 0-3 evidence transactions each."""
    state, head, out = c.state, c.genesis, []
    for n in range(1, count + 1):
        txs = []
        for i in range(n % 4):
            votes = [
                Vote(state.chain_id, n, i, VoteType.PREVOTE, b * 32, did_for("dave"))
                .signed(key_for("dave"))
                .to_dict()
                for b in ("aa", "bb")
            ]
            body = {"offender": did_for("dave"), "votes": votes}
            txs.append(make_tx(key_for(NAMES[i]), state.chain_id, TxKind.MISBEHAVIOUR, body))
        block = build_block(state, head, txs, key_for(NAMES[n % 4]), time_ms=head.header.time + 1)
        block = commit_with_keys(block, [key_for(x) for x in NAMES], state.chain_id)
        state, head = state.apply(block), block
        out.append(block)
    return out


def measure(root: Path, url: str | None, blocks: list[Block] | None, count: int) -> dict[str, Any]:
    home = Home.resolve(root)
    if url is not None:
        record_store_url(home, url)
    c = make_consortium(root)
    try:
        chain = blocks if blocks is not None else chain_of(c, count)
        start = time.perf_counter()
        for block in chain:
            c.ledger.append(block)
        append_s = time.perf_counter() - start
        start = time.perf_counter()
        read = sum(1 for _ in c.ledger.blocks())
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        report = verify_chain(c.ledger, workers=1)
        verify_s = time.perf_counter() - start
        if not report.ok or read != len(chain) + 1:
            raise SystemExit(f"bench chain invalid: {report.fault}")
        return {"blocks": chain, "append_s": append_s, "read_s": read_s, "verify_s": verify_s}
    finally:
        c.ledger.close()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("BCFL_TEST_POSTGRES_URL"))
    parser.add_argument("--blocks", type=int, default=300)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url (an empty PostgreSQL database) or BCFL_TEST_POSTGRES_URL")
    root = Path(tempfile.mkdtemp(prefix="bcfl-store-bench-"))
    base = measure(root / "sqlite", None, None, args.blocks)
    other = measure(root / "postgresql", args.url, base["blocks"], args.blocks)
    n = args.blocks
    print(f"{n} blocks; PostgreSQL at {redact(args.url)}; load {os.getloadavg()[0]:.1f}")
    figures: dict[str, dict[str, float]] = {}
    for key, what in (
        ("append_s", "append, one transaction a block"),
        ("read_s", "read every block"),
        ("verify_s", "verify-chain, 1 worker"),
    ):
        ratio = other[key] / base[key] if base[key] else float("inf")
        figures[key] = {"sqlite": base[key], "postgresql": other[key], "ratio": ratio}
        print(
            f"  {what:34s} sqlite {base[key]:7.3f} s   postgresql {other[key]:7.3f} s   "
            f"x{ratio:.2f}"
        )
    return figures


if __name__ == "__main__":
    main()
