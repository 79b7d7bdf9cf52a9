"""Sync: catch-up of a fresh node (blocks/s, MB/s) vs a raw loopback HTTP transfer of the bytes.

Usage::

    .venv/bin/python bench/sync_bench.py [--rounds 5] [--model 1m|10m|digits] [--trainers 3]
        [--before REV [--pairs 2]] [--json]

Four nodes train R rounds of the 1.13M-parameter MLP (every update is a 4.5 MB blob; ``10m``: the
10.0M-parameter MLP, 40 MB blobs, where the bytes dominate the fixed costs). Then all
but one stop, so the chain stands still, and fresh nodes (founders' homes holding only the
genesis, trainers without voting power) start with that one node as their only peer and catch
up, one after the other:

- a *verifying* node (``--verify-updates``): it pulls the blocks 100 at a time, fetches every
  update blob, re-applies every rule with the FL deep checks (contract verdicts and aggregates
  recomputed), and appends;
- a *trainer-only* member (the default for a member that does not validate, ``BlobScope``): it
  fetches each round's model alone, checked against the committed hash and size, and takes the
  quorum's certified verdicts; ``--trainers`` of them (default 3), the median run reported, its
  bytes against their own raw transfer in both readings (server in the bench, in its own
  process).

Each rate is measured from the node's first status answer to the head, and split, from its own
``caught up`` log line, into its transport (pages and blobs held) and its rules (time in
``ChainState.apply``), which overlap. Each is set against the raw transfer of its own bytes.

The node's transport is also timed alone: its own fetch code (``sync.fetch_block_blobs`` over a
``BlobService``: signed requests, each blob whole in one request hashed as it streams, fsync)
downloads the same pages and update blobs into an empty store, with nothing verified,
alternating (medians of five runs each) with the fetch path before issue 21 (a manifest first,
chunk hashes, the whole file hashed again at adoption), with a bare httpx client on the serving
node's own routes (the serving side alone), and with the raw transfer below.

The baseline, measured in the same run: the very same bytes (the block pages the node serves
and the update blobs) served by a bare Starlette app on uvicorn and downloaded with one httpx
client, streaming, in the same order, with no hashing, checks or disk writes: the transport's
limit on this machine; the app runs in a thread of the bench and, as a second arm, in a process
of its own (as a serving node is). Since session 9 the client reads each body as the node's
own downloads do, straight from the socket 1 MiB at a time (``LargeBodyTransport``), the
fastest plain client at hand: a baseline at its best; the same arm through httpx's own transport
(64 KiB pieces through httpcore and h11, the raw arm before) is reported beside it.

``--before REV`` also catches up verifying nodes running ``bcfl_cli`` as of REV (``git
archive``), alternating with this code, ``--pairs`` times, and as many trainer-only members
with REV's code as with this code, alternating: a change's before/after, end to end, in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncio  # noqa: E402

import httpx  # noqa: E402
import nacl.signing  # noqa: E402

from bcfl_cli.client.large_body import LargeBodyTransport  # noqa: E402
from bcfl_cli.client.transport import SignedClient  # noqa: E402
from bcfl_cli.demo.launcher import Member, free_ports  # noqa: E402
from bcfl_cli.identity.keystore import load_identity  # noqa: E402
from bcfl_cli.node.blob_service import BlobService  # noqa: E402
from bcfl_cli.node.peers import PeerInfo  # noqa: E402
from bcfl_cli.node.sync import BLOCKS_PER_REQUEST, fetch_block_blobs  # noqa: E402
from bcfl_cli.protocol.block import Block  # noqa: E402
from bcfl_cli.protocol.spec import ModelSpec  # noqa: E402
from bcfl_cli.store.blobs import BlobStore  # noqa: E402
from bench.common import (  # noqa: E402
    CLASSES,
    DIGITS_MLP,
    FEATURES,
    MLP_1M,
    PASSPHRASE,
    PLAN,
    BenchConsortium,
    Report,
    base_parser,
    emit,
    log,
    parse_log,
)

#: 64 -> 3125 -> 3125 -> 10: 10.0M parameters, a 40 MB model or update blob, where the bytes
#: dominate a catch-up's fixed costs (pages, certificates, requests)
MLP_10M = ModelSpec(
    architecture="mlp", input_shape=[FEATURES], num_classes=CLASSES, hidden=[3125, 3125], seed=0
)
MODELS = {"digits": DIGITS_MLP, "1m": MLP_1M, "10m": MLP_10M}
PAGE = 100
MB = 1e6


# --- the raw transfer ----------------------------------------------------------------------------
def raw_app(pages: list[bytes], blobs: list[bytes]) -> Any:
    """A bare Starlette app serving the bytes from memory (pages whole, blobs streamed)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    def page(request: Request) -> Response:
        return Response(pages[int(request.path_params["i"])], media_type="application/json")

    def blob(request: Request) -> StreamingResponse:
        data = blobs[int(request.path_params["i"])]

        def chunks() -> Any:
            view = memoryview(data)
            for start in range(0, len(data), 1 << 20):
                yield bytes(view[start : start + (1 << 20)])

        # its length said, as the node's blob route says it: the client may read the body
        # straight from the socket (LargeBodyTransport), the node's own download path
        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"content-length": str(len(data))},
        )

    return Starlette(routes=[Route("/pages/{i:int}", page), Route("/blobs/{i:int}", blob)])


