"""The node's view of its peers: signed async requests, per-peer outboxes, last known status.

Every request to a peer is signed (RFC 9421) with this member's key, even public reads, so a
peer with a broken clock or key shows up at once. Messages to push (consensus messages,
transactions) go through one bounded queue per peer, drained by one task per peer: a slow or
dead peer fills only its own queue (the oldest message is dropped, and consensus pulls what it
missed on its next timeout), it never delays what the others receive.

Consensus messages and small updates to a peer go on one WebSocket per peer
(``PEER_STREAM_PATH``), opened by a signed request, instead of one signed POST each: with ten
validators a round is some two hundred and eighty of them, and the HTTP exchange cost both sides
more CPU than the message itself. Each message carries its author's own signature. Where the
stream cannot be opened (an older node, a proxy without WebSockets) or breaks, the message goes
by POST as before and the stream is tried again later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import re
import ssl as ssl_module
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import httpx
import nacl.signing
import yarl

from bcfl_cli.client.large_body import LargeBodyTransport
from bcfl_cli.client.transport import SignedClient, shared_ssl_context
from bcfl_cli.errors import BcflError, EncodingError
from bcfl_cli.node.logging import fields
from bcfl_cli.node.tls import TlsRefused, TransportTrust
from bcfl_cli.node.traffic import BlobTraffic, CountingTransport
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import canonical, parse_json
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.wire.httpsig import sign_request
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.schemas import MAX_INLINE_BLOB_BYTES
from bcfl_cli.wire.urls import normalise_url

log = logging.getLogger("bcfl.node.peers")

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
OUTBOX_SIZE = 512
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_PEERS = 64
LEARN_BACKOFF_S = 60.0
#: Connections kept to one peer: its outbox pushes one at a time; pulls, status polls and
#: small blob pushes share the rest (large blobs move on clients of their own).
PEER_CONNECTIONS = 6
#: A pushing peer names the URL its own node is reached at; it is believed only after
#: ``GET URL/v1/status`` shows the same genesis and the did that signed the push.
NODE_URL_HEADER = "Bcfl-Node-Url"
#: A pushed transaction names the members it was already sent to (``did_tag`` of each,
#: space-separated): a receiver relays it only to its peers outside that set. Without it,
#: flooding sent every transaction n(n-1) times (90 pushes a transaction with 10 nodes, most
#: of a node's CPU); in a full mesh the author's own push now covers everyone. The set is a
#: hint: a missing or malformed one means "relay to all", never a refusal.
SEEN_HEADER = "Bcfl-Seen-By"
MAX_SEEN_TAGS = 128
#: Each network wait (connect, the response head, a piece of the body) of a blob client; a
#: download given a shorter slice of its deadline waits at most that slice, never under the
#: minimum (a hung peer otherwise held the download's thread 2 x 30 s after the slice).
BLOB_CLIENT_TIMEOUT_S = 30.0
MIN_BLOB_CLIENT_TIMEOUT_S = 1.0
_TAG = re.compile(r"^[0-9a-f]{12}\Z")
CONSENSUS_PATH = "/v1/consensus"
PEER_STREAM_PATH = "/v1/stream"
#: How long a frame may take to leave (a stalled peer's stream is dropped, the POST tried).
STREAM_SEND_TIMEOUT_S = 5.0
#: When to try a stream again: after it broke, after the peer refused or lacks one.
STREAM_RETRY_S = 2.0
STREAM_REFUSED_RETRY_S = 60.0
#: The peer sends nothing on the stream but control frames; anything larger ends it.
STREAM_MAX_INBOUND = 64 * 1024


@functools.lru_cache(maxsize=1024)
def did_tag(did: str) -> str:
    """A short stand-in for a did in ``SEEN_HEADER`` (a collision only skips one relay).

    Cached: every gossiped transaction tags each peer again, and the members are few."""
    return hashlib.sha256(did.encode("utf-8")).hexdigest()[:12]


def parse_seen(value: str | None) -> frozenset[str]:
    """The tags of a ``SEEN_HEADER`` value; empty (relay to all) when absent or malformed."""
    if not value or len(value) > MAX_SEEN_TAGS * 13:
        return frozenset()
    tags = value.split()
    if len(tags) > MAX_SEEN_TAGS or not all(_TAG.match(t) for t in tags):
        return frozenset()
    return frozenset(tags)


@dataclass
class PeerInfo:
    url: str
    did: str | None = None
    genesis: str | None = None
    height: int | None = None
    head: str | None = None
    last_seen_ms: int | None = None
    error: str | None = None
    refused: bool = False  # another genesis: never followed
    outbox: asyncio.Queue[tuple[str, bytes, str | None]] = field(
        default_factory=lambda: asyncio.Queue(OUTBOX_SIZE)
    )
    dropped: int = 0
    stream: aiohttp.ClientWebSocketResponse | None = None
    stream_retry_at: float = 0.0
    streamed: int = 0  # messages sent on the stream (the rest went by POST)
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)


#: A peer did not answer usefully (``status`` 0: no answer): the one refusal type of the wire.


@functools.lru_cache(maxsize=16)
def _timeout(read_s: float) -> aiohttp.ClientTimeout:
    """Connect and read timeouts; one object per value (the callers use two or three)."""
    return aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=read_s)


def _new_client(
    connections: int, ssl: aiohttp.Fingerprint | ssl_module.SSLContext | bool | None = None
) -> aiohttp.ClientSession:
    """A session for peer requests (aiohttp: about a quarter of httpx's CPU per small request,
    measured on loopback; with 10 nodes on 2 cores the client side was a third of a node's CPU).

    Bodies are never decompressed (peers do not compress; a compressed answer is refused as
    malformed, so no zip bomb is inflated) and no cookies are kept."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, ssl=shared_ssl_context() if ssl is None else ssl
        ),
        timeout=_timeout(READ_TIMEOUT_S),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
        raise_for_status=False,
    )


