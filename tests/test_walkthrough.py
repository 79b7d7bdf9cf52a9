"""`make walkthrough` (scripts/quickstart.sh) runs end to end: what the README promises works,
by hand and at default options, from the identities to a committed aggregate of round 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.network  # four real nodes on loopback: it runs in the one-at-a-time pass
@pytest.mark.timeout(420)
@pytest.mark.skipif(shutil.which("bash") is None, reason="the walkthrough is a bash script")
def test_quickstart_script_runs_and_catches_the_tampered_byte(tmp_path: Path) -> None:
    bcfl = Path(sys.executable).parent / "bcfl"
    env = {**os.environ, "BCFL": str(bcfl), "BCFL_DEMO_DIR": str(tmp_path / "quickstart")}
    env.pop("BCFL_PASSPHRASE", None)  # the script sets its own
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=410,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the tampered copy was refused (exit 1)" in out.stdout
    assert "round 1 closed with a committed aggregate" in out.stdout
    assert (tmp_path / "quickstart" / "global.safetensors").is_file()
    assert (tmp_path / "quickstart" / "alice" / "chain.sqlite").is_file()
