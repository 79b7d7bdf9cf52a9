"""How bytes between nodes are protected: TLS 1.3 contexts, certificate pins, refusals (issue 22).

Two trust modes, fixed by the genesis (``consortium.tls``):

- ``pinned`` (libp2p / Syncthing style): the peer's identity is bound to its certificate. A
  caller finishes the TLS handshake without chain or hostname checks (the handshake still proves
  the peer holds the certificate's key), then accepts the connection only if the certificate's
  SHA-256 fingerprint is the one pinned on chain for an active member, and, once it knows which
  member a URL belongs to, for that member. Nothing is sent before this check.
- ``ca``: ordinary verification against ``--ca-bundle FILE`` (a consortium CA) or the system's
  CAs, hostname included; what a node behind a reverse proxy gets.

Plain HTTP stays for loopback (tests, the demo); blobs and models never go in clear to a
non-loopback peer unless the operator passes ``--allow-clear-text``. Every refusal is a
:class:`TlsRefused` naming the peer and the reason, one of :data:`REASONS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

from bcfl_cli.errors import NodeError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import (
    TLS_CERT_FILE,
    TLS_NEXT_CERT_FILE,
    NodeCertificate,
    fingerprint_of,
)
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.wire.refusal import Refusal

TlsMode = Literal["pinned", "ca"]
TLS_MODES: tuple[TlsMode, ...] = ("pinned", "ca")
#: Why a link was refused: the certificate is pinned for nobody; it is pinned for another member
#: than the one called; CA verification failed; clear text to a non-loopback peer.
REASONS = (
    "certificate_not_pinned",
    "certificate_of_other_member",
    "ca_verify_failed",
    "clear_text",
)
#: At most this many peer certificates are remembered (for the synchronous blob client).
MAX_REMEMBERED_CERTS = 1024
PREFETCH_TIMEOUT_S = 5.0


class TlsRefused(Refusal):
    """A link this node will not use; ``peer`` and ``reason`` say which and why. The one
    refusal type, unanswered (status 0: no request was sent), its code the reason."""

    def __init__(self, peer: str, reason: str, detail: str) -> None:
        super().__init__(f"TLS refused for {peer}: {reason}: {detail}", code=reason)
        self.peer = peer
        self.reason = reason


def is_loopback(url: str) -> bool:
    """Is ``url``'s host this machine (127.0.0.0/8, ::1, localhost)?"""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_clear_text(url: str, *, allow: bool, what: str = "blobs and models") -> None:
    """Refuse to send ``what`` over plain HTTP to another machine, unless allowed."""
    if url.startswith("http://") and not allow and not is_loopback(url):
        raise TlsRefused(
            url,
            "clear_text",
            f"would send {what} unencrypted to a non-loopback peer "
            "(use https://, or pass --allow-clear-text on a network you trust)",
        )


@dataclass
class PinTable:
    """Fingerprint -> member did, from the chain state; replaced wholesale after each block."""

    by_fingerprint: Mapping[str, str] = field(default_factory=dict)

    def update(self, pins: Mapping[str, str]) -> None:
        """``pins``: did -> fingerprint of each active member that pinned one."""
        self.by_fingerprint = {fp: did for did, fp in pins.items()}

    def member_of(self, fingerprint: str) -> str | None:
        return self.by_fingerprint.get(fingerprint)

    def verdict(self, peer: str, der: bytes, expected_did: str | None) -> str:
        """The member whose pinned certificate ``der`` is, or TlsRefused."""
        fp = fingerprint_of(der)
        did = self.member_of(fp)
        if did is None:
            raise TlsRefused(
                peer, "certificate_not_pinned", f"certificate {fp[:16]}… is pinned for no member"
            )
        if expected_did is not None and did != expected_did:
            raise TlsRefused(
                peer,
                "certificate_of_other_member",
                f"certificate {fp[:16]}… is pinned for {did}, expected {expected_did}",
            )
        return did


@dataclass
class LinkState:
    """What ``bcfl status`` shows for a peer: is the link encrypted, how was it verified."""

    encrypted: bool = False
    verified: str = "none"  # none | pinned:<did> | ca
    refused: str | None = None  # the last refusal, if any


class _PinCheck(aiohttp.Fingerprint):
    """aiohttp's fingerprint hook, checked against the live pin table instead of one digest.

    aiohttp completes the handshake without verification for a ``Fingerprint`` and calls
    ``check`` before it writes a byte of the request (aiohttp's own certificate pinning)."""

    def __init__(self, trust: TransportTrust, peer: str, expected: Callable[[], str | None]):
        super().__init__(b"\0" * 32)
        self._trust = trust
        self._peer = peer
        self._expected = expected

    def check(self, transport: asyncio.Transport) -> None:
        if not transport.get_extra_info("sslcontext"):
            return
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        self._trust.check_peer_certificate(self._peer, der, self._expected())


