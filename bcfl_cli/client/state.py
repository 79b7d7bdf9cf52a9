"""The member's chain state: replayed from its own ledger, brought up to its node's head.

Nothing a node says is trusted that can be checked: blocks this home lacks are applied with
every rule, certificate and signature checked before a command decides anything on them.
"""

from __future__ import annotations

from bcfl_cli.chain.chain import Chain
from bcfl_cli.chain.state import ChainState
from bcfl_cli.client.api import NodeApi
from bcfl_cli.errors import (
    BcflError,
    NodeError,
)
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.wire.schemas import MAX_BLOCKS_PER_RESPONSE


def replay_state(ledger: Ledger) -> ChainState:
    """The application state at the ledger's head, replayed from its genesis.

    Signatures are not re-checked: every block in a member's store was verified when its node
    appended it (``bcfl verify-chain`` re-checks everything from scratch).
    """
    return Chain(ledger).state


def local_state(home: Home) -> ChainState:
    with Chain.open(home) as chain:
        return chain.state


#: Blocks a command replays from the node in memory when this home's ledger lags behind it.
MAX_CATCH_UP_BLOCKS = 10_000
#: Blocks asked for in one request while catching up (the most a node serves at once).
CATCH_UP_BATCH = MAX_BLOCKS_PER_RESPONSE
UNREACHABLE_HINT = (
    "pending requests and members are read from this home's ledger, which this member's own "
    "node keeps in sync: start it (`bcfl node`), or pass --node URL of a member's running node"
)


def current_state(home: Home, api: NodeApi, *, at_least: int = 0) -> ChainState:
    """This home's state, brought up to the node's head before deciding anything on it.

    The member's own node syncs the ledger, but a command may run while it lags (or against
    another member's node with ``--node``). Blocks this home lacks are fetched from ``api`` and
    applied in memory with every rule, commit certificate and signature checked, so a node can
    add nothing the validators did not commit; the ledger itself is only written by the node.
    """
    state = local_state(home)
    try:
        status = api.status()
    except NodeError as exc:
        raise NodeError(exc.message, hint=UNREACHABLE_HINT) from exc
    if status.genesis != state.chain_id:
        raise NodeError(
            f"{api.url} serves another consortium (genesis {status.genesis[:16]}), "
            f"this home holds {state.chain_id[:16]}",
            hint="pass --node URL of a node of this home's consortium",
        )
    target = max(status.height, at_least)
    if target - state.height > MAX_CATCH_UP_BLOCKS:
        raise NodeError(
            f"this home's ledger is at height {state.height}, {api.url} at {target}",
            hint="start this member's node (`bcfl node`) and let it sync, then retry",
        )
    while state.height < target:
        blocks = api.blocks(state.height + 1, CATCH_UP_BATCH)
        if not blocks:
            break
        for raw in blocks:
            try:
                state = state.apply(Block.from_dict(raw))
            except BcflError as exc:
                raise NodeError(
                    f"{api.url} serves a block this home cannot accept: {exc.message}"
                ) from exc
    if state.height < at_least:
        raise NodeError(
            f"{api.url} committed at height {at_least} but serves blocks only up to "
            f"{state.height}"
        )
    return state
