"""The explorer's routes: the page and its two static files, the read routes it polls, and the
"verify this model" proof download.

Everything here is a public read (no signature, no state change) and bounded:

- the page, its script and its style sheet are read once from the package at start-up and
  served from memory by exact name (no path is ever taken from a request);
- ``/explorer/...`` answers only to a ``Host`` this node answers to (its listen address or
  advertised name, the loopback names from a loopback client), like signed requests do: a page
  of another site that rebinds its name to this node's address gets ``421``, not the page;
- the page is served with a Content-Security-Policy that allows nothing but this node's own
  script, style and JSON (``default-src 'none'``): chain strings are put into the page with
  ``textContent`` only, and the policy stops any script that would slip in;
- ``GET /v1/rounds`` answers from the round index (``index.py``), at most 100 rounds a page;
  ``GET /v1/blocks/{height}`` one block and its transactions' hashes;
- a proof (``GET /explorer/proof/{round}``) costs a ledger scan and gzip: it is built in a
  spawned process (``proof.py``: the event loop keeps the interpreter), one at a time, at most
  ``PROOF_MAX_WAITING`` waiting, each address limited to ``PROOF_RATE_PER_S`` builds (burst
  ``PROOF_BURST``) and all of them to ``PROOF_TOTAL_RATE_PER_S``, and kept in a cache of at most
  ``PROOF_CACHE_ENTRIES`` rounds and ``PROOF_CACHE_BYTES`` bytes, so a repeated download costs
  nothing and a flood of different ones costs one build at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bcfl_cli.errors import BcflError
from bcfl_cli.node.explorer.index import RoundIndex
from bcfl_cli.node.explorer.proof import build_in_process
from bcfl_cli.node.interfaces import ChainView
from bcfl_cli.node.limits import TokenBucketLimiter
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.wire.schemas import (
    MAX_HEIGHT_DIGITS,
    MAX_ROUNDS_PER_RESPONSE,
    BlockResponse,
    ErrorBody,
    RoundsResponse,
)

log = logging.getLogger("bcfl.node.explorer")

#: Updates in one ``GET /v1/rounds`` answer: rounds are cut there (one round always goes), so
#: that a consortium of many trainers still gets answers of a few hundred KiB.
MAX_UPDATES_PER_RESPONSE = 2000
#: Proof builds (cache misses) per client address: one per 10 s, a burst of 3.
PROOF_RATE_PER_S = 0.1
PROOF_BURST = 3.0
#: Proof builds from all addresses together: one per 10 s, a burst of 4 (a build of a late round
#: of a 10,000-block chain takes ~5 s of one core: at worst half a core goes to proofs).
PROOF_TOTAL_RATE_PER_S = 0.1
PROOF_TOTAL_BURST = 4.0
#: Proof requests waiting for the one build slot; past it, 503 at once.
PROOF_MAX_WAITING = 4
#: Proofs kept, by round: at most this many, and this many bytes (gzip) in all.
PROOF_CACHE_ENTRIES = 8
PROOF_CACHE_BYTES = 64 * 1024 * 1024
#: Client addresses the proof limiter remembers (the least recent is forgotten past it).
PROOF_LIMITER_ADDRESSES = 1024

STATIC = {
    "explorer.js": "text/javascript; charset=utf-8",
    "explorer.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ProofCache:
    """Built proofs by round, least recently used out first, bounded in count and bytes."""

    def __init__(
        self, max_entries: int = PROOF_CACHE_ENTRIES, max_bytes: int = PROOF_CACHE_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self.size = 0

    def get(self, number: int) -> bytes | None:
        data = self._items.get(number)
        if data is not None:
            self._items.move_to_end(number)
        return data

    def put(self, number: int, data: bytes) -> None:
        if len(data) > self.max_bytes:  # served, never kept: the limiter bounds its rebuilds
            return
        old = self._items.pop(number, None)
        self.size -= len(old) if old is not None else 0
        self._items[number] = data
        self.size += len(data)
        while len(self._items) > self.max_entries or self.size > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


class Explorer:
    """The explorer's handlers for one node; ``names_me(host, client address)`` says whether a
    ``Host`` names this node (the check signed requests get, applied to the page)."""

    def __init__(
        self, chain: ChainView, ledger: Ledger, names_me: Callable[[str, str], bool]
    ) -> None:
        self.chain = chain
        self.ledger = ledger
        self.names_me = names_me
        self.index = RoundIndex()
        self.proofs = ProofCache()
        self.proof_limiter = TokenBucketLimiter(
            PROOF_RATE_PER_S, PROOF_BURST, max_keys=PROOF_LIMITER_ADDRESSES
        )
        # all addresses together: many addresses (an IPv6 prefix) still get this many builds
        self.proof_builds = TokenBucketLimiter(
            PROOF_TOTAL_RATE_PER_S, PROOF_TOTAL_BURST, max_keys=1
        )
        self._build_slot = asyncio.Lock()
        self._waiting = 0  # builds asked for and not finished (waiting or running)
        self._builds: set[asyncio.Task[bytes]] = set()
        folder = resources.files("bcfl_cli.node.explorer") / "static"
        self.html = (folder / "index.html").read_bytes()
        self.static = {name: (folder / name).read_bytes() for name in STATIC}

    # --- the page -----------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        """The explorer's page (the script renders the views from the read routes)."""
        refused = self._misdirected(request)
        if refused is not None:
            return refused
        return Response(self.html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def static_file(self, request: Request) -> Response:
        """The page's script or style sheet, by exact name."""
        refused = self._misdirected(request)
        if refused is not None:
            return refused
        name = request.path_params["name"]
        if name not in self.static:
            return _refuse(request, 404, "not_found", "the explorer has no such file")
        return Response(self.static[name], media_type=STATIC[name], headers=SECURITY_HEADERS)

    # --- reads the page polls -----------------------------------------------------------
    async def rounds(self, request: Request) -> Response:
        """Rounds ``start`` onwards (at most 100, and whole rounds up to 2,000 updates): updates,
        verdicts, reasons, inclusion."""
        params = request.query_params
        start_raw, limit_raw = params.get("start", "1"), params.get("limit", "100")
        if not all(_is_height(v) for v in (start_raw, limit_raw)):
            return _refuse(request, 400, "bad_query", "give start and limit as integers >= 0")
        start, limit = int(start_raw), min(int(limit_raw), MAX_ROUNDS_PER_RESPONSE)
        await self._catch_up()
        state = self.chain.state
        page: list[dict[str, object]] = []
        updates = 0
        for rnd in self.index.page(start, limit):
            updates += len(rnd.updates)
            if page and updates > MAX_UPDATES_PER_RESPONSE:
                break  # the answer stays small with many trainers: ask again from the next
            page.append(rnd.to_dict(state.name_of))
        return _json(
            RoundsResponse.model_validate(
                {
                    "height": self.index.height,
                    "latest": self.index.latest,
                    "rounds_planned": state.config.training.rounds,
                    "rounds": page,
                }
            )
        )

    async def block(self, request: Request) -> Response:
        """One decided block, with the hash and kind of each of its transactions."""
        raw = request.path_params["height"]
        if not _is_height(raw):
            return _refuse(request, 400, "bad_height", "height must be a non-negative integer")
        height = int(raw)
        if height > self.chain.state.height:
            return _refuse(request, 404, "unknown_block", f"no block {height} here yet")
        try:
            block = self.ledger.block(height)
        except BcflError:
            return _refuse(request, 404, "unknown_block", f"no block {height} here")
        return _json(
            BlockResponse(
                hash=block.hash,
                block=block.to_dict(),
                tx_hashes=[tx.hash for tx in block.txs],
                tx_kinds=[str(tx.kind) for tx in block.txs],
            )
        )

    # --- verify this model --------------------------------------------------------------
    async def proof(self, request: Request) -> Response:
        """The gzip proof bundle of a closed round's model (as ``bcfl model export`` writes)."""
        refused = self._misdirected(request)
        if refused is not None:
            return refused
        raw = request.path_params["round"]
        if not _is_height(raw):
            return _refuse(request, 400, "bad_round", "round must be a non-negative integer")
        number = int(raw)
        await self._catch_up()
        rnd = self.index.rounds.get(number)
        if rnd is None or not rnd.closed:
            return _refuse(request, 404, "round_not_closed", f"round {number} has no aggregate")
        data = self.proofs.get(number)
        if data is None:
            address = request.client.host if request.client else "unknown"
            wait = self.proof_limiter.acquire(address)
            if wait > 0:
                response = _refuse(
                    request,
                    429,
                    "rate_limited",
                    f"proofs are built sparingly; retry in {wait:.0f} s",
                )
                response.headers["Retry-After"] = str(max(1, round(wait)))
                return response
            if self._waiting >= PROOF_MAX_WAITING:
                return _refuse(request, 503, "busy", "other proofs are being built; retry soon")
            wait = self.proof_builds.acquire("all")
            if wait > 0:
                response = _refuse(
                    request,
                    429,
                    "rate_limited",
                    f"proofs are built sparingly; retry in {wait:.0f} s",
                )
                response.headers["Retry-After"] = str(max(1, round(wait)))
                return response
            self._waiting += 1
            task = asyncio.create_task(self._build(number))
            self._builds.add(task)
            task.add_done_callback(_forget_build(self._builds))
            try:
                # shielded: a client that goes away does not free the slot while its child
                # still builds (another build would start beside it); the proof gets cached
                data = await asyncio.shield(task)
            except Exception as exc:  # the child's failure, whatever it is, is this answer's
                log.warning("building the proof of round %d failed: %r", number, exc)
                return _refuse(request, 500, "proof_failed", "the proof could not be built here")
        return Response(
            data,
            media_type="application/gzip",
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="round-{number}.proof.json.gz"',
            },
        )

    async def _build(self, number: int) -> bytes:
        """Round ``number``'s proof from the cache, or built in the one build slot."""
        try:
            async with self._build_slot:
                data = self.proofs.get(number)
                if data is None:
                    ledger = self.ledger
                    data = await build_in_process(ledger.url, ledger.blobs.root, number)
                    self.proofs.put(number, data)
                return data
        finally:
            self._waiting -= 1

    # --- helpers ------------------------------------------------------------------------
    async def _catch_up(self) -> None:
        await self.index.catch_up(self.ledger.blocks, self.chain.state.height)

    def _misdirected(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        address = request.client.host if request.client else ""
        if self.names_me(host, address):
            return None
        return _refuse(
            request,
            421,
            "misdirected",
            f"this node is not {host[:64]!r}; open the explorer at the node's own address",
        )


def _forget_build(builds: set[asyncio.Task[bytes]]) -> Callable[[asyncio.Task[bytes]], None]:
    def done(task: asyncio.Task[bytes]) -> None:
        builds.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a build nobody awaits any more fails quietly

    return done


def _is_height(value: str) -> bool:
    # isascii: str.isdigit() accepts digits (like "²") that int() refuses
    return value.isascii() and value.isdigit() and len(value) <= MAX_HEIGHT_DIGITS


def _json(model: RoundsResponse | BlockResponse) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def _refuse(request: Request, status: int, code: str, message: str) -> JSONResponse:
    log.info("refused %s %s: %d %s: %s", request.method, request.url.path, status, code, message)
    return JSONResponse(ErrorBody(error=code, message=message).model_dump(), status_code=status)
