"""--deep: the contract's verdicts and the aggregates are recomputed by the FL engine."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.fl.aggregation import UpdateInput, aggregate
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.models import initial_state, initial_state_bytes
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.verify import verify_chain
from tests.chain.factories import make_consortium, update_body, validation

SPEC = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10)


def _round(tmp_path, *, lie_about_verdict=False, lie_about_model=False):
    c = make_consortium(tmp_path, initial_bytes=initial_state_bytes(SPEC))
    base = initial_state(SPEC)
    c.commit(
        [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {"round": 1, "base_model": c.state.round.model, "deadline_height": 1 + 5},
            )
        ]
    )
    txs, inputs = [], []
    for i, name in enumerate(("bob", "carol")):
        delta = {k: torch.full_like(v, 0.001 * (i + 1)) for k, v in base.items()}
        u = c.tx(name, TxKind.UPDATE, update_body(c, 1, encode_tensors(delta)))
        txs += [u, validation(c, u)]
        inputs.append(UpdateInput(u.hash, delta, 100))
    bad = c.tx("dave", TxKind.UPDATE, update_body(c, 1, b"not safetensors at all"))
    txs += [bad, validation(c, bad, "accept" if lie_about_verdict else "reject")]
    if not lie_about_verdict:
        txs[-1] = c.tx(
            "alice",
            TxKind.VALIDATION,
            {**txs[-1].body, "reason": "malformed_blob"},
        )
    c.commit(txs)
    result = aggregate(c.state.config.aggregation, base, inputs)
    model = encode_tensors(result.new_state)
    if lie_about_model:
        model = encode_tensors({k: v + 1 for k, v in result.new_state.items()})
    accepted = c.state.round.accepted_hashes
    c.commit(
        [
            c.tx(
                "alice",
                TxKind.AGGREGATE,
                {
                    "round": 1,
                    "updates": accepted,
                    "rule": c.state.config.aggregation_rule,
                    "params": c.state.config.aggregation_params,
                    "model": c.blob(model),
                    "model_size": len(model),
                },
            )
        ]
    )
    return c


def test_deep_verification_of_an_honest_round(tmp_path):
    c = _round(tmp_path)
    report = verify_chain(c.ledger, deep=True, checks=FLChecks(c.ledger.blobs, keep_models=False))
    assert report.ok, report.fault
    assert report.deep
    c.ledger.close()
    result = CliRunner().invoke(app, ["verify-chain", "--deep", "--json", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deep"] is True


@pytest.mark.parametrize(
    ("lie", "code", "height"),
    [
        ("lie_about_verdict", "verdict_mismatch", 2),
        ("lie_about_model", "aggregate_check_failed", 3),
    ],
)
def test_deep_verification_catches_what_shallow_cannot(tmp_path, lie, code, height):
    c = _round(tmp_path, **{lie: True})
    assert verify_chain(c.ledger).ok
    report = verify_chain(c.ledger, deep=True, checks=FLChecks(c.ledger.blobs, keep_models=False))
    assert (report.fault.code, report.fault.height) == (code, height)