class TransportTrust:
    """One node's (or one command's) TLS rules: its own certificate, the mode, the pins."""

    def __init__(
        self,
        mode: TlsMode | None,
        *,
        certificate: NodeCertificate | None = None,
        ca_bundle: Path | None = None,
        allow_clear_text: bool = False,
    ) -> None:
        self.mode = mode
        self.own_did: str | None = None
        self.certificate = certificate
        self.cert_files: tuple[Path, Path] | None = None  # CA mode: --tls-cert, --tls-key
        self.ca_bundle = ca_bundle
        self.allow_clear_text = allow_clear_text
        self.pins = PinTable()
        self.links: dict[str, LinkState] = {}
        self._certs: dict[str, bytes] = {}  # fingerprint -> DER, of peers that passed
        self._lock = threading.Lock()
        self._server_context: ssl.SSLContext | None = None
        self.on_mode_change: list[Callable[[], None]] = []

    def set_mode(self, mode: TlsMode | None) -> None:
        """Another trust mode (a ``tls_mode`` decision on chain): clients made for the old one
        are dropped by whoever registered in ``on_mode_change`` (the peer sessions)."""
        self.mode = mode
        for callback in list(self.on_mode_change):
            callback()

    # --- serving ------------------------------------------------------------------------
    def server_context(self) -> ssl.SSLContext:
        """TLS 1.3 only, this node's certificate; reloadable in place (rotation)."""
        if self._server_context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            self._server_context = ctx
        if self.cert_files is not None:
            try:
                self._server_context.load_cert_chain(*self.cert_files)
            except (OSError, ssl.SSLError) as exc:
                raise NodeError(f"--tls-cert/--tls-key: cannot load: {exc}") from exc
        elif self.certificate is not None:
            self._load(self._server_context, self.certificate)
        else:
            raise NodeError("no TLS certificate to serve", hint="create one with `bcfl tls init`")
        return self._server_context

    @property
    def serving(self) -> bool:
        return self._server_context is not None

    def take_up(self, certificate: NodeCertificate) -> None:
        """Serve ``certificate`` from the next handshake on; open connections keep theirs."""
        self.certificate = certificate
        if self._server_context is not None:
            self._load(self._server_context, certificate)

    @staticmethod
    def _load(ctx: ssl.SSLContext, certificate: NodeCertificate) -> None:
        with certificate.pem_files() as (cert, key, password):
            ctx.load_cert_chain(cert, key, password=password)

    def view(self) -> dict[str, str | bool | None]:
        """This node's transport for ``bcfl status``."""
        fingerprint = self.certificate.fingerprint if self.certificate is not None else None
        return {"mode": self.mode, "serving": self.serving, "fingerprint": fingerprint}

    def link(self, url: str) -> LinkState:
        """How the link to ``url`` is protected (``PeerView``'s fields)."""
        return self.links.get(url, LinkState())

    def link_view(self, url: str) -> dict[str, str | bool | None]:
        link = self.link(url)
        return {"encrypted": link.encrypted, "verified": link.verified, "tls_refused": link.refused}

    # --- calling ------------------------------------------------------------------------
    def check_peer_certificate(self, peer: str, der: bytes | None, expected: str | None) -> str:
        """Pinned mode: the member whose pinned certificate the peer presented, or TlsRefused
        (also recorded for ``bcfl status``)."""
        link = self.links.setdefault(peer, LinkState())
        try:
            if der is None:
                raise TlsRefused(peer, "certificate_not_pinned", "the peer sent no certificate")
            did = self.pins.verdict(peer, der, expected)
        except TlsRefused as exc:
            link.refused = str(exc.message)
            raise
        with self._lock:
            if len(self._certs) >= MAX_REMEMBERED_CERTS:
                self._certs.clear()
            self._certs[fingerprint_of(der)] = der
        link.encrypted, link.verified, link.refused = True, f"pinned:{did}", None
        return did

    def refuse(self, peer: str, reason: str, detail: str) -> TlsRefused:
        """Record a refusal found outside the pin check (CA mode: the ``ssl`` module's
        verification failed) for ``bcfl status``; the caller raises or logs what it returns."""
        refused = TlsRefused(peer, reason, detail)
        link = self.links.setdefault(peer, LinkState())
        link.encrypted, link.verified, link.refused = False, "none", str(refused.message)
        return refused

    def note_link(self, url: str) -> None:
        """Record how a link that just worked was protected."""
        link = self.links.setdefault(url, LinkState())
        if url.startswith("https://"):
            link.encrypted = True
            if self.mode != "pinned":
                link.verified, link.refused = "ca", None
        else:
            link.encrypted, link.verified = False, "none"

    def before_send(self, url: str, *, what: str = "blobs and models") -> None:
        check_clear_text(url, allow=self.allow_clear_text, what=what)

    def aiohttp_ssl(
        self, peer: str, expected: Callable[[], str | None]
    ) -> aiohttp.Fingerprint | ssl.SSLContext | bool:
        """The ``ssl=`` of an aiohttp connector for ``peer`` (ignored for http:// URLs, which
        are given ``clear_text_context()``: no CA bundle loaded for a link that has no TLS)."""
        if peer.startswith("http://"):
            return clear_text_context()
        if self.mode == "pinned":
            return _PinCheck(self, peer, expected)
        return self.ca_context()

    def ca_context(self) -> ssl.SSLContext:
        return _ca_context(str(self.ca_bundle) if self.ca_bundle is not None else None)

    def httpx_verify(self, url: str, expected: str | None) -> ssl.SSLContext:
        """The ``verify=`` of a synchronous client for ``url`` (blob transfer, commands).

        httpx has no fingerprint hook, so in pinned mode the context trusts exactly one
        certificate: the peer's, once its fingerprint passed the pin check (remembered from an
        earlier connection, else fetched by one handshake that sends nothing)."""
        if url.startswith("http://"):
            return clear_text_context()
        if self.mode != "pinned" or not url.startswith("https://"):
            return self.ca_context()
        der = self._remembered(expected)
        if der is None:
            der = _fetch_certificate(url)
        self.check_peer_certificate(url, der, expected)
        return _exact_context(der)

    def _remembered(self, did: str | None) -> bytes | None:
        if did is None:
            return None
        with self._lock:
            for fp, der in self._certs.items():
                if self.pins.member_of(fp) == did:
                    return der
        return None


