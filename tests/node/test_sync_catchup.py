"""Catching up in-process: a fresh node pulls a real chain (updates, aggregates) from a peer.

The peer is the in-memory founders' chain behind stand-ins for the node's peer requests (block
pages, status) and the real blob routes and chunked download for the blobs. Every block is
verified with the deep checks before it is appended; runs of verified blocks are appended in
one transaction; a bad block or a bad blob stops the catch-up there and changes nothing more.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.blob_routes import blob_app
from bcfl_cli.node.blob_service import BlobScope
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.node.sync import CachingChecks, PassTimes
from bcfl_cli.protocol.block import Block
from bcfl_cli.verify.chain import verify_chain
from tests.node._chain_fixture import Chain, key, make_chain
from tests.node._node_harness import LocalNode
from tests.node.test_round_driver import EDIT, step

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PEER = "http://source.example"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Chain]:
    """Two FL rounds of three updates each (plus validations and aggregates), and a tail."""
    chain = make_chain(tmp_path / "source", edit=EDIT)
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)  # open round 1
    for _ in range(2):
        bob, carol = chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)
        step(chain, [bob], checks)  # update, validation
        step(chain, [carol], checks)  # update, validation, aggregate (, open_round)
        step(chain, [], checks)  # an empty block
    yield chain
    chain.ledger.close()


@pytest.fixture
def served(source: Chain) -> Iterator[Served]:
    serving = Served(source)
    with serving.http:
        yield serving


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path / "fresh", edit=EDIT)
    harness.auto_mine = False
    yield harness
    harness.close()


class Served:
    """What the source peer answers; ``blocks`` may be replaced to serve a tampered chain."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.blocks: list[Block] = list(chain.ledger.blocks())
        self.pages = 0
        app = blob_app(chain.blobs, is_member=lambda d: True, max_blob_bytes=1 << 26)
        self.http = TestClient(app, base_url=PEER)

    async def get(self, peer: PeerInfo, path: str, **kw: Any) -> Any:
        params = kw.get("params") or {}
        if path == "/v1/status":
            head = self.blocks[-1]
            return {"genesis": self.blocks[0].hash, "height": head.height, "head": head.hash}
        assert path == "/v1/blocks"
        self.pages += 1
        start, limit = int(params["start"]), int(params["limit"])
        return {"blocks": [b.to_dict() for b in self.blocks[start : start + limit]]}

    def blob_client(
        self, peer: PeerInfo, *, download: bool = False, timeout_s: float | None = None
    ) -> SignedClient:
        return SignedClient(key("alice"), PEER, transport=_Borrowed(self.http._transport))


class _Borrowed(httpx.BaseTransport):
    """The served app's transport, lent to one blob client: closing the client must not close
    it. Starlette's test transport aborts every open response when closed, so a download that
    ends and closes its client would cut the other downloads streaming beside it (issue 21: a
    cut whole download resumes through the manifest and, by design, keeps no summary)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        """The served app's ``TestClient`` closes its transport, once, at the end."""


