"""The chain explorer in-process: its page, its read routes, the proof download and its bounds.

A real round on the harness node (three honest updates and one NaN update the contract
rejects), then the routes the page reads, checked against the chain; the browser test is
tests/faults/test_explorer_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request

from bcfl_cli.node.explorer import index as index_module
from bcfl_cli.node.explorer import routes
from bcfl_cli.node.explorer.index import RoundIndex
from bcfl_cli.node.explorer.routes import PROOF_BURST, ProofCache
from bcfl_cli.node.trainer import AutoTrainer, attack_by_name, load_training_data
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.provenance.verify import verify_model
from tests.node._node_harness import LocalNode, key, part


def _trainer(local: LocalNode, name: str, index: int, **kw: object) -> AutoTrainer:
    async def submit(tx: Transaction, told: frozenset[str]) -> object:
        return local.node.pool.submit(tx, seen=told)

    return AutoTrainer(
        key=key(name),
        data=load_training_data(part(index), local.state),
        blobs=local.node.blobs,
        state=lambda: local.state,
        submit=submit,
        seed=index,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNode, dict[str, str]]]:
    """One closed round: alice, bob and carol accepted, dave's NaN update rejected."""
    local = LocalNode(tmp_path_factory.mktemp("explorer"))
    local.auto_mine = False
    local.mine()  # round 1 opens
    local.open_rounds = False  # and no other
    txs: dict[str, str] = {}
    for i, name in enumerate(("alice", "bob", "carol", "dave"), start=1):
        attack = {"attack": attack_by_name("nan")} if name == "dave" else {}
        tx = asyncio.run(_trainer(local, name, i, **attack).step())
        assert tx is not None
        txs[name] = tx.hash
    for _ in range(6):
        if not local.state.round.open:
            break
        local.mine()
    assert not local.state.round.open, "round 1 did not close"
    yield local, txs
    local.close()


