"""init_consortium: from a file to a home whose ledger holds the genesis and its blobs."""

from __future__ import annotations

import pytest

from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.errors import StoreError, UsageError
from bcfl_cli.fl.models import initial_state_bytes
from bcfl_cli.home import Home
from bcfl_cli.protocol.encoding import canonical, sha256_hex
from bcfl_cli.store.ledger import Ledger
from tests.consortium.helpers import example_toml, write_config

T = 1_700_000_000_000


def test_init_writes_genesis_document_and_weights(tmp_path):
    home = Home.resolve(tmp_path / "h")
    result = init_consortium(home, write_config(tmp_path), time_ms=T)
    assert result.genesis.header.time == T
    assert result.initial_model == sha256_hex(initial_state_bytes(result.config.model))
    with Ledger.open(home) as ledger:
        assert ledger.genesis_hash == result.genesis_hash
        assert ledger.height == 0
        assert ledger.document == result.document
        assert ledger.blobs.get(result.initial_model) == initial_state_bytes(result.config.model)
        assert sha256_hex(ledger.blobs.get(result.genesis.header.config)) == (
            result.genesis.header.config
        )
        assert ledger.blobs.get(result.genesis.header.config) == canonical(result.document)
    assert result.local_member is None


def test_same_file_same_time_same_consortium(tmp_path):
    path = write_config(tmp_path)
    a = init_consortium(Home.resolve(tmp_path / "a"), path, time_ms=T)
    b = init_consortium(Home.resolve(tmp_path / "b"), path, time_ms=T)
    assert a.genesis_hash == b.genesis_hash


def test_local_member_is_recognised(make_home, tmp_path):
    alice = make_home("alice")
    text = example_toml().replace(
        next(line for line in example_toml().splitlines() if line.startswith("did = ")),
        f'did = "{alice.did}"',
        1,
    )
    result = init_consortium(alice.home, write_config(tmp_path, text), time_ms=T)
    assert result.local_member == "alice"


def test_refuses_a_home_with_a_ledger(tmp_path):
    home = Home.resolve(tmp_path / "h")
    path = write_config(tmp_path)
    init_consortium(home, path, time_ms=T)
    with pytest.raises(StoreError, match="already holds a ledger"):
        init_consortium(home, path, time_ms=T)


def test_initial_model_larger_than_the_contract_is_refused(tmp_path):
    text = example_toml().replace("max_blob_bytes = 1073741824", "max_blob_bytes = 1024")
    home = Home.resolve(tmp_path / "h")
    with pytest.raises(UsageError, match=r"contract\.max_blob_bytes"):
        init_consortium(home, write_config(tmp_path, text), time_ms=T)
    assert not home.store_file.exists()


def test_three_validators_carry_the_warning(tmp_path):
    path = write_config(tmp_path, example_toml(("alice", "bob", "carol")))
    result = init_consortium(Home.resolve(tmp_path / "h"), path, time_ms=T)
    assert any("tolerate no fault" in w for w in result.warnings)
