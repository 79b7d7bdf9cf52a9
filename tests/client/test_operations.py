"""The library behind join, members, submit, status and model export, against the real node app
in-process (tests/node/_node_harness.py) and, for lying nodes, httpx.MockTransport."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import bcfl_cli.client as ops
from bcfl_cli.errors import BlobError, NodeError, UsageError, VerificationError
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.training.local_round import train_for_round
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.schemas import MemberView, PeerView
from tests.conftest import PASSPHRASE, MakeHome
from tests.node._node_harness import LocalNode, consortium_home, did, key, part


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    yield harness
    harness.close()


def _join(local: LocalNode, make_home: MakeHome, name: str = "erin") -> ops.JoinOutcome:
    member = make_home(name)
    with local.api(member.identity.signing_key) as api:
        remote = ops.fetch_genesis(api)
        ops.check_pinned_hash(remote, remote.hash.upper())
        return ops.join_consortium(
            member.home,
            member.identity.signing_key,
            api,
            remote,
            name=name,
            roles=["trainer"],
            power=0,
        )


def test_join_pins_genesis_and_requests_admission(local: LocalNode, make_home: MakeHome) -> None:
    outcome = _join(local, make_home)
    assert outcome.ledger_created and outcome.approvals_needed == 3
    assert outcome.genesis_hash == local.node.genesis_hash
    assert set(outcome.validators) == {"alice", "bob", "carol", "dave"}
    erin_home = Home.resolve(local.home.root.parent / "homes" / "erin")
    with Ledger.open(erin_home) as ledger:
        assert ledger.genesis_hash == local.node.genesis_hash
        assert ledger.blobs.verify(ledger.document["initial_model"])
    # the request was committed by the miner: pending, with no approval yet
    view = ops.members_view(local.state)
    assert [(p.name, p.approvals) for p in view.pending] == [("erin", [])]
    assert view.pending[0].request == outcome.tx_hash


def test_join_refuses_wrong_pin_and_other_genesis(
    local: LocalNode, make_home: MakeHome, tmp_path: Path
) -> None:
    member = make_home("frank")
    with local.api(member.identity.signing_key) as api:
        remote = ops.fetch_genesis(api)
        with pytest.raises(VerificationError, match="not the expected"):
            ops.check_pinned_hash(remote, "ab" * 32)
        # a home that already pins another consortium is refused, nothing is sent
        other = LocalNode(tmp_path / "other", edit={'name = "': 'name = "Other '})
        try:
            with other.api(member.identity.signing_key) as other_api:
                ops.join_consortium(
                    member.home,
                    member.identity.signing_key,
                    other_api,
                    ops.fetch_genesis(other_api),
                    name="frank",
                    roles=["trainer"],
                    power=0,
                )
        finally:
            other.close()
        with pytest.raises(Exception, match="already holds consortium"):
            ops.join_consortium(
                member.home,
                member.identity.signing_key,
                api,
                remote,
                name="frank",
                roles=["trainer"],
                power=0,
            )
    # a founder cannot ask to join
    with local.api(key("bob")) as api, pytest.raises(UsageError, match="already a member"):
        ops.join_consortium(
            Home.resolve(tmp_path / "bob2"),
            key("bob"),
            api,
            ops.fetch_genesis(api),
            name="bob2",
            roles=["trainer"],
            power=0,
        )


def test_rejoin_keeps_ledger_and_reports_the_nodes_refusal(
    local: LocalNode, make_home: MakeHome
) -> None:
    _join(local, make_home)
    erin = Home.resolve(local.home.root.parent / "homes" / "erin")
    identity = load_identity(erin, PASSPHRASE)
    with local.api(identity.signing_key) as api:
        remote = ops.fetch_genesis(api)
        with pytest.raises(Refusal) as refused:
            ops.join_consortium(
                erin, identity.signing_key, api, remote, name="erin", roles=["trainer"], power=0
            )
    assert refused.value.code == "request_pending"


def test_fetch_genesis_refuses_a_document_that_does_not_match(tmp_path: Path) -> None:
    with Ledger.open(consortium_home(tmp_path)) as ledger:
        document = dict(ledger.document)
        block = ledger.block(0).to_dict()
    document["consortium"] = dict(document["consortium"], name="Evil Twin")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/genesis"
        return httpx.Response(200, content=canonical({"block": block, "document": document}))

    api = ops.NodeApi("http://evil", transport=httpx.MockTransport(handler), retries=0)
    with pytest.raises(VerificationError, match="not the hash of its document"):
        ops.fetch_genesis(api)


def test_approve_until_admitted_then_remove(local: LocalNode, make_home: MakeHome) -> None:
    outcome = _join(local, make_home)
    changes = []
    for name in ("alice", "bob", "carol"):
        with local.api(key(name)) as api:
            changes.append(ops.approve_member(local.home, key(name), api, "erin", wait_s=5))
    assert [(c.approvals, c.effective) for c in changes] == [(1, False), (2, False), (3, True)]
    member = local.state.member(outcome.did)
    assert member is not None and member.active and member.roles == ("trainer",)
    with local.api(key("dave")) as api, pytest.raises(UsageError, match="already a member"):
        ops.approve_member(local.home, key("dave"), api, outcome.did)
    removals = []
    for name in ("alice", "bob", "dave"):
        with local.api(key(name)) as api:
            removals.append(
                ops.remove_member(local.home, key(name), api, "erin", reason="left", wait_s=5)
            )
    assert [r.effective for r in removals] == [False, False, True]
    view = ops.members_view(local.state)
    assert {m.name: m.status for m in view.members}["erin"] == "removed"
    with local.api(key("alice")) as api, pytest.raises(UsageError, match="not an active member"):
        ops.remove_member(local.home, key("alice"), api, "erin")
    # from then on, erin's signed requests are refused at the door
    erin_home = Home.resolve(local.home.root.parent / "homes" / "erin")
    erin = load_identity(erin_home, PASSPHRASE)
    with Ledger.open(erin_home) as ledger:
        blobs = ledger.blobs
    blob = blobs.put(b"an update erin may no longer send" * 8)
    with local.api(erin.signing_key) as api, pytest.raises(Refusal) as refused:
        api.upload_blob(blob, blobs, progress=None)
    assert refused.value.status == 403 and refused.value.code == "not_member"


def test_approve_unknown_request(local: LocalNode) -> None:
    with local.api(key("alice")) as api, pytest.raises(UsageError, match="no pending join"):
        ops.approve_member(local.home, key("alice"), api, did("nobody"))


def _open_round(local: LocalNode) -> None:
    block = local.mine()
    assert block is not None and local.state.round.open


def test_submit_trained_update_is_accepted(local: LocalNode) -> None:
    _open_round(local)
    train_for_round(local.home, part(1), seed=1)
    path = ops.latest_update(local.home)
    assert path.name == "round-1.safetensors"
    update = ops.read_update(path)
    with local.api(key("alice")) as api:
        outcome = ops.submit_update(local.home, key("alice"), api, update, wait_s=5)
    assert outcome.accepted and outcome.reason == "ok" and outcome.height == 2
    assert outcome.to_json()["verdict"] == "accept"
    assert local.state.round.accepted_hashes == [outcome.tx_hash]


def test_submit_malformed_update_is_rejected_with_reason(local: LocalNode) -> None:
    _open_round(local)
    folder = ops.updates_dir(local.home)
    folder.mkdir()
    (folder / "round-1.safetensors").write_bytes(b"\x80\x04 not safetensors" * 8)
    sidecar = {
        "round": 1,
        "base_model": local.state.round.base_model,
        "num_samples": 50,
        "metrics": {"train_loss": "0.1"},
    }
    (folder / "round-1.json").write_text(json.dumps(sidecar))
    update = ops.read_update(ops.latest_update(local.home))
    with local.api(key("bob")) as api:
        outcome = ops.submit_update(local.home, key("bob"), api, update, wait_s=5)
    assert not outcome.accepted and outcome.reason == "malformed_blob"
    assert outcome.height is not None


def test_submit_refused_at_the_door_is_a_rejection(local: LocalNode) -> None:
    _open_round(local)
    train_for_round(local.home, part(1), seed=1)
    update = ops.read_update(ops.latest_update(local.home))
    wrong = ops.UpdateFile(
        update.path, 7, update.base_model, update.num_samples, update.metrics, blob=update.blob
    )
    with local.api(key("alice")) as api:
        outcome = ops.submit_update(local.home, key("alice"), api, wrong, wait_s=5)
    assert not outcome.accepted and outcome.reason == "wrong_round"


def test_read_update_checks(local: LocalNode, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no update in"):
        ops.latest_update(local.home)
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(b"x")
    with pytest.raises(UsageError, match="has no sidecar"):
        ops.read_update(lone)
    lone.with_suffix(".json").write_text('{"round": 1}')
    with pytest.raises(UsageError, match="missing or invalid field"):
        ops.read_update(lone)
    lone.with_suffix(".json").write_text(
        json.dumps({"round": 1, "base_model": "ab" * 32, "num_samples": 3, "chain_id": "cd" * 32})
    )
    update = ops.read_update(lone)
    with local.api(key("alice")) as api, pytest.raises(UsageError, match="trained for consortium"):
        ops.submit_update(local.home, key("alice"), api, update)


def test_status_and_tx_status(local: LocalNode) -> None:
    with local.api() as api:  # no member key: public reads
        status = ops.node_status(api)
        assert status["height"] == 0 and status["me"]["role"] == "validator"
        assert api.tx_status("ab" * 32).status == "unknown"
        with pytest.raises(NodeError, match="still unknown"):
            api.wait_for_tx("ab" * 32, timeout_s=0.1)
        assert api.block(5) is None


def test_model_export_round_zero_and_aggregate(
    local: LocalNode, make_home: MakeHome, tmp_path: Path
) -> None:
    out0 = tmp_path / "export" / "initial.safetensors"
    first = ops.export_model(local.home, out0)
    assert first.round == 0 and first.height is None
    initial = local.node.chain.document["initial_model"]
    assert hashlib.sha256(out0.read_bytes()).hexdigest() == initial
    _open_round(local)
    for index, name in ((1, "alice"), (2, "bob")):
        update = train_for_round(local.home, part(index), seed=index, force=True)
        with local.api(key(name)) as api:
            assert ops.submit_update(
                local.home, key(name), api, ops.read_update(update.path), wait_s=5
            ).accepted
    local.mine()  # the aggregate (min_updates = 2), and round 2 opens in the same block
    assert local.state.round.number == 2 and local.state.round.open
    out1 = tmp_path / "round1.safetensors"
    exported = ops.export_model(local.home, out1)
    assert exported.round == 1 and exported.model == local.state.round.model
    assert hashlib.sha256(out1.read_bytes()).hexdigest() == exported.model
    with pytest.raises(UsageError, match="has no aggregate"):
        ops.export_model(local.home, out1, round_number=2)
    # a joiner lacking a model blob fetches it from the node, checked
    _join(local, make_home)
    erin = Home.resolve(local.home.root.parent / "homes" / "erin")
    with Ledger.open(erin) as ledger:
        initial = ledger.document["initial_model"]
        ledger.blobs.path_for(initial).unlink()
    with pytest.raises(BlobError, match="is not in"):
        ops.export_model(erin, tmp_path / "e.safetensors", round_number=0)
    with local.api() as api:
        fetched = ops.export_model(erin, tmp_path / "e.safetensors", round_number=0, api=api)
    assert fetched.fetched and fetched.model == initial


def test_node_url_sources(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h")
    assert ops.node_url(home, "127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert ops.node_url(home, "https://node.example/v1") == "https://node.example"
    with pytest.raises(NodeError, match="no node recorded"):
        ops.node_url(home)
    home.node_dir.mkdir(parents=True)
    (home.node_dir / "node.json").write_text(json.dumps({"listen": "0.0.0.0:7421"}))
    assert ops.node_url(home) == "http://127.0.0.1:7421"
    (home.node_dir / "node.json").write_text(json.dumps({"url": "http://10.0.0.2:7420"}))
    assert ops.node_url(home) == "http://10.0.0.2:7420"
    both = {"url": "https://node.example", "listen": "127.0.0.1:7420"}
    (home.node_dir / "node.json").write_text(json.dumps(both))
    assert ops.node_url(home) == "http://127.0.0.1:7420"
    with pytest.raises(UsageError):
        ops.node_url(home, "ftp://x")


def test_parse_roles() -> None:
    assert ops.parse_roles("validator, trainer") == ["trainer", "validator"]
    with pytest.raises(UsageError):
        ops.parse_roles("admin")


def test_push_to_peers_offers_the_blob_and_reports_the_unreachable(
    local: LocalNode, tmp_path: Path
) -> None:
    peer = LocalNode(tmp_path / "peer")
    try:
        blob = local.node.blobs.put(b"an update blob" * 100)

        with local.api(key("alice")) as api:
            answer = api.status().model_dump(mode="json")
        answer["peers"] = [
            PeerView(
                url=url, did=None, height=None, head=None, last_seen=None, error=None
            ).model_dump(mode="json")
            for url in ("http://peer-ok", "http://peer-down")
        ]

        def status(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=answer)

        def connect(url: str) -> ops.NodeApi:
            if url == "http://peer-ok":
                return peer.api(key("alice"))
            return ops.NodeApi(url, transport=httpx.MockTransport(_refuse_all), retries=0)

        own = ops.NodeApi("http://own", transport=httpx.MockTransport(status), retries=0)
        missed = ops.push_to_peers(own, key("alice"), blob, local.node.blobs, connect=connect)
        assert peer.node.blobs.verify(blob)
        assert len(missed) == 1 and missed[0].startswith("http://peer-down: ")
    finally:
        peer.close()


def test_push_to_peers_skips_members_that_only_train(local: LocalNode) -> None:
    """Their nodes fetch each round's model, not the others' updates (issue 19)."""
    blob = local.node.blobs.put(b"an update blob" * 100)
    with local.api(key("alice")) as api:
        answer = api.status().model_dump(mode="json")
    roles = {"did:key:eve": ["trainer"], "did:key:val": ["trainer", "validator"]}
    answer["members"] += [
        MemberView(
            did=did, name=did[8:], roles=r, power=0 if r == ["trainer"] else 1, status="active"
        ).model_dump(mode="json")
        for did, r in roles.items()
    ]
    answer["peers"] = [
        PeerView(
            url=f"http://{name}", did=did, height=None, head=None, last_seen=None, error=None
        ).model_dump(mode="json")
        for name, did in (("eve", "did:key:eve"), ("val", "did:key:val"), ("new", None))
    ]
    asked: list[str] = []

    def connect(url: str) -> ops.NodeApi:
        asked.append(url)
        return ops.NodeApi(url, transport=httpx.MockTransport(_refuse_all), retries=0)

    own = ops.NodeApi(
        "http://own",
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer)),
        retries=0,
    )
    ops.push_to_peers(own, key("alice"), blob, local.node.blobs, connect=connect)
    assert asked == ["http://val", "http://new"]


def _refuse_all(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_approve_from_a_lagging_ledger_asks_the_node(
    local: LocalNode, make_home: MakeHome, tmp_path: Path
) -> None:
    """A validator whose home still holds only the genesis (its node down or behind) approves
    a request committed since: the command replays the node's blocks (certificates checked)."""
    import shutil

    stale = Home.resolve(tmp_path / "bob-stale")
    shutil.copytree(local.home.root, stale.root)  # alice's home at height 0: same genesis
    outcome = _join(local, make_home)
    assert ops.local_state(stale).height == 0 < local.state.height
    with local.api(key("bob")) as api:
        change = ops.approve_member(stale, key("bob"), api, "erin", wait_s=5)
        assert change.committed and change.approvals == 1 and change.did == outcome.did
        assert ops.current_state(stale, api).pending[outcome.did].approvals == {did("bob")}
    assert ops.local_state(stale).height == 0  # only the node writes the ledger


def test_approve_without_a_reachable_node_says_what_to_do(local: LocalNode) -> None:
    api = ops.NodeApi("http://127.0.0.1:9", key("alice"), retries=0, timeout=1.0)
    with api, pytest.raises(NodeError) as info:
        ops.approve_member(local.home, key("alice"), api, "erin")
    assert info.value.hint is not None and "bcfl node" in info.value.hint
    assert "--node URL" in info.value.hint


def test_approve_refuses_a_node_of_another_consortium(local: LocalNode, tmp_path: Path) -> None:
    other = consortium_home(tmp_path / "other", edit={"Example Hospitals": "Other Hospitals"})
    with local.api(key("alice")) as api, pytest.raises(NodeError, match="another consortium"):
        ops.approve_member(other, key("alice"), api, "erin")


def test_members_view_shows_when_a_request_expires(local: LocalNode, make_home: MakeHome) -> None:
    outcome = _join(local, make_home)
    request = local.state.pending[outcome.did]
    (row,) = ops.members_view(local.state).pending
    ttl = local.state.config.join_request_ttl_blocks
    assert row.expires_after == request.height + ttl and request.height >= 1
    assert ops.members_view(local.state).to_json()["pending"][0]["expires_after"] == (
        row.expires_after
    )
