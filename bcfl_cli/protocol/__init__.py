"""Exactly what docs/PROTOCOL.md specifies: encodings, signing domains, transactions, blocks.

This package imports nothing of bcfl except ``bcfl_cli.errors``.
"""

from bcfl_cli.protocol.block import (
    NIL,
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    ValidatorSet,
    Vote,
    VoteType,
)
from bcfl_cli.protocol.crypto import Domain, did_from_public_key, public_key_from_did
from bcfl_cli.protocol.encoding import canonical, hash_object, parse_json, sha256_hex
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx

__all__ = [
    "NIL",
    "ZERO_HASH",
    "Block",
    "BlockHeader",
    "CommitCertificate",
    "Domain",
    "Transaction",
    "TxKind",
    "ValidatorSet",
    "Vote",
    "VoteType",
    "canonical",
    "did_from_public_key",
    "hash_object",
    "make_tx",
    "merkle_root",
    "parse_json",
    "public_key_from_did",
    "sha256_hex",
]
