"""A node summarises each update as its chunks arrive (issue 19): an upload adopted under its
running hash leaves a summary the contract reads instead of the file; an upload that does not
hash to its name, or one this process did not receive whole, leaves none."""

from __future__ import annotations

import asyncio
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import nacl.signing
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.fl.contract import UpdateClaim, check_blob
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.fl.update_summary import UpdateSummaries
from bcfl_cli.node import blob_routes
from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.blob_routes import BlobRoutes
from bcfl_cli.node.blob_service import SUMMARY_PIECE, BlobService, SummarySink
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.spec import ContractRules
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.refusal import Refusal

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CHUNK = 64 * 1024
MB = 1024 * 1024
LAYOUT = {"w": ("F32", (300, 200)), "b": ("F32", (300,))}


class _Node:
    def __init__(self, root: Path) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.store = BlobStore(root / "server")
        self.summaries = UpdateSummaries()
        routes = BlobRoutes(
            self.store, max_blob_bytes=MB, chunk_size=CHUNK, summaries=self.summaries
        )
        app = SignatureAuth(
            Starlette(routes=routes.routes),
            is_member={did_from_public_key(bytes(self.key.verify_key))}.__contains__,
            limits=NodeLimits(max_body_bytes=CHUNK + 64 * 1024),
        )
        self.http = TestClient(app, base_url="http://peer")
        self.client = SignedClient(self.key, "http://peer", transport=self.http._transport)  # type: ignore[arg-type]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    built = _Node(tmp_path)
    with built.http, built.client:
        yield built


def _update(seed: int) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    return encode_tensors(
        {name: torch.randn(shape, generator=gen) * 1e-2 for name, (_, shape) in LAYOUT.items()}
    )


def test_an_uploaded_update_is_summarised_and_judged_as_its_file(
    node: _Node, tmp_path: Path
) -> None:
    data = _update(1)
    assert len(data) > 3 * CHUNK  # several chunks, the last one short
    local = BlobStore(tmp_path / "local")
    digest = local.put(data)
    upload_blob(node.client, digest, local)
    summary = node.summaries.get(digest)
    assert summary is not None and summary.size == len(data)
    claim = UpdateClaim("did:key:z6Mk", 1, "0" * 64, digest, len(data), 10)
    path = node.store.path_for(digest)
    for rules in (ContractRules(), ContractRules(max_update_norm=1e-6)):
        assert check_blob(rules, LAYOUT, claim, path, summary=summary) == check_blob(
            rules, LAYOUT, claim, path, named_by_hash=True
        )


def test_an_upload_that_does_not_hash_to_its_name_leaves_no_summary(node: _Node) -> None:
    data = _update(2)
    liar = "c" * 64
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for index, chunk in enumerate(chunks):
        node.client.put(f"/blobs/{liar}/chunks/{index}", params={"size": len(data)}, content=chunk)
    with pytest.raises(Refusal):
        node.client.put(f"/blobs/{liar}", params={"size": len(data)}, content=b"")
    assert node.summaries.get(liar) is None and len(node.summaries) == 0
    real = hashlib.sha256(data).hexdigest()
    assert node.summaries.get(real) is None


def test_an_upload_whose_summary_falls_behind_gets_none(
    node: _Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks wait for the summary worker after they are acknowledged; more than
    SUMMARY_BACKLOG_BYTES waiting drops that upload's summary (memory bounded per upload), and
    the blob is still stored, to be checked in full."""
    monkeypatch.setattr(blob_routes, "SUMMARY_BACKLOG_BYTES", CHUNK - 1)
    data = _update(3)
    local = BlobStore(tmp_path / "local")
    digest = local.put(data)
    upload_blob(node.client, digest, local)
    assert node.store.verify(digest)
    assert node.summaries.get(digest) is None


class _ServingPeers:
    """``BlobPeers`` with one peer: the ``_Node`` fixture's blob routes."""

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.peer = PeerInfo("http://peer", did=did_from_public_key(bytes(node.key.verify_key)))

    def live(self) -> list[PeerInfo]:
        return [self.peer]

    def blob_client(
        self, peer: PeerInfo, *, download: bool = False, timeout_s: float | None = None
    ) -> SignedClient:
        return SignedClient(self.node.key, "http://peer", transport=_Unclosed(self.node.http))


class _Unclosed(httpx.BaseTransport):
    def __init__(self, http: TestClient) -> None:
        self.inner = http._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)


