"""Merkle root of a block's transactions (docs/PROTOCOL.md §4), RFC 6962 shape.

Leaves and inner nodes are hashed with different prefixes so that a leaf can never pose as an
inner node (second-preimage attack on naive Merkle trees).
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def merkle_root(leaf_hashes: list[str]) -> str:
    """Root over hex hashes, in the order given (the block's transaction order)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = [hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest() for h in leaf_hashes]
    return _root(level).hex()


def _root(nodes: list[bytes]) -> bytes:
    if len(nodes) == 1:
        return nodes[0]
    if len(nodes) == 2:  # most blocks: one inner node, no split to compute
        return hashlib.sha256(b"\x01" + nodes[0] + nodes[1]).digest()
    # RFC 6962 §2.1: split at the largest power of two smaller than n.
    split = 1
    while split * 2 < len(nodes):
        split *= 2
    return hashlib.sha256(b"\x01" + _root(nodes[:split]) + _root(nodes[split:])).digest()
