"""The node's side of the TLS rules (issue 22): its options, its trust at start-up, and what it
takes up from each block (pins, a rotated certificate, a changed trust mode). The rules every
caller applies (contexts, pins, refusals, clear text) are in ``bcfl_cli/client/tls.py``, shared
with the member's commands."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from bcfl_cli.chain.state import ChainState
from bcfl_cli.client.tls import (
    MAX_REMEMBERED_CERTS,
    PREFETCH_TIMEOUT_S,
    REASONS,
    TLS_MODES,
    LinkState,
    PinTable,
    TlsMode,
    TlsRefused,
    TransportTrust,
    check_clear_text,
    command_verify,
    is_loopback,
)
from bcfl_cli.errors import NodeError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import load_certificate, promote_next, read_fingerprint
from bcfl_cli.node.logging import fields
from bcfl_cli.protocol.crypto import did_from_public_key

log = logging.getLogger("bcfl.node.tls")


@dataclass(frozen=True)
class TlsOptions:
    """The node's transport options: ``--tls``, ``--tls-cert``/``--tls-key``, ``--ca-bundle``,
    ``--allow-clear-text``."""

    serve: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_bundle: Path | None = None
    allow_clear_text: bool = False

    def transport(
        self, home: Home, identity_key: nacl.signing.SigningKey, state: ChainState
    ) -> TransportTrust:
        return node_transport(
            home,
            identity_key,
            state,
            serve_tls=self.serve,
            cert_file=self.cert_file,
            key_file=self.key_file,
            ca_bundle=self.ca_bundle,
            allow_clear_text=self.allow_clear_text,
        )


def node_transport(
    home: Home,
    identity_key: nacl.signing.SigningKey,
    state: ChainState,
    *,
    serve_tls: bool,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    ca_bundle: Path | None = None,
    allow_clear_text: bool = False,
) -> TransportTrust:
    """The node's TLS rules at start-up: the genesis's mode, the chain's pins, and (with
    ``--tls``) the certificate it serves: the home's own (pinned) or ``--tls-cert``/``--tls-key``
    (a CA's). A rotation pinned while the node was down is taken up here."""
    mode: TlsMode | None = state.tls_mode  # type: ignore[assignment]
    trust = TransportTrust(mode, ca_bundle=ca_bundle, allow_clear_text=allow_clear_text)
    trust.own_did = did_from_public_key(bytes(identity_key.verify_key))
    trust.pins.update(state.tls_pins())
    if serve_tls:
        if cert_file is not None or key_file is not None:
            if cert_file is None or key_file is None:
                raise UsageError("--tls-cert and --tls-key go together")
            trust.cert_files = (cert_file, key_file)
        else:
            trust.certificate = load_certificate(home, identity_key)
            if trust.certificate is None:
                raise NodeError(
                    f"--tls: no node certificate in {home.root}",
                    hint="create one with `bcfl tls init` (and pin it: genesis or join)",
                )
    follow_chain(trust, state, home, identity_key)
    return trust


def follow_chain(
    trust: TransportTrust, state: ChainState, home: Home, identity_key: nacl.signing.SigningKey
) -> None:
    """After a block: take up the chain's pins, and this node's rotated certificate once its
    ``tls_certificate`` transaction is committed (new handshakes get it; open links keep the
    old one until they close, so the rotation costs no downtime)."""
    pins = state.tls_pins()
    trust.pins.update(pins)
    if state.tls_mode != trust.mode:  # a tls_mode decision: new links follow the new rule
        log.info("TLS trust mode changed", extra=fields(old=trust.mode, new=state.tls_mode))
        trust.set_mode(state.tls_mode)  # type: ignore[arg-type]
    own = pins.get(trust.own_did) if trust.own_did else None
    if own is None or trust.certificate is None or trust.certificate.fingerprint == own:
        return
    if read_fingerprint(home, next_key=True) == own:
        promoted = promote_next(home, identity_key)
        if promoted is not None:
            trust.take_up(promoted)
            log.info("TLS certificate rotated", extra=fields(fingerprint=own))
            return
    log.warning(
        "the chain pins another TLS certificate for this member; peers will refuse this one",
        extra=fields(pinned=own, serving=trust.certificate.fingerprint),
    )


__all__ = [
    "MAX_REMEMBERED_CERTS",
    "PREFETCH_TIMEOUT_S",
    "REASONS",
    "TLS_MODES",
    "LinkState",
    "PinTable",
    "TlsMode",
    "TlsOptions",
    "TlsRefused",
    "TransportTrust",
    "check_clear_text",
    "command_verify",
    "follow_chain",
    "is_loopback",
    "node_transport",
]
