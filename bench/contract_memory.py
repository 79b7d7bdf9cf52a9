"""Peak memory of the contract checking one update: streamed from its file vs read whole.

Usage::

    .venv/bin/python bench/contract_memory.py [--sizes 64,440] [--modes whole,mmap,stream] [--json]

For each size (MB of float32 update) an update shaped like a transformer's (one embedding of a
fifth of the parameters, then 768 x 3072 matrices and their biases) is written to a temporary
file, a tensor at a time. Each mode then checks it in a fresh process, after a warm-up check of
a small update (so imports and the streamed check's fixed working set, a few pieces of 65,536
values, are in the baseline), and reports the growth of the peak RSS (``ru_maxrss``) above
that baseline:

- ``whole``: what ``FLChecks.check_update`` did before issue 19: ``blobs.get`` (the bytes),
  SHA-256, the layout check, ``decode_tensors`` (every tensor), the finite check, ``l2_norm``;
- ``mmap``: the same values read through ``safetensors.safe_open`` (a memory map), a tensor at
  a time: the alternative ``fl/tensorfile.py`` did not take (touched pages count in RSS);
- ``stream``: today's ``contract.check_update`` on the file's path (``fl/tensorfile.py``).

tests/fl/test_contract_memory.py runs the ``stream`` mode at 64 MB and bounds its peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1_000_000
HIDDEN, FFN = 768, 3072


def shapes_for(size_mb: float) -> dict[str, list[int]]:
    """Tensor shapes whose float32 bytes add up to about ``size_mb`` MB."""
    params = int(size_mb * MB / 4)
    embedding = max(params // 5 // HIDDEN, 1)
    shapes: dict[str, list[int]] = {"embeddings.weight": [embedding, HIDDEN]}
    left = params - embedding * HIDDEN
    index = 0
    while left >= HIDDEN * FFN + FFN:
        shapes[f"layer.{index:03d}.weight"] = [FFN, HIDDEN]
        shapes[f"layer.{index:03d}.bias"] = [FFN]
        left -= HIDDEN * FFN + FFN
        index += 1
    if left > 0:
        shapes["tail.weight"] = [left]
    return shapes


def write_update(path: Path, size_mb: float, *, scale: float = 1e-5) -> dict[str, Any]:
    """A safetensors update written a tensor at a time; returns its hash, size and layout."""
    import numpy as np

    shapes = shapes_for(size_mb)
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(shapes):
        length = math.prod(shapes[name]) * 4
        header[name] = {
            "dtype": "F32",
            "shape": shapes[name],
            "data_offsets": [offset, offset + length],
        }
        offset += length
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    rng = np.random.default_rng(19)
    with path.open("wb") as f:
        for chunk in (struct.pack("<Q", len(text)), text):
            f.write(chunk)
            digest.update(chunk)
        for name in sorted(shapes):
            values = rng.standard_normal(math.prod(shapes[name]), dtype=np.float32) * scale
            data = values.astype("<f4").tobytes()
            f.write(data)
            digest.update(data)
            del values, data
    return {
        "path": str(path),
        "blob": digest.hexdigest(),
        "size": path.stat().st_size,
        "layout": {name: ["F32", shape] for name, shape in shapes.items()},
    }


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def _check(mode: str, update: dict[str, Any]) -> str:
    from bcfl_cli.fl import contract
    from bcfl_cli.fl.contract import RoundContext, UpdateClaim
    from bcfl_cli.protocol.spec import ContractRules

    path = Path(update["path"])
    limit = max(update["size"], 1 << 20)
    rules = ContractRules(max_update_norm=1e6, max_blob_bytes=limit)
    layout = {name: (d, tuple(s)) for name, (d, s) in update["layout"].items()}
    if mode == "stream":
        ctx = RoundContext(frozenset({"a"}), 1, True, "b" * 64)
        claim = UpdateClaim("a", 1, "b" * 64, update["blob"], update["size"], 10)
        verdict = contract.check_update(rules, layout, claim, ctx, path, named_by_hash=False)
        return f"{verdict.reason}: {verdict.detail}"
    import torch

    from bcfl_cli.fl.numerics import l2_norm
    from bcfl_cli.fl.tensors import check_safetensors_layout, decode_tensors

    if mode == "whole":  # FLChecks.check_update and contract.check_blob before issue 19
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == update["blob"]
        assert (
            contract.check_layout(layout, check_safetensors_layout(data, max_bytes=limit)) is None
        )
        delta = decode_tensors(data, max_bytes=limit)
        assert all(bool(torch.isfinite(delta[k]).all()) for k in sorted(delta))
        return f"ok: L2 norm {l2_norm(delta)!r}"
    if mode == "mmap":
        from safetensors import safe_open

        from bcfl_cli.fl.numerics import as_float64, exact_sum

        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            names = sorted(f.keys())

            def squares() -> Any:
                for name in names:
                    values = as_float64(f.get_tensor(name))
                    assert bool(torch.isfinite(torch.from_numpy(values)).all())
                    yield values * values

            return f"ok: L2 norm {math.sqrt(exact_sum(squares()))!r}"
    raise SystemExit(f"unknown mode {mode!r}")


def measure_here(mode: str, update: dict[str, Any], warmup: dict[str, Any]) -> dict[str, Any]:
    """Check ``warmup`` then ``update`` in this process; the growth of the peak RSS."""
    _check(mode, warmup)
    base = _maxrss_mb()
    start = time.perf_counter()
    outcome = _check(mode, update)
    seconds = time.perf_counter() - start
    peak = _maxrss_mb()
    return {
        "mode": mode,
        "update_mb": round(update["size"] / MB, 1),
        "baseline_mb": round(base, 1),
        "peak_above_baseline_mb": round(peak - base, 1),
        "ratio_to_update": round((peak - base) * MB / update["size"], 3),
        "seconds": round(seconds, 2),
        "verdict": outcome[:80],
    }


def measure(mode: str, update: dict[str, Any], warmup: dict[str, Any]) -> dict[str, Any]:
    """``measure_here`` in a fresh interpreter (a peak is a high-water mark: one per process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, json.dumps([update, warmup])],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(
    sizes: list[float], modes: list[str], folder: Path, *, warmup_mb: float = 1.0
) -> list[dict[str, Any]]:
    warmup = write_update(folder / "warmup.safetensors", warmup_mb)
    rows = []
    for size in sizes:
        update = write_update(folder / f"update-{size:g}.safetensors", size)
        for mode in modes:
            rows.append(measure(mode, update, warmup))
        Path(update["path"]).unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,440", help="update sizes in MB, comma-separated")
    parser.add_argument("--modes", default="whole,mmap,stream")
    parser.add_argument(
        "--warmup-mb",
        type=float,
        default=1.0,
        help="size of the update checked first, whose peak is the baseline (default 1 MB)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        update, warmup = json.loads(args.child[1])
        print(json.dumps(measure_here(args.child[0], update, warmup)))
        return
    with tempfile.TemporaryDirectory(prefix="bcfl-contract-memory-") as tmp:
        sizes = [float(s) for s in args.sizes.split(",")]
        rows = run(sizes, args.modes.split(","), Path(tmp), warmup_mb=args.warmup_mb)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'update':>9} {'mode':>7} {'peak above baseline':>20} {'x update':>9} {'time':>7}")
    for r in rows:
        print(
            f"{r['update_mb']:>7} MB {r['mode']:>7} {r['peak_above_baseline_mb']:>17} MB "
            f"{r['ratio_to_update']:>9} {r['seconds']:>6}s"
        )


if __name__ == "__main__":
    main()
