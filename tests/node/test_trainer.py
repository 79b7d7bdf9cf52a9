"""The automatic trainer of ``bcfl node --train``, stepping against an in-process node."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bcfl_cli.client import build_update_tx
from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import load_csv
from bcfl_cli.node.trainer import (
    AutoTrainer,
    attack_by_name,
    http_submitter,
    load_training_data,
    run_node_trainer,
    warm_up,
)
from bcfl_cli.protocol.tx import Transaction
from tests.node._node_harness import LocalNode, key, part, served


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    yield harness
    harness.close()


def _trainer(local: LocalNode, name: str = "alice", **kw: object) -> AutoTrainer:
    async def submit(tx: Transaction, told: frozenset[str]) -> object:
        return local.node.pool.submit(tx, seen=told)

    return AutoTrainer(
        key=key(name),
        data=load_training_data(part(1), local.state),
        blobs=local.node.blobs,
        state=lambda: local.state,
        submit=submit,
        seed=3,
        **kw,  # type: ignore[arg-type]
    )


def test_trains_once_per_open_round_and_is_accepted(local: LocalNode) -> None:
    trainer = _trainer(local)
    assert asyncio.run(trainer.step()) is None  # no round open yet
    local.mine()
    tx = asyncio.run(trainer.step())
    assert tx is not None and tx.body["round"] == 1
    assert local.node.blobs.has(tx.body["blob"]) and tx.hash in local.node.mempool
    assert asyncio.run(trainer.step()) is None  # already submitted, still pending
    local.mine_all()
    assert local.state.round.accepted_hashes == [tx.hash]
    assert not trainer.wants(local.state)


def test_attacker_update_is_rejected_by_the_contract(local: LocalNode) -> None:
    local.mine()
    trainer = _trainer(local, "bob", attack=attack_by_name("nan"))
    tx = asyncio.run(trainer.step())
    assert tx is not None
    block = local.mine()
    assert block is not None
    validation = next(t for t in block.txs if t.kind.value == "validation")
    assert validation.body["update"] == tx.hash
    assert (validation.body["verdict"], validation.body["reason"]) == ("reject", "non_finite")


def test_an_alie_attacker_writes_its_estimated_update(local: LocalNode) -> None:
    """The attacks that rewrite a whole delta (ALIE trains estimates on the same lazily read
    base model) still produce a stored, well-formed update (issue 19's streamed trainer)."""
    from bcfl_cli.fl.tensors import decode_tensors

    local.mine()
    trainer = _trainer(local, "bob", attack=attack_by_name("alie"))
    tx = asyncio.run(trainer.step())
    assert tx is not None
    delta = decode_tensors(local.node.blobs.get(tx.body["blob"]), max_bytes=1 << 24)
    assert all(bool(torch.isfinite(v).all()) for v in delta.values())
    assert len(local.node.blobs.get(tx.body["blob"])) == tx.body["blob_size"]


def test_a_member_that_missed_a_round_trains_on_the_next(local: LocalNode) -> None:
    local.mine()  # round 1 opens; this trainer is "down"
    for name, index in (("bob", 2), ("carol", 3)):
        other = _trainer(local, name)
        other.data = load_csv(part(index), "label")
        assert asyncio.run(other.step()) is not None
    for _ in range(4):  # the updates, the aggregate (min_updates = 2), round 2 opens
        if local.state.round.number == 2:
            break
        local.mine()
    assert local.state.round.number == 2 and local.state.round.open
    late = _trainer(local, "dave")
    tx = asyncio.run(late.step())
    assert tx is not None and tx.body["round"] == 2
    assert tx.body["base_model"] == local.state.round.base_model


def test_refusal_by_the_node_stops_retrying_that_round(local: LocalNode) -> None:
    local.mine()
    calls: list[str] = []

    async def refuse(tx: Transaction, told: frozenset[str]) -> object:
        from bcfl_cli.wire.refusal import Refusal

        calls.append(tx.hash)
        raise Refusal("already sent", code="duplicate_update", status=409)

    trainer = _trainer(local)
    trainer.submit = refuse
    assert asyncio.run(trainer.step()) is None
    assert asyncio.run(trainer.step()) is None
    assert len(calls) == 1 and not trainer.wants(local.state)


def test_run_node_trainer_until_stopped(local: LocalNode) -> None:
    local.mine()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_node_trainer(
                local.node.trainer_host, part(1), stop, attack="scaling:2", seed=1, poll_s=0.05
            )
        )
        for _ in range(400):
            if len(local.node.mempool):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert len(local.node.mempool) == 1


