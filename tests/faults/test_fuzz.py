"""Property-based fuzzing of every HTTP route of a real node, from its OpenAPI description.

schemathesis generates requests for every operation ``GET /openapi.json`` lists (valid and
invalid bodies, path and query values); requests to signed routes are signed by a member
(RFC 9421), so the fuzzed bodies reach the body validation behind the signature check. A node
must answer every one with a non-5xx status, never crash, change no state (no member, pending
member or transaction from the fuzz), and stay within 50 MB of memory growth.

The node's description declares request bodies and every path, query and header parameter
with its type and bounds, and schemathesis's default modes generate both values within them
and values outside them (wrong types, out of bounds, bad patterns). The short run (~300
requests) is in CI; the ``slow`` one sends at least 10,000.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bcfl_cli.demo.launcher import LocalConsortium
from bcfl_cli.wire.httpsig import sign_request
from tests.faults.helpers import members, plan

pytestmark = [pytest.mark.network]

MEMORY_BOUND = 50 * 1024 * 1024
SIGNED = {
    ("post", "/v1/txs"),
    ("post", "/v1/updates"),
    ("post", "/v1/join"),
    ("post", "/v1/consensus"),
}
COUNTS = {"requests": 0}


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class FuzzNode:
    def __init__(self, root: Path) -> None:
        self.c = LocalConsortium(root, members(["alice"]), plan(validators=1, min_updates=1))
        self.c.start("alice", train=False)
        self.c.wait_ready("alice", timeout=120)
        self.member = self.c.members["alice"]
        self.url = self.member.url
        self.key = self.member.identity.signing_key
        self.http = httpx.Client(timeout=15.0)
        assert self.member.proc is not None
        self.pid = self.member.proc.pid
        self.rss_before = _rss(self.pid)
        self.before = self.c.status("alice")

    def document(self) -> dict[str, Any]:
        """The description as the node serves it; every path parameter must be declared."""
        doc: dict[str, Any] = self.http.get(self.url + "/openapi.json").json()
        for path, ops in doc["paths"].items():
            for op in ops.values():
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert declared == set(re.findall(r"{(\w+)}", path)), path
        return doc

    def send(self, case: schemathesis.Case) -> httpx.Response:
        kw = case.as_transport_kwargs(base_url=self.url)
        # Generated header values may hold any character: sent as their UTF-8 bytes. What no
        # HTTP/1.1 message can carry in a field value (RFC 9110 5.5: control characters other
        # than tab, and leading or trailing spaces and tabs) is dropped, as httpx refuses to send
        # it and a server never sees it.
        headers: dict[str, str | bytes] = {}
        for k, v in (kw.get("headers") or {}).items():
            value = "".join(c for c in str(v) if c == "\t" or (c >= " " and c != "\x7f"))
            value = value.strip(" \t")
            headers[k] = value if value.isascii() else value.encode()
        body: bytes | None = None
        if "json" in kw and kw["json"] is not None:
            import json

            body = json.dumps(kw["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        elif kw.get("data") is not None:
            data = kw["data"]
            body = data if isinstance(data, bytes) else str(data).encode()
        request = self.http.build_request(
            kw["method"], kw["url"], params=kw.get("params"), headers=headers, content=body
        )
        if (case.method.lower(), case.path) in SIGNED or case.method.lower() == "put":
            request.headers.update(
                sign_request(
                    self.key, request.method, str(request.url), dict(request.headers), body or b""
                )
            )
        COUNTS["requests"] += 1
        return self.http.send(request)

    def close(self) -> None:
        self.http.close()
        self.c.close()


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    node = FuzzNode(tmp_path_factory.mktemp("fuzz"))
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def node_schema(fuzz_node: FuzzNode) -> Any:
    """Explicit examples and random (positive and negative) generation only: schemathesis's
    coverage phase derives boundary cases from every bounded parameter up front, which takes
    minutes for the 64-hex hash patterns on a loaded CI machine."""
    loaded = schemathesis.openapi.from_dict(fuzz_node.document())
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    return loaded


@pytest.fixture(scope="module")
def node_schema_full(fuzz_node: FuzzNode) -> Any:
    """Every phase, the coverage phase's boundary and wrong-type cases included."""
    return schemathesis.openapi.from_dict(fuzz_node.document())


schema = schemathesis.pytest.from_fixture("node_schema")
schema_full = schemathesis.pytest.from_fixture("node_schema_full")
QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def _check(fuzz_node: FuzzNode, case: schemathesis.Case) -> None:
    response = fuzz_node.send(case)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    assert fuzz_node.member.running, fuzz_node.c.log("alice")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=QUIET, derandomize=True)
def test_fuzz_every_route_short(case: schemathesis.Case, fuzz_node: FuzzNode) -> None:
    _check(fuzz_node, case)


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
@schema_full.parametrize()
@settings(max_examples=1200, deadline=None, suppress_health_check=QUIET)
def test_fuzz_every_route_long(case: schemathesis.Case, fuzz_node: FuzzNode) -> None:
    _check(fuzz_node, case)


def test_fuzzing_changed_nothing_and_memory_stayed_bounded(fuzz_node: FuzzNode) -> None:
    after = fuzz_node.c.status("alice")
    before = fuzz_node.before
    assert after["members"] == before["members"] and after["pending_members"] == []
    assert after["alarm"] is None and after["mempool"] == 0
    kinds: dict[str, int] = {}
    start = 1
    while blocks := fuzz_node.c.blocks("alice", start, 100):
        for raw in blocks:
            for tx in raw["txs"]:
                kinds[tx["tx"]["kind"]] = kinds.get(tx["tx"]["kind"], 0) + 1
        start = blocks[-1]["header"]["height"] + 1
    # only what the node itself proposes without any member's input
    assert set(kinds) <= {"open_round", "aggregate"}, kinds
    growth = _rss(fuzz_node.pid) - fuzz_node.rss_before
    print(f"fuzz figures: requests {COUNTS['requests']}, rss growth {growth / 2**20:.1f} MiB")
    assert COUNTS["requests"] > 0
    assert growth < MEMORY_BOUND, growth
    assert fuzz_node.c.stop("alice") == 0
