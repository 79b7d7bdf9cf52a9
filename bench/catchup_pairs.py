"""A verifying node's catch-up, before/after pairs on one chain trained once (issue 21, item 3).

Usage::

    .venv/bin/python bench/catchup_pairs.py prepare DIR [--model 10m] [--rounds 5]
    .venv/bin/python bench/catchup_pairs.py run DIR [--before REV] [--pairs 3] [--raw]
        [--trainer] [--profile OUT]

``prepare`` trains ``--rounds`` rounds with four nodes (as ``sync_bench.py`` does), stops them
and keeps their homes in DIR, with a pristine copy of one spare member's home (the genesis
only). ``run`` starts the first founder's node alone on that chain, then, as many times as
``--pairs`` asks, alternating, a fresh ``--verify-updates`` node from the pristine home, with
this tree's ``bcfl_cli`` and (``--before``) with REV's (``git archive``): each catch-up timed
from its first status answer to the head, with the fresh node's CPU seconds at the head
(``/proc``, its start included) and the serving node's CPU during the catch-up, and its
``caught up`` line. ``--raw``: the raw loopback transfer of the same bytes, the server in a
process of its own (``sync_bench.raw_transfer``), once before each pair. ``--profile OUT``: the
first fresh node of this tree runs under ``py-spy record`` (every thread, raw stacks to OUT).
A chain prepared once serves any number of runs; ``sync_bench.py`` stays the report's bench.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bcfl_cli.demo.launcher import bcfl_command  # noqa: E402
from bench.common import PASSPHRASE, PLAN, BenchConsortium, parse_log  # noqa: E402
from bench.sync_bench import MODELS, code_at, fetch_chain, raw_transfer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def _child(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def prepare(root: Path, model: str, rounds: int) -> None:
    root.mkdir(parents=True, exist_ok=False)
    with BenchConsortium(root / "c", MODELS[model], PLAN, 4, rounds, spare=1) as consortium:
        spare = consortium.spares[0]
        shutil.copytree(spare.home.root, root / "pristine")
        consortium.start_founders()
        consortium.watch_rounds(timeout=120.0 + 60.0 * rounds)
        for node in consortium.nodes[1:]:
            consortium.stop(node.name)
        time.sleep(1.0)
        source = consortium.nodes[0]
        status = consortium.node_status(source)
        assert status is not None
        consortium.stop(source.name)
        meta = {
            "source_home": str(source.home.root),
            "source_port": source.port,
            "spare_home": str(spare.home.root),
            "spare_port": spare.port,
            "height": int(status["height"]),
            "model": model,
            "rounds": rounds,
        }
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


def node_env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BCFL_PASSPHRASE=PASSPHRASE,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(code if code is not None else ROOT),
    )
    env.pop("BCFL_HOME", None)
    return env


def node_args(home: str, port: int, peers: list[str], extra: list[str]) -> list[str]:
    args = [*bcfl_command(), "node", "--home", home, "--listen", f"127.0.0.1:{port}"]
    args += ["--empty-blocks", *[a for p in peers for a in ("--peer", p)], *extra]
    return args


def status(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{url}/v1/status", timeout=2.0)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _reap(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait for a process told to stop; killed if it has not after ``timeout`` seconds."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def catch_up(
    meta: dict[str, Any],
    root: Path,
    code: Path | None,
    source_pid: int,
    *,
    verify: bool,
    profile: Path | None = None,
) -> dict[str, Any]:
    home = Path(meta["spare_home"])
    shutil.rmtree(home)
    shutil.copytree(root / "pristine", home)
    url = f"http://127.0.0.1:{meta['spare_port']}"
    source_url = f"http://127.0.0.1:{meta['source_port']}"
    extra = ["--verify-updates"] if verify else []
    args = node_args(str(home), meta["spare_port"], [source_url], extra)
    if profile is not None:
        spy = Path(sys.executable).parent / "py-spy"
        args = [str(spy), "record", "-r", "200", "--threads", "-f", "raw", "-o", str(profile)]
        args += ["--", *node_args(str(home), meta["spare_port"], [source_url], extra)]
    log_path = root / "fresh.log"
    source_cpu = cpu_of(source_pid)
    launched = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, env=node_env(code), stdout=out, stderr=subprocess.STDOUT)
    first: float | None = None
    first_h = 0
    node_pid = proc.pid
    try:
        deadline = launched + 300.0
        while True:
            now = time.perf_counter()
            if now > deadline or proc.poll() is not None:
                raise RuntimeError(f"the fresh node did not catch up: {log_path}")
            st = status(url)
            if st is not None:
                if first is None:
                    first, first_h = now, int(st["height"])
                    first_cpu = cpu_of(node_pid if profile is None else _child(proc.pid))
                if int(st["height"]) >= meta["height"]:
                    break
            time.sleep(0.02)
        done = time.perf_counter()
        if profile is not None:  # the node is py-spy's child
            node_pid = _child(proc.pid)
        node_cpu = cpu_of(node_pid)
        source_cpu = cpu_of(source_pid) - source_cpu
        lines: list[dict[str, Any]] = []
        for _ in range(50):
            lines = [e for e in parse_log(log_path) if e["msg"] == "caught up"]
            if lines:
                break
            time.sleep(0.1)
    finally:
        if profile is not None and node_pid != proc.pid:
            os.kill(node_pid, 15)  # py-spy writes its profile once its child exits
        else:
            proc.terminate()
        _reap(proc, 60)
    assert first is not None
    return {
        "sync_s": done - first,
        "whole_s": done - launched,
        "first_height": first_h,
        "node_cpu": node_cpu,
        "sync_cpu": node_cpu - first_cpu,
        "source_cpu": source_cpu,
        "passes": lines,
        "load": os.getloadavg()[0],
    }


def chain_bytes(meta: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
    from bcfl_cli.home import Home
    from bcfl_cli.store.blobs import BlobStore

    source_url = f"http://127.0.0.1:{meta['source_port']}"
    store = BlobStore(Home.resolve(Path(meta["source_home"])).blob_dir)
    pages, blobs, _, _ = fetch_chain(source_url, store, meta["height"])
    return pages, blobs


def run(
    root: Path,
    before: str | None,
    pairs: int,
    *,
    raw: bool,
    trainer: bool,
    profile: Path | None,
    only_this: bool,
) -> None:
    meta = json.loads((root / "meta.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bcfl-catchup-pairs-"))
    arms: list[tuple[str, Path | None]] = [("this", None)]
    if before:
        arms.append((f"at {before}", code_at(before, work / "before")))
    source_url = f"http://127.0.0.1:{meta['source_port']}"
    source = subprocess.Popen(
        node_args(meta["source_home"], meta["source_port"], [], []),
        env=node_env(None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in arms}
    raws: list[tuple[float, float]] = []
    try:
        deadline = time.monotonic() + 120
        while status(source_url) is None:
            if time.monotonic() > deadline or source.poll() is not None:
                raise RuntimeError("the source node did not start")
            time.sleep(0.1)
        pages, blobs = chain_bytes(meta) if raw else ([], [])
        for i in range(pairs):
            if raw:
                raws.append(raw_transfer(pages, blobs, repeats=1, apart=work / f"raw-{i}"))
                shutil.rmtree(work / f"raw-{i}", ignore_errors=True)
                print(f"raw (own process): {raws[-1][0]:.3f} s, client CPU {raws[-1][1]:.3f}")
            order = arms if i % 2 == 0 or only_this else arms[::-1]
            for name, code in order:
                prof = profile if (profile is not None and name == "this" and i == 0) else None
                got = catch_up(meta, root, code, source.pid, verify=not trainer, profile=prof)
                results[name].append(got)
                p = got["passes"][0] if got["passes"] else {}
                print(
                    f"pair {i + 1} {name}: {got['sync_s']:.3f} s (from h{got['first_height']}; "
                    f"whole {got['whole_s']:.2f} s), node CPU {got['node_cpu']:.2f} s "
                    f"({got['sync_cpu']:.2f} after the first answer), serving "
                    f"CPU {got['source_cpu']:.2f} s, load {got['load']:.1f}; pass "
                    f"{p.get('seconds')} transport {p.get('transport_s')} verify "
                    f"{p.get('verify_s')} wait {p.get('blob_wait_s')} append {p.get('append_s')}",
                    flush=True,
                )
    finally:
        source.terminate()
        _reap(source, 30)
        shutil.rmtree(work, ignore_errors=True)
    for name, got in results.items():
        xs = [g["sync_s"] for g in got]
        cpu = [g["sync_cpu"] for g in got]
        print(
            f"{name}: median {statistics.median(xs):.3f} s ({', '.join(f'{x:.3f}' for x in xs)}),"
            f" node CPU first answer -> head, median {statistics.median(cpu):.2f} s"
        )
    if raws:
        raw_s = statistics.median(r[0] for r in raws)
        print(f"raw own process: median {raw_s:.3f} s")
        for name, got in results.items():
            print(f"{name}: {raw_s / statistics.median(g['sync_s'] for g in got):.2f} of raw")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--model", choices=list(MODELS), default="10m")
    p.add_argument("--rounds", type=int, default=5)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--before")
    r.add_argument("--pairs", type=int, default=3)
    r.add_argument("--raw", action="store_true")
    r.add_argument("--trainer", action="store_true", help="trainer-only members instead")
    r.add_argument("--profile", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.model, args.rounds)
    else:
        run(
            args.dir,
            args.before,
            args.pairs,
            raw=args.raw,
            trainer=args.trainer,
            profile=args.profile,
            only_this=False,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
