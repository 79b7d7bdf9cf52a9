"""The node's HTTP API (Starlette): routes, body validation, refusals, the OpenAPI description.

Reads are public; every route that changes anything sits behind ``SignatureAuth`` (RFC 9421
signature by a current member, fresh ``created``, unseen nonce, size and rate limits), except
``POST /v1/join``, which accepts a valid signature from a *non*-member (that is its purpose)
under a tighter size and rate limit, and only a ``join_request`` authored by the signer.
Every refusal is one JSON line ``{"error": code, "message": why and what to do}``, also logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bcfl_cli.client.tls import TransportTrust
from bcfl_cli.consensus.messages import Proposal
from bcfl_cli.errors import BcflError, EncodingError, NodeError, StoreError
from bcfl_cli.fl.update_summary import UpdateSummaries
from bcfl_cli.node.auth import LIMITER_KEY, SignatureAuth, is_loopback, peer_did
from bcfl_cli.node.blob_keeper import BlobKeeper
from bcfl_cli.node.blob_routes import CHUNK_SIZE, BlobRoutes
from bcfl_cli.node.budget import BodyBudget
from bcfl_cli.node.explorer import Explorer
from bcfl_cli.node.interfaces import ChainView, ConsensusReactor, MempoolView, PeerBook
from bcfl_cli.node.limits import NodeLimits, TokenBucketLimiter
from bcfl_cli.node.local_chain import member_role
from bcfl_cli.node.logging import fields
from bcfl_cli.node.mempool import precheck
from bcfl_cli.node.openapi import ROUTE_TABLE, openapi_document
from bcfl_cli.node.peers import (
    NODE_URL_HEADER,
    PEER_STREAM_PATH,
    SEEN_HEADER,
    did_tag,
    parse_seen,
)
from bcfl_cli.node.traffic import BlobTraffic
from bcfl_cli.protocol.block import Vote
from bcfl_cli.protocol.encoding import is_hash_hex, parse_json, sha256_hex
from bcfl_cli.protocol.tx import MAX_TX_BYTES, Transaction, TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.wire.httpsig import normalise_authority
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.schemas import (
    MAX_BLOCKS_PER_RESPONSE,
    MAX_HEIGHT_DIGITS,
    MAX_INLINE_BLOB_BYTES,
    AlarmView,
    BlocksResponse,
    ConsensusLog,
    ConsensusMessage,
    ErrorBody,
    GenesisResponse,
    MemberView,
    MeView,
    PeerView,
    PlanView,
    RoundView,
    StatusResponse,
    StreamUpdate,
    SubmitTx,
    SubmitUpdate,
    TxAccepted,
    TxStatus,
    parse_body,
    route_parameters,
    validate_body,
)

log = logging.getLogger("bcfl.node.api")

MAX_BLOCKS_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_TX_BODY = MAX_TX_BYTES + 1024
MAX_CONSENSUS_BODY = 8 * 1024 * 1024
#: Messages a peer stream's reader takes from the server before it stops reading (the
#: server then stops reading the socket: the sender waits, nothing piles up here).
STREAM_QUEUE = 16
#: Update frames of one stream being taken at once (each may wait for the next round).
MAX_STREAM_UPDATES = 16
#: Bytes of reason a WebSocket close frame carries at most (RFC 6455 §5.5: 125 - the code).
MAX_CLOSE_REASON_BYTES = 123
BODY_READ_TIMEOUT_S = 15.0
#: How long an update for the round after this node's waits for this node to open that round.
NEXT_ROUND_HOLD_S = 2.0
#: How many such updates may wait at once; past it, one is refused at once (``wrong_round``).
MAX_HELD_UPDATES = 32
#: ... and at most this many from one author (a trainer sends one update a round; two leave
#: room for a resend): one trainer's many genuine updates cannot take every slot.
MAX_HELD_PER_AUTHOR = 2
#: Under HOME/node: what the replay cache must remember across a restart (limits.ReplayJournal).
REPLAY_JOURNAL = "replay.log"
#: /v1/join admits any signer, each with its own small share of the nonce cache (a join takes
#: one request). docs/OPERATIONS.md: 1 per s, burst 10, per address (every signer here is a
#: fresh key, so the address bucket is the limit; it was 4x that, the members' routes' factor,
#: before issue 16).
JOIN_LIMITS = NodeLimits(
    max_body_bytes=MAX_TX_BODY,
    rate_per_s=1.0,
    burst=10.0,
    nonces_per_member=16,
    address_factor=1.0,
)

Handler = Callable[[Request], Awaitable[Response]]


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def refusal(request: Request, status: int, code: str, message: str) -> JSONResponse:
    log.warning(
        "refused %s %s: %d %s: %s",
        request.method,
        request.url.path,
        status,
        code,
        message,
        extra=fields(peer=peer_did(request), status=status, code=code),
    )
    return JSONResponse(ErrorBody(error=code, message=message).model_dump(), status_code=status)


def _guard(handler: Handler) -> Handler:
    """Turn the errors a handler may raise into one-line refusals."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Refusal as exc:
            return refusal(request, exc.status, exc.code, exc.message)
        except EncodingError as exc:
            return refusal(request, 400, "malformed_body", exc.message)
        except BcflError as exc:
            return refusal(request, 400, "refused", exc.message)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


