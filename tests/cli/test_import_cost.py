"""`bcfl --help`, keygen and the ledger commands must start without importing torch."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_module_does_not_import_torch() -> None:
    # every command module registered (``app`` registers them on first access)
    code = "import sys; from bcfl_cli.cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_offline_model_verification_does_not_import_torch() -> None:
    """`bcfl model verify` and `model card` run where no FL engine is installed."""
    code = "import sys, bcfl_cli.provenance, bcfl_cli.cli.model_cmd; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