@pytest.mark.parametrize("verifies", [True, False])
def test_a_catch_up_download_leaves_the_summary_a_push_would(
    node: _Node, tmp_path: Path, verifies: bool
) -> None:
    """A node catching up (``BlobService``, whole blobs) summarises each update as it streams
    in, when it checks updates: the contract then judges it as its file, without reading it."""
    data = _update(4)
    digest = node.store.put(data)
    here = BlobStore(tmp_path / "here")
    summaries = UpdateSummaries()
    service = BlobService(
        _ServingPeers(node),
        here,
        max_blob_bytes=lambda: MB,
        summaries=summaries,
        summarise=lambda: verifies,
    )
    assert asyncio.run(service.ensure_blobs([digest], timeout_s=30.0))
    assert here.get(digest) == data
    summary = summaries.get(digest)
    if not verifies:
        assert summary is None and len(summaries) == 0
        return
    assert summary is not None and summary.size == len(data)
    claim = UpdateClaim("did:key:z6Mk", 1, "0" * 64, digest, len(data), 10)
    path = here.path_for(digest)
    for rules in (ContractRules(), ContractRules(max_update_norm=1e-6)):
        assert check_blob(rules, LAYOUT, claim, path, summary=summary) == check_blob(
            rules, LAYOUT, claim, path, named_by_hash=True
        )


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=64)
    | st.builds(
        lambda seed, scale, poke, at, cut: _hostile(seed, scale, poke, at, cut),
        st.integers(0, 3),
        st.sampled_from([1e-3, 1.0, 1e30, float("inf")]),
        st.booleans(),
        st.integers(0, 1 << 20),
        st.integers(0, 64),
    ),
    pieces=st.lists(st.integers(1, 70_000), min_size=1, max_size=8),
    gather=st.sampled_from([1, 4099, 100_000, SUMMARY_PIECE]),
)
def test_a_download_sink_judges_as_the_file_on_any_bytes(
    data: bytes, pieces: list[int], gather: int
) -> None:
    """Whatever a peer serves under a hash, the summary a download's sink leaves (or none)
    gives the verdict the full check of the file gives, however the stream is cut."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        store = BlobStore(Path(root))
        digest = store.put(data)
        summaries = UpdateSummaries()
        sink = SummarySink(len(data), summaries=summaries, piece=gather)
        at, turn = 0, 0
        while at < len(data):
            step = pieces[turn % len(pieces)]
            sink.feed(data[at : at + step])
            at, turn = at + step, turn + 1
        sink.finish(digest)
        claim = UpdateClaim("did:key:z6Mk", 1, "0" * 64, digest, len(data), 10)
        path = store.path_for(digest)
        for rules in (ContractRules(), ContractRules(max_update_norm=1e-3)):
            assert check_blob(
                rules, LAYOUT, claim, path, summary=summaries.get(digest)
            ) == check_blob(rules, LAYOUT, claim, path, named_by_hash=True)


def _hostile(seed: int, scale: float, poke: bool, at: int, cut: int) -> bytes:
    """An update of LAYOUT scaled (to a big norm, to inf), maybe a byte flipped, maybe cut."""
    gen = torch.Generator().manual_seed(seed)
    data = bytearray(
        encode_tensors(
            {name: torch.randn(shape, generator=gen) * scale for name, (_, shape) in LAYOUT.items()}
        )
    )
    if poke:
        data[at % len(data)] ^= 0x41
    return bytes(data[: len(data) - cut])
