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

from bcfl_cli.consensus.messages import Proposal
from bcfl_cli.consensus.proposer import proposer
from bcfl_cli.node.client import SignedClient
from bcfl_cli.protocol.block import NIL, Block, ValidatorSet, Vote, VoteType
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
