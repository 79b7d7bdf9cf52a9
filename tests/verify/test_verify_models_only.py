"""verify-chain --deep on the store of a member that trains without validating (issue 19): it
holds every model but not the other members' updates. Without --models-only that is a
``blob_missing`` fault that says how to verify such a store; with it, the rounds that could not
be recomputed are listed and everything else is still checked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import bcfl_cli.verify.chain as verify_module
from bcfl_cli.cli.app import app
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.verify import verify_chain
from tests.verify.test_verify_deep import _round


def _drop_updates(c) -> list[str]:
    """Remove every update blob of the round, as a trainer-only member's store lacks them."""
    dropped = []
    for block in c.blocks:
        for tx in block.txs:
            if tx.kind is TxKind.UPDATE:
                c.ledger.blobs.path_for(tx.body["blob"]).unlink(missing_ok=True)
                dropped.append(tx.hash)
    return dropped


def _deep(c, **kw):
    return verify_chain(
        c.ledger, deep=True, checks=FLChecks(c.ledger.blobs, keep_models=False), **kw
    )


def test_without_the_flag_a_missing_update_is_named_with_the_way_out(tmp_path):
    c = _round(tmp_path)
    first = _drop_updates(c)[0]
    report = _deep(c, workers=1)
    assert (report.fault.code, report.fault.height, report.fault.tx) == ("blob_missing", 2, first)
    assert "--models-only" in report.fault.message and "round 1" in report.fault.message
    assert report.unverified_rounds == []


@pytest.mark.parametrize("workers", [1, 2])
def test_models_only_lists_the_rounds_it_could_not_recompute(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_BLOCKS", 1)
    c = _round(tmp_path)
    _drop_updates(c)
    report = _deep(c, workers=workers, models_only=True)
    assert report.ok, report.fault
    assert report.models_only and report.unverified_rounds == [1]
    assert report.blobs == 2 + 1  # genesis document, initial model, the aggregate's model


def test_models_only_still_needs_every_model(tmp_path):
    c = _round(tmp_path)
    _drop_updates(c)
    aggregate = c.blocks[-1].txs[0]
    c.ledger.blobs.path_for(aggregate.body["model"]).unlink()
    report = _deep(c, workers=1, models_only=True)
    assert (report.fault.code, report.fault.height, report.fault.tx) == (
        "blob_missing",
        3,
        aggregate.hash,
    )


def test_models_only_recomputes_whatever_blobs_are_here(tmp_path):
    c = _round(tmp_path, lie_about_model=True)
    report = _deep(c, workers=1, models_only=True)
    assert (report.fault.code, report.fault.height) == ("aggregate_check_failed", 3)
    assert report.unverified_rounds == []


def test_the_command_shows_the_rounds(tmp_path):
    c = _round(tmp_path)
    _drop_updates(c)
    c.ledger.close()
    home = str(tmp_path)
    plain = CliRunner().invoke(app, ["verify-chain", "--deep", "--json", "--home", home])
    assert plain.exit_code == 1
    assert "--models-only" in json.loads(plain.stdout)["fault"]["message"]
    result = CliRunner().invoke(
        app, ["verify-chain", "--deep", "--models-only", "--json", "--home", home]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unverified_rounds"] == [1]
    shown = CliRunner().invoke(app, ["verify-chain", "--deep", "--models-only", "--home", home])
    assert shown.exit_code == 0, shown.output
    assert "rounds not recomputed" in shown.output
