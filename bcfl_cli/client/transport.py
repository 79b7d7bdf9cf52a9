"""The signed HTTP client: one pooled ``httpx.Client``, every request signed on its way out.

As in httpx, the client (retries, refusals, response limits) is apart from its transport (the
connection pool, TLS; a test passes ``httpx.MockTransport``), and the RFC 9421 signature is an
``httpx.Auth`` flow, :class:`RequestSigner`. Retries are bounded and only for failures that say
nothing about the request itself (connection errors, timeouts, 429/502/503/504). Each retry is
signed afresh (new nonce and ``created``), since the first attempt may have reached the peer and
its nonce is spent; so routes that change state must be idempotent (transactions are keyed by
hash, blob chunks by offset). A refusal (any other 4xx/5xx) is raised at once as a
:class:`~bcfl_cli.wire.refusal.Refusal` carrying the peer's code and one-line reason; no answer
after every retry is a ``Refusal`` of kind ``unreachable``.
"""

from __future__ import annotations

import functools
import json
import random
import ssl
import time
from collections.abc import Collection, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# httpx imports httpcore when its first transport is made: in a node, in a blob thread on a fresh
# node's catch-up path, the other downloads queued on the import lock (issue 21). Now, once.
import httpcore  # noqa: F401
import httpx
import nacl.signing

from bcfl_cli.errors import NodeError
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.wire.httpsig import sign_request
from bcfl_cli.wire.refusal import Refusal

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 4096
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 5.0
#: Connections one client keeps to its node (and, of those, idle for reuse).
MAX_CONNECTIONS = 16
MAX_KEEPALIVE_CONNECTIONS = 8

#: The request extension that carries the exact body bytes to sign (None: no body), so that a
#: large body can travel as a one-shot stream and still be signed.
SIGNED_BODY = "bcfl.signed_body"

_INLINE_BODY_BYTES = 64 * 1024


def _once(data: bytes) -> Iterator[bytes]:
    yield data


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The TLS context every client of this process uses (httpx's default verification).

    Building it loads the CA bundle (~50 ms of CPU, more on a busy machine), which httpx does
    for every new ``Client``; a node opens one client per blob transfer and peer, so the
    context is built once and shared (an ``SSLContext`` is safe to share between threads).
    """
    return httpx.create_ssl_context()


class RequestSigner(httpx.Auth):
    """Signs every request that goes through it with ``key`` (RFC 9421, ``bcfl/http/v1``).

    The body signed is the request extension :data:`SIGNED_BODY` when set (the client sets it:
    a large body is sent as a one-shot stream that cannot be read twice), else the request's
    own content; a GET or HEAD without content is signed with no Content-Digest.
    """

    requires_request_body = False

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self.did = did_from_public_key(bytes(key.verify_key))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if SIGNED_BODY in request.extensions:
            # taken off the request once signed: httpx keeps a sent request alive (in a
            # reference cycle with its response) until the garbage collector runs
            body: bytes | None = request.extensions.pop(SIGNED_BODY)
        elif request.method in {"GET", "HEAD"} and not request.headers.get("content-length"):
            body = None
        else:
            body = request.read()
        request.headers.update(
            sign_request(self._key, request.method, str(request.url), dict(request.headers), body)
        )
        yield request


def http_client(
    base_url: str,
    *,
    auth: httpx.Auth | None,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.Client:
    """The one place an ``httpx.Client`` to a node is made: pool bounds, TLS, no redirects.
    ``verify``: the node/tls.py rules (a pinned certificate); default the system's CAs."""
    checks: ssl.SSLContext | bool = verify if verify is not None else True
    if verify is None and transport is None:
        checks = shared_ssl_context()  # given its own transport, the client never reads it
    return httpx.Client(
        base_url=base_url,
        auth=auth,
        timeout=timeout,
        transport=transport,
        verify=checks,
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
        ),
    )