def test_page_and_static_files_are_served_with_a_strict_policy(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    local, _ = played
    page = local.client.get("/explorer/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # nothing is loaded from elsewhere: every src/href of the page is this node's
    assert "http" not in page.text.replace("http-equiv", "")
    for name, kind in (("explorer.js", "javascript"), ("explorer.css", "css")):
        r = local.client.get(f"/explorer/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    script = local.client.get("/explorer/static/explorer.js").text
    assert "innerHTML" not in script and "eval(" not in script
    for bad in ("../app.py", "..%2Fapp.py", "index.html", "explorer.jsx", "%00"):
        assert local.client.get(f"/explorer/static/{bad}").status_code == 404, bad


def test_the_explorer_answers_only_to_this_nodes_names(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    local, _ = played
    for path in ("/explorer/", "/explorer/static/explorer.js", "/explorer/proof/1"):
        r = local.client.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 421 and r.json()["error"] == "misdirected", path
    assert local.client.get("/explorer/", headers={"Host": "testserver:80"}).status_code == 200


def test_rounds_show_verdicts_reasons_and_inclusion(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    local, txs = played
    body = local.client.get("/v1/rounds").json()
    assert body["latest"] >= 1 and body["height"] == local.state.height
    first = body["rounds"][0]
    assert first["number"] == 1 and first["state"] == "closed"
    by_name = {u["name"]: u for u in first["updates"]}
    assert by_name["dave"]["verdict"] == "reject" and by_name["dave"]["reason"] == "non_finite"
    assert not by_name["dave"]["included"] and by_name["dave"]["tx"] == txs["dave"]
    honest = [by_name[n] for n in ("alice", "bob", "carol")]
    assert all(u["verdict"] == "accept" and u["included"] for u in honest)
    assert (first["accepted"], first["rejected"]) == (3, 1)
    # this harness's plan counts its deadline in blocks only: no deadline in block time
    assert first["deadline_height"] > first["opened_at"] and first["deadline_time"] is None
    # the aggregate named exactly the included updates
    agg = local.client.get(f"/v1/txs/{first['aggregate_tx']}").json()
    assert sorted(agg["tx"]["tx"]["body"]["updates"]) == sorted(u["tx"] for u in honest)
    assert first["model"] == local.state.round.model or local.state.round.number > 1
    # pages are bounded
    assert local.client.get("/v1/rounds?start=2&limit=0").json()["rounds"] == []
    assert len(local.client.get("/v1/rounds?limit=100000").json()["rounds"]) <= 100
    for bad in ("-1", "x", "1" * 16, "²"):
        assert local.client.get(f"/v1/rounds?start={bad}").status_code == 400, bad


def test_a_block_lists_its_transactions(played: tuple[LocalNode, dict[str, str]]) -> None:
    local, txs = played
    rounds = local.client.get("/v1/rounds").json()["rounds"]
    height = next(u["height"] for u in rounds[0]["updates"] if u["name"] == "dave")
    body = local.client.get(f"/v1/blocks/{height}").json()
    assert body["block"]["header"]["height"] == height
    assert txs["dave"] in body["tx_hashes"]
    i = body["tx_hashes"].index(txs["dave"])
    assert body["tx_kinds"][i] == "update" and body["tx_kinds"][i + 1] == "validation"
    tx = local.client.get(f"/v1/txs/{txs['dave']}").json()
    assert tx["status"] == "committed" and tx["height"] == height
    assert local.client.get(f"/v1/blocks/{local.state.height + 1}").status_code == 404
    assert local.client.get("/v1/blocks/1e3").status_code == 400


def test_proof_download_verifies_and_is_cached(
    played: tuple[LocalNode, dict[str, str]], tmp_path: Path
) -> None:
    local, _ = played
    r = local.client.get("/explorer/proof/1")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert "round-1.proof.json.gz" in r.headers["content-disposition"]
    json.loads(gzip.decompress(r.content))  # plain gzip JSON, as bcfl model export writes
    # what the page tells the user to run: the model from /v1/blobs, checked offline
    rounds = local.client.get("/v1/rounds").json()["rounds"]
    model = tmp_path / "round-1.safetensors"
    model.write_bytes(local.client.get(f"/v1/blobs/{rounds[0]['model']}").content)
    report = verify_model(r.content, local.node.genesis_hash, model, workers=1)
    assert report.ok and report.round == 1, report.to_dict()
    # a cached proof costs no build, so the rate limit never refuses it
    for _ in range(int(PROOF_BURST) + 3):
        assert local.client.get("/explorer/proof/1").status_code == 200
    for missing in ("0", str(local.state.round.number + 5)):
        assert local.client.get(f"/explorer/proof/{missing}").status_code == 404


def test_proof_builds_are_rate_limited_per_address(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    """Cache misses cost a ledger scan each: an address gets PROOF_BURST, then 429.

    On a still clock, as below: under load three builds outlasted one refill (10 s)."""
    local, _ = played
    explorer = _explorer(local)
    explorer.proofs = ProofCache(max_entries=0)  # every request a miss
    explorer.proof_limiter = routes.TokenBucketLimiter(
        routes.PROOF_RATE_PER_S, PROOF_BURST, clock=lambda: 0.0
    )
    explorer.proof_builds = routes.TokenBucketLimiter(100.0, 100.0)  # the address's bound alone
    codes = [local.client.get("/explorer/proof/1").status_code for _ in range(int(PROOF_BURST) + 2)]
    assert codes.count(200) <= PROOF_BURST and codes[-1] == 429, codes
    refused = local.client.get("/explorer/proof/1")
    assert refused.json()["error"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1


def test_proof_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = ProofCache(max_entries=2, max_bytes=10)
    cache.put(1, b"aaaa")
    cache.put(2, b"bbbb")
    cache.get(1)
    cache.put(3, b"cccc")  # evicts 2, the least recently used
    assert cache.get(2) is None and cache.get(1) == b"aaaa" and len(cache) == 2
    cache.put(4, b"dddddddd")  # 12 bytes with one other: evicts down to fit
    assert cache.size <= 10
    cache.put(5, b"x" * 11)  # larger than the whole cache: never kept
    assert cache.get(5) is None


def _explorer(local: LocalNode):  # type: ignore[no-untyped-def]
    app = local.client.app
    while not isinstance(app, Starlette):  # peel the read-timeout and auth layers
        app = app.members if hasattr(app, "members") else app.app  # type: ignore[attr-defined]
    return app.state.explorer


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_text_colours_have_at_least_4_5_to_1_contrast() -> None:
    """WCAG AA for normal text: every text colour of the style sheet on both backgrounds."""
    css = (Path(routes.__file__).parent / "static" / "explorer.css").read_text()
    colours = dict(re.findall(r"--([a-z]+):\s*(#[0-9a-fA-F]{6})", css))
    for text in ("fg", "muted", "link", "ok", "bad", "warn", "focus"):
        for background in ("bg", "panel"):
            lighter, darker = sorted(
                (_luminance(colours[text]), _luminance(colours[background])), reverse=True
            )
            ratio = (lighter + 0.05) / (darker + 0.05)
            limit = 3.0 if text == "focus" else 4.5  # a focus ring is a graphic: 3:1
            assert ratio >= limit, (text, background, round(ratio, 2))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=6), st.integers(1, 5))
def test_the_index_is_the_same_however_it_catches_up(
    played: tuple[LocalNode, dict[str, str]], stops: list[int], chunk: int
) -> None:
    """Folding the chain in any steps, any chunk size, gives the rounds one pass gives."""
    local, _ = played
    ledger, top = local.node.ledger, local.state.height
    whole = RoundIndex()
    asyncio.run(whole.catch_up(ledger.blocks, top))
    stepped = RoundIndex()
    for stop in sorted(min(s, top) for s in stops) + [top]:
        with patch.object(index_module, "CATCH_UP_CHUNK", chunk):
            asyncio.run(stepped.catch_up(ledger.blocks, stop))
    name = local.state.name_of
    assert [r.to_dict(name) for r in stepped.page(0, 100)] == [
        r.to_dict(name) for r in whole.page(0, 100)
    ]
    assert stepped.height == whole.height == top


def test_rounds_answers_are_cut_at_whole_rounds_past_the_update_bound(
    played: tuple[LocalNode, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, _ = played
    monkeypatch.setattr(routes, "MAX_UPDATES_PER_RESPONSE", 1)
    rounds = local.client.get("/v1/rounds").json()["rounds"]
    assert len(rounds) == 1 and len(rounds[0]["updates"]) == 4  # one round always goes whole


def test_proof_builds_past_the_waiting_bound_are_refused_at_once(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    local, _ = played
    explorer = _explorer(local)
    explorer.proofs = ProofCache(max_entries=0)
    explorer.proof_limiter = routes.TokenBucketLimiter(100.0, 100.0)
    explorer.proof_builds = routes.TokenBucketLimiter(100.0, 100.0)
    explorer._waiting = routes.PROOF_MAX_WAITING  # as many as allowed are queued already
    try:
        r = local.client.get("/explorer/proof/1")
    finally:
        explorer._waiting = 0
    assert r.status_code == 503 and r.json()["error"] == "busy"


def test_proof_builds_are_rate_limited_in_all(played: tuple[LocalNode, dict[str, str]]) -> None:
    """Many addresses (an IPv6 prefix) still share one bound on builds, each a process.

    The bucket's clock stands still: each build is a child process, and under load the burst's
    builds took longer than one refill (10 s), so the last request found a new token and the
    test failed on the machine's speed, not on the bound."""
    local, _ = played
    explorer = _explorer(local)
    explorer.proofs = ProofCache(max_entries=0)
    explorer.proof_limiter = routes.TokenBucketLimiter(100.0, 100.0)  # as if each a new address
    explorer.proof_builds = routes.TokenBucketLimiter(
        routes.PROOF_TOTAL_RATE_PER_S, routes.PROOF_TOTAL_BURST, max_keys=1, clock=lambda: 0.0
    )
    n = int(routes.PROOF_TOTAL_BURST)
    codes = [local.client.get("/explorer/proof/1").status_code for _ in range(n + 1)]
    assert codes == [200] * n + [429], codes


def test_a_client_that_leaves_does_not_free_the_build_slot(
    played: tuple[LocalNode, dict[str, str]],
) -> None:
    """Cancelled while its proof builds, a request leaves the build running in the one slot
    (no second child beside it) and the proof cached for the next request."""
    local, _ = played
    node = local.node
    explorer = routes.Explorer(node.chain, node.ledger, names_me=lambda host, address: True)

    def request() -> Request:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/explorer/proof/1",
            "path_params": {"round": "1"},
            "headers": [(b"host", b"testserver")],
            "query_string": b"",
            "client": ("10.0.0.1", 1),
        }
        return Request(scope)

    async def scenario() -> None:
        first = asyncio.create_task(explorer.proof(request()))
        for _ in range(500):  # bounded: 5 s for the build to start
            if explorer._build_slot.locked():
                break
            await asyncio.sleep(0.01)
        assert explorer._build_slot.locked()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert explorer._build_slot.locked() and len(explorer._builds) == 1
        await asyncio.wait_for(asyncio.gather(*explorer._builds), 120)
        assert explorer.proofs.get(1) is not None and explorer._waiting == 0
        again = await explorer.proof(request())
        assert again.status_code == 200

    asyncio.run(scenario())


def test_a_round_with_a_deadline_in_time_shows_it() -> None:
    from bcfl_cli.node.explorer.index import RoundSummary

    timed = RoundSummary(1, 3, "ab" * 32, "cd" * 32, 0, deadline_time=1_767_225_600_000)
    view = timed.to_dict(lambda did: did)
    assert view["deadline_time"] == 1_767_225_600_000 and view["deadline_height"] == 0
