"""Making blocks in-process: what tests, benchmarks and one-machine consortia use.

The consensus engine replaces only how the commit certificate's signatures are gathered; the
block and certificate formats are the same either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import nacl.signing

from bcfl_cli.chain.state import MAX_BLOCK_TIME_STEP_MS, ChainState
from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import Block, BlockHeader, CommitCertificate, Vote, VoteType
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.tx import Transaction


def next_block_time(head_time: int, now_ms: int) -> int:
    """The time a block proposed at ``now_ms`` on a head of ``head_time`` carries (§6.2).

    The proposer's round driver asks it too: an ``open_round`` names a ``deadline_time``
    counted from its own block's time, and a round closes on its deadline by the time of the
    block that closes it.
    """
    return min(max(now_ms, head_time + 1), head_time + MAX_BLOCK_TIME_STEP_MS)


def build_block(
    state: ChainState,
    head: Block,
    txs: Sequence[Transaction],
    proposer_key: nacl.signing.SigningKey,
    *,
    time_ms: int,
) -> Block:
    """The next block after ``head`` (no commit yet), proposed by ``proposer_key``'s owner.

    ``state`` must be the state after ``head``: it gives the validator set in force. The block
    time is ``time_ms`` brought within what the rules allow (§6.2): at least one millisecond
    after the head's and at most ``MAX_BLOCK_TIME_STEP_MS`` after it (a chain idle for longer
    than that catches up with the clock over several blocks).
    """
    if head.hash != state.head_hash:
        raise EncodingError(f"head {head.hash} is not the state's head {state.head_hash}")
    header = BlockHeader(
        height=head.height + 1,
        prev=head.hash,
        time=next_block_time(head.header.time, time_ms),
        proposer=did_from_public_key(bytes(proposer_key.verify_key)),
        tx_root=merkle_root([t.hash for t in txs]),
        validators=state.validator_set.hash,
        config=head.header.config,
    )
    return Block(header, tuple(txs), None)


def commit_with_keys(
    block: Block,
    validator_keys: Iterable[nacl.signing.SigningKey],
    chain_id: str,
    round: int = 0,
) -> Block:
    """``block`` with a commit certificate signed by every key in ``validator_keys``.

    The caller picks which validators sign (all of them by default, a subset to test quorums);
    whether they form a quorum of the set in force is checked by ``ChainState.apply``.
    """
    votes = [
        Vote(
            chain_id,
            block.height,
            round,
            VoteType.PRECOMMIT,
            block.hash,
            did_from_public_key(bytes(key.verify_key)),
        ).signed(key)
        for key in validator_keys
    ]
    return Block(block.header, block.txs, CommitCertificate.from_votes(votes))
