"""The serving side of a catch-up: a node's ``GET /v1/blobs/{hash}`` against a bare app.

Usage::

    .venv/bin/python bench/serve_bench.py [--blobs 20] [--mb 4.5] [--repeats 5] [--before REV]

The same update-sized blobs (random bytes) are served, each arm by a process of its own on
127.0.0.1, and downloaded whole, one after the other, by one reused bare httpx client streaming
them (no signature, no checks, nothing written), arms alternating:

- *raw*: a bare Starlette app on uvicorn's defaults, serving the bytes from memory in 1 MiB
  pieces (``sync_bench.raw_app``): the transport's limit on this machine;
- *node*: the node's own blob route (``BlobRoutes`` over a ``BlobStore``, behind the node's
  ASGI stack: read-timeout, signature layer with its rate limits, traffic counting) on the
  node's uvicorn settings (``server.http_config``: the guarded httptools protocol) and event
  loop (uvloop, as ``bcfl node`` runs);
- *before* (``--before REV``): the same node stack with ``bcfl_cli`` as of REV.

Without the node's consensus, sync and keeper tasks: the serving path alone, which is what
``sync_bench``'s bare-client arm measures on a live node. Reported per arm: wall seconds
and CPU seconds of the client and of the server process (``/proc/PID/stat``), medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bcfl_cli.demo.launcher import free_ports  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve_node(root: Path, port: int) -> None:
    """``--serve node DIR PORT``: the node's blob routes over DIR's blob store, as a node serves."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from bcfl_cli.cli.node_cmd import new_event_loop
    from bcfl_cli.node.app import _ReadTimeout
    from bcfl_cli.node.auth import SignatureAuth
    from bcfl_cli.node.blob_routes import BlobRoutes
    from bcfl_cli.node.server import http_config
    from bcfl_cli.node.traffic import BlobTraffic
    from bcfl_cli.store.blobs import BlobStore

    routes = BlobRoutes(BlobStore(root), max_blob_bytes=1 << 30, traffic=BlobTraffic())
    app = Starlette(routes=[Mount("/v1", routes=routes.routes)])
    signed = SignatureAuth(app, is_member=lambda _did: False, authorities=[f"127.0.0.1:{port}"])
    server = uvicorn.Server(http_config(_ReadTimeout(signed, 30.0), "127.0.0.1", port))
    new_event_loop().run_until_complete(server.serve())  # the node's loop: uvloop


def serve_raw(root: Path, port: int) -> None:
    """``--serve raw DIR PORT``: the bare app over DIR's blobs, held in memory."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    blobs = {p.name: p.read_bytes() for p in root.glob("??/*") if p.is_file()}

    def blob(request: Request) -> StreamingResponse:
        data = blobs[request.path_params["hash"]]

        def chunks() -> object:
            view = memoryview(data)
            for start in range(0, len(data), 1 << 20):
                yield bytes(view[start : start + (1 << 20)])

        return StreamingResponse(chunks(), media_type="application/octet-stream")  # type: ignore[arg-type]

    app = Starlette(routes=[Route("/v1/blobs/{hash}", blob)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class Served:
    """One arm's server process; ``cpu()`` is its CPU seconds so far."""

    def __init__(self, arm: str, root: Path, pythonpath: Path | None = None) -> None:
        self.port = free_ports(1)[0]
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{ROOT}"
        kind = "raw" if arm == "raw" else "node"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, str(root), str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_up(self, probe: str) -> None:
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                httpx.head(f"http://127.0.0.1:{self.port}/v1/blobs/{probe}", timeout=2.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("a server process did not start")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def download(port: int, digests: list[str], size: int) -> tuple[float, float]:
    """Wall and client CPU seconds to stream every blob once with one reused client."""
    start, cpu = time.perf_counter(), time.process_time()
    got = 0
    with httpx.Client(timeout=60.0) as client:
        for digest in digests:
            url = f"http://127.0.0.1:{port}/v1/blobs/{digest}"
            with client.stream("GET", url) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    got += len(chunk)
    if got != size:
        raise RuntimeError(f"got {got} bytes, expected {size}")
    return time.perf_counter() - start, time.process_time() - cpu


def run(
    blobs: int, mb: float, repeats: int, before: str | None, *, quiet: bool = False
) -> dict[str, list[tuple[float, ...]]]:
    from bcfl_cli.store.blobs import BlobStore

    root = Path(tempfile.mkdtemp(prefix="bcfl-bench-serve-"))
    try:
        store = BlobStore(root / "store")
        digests = [store.put(os.urandom(int(mb * 1e6))) for _ in range(blobs)]
        total = sum(store.size(d) for d in digests)
        arms: dict[str, Path | None] = {"raw": None, "node": None}
        if before:
            from bench.sync_bench import code_at

            arms[f"at {before}"] = code_at(before, root / "before-code")
        servers = {arm: Served(arm, root / "store", path) for arm, path in arms.items()}
        try:
            for server in servers.values():
                server.wait_up(digests[0])
            runs: dict[str, list[tuple[float, ...]]] = {arm: [] for arm in arms}
            for _ in range(repeats):
                for arm, server in servers.items():
                    cpu = server.cpu()
                    wall, client_cpu = download(server.port, digests, total)
                    runs[arm].append((wall, client_cpu, server.cpu() - cpu))
        finally:
            for server in servers.values():
                server.stop()
        if not quiet:
            print(f"{blobs} blobs, {total / 1e6:.1f} MB, medians of {repeats}, alternating")
            print("arm | wall s | client CPU s | server CPU s | wall runs")
            for arm, xs in runs.items():
                med = [statistics.median(x[k] for x in xs) for k in range(3)]
                print(
                    f"{arm} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | "
                    + ", ".join(f"{x[0]:.3f}" for x in xs)
                )
        return runs
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blobs", type=int, default=20)
    parser.add_argument("--mb", type=float, default=4.5, help="each blob's size, MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", help="also serve with bcfl_cli as of this revision")
    parser.add_argument("--quick", action="store_true", help="4 blobs, 2 repeats")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        kind, where, port = args.serve
        (serve_raw if kind == "raw" else serve_node)(Path(where), int(port))
        return 0
    blobs, repeats = (4, 2) if args.quick else (args.blobs, args.repeats)
    runs = run(blobs, args.mb, repeats, args.before, quiet=args.json)
    if args.json:
        keys = ("wall_s", "client_cpu_s", "server_cpu_s")
        doc = {arm: [dict(zip(keys, x, strict=True)) for x in xs] for arm, xs in runs.items()}
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
