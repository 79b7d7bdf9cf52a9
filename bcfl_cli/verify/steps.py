"""verify-chain as named steps, one per section of docs/PROTOCOL.md §8.

Every step raises ``VerificationError`` (height, transaction, code); the driver in
``bcfl_cli.verify.chain`` turns the first one into the report's fault.
"""

from __future__ import annotations

from collections.abc import Iterator

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BcflError, StoreError, VerificationError
from bcfl_cli.primitives import BlobStatus
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger


def read_blocks(ledger: Ledger, start: int, end: int) -> Iterator[Block]:
    """§8.1 Blocks as stored; an unreadable or non-canonical row is a fault at its height."""
    height = start
    try:
        for block in ledger.blocks(start, end):
            if block.height != height:
                raise VerificationError(
                    f"block {height} is missing from the store (found {block.height} next)",
                    height=height,
                    code="missing_block",
                )
            yield block
            height += 1
    except StoreError as exc:
        raise VerificationError(exc.message, height=height, code="unreadable_block") from exc
    if height <= end:
        raise VerificationError(f"block {height} is missing", height=height, code="missing_block")


def verify_genesis(ledger: Ledger, genesis: Block) -> ChainState:
    """§8.2 Genesis: the pinned hash, the document's hash and blobs, the founding validators."""
    if genesis.hash != ledger.genesis_hash:
        raise VerificationError(
            f"genesis hash: expected {ledger.genesis_hash} (pinned), found {genesis.hash}",
            height=0,
            code="genesis_hash_mismatch",
        )
    document = ledger.document
    state = ChainState.from_genesis(genesis, document)
    config_hash = hash_object(document)
    verify_blob(ledger.blobs, config_hash, None, height=0, tx=None, what="genesis document")
    verify_blob(
        ledger.blobs, state.config.initial_model, None, height=0, tx=None, what="initial model"
    )
    return state


def verify_blob(
    blobs: BlobStore,
    digest: str,
    size: int | None,
    *,
    height: int,
    tx: str | None,
    what: str,
) -> None:
    """§7 A referenced blob is present, hashes to its name, and has the size claimed:
    SHA-256'd every time (``remember=False``), never answered from the store's content record,
    so verify-chain's verdict rests on the protocol's hash alone in any process."""
    status, found = blobs.check(digest, remember=False)
    error = blob_fault(digest, size, status, found, height=height, tx=tx, what=what)
    if error is not None:
        raise error


def blob_fault(
    digest: str,
    size: int | None,
    status: BlobStatus,
    found: int,
    *,
    height: int,
    tx: str | None,
    what: str,
) -> VerificationError | None:
    """The fault, if any, of a blob check that found ``status`` and ``found`` bytes."""
    if status == "missing":
        # the store of a member that trains without validating holds no other member's update
        hint = (
            " (the store of a member that only trains: add --models-only)"
            if what == "update"
            else ""
        )
        return VerificationError(
            f"{what} blob {digest} is missing{hint}", height=height, tx_hash=tx, code="blob_missing"
        )
    if status == "corrupt":
        return VerificationError(
            f"{what} blob {digest}: content does not hash to its name",
            height=height,
            tx_hash=tx,
            code="blob_corrupt",
        )
    if size is not None and found != size:
        return VerificationError(
            f"{what} blob {digest}: size expected {size}, found {found}",
            height=height,
            tx_hash=tx,
            code="blob_size_mismatch",
        )
    return None


def block_blobs(block: Block) -> Iterator[tuple[str, str, int, str]]:
    """§7 Blobs a block makes part of the model's history, in block order: the blob of each
    accepted update and each aggregate's model, as (tx hash, blob hash, size, what)."""
    previous = None
    for tx in block.txs:
        body = tx.body
        if tx.kind is TxKind.VALIDATION and body["verdict"] == "accept" and previous is not None:
            yield previous.hash, previous.body["blob"], previous.body["blob_size"], "update"
        elif tx.kind is TxKind.AGGREGATE:
            yield tx.hash, body["model"], body["model_size"], "aggregate model"
        previous = tx


def verify_block_blobs(blobs: BlobStore, block: Block, *, models_only: bool = False) -> int:
    """§7 Every blob :func:`block_blobs` names is present, intact and of the size claimed.

    ``models_only``: an update blob that is not here is skipped (the store of a member that
    trains without validating); one that is here is checked all the same.
    """
    checked = 0
    for tx_hash, digest, size, what in block_blobs(block):
        if models_only and what == "update" and not blobs.has(digest):
            continue
        verify_blob(blobs, digest, size, height=block.height, tx=tx_hash, what=what)
        checked += 1
    return checked


def missing_update_blobs(blobs: BlobStore, block: Block) -> list[tuple[str, str, int, bool]]:
    """The updates of ``block`` whose blob this store lacks, as (tx hash, blob, round,
    accepted); the FL checks cannot judge them here."""
    found: list[tuple[str, str, int, bool]] = []
    txs = list(block.txs)
    for i, tx in enumerate(txs):
        if tx.kind is not TxKind.UPDATE or blobs.has(tx.body["blob"]):
            continue
        following = txs[i + 1] if i + 1 < len(txs) else None
        accepted = (
            following is not None
            and following.kind is TxKind.VALIDATION
            and following.body["verdict"] == "accept"
        )
        found.append((tx.hash, tx.body["blob"], int(tx.body["round"]), accepted))
    return found


def aggregated_rounds(block: Block) -> set[int]:
    """The rounds ``block``'s aggregates close."""
    return {int(tx.body["round"]) for tx in block.txs if tx.kind is TxKind.AGGREGATE}


def apply_block(
    state: ChainState,
    block: Block,
    *,
    checks: AppChecks | None,
    signatures_verified: bool,
) -> ChainState:
    """§8.4 Chain rules (§6) for one block, on top of the state after its parent.

    A check that fails unexpectedly (not a ``BcflError``) is reported as this block's fault,
    ``check_crashed``, instead of ending verify-chain with a traceback: the store may hold
    anything, and the report must still say where it stopped.
    """
    try:
        return state.apply(block, checks=checks, verify_signatures=not signatures_verified)
    except (BcflError, MemoryError):
        raise
    except Exception as exc:
        raise VerificationError(
            f"block {block.height}: checking it failed: {type(exc).__name__}: {exc}"[:500],
            height=block.height,
            code="check_crashed",
        ) from exc


def block_signature_fault(chain_id: str, block: Block) -> VerificationError | None:
    """§8.3 Signatures of one block, commit first then transactions (the order of §6.2-§6.3)."""
    if block.commit is not None:
        for did, sig in block.commit.signatures:
            if not block.commit.precommit(chain_id, did, sig).signature_valid():
                return VerificationError(
                    f"block {block.height}: commit signature of {did} is invalid",
                    height=block.height,
                    code="bad_commit_signature",
                )
    for tx in block.txs:
        if not tx.signature_valid():
            return VerificationError(
                f"block {block.height}, tx {tx.hash[:16]}: signature of author {tx.author} "
                "is invalid",
                height=block.height,
                tx_hash=tx.hash,
                code="bad_tx_signature",
            )
    return None


def count_signatures(block: Block) -> int:
    return len(block.txs) + (len(block.commit.signatures) if block.commit else 0)
