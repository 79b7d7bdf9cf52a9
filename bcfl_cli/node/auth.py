"""The node's front door: an ASGI layer that checks who is asking before any route runs.

For every state-changing request (anything but GET, HEAD, OPTIONS) it requires, in this order,
all on the request's head, before a byte of the body is read: a per-address rate limit (429);
an announced body within the size cap (413); a ``Host`` this node answers to (401); a valid
RFC 9421 signature covering the bcfl components (a body's ``Content-Digest`` among them), with
``created`` inside the window (401); a signer that is a CURRENT member, asked of the app's
``is_member`` on every request so a removal takes effect at once (403); a nonce not seen within
the window (401); a per-member rate limit (429). Only then is the body read: within the size cap
(413), the total read deadline (408) and the signer's share of the body budget
(``budget.py``, 503), and it must match the signed digest (401). A stranger's body is thus
refused unread, and nobody can make the node hold more than the budget. A refusal is a JSON
body ``{"error": code, "message": one line}``, the connection is closed when a body may still be
on its way, and nothing downstream runs. Read-only requests are
public, but one that carries a signature has it checked the same way (membership aside), so a
peer with a broken clock or key learns it from any request.

A WebSocket handshake (the peer stream) is admitted as a signed GET that must come from a
current member: the same signature, window, nonce and rate checks, refused with the same JSON
body as an HTTP denial response. The per-member rate limiter is put in its scope, so that the
stream's handler charges each message it reads as one request.

The verified did is put in the ASGI scope (``peer_did(request)`` reads it back).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bcfl_cli.node.budget import BodyBudget
from bcfl_cli.node.limits import NodeLimits, NonceCache, ReplayJournal, TokenBucketLimiter
from bcfl_cli.wire.httpsig import (
    COVERED_WHEN_PRESENT,
    RequestView,
    SignatureError,
    VerifiedSignature,
    VerifyPolicy,
    check_body,
    normalise_authority,
    verify_request_head,
)
from bcfl_cli.wire.refusal import Refusal

log = logging.getLogger("bcfl.node.auth")

PUBLIC_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SCOPE_KEY = "bcfl.peer_did"
LIMITER_KEY = "bcfl.peer_limiter"
#: A body at least this long has its Content-Digest checked in a worker thread, not on the loop.
THREADED_DIGEST_BYTES = 256 * 1024
#: Threads of the pool those checks run on: their own, not the event loop's default executor,
#: which a node's long jobs fill (a trainer's push holds one thread a peer for the whole upload,
#: downloads one a blob): behind them, two nodes pushing to each other would each wait for the
#: other's digest check to acknowledge a chunk (a deadlock broken only by timeouts).
DIGEST_THREADS = 2
_DIGEST_POOL = ThreadPoolExecutor(DIGEST_THREADS, thread_name_prefix="bcfl-digest")
MAX_HEADER_BYTES = 32 * 1024
#: The longest a signed body may take to arrive, whole (the gap between pieces is bounded
#: apart, by the app's read timeout): 8 MiB at 140 KB/s.
BODY_TIMEOUT_S = 60.0


def peer_did(request: HTTPConnection | Scope) -> str | None:
    """The did that signed this request (None for an unsigned public read)."""
    scope = request.scope if isinstance(request, HTTPConnection) else request
    value = scope.get(SCOPE_KEY)
    return value if isinstance(value, str) else None


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode("utf-8")


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    kind: str = "http",
) -> None:
    """A refusal's JSON answer; ``kind="websocket.http"`` answers a WebSocket handshake."""
    body = error_body(code, message)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": f"{kind}.response.start", "status": status, "headers": raw_headers})
    await send({"type": f"{kind}.response.body", "body": body})