class NextRoundHold:
    """Updates for the FL round after this node's, held until this node opens it (bounded in
    time, in number and per author), so that a peer's commit a moment ahead of ours does not
    cost a refusal. Whatever the wait's outcome, the mempool's checks then decide as they
    would have."""

    def __init__(self, chain: ChainView) -> None:
        self.chain = chain
        self.held = 0
        self._held_by: dict[str, int] = {}  # author -> its updates held (the keys: < 32)

    async def wait_for(self, tx: Transaction) -> None:
        if tx.kind is not TxKind.UPDATE or self.held >= MAX_HELD_UPDATES:
            return
        state = self.chain.state
        wanted = tx.body["round"]
        if not isinstance(wanted, int) or wanted != state.round.number + 1:
            return
        # only a trainer's genuine update takes a slot: no member fills them with forgeries
        author = state.member(tx.author)
        if author is None or not author.is_trainer or not tx.signature_valid():
            return
        mine = self._held_by.get(tx.author, 0)
        if mine >= MAX_HELD_PER_AUTHOR:
            return
        self.held += 1
        self._held_by[tx.author] = mine + 1
        try:
            await self.chain.wait_for_round(wanted, NEXT_ROUND_HOLD_S)
        finally:
            self.held -= 1
            left = self._held_by[tx.author] - 1
            if left:
                self._held_by[tx.author] = left
            else:
                del self._held_by[tx.author]


