"""A model carries its proof: export, offline verification, tampering, another consortium.

The chain (tests/provenance/chains.py) has two rounds, a validator admitted before round 1 and
one removed between the rounds, so the proof must follow the validator set as it changes.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.provenance import ModelProof, verify_model
from bcfl_cli.provenance.build import build_proof
from tests.chain.factories import Consortium
from tests.provenance.chains import two_round_chain

runner = CliRunner()


def _run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    c = two_round_chain(tmp_path_factory.mktemp("chain"))
    c.ledger.close()
    return c


@pytest.fixture(scope="module")
def exported(chain: Consortium, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("export") / "model.safetensors"
    result = _run("model", "export", "--home", chain.home.root, "--out", out, "--round", 2)
    assert result.exit_code == 0, result.output
    return {
        "model": out,
        "proof": out.with_name("model.proof.json.gz"),
        "card": out.with_name("model.card.md"),
    }


def _plain(exported: dict[str, Path]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(gzip.decompress(exported["proof"].read_bytes()))
    return value


def _verify(chain: Consortium, exported: dict[str, Path], data: bytes, model: Path | None = None):
    return verify_model(data, chain.chain, model or exported["model"])


# --- the real export ---------------------------------------------------------------------------
def test_export_writes_model_proof_and_card_and_verifies(chain, exported):
    assert exported["proof"].is_file() and exported["card"].is_file()
    result = _run("model", "verify", exported["model"], exported["proof"], "--genesis", chain.chain)
    assert result.exit_code == 0, result.output
    assert "model valid: round 2" in result.stdout
    report = json.loads(
        _run(
            "model",
            "verify",
            exported["model"],
            exported["proof"],
            "--genesis",
            chain.chain,
            "--json",
        ).stdout
    )
    assert report["ok"] is True and report["fault"] is None
    assert report["round"] == 2 and report["height"] == 9 and report["headers"] == 10
    # the least quorum of each certificate: heights 1-2, 3 of 4; 3-6, 4 of 5 (erin
    # admitted); 7-9, 3 of 4 (dave removed)
    assert report["signatures"] == 2 * 3 + 4 * 4 + 3 * 3 + report["txs"]


def test_the_proof_follows_membership_changes(chain, exported):
    proof = _plain(exported)
    kinds = [t["tx"]["tx"]["kind"] for t in proof["txs"]]
    assert kinds.count("join_request") == 1 and kinds.count("approve_member") == 2
    assert kinds.count("remove_member") == 2
    validators = {h["validators"] for h in proof["headers"]}
    assert len(validators) == 3  # founders, + erin, - dave


def test_model_card_markdown_and_json(chain, exported):
    card = exported["card"].read_text()
    assert "round 2" in card and "norm_exceeded" in card and "erin" in card
    result = _run("model", "card", exported["proof"], "--genesis", chain.chain, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    rejected = [u for r in data["rounds"] for u in r["updates"] if u["verdict"] == "reject"]
    assert [(u["member"], u["reason"]) for u in rejected] == [
        ("carol", "norm_exceeded"),
        ("bob", "norm_exceeded"),
    ]
    assert data["rounds"][0]["mean_eval_accuracy"] == "0.8050"
    assert data["dp_epsilon"] == {"alice": "1.25", "bob": "1.25", "erin": "1.25"}
    assert {m["name"]: m["status"] for m in data["members"]}["dave"] == "removed"
    markdown = _run("model", "card", exported["proof"], "--genesis", chain.chain)
    assert markdown.exit_code == 0 and markdown.stdout == card


@pytest.mark.parametrize("round_number", [0, 1, 2])
def test_every_round_and_the_initial_model_export_and_verify(chain, tmp_path, round_number):
    out = tmp_path / "m.safetensors"
    result = _run(
        "model", "export", "--home", chain.home.root, "--out", out, "--round", round_number
    )
    assert result.exit_code == 0, result.output
    report = verify_model((tmp_path / "m.proof.json.gz").read_bytes(), chain.chain, out)
    assert report.ok, report.fault
    assert report.round == round_number


def test_plain_json_proof_when_asked(chain, tmp_path):
    out = tmp_path / "m.safetensors"
    proof = tmp_path / "m.proof.json"
    result = _run("model", "export", "--home", chain.home.root, "--out", out, "--proof", proof)
    assert result.exit_code == 0, result.output
    assert proof.read_bytes()[:1] == b"{"
    assert verify_model(proof.read_bytes(), chain.chain, out).ok
    assert (tmp_path / "m.card.md").is_file()


def test_no_proof_writes_the_model_alone(chain, tmp_path):
    out = tmp_path / "m.safetensors"
    result = _run("model", "export", "--home", chain.home.root, "--out", out, "--no-proof")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# --- tampering ---------------------------------------------------------------------------------
def _fault(chain, exported, proof: dict[str, Any] | bytes, model: Path | None = None) -> str:
    data = proof if isinstance(proof, bytes) else canonical(proof)
    report = _verify(chain, exported, data, model)
    assert report.fault is not None, "tampering not caught"
    assert not report.ok
    return report.fault.code


@pytest.mark.parametrize("position", ["first", "middle", "last", "append", "truncate"])
def test_any_change_to_the_model_file_is_caught(chain, exported, tmp_path, position):
    data = bytearray(exported["model"].read_bytes())
    if position == "append":
        data += b"\x00"
    elif position == "truncate":
        del data[-1]
    else:
        i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[position]
        data[i] ^= 0x01
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    code = _fault(chain, exported, exported["proof"].read_bytes(), bad)
    assert code == "model_hash_mismatch"
    result = _run("model", "verify", bad, exported["proof"], "--genesis", chain.chain)
    assert result.exit_code == 1 and "model_hash_mismatch" in result.output


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("time", 1, "time_not_increasing"),
        ("height", 5, "wrong_height"),
        ("prev", "0" * 64, "wrong_prev"),
        ("config", "1" * 64, "wrong_config"),
        ("validators", "2" * 64, "wrong_validator_set"),
        ("tx_root", "3" * 64, "tx_root_mismatch"),  # block 4 holds proven updates
    ],
)
def test_a_changed_header_field_is_named(chain, exported, field, value, code):
    proof = _plain(exported)
    proof["headers"][4][field] = value
    assert _fault(chain, exported, proof) == code


def test_a_header_change_that_keeps_the_rules_breaks_the_certificate(chain, exported):
    proof = _plain(exported)
    proof["headers"][8]["time"] += 1  # still between its neighbours: only the hash changes
    assert _fault(chain, exported, proof) == "commit_mismatch"
    proof["commits"][7]["block"] = canonical_hash(proof["headers"][8])
    assert _fault(chain, exported, proof) == "bad_commit_signature"


def canonical_hash(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(canonical(obj)).hexdigest()


def test_a_flipped_commit_signature_is_caught(chain, exported):
    proof = _plain(exported)
    sig = proof["commits"][5]["sigs"][0]["sig"]
    proof["commits"][5]["sigs"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert _fault(chain, exported, proof) == "bad_commit_signature"


def test_too_few_signatures_are_no_quorum(chain, exported):
    proof = _plain(exported)
    assert len(proof["commits"][2]["sigs"]) == 4  # the least quorum of 5 after erin joined
    proof["commits"][2]["sigs"] = proof["commits"][2]["sigs"][:3]
    assert _fault(chain, exported, proof) == "no_quorum"


def test_a_removed_validator_cannot_sign(chain, exported):
    proof = _plain(exported)
    dave = {"validator": chain.document["members"][3]["did"], "sig": "ab" * 64}
    proof["commits"][7]["sigs"] = sorted(
        [*proof["commits"][7]["sigs"], dave], key=lambda s: s["validator"]
    )
    assert _fault(chain, exported, proof) == "commit_signer_unknown"


def test_a_flipped_transaction_signature_is_caught(chain, exported):
    proof = _plain(exported)
    entry = next(t for t in proof["txs"] if t["tx"]["tx"]["kind"] == "approve_member")
    sig = entry["tx"]["sig"]
    entry["tx"]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert _fault(chain, exported, proof) == "bad_tx_signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "4" * 64), ("model_size", 1), ("updates", []), ("round", 2)],
)
def test_a_changed_aggregate_is_not_in_its_block(chain, exported, field, value):
    proof = _plain(exported)
    entry = next(
        t
        for t in proof["txs"]
        if t["tx"]["tx"]["kind"] == "aggregate" and t["tx"]["tx"]["body"]["round"] == 2
    )
    if field == "round":
        entry = next(
            t
            for t in proof["txs"]
            if t["tx"]["tx"]["kind"] == "aggregate" and t["tx"]["tx"]["body"]["round"] == 1
        )
    entry["tx"]["tx"]["body"][field] = value
    assert _fault(chain, exported, proof) == "tx_not_included"


def test_a_changed_block_hash_list_is_caught(chain, exported):
    proof = _plain(exported)
    proof["bodies"][0]["hashes"][0] = "5" * 64
    assert _fault(chain, exported, proof) == "tx_root_mismatch"
    proof = _plain(exported)
    i = next(i for i, t in enumerate(proof["txs"]) if t["tx"]["tx"]["kind"] == "update")
    txs = proof["txs"]
    txs[i]["tx"], txs[i + 1]["tx"] = txs[i + 1]["tx"], txs[i]["tx"]  # update <-> validation
    assert _fault(chain, exported, proof) == "tx_not_included"


def _omit(proof: dict[str, Any], kind: str) -> None:
    """Leave out every transaction of ``kind``, and the bodies no longer needed."""
    proof["txs"] = [t for t in proof["txs"] if t["tx"]["tx"]["kind"] != kind]
    heights = {t["height"] for t in proof["txs"]}
    proof["bodies"] = [b for b in proof["bodies"] if b["height"] in heights]


def test_an_omitted_admission_breaks_the_validator_set(chain, exported):
    proof = _plain(exported)
    _omit(proof, "approve_member")
    assert _fault(chain, exported, proof) == "wrong_validator_set"


def test_an_omitted_accepted_update_is_named(chain, exported):
    proof = _plain(exported)
    i = next(i for i, t in enumerate(proof["txs"]) if t["tx"]["tx"]["kind"] == "update")
    del proof["txs"][i : i + 2]
    assert _fault(chain, exported, proof) == "update_missing"


def test_an_omitted_round_is_named(chain, exported):
    proof = _plain(exported)
    _omit(proof, "open_round")
    assert _fault(chain, exported, proof) == "round_missing"


def test_a_changed_genesis_document_is_caught(chain, exported):
    proof = _plain(exported)
    proof["genesis"]["consortium"]["name"] = "Another Name"
    assert _fault(chain, exported, proof) == "genesis_config"
    proof = _plain(exported)
    proof["headers"][0]["time"] += 1
    assert _fault(chain, exported, proof) == "genesis_hash_mismatch"


def test_a_proof_of_another_consortium_fails_against_the_pinned_genesis(chain, exported, tmp_path):
    other = two_round_chain(tmp_path / "other", initial_bytes=b"another consortium's model")
    data = build_proof(other.ledger, 2).to_bytes(compress=True)
    other.ledger.close()
    assert other.chain != chain.chain
    assert verify_model(data, other.chain).ok  # valid for its own consortium
    assert _fault(chain, exported, data) == "genesis_hash_mismatch"
    (tmp_path / "other.proof.json.gz").write_bytes(data)
    result = _run(
        "model",
        "verify",
        exported["model"],
        tmp_path / "other.proof.json.gz",
        "--genesis",
        chain.chain,
    )
    assert result.exit_code == 1 and "genesis_hash_mismatch" in result.output


def test_unreadable_proof_or_bad_genesis_is_a_usage_error(chain, exported, tmp_path):
    missing = _run("model", "verify", exported["model"], tmp_path / "x", "--genesis", chain.chain)
    assert missing.exit_code == 2
    bad = _run("model", "verify", exported["model"], exported["proof"], "--genesis", "abc")
    assert bad.exit_code == 2 and "--genesis" in bad.output


def test_random_byte_flips_in_the_bundle_are_caught(chain, exported):
    plain = canonical(_plain(exported))
    rng = random.Random(20)
    for position in rng.sample(range(len(plain)), 150):
        data = bytearray(plain)
        data[position] ^= 1 << rng.randrange(7)
        report = _verify(chain, exported, bytes(data))
        assert report.fault is not None, f"flip at {position} not caught"
    packed = exported["proof"].read_bytes()
    for position in rng.sample(range(len(packed)), 60):
        data = bytearray(packed)
        data[position] ^= 1 << rng.randrange(8)
        if _verify(chain, exported, bytes(data)).fault is None:
            # gzip covers neither its header's time and OS bytes nor the unused bits after the
            # last deflate block: such a flip leaves the proof itself unchanged (a CI run drew
            # one); every flip that changes the proof must be caught
            assert gzip.decompress(bytes(data)) == gzip.decompress(packed), position


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[" * 100_000,
        b'{"format": "bcfl-model-proof"}',
        gzip.compress(b"\x00" * (65 * 1024 * 1024)),  # a gzip bomb past the limit
        b"\x1f\x8b garbage",
    ],
    ids=["empty", "truncated", "deep", "fields", "bomb", "bad-gzip"],
)
def test_garbage_is_a_verdict_not_an_exception(chain, exported, data):
    assert _fault(chain, exported, data) == "proof_malformed"


def test_verify_needs_no_store_network_or_torch(chain, exported, tmp_path):
    """A fresh interpreter with no bcfl home: `model verify` and `model card` load no torch."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from bcfl_cli.cli.app import app\n"
        "args = sys.argv[1:]\n"
        "r = CliRunner().invoke(app, ['model', 'verify', *args])\n"
        "c = CliRunner().invoke(app, ['model', 'card', *args[1:]])\n"
        "print(r.exit_code, c.exit_code, 'torch' in sys.modules)\n"
    )
    env = {"BCFL_HOME": str(tmp_path / "nohome"), "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(exported["model"]),
            str(exported["proof"]),
            "--genesis",
            chain.chain,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    assert out.stdout.split() == ["0", "0", "False"], out.stderr
    assert not (tmp_path / "nohome").exists()


def test_certificates_carry_the_least_quorum(chain, exported):
    """Signatures are most of a proof: it keeps just more than 2/3 of the power each time."""
    proof = _plain(exported)
    assert [len(c["sigs"]) for c in proof["commits"]] == [3, 3, 4, 4, 4, 4, 3, 3, 3]
    full = [len(b.commit.signatures) for b in chain.blocks]
    assert full == [4, 4, 5, 5, 5, 5, 4, 4, 4]


def test_model_proof_round_trips(chain, exported):
    proof = ModelProof.from_bytes(exported["proof"].read_bytes())
    assert ModelProof.from_bytes(proof.to_bytes()) == proof
    assert proof.to_bytes(compress=True) == exported["proof"].read_bytes()


def test_card_cells_show_markup_as_text():
    from bcfl_cli.provenance.card import _cell

    assert _cell("<img src=x onerror=alert(1)>|[a](b)*`") == (
        "&lt;img src=x onerror=alert(1)&gt;\\|\\[a\\](b)\\*'"
    )
