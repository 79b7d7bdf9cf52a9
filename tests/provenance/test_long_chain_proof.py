"""A proof for a round of a 1,000-block chain stays small and verifies quickly.

The chain: 4 validators that all train and sign every block, a round every 10 blocks (100
rounds, 4 accepted updates each), so the proof of the last round carries the whole history.
Figures measured on the 2-core shared machine are in bench/README.md (bench/model_proof.py).
"""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.provenance import verify_model
from bcfl_cli.provenance.build import build_proof
from tests.chain.factories import Consortium
from tests.provenance.long_chain import long_chain

#: The target of issue 20: a round of a 1,000-block chain proves in under 1 MB.
MAX_BYTES = 1_000_000


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    c = long_chain(tmp_path_factory.mktemp("long"), blocks=1000, round_every=10)
    return c


def test_the_last_round_of_1000_blocks_proves_under_1_mb(chain: Consortium) -> None:
    proof = build_proof(chain.ledger, 100)
    data = proof.to_bytes(compress=True)
    started = time.perf_counter()
    report = verify_model(data, chain.chain)
    elapsed = time.perf_counter() - started
    assert report.ok, report.fault
    assert report.headers == 994 and report.history is not None
    assert len(report.history.rounds) == 100
    assert len(data) < MAX_BYTES, len(data)
    # about 0.8 s on a loaded 2-core machine (~5,000 Ed25519 checks); generous against noise
    assert elapsed < 20, elapsed
    print(f"\nproof {len(data)} bytes gzip ({len(proof.to_bytes())} plain), verify {elapsed:.2f} s")


def test_an_early_round_proof_stops_at_its_aggregate(chain: Consortium) -> None:
    data = build_proof(chain.ledger, 1).to_bytes(compress=True)
    report = verify_model(data, chain.chain)
    assert report.ok and report.height == 3
    assert len(data) < 10_000


def test_export_of_the_latest_round_on_a_long_chain(chain: Consortium, tmp_path) -> None:
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(
        app, ["model", "export", "--home", str(chain.home.root), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    verified = CliRunner().invoke(
        app,
        ["model", "verify", str(out), str(tmp_path / "model.proof.json.gz")]
        + ["--genesis", chain.chain],
    )
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize(
    "tamper",
    ["commit_signature", "tx_signature", "both_rule_first", "both_signature_first"],
)
def test_the_pool_reports_the_same_first_fault_as_one_process(
    chain: Consortium, tamper: str
) -> None:
    """Signatures go to a process pool on long proofs; the fault named must not change."""
    proof = build_proof(chain.ledger, 100).to_dict()

    def flip(sig: str) -> str:
        return ("0" if sig[0] != "0" else "1") + sig[1:]

    if tamper in ("commit_signature", "both_signature_first"):
        entry = proof["commits"][499]["sigs"][2]  # height 500
        entry["sig"] = flip(entry["sig"])
    if tamper == "tx_signature":
        entry = next(t for t in proof["txs"] if t["height"] > 600)
        entry["tx"]["sig"] = flip(entry["tx"]["sig"])
    if tamper in ("both_rule_first", "both_signature_first"):
        proof["headers"][700]["time"] = proof["headers"][699]["time"]  # time_not_increasing
        if tamper == "both_rule_first":
            entry = proof["commits"][799]["sigs"][0]
            entry["sig"] = flip(entry["sig"])
    data = canonical(proof)
    pooled = verify_model(data, chain.chain, workers=2)
    alone = verify_model(data, chain.chain, workers=1)
    assert pooled.fault is not None and pooled.fault == alone.fault
    assert (pooled.height, pooled.headers, pooled.signatures) == (
        alone.height,
        alone.headers,
        alone.signatures,
    )
    expected = {
        "commit_signature": "bad_commit_signature",
        "tx_signature": "bad_tx_signature",
        "both_rule_first": "time_not_increasing",
        "both_signature_first": "bad_commit_signature",
    }[tamper]
    assert pooled.fault.code == expected


def test_a_pool_that_cannot_start_falls_back_to_one_process(
    chain: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcfl_cli.provenance.verify as verify

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("no processes")

    monkeypatch.setattr(verify, "ProcessPoolExecutor", broken)
    report = verify_model(build_proof(chain.ledger, 100).to_bytes(), chain.chain, workers=2)
    assert report.ok and report.headers == 994
