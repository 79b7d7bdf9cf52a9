"""The genesis block: height 0, no transactions, no commit; its hash is the consortium's id.

Everything a member must agree on before the first vote is pinned by two hashes in the header:
``config`` (the genesis document, which names the founding members, the model, the training
plan, the contract and the initial weights) and ``validators`` (the set that signs height 1).
"""

from __future__ import annotations

from typing import Any

from bcfl_cli.consortium.config import ConsortiumConfig, genesis_config_from_document
from bcfl_cli.protocol.block import ZERO_HASH, Block, BlockHeader, ValidatorSet
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.merkle import merkle_root


def genesis_validator_set(config: ConsortiumConfig) -> ValidatorSet:
    """Founding validators with their power: the set in force at height 1."""
    return ValidatorSet.from_mapping({m.did: m.power for m in config.validators})


def make_genesis(document: dict[str, Any], *, time_ms: int) -> Block:
    """Build the genesis block for a (validated) genesis document."""
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not 0 <= time_ms < 2**53:
        raise ValueError(f"time_ms must be a non-negative integer of milliseconds, got {time_ms!r}")
    config, _ = genesis_config_from_document(document)
    header = BlockHeader(
        height=0,
        prev=ZERO_HASH,
        time=time_ms,
        proposer="",
        tx_root=merkle_root([]),
        validators=genesis_validator_set(config).hash,
        config=hash_object(document),
    )
    return Block(header=header, txs=(), commit=None)