class SignatureAuth:
    """ASGI middleware; wrap the node's Starlette app with it (see module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        is_member: Callable[[str], bool],
        limits: NodeLimits | None = None,
        authorities: Iterable[str] | None = None,
        local_authorities: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        replay_journal: Path | None = None,
        budget: BodyBudget | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.budget = budget or BodyBudget()
        self.body_timeout_s = body_timeout_s
        self.is_member = is_member
        self.limits = limits or NodeLimits()
        self.authorities = (
            frozenset(normalise_authority(a) for a in authorities) if authorities else None
        )
        # names accepted only from a loopback address (a node listening on all addresses)
        self.local_authorities = frozenset(normalise_authority(a) for a in local_authorities)
        self.clock = clock
        self.policy = VerifyPolicy(window_s=self.limits.window_s)
        # Nothing signed before this layer existed is accepted (a restart forgets the cache);
        # the journal keeps the few accepted requests that could outlive a restart regardless.
        self.nonces = NonceCache(
            self.limits.window_s,
            max_entries=self.limits.max_nonces,
            per_member=self.limits.nonces_per_member,
            max_members=self.limits.max_peers,
            not_before=int(clock()),
            journal=ReplayJournal(replay_journal) if replay_journal is not None else None,
            clock=clock,
        )
        self.by_address = TokenBucketLimiter(
            self.limits.rate_per_s * self.limits.address_factor,
            self.limits.burst * self.limits.address_factor,
            max_keys=self.limits.max_peers,
        )
        self.by_peer = TokenBucketLimiter(
            self.limits.rate_per_s, self.limits.burst, max_keys=self.limits.max_peers
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._handshake(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = _Held(self.budget)
        try:
            try:
                head = await self._admit(scope, receive)
                body = None if head is None else await self._read_signed_body(head, receive, held)
            except Refusal as refusal:
                _log_refusal(scope, refusal)
                headers = dict(refusal.headers)
                if _may_have_body(scope):  # unread bytes may follow: never parse them
                    headers["Connection"] = "close"
                await send_error(send, refusal.status, refusal.code, refusal.message, headers)
                return
            if head is None:
                await self.app(scope, receive, send)
                return
            scope[SCOPE_KEY] = head.did
            await self.app(scope, _replay(body or b"", receive), send)
        finally:
            held.release()

    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket opening: a member's signed GET, or an HTTP denial and nothing else."""
        try:
            head = await self._admit(scope, receive, websocket=True)
        except Refusal as refusal:
            _log_refusal(scope, refusal)
            await send_websocket_denial(scope, send, refusal)
            return
        assert head is not None  # a handshake is never a public read
        scope[SCOPE_KEY] = head.did
        scope[LIMITER_KEY] = self.by_peer
        await self.app(scope, receive, send)

    async def _admit(
        self, scope: Scope, receive: Receive, *, websocket: bool = False
    ) -> _SignedHead | None:
        """Every check the request's head allows (see the module docstring), in order; None for
        an unsigned public read, which passes through. The body is still unread."""
        method = "GET" if websocket else str(scope["method"]).upper()
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = self.by_address.acquire(address)
        if wait > 0:
            raise _too_many(wait)
        headers = _headers(scope)
        signed = "signature" in headers or "signature-input" in headers
        if websocket and not signed:
            raise Refusal(
                "a stream is opened by a member's signed request",
                status=401,
                code="missing_signature",
            )
        if method in PUBLIC_METHODS and not signed:
            return None
        # a handshake has no body (its first ASGI message is websocket.connect)
        has_body = not websocket and _announced_body(headers, self.limits.max_body_bytes)
        host = headers.get("host", "")
        if self.authorities is not None and not self._names_me(host, address):
            raise Refusal(
                f"this node is not {host!r}; sign the request for the node you send it to",
                status=401,
                code="wrong_authority",
            )
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(str(scope["path"]))
        view = RequestView(
            method=method,
            authority=host,
            path=path,
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            headers=headers,
            scheme=str(scope.get("scheme", "http")),
        )
        try:
            verified = verify_request_head(
                view, has_body=has_body, policy=self.policy, now=int(self.clock())
            )
        except SignatureError as exc:
            raise _signature_refusal(exc) from exc
        did = verified.keyid
        _drop_uncovered(scope, verified)
        if (websocket or method not in PUBLIC_METHODS) and not self.is_member(did):
            raise Refusal(
                f"{did} is not a current member of this consortium; "
                "ask the members to admit you (bcfl join, then bcfl members approve)",
                status=403,
                code="not_member",
            )
        assert verified.nonce is not None and verified.created is not None  # STRICT policy
        replay = self.nonces.check_and_add(
            did, verified.nonce, verified.created, member=self.is_member(did)
        )
        if replay is not None:
            raise Refusal(replay + "; sign every request afresh", status=401, code="replay")
        wait = self.by_peer.acquire(did)
        if wait > 0:
            raise _too_many(wait)
        return _SignedHead(did, view, verified, read_body=not websocket)

    def _names_me(self, host: str, address: str) -> bool:
        authority = normalise_authority(host)
        assert self.authorities is not None
        if authority in self.authorities:
            return True
        return authority in self.local_authorities and is_loopback(address)

    async def _read_signed_body(self, head: _SignedHead, receive: Receive, held: _Held) -> bytes:
        """The body of a request whose head checked out, within the size cap, the deadline and
        the signer's budget, and matching the signed digest; Refusal otherwise."""
        if not head.read_body:
            return b""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, self.limits.max_body_bytes, held, head.did)
        except TimeoutError:
            raise Refusal(
                f"the body took over {self.body_timeout_s:g} s; resend it",
                status=408,
                code="body_timeout",
            ) from None
        try:
            if len(body) >= THREADED_DIGEST_BYTES:
                # SHA-256 releases the GIL: in a thread, the loop goes on reading other peers'
                # chunks meanwhile (a 4 MiB blob chunk held the loop 2-3 ms, issue 19)
                check = partial(check_body, head.view, head.verified, body, policy=self.policy)
                await asyncio.get_running_loop().run_in_executor(_DIGEST_POOL, check)
            else:
                check_body(head.view, head.verified, body, policy=self.policy)
        except SignatureError as exc:
            raise _signature_refusal(exc) from exc
        return body


