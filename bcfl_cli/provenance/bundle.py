"""The model proof bundle (docs/PROTOCOL.md §9): what a model carries to be checked offline.

A bundle holds the genesis document, every block header from genesis to the block of the
round's aggregate with its commit certificate, and the transactions a verifier needs (those
that move the members, and those of the model's rounds), each with its Merkle audit path to
its block's ``tx_root``. Headers travel without bodies: the certificates sign the headers, the
headers commit to their transactions, so nothing else is needed to trust the included ones.

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
#: Largest bundle a verifier reads, once decompressed (about 45,000 blocks of four validators,
#: with their rounds); bounds memory, whatever a compressed file claims.
MAX_PROOF_BYTES = 64 * 1024 * 1024
#: A gzip member starts with these bytes (RFC 1952); plain JSON starts with ``{``.
GZIP_MAGIC = b"\x1f\x8b"
#: Audit paths are at most log2(2,000 transactions) long; anything longer is malformed.
MAX_PATH_LENGTH = 11

_KEYS = {"format", "v", "chain", "round", "genesis", "headers", "commits", "txs"}
_TX_KEYS = {"height", "index", "leaves", "path", "tx"}


@dataclass(frozen=True)
class ProvenTx:
    """A transaction and where it is: block height, index in the block, number of leaves
    (transactions of the block) and the audit path to the block's ``tx_root``."""

    height: int
    index: int
    leaves: int
    path: tuple[str, ...]
    tx: Transaction

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "index": self.index,
            "leaves": self.leaves,
            "path": list(self.path),
            "tx": self.tx.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ProvenTx:
        if not isinstance(data, dict) or set(data) != _TX_KEYS:
            raise EncodingError(f"a proven transaction has exactly the fields {sorted(_TX_KEYS)}")
        height, index, leaves, path = data["height"], data["index"], data["leaves"], data["path"]
        if not (_int(height, 1, MAX_SAFE_INT) and _int(leaves, 1, MAX_TXS_PER_BLOCK)):
            raise EncodingError("proven transaction height or leaves out of range")
        if not _int(index, 0, leaves - 1):
            raise EncodingError(f"proven transaction index must be below leaves ({leaves})")
        if not isinstance(path, list) or len(path) > MAX_PATH_LENGTH:
            raise EncodingError(f"an audit path is a list of at most {MAX_PATH_LENGTH} hashes")
        if not all(is_hash_hex(p) for p in path):
            raise EncodingError("audit path entries must be SHA-256 hex hashes")
        return cls(height, index, leaves, tuple(path), Transaction.from_dict(data["tx"]))


@dataclass(frozen=True)
class ModelProof:
    """The bundle; ``commits[i]`` certifies ``headers[i + 1]`` (genesis has no certificate)."""

    chain: str
    round: int
    genesis: dict[str, Any]
    headers: tuple[BlockHeader, ...]
    commits: tuple[CommitCertificate, ...]
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
        if not isinstance(txs, list):
            raise EncodingError("proof txs must be a list")
        proven = tuple(ProvenTx.from_dict(t) for t in txs)
        places = [(t.height, t.index) for t in proven]
        if places != sorted(set(places)):
            raise EncodingError("proven transactions must be in block order, each place once")
        if proven and proven[-1].height >= len(headers):
            raise EncodingError(f"a proven transaction is above the last header ({len(headers)})")
        return cls(
            data["chain"],
            data["round"],
            data["genesis"],
            tuple(BlockHeader.from_dict(h) for h in headers),
            tuple(CommitCertificate.from_dict(c) for c in commits),
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
