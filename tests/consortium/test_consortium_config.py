"""Consortium file validation: every refusal names the file and the key to change."""

from __future__ import annotations

import tomllib

import pytest

from bcfl_cli.consortium import genesis_config_from_document, load_config, parse_config
from bcfl_cli.errors import EncodingError, UsageError
from bcfl_cli.protocol.encoding import canonical, parse_json
from tests.consortium.helpers import example_toml, test_did, write_config

HASH = "ab" * 32


def _data(names=("alice", "bob", "carol", "dave")):
    return tomllib.loads(example_toml(names))


def _refused(data, match):
    with pytest.raises(UsageError, match=match) as info:
        parse_config(data, "consortium.toml")
    assert info.value.message.startswith("consortium.toml: ")
    assert info.value.exit_code == 2
    return info.value.message


def test_example_loads(tmp_path):
    config = load_config(write_config(tmp_path))
    assert config.name == "Example Hospitals Consortium"
    assert [m.name for m in config.members] == ["alice", "bob", "carol", "dave"]
    assert len(config.validators) == 4
    assert config.model.architecture == "mlp"
    assert config.warnings() == []


def test_three_validators_warn_but_load(tmp_path):
    config = load_config(write_config(tmp_path, example_toml(("alice", "bob", "carol"))))
    assert any("n=3 validators tolerate no fault: quorum is 3 of 3" in w for w in config.warnings())


def test_fault_tolerance_warning_follows_power():
    data = _data()
    data["members"][0]["power"] = 3  # alice alone holds 3 of 6: without her, no quorum
    assert any("quorum is 5 of 6 power" in w for w in parse_config(data, "x").warnings())
    data = _data(tuple(f"m{i}" for i in range(7)))
    data["members"][0]["power"] = 2  # 2 of 8, quorum 6: any one may fail
    assert parse_config(data, "x").warnings() == []


def test_bad_did_names_its_index():
    data = _data()
    data["members"][1]["did"] = "did:key:zNOPE"
    _refused(data, r"members\[1\]\.did: not an Ed25519 did:key")


def test_unknown_key_is_named():
    data = _data()
    data["training"]["lrr"] = 0.1
    _refused(data, r"training\.lrr: unknown key")


def test_missing_key_is_named():
    data = _data()
    del data["consortium"]["name"]
    _refused(data, r"consortium\.name: missing")


def test_duplicate_did_and_name():
    data = _data()
    data["members"][2]["did"] = data["members"][0]["did"]
    _refused(data, r"members\[2\]\.did: repeats the did of members\[0\]")
    data = _data()
    data["members"][3]["name"] = "alice"
    _refused(data, r"members\[3\]\.name: 'alice' repeats members\[0\]")


def test_no_validator_at_all():
    data = _data()
    for m in data["members"]:
        m["roles"] = ["trainer"]
        m["power"] = 0
    _refused(data, "no member has the validator role")


def test_approvals_beyond_the_validators():
    data = _data(("alice", "bob"))
    data["consortium"]["admission_approvals"] = 3
    _refused(data, r"consortium\.admission_approvals: 3 approvals but only 2 validator")


def test_power_rules():
    data = _data()
    data["members"][0]["power"] = 0
    _refused(data, r"members\[0\]\.power: a validator needs power >= 1")
    data = _data()
    data["members"][0]["roles"] = ["trainer"]
    _refused(data, r"members\[0\]\.power: only validators vote")


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("model", "architecture", "transformer", r"model\.architecture"),
        ("model", "input_shape", [64, 8], r"model: cnn needs|model"),
        ("training", "lr", -1.0, r"training\.lr"),
        ("aggregation", "rule", "mean", r"aggregation\.rule"),
        ("contract", "min_samples", 10**9, r"contract: min_samples must not exceed"),
    ],
)
def test_fl_sections_are_validated(section, key, value, match):
    data = _data()
    data[section][key] = value
    if key == "input_shape":
        data["model"]["architecture"] = "cnn"
    _refused(data, match)


def test_power_defaults_to_one_for_validators_and_zero_otherwise():
    data = _data()
    del data["members"][0]["power"]
    data["members"][1]["roles"] = ["trainer"]
    del data["members"][1]["power"]
    config = parse_config(data, "x")
    assert [m.power for m in config.members[:2]] == [1, 0]


def test_roles_are_checked_and_normalised():
    data = _data()
    data["members"][0]["roles"] = ["validator", "trainer"]
    assert parse_config(data, "x").members[0].roles == ["trainer", "validator"]
    data["members"][0]["roles"] = ["validator", "validator"]
    _refused(data, r"members\[0\]\.roles: roles listed twice")
    data["members"][0]["roles"] = ["miner"]
    _refused(data, r"members\[0\]\.roles\[0\]")


def test_member_names_are_plain():
    data = _data()
    data["members"][0]["name"] = "[red]alice"
    _refused(data, r"members\[0\]\.name")


def test_file_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read consortium file"):
        load_config(tmp_path / "missing.toml")
    bad = write_config(tmp_path, "[consortium\nname = 1")
    with pytest.raises(UsageError, match=r"consortium\.toml: invalid TOML"):
        load_config(bad)
    dup = write_config(tmp_path, example_toml() + '\n[consortium]\nname = "again"\n')
    with pytest.raises(UsageError, match="invalid TOML"):
        load_config(dup)


def test_document_round_trip_has_no_floats(tmp_path):
    config = load_config(write_config(tmp_path))
    document = config.to_document(HASH)
    assert parse_json(canonical(document)) == document  # parse_json refuses floats
    assert document["training"]["lr"] == "0.05"
    assert document["members"][0] == {
        "name": "alice",
        "did": test_did("alice"),
        "roles": ["trainer", "validator"],
        "power": 1,
    }
    again, initial = genesis_config_from_document(document)
    assert (again, initial) == (config, HASH)


def test_document_must_be_canonical(tmp_path):
    document = load_config(write_config(tmp_path)).to_document(HASH)
    document["training"]["lr"] = "0.050"  # same number, another spelling
    with pytest.raises(EncodingError, match="canonical"):
        genesis_config_from_document(document)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.update(initial_model="nope"),
        lambda d: d.update(extra=1),
        lambda d: d["members"][0].update(did="did:key:zX"),
    ],
)
def test_bad_documents_are_encoding_errors(tmp_path, mutate):
    document = load_config(write_config(tmp_path)).to_document(HASH)
    mutate(document)
    with pytest.raises(EncodingError):
        genesis_config_from_document(document)


def test_member_limit_is_the_chain_rules_limit():
    """The file parser and the chain's genesis parser share one member limit: a file init
    accepts is a genesis every node accepts (they once differed, 1024 vs 1000)."""
    from bcfl_cli.chain.config import MAX_MEMBERS, parse_document

    data = _data()
    trainer = {k: v for k, v in data["members"][0].items() if k not in ("roles", "power")}
    extra = [
        {**trainer, "name": f"t{i}", "did": test_did(f"t{i}"), "roles": ["trainer"], "power": 0}
        for i in range(MAX_MEMBERS - len(data["members"]))
    ]
    data["members"] += extra
    document = parse_config(data, "consortium.toml").to_document(HASH)
    assert len(parse_document(document).members) == MAX_MEMBERS
    data["members"].append({**extra[0], "name": "one-more", "did": test_did("one-more")})
    _refused(data, "members")
