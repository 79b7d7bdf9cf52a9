"""Building a model proof from a member's ledger (what ``bcfl model export`` writes)."""

from __future__ import annotations

from bcfl_cli.chain.state import MEMBERSHIP_KINDS
from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.provenance.bundle import ModelProof, ProvenTx
from bcfl_cli.store.ledger import Ledger

#: Kinds whose body names the round they belong to.
_ROUND_KINDS = frozenset({TxKind.OPEN_ROUND, TxKind.UPDATE, TxKind.AGGREGATE})


def aggregate_height(ledger: Ledger, round_number: int) -> int:
    """Height of the block holding round ``round_number``'s aggregate (0: the initial model)."""
    if round_number == 0:
        return 0
    for tx, height in ledger.txs_of_kind(str(TxKind.AGGREGATE)):
        if int(tx.body["round"]) == round_number:
            return height
    raise UsageError(f"round {round_number} has no aggregate on this member's chain")


def build_proof(ledger: Ledger, round_number: int) -> ModelProof:
    """The proof of round ``round_number``'s global model: headers and certificates from
    genesis to its aggregate, the membership transactions up to there, and every transaction
    of rounds 1..``round_number`` (open_round, updates, their validations, aggregate), with
    the transaction hashes of each block that holds one."""
    top = aggregate_height(ledger, round_number)
    headers = []
    commits = []
    bodies: dict[int, tuple[str, ...]] = {}
    txs: list[ProvenTx] = []
    for block in ledger.blocks(0, top):
        headers.append(block.header)
        if block.commit is not None:
            commits.append(block.commit)
        wanted = [i for i in range(len(block.txs)) if _wanted(block.txs, i, round_number)]
        if wanted:
            bodies[block.height] = tuple(tx.hash for tx in block.txs)
            txs.extend(ProvenTx(block.height, i, block.txs[i]) for i in wanted)
    return ModelProof(
        ledger.genesis_hash,
        round_number,
        ledger.document,
        tuple(headers),
        tuple(commits),
        bodies,
        tuple(txs),
    )


def _wanted(txs: tuple[Transaction, ...], i: int, round_number: int) -> bool:
    tx = txs[i]
    if tx.kind in MEMBERSHIP_KINDS:
        return True
    if tx.kind in _ROUND_KINDS:
        return int(tx.body["round"]) <= round_number
    if tx.kind is TxKind.VALIDATION and i > 0:  # judges the update just before it (§6.3)
        before = txs[i - 1]
        return before.kind is TxKind.UPDATE and int(before.body["round"]) <= round_number
    return False
