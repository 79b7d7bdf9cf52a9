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
    # RFC 6962 §2.1: split at the largest power of two smaller than n.
    split = 1
    while split * 2 < len(nodes):
        split *= 2
    return hashlib.sha256(b"\x01" + _root(nodes[:split]) + _root(nodes[split:])).digest()


def _leaf(leaf_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(leaf_hash)).digest()


def inclusion_path(leaf_hashes: list[str], index: int) -> list[str]:
    """RFC 9162 §2.1.3.1 audit path of leaf ``index``: the sibling roots from leaf to top.

    With it, a verifier holding one transaction and the block's ``tx_root`` checks that the
    transaction is in the block without the other transactions (model proofs, §9).
    """
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf {index} out of range 0..{len(leaf_hashes) - 1}")
    nodes = [_leaf(h) for h in leaf_hashes]
    lo, hi = 0, len(nodes)
    stack: list[bytes] = []
    while hi - lo > 1:
        split = 1
        while split * 2 < hi - lo:
            split *= 2
        if index < lo + split:
            stack.append(_root(nodes[lo + split : hi]))
            hi = lo + split
        else:
            stack.append(_root(nodes[lo : lo + split]))
            lo = lo + split
    return [p.hex() for p in reversed(stack)]  # the sibling nearest the leaf first


def verify_inclusion(leaf_hash: str, index: int, size: int, path: list[str], root: str) -> bool:
    """RFC 9162 §2.1.3.2: whether ``path`` proves leaf ``index`` of ``size`` is under ``root``.

    Never raises on malformed input: a path element that is not 64 hex digits is a failure.
    """
    if not 0 <= index < size or len(path) > 64:
        return False
    try:
        r = _leaf(leaf_hash)
        siblings = [bytes.fromhex(p) for p in path]
    except ValueError:
        return False
    fn, sn = index, size - 1
    for p in siblings:
        if len(p) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r.hex() == root
