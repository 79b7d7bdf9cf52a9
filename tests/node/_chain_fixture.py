"""A founders' chain in memory for node unit tests: state, head, blobs and signed blocks.

Built from the harness consortium (four founders with deterministic keys, the example MLP),
so transactions and blocks are real and every rule and contract check runs for real.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bcfl_cli.chain import ChainState, commit_with_keys
from bcfl_cli.chain.state import MAX_BLOCK_TIME_STEP_MS
from bcfl_cli.fl.models import initial_state
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger
from tests.node._node_harness import FOUNDERS, consortium_home, did, key


@dataclass
class Chain:
    ledger: Ledger
    state: ChainState
    head: Block

    @property
    def blobs(self) -> BlobStore:
        return self.ledger.blobs

    def now(self) -> int:
        """The wall clock, brought within the block-time step the rules allow (the harness
        genesis is dated 2023): a proposer's ``now + i`` then still gives distinct blocks."""
        head = self.state.head_time
        return max(min(int(time.time() * 1000), head + MAX_BLOCK_TIME_STEP_MS // 2), head + 1)

    def commit(self, block: Block, after: ChainState) -> None:
        signed = commit_with_keys(block, [key(n) for n in FOUNDERS], self.state.chain_id)
        self.ledger.append(signed)
        self.state, self.head = after, signed

    def tx(self, name: str, kind: TxKind, body: dict) -> Transaction:  # type: ignore[type-arg]
        return make_tx(key(name), self.state.chain_id, kind, body)

    def update(self, name: str, *, scale: float = 0.0, samples: int = 50) -> Transaction:
        """A real update blob (delta = scale everywhere) stored, and its signed transaction."""
        spec = self.state.config.model
        delta = {k: torch.full_like(v, scale) for k, v in initial_state(spec).items()}
        data = encode_tensors(delta)
        digest = self.blobs.put(data)
        rnd = self.state.round
        body = {
            "round": max(1, rnd.number),
            "base_model": rnd.base_model,
            "blob": digest,
            "blob_size": len(data),
            "num_samples": samples,
            "metrics": {},
        }
        return self.tx(name, TxKind.UPDATE, body)


def make_chain(root: Path, *, edit: dict[str, str] | None = None) -> Chain:
    home = consortium_home(root, edit=edit)
    ledger = Ledger.open(home)
    genesis = ledger.block(0)
    state = ChainState.from_genesis(genesis, ledger.document)
    return Chain(ledger, state, genesis)


__all__ = ["FOUNDERS", "Chain", "did", "key", "make_chain"]
