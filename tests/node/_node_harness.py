"""An in-process node for tests of the commands around it: the real Node and its real HTTP app,
with consensus replaced by a deterministic "miner" that commits the mempool right after each
transaction a client posts (the founders' keys sign the commit certificate).

The genesis comes from the example consortium file (four founders, an MLP on the digits sample
data), so updates are real trained tensors checked by the real contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import nacl.signing
import uvicorn
from starlette.types import ASGIApp

from bcfl_cli.chain import commit_with_keys
from bcfl_cli.client import NodeApi
from bcfl_cli.consortium.example import filled_example
from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.home import Home
from bcfl_cli.identity import Identity
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.server import Node, NodeOptions, http_config
from bcfl_cli.node.trainer import AutoTrainer, load_training_data
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.training.rounds import compute_aggregate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette prefers the httpx2 fork for its TestClient
    from starlette.testclient import TestClient

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
PARTS = SAMPLE / "partitions" / "digits" / "4-dir0.5"
FOUNDERS = ("alice", "bob", "carol", "dave")
URL = "http://testserver"


def key(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"node-ops:{name}".encode()).digest())


def did(name: str) -> str:
    return did_from_public_key(bytes(key(name).verify_key))


def part(index: int) -> Path:
    return PARTS / f"member-{index:02d}.csv"


#: The example's round deadline is in seconds (a person trains by hand); these tests step the
#: chain block by block and were written for its former deadline of 20 blocks, which they keep.
BLOCK_DEADLINE = {"round_deadline_s = 600 ": "deadline_blocks = 20    "}


def consortium_home(root: Path, *, edit: dict[str, str] | None = None) -> Home:
    text = filled_example([(n, did(n)) for n in FOUNDERS])
    edits = edit or {}
    if not any("round_deadline_s" in old for old in edits):
        edits = {**BLOCK_DEADLINE, **edits}
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    root.mkdir(parents=True, exist_ok=True)
    toml = root / "consortium.toml"
    toml.write_text(text, encoding="utf-8")
    home = Home.resolve(root / "alice")
    init_consortium(home, toml, time_ms=1_700_000_000_000)
    return home


class _MiningTransport(httpx.BaseTransport):
    """Hands requests to the app; after a POST of a transaction, commits the mempool."""

    def __init__(self, inner: httpx.BaseTransport, harness: LocalNode) -> None:
        self.inner = inner
        self.harness = harness

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path in ("/v1/txs", "/v1/join"):
            response.read()
            if self.harness.auto_mine:
                self.harness.mine_all()
        return response


class LocalNode:
    def __init__(self, root: Path, *, edit: dict[str, str] | None = None) -> None:
        self.home = consortium_home(root, edit=edit)
        self.node = Node(
            self.home, Identity("alice", key("alice")), NodeOptions(host="testserver", port=80)
        )
        self.client = TestClient(self.node.http_app(), base_url=URL)
        self.transport = _MiningTransport(self.client._transport, self)
        self.auto_mine = True
        self.open_rounds = True

    def api(self, signer: nacl.signing.SigningKey | None = None) -> NodeApi:
        return NodeApi(URL, signer, transport=self.transport, retries=0)

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.node.state

    def mine(self) -> Block | None:
        """Commit one block of what the proposer (alice) would propose now; None if empty."""
        node = self.node
        state = node.state
        height = state.height + 1
        now = max(int(time.time() * 1000), state.head_time + 1)
        pending = node.mempool.snapshot()
        txs = plan_block(
            state,
            pending,
            height=height,
            key=key("alice"),
            now_ms=now,
            verdict_of=lambda tx: node.checks.check_update(state, tx),
            aggregate_of=lambda s: compute_aggregate(s, node.blobs),
        )
        if not self.open_rounds:
            txs = [t for t in txs if t.kind.value != "open_round"]
        if not txs:
            return None
        block, after = build_proposal(
            state, node.chain.head, txs, key("alice"), now_ms=now, checks=node.checks
        )
        signers = [k for n in self.names() if (k := key(n)) and did(n) in state.validator_set]
        block = commit_with_keys(block, signers, node.genesis_hash)
        node.chain.accept_block(block, after, source="test-miner")
        return block

    def mine_all(self, limit: int = 6) -> None:
        for _ in range(limit):
            if not len(self.node.mempool) or self.mine() is None:
                return

    def names(self) -> list[str]:
        return list(FOUNDERS)

    def close(self) -> None:
        self.client.close()
        self.node.ledger.close()
        self.node.guard.close()
        self.node._worker.shutdown(wait=False)


@contextlib.asynccontextmanager
async def served(make_app: Callable[[int], ASGIApp]) -> AsyncIterator[str]:
    """Serve ``make_app(port)`` with uvicorn on a free loopback port in the running loop; yield
    its URL. For code that talks real HTTP (the node's peer client, aiohttp, has no in-process
    transport); the app learns its port, as a node signs and checks its own authority.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(http_config(make_app(port), "127.0.0.1", port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # bounded: 5 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("the test server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def trained_update(
    local: LocalNode, tmp_path: Path, name: str = "bob"
) -> tuple[Transaction, bytes]:
    """A real trained update of ``name`` for the open round, its blob kept apart from the node."""
    own = BlobStore(tmp_path / f"{name}-blobs")
    base = local.state.round.base_model
    own.put(local.node.blobs.get(base, max_bytes=1 << 24))
    trainer = AutoTrainer(
        key=key(name),
        data=load_training_data(part(2), local.state),
        blobs=own,
        state=lambda: local.state,
        submit=lambda tx, told: None,  # type: ignore[arg-type,return-value]
        seed=5,
    )
    tx = trainer.train(local.state)
    return tx, own.get(tx.body["blob"], max_bytes=1 << 24)
