"""The record behind upload quotas on both backends: beside a PostgreSQL ledger, in it."""

from __future__ import annotations

from bcfl_cli.home import Home
from bcfl_cli.store.blob_owners import BLOB_OWNERS_FILE, BlobOwners, PostgresBlobOwners


def test_first_uploader_keeps_a_blob_and_the_record_survives_a_restart(tmp_path, store_backend):
    home = store_backend.use(Home.resolve(tmp_path / "home").ensure())
    with BlobOwners.for_home(home) as owners:
        assert isinstance(owners, PostgresBlobOwners) is store_backend.is_postgres
        owners.record("aa" * 32, "did:key:alice", 10, 1.5)
        owners.record("aa" * 32, "did:key:mallory", 99, 2.0)  # the first uploader keeps it
        owners.record("bb" * 32, "did:key:bob", 2**40, 3.25)
        owners.forget([])
    assert (home.node_dir / BLOB_OWNERS_FILE).exists() is not store_backend.is_postgres
    with BlobOwners.for_home(home) as owners:
        assert sorted(owners.all()) == [
            ("aa" * 32, "did:key:alice", 10, 1.5),
            ("bb" * 32, "did:key:bob", 2**40, 3.25),
        ]
        owners.forget(["aa" * 32, "cc" * 32])
        assert owners.all() == [("bb" * 32, "did:key:bob", 2**40, 3.25)]
