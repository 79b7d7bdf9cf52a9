"""The replay cache (issue 16, item 6): members' nonces cannot be evicted by strangers or by
another member, and a request accepted before a restart is not accepted again after it."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import httpx
import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.limits import NodeLimits, NonceCache, ReplayJournal
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.httpsig import sign_request

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BASE = "http://testserver"


def _key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _did(key: nacl.signing.SigningKey) -> str:
    return did_from_public_key(bytes(key.verify_key))


def _layer(
    members: set[str], *, clock: list[float], journal: Path | None = None, **limits: int
) -> TestClient:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(
        routes=[Route("/tx", ok, methods=["POST"]), Route("/status", ok, methods=["GET"])]
    )
    auth = SignatureAuth(
        inner,
        is_member=members.__contains__,
        limits=NodeLimits(**limits),
        clock=lambda: clock[0],
        replay_journal=journal,
    )
    return TestClient(auth, base_url=BASE)


def _signed(key: nacl.signing.SigningKey, method: str, path: str, created: int) -> dict[str, str]:
    body = b"{}" if method == "POST" else None
    headers = {"host": "testserver", "content-type": "application/json"}
    headers.update(sign_request(key, method, f"{BASE}{path}", headers, body, created=created))
    return headers


def _send(http: TestClient, headers: dict[str, str], method: str = "POST") -> httpx.Response:
    if method == "POST":
        return http.post("/tx", content=b"{}", headers=headers)
    return http.get("/status", headers=headers)


def test_strangers_flooding_signed_reads_cannot_refuse_a_members_request() -> None:
    """Shown with a cache of 10: before, 50 strangers' signed GETs raised a floor that refused
    the member's request signed a few seconds earlier."""
    member = _key()
    now = [time.time()]
    with _layer({_did(member)}, clock=now, max_nonces=10) as http:
        mine = _signed(member, "POST", "/tx", created=int(now[0]))
        now[0] += 5
        strangers = [_signed(_key(), "GET", "/status", created=int(now[0])) for _ in range(50)]
        answers = [_send(http, stranger, "GET") for stranger in strangers]
        assert answers[0].status_code == 200
        # strangers crowd out strangers only: their pool's floor refuses their own old reads
        assert {a.status_code for a in answers} <= {200, 401}
        response = _send(http, mine)
        assert response.status_code == 200, response.text
        assert _send(http, mine).json()["error"] == "replay"


def test_a_member_overflowing_its_share_refuses_only_its_own_old_requests() -> None:
    alice, bob = _key(), _key()
    now = [time.time()]
    with _layer({_did(alice), _did(bob)}, clock=now, nonces_per_member=8) as http:
        bobs = _signed(bob, "POST", "/tx", created=int(now[0]))
        alices_old = _signed(alice, "POST", "/tx", created=int(now[0]))
        now[0] += 5
        for _ in range(20):
            now[0] += 1
            assert _send(http, _signed(alice, "POST", "/tx", created=int(now[0]))).is_success
        assert _send(http, bobs).status_code == 200
        refused = _send(http, alices_old)
        assert refused.status_code == 401 and refused.json()["error"] == "replay"


def test_a_request_accepted_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    """Before, the cache was in memory only: the same signed request was accepted again by a
    node restarted 7.5 s later. Now what was signed before the start is refused, and the
    journal refuses what was signed ahead of the node's clock (the window allows 30 s)."""
    member = _key()
    journal = tmp_path / "node" / "replay.log"
    now = [time.time()]
    with _layer({_did(member)}, clock=now, journal=journal) as http:
        normal = _signed(member, "POST", "/tx", created=int(now[0]))
        ahead = _signed(member, "POST", "/tx", created=int(now[0]) + 25)
        assert _send(http, normal).status_code == 200
        assert _send(http, ahead).status_code == 200
    now[0] += 7.5  # the restart
    with _layer({_did(member)}, clock=now, journal=journal) as http:
        for replay in (normal, ahead):
            refused = _send(http, replay)
            assert refused.status_code == 401 and refused.json()["error"] == "replay"
        assert _send(http, _signed(member, "POST", "/tx", created=int(now[0]))).is_success


