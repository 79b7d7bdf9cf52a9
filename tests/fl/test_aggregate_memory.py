"""Aggregating never holds the updates whole: peak memory stays below twice one update.

Four updates of ~34 MB each are aggregated from blob files, in a fresh process, under the
rules with the most passes and the most state (Krum's pairwise distances, cosine_trajectory's
three passes against the genesis model), and the peak resident memory above the process's
baseline is read from the kernel (VmHWM after resetting it). Before streaming (issue 19),
``aggregate`` widened every update to float64 at once: 4 x 68 MB of float64 alone, plus the
decoded updates and the encoded result, several times the bound asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from bcfl_cli.fl.stored_aggregate import keep_as_blob
from bcfl_cli.fl.tensorwriter import SafetensorsWriter, TensorSpec
from bcfl_cli.store.blobs import BlobStore

SHAPES = {
    "embed": (2048, 2048),  # one tensor larger than everything else: it is read in slices
    "w1": (1024, 2048),
    "w2": (2048, 1024),
    "b": (2048,),
    "out": (10, 2048),
}
UPDATES = 4

_CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from bcfl_cli.fl.stored_aggregate import RoundBlobs, aggregate_file
from bcfl_cli.protocol.spec import AggregationSpec
from bcfl_cli.store.blobs import BlobStore

store = BlobStore(Path(sys.argv[1]))
base, initial, updates = json.loads(sys.argv[2])
rules = [
    AggregationSpec(rule="fedavg"),
    AggregationSpec(rule="krum", krum_f=1, krum_m=2),
    AggregationSpec(rule="cosine_trajectory"),
]

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)

Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
baseline = status("VmRSS")
started = time.perf_counter()
hashes = []
for spec in rules:
    inputs = RoundBlobs(base, [(f"{i:064x}", b, 10 + i) for i, b in enumerate(updates)], initial)
    with aggregate_file(store, spec, inputs, max_bytes=1 << 30) as (result, _):
        hashes.append(result.model_hash)
print(json.dumps({
    "growth": status("VmHWM") - baseline,
    "seconds": time.perf_counter() - started,
    "hashes": hashes,
}))
"""


def _write_blob(store: BlobStore, seed: int, scale: float) -> tuple[str, int]:
    """A random float32 model as a blob, written tensor by tensor (never whole in memory)."""
    g = torch.Generator().manual_seed(seed)
    layout = {name: TensorSpec(torch.float32, shape) for name, shape in SHAPES.items()}
    fd, name = tempfile.mkstemp(dir=store.root / "tmp")
    with os.fdopen(fd, "wb") as out:
        writer = SafetensorsWriter(out, layout)
        for tensor in writer.order:
            writer.write(tensor, torch.randn(SHAPES[tensor], generator=g) * scale)
        digest, size = writer.finish()
    keep_as_blob(store, Path(name), digest)
    return digest, size


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset"
)
def test_aggregating_four_updates_stays_below_twice_one_update(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    base, size = _write_blob(store, 1, 1.0)
    initial, _ = _write_blob(store, 2, 1.0)
    updates = [_write_blob(store, 10 + i, 0.01)[0] for i in range(UPDATES)]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store.root), json.dumps([base, initial, updates])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(set(report["hashes"])) == 3
    assert report["growth"] < 2 * size, (
        f"peak RSS grew by {report['growth'] / 2**20:.1f} MiB aggregating {UPDATES} updates "
        f"of {size / 2**20:.1f} MiB (bound: 2 x one update); {report['seconds']:.1f} s"
    )
    print(f"growth {report['growth'] / 2**20:.1f} MiB, {report['seconds']:.1f} s")
