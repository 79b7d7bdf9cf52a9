"""Model proofs on long chains: bundle size and offline verify time vs verify-chain.

Usage::

    .venv/bin/python bench/model_proof.py [--blocks 1000] [--quick] [--json]

For each shape (validators, blocks between rounds) it builds a chain in-process
(``tests/provenance/long_chain.py``: every validator trains and signs every block, a round of
open_round / one update + validation per member / aggregate every N blocks), writes the proof of
the last round (``bcfl_cli.provenance.build_proof``), and times ``verify_model`` on it (median
of 3), wall clock and CPU seconds, the pool's included (the figure to read on a shared
machine: on an idle one, wall time is about CPU time divided by the cores used). The baseline, in
the same run, is ``verify_chain`` of the same store on one process: what a node holding the
whole chain does instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.common as common  # noqa: E402
from bcfl_cli.provenance import verify_model  # noqa: E402
from bcfl_cli.provenance.build import build_proof  # noqa: E402
from bcfl_cli.verify import verify_chain  # noqa: E402
from tests.provenance.long_chain import long_chain  # noqa: E402

SHAPES = ((4, 10), (7, 6), (4, 100))


def run(blocks: int, shapes: tuple[tuple[int, int], ...] = SHAPES) -> common.Report:
    report = common.Report(
        "model_proof",
        f"Model proof of the last round of a {blocks}-block chain",
        {"blocks": blocks, "shapes": [list(s) for s in shapes]},
        [
            "validators",
            "round every",
            "rounds",
            "proof KB (gzip)",
            "proof KB (plain)",
            "verify s",
            "verify CPU s",
            "verify-chain s",
            "verify-chain CPU s",
            "x verify-chain (CPU)",
        ],
    )
    for validators, every in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            chain = long_chain(Path(tmp), blocks=blocks, round_every=every, validators=validators)
            last = chain.state.round.number - (1 if chain.state.round.open else 0)
            proof = build_proof(chain.ledger, last)
            packed, plain = proof.to_bytes(compress=True), proof.to_bytes()
            times, cpu = [], []
            for _ in range(3):
                started, started_cpu = time.perf_counter(), _cpu()
                outcome = verify_model(packed, chain.chain)
                times.append(time.perf_counter() - started)
                cpu.append(_cpu() - started_cpu)
                assert outcome.ok, outcome.fault
            baseline_cpu = _cpu()
            baseline = verify_chain(chain.ledger, workers=1)
            baseline_cpu = _cpu() - baseline_cpu
            assert baseline.ok, baseline.fault
            chain.ledger.close()
        verify_s = statistics.median(times)
        report.add(
            **{
                "validators": validators,
                "round every": every,
                "rounds": last,
                "proof KB (gzip)": len(packed) / 1000,
                "proof KB (plain)": len(plain) / 1000,
                "verify s": verify_s,
                "verify CPU s": statistics.median(cpu),
                "verify-chain s": baseline.elapsed_s,
                "verify-chain CPU s": baseline_cpu,
                "x verify-chain (CPU)": statistics.median(cpu) / baseline_cpu,
            }
        )
    return report


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the signature pool)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 blocks, one shape")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(100, ((4, 10),)) if args.quick else run(args.blocks)
    common.emit(report, as_json=args.json)


if __name__ == "__main__":
    main()
