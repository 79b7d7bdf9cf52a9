"""``verify-chain --against URL``: the verified local chain against a peer's committed head.

What a peer says is believed only where it carries signatures the local chain can check: its
``/v1/status`` height only says which blocks to ask for, and every block it serves is judged by
its commit certificate against the validator set that the *locally verified* chain has in force
at that height. Four requests at most (genesis, status, two blocks), each bounded by the
client's timeout, retries and response size.

Verdicts (codes of the report's fault):

- ``peer_genesis_differs``: the peer's genesis hash (self-certifying) is not the store's: one
  of the two is another consortium;
- ``fork_with_peer``: at the highest common height the peer serves a different block whose
  certificate is a quorum of the validators in force there: two quorums signed conflicting
  blocks, or this store was rewritten by a quorum's keys;
- ``behind_peer``: the peer serves the block after the store's head, linked to it and carrying
  a valid certificate and valid transactions (the chain rules, §6): the store is missing
  committed blocks: truncated, restored from an older copy, or simply not synced yet;
- ``peer_unverifiable``: the peer could not be reached or served something that does not
  check (a malformed answer, a height it does not serve, a block without a valid
  certificate); the comparison proves nothing, so it fails rather than passing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from bcfl_cli.client.api import NodeApi
from bcfl_cli.errors import BcflError, VerificationError
from bcfl_cli.node.sync import certificate_valid
from bcfl_cli.protocol.block import Block
from bcfl_cli.store.ledger import Ledger

if TYPE_CHECKING:  # the type only: the node does not call into verify (docs/ARCHITECTURE.md)
    from bcfl_cli.verify.chain import Verified

#: Seconds per request to the peer (connect, read), and retries after a transport error.
COMPARE_TIMEOUT_S = 10.0
COMPARE_RETRIES = 1
#: Requests a comparison makes at most (genesis, status, the block at the common height, the
#: block after the store's head), each retried at most ``COMPARE_RETRIES`` times; ``_compare``
#: has no loop, and tests/node/test_compare.py counts them.
COMPARE_MAX_REQUESTS = 4


def compare_with_peer(
    url: str,
    ledger: Ledger,
    verified: Verified,
    *,
    transport: httpx.BaseTransport | None = None,
) -> None:
    """Raise ``VerificationError`` unless the peer at ``url`` agrees with the verified chain
    and has no committed block past its head; records a ``peer`` row in the report.

    ``transport``: for tests (an in-memory peer).
    """
    row: dict[str, Any] = {
        "anchor": "peer",
        "source": url,
        "height": None,
        "hash": None,
        "peer_height": None,
        "ok": None,
    }
    verified.report.anchors.append(row)
    try:
        with NodeApi(
            url, timeout=COMPARE_TIMEOUT_S, retries=COMPARE_RETRIES, transport=transport
        ) as api:
            row["source"] = api.url
            _compare(api, ledger, verified, row)
    except VerificationError:
        row["ok"] = False
        raise
    except (BcflError, httpx.HTTPError, ValueError, TypeError, KeyError, RecursionError) as exc:
        # whatever the peer sends, the answer is a verdict, never an escaping exception
        row["ok"] = False
        message = exc.message if isinstance(exc, BcflError) else f"{type(exc).__name__}: {exc}"
        raise VerificationError(
            f"cannot compare with {url}: {message}", height=None, code="peer_unverifiable"
        ) from exc
    row["ok"] = True


def _unverifiable(message: str, height: int | None = None) -> VerificationError:
    return VerificationError(message, height=height, code="peer_unverifiable")


def _compare(api: NodeApi, ledger: Ledger, verified: Verified, row: dict[str, Any]) -> None:
    report, state = verified.report, verified.state
    if state is None:  # only called on a chain that verified
        raise _unverifiable("the local chain did not verify; nothing to compare")
    genesis, _document = api.genesis()
    if genesis.hash != report.chain_id:
        raise VerificationError(
            f"{api.url} serves genesis {genesis.hash}, this store holds {report.chain_id}: "
            "one of the two is another consortium",
            height=0,
            code="peer_genesis_differs",
        )
    # only the height is read: a status of another version still compares
    status = api.get("/status", strict=False)
    peer_height = status.get("height") if isinstance(status, dict) else None
    if type(peer_height) is not int or peer_height < 0:
        raise _unverifiable(f"{api.url}/v1/status: no height in the answer")
    row["peer_height"] = peer_height
    local = report.height
    common = min(local, peer_height)
    ours = ledger.block(common)
    row["height"], row["hash"] = common, ours.hash
    theirs = _block(api, common, peer_height)
    if theirs.hash != ours.hash:
        validators = verified.validator_sets.get(ours.header.validators)
        if (
            common > 0
            and validators is not None
            and certificate_valid(report.chain_id, theirs, validators)
        ):
            raise VerificationError(
                f"block {common}: {api.url} serves {theirs.hash} with a valid commit "
                f"certificate, this store holds {ours.hash}: two quorums signed "
                "conflicting blocks, or this store was rewritten",
                height=common,
                code="fork_with_peer",
            )
        raise _unverifiable(
            f"block {common}: {api.url} serves {theirs.hash}, not this store's {ours.hash}, "
            "without a valid commit certificate",
            common,
        )
    if peer_height <= local:
        return
    after = _block(api, local + 1, peer_height)
    try:
        state.apply(after, checks=None, verify_signatures=True)
    except VerificationError as exc:
        raise _unverifiable(
            f"block {local + 1} from {api.url} does not follow this store's head: {exc.message}",
            local + 1,
        ) from exc
    raise VerificationError(
        f"the store ends at height {local}, but {api.url} serves block {local + 1} "
        f"({after.hash}) on top of it with a valid commit certificate (its head is at "
        f"{peer_height}): this store is missing committed blocks (truncated, restored from "
        "an older copy, or not synced yet)",
        height=local + 1,
        code="behind_peer",
    )


def _block(api: NodeApi, height: int, peer_height: int) -> Block:
    block = api.block(height)
    if block is None:
        raise _unverifiable(f"{api.url} reports height {peer_height} but serves no block {height}")
    return block
