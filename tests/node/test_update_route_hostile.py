"""``POST /v1/updates`` with a blob field that is not ASCII: a 400 with its reason, not a 500.

``base64.b64decode(text, validate=True)`` raises a plain ``ValueError`` (not ``binascii.Error``)
for a non-ASCII string; it escaped the route as an internal error, and on the peer stream it
ended the connection handler with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bcfl_cli.wire.refusal import Refusal
from tests.node._node_harness import LocalNode
from tests.node.test_update_route import _post, _update

__all__ = ["local"]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path / "node")
    harness.auto_mine = False
    yield harness
    harness.close()


def test_a_non_ascii_blob_field_is_a_malformed_body(local: LocalNode, tmp_path: Path) -> None:
    local.mine()
    tx, _ = _update(local, tmp_path)
    for blob in ("\u00e9AAA", "AA\u0660="):
        with pytest.raises(Refusal) as info:
            _post(local, tx, blob)
        assert (info.value.status, info.value.code) == (400, "malformed_body"), blob
    assert tx.hash not in local.node.mempool
