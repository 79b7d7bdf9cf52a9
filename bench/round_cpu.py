"""The CPU a round of ``bench/large_model.py`` cannot do without, piece by piece (issue 19).

    .venv/bin/python bench/round_cpu.py --params 10M 25M [--members 4] [--validators 1] [--json]

``bench/large_model.py`` reports a round against its floor (one member's training, one
loopback transfer, one hashing, one aggregation pass) and, since session 7, the CPU seconds
the nodes spent a round (``node CPU s/rnd``). This bench says where those seconds must go: each
piece of work that the round's set-up implies, measured alone on one thread (``process_time``),
times how often a round does it with N members that all validate and T of them training:

- training (the floor's ``train_local``): T; the update written into the store: T;
- a blob received by a peer (its ``Content-Digest``, the running hash that names it, the write
  in 4 MiB appends): T x (N - 1); a push reads and digests each chunk once: T;
- the contract's summary of an update (the exact sum of squares): T x N, every node checks
  every update (a receiver as the bytes arrive, the trainer from its own push);
- the aggregate recomputed by every node (the inputs re-checked, then the streamed pass): N.
  Since session 8 a node re-checks an input it stored under a SHA-256 it computed by the
  store's record (file identity and XXH3-128, store/content_record.py); the row of the
  inputs SHA-256'd again is what each node did before, and what it does for a blob it did
  not store itself (the genesis model, after a restart).

Their sum over the cores is the shortest round this work allows on this machine, whatever the
orchestration; HTTP, signatures and consensus are the rest of ``node CPU s/rnd``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.fl.allocator import prefer_huge_pages  # noqa: E402

# Before torch loads: each piece timed as a `bcfl` node runs it (huge pages: fl/allocator.py).
prefer_huge_pages()

import torch  # noqa: E402

from bcfl_cli.fl.models import initial_state  # noqa: E402
from bcfl_cli.fl.stored_aggregate import RoundBlobs, aggregate_file  # noqa: E402
from bcfl_cli.fl.tensors import encode_tensors  # noqa: E402
from bcfl_cli.fl.training import train_local  # noqa: E402
from bcfl_cli.fl.update_summary import StreamedSummary  # noqa: E402
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules  # noqa: E402
from bcfl_cli.store.blobs import BlobStore  # noqa: E402
from bcfl_cli.training.update import store_update  # noqa: E402
from bench.common import PLAN, load_members  # noqa: E402
from bench.large_model import label, mlp, parse_params, width_for  # noqa: E402

CHUNK = 4 << 20  # the push's chunk (client/blobs.py)


def cpu_s(work: Callable[[], object], repeat: int = 2) -> float:
    """The least CPU seconds (``process_time``) of ``repeat`` runs of ``work``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def pieces(params: int, members: int, trainers: int, scratch: Path) -> list[dict[str, Any]]:
    """Every piece of a round's work at ``params``: CPU seconds once, times a round."""
    spec = mlp(width_for(params))
    data = max(load_members(members)[:trainers], key=lambda d: len(d.labels))
    state = initial_state(spec)
    trained = train_local(spec, PLAN, state, data, seed=1)
    blobs = BlobStore(scratch)
    base = blobs.put(encode_tensors(state))
    rules = ContractRules(max_blob_bytes=1 << 40)
    updates = [
        store_update(blobs, {k: v * (1 + i / 7) for k, v in trained.delta.items()}, rules).sha256
        for i in range(trainers)
    ]
    payload = blobs.path_for(updates[0]).read_bytes()

    def receive() -> None:  # Content-Digest, the running hash, the append (blob_routes.py)
        running = hashlib.sha256()
        part = scratch / "part"
        for at in range(0, len(payload), CHUNK):
            chunk = payload[at : at + CHUNK]
            hashlib.sha256(chunk).digest()
            with open(part, "ab") as out:
                out.write(chunk)
            running.update(chunk)
        part.unlink()

    def push_read() -> None:  # each chunk read from the store and digested once for all peers
        with open(blobs.path_for(updates[0]), "rb") as source:
            while chunk := source.read(CHUNK):
                hashlib.sha256(chunk).digest()

    def summary() -> None:
        summed = StreamedSummary(len(payload))
        for at in range(0, len(payload), CHUNK):
            summed.feed(memoryview(payload)[at : at + CHUNK])
        summed.result()

    inputs = RoundBlobs(
        base,
        [(hashlib.sha256(f"u{i}".encode()).hexdigest(), u, 100 + i) for i, u in enumerate(updates)],
    )

    def aggregate() -> None:
        with aggregate_file(blobs, AggregationSpec(), inputs, max_bytes=1 << 40):
            pass

    def rehash() -> None:
        for digest in (base, *updates):
            with open(blobs.path_for(digest), "rb") as source:
                hashlib.file_digest(source, "sha256")

    def recheck() -> None:  # the store's record: file identity, then XXH3-128 of every byte
        for digest in (base, *updates):
            fd = os.open(blobs.path_for(digest), os.O_RDONLY)
            try:
                assert blobs.unchanged(digest, fd) is True
            finally:
                os.close(fd)

    def write_update() -> None:
        store_update(blobs, trained.delta, rules, with_norm=False)

    rows = [
        ("training (the floor's train_local)", trainers, 1),
        ("update written into the store", trainers, 2),
        ("push: chunks read and digested once", trainers, 3),
        ("blob received (digest, running hash, append)", trainers * (members - 1), 4),
        ("contract summary of an update", trainers * members, 5),
        ("aggregate recomputed (inputs re-checked + pass)", members, 6),
        ("  the inputs SHA-256'd again (each node before session 8)", members, 7),
        ("  of it: the inputs re-checked from the store's record", members, 8),
    ]
    works: dict[int, Callable[[], object]] = {
        1: lambda: train_local(spec, PLAN, state, data, seed=1),
        2: write_update,
        3: push_read,
        4: receive,
        5: summary,
        6: aggregate,
        7: rehash,
        8: recheck,
    }
    out = []
    for name, times, key in rows:
        once = cpu_s(works[key], 1 if key == 1 else 2)
        out.append(
            {
                "params": label(params),
                "work": name,
                "a round": times,
                "CPU s once": once,
                "CPU s a round": once * times,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", nargs="*", default=["10M", "25M"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--validators", type=int, default=1, help="nodes that only validate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the nodes train (OMP_NUM_THREADS=1)
    cores = os.cpu_count() or 1
    trainers = max(1, args.members - args.validators)
    rows: list[dict[str, Any]] = []
    for text in args.params:
        scratch = Path(tempfile.mkdtemp(prefix="bcfl-round-cpu-"))
        try:
            found = pieces(parse_params(text), args.members, trainers, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        total = sum(r["CPU s a round"] for r in found if not r["work"].startswith("  "))
        rows += found
        rows.append(
            {
                "params": label(parse_params(text)),
                "work": f"sum; over {cores} cores",
                "CPU s a round": total,
                "CPU s once": total / cores,
            }
        )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "round_cpu",
                    "members": args.members,
                    "trainers": trainers,
                    "cores": cores,
                    "rows": rows,
                },
                indent=1,
            )
        )
    else:
        print("| params | work | a round | CPU s once | CPU s a round |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['params']} | {r['work']} | {r.get('a round', '')} | "
                f"{r['CPU s once']:.3f} | {r['CPU s a round']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
