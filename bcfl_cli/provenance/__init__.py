"""Model provenance: a model file carries a proof that checks offline (docs/PROTOCOL.md §9).

``build_proof`` writes the bundle from a member's ledger; ``verify_model`` checks a model and
its bundle against a pinned genesis hash with no store, network or torch; ``card_json`` and
``card_markdown`` render what a verified bundle shows.
"""

from bcfl_cli.provenance.bundle import MAX_PROOF_BYTES, ModelProof, ProvenTx
from bcfl_cli.provenance.card import card_json, card_markdown
from bcfl_cli.provenance.verify import ModelHistory, ProofReport, verify_model

__all__ = [
    "MAX_PROOF_BYTES",
    "ModelHistory",
    "ModelProof",
    "ProofReport",
    "ProvenTx",
    "card_json",
    "card_markdown",
    "verify_model",
]
