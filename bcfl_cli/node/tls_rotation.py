"""``bcfl tls init|rotate``: make this member's node certificate, pin a new one on chain.

A rotation never stops the node: the new key is made beside the old one (``tls.next.key``), a
``tls_certificate`` transaction signed with the member's did key pins its fingerprint, and the
node takes the new certificate up at the block that commits it (``node/tls.py::follow_chain``);
links already open keep the old one until they close, new handshakes get the new one.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.signing

from bcfl_cli.client.api import DEFAULT_WAIT_S, NodeApi
from bcfl_cli.errors import NodeError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import generate_certificate, load_certificate, sign_pin
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.protocol.tx import TxKind, make_tx


@dataclass(frozen=True)
class CertificatePin:
    """What a founder pastes into the consortium file: ``tls = {fingerprint, sig}``."""

    fingerprint: str
    sig: str
    created: bool

    def toml(self) -> str:
        return f'tls = {{ fingerprint = "{self.fingerprint}", sig = "{self.sig}" }}'


def init_certificate(
    home: Home, key: nacl.signing.SigningKey, *, force: bool = False
) -> CertificatePin:
    """This member's node certificate (made once; ``force`` makes a new one) and its pin."""
    cert = None if force else load_certificate(home, key)
    created = cert is None
    if cert is None:
        cert = generate_certificate(home, key)
    return CertificatePin(cert.fingerprint, sign_pin(key, cert.fingerprint), created)


@dataclass(frozen=True)
class RotationOutcome:
    tx_hash: str
    fingerprint: str
    committed: bool
    height: int | None


def rotate_certificate(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    *,
    wait_s: float | None = DEFAULT_WAIT_S,
) -> RotationOutcome:
    """Make the next certificate and submit the signed ``tls_certificate`` that pins it."""
    if load_certificate(home, key) is None:
        raise UsageError(
            f"no node certificate in {home.root} to rotate", hint="run `bcfl tls init` first"
        )
    chain = api.status().genesis
    if not is_hash_hex(chain):
        raise NodeError(f"{api.url}/v1/status names no genesis hash")
    cert = generate_certificate(home, key, next_key=True)
    tx = make_tx(key, str(chain), TxKind.TLS_CERTIFICATE, {"fingerprint": cert.fingerprint})
    api.submit_tx(tx)
    if wait_s is None:
        return RotationOutcome(tx.hash, cert.fingerprint, False, None)
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        raise NodeError(f"the node dropped the tls_certificate: {status.reason or 'no reason'}")
    return RotationOutcome(tx.hash, cert.fingerprint, True, status.height)


def vote_tls_mode(
    key: nacl.signing.SigningKey,
    api: NodeApi,
    mode: str,
    *,
    wait_s: float | None = DEFAULT_WAIT_S,
) -> RotationOutcome:
    """Sign and submit this validator's ``tls_mode`` vote; the mode changes once
    ``admission_approvals`` validators asked for it (``fingerprint`` holds the mode asked)."""
    if mode not in ("pinned", "ca"):
        raise UsageError(f"trust mode {mode!r}: expected pinned or ca")
    chain = api.status().genesis
    if not is_hash_hex(chain):
        raise NodeError(f"{api.url}/v1/status names no genesis hash")
    tx = make_tx(key, str(chain), TxKind.TLS_MODE, {"mode": mode})
    api.submit_tx(tx)
    if wait_s is None:
        return RotationOutcome(tx.hash, mode, False, None)
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        raise NodeError(f"the node dropped the tls_mode: {status.reason or 'no reason'}")
    return RotationOutcome(tx.hash, mode, True, status.height)


__all__ = [
    "CertificatePin",
    "RotationOutcome",
    "init_certificate",
    "rotate_certificate",
    "vote_tls_mode",
]
