"""A Byzantine validator: garbage, equivocating votes and invalid proposals under its own key.

mallory is one of four validators (power 1 each; 3 of 4 is a quorum). Its node is not run: the
test *is* mallory, holding its key and speaking the node protocol with the signed client, so it
can do what an honest node never does. The three honest nodes must refuse the garbage with a
4xx (never a 5xx), ignore invalid and conflicting proposals, keep committing and closing
rounds, and record mallory's double vote on chain as a ``misbehaviour`` transaction (the
evidence: both signed votes), which every home's ``verify-chain --deep`` re-checks.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from bcfl_cli.chain.state import MAX_CLOCK_DRIFT_MS
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.consensus.messages import Proposal
from bcfl_cli.consensus.proposer import proposer
from bcfl_cli.demo.launcher import LocalConsortium
from bcfl_cli.protocol.block import NIL, Block, BlockHeader, ValidatorSet, Vote, VoteType
from bcfl_cli.protocol.encoding import MAX_SAFE_INT
from bcfl_cli.protocol.merkle import merkle_root
from tests.faults.helpers import (
    ChainWatch,
    MakeConsortium,
    converged,
    members,
    plan,
    save_figures,
    verify_all,
    wait_until,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

NAMES = ["alice", "bob", "carol", "mallory"]
HONEST = NAMES[:3]


def _misbehaviour(c, offender: str) -> list[tuple[int, dict]]:  # type: ignore[no-untyped-def]
    found = []
    start = 1
    while blocks := c.blocks("alice", start, 100):
        for raw in blocks:
            for tx in raw["txs"]:
                if tx["tx"]["kind"] == "misbehaviour" and tx["tx"]["body"]["offender"] == offender:
                    found.append((raw["header"]["height"], tx))
        start = blocks[-1]["header"]["height"] + 1
    return found


def _bad_block(c, height: int, did: str) -> Block:  # type: ignore[no-untyped-def]
    """A block for ``height`` that breaks the rules: wrong parent, and a bogus tx root."""
    head = c.blocks("alice", max(0, height - 1), 1)[0]
    header = dict(head["header"])
    header.update(
        height=height,
        prev=secrets.token_hex(32),
        proposer=did,
        tx_root=secrets.token_hex(32),
        time=header["time"] + 1,
    )
    return Block.from_dict({"header": header, "txs": [], "commit": None})


def test_byzantine_validator_is_outvoted_and_its_double_vote_recorded(
    consortium: MakeConsortium,
) -> None:
    c = consortium(members(NAMES), plan(min_updates=3, deadline_blocks=15))
    for name in HONEST:
        c.start(name)
    for name in HONEST:
        c.wait_ready(name, timeout=120)
    wait_until(lambda: c.heights(HONEST)["alice"] >= 2, 90, "the first blocks", c)
    mallory = c.members["mallory"].identity
    key, did, chain = mallory.signing_key, mallory.did, c.genesis_hash
    validators = ValidatorSet.from_mapping({c.members[n].did: 1 for n in NAMES})
    clients = {n: SignedClient(key, c.members[n].url + "/v1", retries=0) for n in HONEST}
    start_height = min(c.heights(HONEST).values())
    refused: dict[int, int] = {}
    try:
        # 1. garbage, signed by a real validator: every answer is a refusal, none a crash
        nested = b"[" * 5000 + b"]" * 5000
        bad_sig = Vote(chain, 1, 0, VoteType.PREVOTE, NIL, did, "ab" * 64).to_dict()
        wrong_chain = Vote("cd" * 32, 1, 0, VoteType.PREVOTE, NIL, did).signed(key).to_dict()
        garbage: list[bytes] = [
            secrets.token_bytes(512),
            b"{",
            b"null",
            nested,
            b'{"vote": {"v": 1}}',
            b'{"vote": null, "proposal": null}',
            b'{"vote": {}, "vote": {}}',
            json.dumps({"vote": bad_sig}).encode(),
            json.dumps({"vote": wrong_chain}).encode(),
            json.dumps({"proposal": {"v": 1, "payload": {"header": "x"}}}).encode(),
            b'{"vote": "' + b"A" * (9 * 1024 * 1024) + b'"}',
        ]
        for name, client in clients.items():
            for body in garbage:
                answer = client.request(
                    "POST",
                    "/consensus",
                    content=body,
                    headers={"Content-Type": "application/json"},
                    allow=range(400, 600),
                )
                assert answer.status_code < 500 or answer.status_code == 202, answer.text
                refused[answer.status_code] = refused.get(answer.status_code, 0) + 1
            assert c.status(name)["alarm"] is None

        # 2. equivocation: two signed prevotes at one (height, round) until evidence is on chain
        double_votes = 0
        invalid_proposals = 0
        deadline = time.monotonic() + 90
        while not _misbehaviour(c, did):
            assert time.monotonic() < deadline, "no misbehaviour evidence on chain after 90 s"
            engine = c.status("alice")["consensus"]
            h, r = engine["height"], engine["round"]
            votes = [
                Vote(chain, h, r, VoteType.PREVOTE, secrets.token_hex(32), did).signed(key),
                Vote(chain, h, r, VoteType.PREVOTE, NIL, did).signed(key),
            ]
            for client in clients.values():
                for vote in votes:
                    client.post(
                        "/consensus", json_body={"vote": vote.to_dict()}, allow=range(400, 500)
                    )
            double_votes += 1

            # 3. where mallory proposes, two different invalid blocks (an equivocating proposer)
            for rr in range(r, r + 4):
                if proposer(validators, h, rr) != did:
                    continue
                for _ in range(2):
                    proposal = Proposal(chain, h, rr, _bad_block(c, h, did), -1, did).signed(key)
                    for client in clients.values():
                        client.post(
                            "/consensus",
                            json_body={"proposal": proposal.to_dict()},
                            allow=range(400, 500),
                        )
                    invalid_proposals += 1
            time.sleep(0.5)
    finally:
        for client in clients.values():
            client.close()

    evidence = _misbehaviour(c, did)
    # the honest three keep going: more blocks, a round closed after the attack, one chain
    height_now = max(c.heights(HONEST).values())
    rnd = c.status("alice")["round"]["number"]
    c.wait_round_closed(rnd, HONEST, timeout=90)
    wait_until(lambda: converged(c, HONEST, height_now + 1), 60, "the honest nodes agree", c)
    assert all(c.status(n)["alarm"] is None for n in HONEST)
    watch = ChainWatch(c)
    watch.observe(HONEST)
    for name in HONEST:
        assert c.stop(name) == 0, c.log(name)
    watch.check_stores()
    reports = verify_all(c)
    assert all(r["ok"] for r in reports.values()), reports
    assert all(reports[n]["tx_kinds"].get("misbehaviour", 0) >= 1 for n in HONEST), reports
    save_figures(
        "byzantine",
        {
            "garbage_requests": sum(refused.values()),
            "answers": refused,
            "double_votes_sent": double_votes,
            "invalid_proposals_sent": invalid_proposals,
            "misbehaviour_txs_on_chain": len(evidence),
            "first_evidence_height": evidence[0][0],
            "blocks_committed": watch.height - start_height,
            "alarms": 0,
        },
    )


def _doomsday_block(c: LocalConsortium, height: int, did: str, validators: ValidatorSet) -> Block:
    """A block for ``height`` that obeys every rule but the time: dated 2^53-1 ms, after
    which no block could follow (its time would leave the protocol's integer range)."""
    parent = BlockHeader.from_dict(c.blocks("alice", height - 1, 1)[0]["header"])
    header = BlockHeader(
        height=height,
        prev=parent.hash,
        time=MAX_SAFE_INT,
        proposer=did,
        tx_root=merkle_root([]),
        validators=validators.hash,
        config=parent.config,
    )
    return Block(header, (), None)


def test_a_proposer_dating_its_block_to_the_end_of_time_cannot_halt_the_chain(
    consortium: MakeConsortium,
) -> None:
    """Issue 16, item 1: mallory, whenever it is the proposer, proposes a well-formed block
    dated 2^53-1 ms and prevotes and precommits it. The honest three prevote nil (the block
    is past their clocks, PROTOCOL.md §6.2), the round moves on to an honest proposer, and the
    chain goes on; no block on it is dated past the clock, and verify-chain accepts it."""
    c = consortium(members(NAMES), plan(min_updates=3, deadline_blocks=15))
    for name in HONEST:
        c.start(name, train=False)
    for name in HONEST:
        c.wait_ready(name, timeout=120)
    wait_until(lambda: c.heights(HONEST)["alice"] >= 2, 90, "the first blocks", c)
    mallory = c.members["mallory"].identity
    key, did, chain = mallory.signing_key, mallory.did, c.genesis_hash
    validators = ValidatorSet.from_mapping({c.members[n].did: 1 for n in NAMES})
    clients = {n: SignedClient(key, c.members[n].url + "/v1", retries=0) for n in HONEST}
    attacked: set[tuple[int, int]] = set()  # (height, round) where mallory proposed
    try:
        deadline = time.monotonic() + 120
        while len({h for h, _ in attacked}) < 2:
            assert time.monotonic() < deadline, (
                f"mallory proposed only at {attacked} in 120 s; the honest nodes are at "
                f"{c.heights(HONEST)} (a doomsday block committed leaves no next block)"
            )
            engine = c.status("alice")["consensus"]
            h, r = engine["height"], engine["round"]
            # only in a round the honest nodes are in (waiting for mallory's proposal), so that
            # every attack counted is one they had to decide on
            if proposer(validators, h, r) == did and (h, r) not in attacked:
                block = _doomsday_block(c, h, did, validators)
                messages = [
                    {"proposal": Proposal(chain, h, r, block, -1, did).signed(key).to_dict()},
                    *(
                        {"vote": Vote(chain, h, r, t, block.hash, did).signed(key).to_dict()}
                        for t in (VoteType.PREVOTE, VoteType.PRECOMMIT)
                    ),
                ]
                for client in clients.values():
                    for message in messages:
                        client.post("/consensus", json_body=message, allow=range(400, 500))
                attacked.add((h, r))
            time.sleep(0.1)
    finally:
        for client in clients.values():
            client.close()

    last_attack = max(h for h, _ in attacked)
    waited = wait_until(lambda: converged(c, HONEST, last_attack + 2), 120, "the chain to go on", c)
    now_ms = time.time_ns() // 1_000_000
    watch = ChainWatch(c)
    watch.observe(HONEST)
    times: list[int] = []
    while blocks := c.blocks("alice", len(times) + 1, 100):
        times += [raw["header"]["time"] for raw in blocks]
    assert all(t <= now_ms + MAX_CLOCK_DRIFT_MS for t in times), max(times)
    refused = sum(c.log(name, 10_000_000).count("time_in_future") for name in HONEST)
    assert all(c.status(n)["alarm"] is None for n in HONEST)
    for name in HONEST:
        assert c.stop(name) == 0, c.log(name)
    watch.check_stores()
    reports = verify_all(c)
    assert all(r["ok"] for r in reports.values()), reports
    save_figures(
        "byzantine_time",
        {
            "doomsday_proposals": len(attacked),
            "heights_attacked": sorted({h for h, _ in attacked}),
            "refusals_logged": refused,
            "seconds_to_two_more_blocks": round(waited, 1),
            "height": watch.height,
            "latest_block_time_minus_now_ms": max(times) - now_ms,
        },
    )
