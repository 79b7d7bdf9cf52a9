"""verify-chain's blob check is the protocol's SHA-256 in every process (§7, §8): never answered
from the store's content record (store/content_record.py), even where this very process stored
the blobs and the record knows them."""

from __future__ import annotations

import pytest

from bcfl_cli.store.content_record import ContentRecord
from bcfl_cli.verify import verify_chain
from tests.verify.test_verify_deep import _round


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_chain_never_answers_a_blob_from_the_content_record(tmp_path, monkeypatch, workers):
    c = _round(tmp_path)
    assert len(c.ledger.blobs.record) > 0  # the blobs were stored here: the record knows them
    asked: list[str] = []

    def unchanged(self: ContentRecord, digest: str, fd: int) -> bool | None:
        asked.append(digest)
        return True

    monkeypatch.setattr(ContentRecord, "unchanged", unchanged)
    report = verify_chain(c.ledger, workers=workers)
    assert report.ok, report.fault
    assert report.blobs > 0
    assert asked == []