class SignedClient:
    """Signs every request with ``identity_key``; use as a context manager or call close()."""

    def __init__(
        self,
        identity_key: nacl.signing.SigningKey,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self._signer = RequestSigner(identity_key)
        self.did = self._signer.did
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_response_bytes = max_response_bytes
        self._client = http_client(
            self.base_url, auth=self._signer, timeout=timeout, transport=transport, verify=verify
        )

    def __enter__(self) -> SignedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _build(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Request:
        method = method.upper()
        body = content if content is not None else (None if method in {"GET", "HEAD"} else b"")
        sent: bytes | Iterator[bytes] | None = content
        extra = dict(headers or {})
        if content is not None and len(content) > _INLINE_BODY_BYTES:
            # httpx keeps each request in a reference cycle (response <-> stream) until the
            # garbage collector runs; a one-shot iterator lets a large body go as soon as sent.
            sent = _once(content)
            extra["Content-Length"] = str(len(content))
        return self._client.build_request(
            method, path, content=sent, params=params, headers=extra, extensions={SIGNED_BODY: body}
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        allow: Collection[int] = (),
    ) -> httpx.Response:
        """Send a signed request; return a 2xx response (or one whose status is in ``allow``)."""
        extra = dict(headers or {})
        if json_body is not None:
            content = canonical(json_body)
            extra.setdefault("Content-Type", "application/json")
        with self._send(method, path, content=content, params=params, headers=extra) as response:
            if not response.is_success and response.status_code not in allow:
                raise _refusal(method, response)
            data = bytearray()
            for piece in response.iter_bytes():
                data += piece
                if len(data) > self.max_response_bytes:
                    raise NodeError(
                        f"{method} {response.request.url}: response over "
                        f"{self.max_response_bytes} bytes",
                        hint="the peer misbehaves; try another peer",
                    )
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                content=bytes(data),
                request=response.request,
            )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, **kw)

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        """A signed request whose 2xx body the caller reads in pieces (e.g. blob downloads).

        Connection-level retries apply to getting the response head only; a connection that
        drops mid-body raises ``httpx.TransportError`` to the caller, which resumes.
        """
        with self._send(method, path, content=None, params=params, headers=headers) as response:
            if not response.is_success:
                raise _refusal(method, response)
            yield response

    @contextmanager
    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
    ) -> Iterator[httpx.Response]:
        last_error = "no attempt made"
        for attempt in range(self.retries + 1):
            request = self._build(method, path, content=content, params=params, headers=headers)
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                retry_after = response.headers.get("retry-after", "")
                response.close()
                last_error = f"HTTP {response.status_code}"
                self._sleep(attempt, float(retry_after) if retry_after.isdigit() else None)
                continue
            try:
                yield response
            finally:
                response.close()
            return
        raise Refusal(
            f"{method} {self.base_url}{path}: no answer after {self.retries + 1} attempts "
            f"({last_error})",
            hint="check that the peer is running and reachable (bcfl status on that machine)",
        )

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        if attempt >= self.retries:
            return
        delay = self.backoff_s * (2**attempt) * (0.5 + random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        time.sleep(min(delay, MAX_BACKOFF_S))


def _refusal(method: str, response: httpx.Response) -> Refusal:
    raw = b""
    for piece in response.iter_bytes():
        raw += piece
        if len(raw) > MAX_ERROR_BODY_BYTES:
            break
    code, message = f"http_{response.status_code}", raw[:200].decode("utf-8", "replace")
    try:
        payload = json.loads(raw[:MAX_ERROR_BODY_BYTES])
    except (ValueError, RecursionError):  # a peer's error body may be 4 KB of "["
        payload = None
    if isinstance(payload, dict):
        code = str(payload.get("error", code))[:64]
        message = str(payload.get("message", message))[:300]
    return Refusal(
        f"{method} {response.request.url} refused ({response.status_code} {code}): {message}",
        status=response.status_code,
        code=code,
    )