def connect(fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Point the fresh node at ``served``; returns the sizes of its ledger appends."""
    node = fresh.node
    node.peers.peers = {PEER: PeerInfo(PEER)}
    monkeypatch.setattr(node.peers, "get", served.get)
    monkeypatch.setattr(node.peers, "blob_client", served.blob_client)
    appends: list[int] = []
    real = node.ledger.append_many

    def counting(chain: list[Block]) -> None:
        appends.append(len(chain))
        real(chain)

    monkeypatch.setattr(node.ledger, "append_many", counting)
    return appends


def test_fresh_node_catches_up_verifying_every_block(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    height = source.state.height
    updates = [tx.body["blob"] for b in served.blocks for tx in b.txs if tx.kind == "update"]
    assert height == 7 and len(updates) == 4
    assert source.state.round.number == 2 and not source.state.round.open
    asyncio.run(node.syncer.pass_once())
    assert node.state.height == node.ledger.height == height
    assert node.state.head_hash == source.state.head_hash
    assert all(node.blobs.verify(d) for d in updates)
    assert node.syncer.blocks_synced == height
    assert appends == [height]  # one page, one transaction
    assert verify_chain(node.ledger, deep=True, checks=FLChecks(node.blobs), workers=1).ok
    assert list((node.blobs.root / "tmp").iterdir()) == []


def test_a_pass_reports_transport_apart_from_re_verification(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(fresh, served, monkeypatch)
    node = fresh.node
    updates = [tx for b in served.blocks for tx in b.txs if tx.kind == "update"]
    asyncio.run(node.syncer.pass_once())
    times = node.syncer.last_pass
    assert times is not None
    assert (times.blocks, times.pages, times.blobs) == (source.state.height, 1, len(updates))
    assert times.blob_bytes == sum(int(tx.body["blob_size"]) for tx in updates)
    assert times.transport_s > 0 and times.verify_s > 0
    assert times.transport_s <= times.fields()["fields"]["seconds"]


def test_a_pass_counts_the_blobs_its_scope_needs(served: Served) -> None:
    """A verifying node counts every update blob; a trainer-only member the models alone."""

    class Nothing:
        def has(self, digest: str) -> bool:
            return False

    checks = CachingChecks(FLChecks(served.chain.blobs))
    txs = [tx for b in served.blocks for tx in b.txs]
    for verifies, kind, size in ((True, "update", "blob_size"), (False, "aggregate", "model_size")):
        times = PassTimes()
        times.fetched(served.blocks, Nothing(), BlobScope(checks, verifies=lambda v=verifies: v))
        wanted = [int(tx.body[size]) for tx in txs if tx.kind == kind]
        assert (times.blobs, times.blob_bytes) == (len(wanted), sum(wanted)) and wanted


def _tamper(block: Block) -> Block:
    data = block.to_dict()
    data["header"]["time"] += 1  # another hash: its commit certificate no longer holds
    return Block.from_dict(data)


def test_a_bad_block_stops_the_catch_up_there(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = next(b.height for b in served.blocks if any(t.kind == "aggregate" for t in b.txs))
    served.blocks[bad] = _tamper(served.blocks[bad])
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    asyncio.run(node.syncer._pull_from(_peer(node)))
    assert node.state.height == node.ledger.height == bad - 1
    assert node.state.head_hash == served.blocks[bad - 1].hash
    assert appends == [bad - 1]
    assert "invalid block" in (node.peers.peers[PEER].error or "")
    # the peer serves the right block again: the catch-up resumes from there
    served.blocks[bad] = next(source.ledger.blocks(bad, bad))
    asyncio.run(node.syncer.pass_once())
    assert node.state.height == source.state.height


def test_a_bad_blob_stops_the_catch_up_before_its_block(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = next(b for b in served.blocks if any(t.kind == "update" for t in b.txs))
    digest = next(t.body["blob"] for t in first.txs if t.kind == "update")
    path = source.blobs.path_for(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))  # the peer now serves corrupt bytes under that name
    connect(fresh, served, monkeypatch)
    node = fresh.node
    asyncio.run(node.syncer._pull_from(_peer(node)))
    assert node.state.height == node.ledger.height == first.height - 1
    assert not node.blobs.has(digest)


def _peer(node: Any) -> PeerInfo:
    peer: PeerInfo = node.peers.peers[PEER]
    peer.height = 10**6
    return peer


def _trainer_only(node: Any) -> None:
    """The fresh node takes the quorum's word (no ``--verify-updates``): models only."""
    node.syncer.scope = BlobScope(node.syncer.scope.checks(), verifies=lambda: False)


def test_a_trainer_only_member_verifies_while_its_models_download(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules run before the models land; every block is appended with its models held."""
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    _trainer_only(node)
    models = [tx.body["model"] for b in served.blocks for tx in b.txs if tx.kind == "aggregate"]
    updates = [tx.body["blob"] for b in served.blocks for tx in b.txs if tx.kind == "update"]
    order: list[str] = []
    real_apply, real_ensure = node.syncer.worker.run, node.syncer.fetcher.ensure_blobs

    async def run(fn: Any) -> Any:
        done = await real_apply(fn)  # one block's state, or a page's (``_apply_in_order``)
        order.extend("apply" for _ in (done if isinstance(done, dict) else [done]))
        return done

    async def ensure(digests: list[str], **kw: Any) -> bool:
        order.extend("hold" for _ in digests if kw.get("timeout_s") is None)
        return await real_ensure(digests, **kw)

    monkeypatch.setattr(node.syncer.worker, "run", run)
    monkeypatch.setattr(node.syncer.fetcher, "ensure_blobs", ensure)
    asyncio.run(node.syncer.pass_once())
    assert node.state.head_hash == source.state.head_hash
    assert appends == [source.state.height]
    assert all(node.blobs.verify(d) for d in models) and len(models) == 2
    assert not any(node.blobs.has(d) for d in updates)
    # every block verified before the first model was awaited
    assert order[: source.state.height] == ["apply"] * source.state.height
    assert order.count("hold") == len(models)


def test_a_trainer_only_member_keeps_no_block_past_a_bad_model(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified ahead, the blocks from the first whose model cannot be had are not kept."""
    first = next(b for b in served.blocks if any(t.kind == "aggregate" for t in b.txs))
    digest = next(t.body["model"] for t in first.txs if t.kind == "aggregate")
    path = source.blobs.path_for(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))  # the peer now serves corrupt bytes under that name
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    _trainer_only(node)
    monkeypatch.setattr("bcfl_cli.node.sync.BLOB_FETCH_TIMEOUT_S", 2.0)
    asyncio.run(node.syncer._pull_from(_peer(node)))
    assert node.state.height == node.ledger.height == first.height - 1
    assert appends == [first.height - 1]
    assert not node.blobs.has(digest)


def test_the_first_page_goes_out_with_the_status_requests(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that just started asks its first peer for the page while it asks every peer's
    status (one round trip less), and uses that one request once the status says it is ahead."""
    connect(fresh, served, monkeypatch)
    node = fresh.node
    events: list[str] = []
    real = served.get

    async def slow_status(peer: PeerInfo, path: str, **kw: Any) -> Any:
        events.append(f"ask {path}")
        if path == "/v1/status":
            await asyncio.sleep(0.05)
        answer = await real(peer, path, **kw)
        events.append(f"answer {path}")
        return answer

    monkeypatch.setattr(node.peers, "get", slow_status)
    asyncio.run(node.syncer.pass_once())
    assert node.state.head_hash == source.state.head_hash
    assert events.index("ask /v1/blocks") < events.index("answer /v1/status")
    assert served.pages == 1
    # caught up: the next pass asks for no page it does not need
    asyncio.run(node.syncer.pass_once())
    assert served.pages == 1


def test_an_early_page_from_a_peer_on_another_genesis_is_not_used(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page asked for before the status answered is used only if the status then shows
    the peer on this genesis and ahead: a peer of another consortium is never followed."""
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    real = served.get

    async def other_genesis(peer: PeerInfo, path: str, **kw: Any) -> Any:
        answer = await real(peer, path, **kw)
        if path == "/v1/status":
            answer = {**answer, "genesis": "cc" * 32}
        return answer

    monkeypatch.setattr(node.peers, "get", other_genesis)
    asyncio.run(node.syncer.pass_once())
    assert node.state.height == node.ledger.height == 0
    assert appends == []
    assert node.peers.peers[PEER].refused


class _NoBlobs:
    """A store that holds none of the page's blobs (the prefetch tests)."""

    def has(self, digest: str) -> bool:
        return False


def _all_from_one_peer(digests: list[str]) -> Callable[[Any], dict[str, str | tuple[str, ...]]]:
    """A ``prefer`` that names one peer for each of ``digests``, whatever the block."""
    return lambda block: dict.fromkeys(digests, "did:key:z")


def test_a_pages_models_download_together_up_to_a_bound() -> None:
    """``fetch_block_blobs`` runs at most ``at_once`` downloads at a time (a member that takes
    the quorum's word starts a page's models together, up to ``PREFETCH_MODELS``)."""
    from bcfl_cli.node.sync import PREFETCH_MODELS, fetch_block_blobs
    from bcfl_cli.protocol.encoding import sha256_hex

    digests = [sha256_hex(bytes([i])) for i in range(PREFETCH_MODELS + 3)]
    running, peak = 0, 0

    class Fetcher:
        async def ensure_blobs(self, wanted: list[str], **kw: Any) -> bool:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return True

    prefer, none = _all_from_one_peer(digests), _NoBlobs()

    for at_once in (2, PREFETCH_MODELS):
        peak = 0
        asyncio.run(fetch_block_blobs(Fetcher(), none, [None], prefer=prefer, at_once=at_once))  # type: ignore[arg-type, list-item]
        assert peak == at_once


def test_a_trainer_only_member_applies_a_page_in_one_call_to_the_worker(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the FL checks the rules read no blob: the page's blocks go to the worker
    together (one thread hop, not one a block, which downloads on other threads slowed down),
    with the same result as one by one."""
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    _trainer_only(node)
    calls = 0
    real_apply = node.syncer.worker.run

    async def run(fn: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_apply(fn)

    monkeypatch.setattr(node.syncer.worker, "run", run)
    asyncio.run(node.syncer.pass_once())
    assert node.state.head_hash == source.state.head_hash
    assert appends == [source.state.height] and calls == 1


def test_a_bad_block_in_a_page_applied_at_once_stops_the_catch_up_there(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page applied in one call stops at its first bad block: what precedes it is kept,
    nothing after it, and the peer is marked, as one by one."""
    bad = next(b.height for b in served.blocks if any(t.kind == "aggregate" for t in b.txs))
    served.blocks[bad] = _tamper(served.blocks[bad])
    appends = connect(fresh, served, monkeypatch)
    node = fresh.node
    _trainer_only(node)
    asyncio.run(node.syncer._pull_from(_peer(node)))
    assert node.state.height == node.ledger.height == bad - 1
    assert appends == [bad - 1]
    assert "invalid block" in (node.peers.peers[PEER].error or "")


def test_a_verifying_nodes_prefetch_runs_a_bounded_window_ahead_of_its_checks() -> None:
    """With a ``PrefetchWindow`` the page's downloads start at most ``ahead`` blobs past the
    last one a verified block used (so each update's summary, taken as it downloaded, is still
    kept when its block is checked); a blob the verification used before the prefetch came to
    it is not fetched again."""
    from bcfl_cli.node.sync import PrefetchWindow, fetch_block_blobs
    from bcfl_cli.protocol.encoding import sha256_hex

    digests = [sha256_hex(bytes([i])) for i in range(10)]
    started: list[str] = []

    class Fetcher:
        async def ensure_blobs(self, wanted: list[str], **kw: Any) -> bool:
            started.extend(wanted)
            await asyncio.sleep(0)
            return True

    prefer, none = _all_from_one_peer(digests), _NoBlobs()

    async def run() -> None:
        window = PrefetchWindow(3)
        task = asyncio.create_task(
            fetch_block_blobs(Fetcher(), none, [None], prefer=prefer, at_once=4, window=window)  # type: ignore[arg-type, list-item]
        )
        for _ in range(20):
            await asyncio.sleep(0)
        assert started == digests[:3]  # three places, none used yet
        window.used(digests[:2])
        for _ in range(20):
            await asyncio.sleep(0)
        assert started == digests[:5]
        window.used([digests[2], digests[3], digests[4], digests[5], digests[6]])  # 5, 6 by
        for _ in range(20):  # the verification itself: they take no place, nor a download
            await asyncio.sleep(0)
        assert started == [*digests[:5], *digests[7:]]
        await asyncio.wait_for(task, 5.0)

    asyncio.run(run())


def test_a_verifying_catch_up_judges_each_update_from_its_download(
    source: Chain, fresh: LocalNode, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each update is summarised as it downloads (hashed to its name, layout, exact norm), so
    the contract's check reads no update file again, and the catch-up reaches the very head
    (every verdict in the chain's validations recomputed equal); a restarted node, with no
    summary, reads each file and reaches the same verdicts (``verify_chain --deep``)."""
    from bcfl_cli.fl import contract

    connect(fresh, served, monkeypatch)
    node = fresh.node
    updates = [tx.body["blob"] for b in served.blocks for tx in b.txs if tx.kind == "update"]
    read: list[str] = []
    real = contract._check_source

    def counting(rules: Any, layout: Any, claim: Any, source: Any, **kw: Any) -> Any:
        read.append(claim.blob)
        return real(rules, layout, claim, source, **kw)

    monkeypatch.setattr(contract, "_check_source", counting)
    asyncio.run(node.syncer.pass_once())
    assert node.state.head_hash == source.state.head_hash
    assert all(node.summaries.get(d) is not None for d in updates) and updates
    assert read == []
    assert verify_chain(node.ledger, deep=True, checks=FLChecks(node.blobs), workers=1).ok
    assert sorted(read) == sorted(updates)  # the full checks, from the files: the same verdicts
