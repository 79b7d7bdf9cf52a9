"""The kill -9 test's victim: appends blocks to a test consortium's ledger until killed."""

from __future__ import annotations

import sys
from pathlib import Path

from bcfl_cli.chain import ChainState, build_block, commit_with_keys
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Vote, VoteType
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.store.ledger import Ledger
from tests.chain.factories import did_for, key_for

NAMES = ("alice", "bob", "carol", "dave")


def main(root: str) -> None:
    ledger = Ledger.open(Home.resolve(Path(root)))
    state = ChainState.from_genesis(ledger.block(0), ledger.document)
    for block in ledger.blocks(1):
        state = state.apply(block)
    head = ledger.head()
    n = head.height
    first = n + 1
    while True:
        n += 1
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
        state = state.apply(block)
        ledger.append(block)
        head = block
        if n == first:
            print("appended", n, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