@dataclass(frozen=True)
class _SignedHead:
    did: str
    view: RequestView
    verified: VerifiedSignature
    read_body: bool


class _Held:
    """The bytes one request took from the body budget, all given back when it is answered."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.signer = ""
        self.size = 0

    def take(self, signer: str, size: int) -> None:
        if not self.budget.take(signer, size):
            raise Refusal(
                "this node holds as many request bodies as it may (for this signer or in all); "
                "retry in a moment",
                status=503,
                code="busy",
                headers={"Retry-After": "1"},
            )
        self.signer = signer
        self.size += size

    def release(self) -> None:
        if self.size:
            self.budget.give(self.signer, self.size)
            self.size = 0


def _drop_uncovered(scope: Scope, verified: VerifiedSignature) -> None:
    """Remove the headers the node would act on (``COVERED_WHEN_PRESENT``) that the signature
    does not cover: nothing downstream sees a value someone on the path may have set."""
    drop = {n.encode() for n in COVERED_WHEN_PRESENT if n not in verified.covered}
    if drop:
        scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in drop]


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a node listening on ::
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _signature_refusal(exc: SignatureError) -> Refusal:
    return Refusal(exc.message + (f"; {exc.hint}" if exc.hint else ""), status=401, code=exc.code)


def _may_have_body(scope: Scope) -> bool:
    """Whether bytes of a body may still follow this request's head on the connection."""
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and raw_value.strip(b" 0")):
            return True
    return False


def _log_refusal(scope: Scope, refusal: Refusal) -> None:
    client = scope.get("client") or ("?", 0)
    log.warning(
        "refused %s %s from %s: %d %s: %s",
        scope.get("method", "WEBSOCKET"),
        scope.get("path"),
        client[0],
        refusal.status,
        refusal.code,
        refusal.message,
    )


async def send_websocket_denial(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Refuse a WebSocket opening with the JSON body an HTTP refusal has, where the server can
    answer a handshake with a response (uvicorn can); else close it (the client sees 403)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.code})
        return
    await send_error(
        send,
        refusal.status,
        refusal.code,
        refusal.message,
        refusal.headers,
        kind="websocket.http",
    )


def _too_many(wait: float) -> Refusal:
    seconds = max(1, int(wait + 0.999))
    return Refusal(
        f"too many requests from this peer; retry in {seconds} s",
        status=429,
        code="rate_limited",
        headers={"Retry-After": str(seconds)},
    )


def _headers(scope: Scope) -> dict[str, str]:
    combined: dict[str, str] = {}
    total = 0
    for raw_name, raw_value in scope.get("headers", []):
        total += len(raw_name) + len(raw_value)
        if total > MAX_HEADER_BYTES:
            raise Refusal("request headers are too large", status=431, code="headers_too_large")
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1").strip(" \t")
        combined[name] = f"{combined[name]}, {value}" if name in combined else value
    return combined


def _announced_body(headers: dict[str, str], limit: int) -> bool:
    """Whether the head announces a body (a Content-Length over 0, or a transfer coding);
    refused at once when its announced length is over ``limit`` or not a number."""
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:
            raise Refusal("Content-Length is not a number", status=400, code="bad_request")
        if int(declared) > limit:
            raise _too_large(limit)
        return int(declared) > 0
    return "transfer-encoding" in headers


async def _read_body(receive: Receive, limit: int, held: _Held, signer: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal("the client went away mid-body", status=400, code="disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        held.take(signer, len(chunk))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(
        f"request body over the limit of {limit} bytes; send large blobs in chunks",
        status=413,
        code="body_too_large",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
            return message
        return await receive()

    return replay
