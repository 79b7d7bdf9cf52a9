"""The model proof bundle (docs/PROTOCOL.md §9): what a model carries to be checked offline.

A bundle holds the genesis document, every block header from genesis to the block of the
round's aggregate with its commit certificate, and the transactions a verifier needs (those
that move the members, and those of the model's rounds). A block that holds one of them comes
with the hashes of all its transactions, whose Merkle root is its ``tx_root``; the others
travel as headers alone. The certificates sign the headers, the headers commit to the
transaction hashes, so nothing else is needed to trust the included transactions, and every
byte of the bundle is bound by a hash or a signature (an RFC 9162 audit path would be smaller
for a large block, but its leaf count is not bound by the root).

Parsing is strict and bounded: any malformed byte is an ``EncodingError``, never another
exception, so the verifier can name it as a fault.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import Any

from bcfl_cli.errors import BcflError, EncodingError
from bcfl_cli.protocol.block import MAX_TXS_PER_BLOCK, BlockHeader, CommitCertificate
from bcfl_cli.protocol.encoding import MAX_SAFE_INT, canonical, is_hash_hex, parse_json
from bcfl_cli.protocol.tx import Transaction

FORMAT = "bcfl-model-proof"
FORMAT_VERSION = 1
#: Largest bundle a verifier reads, once decompressed: 30,000 to 50,000 blocks of four
#: validators (2.1 KB a block with a round every 10 blocks, 1.3 KB with one every 100; see
#: bench/README.md); bounds memory (parsed, about ten times this), whatever a gzip file claims.
MAX_PROOF_BYTES = 64 * 1024 * 1024
#: A gzip member starts with these bytes (RFC 1952); plain JSON starts with ``{``.
GZIP_MAGIC = b"\x1f\x8b"
_KEYS = {"format", "v", "chain", "round", "genesis", "headers", "commits", "bodies", "txs"}
_BODY_KEYS = {"height", "hashes"}
_TX_KEYS = {"height", "index", "tx"}


@dataclass(frozen=True)
class ProvenTx:
    """A transaction and where it is: block height and index in the block's transactions."""

    height: int
    index: int
    tx: Transaction

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "index": self.index, "tx": self.tx.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> ProvenTx:
        if not isinstance(data, dict) or set(data) != _TX_KEYS:
            raise EncodingError(f"a proven transaction has exactly the fields {sorted(_TX_KEYS)}")
        height, index = data["height"], data["index"]
        if not (_int(height, 1, MAX_SAFE_INT) and _int(index, 0, MAX_TXS_PER_BLOCK - 1)):
            raise EncodingError("proven transaction height or index out of range")
        return cls(height, index, Transaction.from_dict(data["tx"]))


def _body(data: Any) -> tuple[int, tuple[str, ...]]:
    """``{"height", "hashes"}``: every transaction hash of one block, in block order."""
    if not isinstance(data, dict) or set(data) != _BODY_KEYS:
        raise EncodingError(f"a block body has exactly the fields {sorted(_BODY_KEYS)}")
    height, hashes = data["height"], data["hashes"]
    if not _int(height, 1, MAX_SAFE_INT):
        raise EncodingError("block body height out of range")
    if not isinstance(hashes, list) or not 1 <= len(hashes) <= MAX_TXS_PER_BLOCK:
        raise EncodingError(f"a block body lists 1 to {MAX_TXS_PER_BLOCK} transaction hashes")
    if not all(is_hash_hex(h) for h in hashes):
        raise EncodingError("block body hashes must be SHA-256 hex hashes")
    return height, tuple(hashes)


