"""verify-chain --deep on a chain holding a hostile update reports; it never crashes.

The nested-``[`` update of issue 16 (item 2) made ``verify-chain --deep`` end with a
``RecursionError`` traceback. Its recorded verdict (``reject``, ``malformed_blob``) is now what
the contract recomputes; and a check that fails in some other unexpected way is reported as the
block's fault (``check_crashed``), with the height, instead of a traceback.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bcfl_cli.chain import ChainState
from bcfl_cli.cli.app import app
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.models import initial_state_bytes
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.verify import verify_chain
from tests.chain.factories import make_consortium, update_body, validation

SPEC = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10)
NESTED = struct.pack("<Q", 5000) + b"[" * 5000


def _hostile_round(tmp_path: Path) -> Any:
    c = make_consortium(tmp_path, initial_bytes=initial_state_bytes(SPEC))
    body = {"round": 1, "base_model": c.state.round.model, "deadline_height": 1 + 5}
    c.commit([c.tx("alice", TxKind.OPEN_ROUND, body)])
    bad = c.tx("dave", TxKind.UPDATE, update_body(c, 1, NESTED))
    verdict = validation(c, bad, "reject")
    verdict = c.tx("alice", TxKind.VALIDATION, {**verdict.body, "reason": "malformed_blob"})
    c.commit([bad, verdict])
    return c


def test_deep_verification_of_a_nested_header_update_passes(tmp_path: Path) -> None:
    c = _hostile_round(tmp_path)
    report = verify_chain(c.ledger, deep=True, checks=FLChecks(c.ledger.blobs, keep_models=False))
    assert report.ok, report.fault
    c.ledger.close()
    result = CliRunner().invoke(app, ["verify-chain", "--deep", "--json", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


class Crashing(FLChecks):
    def check_update(self, state: ChainState, tx: Transaction) -> Any:
        raise RuntimeError("a bug in a check")


def test_a_check_that_crashes_is_reported_as_the_blocks_fault(tmp_path: Path) -> None:
    c = _hostile_round(tmp_path)
    report = verify_chain(c.ledger, deep=True, checks=Crashing(c.ledger.blobs), workers=1)
    assert report.fault is not None
    assert (report.fault.code, report.fault.height) == ("check_crashed", 2), report.fault
    assert "RuntimeError: a bug in a check" in report.fault.message
