"""The genesis block: deterministic, and its header pins the document and the validator set."""

from __future__ import annotations

import pytest

from bcfl_cli.consortium import genesis_validator_set, load_config, make_genesis
from bcfl_cli.errors import EncodingError, UsageError
from bcfl_cli.protocol.block import ZERO_HASH, Block
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.merkle import merkle_root
from tests.consortium.helpers import example_toml, test_did, write_config

HASH = "cd" * 32
T = 1_700_000_000_000


def _document(tmp_path, names=("alice", "bob", "carol", "dave")):
    return load_config(write_config(tmp_path, example_toml(names))).to_document(HASH)


def test_header_fields(tmp_path):
    document = _document(tmp_path)
    block = make_genesis(document, time_ms=T)
    h = block.header
    assert (h.height, h.prev, h.time, h.proposer) == (0, ZERO_HASH, T, "")
    assert h.tx_root == merkle_root([])
    assert h.config == hash_object(document)
    config = load_config(tmp_path / "consortium.toml")
    assert h.validators == genesis_validator_set(config).hash
    assert block.txs == () and block.commit is None
    assert Block.from_dict(block.to_dict()) == block


def test_validator_set_takes_validators_only(tmp_path):
    config = load_config(write_config(tmp_path))
    data = config.model_dump()
    data["members"][3]["roles"] = ["trainer"]
    data["members"][3]["power"] = 0
    trainer_only = type(config).model_validate(data)
    vs = genesis_validator_set(trainer_only)
    assert test_did("dave") not in vs
    assert len(vs) == 3 and vs.total_power == 3


def test_deterministic(tmp_path):
    a = make_genesis(_document(tmp_path), time_ms=T)
    b = make_genesis(_document(tmp_path), time_ms=T)
    assert a.hash == b.hash
    assert make_genesis(_document(tmp_path), time_ms=T + 1).hash != a.hash


def test_every_field_changes_the_hash(tmp_path):
    base = make_genesis(_document(tmp_path), time_ms=T).hash
    changed = _document(tmp_path)
    changed["training"]["rounds"] += 1
    assert make_genesis(changed, time_ms=T).hash != base
    changed = _document(tmp_path)
    changed["initial_model"] = "ef" * 32
    assert make_genesis(changed, time_ms=T).hash != base


def test_member_order_matters_for_the_document_not_the_validator_set(tmp_path):
    a = _document(tmp_path, ("alice", "bob", "carol", "dave"))
    b = _document(tmp_path, ("dave", "carol", "bob", "alice"))
    ga, gb = make_genesis(a, time_ms=T), make_genesis(b, time_ms=T)
    assert ga.header.validators == gb.header.validators
    assert ga.header.config != gb.header.config


def test_refuses_invalid_documents_and_times(tmp_path):
    document = _document(tmp_path)
    document["members"] = []
    with pytest.raises(EncodingError):
        make_genesis(document, time_ms=T)
    with pytest.raises(ValueError):
        make_genesis(_document(tmp_path), time_ms=-1)


def test_genesis_hash_unchanged_by_the_join_request_ttl_rule(tmp_path):
    """Pinned: the example file gives the genesis it gave before join_request_ttl_blocks
    existed (the default is not written into the document). The example's round deadline
    became ``round_deadline_s``; with its former ``deadline_blocks = 20`` line (and its former
    64 MiB blob cap: issue 19 raised the example's to 1 GiB) the document is byte for byte the
    old one (an unused deadline is not written either)."""
    text = (
        example_toml(("alice", "bob", "carol", "dave"))
        .replace("round_deadline_s = 600 ", "deadline_blocks = 20    ", 1)
        .replace("max_blob_bytes = 1073741824 # 1 GiB", "max_blob_bytes = 67108864   # 64 MiB", 1)
    )
    document = load_config(write_config(tmp_path, text)).to_document(HASH)
    assert "join_request_ttl_blocks" not in document["consortium"]
    assert hash_object({**document, "initial_model": "ab" * 32}) == (
        "37b8c357e2d42f674a700b1ff0c886de94b556c7aa388ea1f812912cdffd23e0"
    )


def test_join_request_ttl_is_written_only_when_set(tmp_path):
    from bcfl_cli.chain.config import DEFAULT_JOIN_REQUEST_TTL_BLOCKS, parse_document
    from bcfl_cli.consortium.config import genesis_config_from_document

    text = example_toml(("alice", "bob", "carol", "dave")).replace(
        "removal_approvals = 3", "removal_approvals = 3\njoin_request_ttl_blocks = 500", 1
    )
    config = load_config(write_config(tmp_path, text))
    document = config.to_document(HASH)
    assert document["consortium"]["join_request_ttl_blocks"] == 500
    assert parse_document(document).join_request_ttl_blocks == 500
    assert genesis_config_from_document(document)[0].join_request_ttl_blocks == 500
    spelled = {**document, "consortium": {**document["consortium"]}}
    spelled["consortium"]["join_request_ttl_blocks"] = DEFAULT_JOIN_REQUEST_TTL_BLOCKS
    with pytest.raises(EncodingError, match="canonical"):
        genesis_config_from_document(spelled)
    bad = text.replace("join_request_ttl_blocks = 500", "join_request_ttl_blocks = 0")
    with pytest.raises(UsageError, match="join_request_ttl_blocks"):
        load_config(write_config(tmp_path, bad))
