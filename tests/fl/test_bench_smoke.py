"""The accuracy benchmark runs end to end on a tiny configuration (the full run is manual)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "accuracy.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_prints_a_table() -> None:
    bench = _load()
    threads = torch.get_num_threads()
    settings = bench.Settings(
        rounds=2, local_epochs=1, lr=0.05, batch_size=32, central_epochs=1, seed=1
    )
    logged: list[str] = []
    central, rows = bench.run(settings, ["fedavg", "median"], ["scaling"], [0.3], log=logged.append)
    assert torch.get_num_threads() == threads
    assert 0.0 <= central <= 1.0
    assert [(r.rule, r.attack, r.attackers) for r in rows] == [
        ("fedavg", "none", 0),
        ("median", "none", 0),
        ("fedavg", "scaling", 3),
        ("median", "scaling", 3),
    ]
    assert all(0.0 <= r.accuracy <= 1.0 for r in rows)
    table = bench.render(central, rows, ["fedavg", "median"])
    assert "| scaling | 30% |" in table
    assert "best robust rule per attack at 30% attackers" in table


def test_attackers_are_a_fixed_nested_choice() -> None:
    bench = _load()
    order = bench.attacker_order(2024)
    assert sorted(order) == list(range(10))
    assert order == bench.attacker_order(2024)
