"""NodeApi answers with the wire models: a node that answers in another shape (a status
missing fields, a committed transaction without a height, an acknowledgement of another hash)
is a NodeError naming the route, never a KeyError or an AssertionError in a command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bcfl_cli.client.api import NodeApi
from bcfl_cli.errors import NodeError
from bcfl_cli.wire.refusal import Refusal

Handler = Callable[[httpx.Request], httpx.Response]


def _api(answers: dict[str, Any]) -> NodeApi:
    def handle(request: httpx.Request) -> httpx.Response:
        for path, body in answers.items():
            if request.url.path.startswith(path):
                return httpx.Response(200, json=body)
        return httpx.Response(404, json={"error": "not_found", "message": "no such route"})

    return NodeApi("http://node", transport=httpx.MockTransport(handle), retries=0)


@pytest.mark.parametrize(
    "body",
    [{"height": 3}, [], "status", {"genesis": "ab" * 32, "height": "three"}, None],
)
def test_a_status_in_another_shape_is_a_node_error(body: Any) -> None:
    with _api({"/v1/status": body}) as api, pytest.raises(NodeError, match="/v1/status"):
        api.status()


def test_a_committed_transaction_has_a_height_or_the_answer_is_refused() -> None:
    lying = {"tx": None, "height": None, "status": "committed", "reason": "", "extra": 1}
    with _api({"/v1/txs/": lying}) as api, pytest.raises(NodeError, match="TxStatus"):
        api.tx_status("ab" * 32)


def test_an_unknown_transaction_is_status_unknown_not_an_error() -> None:
    with _api({}) as api:
        status = api.tx_status("ab" * 32)
    assert (status.status, status.height, status.reason) == ("unknown", None, "")


def test_blocks_answer_is_bounded_by_its_model() -> None:
    too_many = {"blocks": [{}] * 101}
    with _api({"/v1/blocks": too_many}) as api, pytest.raises(NodeError, match="BlocksResponse"):
        api.blocks(1, 100)


def test_a_refusal_reaches_the_caller_as_the_one_refusal() -> None:
    with _api({}) as api, pytest.raises(Refusal) as info:
        api.genesis()
    assert (info.value.status, info.value.code) == (404, "not_found")
