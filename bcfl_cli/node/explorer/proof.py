"""A proof bundle for the explorer's download, built in a process of its own.

Building a proof replays the chain's headers from genesis to the round's aggregate in Python
(5 s and 10 MB for a late round of a 10,000-block chain, docs/OPERATIONS.md, "The explorer"):
on a thread of the node it would hold the interpreter lock against the event loop that runs
consensus for all that time. A spawned process (not forked: the node has threads) reads the
ledger with a reader of its own and hands back the gzip bytes; it ends with the build. Only this
node's own child sends these bytes back, never a peer.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bcfl_cli.provenance.build import build_proof
from bcfl_cli.store.ledger import Ledger


def build_bundle(url: str, blob_dir: str, number: int) -> bytes:
    """The gzip proof of round ``number`` from the ledger at ``url`` (runs in the child)."""
    ledger = Ledger.open_url(url, Path(blob_dir), upgrade=False)
    try:
        return build_proof(ledger, number).to_bytes(compress=True)
    finally:
        ledger.close()


async def build_in_process(url: str, blob_dir: Path, number: int) -> bytes:
    """``build_bundle`` in a fresh spawned process, awaited without blocking the event loop."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, build_bundle, url, str(blob_dir), number)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
