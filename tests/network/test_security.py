"""Hostile requests against a real ``bcfl node`` process: each gets a clear 4xx or a recorded
rejection, and none changes anything.

A one-validator consortium (alice; quorum 1 of 1) keeps the process count at one. Every refusal
must be a JSON ``{"error", "message"}`` body, and the node must still work afterwards.
"""

from __future__ import annotations

import base64
import pickle
import time

import httpx
import nacl.signing
import pytest

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.httpsig import sign_request
from tests.network.cluster import Cluster, wait_for
from tests.network.conftest import MakeCluster

pytestmark = [pytest.mark.network, pytest.mark.lone_node, pytest.mark.timeout(180)]


def post(url: str, key: nacl.signing.SigningKey, body: bytes, **sign_kw: object) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    headers.update(sign_request(key, "POST", url, headers, body, **sign_kw))  # type: ignore[arg-type]
    return httpx.post(url, content=body, headers=headers, timeout=10)


def refused(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error", "message"} and data["message"]
    if code is not None:
        assert data["error"] == code, data


def test_hostile_requests_change_nothing(cluster: MakeCluster) -> None:
    c: Cluster = cluster(["alice"], config={"rounds": 5, "min_updates": 1, "deadline_blocks": 8})
    alice = c.start("alice", train=False)
    c.wait_ready("alice")
    key = alice.identity.signing_key
    url = alice.url + "/v1/txs"
    chain = c.genesis_hash
    stranger = nacl.signing.SigningKey(b"\x42" * 32)
    harmless = make_tx(
        key, chain, TxKind.APPROVE_MEMBER, {"member": alice.did, "request": "0" * 64}
    )
    body = canonical({"tx": harmless.to_dict()})
    before = c.status("alice")

    # forged signature: valid headers, signature bytes replaced
    headers = {"Content-Type": "application/json"}
    headers.update(sign_request(key, "POST", url, headers, body))
    headers["Signature"] = "bcfl=:" + base64.b64encode(b"\x00" * 64).decode() + ":"
    refused(httpx.post(url, content=body, headers=headers, timeout=10), 401)

    # replayed request: the first is judged (and refused on its merits), the replay is refused
    headers = {"Content-Type": "application/json"}
    headers.update(sign_request(key, "POST", url, headers, body))
    refused(httpx.post(url, content=body, headers=headers, timeout=10), 422, "no_pending_request")
    refused(httpx.post(url, content=body, headers=headers, timeout=10), 401, "replay")

    # a non-member, a stale `created`, a digest that does not match the body
    refused(post(url, stranger, body), 403, "not_member")
    refused(post(url, key, body, created=int(time.time()) - 3600), 401)
    headers = {"Content-Type": "application/json"}
    headers.update(sign_request(key, "POST", url, headers, body))
    refused(httpx.post(url, content=body + b" ", headers=headers, timeout=10), 401)

    # an oversized body, a malformed body, duplicate keys
    refused(post(url, key, b"{" + b" " * (9 * 1024 * 1024) + b"}"), 413, "body_too_large")
    refused(post(url, key, b'{"tx": {"tx": 1'), 400, "malformed_body")
    refused(post(url, key, b'{"tx": {}, "tx": {}}'), 400, "malformed_body")

    # path traversal in blob names
    for name in ("..%2F..%2Fidentity.key", "../identity.key", "%2e%2e%2fchain.sqlite"):
        answer = httpx.get(alice.url + "/v1/blobs/" + name, timeout=10)
        assert 400 <= answer.status_code < 500 and b"did:key" not in answer.content
    with SignedClient(key, alice.url + "/v1", retries=0) as client:
        answer = client.request(
            "PUT",
            "/blobs/..%2Fx/chunks/0",
            params={"size": 3},
            content=b"abc",
            allow=range(400, 500),
        )
        assert 400 <= answer.status_code < 500

    after = c.status("alice")
    assert after["mempool"] == 0 and after["members"] == before["members"]
    assert after["pending_members"] == []

    # a pickle uploaded as an update: stored as bytes (never loaded), rejected by the contract
    wait_for(lambda: c.status("alice")["round"]["state"] == "open", 60, "round 1 open")
    rnd = c.status("alice")["round"]
    payload = pickle.dumps({"weight": [1.0, 2.0]}) * 64
    scratch = BlobStore(c.root / "scratch")
    digest = scratch.put(payload)
    with SignedClient(key, alice.url + "/v1") as client:
        upload_blob(client, digest, scratch)
        tx = make_tx(
            key,
            chain,
            TxKind.UPDATE,
            {
                "round": rnd["number"],
                "base_model": rnd["base_model"],
                "blob": digest,
                "blob_size": len(payload),
                "num_samples": 10,
                "metrics": {},
            },
        )
        assert client.post("/txs", json_body={"tx": tx.to_dict()}).status_code == 202
        status = wait_for(
            lambda: (s := client.get(f"/txs/{tx.hash}").json())["status"] == "committed" and s,
            60,
            "the pickle update to be committed with its verdict",
        )
        block = client.get("/blocks", params={"start": status["height"], "limit": 1}).json()[
            "blocks"
        ][0]
    verdicts = [t["tx"]["body"] for t in block["txs"] if t["tx"]["kind"] == "validation"]
    assert verdicts and verdicts[0]["update"] == tx.hash
    assert verdicts[0]["verdict"] == "reject" and verdicts[0]["reason"] == "malformed_blob"
    final = c.status("alice")
    assert tx.hash not in final["round"]["updates"]
    assert final["alarm"] is None and c.stop("alice") == 0
