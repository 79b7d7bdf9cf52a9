"""Upload quotas and the collection of unreferenced blobs (issue 16, item 8)."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
from starlette.applications import Starlette

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import UsageError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.blob_keeper import BlobKeeper, parse_retention
from bcfl_cli.node.blob_routes import BlobRoutes
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.store.blob_owners import BlobOwners
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.verify.chain import verify_chain
from bcfl_cli.wire.refusal import Refusal
from tests.node._chain_fixture import Chain, make_chain
from tests.node.test_round_driver import EDIT, step

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

KIB = 1024
CHUNK = 64 * KIB


def _age(store: BlobStore, digests: list[str] | None = None, seconds: float = 86400.0) -> None:
    """Make blobs look stored ``seconds`` ago."""
    old = time.time() - seconds
    for digest in digests if digests is not None else list(store.iter_hashes()):
        os.utime(store.path_for(digest), (old, old))


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit=EDIT)
    yield c
    c.ledger.close()


def test_collection_removes_only_old_unreferenced_unneeded_blobs(
    chain: Chain, tmp_path: Path
) -> None:
    genesis = (chain.head.header.config, chain.state.config.initial_model)
    pending: set[str] = set()
    owners = BlobOwners(tmp_path / "owners.sqlite")
    keeper = BlobKeeper(
        chain.blobs,
        owners,
        referenced=genesis,
        quota_bytes=10**9,
        retention_s=3600,
        in_flight=lambda: pending,
    )
    checks = CachingChecks(FLChecks(chain.blobs))
    for pending_txs in ([], [chain.update("bob", scale=0.01), chain.update("carol", scale=1e9)]):
        step(chain, pending_txs, checks)
        keeper.on_commit(chain.head)
    waiting = chain.update("dave", scale=0.02)
    step(chain, [waiting], checks)  # completes the quorum: aggregate and the next round
    keeper.on_commit(chain.head)
    late = chain.update("alice", scale=0.03)  # pending in the mempool: needed
    pending.add(late.body["blob"])
    junk = [chain.blobs.put(b"junk %d" % i) for i in range(40)]
    fresh = chain.blobs.put(b"uploaded a moment ago")
    _age(chain.blobs)
    os.utime(chain.blobs.path_for(fresh))

    references, _ = chain.ledger.blob_references()
    assert references | set(genesis) == keeper.referenced  # the ledger and the commits agree
    rejected = [
        t for t in chain.ledger.txs_of_kind("validation") if t[0].body["verdict"] != "accept"
    ]
    assert rejected  # a rejected update's blob is named by the chain too, and kept
    before = set(chain.blobs.iter_hashes())
    removed = sum(keeper.collect().removed for _ in range(16))  # 16 passes cover the store
    after = set(chain.blobs.iter_hashes())
    assert before - after == set(junk) and removed == len(junk)
    assert keeper.referenced <= after and late.body["blob"] in after and fresh in after
    assert verify_chain(chain.ledger, workers=1).fault is None
    owners.close()


def test_a_pass_is_bounded_and_keep_keeps_everything(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    junk = [store.put(b"%d" % i) for i in range(300)]
    _age(store)
    with BlobOwners(tmp_path / "o.sqlite") as owners:
        keep = BlobKeeper(store, owners, referenced=(), quota_bytes=1, retention_s=None)
        assert keep.collect(prefixes=256).removed == 0
        keeper = BlobKeeper(store, owners, referenced=(), quota_bytes=1, retention_s=60)
        one = keeper.collect(prefixes=1)
        assert one.examined == one.removed == sum(1 for d in junk if d.startswith("00"))
        assert sum(keeper.collect().removed for _ in range(16)) == len(junk) - one.removed


@pytest.mark.parametrize(
    ("text", "seconds"), [("keep", None), ("24h", 86400.0), ("90s", 90.0), ("1.5d", 129600.0)]
)
def test_parse_retention(text: str, seconds: float | None) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "5s", "-1h", "1w", "forever"])
def test_parse_retention_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_retention(text)


class _Node:
    """Blob routes of one node with two members and a quota of 4 one-chunk blobs each."""

    def __init__(self, root: Path) -> None:
        self.keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
        self.dids = [did_from_public_key(bytes(k.verify_key)) for k in self.keys]
        self.store = BlobStore(root / "server")
        self.needed: set[str] = set()
        self.owners_path = root / "owners.sqlite"
        self.keeper = self._keeper()
        routes = BlobRoutes(self.store, max_blob_bytes=CHUNK, chunk_size=CHUNK, keeper=self.keeper)
        app = SignatureAuth(
            Starlette(routes=routes.routes),
            is_member=set(self.dids).__contains__,
            limits=NodeLimits(max_body_bytes=CHUNK + 64 * KIB),
        )
        self.http = TestClient(app, base_url="http://peer")
        self.mallory, self.alice = (
            SignedClient(k, "http://peer", transport=self.http._transport, retries=0)  # type: ignore[arg-type]
            for k in self.keys
        )

    def _keeper(self) -> BlobKeeper:
        return BlobKeeper(
            self.store,
            BlobOwners(self.owners_path),
            referenced=(),
            quota_bytes=4 * CHUNK,
            in_flight=lambda: self.needed,
        )

    def put(self, client: SignedClient, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        client.put(f"/blobs/{digest}/chunks/0", params={"size": len(data)}, content=data)
        return digest


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    built = _Node(tmp_path)
    with built.http, built.mallory, built.alice:
        yield built
    built.keeper.owners.close()


def _blob(seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(CHUNK)


def test_a_members_unreferenced_uploads_displace_only_its_own(node: _Node) -> None:
    alices = node.put(node.alice, _blob(1000))
    mine = [node.put(node.mallory, _blob(i)) for i in range(20)]
    held = [d for d in mine if node.store.has(d)]
    assert held == mine[-4:]  # its quota, its newest
    assert node.store.has(alices)
    assert node.keeper.usage(node.dids[0]) == (4 * CHUNK, 4)
    assert sum(1 for _ in node.store.iter_hashes()) == 5


def test_uploads_still_needed_are_not_displaced_and_the_next_is_refused(node: _Node) -> None:
    mine = [node.put(node.mallory, _blob(i)) for i in range(4)]
    node.needed |= set(mine)  # say, four pending updates
    with pytest.raises(Refusal) as refused:
        node.put(node.mallory, _blob(99))
    assert refused.value.status == 507 and refused.value.code == "over_quota"
    assert all(node.store.has(d) for d in mine)
    node.put(node.alice, _blob(100))  # another member is not affected


def test_the_quota_outlives_a_restart_and_ends_when_the_chain_names_the_blob(
    node: _Node,
) -> None:
    mine = [node.put(node.mallory, _blob(i)) for i in range(4)]
    node.keeper.owners.close()
    restarted = node._keeper()
    assert restarted.usage(node.dids[0]) == (4 * CHUNK, 4)
    assert restarted.admit(node.dids[0], "f" * 64, CHUNK) is None  # makes room: its oldest
    assert not node.store.has(mine[0]) and node.store.has(mine[1])
    restarted.owners.close()
    named = BlobKeeper(
        node.store, BlobOwners(node.owners_path), referenced=mine[1:3], quota_bytes=4 * CHUNK
    )
    assert named.usage(node.dids[0]) == (CHUNK, 1)
    node.keeper = named
