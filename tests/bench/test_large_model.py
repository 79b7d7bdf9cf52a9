"""bench/large_model.py's arithmetic: sizes, widths and the 1B row planned on paper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.large_model as large
from bcfl_cli.fl.allocator import HUGE_PAGES_ENV
from bcfl_cli.fl.models import parameter_count
from bench.common import Report
from tests.fl.test_allocator import HUGE_ADVICE


@pytest.mark.parametrize("text", ["1M", "10M", "25M", "110M", "1B"])
def test_the_width_gives_the_asked_parameter_count(text: str) -> None:
    params = large.parse_params(text)
    count = large.mlp_parameters(large.width_for(params))
    assert abs(count - params) / params < 0.001
    assert large.label(params) == text


@pytest.mark.parametrize("width", [1, 7, 963])
def test_the_count_formula_is_the_model_s(width: int) -> None:
    assert large.mlp_parameters(width) == parameter_count(large.mlp(width))


def test_parse_params_reads_suffixes_and_plain_integers() -> None:
    assert large.parse_params("2.5m") == 2_500_000
    assert large.parse_params("4810") == 4810
    assert large.parse_wide("25M:10") == (25_000_000, 10)


def test_plan_on_paper_extrapolates_linearly_from_the_largest_rows() -> None:
    report = Report("t", "t", {}, large.COLUMNS)
    for params, seconds in ((10_000_000, 10.0), (20_000_000, 20.0)):
        report.add(
            params=large.label(params),
            parameters=params,
            members=4,
            trainers=3,
            result="ok",
            **{
                "round s": seconds,
                "floor s": seconds / 2,
                "validator x upd": 3.0,
                "trainer x upd": 6.0,
                "validator in MB/rnd": 3 * 4 * params / 1e6,
                "trainer in MB/rnd": 2 * 4 * params / 1e6,
            },
        )
    large.plan_on_paper(report, 1_000_000_000)
    row = report.rows[-1]
    assert row["params"] == "1B" and row["update MB"] == 4000.0
    assert row["round s"] == pytest.approx(1000.0)
    assert row["validator +MB"] == pytest.approx(12_000.0)
    assert row["x floor"] == pytest.approx(2.0)
    assert row["validator in MB/rnd"] == pytest.approx(12_000.0)
    assert "planned" in row["result"]


def test_a_node_status_field_reads_bytes_and_zero_once_gone() -> None:
    import os

    assert large.proc_status_kib(os.getpid(), "VmRSS") > 0
    assert large.proc_status_kib(2**22 + 12345, "VmRSS") == 0
    assert large.mem_available() > 0


def test_a_trainers_idle_after_warm_up_is_read_from_its_last_listening_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "node.log"
    log.write_text(
        "2026-12-05 20:40:12,484 INFO bcfl.node: listening url=http://127.0.0.1:1 peers=[] "
        "rss_mb=300\n"
        "2026-12-05 20:40:13,000 INFO bcfl.node: round 1: training\n"
        "2026-12-05 20:40:20,622 INFO bcfl.node: listening url=http://127.0.0.1:1 peers=[] "
        "rss_mb=390\n"
    )
    assert large.listening_rss(log) == 390 * 1024 * 1024
    log.write_text("2026-12-05 20:40:12,484 INFO bcfl.node: listening url=x peers=[]\n")
    assert large.listening_rss(log) is None
    assert large.listening_rss(tmp_path / "absent.log") is None


def test_the_node_reads_its_own_resident_size() -> None:
    from bcfl_cli.node.logging import resident_mb

    found = resident_mb()
    assert found is None or 10 < found < 100_000


def test_a_node_s_cpu_seconds_are_read_from_proc() -> None:
    """The column ``node CPU s/rnd`` reads /proc/PID/stat (utime + stime): this process has
    used some CPU, more after a busy loop, and a process that is gone reads as 0."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    before = large.proc_cpu_s(os.getpid())
    total = 0
    for i in range(2_000_000):
        total += i
    after = large.proc_cpu_s(os.getpid())
    assert 0 < before <= after
    assert large.proc_cpu_s(2**22 + 12345) == 0.0


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's smaps")
@pytest.mark.parametrize("script", ["bench.large_model", "bench.round_cpu"])
def test_the_floor_trains_with_huge_pages_as_a_node_does(script: str) -> None:
    """The floor (and round_cpu's pieces) run in the bench's own process: torch must be asked
    for huge pages there before it loads, as ``bcfl``'s entry point asks for every node, or the
    floor would pay page faults the nodes do not (a baseline below its best)."""
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    done = subprocess.run(
        [sys.executable, "-c", f"import {script}\n" + HUGE_ADVICE],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "True"


def _floor(train: float, net: float, sha: float, agg: float, size: int = 100) -> large.Floor:
    return large.Floor(train, net, sha, agg, size)


def test_the_floor_at_its_best_takes_each_part_at_its_fastest() -> None:
    """A slow measurement of the baseline must not flatter the rounds' ratio."""
    best = large.Floor.best([_floor(9.0, 2.8, 0.6, 1.9), _floor(13.5, 2.0, 0.5, 1.7)])
    assert (best.train_s, best.transfer_s, best.sha256_s, best.aggregate_s) == (
        9.0,
        2.0,
        0.5,
        1.7,
    )
    assert best.total_s == pytest.approx(13.2)
    with pytest.raises(ValueError, match="no floor"):
        large.Floor.best([])
    with pytest.raises(ValueError, match="different update sizes"):
        large.Floor.best([_floor(1, 1, 1, 1, 100), _floor(1, 1, 1, 1, 200)])


def test_the_floor_is_measured_repeats_times(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = [3.0, 1.0, 2.0]
    calls: list[int] = []

    def once(_spec: object, _trainers: int, _members: int) -> large.Floor:
        calls.append(1)
        return _floor(seen[len(calls) - 1], 1.0, 1.0, 1.0)

    monkeypatch.setattr(large, "measure_floor_once", once)
    assert large.measure_floor(large.mlp(4), 2, 4).train_s == 1.0
    assert len(calls) == large.FLOOR_REPEATS == 3
    with pytest.raises(ValueError, match="at least one"):
        large.measure_floor(large.mlp(4), 2, 4, repeats=0)
    with pytest.raises(SystemExit):
        large.main(["--floor-repeats", "0"])