class Api:
    """The routes' handlers, built from what they read and feed: the chain, the ledger (blocks
    and transactions by hash), the mempool, the blob store and its keeper, the peers, the
    consensus reactor, and this node's did (its role in the status)."""

    def __init__(
        self,
        *,
        chain: ChainView,
        ledger: Ledger,
        pool: MempoolView,
        keeper: BlobKeeper,
        peers: PeerBook,
        reactor: ConsensusReactor,
        did: str,
        tls: TransportTrust,
        max_inline_blob: int = MAX_INLINE_BLOB_BYTES,
        traffic: BlobTraffic | None = None,
        unverified_rounds: Callable[[], list[int]] | None = None,
    ) -> None:
        self.chain = chain
        self.traffic = traffic if traffic is not None else BlobTraffic()
        self.unverified_rounds = unverified_rounds
        self.ledger = ledger
        self.blobs = ledger.blobs
        self.pool = pool
        self.keeper = keeper
        self.peers = peers
        self.reactor = reactor
        self.did = did
        self.tls = tls
        self.hold = NextRoundHold(chain)
        self.max_inline_blob = max_inline_blob
        self.max_update_body = MAX_TX_BODY + 4 * -(-max_inline_blob // 3) + 1024
        self._streams: dict[str, WebSocket] = {}  # one peer stream per member

    def is_member(self, did: str) -> bool:
        member = self.chain.state.member(did)
        return member is not None and member.active

    # --- public reads -----------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        """Height, head, round, peers, members, this node's role and any safety alarm."""
        chain = self.chain
        state = chain.state
        rnd = state.round
        member = state.member(self.did)
        body = StatusResponse(
            genesis=chain.genesis_hash,
            consortium=state.config.name,
            height=state.height,
            head=state.head_hash,
            head_time=state.head_time,
            round=RoundView(
                number=rnd.number,
                state="open" if rnd.open else "closed",
                base_model=rnd.base_model,
                model=rnd.model,
                deadline_height=rnd.deadline_height,
                deadline_time=rnd.deadline_time or None,
                updates=rnd.accepted_hashes,
                submitted=len(rnd.submitted),
            ),
            rounds_planned=state.config.training.rounds,
            plan=PlanView(**state.plan_progress()),
            peers=[
                PeerView(
                    url=p.url,
                    did=p.did,
                    height=p.height,
                    head=p.head,
                    last_seen=p.last_seen_ms,
                    error=p.error,
                    streamed=p.streamed,
                    stream_open=p.stream is not None and not p.stream.closed,
                    encrypted=self.tls.link(p.url).encrypted,
                    verified=self.tls.link(p.url).verified,
                    tls_refused=self.tls.link(p.url).refused,
                )
                for p in self.peers
            ],
            members=[
                MemberView(
                    did=m.did, name=m.name, roles=list(m.roles), power=m.power, status=m.status
                )
                for m in sorted(state.members.values(), key=lambda m: (m.since, m.name))
            ],
            pending_members=sorted(state.pending),
            me=MeView(
                did=self.did,
                name=member.name if member else None,
                role=member_role(state, self.did),  # type: ignore[arg-type]
            ),
            mempool=len(self.pool),
            consensus=self.reactor.progress(),
            alarm=AlarmView(**chain.alarm) if chain.alarm else None,
            tls=self.tls.view(),
            traffic=self.traffic.view(),
            unverified_rounds=self.unverified_rounds() if self.unverified_rounds else None,
        )
        return _json(body)

    async def genesis(self, request: Request) -> Response:
        """The genesis block and the signed configuration document it commits to."""
        return _json(
            GenesisResponse(block=self.ledger.block(0).to_dict(), document=self.ledger.document)
        )

    async def blocks(self, request: Request) -> Response:
        """Decided blocks with their commit certificates, ``start`` onwards, at most 100."""
        params = request.query_params
        start_raw, limit_raw = params.get("start", "0"), params.get("limit", "100")
        # isascii: str.isdigit() accepts digits (like "²") that int() refuses
        if not all(
            v.isascii() and v.isdigit() and len(v) <= MAX_HEIGHT_DIGITS
            for v in (start_raw, limit_raw)
        ):
            raise Refusal(
                "give start and limit as non-negative integers", status=400, code="bad_query"
            )
        start, limit = int(start_raw), min(int(limit_raw), MAX_BLOCKS_PER_RESPONSE)
        height = self.chain.state.height
        out: list[dict[str, Any]] = []
        if limit > 0 and start <= height:
            size = 0
            for block in self.ledger.blocks(start, min(height, start + limit - 1)):
                data = block.to_dict()
                out.append(data)
                size += sum(len(str(t)) for t in data["txs"])
                if size > MAX_BLOCKS_RESPONSE_BYTES:
                    break
        return _json(BlocksResponse(blocks=out))

    async def tx(self, request: Request) -> Response:
        """Where a transaction stands: committed (with height), pending, rejected or unknown."""
        digest = request.path_params["hash"]
        if not is_hash_hex(digest):
            raise Refusal("a transaction is named by 64 lowercase hex", status=400, code="bad_hash")
        pending = self.pool.get(digest)
        if pending is not None:
            return _json(TxStatus(tx=pending.to_dict(), height=None, status="pending", reason=""))
        if digest in self.chain.state.seen_tx:
            try:
                tx, height = self.ledger.tx(digest)
            except StoreError:
                raise Refusal("no such transaction here", status=404, code="unknown_tx") from None
            return _json(TxStatus(tx=tx.to_dict(), height=height, status="committed", reason=""))
        reason = self.pool.rejected_reason(digest)
        if reason is not None:
            return _json(TxStatus(tx=None, height=None, status="rejected", reason=reason))
        raise Refusal(
            f"transaction {digest[:16]} is unknown to this node", status=404, code="unknown_tx"
        )

    async def consensus_log(self, request: Request) -> Response:
        """Proposals and votes this node holds for ``height`` (peers pull them on timeouts)."""
        raw = request.path_params["height"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_HEIGHT_DIGITS:
            raise Refusal("height must be a non-negative integer", status=400, code="bad_height")
        proposals, votes = self.reactor.messages_at(int(raw))
        return _json(ConsensusLog(height=int(raw), proposals=proposals, votes=votes))

    # --- signed writes ----------------------------------------------------------------------
    async def submit_tx(self, request: Request) -> Response:
        """A signed transaction into the mempool (validated first); gossiped to peers."""
        body = parse_body(SubmitTx, await request.body(), max_bytes=MAX_TX_BODY)
        tx = Transaction.from_dict(body.tx)
        await self._await_round_of(tx)
        return self._admit_from(request, tx)

    async def submit_update(self, request: Request) -> Response:
        """An ``update`` transaction and its blob in one request, for a blob of at most
        ``max_inline_blob`` bytes (every update of a small model): ``PUT
        /v1/blobs/{hash}/chunks/0`` and ``POST /v1/txs`` at once.

        Nothing is kept unless the blob is the one the transaction names (hash and size) and the
        transaction passes the mempool's checks; then the blob is stored and the transaction is
        admitted and relayed as ``POST /v1/txs`` would.
        """
        body = parse_body(SubmitUpdate, await request.body(), max_bytes=self.max_update_body)
        tx, data = self._update_and_blob(body)
        await self._check_and_store(tx, data)
        return self._admit_from(request, tx)

    async def _check_and_store(self, tx: Transaction, data: bytes) -> None:
        """An update (for the next round, held until it opens) through the mempool's checks,
        then its blob stored; Refusal, with nothing kept, where it fails them."""
        self.traffic.received(len(data))
        await self._await_round_of(tx)
        state = self.chain.state
        if tx.hash not in state.seen_tx and tx.hash not in self.pool:
            precheck(state, tx)
        digest = tx.body["blob"]
        if self.blobs.has(digest):
            self.keeper.sent_again(digest)
            return
        # the blob of a pending update counts against its author's quota (blob_keeper)
        over = self.keeper.admit(tx.author, digest, len(data))
        if over is not None:
            raise Refusal(over, code="over_quota", status=507)
        await run_in_threadpool(self.blobs.put_stream, [data], expected=digest)
        self.keeper.record(tx.author, digest, len(data))

    def _update_and_blob(self, body: SubmitUpdate) -> tuple[Transaction, bytes]:
        """The update and its blob, if the blob is the one it names and small enough to travel
        with it; Refusal otherwise."""
        tx = Transaction.from_dict(body.tx)
        if tx.kind is not TxKind.UPDATE:
            raise Refusal(
                "POST /v1/updates takes an update; send others to /v1/txs",
                status=400,
                code="not_an_update",
            )
        try:
            data = base64.b64decode(body.blob, validate=True)
        except ValueError as exc:  # binascii.Error, or a plain ValueError for non-ASCII text
            raise Refusal(f"blob: not base64: {exc}", status=400, code="malformed_body") from exc
        digest = tx.body["blob"]
        if len(data) > self.max_inline_blob:
            raise Refusal(
                f"at most {self.max_inline_blob} bytes travel with an update here; upload the "
                "blob (PUT /v1/blobs/...) and send the update to /v1/txs",
                status=413,
                code="blob_too_large",
            )
        if len(data) != tx.body["blob_size"] or sha256_hex(data) != digest:
            raise Refusal(
                "the blob is not the one the update names (hash and size)",
                status=422,
                code="hash_mismatch",
            )
        return tx, data

    async def _await_round_of(self, tx: Transaction) -> None:
        """Hold an update for the next FL round until this node opens it (``NextRoundHold``)."""
        await self.hold.wait_for(tx)

    def _admit_from(self, request: Request, tx: Transaction) -> Response:
        """Admit ``tx`` as sent by this request's signer, naming who holds it already."""
        self._learn_peer(request)
        seen = parse_seen(request.headers.get(SEEN_HEADER))
        sender = peer_did(request)
        return self._admit(tx, seen | {did_tag(sender)} if sender else seen)

    async def join(self, request: Request) -> Response:
        """A non-member asks to be admitted: its own signed ``join_request``."""
        body = parse_body(SubmitTx, await request.body(), max_bytes=MAX_TX_BODY)
        tx = Transaction.from_dict(body.tx)
        if tx.kind is not TxKind.JOIN_REQUEST:
            raise Refusal(
                "POST /v1/join takes a join_request only", status=400, code="not_a_join_request"
            )
        if tx.author != peer_did(request):
            raise Refusal(
                "sign the request with the key that signed the request",
                status=403,
                code="signer_not_author",
            )
        return self._admit(tx)

    def _learn_peer(self, request: HTTPConnection) -> None:
        sender = peer_did(request)
        url = request.headers.get(NODE_URL_HEADER)
        if sender and url and not self.peers.knows(sender):
            self.peers.learn(url, sender, self.chain.genesis_hash)

    def _admit(self, tx: Transaction, seen: frozenset[str] = frozenset()) -> Response:
        if tx.hash in self.chain.state.seen_tx:
            return _json(TxAccepted(hash=tx.hash, status="committed"), 200)
        self.pool.submit(tx, seen=seen)
        return _json(TxAccepted(hash=tx.hash, status="pending"), 202)

    async def consensus(self, request: Request) -> Response:
        """A signed proposal or vote from a validator (the engine checks its signature)."""
        sender = peer_did(request)
        validators = self.chain.state.validator_set
        if sender is None or sender not in validators:
            raise Refusal(
                "only validators send consensus messages", status=403, code="not_validator"
            )
        data = parse_json(await request.body(), max_bytes=MAX_CONSENSUS_BODY)
        proposal, vote = self._consensus_message(data)
        self._learn_peer(request)
        self.reactor.on_message(proposal, vote)
        return JSONResponse({"accepted": True}, status_code=202)

    def _consensus_message(self, data: Any) -> tuple[Proposal | None, Vote | None]:
        """A consensus message's proposal and vote (parsed JSON), well formed and for this chain
        (the engine checks their signatures); EncodingError or Refusal otherwise."""
        body = validate_body(ConsensusMessage, data)
        proposal = Proposal.from_dict(body.proposal) if body.proposal is not None else None
        vote = Vote.from_dict(body.vote) if body.vote is not None else None
        for what in (proposal, vote):
            if what is not None and what.chain != self.chain.genesis_hash:
                raise Refusal("message is for another consortium", status=409, code="wrong_chain")
        return proposal, vote

    # --- the peer stream --------------------------------------------------------------------
    async def peer_stream(self, websocket: WebSocket) -> None:
        """A member's messages to this node, one binary frame each, on one connection.

        What ``POST /v1/consensus`` and ``POST /v1/updates`` take, without an HTTP exchange
        each: the opening was a current member's signed request, and every proposal, vote and
        update carries its author's own signature, which is checked as on those routes. Each
        frame counts against the sender's per-member rate limit. A frame that is malformed, not
        for this chain, a consensus message from a member that is not a validator, or a frame
        over the rate closes the stream with a code and a reason (the sender falls back to
        POST); what came before it stands. An update the mempool refuses (say its round is
        over) is only logged, as a relayed transaction's refusal is, and nothing of it is kept.
        """
        sender = peer_did(websocket)
        limiter = websocket.scope.get(LIMITER_KEY)
        if sender is None or not isinstance(limiter, TokenBucketLimiter):
            await websocket.close(1008, "unsigned")
            return
        await websocket.accept()
        previous = self._streams.get(sender)
        self._streams[sender] = websocket
        if previous is not None:  # a reconnecting node's new stream replaces its old one
            with contextlib.suppress(RuntimeError, OSError):
                await previous.close(1000, "replaced by a newer stream")
        self._learn_peer(websocket)
        try:
            await self._read_stream(websocket, sender, limiter)
        except WebSocketDisconnect:
            pass
        finally:
            if self._streams.get(sender) is websocket:
                del self._streams[sender]

    async def _read_stream(
        self, websocket: WebSocket, sender: str, limiter: TokenBucketLimiter
    ) -> None:
        updates: set[asyncio.Task[None]] = set()  # each may wait for the next round (2 s)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("bytes")
            if raw is None:
                await _close_stream(websocket, sender, 1003, "binary_only", "binary frames only")
                return
            if not self.is_member(sender):
                await _close_stream(websocket, sender, 1008, "not_member", "no longer a member")
                return
            if limiter.acquire(sender) > 0:
                await _close_stream(
                    websocket, sender, 1013, "rate_limited", "too many messages; slow down"
                )
                return
            try:
                data = parse_json(raw, max_bytes=MAX_CONSENSUS_BODY)
                if isinstance(data, dict) and "update" in data:
                    if len(raw) > self.max_update_body:
                        raise Refusal(
                            "an update frame over this node's bound", status=413, code="too_large"
                        )
                    frame = validate_body(StreamUpdate, data)
                    tx, blob = self._update_and_blob(frame.update)
                    if len(updates) >= MAX_STREAM_UPDATES:
                        raise Refusal(
                            "too many updates in flight", status=429, code="too_many_updates"
                        )
                    seen = parse_seen(frame.seen) | {did_tag(sender)}
                    task = asyncio.create_task(self._take_update(tx, blob, seen, sender))
                    updates.add(task)
                    task.add_done_callback(updates.discard)
                    continue
                if sender not in self.chain.state.validator_set:
                    raise Refusal(
                        "only validators send consensus messages", status=403, code="not_validator"
                    )
                proposal, vote = self._consensus_message(data)
            except Refusal as exc:
                code = {403: 1008, 413: 1009, 429: 1013}.get(exc.status, 1007)
                await _close_stream(websocket, sender, code, exc.code, exc.message)
                return
            except BcflError as exc:
                await _close_stream(websocket, sender, 1007, "malformed_body", exc.message)
                return
            self.reactor.on_message(proposal, vote)

    async def _take_update(
        self, tx: Transaction, blob: bytes, seen: frozenset[str], sender: str
    ) -> None:
        """A well-formed update frame, taken as ``POST /v1/updates`` takes its body: nothing is
        kept unless the update passes the mempool's checks; a refusal is logged (no one waits
        for it: the update reaches this node again inside a proposal, its blob by fetch)."""
        try:
            await self._check_and_store(tx, blob)
            self._admit(tx, seen)
        except Refusal as exc:
            log.info(
                "refused a streamed update: %s: %s",
                exc.code,
                exc.message,
                extra=fields(peer=sender, code=exc.code),
            )
        except BcflError as exc:
            log.warning("a streamed update failed: %s", exc.message, extra=fields(peer=sender))
        except Exception:  # a task of its own: nothing else would report it
            log.exception("a streamed update failed", extra=fields(peer=sender))


async def _close_stream(
    websocket: WebSocket, sender: str, code: int, reason: str, message: str
) -> None:
    log.warning(
        "closed a peer stream: %s: %s",
        reason,
        message,
        extra=fields(peer=sender, code=reason),
    )
    # a close frame holds 123 bytes of reason (RFC 6455 §5.5): cut by bytes, not characters,
    # or a message quoting a peer's non-ASCII text makes the close itself raise
    text = f"{reason}: {message}".encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
    with contextlib.suppress(RuntimeError, OSError):
        await websocket.close(code, text)


class _ReadTimeout:
    """Bound how long a client may take to send each piece of its body (slow-loris guard)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def bounded() -> Message:
            try:
                async with asyncio.timeout(self.timeout_s):  # no task per read, as wait_for made
                    return await receive()
            except TimeoutError:
                log.warning("request body stalled; dropping the connection")
                return {"type": "http.disconnect"}

        await self.app(scope, bounded, send)


class _SplitAuth:
    """Route ``/v1/join`` through an auth layer that admits non-members; all else, members."""

    def __init__(self, members: ASGIApp, newcomers: ASGIApp) -> None:
        self.members = members
        self.newcomers = newcomers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/v1/join":
            await self.newcomers(scope, receive, send)
        else:
            await self.members(scope, receive, send)


@dataclass(frozen=True)
class HttpSettings:
    """How this node serves: its limits, the address it listens on and the name it is known by,
    and the file where the replay cache survives a restart."""

    limits: NodeLimits
    host: str
    port: int
    advertise: str | None
    replay_journal: Path


def create_app(
    *,
    chain: ChainView,
    ledger: Ledger,
    pool: MempoolView,
    keeper: BlobKeeper,
    peers: PeerBook,
    reactor: ConsensusReactor,
    did: str,
    tls: TransportTrust,
    settings: HttpSettings,
    traffic: BlobTraffic | None = None,
    unverified_rounds: Callable[[], list[int]] | None = None,
    summaries: UpdateSummaries | None = None,
) -> ASGIApp:
    """The node's ASGI application: Starlette routes behind the signature layer.

    ``summaries``: where the blob routes leave what they computed of each update received
    (the node's contract checks read them; see ``fl/update_summary.py``)."""
    limits = settings.limits
    max_blob_bytes = chain.state.config.contract.max_blob_bytes
    # what travels inline is base64 (4/3) beside a transaction, under the signature layer's cap
    body_room = (limits.max_body_bytes - MAX_TX_BODY - 2048) * 3 // 4
    api = Api(
        chain=chain,
        ledger=ledger,
        pool=pool,
        keeper=keeper,
        peers=peers,
        reactor=reactor,
        did=did,
        tls=tls,
        max_inline_blob=max(0, min(MAX_INLINE_BLOB_BYTES, max_blob_bytes, body_room)),
        traffic=traffic,
        unverified_rounds=unverified_rounds,
    )
    chunk_size = min(CHUNK_SIZE, max(64 * 1024, limits.max_body_bytes - 64 * 1024))
    blob_routes = BlobRoutes(
        ledger.blobs,
        max_blob_bytes=max_blob_bytes,
        chunk_size=chunk_size,
        keeper=keeper,
        allow_clear_text=tls.allow_clear_text,
        traffic=api.traffic,
        summaries=summaries,
    )
    document = openapi_document(
        ROUTE_TABLE, route_parameters(max_blob_bytes=max_blob_bytes, chunk_size=chunk_size)
    )
    host, port = settings.host, settings.port
    authorities = advertised_authorities(host, port, settings.advertise)
    local = loopback_authorities(port) if host in WILDCARD_HOSTS else ()
    explorer = Explorer(chain, ledger, names_me=_names_me(authorities, local))

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount(
            "/v1",
            routes=[
                Route("/status", _guard(api.status), methods=["GET"]),
                Route("/genesis", _guard(api.genesis), methods=["GET"]),
                Route("/blocks", _guard(api.blocks), methods=["GET"]),
                Route("/blocks/{height}", _guard(explorer.block), methods=["GET"]),
                Route("/rounds", _guard(explorer.rounds), methods=["GET"]),
                Route("/txs/{hash}", _guard(api.tx), methods=["GET"]),
                Route("/txs", _guard(api.submit_tx), methods=["POST"]),
                Route("/updates", _guard(api.submit_update), methods=["POST"]),
                Route("/join", _guard(api.join), methods=["POST"]),
                Route("/consensus", _guard(api.consensus), methods=["POST"]),
                WebSocketRoute(PEER_STREAM_PATH.removeprefix("/v1"), api.peer_stream),
                Route("/consensus/{height}", _guard(api.consensus_log), methods=["GET"]),
                *blob_routes.routes,
            ],
        ),
        Mount(
            "/explorer",
            routes=[
                Route("/", _guard(explorer.page), methods=["GET"]),
                Route("/static/{name}", _guard(explorer.static_file), methods=["GET"]),
                Route("/proof/{round}", _guard(explorer.proof), methods=["GET"]),
            ],
        ),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: f"no route {request.url.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return refusal(request, exc.status_code, code, message)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "internal", "message": "internal error; see the node's log"}, status_code=500
        )

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
    app.state.explorer = explorer  # its caches and limits, for tests and operators' tools
    budget = BodyBudget()  # members and newcomers share it: together they hold at most this
    members = SignatureAuth(
        app,
        is_member=api.is_member,
        limits=limits,
        authorities=authorities,
        replay_journal=settings.replay_journal,
        local_authorities=local,
        budget=budget,
    )
    newcomers = SignatureAuth(
        app,
        is_member=lambda _did: True,
        limits=JOIN_LIMITS,
        authorities=authorities,
        local_authorities=local,
        budget=budget,
    )
    return _ReadTimeout(_SplitAuth(members, newcomers), BODY_READ_TIMEOUT_S)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 - names, not a bind


def advertised_authorities(host: str, port: int, advertise: str | None) -> list[str]:
    """The host names a signed request must name (``@authority``): the advertised URL's, the
    listening address's, and the loopback names when the node listens on loopback.

    A node listening on all addresses has no name of its own to check, so it must be given one
    (``--advertise``): with none, a request signed for another node listening on all addresses
    would be accepted here within the freshness window. Its loopback names
    (``loopback_authorities``) are accepted then only from a loopback address: the member's own
    commands on the machine. NodeError when a wildcard has no advertised name.
    """
    names: set[str] = set()
    if advertise:
        names.add(advertise.split("://", 1)[-1].rstrip("/").split("/", 1)[0])
    if host in WILDCARD_HOSTS:
        shown = f"[{host.strip('[]')}]" if ":" in host else host or "*"
        if not names:
            raise NodeError(
                f"listening on all addresses ({shown}:{port}) needs the name peers use",
                hint="add --advertise URL (the URL peers reach this node at), or listen on one "
                "address: signed requests are bound to this node's name",
            )
    else:
        names.add(f"{host}:{port}")
        if host in ("127.0.0.1", "localhost"):
            names |= set(loopback_authorities(port))
    return sorted(normalise_authority(n) for n in names)


def _names_me(authorities: list[str], local: tuple[str, ...]) -> Callable[[str, str], bool]:
    """Whether a ``Host`` (from a client at an address) names this node, as ``SignatureAuth``
    decides it for signed requests: the explorer answers only to this node's own names."""
    names = frozenset(normalise_authority(a) for a in authorities)
    local_names = frozenset(normalise_authority(a) for a in local)

    def names_me(host: str, address: str) -> bool:
        authority = normalise_authority(host)
        return authority in names or (authority in local_names and is_loopback(address))

    return names_me


def loopback_authorities(port: int) -> tuple[str, ...]:
    return (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")
