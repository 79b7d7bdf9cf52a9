"""The short run of bench/fuzz.py in CI: every parser of peer bytes ends in its own error type.

A few thousand seeded mutations a target (deterministic), the regression inputs of
``bench/fuzz_corpus`` among them; and, where atheris is installed, a short coverage-guided run.
The long runs (a million inputs a target) are manual: ``python bench/fuzz.py --inputs 1000000``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import bench.fuzz as fuzz


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_short_mutation_run_finds_nothing(target: str, tmp_path: Path) -> None:
    figures = fuzz.run_mutate(target, 4000, seed=16, crashes=tmp_path, slow_s=2.0)
    print(figures.line())
    assert figures.inputs == 4000
    assert figures.unexpected == 0, figures.samples
    assert figures.slow == 0, figures.slowest_s


def test_the_regression_inputs_are_replayed() -> None:
    assert (fuzz.CORPUS / "blob" / "list-dtype").read_bytes() in fuzz.seeds("blob")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_short_atheris_run_finds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    code = fuzz.main(
        ["--target", "blob", "--inputs", "3000", "--engine", "atheris", "--json", str(out)]
    )
    assert code == 0, capsys.readouterr().out
    assert '"inputs": 3000' in out.read_text()


def test_the_harness_reports_an_unexpected_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that raises something else is counted and sampled, and the run goes on."""
    real = fuzz._load_targets

    def broken() -> dict[str, object]:
        targets = real()
        check, expected = targets["tx"]

        def crash(data: bytes) -> None:
            if data.startswith(b"{"):
                raise KeyError("boom")
            check(data)

        targets["tx"] = (crash, expected)
        return targets  # type: ignore[return-value]

    monkeypatch.setattr(fuzz, "_load_targets", broken)
    figures = fuzz.run_mutate("tx", 300, seed=1)
    assert figures.inputs == 300 and figures.unexpected > 0
    assert figures.samples and figures.samples[0].startswith("KeyError")
    assert sys.modules["bench.fuzz"] is fuzz
