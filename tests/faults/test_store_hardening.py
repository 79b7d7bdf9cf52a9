"""Hardening of a node's home and stores against one member, a stranger or a slip of the
operator (issue 16, items 6, 8, 9 and 15), shown against real node processes.

One single-validator node (quorum 1 of 1), as in test_bad_input.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nacl.signing
import pytest

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.demo.launcher import LocalConsortium, free_ports
from bcfl_cli.node.clock import TEST_COLLECTION_RATE_ENV
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain
from bcfl_cli.wire.httpsig import sign_request
from tests.faults.helpers import lone_validator

pytestmark = [pytest.mark.network, pytest.mark.lone_node, pytest.mark.timeout(300)]

MIB = 1024 * 1024
#: How much faster than real time the restarted node's blob collection clock runs.
COLLECTION_CLOCK_RATE = 30


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalConsortium]:
    yield from lone_validator(tmp_path, MIB)


def test_a_second_node_on_the_same_home_exits_1_and_changes_nothing(node: LocalConsortium) -> None:
    """Item 15: the second start fails at once with one clear line; the first runs on, its
    ``node.json`` untouched, and no block is appended twice (no "cannot append" in its log)."""
    alice = node.members["alice"]
    node_file = alice.home.node_dir / "node.json"
    before = node_file.read_text(encoding="utf-8")
    height = node.status("alice")["height"]
    (other_port,) = free_ports(1)
    second = node.run_cli(
        "node", "--home", str(alice.home.root), "--listen", f"127.0.0.1:{other_port}", timeout=120
    )
    assert second.returncode == 1, second.stderr
    assert "another bcfl node" in second.stderr
    assert f"pid {alice.proc.pid if alice.proc else ''}" in second.stderr
    assert "Traceback" not in second.stderr
    assert node_file.read_text(encoding="utf-8") == before
    assert json.loads(before)["pid"] == (alice.proc.pid if alice.proc else None)
    node.wait_height(height + 2, ["alice"], timeout=60)
    assert alice.running
    assert "cannot append" not in node.log("alice", tail=10**7)


def test_the_home_lock_dies_with_its_node(node: LocalConsortium) -> None:
    """After a SIGKILL the kernel has released the lock: the node starts again at once."""
    node.kill("alice")
    node.start("alice", train=False)
    node.wait_ready("alice", timeout=120)
    assert node.members["alice"].running


def _signed_status(key: nacl.signing.SigningKey, url: str, created: int) -> dict[str, str]:
    headers = {"host": url.split("://", 1)[1]}
    headers.update(sign_request(key, "GET", f"{url}/v1/status", headers, None, created=created))
    return headers


def test_a_signed_request_is_not_accepted_again_after_a_restart(node: LocalConsortium) -> None:
    """Item 6: before, the replay cache was memory only, and the same signed request was
    accepted again once the node had restarted (7.5 s later in the report). One request signed
    now, one signed 25 s ahead (inside the ±30 s window, so that it is still fresh however long
    the restart takes here): both refused as replays after a restart, not only as stale."""
    alice = node.members["alice"]
    key = alice.identity.signing_key
    now = int(time.time())
    requests = {
        "now": _signed_status(key, alice.url, now),
        "ahead": _signed_status(key, alice.url, now + 25),
    }
    with httpx.Client(timeout=10.0) as http:
        for headers in requests.values():
            assert http.get(f"{alice.url}/v1/status", headers=headers).status_code == 200
        started = time.monotonic()
        assert node.stop("alice") == 0
        node.start("alice", train=False)
        node.wait_ready("alice", timeout=120)
        restart_s = time.monotonic() - started
        answers = {
            name: http.get(f"{alice.url}/v1/status", headers=headers)
            for name, headers in requests.items()
        }
    print(f"restart took {restart_s:.1f} s")
    for name, answer in answers.items():
        assert answer.status_code == 401, (name, answer.text)
    assert answers["ahead"].json()["error"] == "replay", answers["ahead"].text
    if time.time() - now < 28:  # else the first is merely stale
        assert answers["now"].json()["error"] == "replay", answers["now"].text


def _junk_bytes(store: BlobStore, keep: set[str]) -> int:
    return sum(store.size(d) for d in store.iter_hashes() if d not in keep)


def test_one_members_junk_uploads_are_bounded_then_collected(node: LocalConsortium) -> None:
    """Item 8: before, every hash-matching upload was kept for ever (5 requests grew a store by
    20 MiB). Now the blobs a member stored that no block names count against its quota (16 MiB
    here: 4 blobs of the genesis's 1 MiB limit, at least 16 MiB), its newest displacing its
    oldest; and a node with ``--blob-retention 60s`` removes them a minute later, while the
    chain's own blobs stay and the chain still verifies.

    The minute is the node's: its collection clock runs 30 times real time here
    (``BCFL_TEST_COLLECTION_CLOCK_RATE``), so the retention and the 16 passes that cover the
    store take seconds instead of two minutes; the process and its flags are the real ones."""
    alice = node.members["alice"]
    store = BlobStore(alice.home.blob_dir)
    chain_blobs = set(store.iter_hashes())
    scratch = BlobStore(alice.home.root.parent / "scratch")
    with SignedClient(alice.identity.signing_key, f"{alice.url}/v1", retries=1) as client:
        for i in range(24):
            digest = scratch.put(hashlib.shake_256(b"junk %d" % i).digest(MIB))
            upload_blob(client, digest, scratch)
    grown = _junk_bytes(store, chain_blobs)
    print(f"24 junk uploads of 1 MiB grew the store by {grown / MIB:.1f} MiB")
    assert grown <= 16 * MIB
    node.stop("alice")
    node.extra_env[TEST_COLLECTION_RATE_ENV] = str(COLLECTION_CLOCK_RATE)
    node.start("alice", train=False, extra=["--blob-retention", "60s"])
    node.wait_ready("alice", timeout=120)
    deadline = time.monotonic() + 150
    while _junk_bytes(store, chain_blobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _junk_bytes(store, chain_blobs) == 0, node.log("alice")
    assert chain_blobs <= set(store.iter_hashes())
    with Ledger.open(alice.home) as ledger:
        assert verify_chain(ledger, workers=1).fault is None
