"""A hung peer cannot hold a node's download threads past the slice it was given.

A paused member's node still accepts connections (the kernel does) and answers nothing. The
blob service gives each peer but the last a slice of a download's deadline and moves on; the
thread of a download given up on used to wait on the hung socket for its client's whole timeout
(2 x 30 s with the one retry), and the loop's default executor has only a few threads: a few
such attempts (validation each round, block sync, round preparation) and every download, from
healthy peers too, queued behind them. Found in CI's crash-fault run (a paused node left one
node unable to fetch a proposal's blobs for over a minute, so three of four could not commit).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.node.blob_service import BlobService
from bcfl_cli.node.peers import PeerInfo, Peers
from bcfl_cli.store.blobs import BlobStore
from tests.node._chain_fixture import key

MISSING = "ab" * 32


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A listening socket that never accepts: connections complete, nothing is ever read."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


class RecordingPeers(Peers):
    """The node's peers, recording each download client asked for (and its timeout)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.asked: list[tuple[str, float | None]] = []

    def blob_client(self, peer: PeerInfo, **kw: Any) -> SignedClient:
        self.asked.append((peer.url, kw.get("timeout_s")))
        return super().blob_client(peer, **kw)


def _service(peers: Peers, root: Path) -> BlobService:
    return BlobService(peers, BlobStore(root), max_blob_bytes=lambda: 1 << 20)


def test_a_download_from_a_hung_peer_frees_its_thread_with_its_slice(
    hung_url: str, tmp_path: Path
) -> None:
    peers = RecordingPeers(key("bob"), [hung_url], self_url="http://me:1")
    service = _service(peers, tmp_path / "blobs")

    async def run() -> float:
        # one executor thread, as if the others were taken: the download may hold only it
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        assert not await service.ensure_blobs([MISSING], timeout_s=1.0)
        start = time.monotonic()
        # the thread is free again soon after the slice (1 s, and the client's one retry);
        # before, it waited on the hung socket 2 x 30 s, and this waited with it
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 15.0)
        return time.monotonic() - start

    asyncio.run(run())
    [(url, timeout_s)] = peers.asked
    assert url == hung_url and timeout_s is not None and timeout_s <= 1.0
