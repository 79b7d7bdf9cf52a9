"""CPU seconds a node spends on one received update, before and after issue 19's summaries.

Usage::

    python bench/update_check_cpu.py --params 110M [--json]

Process CPU time (``time.process_time``, which load on a shared machine disturbs far less than
wall time) of the work one update costs its receivers and its trainer, on an update of the
bench's large-model shape (``large_model.py``: MLP 64 -> W -> W -> 10), written to a file:

- ``digests x 3`` / ``x 1``: a trainer's ``Content-Digest`` of every 4 MiB chunk, once a peer
  (three peers) before, once for all of them after (``client.blobs.SharedChunks``);
- ``full check``: the contract's check of the file (read, SHA-256, layout, exact norm), what
  every validator ran after an upload before;
- ``summary while received``: ``StreamedSummary`` fed the same 4 MiB chunks, what a receiver
  adds to each upload now; ``check from summary``: the check after it;
- ``squares, exponent bins`` / ``squares, split``: the exact sum of squares alone over the
  same values, 65,536 at a time, by ``numerics._float32_squares_total`` (the only path until
  2026-12-06) and by ``numerics.float32_squares_units`` (its float64 extraction since then).
The verdicts of both checks are printed and must be equal, and so must both sums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from large_model import parse_params, width_for

from bcfl_cli.fl.contract import UpdateClaim, check_blob
from bcfl_cli.fl.numerics import SPLIT_CHUNK, _float32_squares_total, float32_squares_units
from bcfl_cli.fl.update_summary import StreamedSummary
from bcfl_cli.protocol.spec import ContractRules
from bcfl_cli.wire.httpsig import content_digest

CHUNK = 4 * 1024 * 1024


def _cpu(work: Any) -> tuple[float, Any]:
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def _chunks(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return list(iter(lambda: f.read(CHUNK), b""))


def measure(params: int, folder: Path) -> dict[str, Any]:
    width = width_for(params)
    shapes = {
        "0.weight": (width, 64),
        "0.bias": (width,),
        "2.weight": (width, width),
        "2.bias": (width,),
        "4.weight": (10, width),
        "4.bias": (10,),
    }
    rng = np.random.default_rng(0)
    path = folder / "update.safetensors"
    save_file(
        {n: (rng.standard_normal(s, dtype=np.float32) * 1e-3) for n, s in shapes.items()},
        str(path),
    )
    layout = {n: ("F32", s) for n, s in shapes.items()}
    data_size = path.stat().st_size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    claim = UpdateClaim("did:key:z6Mk", 1, "0" * 64, digest, data_size, 10)
    rules = ContractRules()
    chunks = _chunks(path)
    digests, _ = _cpu(lambda: [content_digest(c) for c in chunks])
    full, full_verdict = _cpu(lambda: check_blob(rules, layout, claim, path, named_by_hash=True))

    def summarise() -> Any:
        summary = StreamedSummary(data_size)
        for c in chunks:
            summary.feed(c)
        return summary.result()

    streamed, summary = _cpu(summarise)
    lookup, quick_verdict = _cpu(lambda: check_blob(rules, layout, claim, path, summary=summary))
    values = np.concatenate([np.frombuffer(c, dtype=np.uint8) for c in chunks])[
        -4 * sum(int(np.prod(s)) for s in shapes.values()) :
    ].view("<f4")
    pieces = [values[i : i + SPLIT_CHUNK] for i in range(0, values.shape[0], SPLIT_CHUNK)]
    binned, binned_units = _cpu(lambda: sum(_float32_squares_total(p) for p in pieces))
    split, split_units = _cpu(lambda: sum(float32_squares_units(p) for p in pieces))
    return {
        "params": params,
        "update MB": round(data_size / 1e6, 1),
        "digests x 3 (before) s": round(3 * digests, 3),
        "digests x 1 (after) s": round(digests, 3),
        "full check (before) s": round(full, 3),
        "summary while received (after) s": round(streamed, 3),
        "check from summary (after) s": round(lookup, 4),
        "squares, exponent bins (before) s": round(binned, 3),
        "squares, split (after) s": round(split, 3),
        "verdicts equal": full_verdict == quick_verdict and binned_units == split_units,
        "verdict": full_verdict.detail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="110M")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bcfl-check-cpu-") as folder:
        row = measure(parse_params(args.params), Path(folder))
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        for key, value in row.items():
            print(f"{key:36s} {value}")
    return 0 if row["verdicts equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
