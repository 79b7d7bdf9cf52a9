"""The node's HTTP API in-process: its shape (OpenAPI, status, blocks, txs) and its refusals.

The real ``Node`` and ``create_app`` behind Starlette's TestClient; requests are signed with
the project's signed client (RFC 9421) exactly as peers sign them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis_jsonschema import from_schema
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.node.app import ROUTE_TABLE
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.schemas import StatusResponse
from tests.node._node_harness import URL, LocalNode, did, key


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    harness.auto_mine = False
    yield harness
    harness.close()


def signed(local: LocalNode, signer: nacl.signing.SigningKey) -> SignedClient:
    return SignedClient(signer, URL + "/v1", transport=local.client._transport, retries=0)


def test_openapi_lists_every_route(local: LocalNode) -> None:
    doc = local.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served: set[tuple[str, str]] = set()
    app = local.client.app
    while not isinstance(app, Starlette):  # peel the read-timeout and auth layers
        app = app.members if hasattr(app, "members") else app.app  # type: ignore[attr-defined]
    streams: set[str] = set()
    for route in app.routes:
        children = route.routes if isinstance(route, Mount) else [route]
        prefix = route.path if isinstance(route, Mount) else ""
        for child in children:
            if isinstance(child, WebSocketRoute):
                streams.add(prefix + child.path)
                continue
            assert isinstance(child, Route)
            for method in child.methods or ():
                if method != "HEAD":
                    served.add((method, prefix + child.path))
    assert served == listed
    # a WebSocket is described beside the paths (OpenAPI has no words for one)
    assert streams == set(doc["x-websockets"]) == {"/v1/stream"}
    messages = doc["x-websockets"]["/v1/stream"]["messages"]
    assert [set(m["properties"]) for m in messages] == [{"proposal", "vote"}, {"update", "seen"}]
    assert {(m.upper(), p) for m, p, *_ in ROUTE_TABLE} == listed
    post = doc["paths"]["/v1/txs"]["post"]
    assert "requestBody" in post and "401" in post["responses"]


def test_openapi_declares_every_parameter(local: LocalNode) -> None:
    """Each ``{name}`` of a path and each query parameter a handler reads, typed and bounded."""
    doc = local.client.get("/openapi.json").json()
    queries = {
        ("get", "/v1/blocks"): {"start", "limit"},
        ("get", "/v1/rounds"): {"start", "limit"},
        ("get", "/v1/blobs/{hash}/upload"): {"size"},
        ("put", "/v1/blobs/{hash}/chunks/{index}"): {"size"},
        ("put", "/v1/blobs/{hash}"): {"size"},
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            params = op.get("parameters", [])
            by_place = {
                where: {p["name"] for p in params if p["in"] == where}
                for where in ("path", "query")
            }
            assert by_place["path"] == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert by_place["query"] == queries.get((method, path), set()), (method, path)
            for p in params:
                schema = p["schema"]
                assert p["required"] or p["in"] != "path"
                if schema["type"] == "integer":
                    assert 0 <= schema["minimum"] <= schema["maximum"], p
                else:
                    assert "pattern" in schema and "maxLength" in schema, p
    size = doc["paths"]["/v1/blobs/{hash}"]["put"]["parameters"][1]["schema"]
    assert size["maximum"] == local.state.config.contract.max_blob_bytes
    schemathesis.openapi.from_dict(doc)  # schemathesis reads it


def test_values_the_description_allows_pass_the_handlers(local: LocalNode) -> None:
    """A value valid by the description is never refused as malformed (400) by the handler."""
    doc = local.client.get("/openapi.json").json()

    def schema(path: str, name: str, method: str = "get") -> dict:  # type: ignore[type-arg]
        params = doc["paths"][path][method]["parameters"]
        return next(p["schema"] for p in params if p["name"] == name)

    hashes = from_schema(schema("/v1/txs/{hash}", "hash"))
    height = from_schema(schema("/v1/consensus/{height}", "height"))
    start = from_schema(schema("/v1/blocks", "start"))
    limit = from_schema(schema("/v1/blocks", "limit"))
    size = from_schema(schema("/v1/blobs/{hash}/upload", "size"))
    byte_range = from_schema(schema("/v1/blobs/{hash}", "Range"))
    initial = local.state.config.initial_model

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(hashes, height, start, limit, size, byte_range)
    def check(digest: str, h: int, first: int, most: int, n: int, rng: str) -> None:
        get = local.client.get
        responses = [
            get(f"/v1/txs/{digest}"),
            get(f"/v1/consensus/{h}"),
            get("/v1/blocks", params={"start": first, "limit": most}),
            get(f"/v1/blobs/{digest}"),
            get(f"/v1/blobs/{digest}/manifest"),
            get(f"/v1/blobs/{digest}/upload", params={"size": n}),
            get(f"/v1/blobs/{initial}", headers={"Range": rng}),
        ]
        for r in responses:
            assert r.status_code in (200, 206, 404, 416), (r.request.url, r.text)

    check()


def test_status_genesis_and_blocks(local: LocalNode) -> None:
    status = StatusResponse.model_validate(local.client.get("/v1/status").json())
    assert status.genesis == local.node.genesis_hash and status.height == 0
    assert status.me.did == did("alice") and status.me.role == "validator"
    assert {m.name for m in status.members} == {"alice", "bob", "carol", "dave"}
    assert status.alarm is None
    genesis = local.client.get("/v1/genesis").json()
    assert genesis["document"] == local.node.chain.document
    for _ in range(3):
        local.mine()  # the open_round of round 1, then nothing
    blocks = local.client.get("/v1/blocks", params={"start": 0, "limit": 1000}).json()["blocks"]
    assert [b["header"]["height"] for b in blocks] == list(range(local.node.state.height + 1))
    assert all(b["commit"] for b in blocks[1:])
    bad = local.client.get("/v1/blocks", params={"start": "-1"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_query"


def test_tx_status_pending_committed_unknown(local: LocalNode) -> None:
    tx = make_tx(
        key("bob"),
        local.node.genesis_hash,
        TxKind.REMOVE_MEMBER,
        {"member": did("dave"), "reason": "t"},
    )
    with signed(local, key("bob")) as client:
        answer = client.post("/txs", json_body={"tx": tx.to_dict()})
    assert answer.status_code == 202 and answer.json() == {"hash": tx.hash, "status": "pending"}
    assert local.client.get(f"/v1/txs/{tx.hash}").json()["status"] == "pending"
    local.mine()
    committed = local.client.get(f"/v1/txs/{tx.hash}").json()
    assert committed["status"] == "committed" and committed["height"] == 1
    unknown = local.client.get(f"/v1/txs/{'0' * 64}")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_tx"
    assert local.client.get("/v1/txs/..%2Fetc").status_code in (400, 404)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"tx": {}, "tx": {}}', "malformed_body"),  # duplicate key
        (b'{"tx": {}, "extra": 1}', "malformed_body"),  # unknown field
        (b'{"tx": 1.5}', "malformed_body"),  # float
        (b"not json", "malformed_body"),
    ],
)
def test_malformed_bodies_are_refused(local: LocalNode, body: bytes, code: str) -> None:
    with signed(local, key("bob")) as client, pytest.raises(Refusal) as info:
        client.post("/txs", content=body, headers={"Content-Type": "application/json"})
    assert info.value.status == 400 and info.value.code == code
    assert len(local.node.mempool) == 0


def test_consensus_route_is_for_validators_only(local: LocalNode) -> None:
    outsider = nacl.signing.SigningKey(b"\x07" * 32)
    with signed(local, outsider) as client, pytest.raises(Refusal) as info:
        client.post("/consensus", json_body={"vote": {}})
    assert info.value.status == 403 and info.value.code == "not_member"
    with signed(local, key("bob")) as client, pytest.raises(Refusal) as info:
        client.post("/consensus", json_body={"vote": {}, "proposal": {}})
    assert info.value.status == 400


def test_join_takes_the_signers_own_request_only(local: LocalNode) -> None:
    newcomer = nacl.signing.SigningKey(b"\x09" * 32)
    other = nacl.signing.SigningKey(b"\x0a" * 32)
    body = {"name": "erin", "roles": ["trainer"], "power": 0}
    tx = make_tx(newcomer, local.node.genesis_hash, TxKind.JOIN_REQUEST, body)
    with signed(local, other) as client, pytest.raises(Refusal) as info:
        client.post("/join", json_body={"tx": tx.to_dict()})
    assert info.value.code == "signer_not_author"
    with signed(local, newcomer) as client:
        assert client.post("/join", json_body={"tx": tx.to_dict()}).status_code == 202
        # the same newcomer may not use the member routes
        with pytest.raises(Refusal) as info:
            client.post("/txs", json_body={"tx": tx.to_dict()})
        assert info.value.status == 403


def test_unknown_route_answers_json(local: LocalNode) -> None:
    answer = local.client.get("/v1/nothing")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
