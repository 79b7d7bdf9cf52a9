"""bench/store_backends.py runs end to end in a tiny mode (the real run: bench/README.md)."""

from __future__ import annotations

import bench.store_backends as store_bench


def test_the_backend_bench_prints_ratios_to_sqlite(postgres_url, capsys):
    figures = store_bench.main(["--url", postgres_url, "--blocks", "4"])
    assert set(figures) == {"append_s", "read_s", "verify_s"}
    assert all(f["ratio"] > 0 and f["sqlite"] > 0 for f in figures.values())
    out = capsys.readouterr().out
    assert "4 blocks" in out and "x" in out