def test_a_restart_within_the_second_refuses_that_second(tmp_path: Path) -> None:
    member = _key()
    journal = tmp_path / "replay.log"
    now = [float(int(time.time())) + 0.1]
    with _layer({_did(member)}, clock=now, journal=journal) as http:
        signed = _signed(member, "POST", "/tx", created=int(now[0]))
        assert _send(http, signed).status_code == 200
    now[0] += 0.5  # restarted within the same second
    with _layer({_did(member)}, clock=now, journal=journal) as http:
        assert _send(http, signed).json()["error"] == "replay"


def test_without_a_journal_the_start_still_refuses_what_was_signed_before_it() -> None:
    member = _key()
    now = [time.time()]
    signed = _signed(member, "POST", "/tx", created=int(now[0]) - 3)
    with _layer({_did(member)}, clock=now) as http:
        refused = _send(http, signed)
        assert refused.json()["error"] == "replay"
        assert "before this node started" in refused.json()["message"]


def test_member_shares_are_bounded_in_number() -> None:
    cache = NonceCache(30, max_entries=4, per_member=4, max_members=2, clock=lambda: 100.0)
    for i in range(10):
        assert cache.check_and_add(f"did{i}", "n", 100 + i) is None
    assert len(cache._members) == 2  # the others were pooled with the strangers (4 at most)
    assert len(cache) == 2 + 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(-35, 35)), max_size=60),
    st.lists(st.text(max_size=30), max_size=5),
)
def test_journal_keeps_every_nonce_that_could_outlive_a_restart(
    notes: list[tuple[int, int, int]], garbage: list[str]
) -> None:
    """Whatever was noted (and whatever junk a torn write left), after a reload each noted
    request is refused: by its nonce, or because it is not after the last second kept."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replay.log"
        journal = ReplayJournal(path, max_lines=16)
        journal.load(horizon=0)
        start = 1_000_000.0
        noted: list[tuple[str, str, int]] = []
        for i, (signer, step, skew) in enumerate(notes):
            now = start + step
            created = int(now) + skew
            journal.note(f"k{signer}", f"n{i}", created, now=now)
            noted.append((f"k{signer}", f"n{i}", created))
        with open(path, "a", encoding="utf-8") as out:
            out.write("".join(g.replace("\n", " ") + "\n" for g in garbage))
            out.write(json.dumps([1, 2]) + "\n" + '{"c": "x"}\n')
        restarted_at = start + 41
        cache = NonceCache(
            30,
            not_before=int(restarted_at),
            journal=ReplayJournal(path, max_lines=16),
            clock=lambda: restarted_at,
        )
        for keyid, nonce, created in noted:
            if abs(created - restarted_at) <= 30:  # the signature window lets it through
                assert cache.check_and_add(keyid, nonce, created) is not None


def test_a_clock_set_back_does_not_stall_the_node_past_the_window(tmp_path: Path) -> None:
    journal = tmp_path / "replay.log"
    ReplayJournal(journal).note("k", "n", 10_000, now=10_000.5)
    cache = NonceCache(30, not_before=100, journal=ReplayJournal(journal), clock=lambda: 100.0)
    assert cache.not_before == 131
    assert cache.check_and_add("k", "m", 131) is None


def test_a_foreign_journal_line_with_an_infinite_number_is_skipped(tmp_path: Path) -> None:
    """``int(float('inf'))`` raises OverflowError, which ``load`` did not catch: a line such as
    ``{"s": 1e999}`` (or ``Infinity``, which json.loads accepts) stopped the node at start,
    where the docstring promises a torn or foreign line is skipped, never fatal."""
    journal = tmp_path / "replay.log"
    now = time.time()
    good = json.dumps({"k": "did:key:z6Mkx", "n": "abc", "c": int(now)})
    journal.write_text(
        '{"s": 1e999}\n{"s": Infinity}\n{"k": "a", "n": "b", "c": -1e999}\n' + good + "\n",
        encoding="utf-8",
    )
    last, kept = ReplayJournal(journal).load(horizon=now - 120)
    assert kept == [("did:key:z6Mkx", "abc", int(now))]
    assert last < int(now) + 1  # the infinite seconds were skipped, not taken as the last
