"""A node's TLS certificate: a key of its own, encrypted at rest, and the self-signed X.509
certificate ``bcfl`` makes from it (issue 22, docs/OPERATIONS.md "TLS").

Like Syncthing's device certificates, the certificate carries no trust of its own: peers accept
it because its SHA-256 fingerprint is pinned on chain for the member (genesis member record or
``join_request``, rotated by a ``tls_certificate`` transaction). So it never expires in practice
(valid 2000-9999: no expiry surprises) and names no host (hostname checks are off in pinned mode).

The TLS key is separate from the identity key (a leaked TLS key lets nobody sign a
transaction), and is stored encrypted in ``HOME/tls.key`` (SecretBox) under a key derived from
the identity key: whoever unlocked the identity can open it, so a running node can take up a
rotated certificate without asking for the passphrase again. The certificate is a pure function
of the TLS key (Ed25519 signatures are deterministic), so only the key is stored; ``tls.crt``
is a PEM copy for operators (``curl --cacert``, a reverse proxy).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.signing
import nacl.utils
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from bcfl_cli.errors import BcflError, EncodingError, IdentityError
from bcfl_cli.home import Home
from bcfl_cli.identity.keystore import _write_private
from bcfl_cli.protocol.crypto import Domain, sign_digest, verify_digest
from bcfl_cli.protocol.encoding import canonical, is_hash_hex, parse_json

TLS_KEY_VERSION = 1
TLS_KEY_FILE = "tls.key"
TLS_NEXT_KEY_FILE = "tls.next.key"  # made by `bcfl tls rotate`, taken up once pinned
TLS_CERT_FILE = "tls.crt"
TLS_NEXT_CERT_FILE = "tls.next.crt"  # public, so commands trust their node across a rotation
MAX_TLS_KEY_FILE_BYTES = 4096
_AT_REST_CONTEXT = b"bcfl/tls-key-at-rest/v1"
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def fingerprint_of(der: bytes) -> str:
    """The pin: SHA-256 of the DER certificate, lowercase hex (what Syncthing's device id is)."""
    return hashlib.sha256(der).hexdigest()


def sign_pin(identity_key: nacl.signing.SigningKey, fingerprint: str) -> str:
    """The member's did key vouching for its certificate in the genesis member record."""
    return sign_digest(identity_key, Domain.TLS_PIN, fingerprint)


def pin_signature_valid(public_key: bytes, fingerprint: str, signature: str) -> bool:
    return is_hash_hex(fingerprint) and verify_digest(
        public_key, Domain.TLS_PIN, fingerprint, signature
    )


@dataclass(frozen=True)
class NodeCertificate:
    """A TLS key and its self-signed certificate; ``repr`` hides the key."""

    seed: bytes
    der: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.der)

    @property
    def pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"NodeCertificate(fingerprint={self.fingerprint!r})"

    @contextmanager
    def pem_files(self) -> Iterator[tuple[Path, Path, bytes]]:
        """(certfile, keyfile, password) for ``SSLContext.load_cert_chain``, which reads files
        only: the key is written encrypted under a one-time password that never touches disk,
        and both files are gone when the block ends."""
        password = secrets.token_hex(16).encode()
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        with tempfile.TemporaryDirectory(prefix="bcfl-tls-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_path.write_bytes(self.pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_pem)
            yield cert_path, key_path, password


def certificate_from_seed(seed: bytes) -> NodeCertificate:
    """The self-signed certificate of a TLS key: deterministic, so the key alone is stored."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bcfl node " + raw.hex()[:16])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(hashlib.sha256(raw).digest()[:16], "big") >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, None)
    )
    return NodeCertificate(seed, cert.public_bytes(serialization.Encoding.DER))


def _box(identity_key: nacl.signing.SigningKey) -> nacl.secret.SecretBox:
    derived = nacl.hash.blake2b(
        _AT_REST_CONTEXT, key=bytes(identity_key), digest_size=32, encoder=nacl.encoding.RawEncoder
    )
    return nacl.secret.SecretBox(derived)


def _path(home: Home, *, next_key: bool) -> Path:
    return home.root / (TLS_NEXT_KEY_FILE if next_key else TLS_KEY_FILE)


def generate_certificate(
    home: Home, identity_key: nacl.signing.SigningKey, *, next_key: bool = False
) -> NodeCertificate:
    """A fresh TLS key, stored encrypted (``tls.key``, or ``tls.next.key`` for a rotation)."""
    cert = certificate_from_seed(nacl.utils.random(32))
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    document = {
        "version": TLS_KEY_VERSION,
        "fingerprint": cert.fingerprint,
        "nonce": nonce.hex(),
        "ciphertext": _box(identity_key).encrypt(cert.seed, nonce).ciphertext.hex(),
    }
    home.ensure()
    _write_private(_path(home, next_key=next_key), canonical(document) + b"\n", replace=True)
    _write_cert_pem(home, cert, next_key=next_key)
    return cert


def _write_cert_pem(home: Home, cert: NodeCertificate, *, next_key: bool = False) -> None:
    (home.root / (TLS_NEXT_CERT_FILE if next_key else TLS_CERT_FILE)).write_bytes(cert.pem)


def _read(home: Home, *, next_key: bool) -> dict[str, Any] | None:
    path = _path(home, next_key=next_key)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_TLS_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if len(raw) > MAX_TLS_KEY_FILE_BYTES:
            raise ValueError(f"larger than {MAX_TLS_KEY_FILE_BYTES} bytes")
        data = parse_json(raw)
        if not isinstance(data, dict) or set(data) != {
            "version",
            "fingerprint",
            "nonce",
            "ciphertext",
        }:
            raise ValueError("fields must be exactly fingerprint, nonce, ciphertext, version")
        if data["version"] != TLS_KEY_VERSION or not is_hash_hex(data["fingerprint"]):
            raise ValueError("unsupported version or malformed fingerprint")
        bytes.fromhex(data["nonce"])
        bytes.fromhex(data["ciphertext"])
    except (EncodingError, ValueError, TypeError) as exc:
        message = exc.message if isinstance(exc, BcflError) else str(exc)
        raise IdentityError(f"TLS key file {path} is corrupt: {message}") from exc
    return data


def read_fingerprint(home: Home, *, next_key: bool = False) -> str | None:
    """The fingerprint of the stored certificate, without unlocking anything."""
    data = _read(home, next_key=next_key)
    return None if data is None else str(data["fingerprint"])


def load_certificate(
    home: Home, identity_key: nacl.signing.SigningKey, *, next_key: bool = False
) -> NodeCertificate | None:
    """The stored TLS key and certificate (None: none made yet); a key that does not open with
    this identity, or whose certificate is not the recorded fingerprint, is refused."""
    data = _read(home, next_key=next_key)
    if data is None:
        return None
    path = _path(home, next_key=next_key)
    try:
        seed = _box(identity_key).decrypt(
            bytes.fromhex(data["ciphertext"]), bytes.fromhex(data["nonce"])
        )
    except nacl.exceptions.CryptoError as exc:
        raise IdentityError(f"TLS key file {path} does not open with this identity") from exc
    cert = certificate_from_seed(seed)
    if cert.fingerprint != data["fingerprint"]:
        raise IdentityError(f"TLS key file {path} is corrupt: its fingerprint does not match")
    return cert


def promote_next(home: Home, identity_key: nacl.signing.SigningKey) -> NodeCertificate | None:
    """Make the rotation's certificate the current one (after its pin is on chain)."""
    cert = load_certificate(home, identity_key, next_key=True)
    if cert is None:
        return None
    os.replace(_path(home, next_key=True), _path(home, next_key=False))
    _write_cert_pem(home, cert)
    (home.root / TLS_NEXT_CERT_FILE).unlink(missing_ok=True)
    return cert


__all__ = [
    "NodeCertificate",
    "certificate_from_seed",
    "fingerprint_of",
    "generate_certificate",
    "load_certificate",
    "pin_signature_valid",
    "promote_next",
    "read_fingerprint",
    "sign_pin",
]