class Peers:
    """All configured peers of this node (``--peer`` URLs), and how to talk to them."""

    def __init__(
        self,
        key: nacl.signing.SigningKey,
        urls: list[str],
        *,
        self_url: str,
        stream: bool = True,
        trust: TransportTrust | None = None,
        traffic: BlobTraffic | None = None,
    ) -> None:
        self._key = key
        #: blob bytes pushed to and fetched from peers (node/traffic.py)
        self.traffic = traffic if traffic is not None else BlobTraffic()
        # TLS rules (node/tls.py): pins or CAs, and no blob in clear to another machine
        self.trust = trust if trust is not None else TransportTrust(None, allow_clear_text=True)
        self.trust.on_mode_change.append(self._drop_sessions)
        self.stream = stream
        self.own_tag = did_tag(did_from_public_key(bytes(key.verify_key)))
        own = normalise_url(self_url)
        self.own_url = own
        self._learning: set[str] = set()
        self._tried: dict[str, float] = {}
        self.peers: dict[str, PeerInfo] = {}
        for url in urls:
            norm = normalise_url(url)
            if norm != own and norm not in self.peers:
                self.peers[norm] = PeerInfo(norm)
        # One small connection pool per peer, not one big pool for all, so that one slow peer
        # cannot hold the connections the others need. URLs not (yet) among the peers share
        # ``_other``. Sessions are made on first use: aiohttp binds one to the running loop.
        self._clients: dict[str, aiohttp.ClientSession] = {}
        self._other: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._watchers: set[asyncio.Task[None]] = set()  # one per open stream
        # push_update's encodings of one update, the same for every peer: tx hash, payload,
        # SEEN_HEADER, then the stream frame and the POST body as they are first needed
        self._update_body: _UpdateEncodings | None = None

    def __iter__(self) -> Any:
        return iter(list(self.peers.values()))

    def live(self) -> list[PeerInfo]:
        return [p for p in self.peers.values() if not p.refused]

    async def close(self) -> None:
        tasks = [*self._workers, *self._watchers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for peer in self.peers.values():
            await self._drop_stream(peer, retry_in=0.0)
        for client in [*self._clients.values(), self._other]:
            if client is not None:
                await client.close()
        self._clients.clear()
        self._other = None

    def _drop_sessions(self) -> None:
        """The trust mode changed: sessions (and streams) made under the old one are closed,
        and the next request to each peer makes a new one under the new rules."""
        old = [*self._clients.values(), *([self._other] if self._other else [])]
        self._clients.clear()
        self._other = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, or shutting down): nothing left to close on
            return
        for session in old:
            task = loop.create_task(session.close())
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    def _client_for(self, peer: PeerInfo) -> aiohttp.ClientSession:
        if self.peers.get(peer.url) is not peer:
            if self._other is None:
                tls = self.trust.aiohttp_ssl("", lambda: None)
                self._other = _new_client(PEER_CONNECTIONS, tls)
            return self._other
        client = self._clients.get(peer.url)
        if client is None:
            tls = self.trust.aiohttp_ssl(peer.url, lambda: peer.did)
            client = self._clients[peer.url] = _new_client(PEER_CONNECTIONS, tls)
        return client

    # --- requests -------------------------------------------------------------------------
    async def request(
        self,
        peer: PeerInfo,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, str | int] | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
        timeout_s: float | None = None,
        content_type: str = "application/json",
        seen: str | None = None,
    ) -> Any:
        """Signed request; the parsed JSON answer of a 2xx, else Refusal."""
        headers = {"Content-Type": content_type} if body is not None else {}
        if body is not None:
            headers[NODE_URL_HEADER] = self.own_url
        if seen is not None:
            headers[SEEN_HEADER] = seen
        url = peer.url + path
        if params:
            url += "?" + urlencode(params)
        headers.update(sign_request(self._key, method, url, headers, body))
        timeout = _timeout(READ_TIMEOUT_S if timeout_s is None else timeout_s)
        client = self._client_for(peer)
        data = bytearray()
        try:
            # encoded=True: the URL goes out exactly as signed (no re-quoting)
            async with client.request(
                method,
                yarl.URL(url, encoded=True),
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                if (response.content_length or 0) > max_bytes:
                    raise Refusal(f"{url}: answer over {max_bytes} bytes")
                async for piece in response.content.iter_chunked(256 * 1024):
                    data += piece
                    if len(data) > max_bytes:
                        raise Refusal(f"{url}: answer over {max_bytes} bytes")
        except TlsRefused as exc:
            log.warning("peer refused", extra=fields(peer=peer.url, reason=exc.reason))
            raise Refusal(exc.message, code=exc.reason) from exc
        except aiohttp.ClientConnectorCertificateError as exc:  # CA mode: verification failed
            refused = self.trust.refuse(peer.url, "ca_verify_failed", str(exc.certificate_error))
            log.warning("peer refused", extra=fields(peer=peer.url, reason=refused.reason))
            raise Refusal(refused.message, code=refused.reason) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Refusal(f"{peer.url}{path}: {type(exc).__name__}: {exc}") from exc
        self.trust.note_link(peer.url)
        try:
            payload = parse_json(bytes(data), max_bytes=max_bytes) if data else None
        except EncodingError as exc:
            raise Refusal(f"{peer.url}{path}: malformed answer: {exc.message}") from exc
        if not 200 <= status < 300:
            code, message = f"http_{status}", ""
            if isinstance(payload, dict):
                code = str(payload.get("error", code))[:64]
                message = str(payload.get("message", ""))[:300]
            raise Refusal(
                f"{peer.url}{path}: {status} {code}: {message}",
                status=status,
                code=code,
            )
        return payload

    async def get(self, peer: PeerInfo, path: str, **kw: Any) -> Any:
        return await self.request(peer, "GET", path, **kw)

    async def identify(self, peer: PeerInfo, *, timeout_s: float = 10.0) -> str | None:
        """The did a peer answers with (``GET /v1/status``), kept on ``peer``; None when it
        does not answer. The sync loop learns it too, but maybe not yet: a trainer asks before
        it decides whether that peer checks updates (and so needs the blob)."""
        if peer.did is not None:
            return peer.did
        try:
            status = await self.get(peer, "/v1/status", timeout_s=timeout_s)
        except Refusal:
            return None
        me = status.get("me") if isinstance(status, dict) else None
        did = me.get("did") if isinstance(me, dict) else None
        if isinstance(did, str) and peer.did is None:
            peer.did = did
        return peer.did

    async def post(self, peer: PeerInfo, path: str, payload: Any, **kw: Any) -> Any:
        return await self.request(peer, "POST", path, body=canonical(payload), **kw)

    async def put_small_blob(self, peer: PeerInfo, digest: str, data: bytes) -> bool:
        """Push a one-chunk blob on the pooled connections: one request (chunk 0, which the
        peer stores whole), or a finalise after it where the peer asks for one.

        The same signed routes as ``blob_fetch.upload_blob`` (which a thread runs with a client
        of its own, and which asks where an upload stands first); False when the peer needs
        that resumable protocol instead (a partial upload of this blob there, or a chunk size
        smaller than ``data``). Raises Refusal when the peer cannot be reached.
        """
        size = len(data)
        params: dict[str, str | int] = {"size": size}
        octets = "application/octet-stream"
        self._refuse_clear_text(peer)
        try:
            answer = await self.request(
                peer,
                "PUT",
                f"/v1/blobs/{digest}/chunks/0",
                body=data,
                params=params,
                content_type=octets,
            )
        except Refusal as exc:
            if exc.status in (400, 409):
                return False
            raise
        self.traffic.sent(size)
        if not isinstance(answer, dict):
            return False
        if answer.get("complete") is True:
            return True
        if answer.get("received") != size:
            return False
        await self.request(
            peer, "PUT", f"/v1/blobs/{digest}", body=b"", params=params, content_type=octets
        )
        return True

    async def push_update(self, peer: PeerInfo, tx: Transaction, blob: bytes) -> bool:
        """An update transaction with its (small) blob, in one request (``POST /v1/updates``).

        True when the peer holds both now. False when it refused the pair (say its round is not
        open yet, or it is a node without the route): send the blob on its own then, and let
        the transaction follow by gossip, as for any peer. Raises Refusal when the
        peer cannot be reached. Names every live peer as covered, as the author's
        ``broadcast`` would, so that the receivers relay it to no one.
        """
        self._refuse_clear_text(peer)
        update = self._update_body
        if update is None or update.tx_hash != tx.hash:
            # one encoding and one covering list for every peer (~27 KB for the digits MLP)
            payload = {"tx": tx.to_dict(), "blob": base64.b64encode(blob).decode("ascii")}
            update = self._update_body = _UpdateEncodings(
                tx.hash, payload, self._covering(self.live(), frozenset())
            )
        if len(blob) <= MAX_INLINE_BLOB_BYTES and await self._stream_send(peer, update.frame()):
            self.traffic.sent(len(blob))
            return True  # taken as POST would; a refusal there is the peer's to log
        try:
            await self.request(peer, "POST", "/v1/updates", body=update.body(), seen=update.seen)
        except Refusal as exc:
            if 400 <= exc.status < 500:
                log.debug("update pushed apart", extra=fields(peer=peer.url, reason=exc.message))
                return False
            raise
        self.traffic.sent(len(blob))
        return True

    def _covering(self, targets: list[PeerInfo], seen: frozenset[str]) -> str | None:
        """``SEEN_HEADER`` for a transaction sent to ``targets``: who holds it then (None: too
        many to name, so receivers relay to all)."""
        covered = seen | {self.own_tag} | {did_tag(p.did) for p in targets if p.did}
        return " ".join(sorted(covered)) if len(covered) <= MAX_SEEN_TAGS else None

    def _refuse_clear_text(self, peer: PeerInfo) -> None:
        """Blobs and models go in clear only to loopback, or where the operator allowed it."""
        try:
            self.trust.before_send(peer.url)
        except TlsRefused as exc:
            raise Refusal(exc.message, code=exc.reason) from exc

    def blob_client(
        self, peer: PeerInfo, *, download: bool = False, timeout_s: float | None = None
    ) -> SignedClient:
        """A synchronous signed client for ``blob_fetch`` (run it in a thread), under the same
        TLS rules (its certificate check may do a handshake: call it in that thread too).
        ``download``: for one download (``BlobService``), whose body it reads a large piece
        at a time (``LargeBodyTransport``); else pooled (an upload's many chunks).
        ``timeout_s``: each network wait of the client at most this long (default
        ``BLOB_CLIENT_TIMEOUT_S``): a download given a slice of a deadline must not leave its
        thread waiting on a hung peer long after the slice is over."""
        self._refuse_clear_text(peer)
        try:
            verify = self.trust.httpx_verify(peer.url, peer.did)
        except BcflError as exc:
            raise Refusal(exc.message, code=getattr(exc, "reason", "unreachable")) from exc
        # the blob bytes it moves, as they stream, go to this node's traffic counts
        context = shared_ssl_context() if verify is None else verify
        inner: httpx.BaseTransport = (
            LargeBodyTransport(verify=context) if download else httpx.HTTPTransport(verify=context)
        )
        transport = CountingTransport(inner, self.traffic)
        timeout = BLOB_CLIENT_TIMEOUT_S if timeout_s is None else timeout_s
        return SignedClient(
            self._key,
            peer.url + "/v1",
            retries=1,
            timeout=max(MIN_BLOB_CLIENT_TIMEOUT_S, min(BLOB_CLIENT_TIMEOUT_S, timeout)),
            transport=transport,
        )

    # --- push ----------------------------------------------------------------------------
    def broadcast(self, path: str, payload: Any, *, seen: frozenset[str] | None = None) -> None:
        """Queue ``payload`` for every peer; a full queue drops its oldest message.

        With ``seen`` (transactions: the tags of members known to hold it already), only peers
        outside it get the message, and it names everyone covered so far (``SEEN_HEADER``).
        """
        body = canonical(payload)
        targets = self.live()
        header = None
        if seen is not None:
            targets = [p for p in targets if p.did is None or did_tag(p.did) not in seen]
            header = self._covering(targets, seen)
        for peer in targets:
            if peer.outbox.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    peer.outbox.get_nowait()
                    peer.dropped += 1
            peer.outbox.put_nowait((path, body, header))

    def start_outboxes(self) -> None:
        for peer in self.peers.values():
            self._start_outbox(peer)

    def _start_outbox(self, peer: PeerInfo) -> None:
        self._workers.append(asyncio.create_task(self._drain(peer), name=f"outbox {peer.url}"))

    def knows(self, did: str) -> bool:
        return any(p.did == did for p in self.peers.values())

    def learn(self, url: str, did: str, genesis: str) -> None:
        """A member pushing to us says its node is at ``url``: check that, then add it.

        A claim that does not parse (``urlsplit`` raises ValueError on a broken IPv6 host) is
        ignored like any other bad claim: it comes from a peer's header."""
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            return
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username
            or parts.query
            or parts.fragment
            or parts.path.rstrip("/") not in ("", "/v1")
        ):
            return
        now = time.monotonic()
        if now - self._tried.get(did, -LEARN_BACKOFF_S) < LEARN_BACKOFF_S:
            return  # one claim per member per backoff: no member makes us fetch at will
        self._tried[did] = now
        if len(self._tried) > 4 * MAX_PEERS:
            self._tried.clear()
        norm = normalise_url(url)
        if (
            norm == self.own_url
            or norm in self.peers
            or norm in self._learning
            or len(self.peers) >= MAX_PEERS
            or len(norm) > 200
        ):
            return
        self._learning.add(norm)
        task = asyncio.ensure_future(self._verify_and_add(norm, did, genesis))
        self._workers.append(task)

    async def _verify_and_add(self, url: str, did: str, genesis: str) -> None:
        candidate = PeerInfo(url)
        try:
            status = await self.get(candidate, "/v1/status", timeout_s=3.0)
        except Refusal:
            return
        finally:
            self._learning.discard(url)
        me = status.get("me") if isinstance(status, dict) else None
        if not isinstance(me, dict) or me.get("did") != did or status.get("genesis") != genesis:
            log.warning("a peer named a node URL that is not its own", extra=fields(url=url))
            return
        if url in self.peers or len(self.peers) >= MAX_PEERS:
            return
        candidate.did = did
        self.peers[url] = candidate
        self._start_outbox(candidate)
        log.info("learned a new peer", extra=fields(url=url, did=did))

    async def _drain(self, peer: PeerInfo) -> None:
        while True:
            path, body, seen = await peer.outbox.get()
            if path == CONSENSUS_PATH and await self._stream_send(peer, body):
                continue
            try:
                await self.request(peer, "POST", path, body=body, timeout_s=5.0, seen=seen)
            except Refusal as exc:
                if exc.status == 0:
                    peer.error = exc.message
                elif exc.status not in (409,):
                    log.debug("push refused", extra=fields(peer=peer.url, reason=exc.message))

    # --- the peer stream ---------------------------------------------------------------------
    async def _stream_send(self, peer: PeerInfo, body: bytes) -> bool:
        """Send a message on the peer's stream (opened if need be); False: use POST."""
        if not self.stream:
            return False
        stream = peer.stream
        if stream is None or stream.closed:
            async with peer.opening:  # the outbox and an update's push may both want one
                stream = peer.stream
                if stream is None or stream.closed:
                    stream = await self._open_stream(peer)
            if stream is None:
                return False
        try:
            async with asyncio.timeout(STREAM_SEND_TIMEOUT_S):
                await stream.send_bytes(body)
        except (aiohttp.ClientError, ConnectionError, TimeoutError, RuntimeError) as exc:
            log.debug("stream broke", extra=fields(peer=peer.url, reason=repr(exc)))
            await self._drop_stream(peer, retry_in=STREAM_RETRY_S)
            return False
        peer.streamed += 1
        return True

    async def _open_stream(self, peer: PeerInfo) -> aiohttp.ClientWebSocketResponse | None:
        now = time.monotonic()
        if now < peer.stream_retry_at:
            return None
        url = peer.url + PEER_STREAM_PATH
        headers = {NODE_URL_HEADER: self.own_url}
        headers.update(sign_request(self._key, "GET", url, headers, None))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + READ_TIMEOUT_S):
                stream = await self._client_for(peer).ws_connect(
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    autoclose=True,
                    autoping=True,
                    compress=0,
                    max_msg_size=STREAM_MAX_INBOUND,
                    timeout=_STREAM_TIMEOUT,
                )
        except aiohttp.WSServerHandshakeError as exc:
            # refused (not a member there, a clock out of the window) or no such route
            peer.stream_retry_at = now + STREAM_REFUSED_RETRY_S
            log.info(
                "peer takes no stream; posting",
                extra=fields(peer=peer.url, status=exc.status),
            )
            return None
        except (aiohttp.ClientError, ConnectionError, TimeoutError, TlsRefused) as exc:
            peer.stream_retry_at = now + STREAM_RETRY_S
            log.debug("stream not opened", extra=fields(peer=peer.url, reason=repr(exc)))
            return None
        peer.stream = stream
        watcher = asyncio.create_task(self._watch_stream(peer, stream), name=f"stream {peer.url}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return stream

    async def _watch_stream(self, peer: PeerInfo, stream: aiohttp.ClientWebSocketResponse) -> None:
        """Read the stream for its control frames (pings, close); it carries nothing else."""
        try:
            async for message in stream:
                if message.type not in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                    break  # the peer never sends data here
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass
        if stream.close_code not in (None, 1000, 1001, 1012):  # 1012: peer restarting
            log.warning(
                "peer closed the stream",
                extra=fields(peer=peer.url, code=stream.close_code, reason=_close_reason(stream)),
            )
        if peer.stream is stream:
            await self._drop_stream(peer, retry_in=STREAM_RETRY_S)

    async def _drop_stream(self, peer: PeerInfo, *, retry_in: float) -> None:
        stream, peer.stream = peer.stream, None
        peer.stream_retry_at = max(peer.stream_retry_at, time.monotonic() + retry_in)
        if stream is not None and not stream.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await stream.close()


@dataclass
class _UpdateEncodings:
    """One update as ``push_update`` sends it, each form encoded once, when first needed."""

    tx_hash: str
    payload: dict[str, Any]
    seen: str | None
    _frame: bytes | None = None
    _body: bytes | None = None

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = canonical({"update": self.payload, "seen": self.seen})
        return self._frame

    def body(self) -> bytes:
        if self._body is None:
            self._body = canonical(self.payload)
        return self._body


_STREAM_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0)


def _close_reason(stream: aiohttp.ClientWebSocketResponse) -> str:
    exc = stream.exception()
    return str(exc)[:200] if exc is not None else ""