class RawServer:
    """The same bytes behind a bare uvicorn + Starlette app, in a thread of this process."""

    def __init__(self, pages: list[bytes], blobs: list[bytes]) -> None:
        import uvicorn

        self.port = free_ports(1)[0]
        config = uvicorn.Config(
            raw_app(pages, blobs), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RawServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class RawServerProcess:
    """The same bare app in a process of its own, as a serving node is: the client and the
    server are scheduled apart, as in a real catch-up (the bytes are files it loads first)."""

    def __init__(self, pages: list[bytes], blobs: list[bytes], root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(pages):
            (root / f"page-{i}").write_bytes(data)
        for i, data in enumerate(blobs):
            (root / f"blob-{i}").write_bytes(data)
        self.counts = (len(pages), len(blobs))
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RawServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--raw-server", str(self.root), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/pages/0", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("the raw server process did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve_raw(root: Path, port: int) -> None:
    """``--raw-server DIR PORT``: serve DIR's ``page-N`` and ``blob-N`` files from memory."""
    import uvicorn

    def load(kind: str) -> list[bytes]:
        found = sorted(root.glob(f"{kind}-*"), key=lambda p: int(p.name.split("-")[1]))
        return [p.read_bytes() for p in found]

    app = raw_app(load("page"), load("blob"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def raw_transfer(
    pages: list[bytes],
    blobs: list[bytes],
    repeats: int = 3,
    *,
    apart: Path | None = None,
    durable: Path | None = None,
    httpx_transport: bool = False,
) -> tuple[float, float]:
    """Median seconds to download every page and blob once over loopback (wall; and the CPU of
    this process: client and server thread together, or the client alone when the server runs
    in a process of its own, ``apart``: a folder for its files). ``durable``: a folder where
    each blob is also hashed (SHA-256), written and fsynced as it streams, what a node must do
    with a blob before it may rely on it: the floor of a durable download, not of the wire.

    The client reads each body as the node's downloads do (``LargeBodyTransport``: straight from
    the socket, 1 MiB at a time), the fastest plain client at hand; ``httpx_transport``: through
    httpx's own transport (64 KiB pieces through httpcore and h11), the raw arm before session 9.
    """
    times = []
    cpus = []
    server_cm: RawServer | RawServerProcess = (
        RawServer(pages, blobs) if apart is None else RawServerProcess(pages, blobs, apart)
    )
    transport = None if httpx_transport else LargeBodyTransport()
    with server_cm as server, httpx.Client(timeout=60.0, transport=transport) as client:
        base = f"http://127.0.0.1:{server.port}"
        for _ in range(repeats):
            start = time.perf_counter()
            cpu = time.process_time()
            got = 0
            for i in range(len(pages)):
                got += len(client.get(f"{base}/pages/{i}").content)
            for i in range(len(blobs)):
                with client.stream("GET", f"{base}/blobs/{i}") as response:
                    if durable is None:
                        for chunk in response.iter_raw():
                            got += len(chunk)
                        continue
                    durable.mkdir(parents=True, exist_ok=True)
                    hasher = hashlib.sha256()
                    with open(durable / f"blob-{i}", "wb") as out:
                        for chunk in response.iter_raw():
                            got += len(chunk)
                            hasher.update(chunk)
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
            times.append(time.perf_counter() - start)
            if durable is not None:
                shutil.rmtree(durable, ignore_errors=True)
            cpus.append(time.process_time() - cpu)
            expected = sum(map(len, pages)) + sum(map(len, blobs))
            if got != expected:
                raise RuntimeError(f"raw transfer got {got} bytes, expected {expected}")
    return statistics.median(times), statistics.median(cpus)


def bare_client_on_node(url: str, height: int, digests: list[str]) -> tuple[float, float]:
    """Seconds (wall, client CPU) for a bare client (the node's download transport, but no
    signature, no checks, nothing written) to download the pages and update blobs from the
    serving node's own routes: what the node's serving side costs, apart from the fetching
    side."""
    start = time.perf_counter()
    cpu = time.process_time()
    with httpx.Client(timeout=60.0, transport=LargeBodyTransport()) as client:
        for first in range(1, height + 1, BLOCKS_PER_REQUEST):
            limit = min(BLOCKS_PER_REQUEST, height - first + 1)
            client.get(f"{url}/v1/blocks", params={"start": first, "limit": limit})
        for digest in digests:
            with client.stream("GET", f"{url}/v1/blobs/{digest}") as response:
                for _ in response.iter_raw():
                    pass
    return time.perf_counter() - start, time.process_time() - cpu


# --- the node's transport alone -------------------------------------------------------------------
class SourcePeer:
    """The fresh node's ``BlobPeers``, reduced to its one peer (its clients as ``Peers`` makes
    them)."""

    def __init__(self, key: nacl.signing.SigningKey, url: str) -> None:
        self.key = key
        self.peer = PeerInfo(url)

    def live(self) -> list[PeerInfo]:
        return [self.peer]

    def blob_client(self, peer: PeerInfo, *, download: bool = False) -> SignedClient:
        transport = LargeBodyTransport() if download else None  # as the node's (http peers)
        return SignedClient(
            self.key, peer.url + "/v1", retries=1, timeout=30.0, transport=transport
        )


def node_transport(
    key: nacl.signing.SigningKey, url: str, height: int, root: Path, *, whole_first: bool = True
) -> tuple[float, float]:
    """Seconds (wall, and this process's CPU) for the node's own fetch code to download every
    block page and update blob into an empty blob store (signed requests, the whole-blob hash
    taken while streaming, fsync; with ``whole_first=False`` the path before issue 21: a
    manifest, chunk hashes, and the whole file hashed again at adoption), with no verification:
    the transport part of a catch-up, measured alone."""
    store = BlobStore(root)
    fetcher = BlobService(
        SourcePeer(key, url), store, max_blob_bytes=lambda: 1 << 30, whole_first=whole_first
    )
    try:
        start = time.perf_counter()
        cpu = time.process_time()
        blocks: list[Block] = []
        with SignedClient(key, url, retries=1, timeout=30.0) as client:
            for first in range(1, height + 1, BLOCKS_PER_REQUEST):
                limit = min(BLOCKS_PER_REQUEST, height - first + 1)
                page = client.get("/v1/blocks", params={"start": first, "limit": limit}).json()
                blocks += [Block.from_dict(b) for b in page["blocks"]]
        asyncio.run(fetch_block_blobs(fetcher, store, blocks))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        wanted = {tx.body["blob"] for b in blocks for tx in b.txs if tx.kind == "update"}
        if not all(store.has(d) for d in wanted):
            raise RuntimeError("the node's transport left update blobs behind")
        return seconds, cpu
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the bench ------------------------------------------------------------------------------------
def chain_bytes(
    consortium: BenchConsortium, height: int
) -> tuple[list[bytes], list[bytes], list[int], list[bytes]]:
    """What a fresh node must download: block pages, update blobs, each blob's height, and the
    models the aggregates commit to (what a member that only trains fetches instead)."""
    node = consortium.nodes[0]
    return fetch_chain(node.url, BlobStore(node.home.blob_dir), height)


def fetch_chain(
    url: str, store: BlobStore, height: int
) -> tuple[list[bytes], list[bytes], list[int], list[bytes]]:
    """``chain_bytes`` of the node at ``url``, whose blobs lie in ``store``."""
    pages: list[bytes] = []
    blobs: list[bytes] = []
    heights: list[int] = []
    models: list[bytes] = []
    with httpx.Client(timeout=30.0) as client:
        for start in range(1, height + 1, PAGE):
            limit = min(PAGE, height - start + 1)
            response = client.get(f"{url}/v1/blocks", params={"start": start, "limit": limit})
            response.raise_for_status()
            pages.append(response.content)
            for block in response.json()["blocks"]:
                for tx in block["txs"]:
                    if tx["tx"]["kind"] == "update":
                        blobs.append(store.get(tx["tx"]["body"]["blob"], max_bytes=1 << 30))
                        heights.append(int(block["header"]["height"]))
                    if tx["tx"]["kind"] == "aggregate":
                        models.append(store.get(tx["tx"]["body"]["model"], max_bytes=1 << 30))
    return pages, blobs, heights, models


def catch_up(
    consortium: BenchConsortium,
    fresh: Member,
    source: Member,
    height: int,
    *,
    verify: bool,
    timeout: float,
) -> tuple[float, tuple[float, int], float, list[dict[str, Any]]]:
    """Start ``fresh`` with ``source`` as its only peer and wait until it holds ``height``
    blocks: (launched, (first status answer, its height), done, its ``caught up`` lines).
    ``verify``: started with ``--verify-updates`` (every update fetched and checked);
    otherwise a member that only trains (models only, the quorum's verdicts)."""
    launched = time.perf_counter()
    extra = ["--verify-updates"] if verify else []
    consortium.start(fresh.name, train=False, peers=[source.url], extra=extra)
    first: tuple[float, int] | None = None
    deadline = launched + timeout
    while True:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"the fresh node did not reach height {height}")
        st = consortium.node_status(fresh)
        if st is not None:
            h = int(st["height"])
            if first is None:
                first = (now, h)
            if h >= height:
                break
        time.sleep(0.02)
    done = time.perf_counter()
    passes = caught_up(fresh.log_path)
    while not passes and time.perf_counter() < done + 10.0:  # the line follows the append
        time.sleep(0.1)
        passes = caught_up(fresh.log_path)
    consortium.stop(fresh.name)
    assert first is not None
    return launched, first, done, passes


def code_at(rev: str, into: Path) -> Path:
    """This repository's ``bcfl_cli`` at ``rev`` (``git archive``), for a node started with
    that code (``--before``): the pair of a change, measured in one run."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "bcfl_cli", "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(
    rounds: int,
    model: str,
    *,
    quiet: bool = False,
    timeout: float = 600.0,
    repeats: int = 5,
    before: str | None = None,
    pairs: int = 2,
    trainers: int = 3,
) -> Report:
    spec = MODELS[model]
    report = Report(
        bench="sync_bench",
        title=f"Sync: a fresh node catching up {rounds} rounds ({model} model) vs raw HTTP",
        settings={"rounds": rounds, "model": model, "members": 4},
        columns=["what", "blocks", "MB", "seconds", "blocks/s", "MB/s", "x raw time"],
    )
    root = Path(tempfile.mkdtemp(prefix="bcfl-bench-sync-"))
    try:
        spares = 1 + trainers * (2 if before else 1) + (2 * pairs if before else 0)
        with BenchConsortium(root, spec, PLAN, 4, rounds, spare=spares) as consortium:
            log(f"4 nodes train {rounds} rounds ...", quiet=quiet)
            consortium.start_founders()
            consortium.watch_rounds(timeout=120.0 + 60.0 * rounds, quiet=quiet)
            for node in consortium.nodes[1:]:
                consortium.stop(node.name)
            source = consortium.nodes[0]
            time.sleep(1.0)  # let the last commit settle: nothing can commit with 1 of 4 up
            status = consortium.node_status(source)
            assert status is not None
            height = int(status["height"])
            pages, blobs, heights, models = chain_bytes(consortium, height)
            total_bytes = sum(map(len, pages)) + sum(map(len, blobs))
            model_bytes = sum(map(len, pages)) + sum(map(len, models))
            log(
                f"a verifying node syncs {height} blocks, {total_bytes / MB:.1f} MB ...",
                quiet=quiet,
            )
            # --verify-updates: every update fetched and checked, every aggregate recomputed
            launched, first, done, passes = catch_up(
                consortium, consortium.spares[0], source, height, verify=True, timeout=timeout
            )
            log(
                f"a trainer-only member syncs {height} blocks, {model_bytes / MB:.1f} MB ...",
                quiet=quiet,
            )
            old_code = code_at(before, root / "before-code") if before else None
            # trainer-only members, `trainers` of them (alternating with REV's code, --before)
            trainer_arms = ["this code", *([f"at {before}"] if before else [])]
            trained: dict[str, list[tuple[float, tuple[float, int], float, list[Any]]]] = {
                arm: [] for arm in trainer_arms
            }
            spare = iter(consortium.spares[1:])
            for _ in range(trainers):
                for arm in trainer_arms:
                    if arm != "this code":
                        consortium.extra_env["PYTHONPATH"] = str(old_code)
                    try:
                        trained[arm].append(
                            catch_up(
                                consortium,
                                next(spare),
                                source,
                                height,
                                verify=False,
                                timeout=timeout,
                            )
                        )
                    finally:
                        consortium.extra_env.pop("PYTHONPATH", None)
            # the rows show the run whose first answer -> head is the median
            by_time = sorted(trained["this code"], key=lambda r: r[2] - r[1][0])
            t_launched, t_first, t_done, t_passes = by_time[len(by_time) // 2]
            paired: dict[str, list[float]] = {"this code": [], f"at {before}": []}
            split: dict[str, list[tuple[float, ...]]] = {arm: [] for arm in paired}
            if before:
                for i in range(pairs):
                    for arm, fresh in (("this code", next(spare)), (f"at {before}", next(spare))):
                        log(f"a verifying node, {arm}, pair {i + 1} ...", quiet=quiet)
                        if arm != "this code":
                            consortium.extra_env["PYTHONPATH"] = str(old_code)
                        try:
                            _, (at, _h), end, lines = catch_up(
                                consortium, fresh, source, height, verify=True, timeout=timeout
                            )
                        finally:
                            consortium.extra_env.pop("PYTHONPATH", None)
                        paired[arm].append(end - at)
                        split[arm].append(
                            tuple(
                                sum(float(p[k]) for p in lines)
                                for k in ("seconds", "transport_s", "verify_s", "blob_wait_s")
                            )
                        )
            log("the node's transport alone and the raw transfer, alternating ...", quiet=quiet)
            key = load_identity(consortium.spares[0].home, PASSPHRASE.encode()).signing_key
            raw_runs: list[tuple[float, float]] = []
            apart_runs: list[tuple[float, float]] = []
            apart_httpx_runs: list[tuple[float, float]] = []
            durable_runs: list[tuple[float, float]] = []
            raw_model_runs: list[tuple[float, float]] = []
            raw_model_apart_runs: list[tuple[float, float]] = []
            alone_runs: list[tuple[float, float]] = []
            before_runs: list[tuple[float, float]] = []
            bare_runs: list[tuple[float, float]] = []
            digests = [hashlib.sha256(b).hexdigest() for b in blobs]
            for i in range(repeats):
                raw_runs.append(raw_transfer(pages, blobs, repeats=1))
                alone_runs.append(node_transport(key, source.url, height, root / f"alone-{i}"))
                before_runs.append(
                    node_transport(key, source.url, height, root / f"before-{i}", whole_first=False)
                )
                raw_model_runs.append(raw_transfer(pages, models, repeats=1))
                raw_model_apart_runs.append(
                    raw_transfer(pages, models, repeats=1, apart=root / f"raw-models-{i}")
                )
                apart_runs.append(
                    raw_transfer(pages, blobs, repeats=1, apart=root / f"raw-apart-{i}")
                )
                apart_httpx_runs.append(
                    raw_transfer(
                        pages, blobs, repeats=1, apart=root / f"raw-httpx-{i}", httpx_transport=True
                    )
                )
                durable_runs.append(
                    raw_transfer(
                        pages,
                        blobs,
                        repeats=1,
                        apart=root / f"raw-durable-{i}",
                        durable=root / f"raw-written-{i}",
                    )
                )
                bare_runs.append(bare_client_on_node(source.url, height, digests))
        t_first_at, h_first = first
        raw_s = statistics.median(r[0] for r in raw_runs)
        apart_s = statistics.median(r[0] for r in apart_runs)
        apart_httpx_s = statistics.median(r[0] for r in apart_httpx_runs)
        durable_s = statistics.median(r[0] for r in durable_runs)
        bare_s = statistics.median(r[0] for r in bare_runs)
        raw_model_s = statistics.median(r[0] for r in raw_model_runs)
        raw_model_apart_s = statistics.median(r[0] for r in raw_model_apart_runs)
        alone_s = statistics.median(r[0] for r in alone_runs)
        before_s = statistics.median(r[0] for r in before_runs)
        # the part after the fresh node first answered (it may have synced some blocks before)
        pages_after = sum(map(len, pages)) * (height - h_first) / max(height, 1)
        blobs_after = sum(len(b) for b, h in zip(blobs, heights, strict=True) if h > h_first)
        bytes_after = pages_after + blobs_after
        sync_s = done - t_first_at
        whole_s = done - launched
        raw_per_byte = raw_s / total_bytes
        synced = sum(int(p["blocks"]) for p in passes)
        pass_bytes = sum(map(len, pages)) * synced / max(height, 1) + sum(
            int(p["blob_bytes"]) for p in passes
        )
        t_synced = sum(int(p["blocks"]) for p in t_passes)
        t_pass_bytes = sum(map(len, pages)) * t_synced / max(height, 1) + sum(
            int(p["blob_bytes"]) for p in t_passes
        )
        t_sync_s = t_done - t_first[0]
        rows = [
            ("verifying node: sync (first answer -> head)", height - h_first, bytes_after, sync_s),
            ("verifying node: sync incl. process start", height, total_bytes, whole_s),
            (
                "- its transport (pages + blobs held)",
                synced,
                pass_bytes,
                sum(float(p["transport_s"]) for p in passes),
            ),
            (
                "- its re-verification (rules + deep checks)",
                synced,
                pass_bytes,
                sum(float(p["verify_s"]) for p in passes),
            ),
            ("bcfl transport alone (the node's fetch code)", height, total_bytes, alone_s),
            ("- the fetch path before issue 21 (manifest first)", height, total_bytes, before_s),
            (
                "raw loopback HTTP (uvicorn; bodies read 1 MiB at a time)",
                height,
                total_bytes,
                raw_s,
            ),
            ("- raw, the server in a process of its own", height, total_bytes, apart_s),
            (
                "- raw (own process), read through httpx's own transport",
                height,
                total_bytes,
                apart_httpx_s,
            ),
            (
                "- raw (own process), each blob hashed, written, fsynced",
                height,
                total_bytes,
                durable_s,
            ),
            ("- a bare httpx client on the serving node's routes", height, total_bytes, bare_s),
        ]
        for what, blocks, nbytes, seconds in rows:
            report.add(
                what=what,
                blocks=blocks,
                MB=nbytes / MB,
                seconds=seconds,
                **{
                    "blocks/s": blocks / seconds if seconds > 0 else None,
                    "MB/s": nbytes / MB / seconds if seconds > 0 else None,
                    "x raw time": seconds / (raw_per_byte * nbytes) if nbytes else None,
                },
            )
        # a member that only trains: its bytes (pages + models) against their own raw transfer
        raw_model_per_byte = raw_model_s / model_bytes
        model_rows = [
            (
                "trainer-only member: sync (first answer -> head)",
                height - t_first[1],
                model_bytes * (height - t_first[1]) / max(height, 1),
                t_sync_s,
            ),
            (
                "trainer-only member: sync incl. process start",
                height,
                model_bytes,
                t_done - t_launched,
            ),
            (
                "- its transport (pages + models held)",
                t_synced,
                t_pass_bytes,
                sum(float(p["transport_s"]) for p in t_passes),
            ),
            (
                "- its rules (certificates, no deep checks)",
                t_synced,
                t_pass_bytes,
                sum(float(p["verify_s"]) for p in t_passes),
            ),
            ("raw loopback HTTP of pages + models", height, model_bytes, raw_model_s),
            ("- raw, the server in a process of its own", height, model_bytes, raw_model_apart_s),
        ]
        for what, blocks, nbytes, seconds in model_rows:
            report.add(
                what=what,
                blocks=blocks,
                MB=nbytes / MB,
                seconds=seconds,
                **{
                    "blocks/s": blocks / seconds if seconds > 0 else None,
                    "MB/s": nbytes / MB / seconds if seconds > 0 else None,
                    "x raw time": seconds / (raw_model_per_byte * nbytes) if nbytes else None,
                },
            )
        report.notes += [
            f"{len(blobs)} update blobs ({sum(map(len, blobs)) / MB:.1f} MB) and "
            f"{len(pages)} block pages ({sum(map(len, pages)) / MB:.2f} MB)",
            f"the verifying node first answered at height {h_first}, "
            f"{t_first_at - launched:.1f} s after launch; the trainer-only member at height "
            f"{t_first[1]}, {t_first[0] - t_launched:.1f} s after launch",
            f"{len(models)} models ({sum(map(len, models)) / MB:.1f} MB) for the trainer-only "
            "member, whose rows are against the raw transfer of its own bytes (pages + models; "
            f"median of {repeats}, alternating with the others: "
            f"{', '.join(f'{x:.3f}' for x, _ in raw_model_runs)} s)",
            "x raw time = seconds / the raw transfer's seconds for the same bytes",
            f"transport alone, the path before and raw: medians of {repeats} runs each, "
            "alternating (wall s: "
            f"alone {', '.join(f'{x:.3f}' for x, _ in alone_runs)}; "
            f"before {', '.join(f'{x:.3f}' for x, _ in before_runs)}; "
            f"raw {', '.join(f'{x:.3f}' for x, _ in raw_runs)})",
            "CPU s of the bench process (the fetching client; raw: its client and server "
            "thread), medians: "
            f"alone {statistics.median(c for _, c in alone_runs):.3f}, "
            f"before {statistics.median(c for _, c in before_runs):.3f}, "
            f"raw {statistics.median(c for _, c in raw_runs):.3f}",
            f"transport alone at {raw_s / alone_s:.2f} of raw (wall), "
            f"the path before at {raw_s / before_s:.2f}; against the raw server in a process "
            f"of its own ({', '.join(f'{x:.3f}' for x, _ in apart_runs)} s; client CPU "
            f"{statistics.median(c for _, c in apart_runs):.3f} s): alone at "
            f"{apart_s / alone_s:.2f}, before at {apart_s / before_s:.2f}",
            "a bare httpx client on the serving node's routes (the node's serving side "
            f"alone): {', '.join(f'{x:.3f}' for x, _ in bare_runs)} s, client CPU "
            f"{statistics.median(c for _, c in bare_runs):.3f} s",
            "transport and re-verification overlap (a page's blobs download while its blocks "
            "are verified) and are read from the fresh node's 'caught up' log lines: transport "
            "= a pass's start -> its last page or update blob held (chunk- and hash-checked, "
            "fsynced); re-verification = time in ChainState.apply (every rule, contract "
            "verdicts and aggregates recomputed)",
            *(
                [
                    "verifying node, first answer -> head, pairs in one run, alternating: "
                    + "; ".join(
                        f"{arm} {', '.join(f'{x:.3f}' for x in xs)} s" for arm, xs in paired.items()
                    ),
                    "the same pairs' catch-up passes (pass / transport / re-verification / "
                    "waiting on blobs, s): "
                    + "; ".join(
                        f"{arm} " + ", ".join(" / ".join(f"{x:.2f}" for x in one) for one in runs)
                        for arm, runs in split.items()
                    ),
                ]
                if before
                else []
            ),
            "trainer-only members, first answer -> head, s (rows: the median run): "
            + "; ".join(
                f"{arm} {', '.join(f'{r[2] - r[1][0]:.3f}' for r in runs)}"
                for arm, runs in trained.items()
            )
            + f"; against raw {raw_model_s:.3f} s (bench thread), {raw_model_apart_s:.3f} s "
            f"(own process): this code at {raw_model_s / (t_done - t_first[0]):.2f} and "
            f"{raw_model_apart_s / (t_done - t_first[0]):.2f} of raw",
            f"trainer-only member's catch-up passes: {len(t_passes)}; its rules waited on "
            f"models {sum(float(p['blob_wait_s']) for p in t_passes):.3f} s; appends took "
            f"{sum(float(p['append_s']) for p in t_passes):.3f} s; the pass took "
            f"{sum(float(p['seconds']) for p in t_passes):.3f} s",
            f"verifying node's catch-up passes: {len(passes)}; verification waited on blobs "
            f"{sum(float(p['blob_wait_s']) for p in passes):.3f} s; appends took "
            f"{sum(float(p['append_s']) for p in passes):.3f} s; the pass took "
            f"{sum(float(p['seconds']) for p in passes):.3f} s",
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report


def caught_up(path: Path | None) -> list[dict[str, Any]]:
    """The fresh node's ``caught up`` log lines (one per catch-up pass that appended blocks)."""
    if path is None:
        return []
    return [e for e in parse_log(path) if e["msg"] == "caught up" and "transport_s" in e]


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", choices=list(MODELS), default="1m")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also catch up verifying nodes running bcfl_cli at REV, alternating with this code",
    )
    parser.add_argument("--pairs", type=int, default=2, help="pairs for --before")
    parser.add_argument(
        "--trainers",
        type=int,
        default=3,
        help="trainer-only catch-ups (each arm, with --before), the median reported",
    )
    parser.add_argument("--raw-server", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_server:
        serve_raw(Path(args.raw_server[0]), int(args.raw_server[1]))
        return 0
    rounds = min(args.rounds, 1) if args.quick else args.rounds
    report = run(
        rounds,
        args.model,
        quiet=args.json,
        repeats=1 if args.quick else 5,
        before=args.before,
        pairs=args.pairs,
        trainers=1 if args.quick else max(1, args.trainers),
    )
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
