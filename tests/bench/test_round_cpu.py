"""bench/round_cpu.py: every piece of a round's work is timed and counted as the set-up does it."""

from __future__ import annotations

from pathlib import Path

import bench.round_cpu as round_cpu


def test_a_round_s_pieces_are_counted_per_member_and_trainer(tmp_path: Path) -> None:
    rows = round_cpu.pieces(20_000, members=4, trainers=3, scratch=tmp_path)
    times = {r["work"]: r["a round"] for r in rows}
    assert times["training (the floor's train_local)"] == 3
    assert times["blob received (digest, running hash, append)"] == 3 * 3  # T x (N - 1)
    assert times["contract summary of an update"] == 3 * 4  # every node checks every update
    assert times["aggregate recomputed (inputs re-checked + pass)"] == 4
    assert times["  of it: the inputs re-checked from the store's record"] == 4
    for row in rows:
        assert row["CPU s once"] >= 0
        assert row["CPU s a round"] == row["CPU s once"] * row["a round"]