@dataclass(frozen=True)
class ModelProof:
    """The bundle; ``commits[i]`` certifies ``headers[i + 1]`` (genesis has no certificate);
    ``bodies`` maps a height to its transaction hashes, for the heights ``txs`` come from."""

    chain: str
    round: int
    genesis: dict[str, Any]
    headers: tuple[BlockHeader, ...]
    commits: tuple[CommitCertificate, ...]
    bodies: dict[int, tuple[str, ...]]
    txs: tuple[ProvenTx, ...]

    @property
    def height(self) -> int:
        """Height of the last header: the block holding the round's aggregate."""
        return len(self.headers) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "v": FORMAT_VERSION,
            "chain": self.chain,
            "round": self.round,
            "genesis": self.genesis,
            "headers": [h.to_dict() for h in self.headers],
            "commits": [c.to_dict() for c in self.commits],
            "bodies": [
                {"height": h, "hashes": list(hashes)} for h, hashes in sorted(self.bodies.items())
            ],
            "txs": [t.to_dict() for t in self.txs],
        }

    def to_bytes(self, *, compress: bool = False) -> bytes:
        """Canonical JSON (RFC 8785), gzip-compressed when ``compress``: signatures and hashes
        are hex, which gzip halves (the deterministic header, mtime 0, keeps it reproducible)."""
        data = canonical(self.to_dict())
        return gzip.compress(data, compresslevel=9, mtime=0) if compress else data

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelProof:
        """Parse an untrusted bundle, plain or gzip; every defect is an ``EncodingError``."""
        if data[:2] == GZIP_MAGIC:
            data = _gunzip(data)
        if len(data) > MAX_PROOF_BYTES:
            raise EncodingError(
                f"proof of {len(data)} bytes exceeds the {MAX_PROOF_BYTES} byte limit"
            )
        try:
            return cls.from_dict(parse_json(data, max_bytes=MAX_PROOF_BYTES))
        except EncodingError:
            raise
        except BcflError as exc:
            raise EncodingError(exc.message) from exc
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise EncodingError(f"malformed proof: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any) -> ModelProof:
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise EncodingError(f"a model proof has exactly the fields {sorted(_KEYS)}")
        if data["format"] != FORMAT or data["v"] != FORMAT_VERSION:
            raise EncodingError(
                f"not a {FORMAT} v{FORMAT_VERSION} document "
                f"(format {data['format']!r}, v {data['v']!r})"
            )
        if not is_hash_hex(data["chain"]) or not _int(data["round"], 0, MAX_SAFE_INT):
            raise EncodingError("proof chain must be a genesis hash and round an integer >= 0")
        if not isinstance(data["genesis"], dict):
            raise EncodingError("proof genesis must be the genesis document (an object)")
        headers, commits, txs = data["headers"], data["commits"], data["txs"]
        if not (isinstance(headers, list) and isinstance(commits, list) and headers):
            raise EncodingError("proof headers and commits must be lists, headers not empty")
        if len(commits) != len(headers) - 1:
            raise EncodingError(
                f"one commit per header after genesis: {len(headers) - 1} expected, "
                f"found {len(commits)}"
            )
        if not isinstance(txs, list) or not isinstance(data["bodies"], list):
            raise EncodingError("proof bodies and txs must be lists")
        bodies = [_body(b) for b in data["bodies"]]
        heights = [h for h, _ in bodies]
        if heights != sorted(set(heights)) or (heights and heights[-1] >= len(headers)):
            raise EncodingError("block bodies must be in height order, once each, below the top")
        by_height = dict(bodies)
        proven = tuple(ProvenTx.from_dict(t) for t in txs)
        places = [(t.height, t.index) for t in proven]
        if places != sorted(set(places)):
            raise EncodingError("proven transactions must be in block order, each place once")
        for t in proven:
            if t.index >= len(by_height.get(t.height, ())):
                raise EncodingError(
                    f"proven transaction at height {t.height} index {t.index} has no body entry"
                )
        if {t.height for t in proven} != set(heights):
            raise EncodingError("every block body must hold a proven transaction")
        return cls(
            data["chain"],
            data["round"],
            data["genesis"],
            tuple(BlockHeader.from_dict(h) for h in headers),
            tuple(CommitCertificate.from_dict(c) for c in commits),
            by_height,
            proven,
        )


def _gunzip(data: bytes) -> bytes:
    """Decompress at most ``MAX_PROOF_BYTES`` + 1 bytes: a gzip bomb stops at the limit."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_PROOF_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise EncodingError(f"proof is not valid gzip: {exc}") from exc
    if len(out) > MAX_PROOF_BYTES:
        raise EncodingError(f"proof decompresses past the {MAX_PROOF_BYTES} byte limit")
    return out


def _int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