CA_BUNDLE_ENV = "BCFL_CA_BUNDLE"


def command_verify(home: Home | None, url: str, *, pin: str | None = None) -> ssl.SSLContext | None:
    """How a command (``bcfl submit``, ``status``, ...) checks the node it calls over https.

    With ``pin`` (``bcfl join --tls-fingerprint``: the fingerprint a founder gives out with the
    genesis hash, as a Syncthing device id) the node must present exactly that certificate.
    This member's own node (the URL ``bcfl node`` recorded in the home, or its listen address)
    is held to exactly the certificate in ``HOME/tls.crt``, pinned mode or not. Any other https
    node is verified against ``BCFL_CA_BUNDLE`` or the system's CAs, hostname included. None:
    plain http, the client's default.
    """
    if not url.startswith("https://"):
        return None
    if pin is not None:
        if not is_hash_hex(pin):
            raise UsageError(f"--tls-fingerprint {pin!r}: expected 64 lowercase hex digits")
        trust = TransportTrust("pinned")
        trust.pins.update({url: pin})
        return trust.httpx_verify(url, url)
    ders = _own_certificates(home, url) if home is not None else ()
    if ders:
        return _exact_context(*ders)
    return _ca_context(os.environ.get(CA_BUNDLE_ENV) or None)


def _own_certificates(home: Home, url: str) -> tuple[bytes, ...]:
    """The home's node certificate, and the next one while a rotation is under way."""
    try:
        recorded = json.loads((home.node_dir / "node.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(recorded, dict) or recorded.get("tls") is not True:
        return ()
    ours = {str(recorded.get("url", "")).rstrip("/")}
    host, _, port = str(recorded.get("listen", "")).rpartition(":")
    wildcard = host in ("", "0.0.0.0", "::")  # noqa: S104 - reading, not binding
    for name in {host, "127.0.0.1", "localhost"} if wildcard else {host}:
        ours.add(f"https://{name}:{port}")
    if url.rstrip("/") not in ours:
        return ()
    ders = []
    for name in (TLS_CERT_FILE, TLS_NEXT_CERT_FILE):
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            ders.append(ssl.PEM_cert_to_DER_cert((home.root / name).read_text(encoding="ascii")))
    return tuple(ders)


def _fetch_certificate(url: str) -> bytes | None:
    """The certificate ``url`` presents (a handshake, then close: no request is sent)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=PREFETCH_TIMEOUT_S) as sock,
            ctx.wrap_socket(sock) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise NodeError(f"{url}: no TLS handshake: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _exact_context(*ders: bytes) -> ssl.SSLContext:
    """A client context that trusts exactly the certificates ``ders`` (and checks no
    hostname: the certificate is the identity)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    for der in ders:
        ctx.load_verify_locations(cadata=der)
    return ctx


@functools.cache
def clear_text_context() -> ssl.SSLContext:
    """The TLS context of a client to an ``http://`` URL, which never uses it: it trusts no
    CA at all (so a redirect or a mistake that reached TLS would fail closed), and building it
    loads no bundle. Loading the system's CAs costs ~35 ms of CPU (more under load), which a
    node used to pay on its event loop, and again in a blob thread, the first time it asked a
    plain-http peer anything: on a fresh node's catch-up path (issue 21, item 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostnames checked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@functools.lru_cache(maxsize=8)
def _ca_context(ca_bundle: str | None) -> ssl.SSLContext:
    """CA mode: the consortium's bundle, or the system's CAs; hostnames checked."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if ca_bundle is None else ssl.TLSVersion.TLSv1_3
    return ctx


__all__ = [
    "MAX_REMEMBERED_CERTS",
    "PREFETCH_TIMEOUT_S",
    "REASONS",
    "TLS_MODES",
    "LinkState",
    "PinTable",
    "TlsMode",
    "TlsRefused",
    "TransportTrust",
    "check_clear_text",
    "clear_text_context",
    "command_verify",
    "is_loopback",
]