def test_a_commit_wakes_the_node_trainer_before_its_poll(local: LocalNode) -> None:
    async def scenario() -> float:
        stop = asyncio.Event()
        # a poll far longer than the test: only the commit callback can make it train
        task = asyncio.create_task(
            run_node_trainer(local.node.trainer_host, part(1), stop, seed=1, poll_s=3600.0)
        )
        await asyncio.sleep(0.5)  # the trainer has stepped once (no round) and waits
        assert len(local.node.mempool) == 0
        loop = asyncio.get_running_loop()
        opened = loop.time()
        local.mine()  # commits open_round: Node.accept_block runs the on_commit callbacks
        for _ in range(400):
            if len(local.node.mempool):
                break
            await asyncio.sleep(0.02)
        waited = loop.time() - opened
        stop.set()
        await asyncio.wait_for(task, 10)
        return waited

    waited = asyncio.run(scenario())
    assert len(local.node.mempool) == 1 and waited < 8.0


def test_warm_up_runs() -> None:
    warm_up()  # idempotent, no side effect but torch's lazy imports


def test_http_submitter_uses_the_signed_api(local: LocalNode) -> None:
    local.mine()
    local.auto_mine = False
    with local.api(key("alice")) as api:
        trainer = _trainer(local)
        trainer.submit = http_submitter(api)
        tx = asyncio.run(trainer.step())
    assert tx is not None and tx.hash in local.node.mempool


def test_attack_names() -> None:
    delta = {"w": torch.ones(3)}
    assert torch.equal(attack_by_name("sign_flip").delta(delta, 1)["w"], -torch.ones(3))  # type: ignore[misc]
    assert torch.equal(attack_by_name("scaling:3").delta(delta, 1)["w"], 3 * torch.ones(3))  # type: ignore[misc]
    assert torch.count_nonzero(attack_by_name("free_rider").delta(delta, 1)["w"]) == 0  # type: ignore[misc]
    labels = torch.tensor([0, 9])
    assert attack_by_name("label_flip").labels(labels, 10).tolist() == [9, 0]  # type: ignore[misc]
    with pytest.raises(UsageError, match="expected one of"):
        attack_by_name("teleport")
    with pytest.raises(UsageError, match="not a number"):
        attack_by_name("scaling:x")


def test_peer_publisher_pushes_to_reachable_peers(local: LocalNode, tmp_path: Path) -> None:
    from types import SimpleNamespace

    import httpx

    from bcfl_cli.client.transport import SignedClient
    from bcfl_cli.node.trainer import peer_publisher

    other = LocalNode(tmp_path / "other")
    try:
        digest = local.node.blobs.put(b"update bytes" * 1000)
        up, down = SimpleNamespace(url="http://up"), SimpleNamespace(url="http://down")

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        class Peers:
            def live(self) -> list[object]:
                return [up, down]

            def blob_client(self, peer: object) -> SignedClient:
                transport = other.transport if peer is up else httpx.MockTransport(refuse)
                return SignedClient(
                    key("alice"), "http://testserver/v1", transport=transport, retries=0
                )

        told = asyncio.run(peer_publisher(Peers(), local.node.blobs)(_carrying(digest)))
        assert other.node.blobs.verify(digest) and told == frozenset()
    finally:
        other.close()


