"""Building a model proof from a member's ledger (what ``bcfl model export`` writes)."""

from __future__ import annotations

import dataclasses

from bcfl_cli.chain.state import MEMBERSHIP_KINDS, ChainState
from bcfl_cli.errors import StoreError, UsageError
from bcfl_cli.protocol.block import CommitCertificate, ValidatorSet
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
    the transaction hashes of each block that holds one.

    The ledger's blocks are trusted to be the chain (verify-chain checks them); the export
    verifies the proof it built before keeping it.
    """
    top = aggregate_height(ledger, round_number)
    genesis = ledger.block(0)
    state = ChainState.from_genesis(genesis, ledger.document)
    headers = [genesis.header]
    commits = []
    bodies: dict[int, tuple[str, ...]] = {}
    txs: list[ProvenTx] = []
    for block in ledger.blocks(1, top):
        wanted = [i for i in range(len(block.txs)) if _wanted(block.txs, i, round_number)]
        if wanted:
            bodies[block.height] = tuple(tx.hash for tx in block.txs)
            txs.extend(ProvenTx(block.height, i, block.txs[i]) for i in wanted)
        if block.commit is None:  # the ledger refuses such blocks; a damaged store may not
            raise StoreError(f"block {block.height} has no commit certificate")
        commit = _least_quorum(block.commit, state.validator_set)
        headers.append(block.header)
        commits.append(commit)
        # the validator set in force at the next height, as the verifier will replay it
        state = state.apply_proven(
            block.header, commit, [block.txs[i] for i in wanted], verify_signatures=False
        )
    return ModelProof(
        ledger.genesis_hash,
        round_number,
        ledger.document,
        tuple(headers),
        tuple(commits),
        bodies,
        tuple(txs),
    )


def _least_quorum(commit: CommitCertificate, validators: ValidatorSet) -> CommitCertificate:
    """The certificate cut to the fewest signatures that still hold more than 2/3 of the
    power (the largest powers first): a verifier needs no more, and signatures are most of a
    proof's bytes and of its verification time (a quarter less with 4 equal validators)."""
    ranked = sorted(commit.signatures, key=lambda s: (-validators.power_of(s[0]), s[0]))
    kept: list[tuple[str, str]] = []
    power = 0
    for did, sig in ranked:
        if validators.has_quorum(power):
            break
        kept.append((did, sig))
        power += validators.power_of(did)
    return dataclasses.replace(commit, signatures=tuple(sorted(kept)))


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
