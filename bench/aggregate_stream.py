"""Memory and time of one aggregate from blob files, streamed or whole, per rule (issue 19).

    python bench/aggregate_stream.py --params 25000000 --updates 4 10 \
        [--before /tmp/bcfl-before] [--rules fedavg krum ...]

Writes a float32 base model, a genesis model and n update blobs (written tensor by tensor,
never whole) into a temporary blob store, then aggregates them in a fresh process per (rule,
n) and reports the peak resident memory above that process's baseline (VmHWM after resetting
it through /proc/self/clear_refs) and the wall time, hashing and writing the model included.
With ``--before DIR`` (a copy of an older ``bcfl_cli``, e.g. ``git archive 4a649b7 bcfl_cli``)
the same runs use that tree's path (decode every blob, ``aggregate``, ``model_bytes``, ``put``)
and the table shows both, with whether the two model hashes agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ["fedavg", "clipped", "median", "trimmed", "krum", "cosine", "cosine_trajectory"]

_CHILD = r"""
import json, sys, time
from pathlib import Path
from bcfl_cli.protocol.spec import AggregationSpec
from bcfl_cli.store.blobs import BlobStore

store = BlobStore(Path(sys.argv[1]))
base, initial, updates = json.loads(sys.argv[2])
spec = AggregationSpec(rule=sys.argv[3], krum_f=1, krum_m=max(1, len(updates) // 2))
limit = 1 << 34
accepted = [(f"{i:064x}", blob, 10 + i) for i, blob in enumerate(updates)]

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

try:
    from bcfl_cli.fl.stored_aggregate import RoundBlobs, aggregate_file
    streaming = True
except ImportError:  # before issue 19: every blob decoded, the model built and encoded whole
    from bcfl_cli.fl.aggregation import UpdateInput, aggregate, rule_needs_initial_model
    from bcfl_cli.fl.tensors import decode_tensors
    streaming = False
import bcfl_cli.fl.aggregation  # every import done before the baseline

def load(digest):
    return decode_tensors(store.get(digest, max_bytes=limit), max_bytes=limit)

Path("/proc/self/clear_refs").write_text("5")
baseline = status("VmRSS")
started = time.perf_counter()
if streaming:
    inputs = RoundBlobs(base, accepted, initial)
    with aggregate_file(store, spec, inputs, max_bytes=limit) as (result, written):
        digest = result.model_hash
else:
    first = None
    if rule_needs_initial_model(spec.rule):
        first = load(initial)
    result = aggregate(spec, load(base), [UpdateInput(t, load(b), n) for t, b, n in accepted],
                       initial_state=first)
    data = result.model_bytes
    digest = store.put(data)
seconds = time.perf_counter() - started
print(json.dumps({"growth": status("VmHWM") - baseline, "seconds": seconds, "hash": digest}))
"""


def shapes_for(params: int) -> dict[str, tuple[int, ...]]:
    """An MLP-like model of about ``params`` parameters: one large matrix, a second half its
    size, a few small tensors (a real model's largest tensor is most of it, too)."""
    width = max(8, int((params / 1.5) ** 0.5))
    return {
        "l0.weight": (width, width),
        "l0.bias": (width,),
        "l1.weight": (width // 2, width),
        "l1.bias": (width // 2,),
        "out.weight": (10, width // 2),
        "out.bias": (10,),
    }


def write_blob(store: object, shapes: dict[str, tuple[int, ...]], seed: int, scale: float) -> str:
    import torch

    from bcfl_cli.fl.stored_aggregate import keep_as_blob
    from bcfl_cli.fl.tensorwriter import SafetensorsWriter, TensorSpec

    g = torch.Generator().manual_seed(seed)
    layout = {name: TensorSpec(torch.float32, shape) for name, shape in shapes.items()}
    fd, name = tempfile.mkstemp(dir=store.root / "tmp")  # type: ignore[attr-defined]
    with os.fdopen(fd, "wb") as out:
        writer = SafetensorsWriter(out, layout)
        for tensor in writer.order:
            writer.write(tensor, torch.randn(shapes[tensor], generator=g) * scale)
        digest, _ = writer.finish()
    keep_as_blob(store, Path(name), digest)  # type: ignore[arg-type]
    return digest


def run(tree: Path, store: Path, ids: list[object], rule: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), json.dumps(ids), rule],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=1800,
        check=False,
    )
    if child.returncode != 0:
        return {"error": child.stderr.strip().splitlines()[-1:]}
    result: dict[str, object] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--updates", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--rules", nargs="+", default=RULES)
    parser.add_argument("--before", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bcfl_cli.store.blobs import BlobStore

    shapes = shapes_for(args.params)
    count = sum(int(__import__("math").prod(s)) for s in shapes.values())
    print(f"model: {count:,} float32 parameters ({count * 4 / 2**20:.0f} MiB an update)")
    print("| rule | n | after: peak above idle | after: time | before: peak | before: time |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bcfl-aggbench-") as tmp:
        store = BlobStore(Path(tmp) / "blobs")
        base = write_blob(store, shapes, 1, 1.0)
        initial = write_blob(store, shapes, 2, 1.0)
        made: list[str] = []
        for n in sorted(args.updates):
            while len(made) < n:
                made.append(write_blob(store, shapes, 100 + len(made), 0.01))
            ids = [base, initial, made[:n]]
            for rule in args.rules:
                after = run(ROOT, store.root, ids, rule)
                before = run(args.before, store.root, ids, rule) if args.before else {}
                cells = [rule, str(n), *_cells(after), *_cells(before)]
                if before and "hash" in before and before.get("hash") != after.get("hash"):
                    cells[0] += " (HASHES DIFFER)"
                print("| " + " | ".join(cells) + " |", flush=True)


def _cells(result: dict[str, object]) -> list[str]:
    if not result:
        return ["-", "-"]
    if "error" in result:
        return [f"error {result['error']}", "-"]
    growth = float(result["growth"])  # type: ignore[arg-type]
    seconds = float(result["seconds"])  # type: ignore[arg-type]
    return [f"{growth / 2**20:,.0f} MiB", f"{seconds:.1f} s"]


if __name__ == "__main__":
    main()