def _carrying(digest: str) -> Transaction:
    """An update transaction naming ``digest`` (for the pushes; no node has to accept it)."""
    return build_update_tx(
        key("alice"),
        "00" * 32,
        round_number=1,
        base_model="11" * 32,
        blob=digest,
        blob_size=len(b"update bytes" * 1000),
        num_samples=10,
        metrics={},
    )


@pytest.mark.parametrize("round_open_there", [True, False])
def test_a_small_update_goes_with_its_blob_on_the_pooled_async_client(
    local: LocalNode, tmp_path: Path, round_open_there: bool
) -> None:
    """By POST (where no stream can be opened): one request per peer where the peer takes the
    pair (its mempool then holds the update and the author's gossip skips it); else the blob
    alone, and the update follows by gossip. The stream's push: tests/node/test_peer_stream.py."""
    from starlette.types import ASGIApp

    from bcfl_cli.node.peers import PeerInfo, Peers, did_tag
    from bcfl_cli.node.trainer import peer_publisher
    from tests.node._node_harness import did

    other = LocalNode(tmp_path / "other")  # the same genesis
    other.auto_mine = False
    try:
        local.mine()  # round 1 opens here
        if round_open_there:
            other.mine()
        tx = _trainer(local).train(local.state)
        sent: list[str] = []

        class Spy:
            def __init__(self, peers: Peers) -> None:
                self.peers = peers

            def live(self) -> list[PeerInfo]:
                return self.peers.live()

            def blob_client(self, peer: object) -> object:
                raise AssertionError("a one-chunk blob needs no thread and no new client")

            async def push_update(self, peer: PeerInfo, tx: Transaction, data: bytes) -> bool:
                sent.append("update")
                return await self.peers.push_update(peer, tx, data)

            async def put_small_blob(self, peer: PeerInfo, digest: str, data: bytes) -> bool:
                sent.append("blob")
                return await self.peers.put_small_blob(peer, digest, data)

        async def scenario() -> frozenset[str]:
            def app_at(port: int) -> ASGIApp:
                other.node.options = dataclasses.replace(
                    other.node.options, host="127.0.0.1", port=port
                )
                return other.node.http_app()

            async with served(app_at) as url:
                spy = Spy(Peers(key("alice"), [url], self_url="http://me", stream=False))
                spy.peers.peers[url].did = did("bob")  # as the status poll would have learned
                try:
                    return await peer_publisher(spy, local.node.blobs)(tx)  # type: ignore[arg-type]
                finally:
                    await spy.peers.close()
                    await other.node.peers.close()  # it checked the URL the push named

        told = asyncio.run(scenario())
        assert other.node.blobs.verify(tx.body["blob"])
        if round_open_there:
            assert sent == ["update"] and told == {did_tag(did("bob"))}
            assert tx.hash in other.node.mempool
        else:  # refused as an update there (no round open): the blob alone, gossip does the rest
            assert sent == ["update", "blob"] and told == frozenset()
            assert tx.hash not in other.node.mempool
    finally:
        other.close()


def test_the_publisher_asks_a_peer_it_does_not_know_yet_before_pushing(
    local: LocalNode, tmp_path: Path
) -> None:
    """A peer whose did the sync loop has not learnt yet is asked (one status request) before
    the publisher decides: a member that only trains gets no update; one that does not answer
    gets it, in case it checks updates (issue 19; a CI run saw a trainer push to such a peer)."""
    from types import SimpleNamespace

    from bcfl_cli.client.transport import SignedClient
    from bcfl_cli.node.trainer import peer_publisher

    other = LocalNode(tmp_path / "other")
    try:
        digest = local.node.blobs.put(b"update bytes" * 1000)
        trainer_only = SimpleNamespace(url="http://eve", did=None)
        silent = SimpleNamespace(url="http://silent", did=None)
        pushed: list[str] = []
        asked: list[str] = []

        class Peers:
            def live(self) -> list[object]:
                return [trainer_only, silent]

            async def identify(self, peer: SimpleNamespace) -> str | None:
                asked.append(peer.url)
                if peer is trainer_only:
                    peer.did = "did:key:eve"
                return peer.did  # type: ignore[no-any-return]

            def blob_client(self, peer: SimpleNamespace) -> SignedClient:
                pushed.append(peer.url)
                return SignedClient(
                    key("alice"), "http://testserver/v1", transport=other.transport, retries=0
                )

        publish = peer_publisher(Peers(), local.node.blobs, checks=lambda did: did != "did:key:eve")
        asyncio.run(publish(_carrying(digest)))
        assert sorted(asked) == ["http://eve", "http://silent"]
        assert pushed == ["http://silent"]
    finally:
        other.close()


