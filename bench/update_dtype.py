"""Compact updates (issue 19): `bcfl demo` with float32, bfloat16 and float16 updates, same seed.

Usage::

    .venv/bin/python bench/update_dtype.py                  # 3 rounds, seed 7, the 3 dtypes
    .venv/bin/python bench/update_dtype.py --rounds 10 --seed 7 --json

Each row is one seeded `bcfl demo` (four `bcfl node` processes, every update judged by the
contract, every aggregate recomputed by `verify-chain --deep` on every home) whose genesis fixes
`contract.update_dtype`. The float32 run is the baseline of the same invocation: accuracy is
reported against it; the update size is exact (the safetensors header and the values of the
demo's 4,810-parameter model).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.demo.run import DemoOptions, genesis_plan, run_demo  # noqa: E402
from bcfl_cli.fl.models import initial_state  # noqa: E402
from bcfl_cli.fl.tensorwriter import TensorSpec, header_bytes  # noqa: E402
from bcfl_cli.fl.update_file import update_dtype  # noqa: E402
from bcfl_cli.protocol.spec import ModelSpec  # noqa: E402
from bench import common  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


def update_size(options: DemoOptions) -> int:
    """The exact size of one update of the demo's model in ``options.update_dtype``."""
    model = genesis_plan(options).model
    assert isinstance(model, ModelSpec)
    shapes = {k: tuple(v.shape) for k, v in initial_state(model).items()}
    dtype = update_dtype(options.update_dtype)
    items = sum(math.prod(s) for s in shapes.values())
    header = header_bytes({k: TensorSpec(dtype, shape) for k, shape in shapes.items()})
    return len(header) + items * dtype.itemsize


def run_one(dtype: str, rounds: int, seed: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bcfl-update-dtype-"))
    options = DemoOptions(members=4, rounds=rounds, seed=seed, update_dtype=dtype, keep=root)
    try:
        run = run_demo(options)
        data = run.to_dict()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "update dtype": dtype,
        "ok": run.ok,
        "final accuracy": run.final_accuracy,
        "accuracy by round": " ".join(f"{a:.3f}" for a in data["accuracy"]),
        "update bytes": update_size(options),
        "training s": data["timings"].get("training_s"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    report = common.Report(
        "update_dtype",
        f"bcfl demo, 4 nodes, {rounds} rounds, seed {args.seed}: accuracy and bytes by dtype",
        {"rounds": rounds, "seed": args.seed, "members": 4},
        [
            "update dtype",
            "ok",
            "final accuracy",
            "points vs float32",
            "update bytes",
            "x float32 bytes",
            "accuracy by round",
            "training s",
        ],
    )
    dtypes = ["float32", *[d for d in args.dtypes if d != "float32"]]
    base: dict[str, Any] | None = None
    for dtype in dtypes:
        common.log(f"bcfl demo --update-dtype {dtype} --rounds {rounds} --seed {args.seed}")
        row = run_one(dtype, rounds, args.seed)
        base = base or row
        row["points vs float32"] = 100.0 * (row["final accuracy"] - base["final accuracy"])
        row["x float32 bytes"] = row["update bytes"] / base["update bytes"]
        report.add(**row)
    report.notes.append("accuracy on the digits test set (360 rows: one row is 0.28 points)")
    common.emit(report, as_json=args.json)
    return 0 if all(r["ok"] for r in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