def test_pushes_to_many_slow_peers_leave_the_default_executor_free(
    local: LocalNode, tmp_path: Path
) -> None:
    """A trainer's pushes (one thread a peer for a whole upload) run on a pool of their own:
    with more slow peers than the loop's default executor has threads, the node's other
    ``to_thread`` work (downloads, submissions, summaries) still runs while they are under
    way; the pool's threads end when the publisher is closed. Red before: the pushes took
    every default thread and the other work waited for the uploads."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from bcfl_cli.client.transport import SignedClient
    from bcfl_cli.node.trainer import PUSH_THREAD_PREFIX, PUSH_THREADS, peer_publisher

    default_threads = 2
    slow = [SimpleNamespace(url=f"http://slow-{i}", did=None) for i in range(default_threads + 2)]
    assert len(slow) <= PUSH_THREADS  # every push under way at once on the publisher's pool
    release = threading.Event()
    started: list[str] = []
    other = LocalNode(tmp_path / "other")
    try:
        digest = local.node.blobs.put(b"update bytes" * 1000)

        class Peers:
            def live(self) -> list[object]:
                return list(slow)

            def blob_client(self, peer: SimpleNamespace) -> SignedClient:
                started.append(peer.url)
                release.wait(30.0)  # a slow upload, held until the test has looked
                return SignedClient(
                    key("alice"), "http://testserver/v1", transport=other.transport, retries=0
                )

        async def scenario() -> tuple[int, int]:
            loop = asyncio.get_running_loop()
            default = ThreadPoolExecutor(default_threads)
            loop.set_default_executor(default)
            publish = peer_publisher(Peers(), local.node.blobs)
            pushing = asyncio.create_task(publish(_carrying(digest)))
            try:
                for _ in range(600):  # every push holds its thread
                    if len(started) == len(slow):
                        break
                    await asyncio.sleep(0.01)
                # the node's other threaded work is not queued behind the uploads
                other_work = await asyncio.wait_for(asyncio.to_thread(lambda: 42), 10.0)
                release.set()
                await asyncio.wait_for(pushing, 30.0)
            finally:
                release.set()
                publish.close()
            pushers = [t for t in threading.enumerate() if t.name.startswith(PUSH_THREAD_PREFIX)]
            for thread in pushers:
                thread.join(10.0)
            return other_work, sum(t.is_alive() for t in pushers)

        other_work, alive = asyncio.run(scenario())
        assert other_work == 42 and len(started) == len(slow)
        assert alive == 0  # closed with the publisher
        assert other.node.blobs.verify(digest)
    finally:
        other.close()


def test_the_node_trainer_closes_its_publisher_when_it_stops(
    local: LocalNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcfl_cli.node.trainer as trainer_module

    made: list[trainer_module.PeerPublisher] = []
    closed: list[bool] = []
    original = trainer_module.peer_publisher

    def recording(*args: object, **kw: object) -> trainer_module.PeerPublisher:
        publisher = original(*args, **kw)  # type: ignore[arg-type]
        made.append(publisher)
        close = publisher.close
        publisher.close = lambda: (closed.append(True), close())[-1]  # type: ignore[method-assign]
        return publisher

    monkeypatch.setattr(trainer_module, "peer_publisher", recording)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_node_trainer(local.node.trainer_host, part(1), stop, seed=1, poll_s=0.05)
        )
        for _ in range(400):
            if made:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert len(made) == 1 and closed == [True]
