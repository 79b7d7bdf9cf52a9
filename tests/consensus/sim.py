"""Deterministic simulation of n consensus engines over a hostile, seeded network.

Everything (topology, delays, loss, duplication, partitions, crashes, Byzantine behaviour,
missing blobs) derives from one integer seed, so any failure replays exactly:

    BCFL_SIM_SEED=<seed> .venv/bin/pytest tests/consensus -k replay

Time is simulated (integer ms); a run is a heap of timed events. Correct nodes run the real
``Engine`` behind the real ``VoteGuard`` (an in-memory SQLite that survives the node's crash,
as the file would). Checked on every commit: agreement (one block per height), validity (the
block passes the validity predicate on the decided chain) and the commit certificate (more than
2/3 of the power in valid PRECOMMIT signatures); on every evidence: the offender is Byzantine;
on every signature: the vote guard never had to refuse a correct engine. After the network
heals (GST, restarts done): termination, every correct node commits K heights in bounded time.

One pattern is drawn on purpose because random faults almost never line it up (``LockCrash``):
a validator locks on a block through a Byzantine PREVOTE that reached only it, then crashes
before it relayed that prevote; after the restart only the proof of lock it persisted with its
vote guard state lets the others accept the block it is locked on.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from bcfl_cli.consensus import (
    BroadcastProposal,
    BroadcastVote,
    Commit,
    CommitReceived,
    Engine,
    Event,
    Evidence,
    Proposal,
    ProposalReceived,
    Recheck,
    ScheduleTimeout,
    StartHeight,
    TimeoutConfig,
    TimeoutFired,
    Validity,
    VoteReceived,
    proposer,
)
from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import NIL, Block, BlockHeader, ValidatorSet, Vote, VoteType
from bcfl_cli.protocol.crypto import Domain, did_from_public_key, verify_by_did
from bcfl_cli.protocol.merkle import EMPTY_ROOT
from bcfl_cli.store.vote_guard import DoubleSignError, VoteGuard

CHAIN = hashlib.sha256(b"bcfl-sim-chain").hexdigest()
CONFIG = hashlib.sha256(b"bcfl-sim-config").hexdigest()
GENESIS = CHAIN
# The node's schedule (doubling per round, capped), scaled to the simulated network.
TIMEOUTS = TimeoutConfig(
    propose_ms=1_000, prevote_ms=500, precommit_ms=500, backoff=2.0, max_ms=8_000
)
GOSSIP_MS = 1_000
SYNC_RETRY_MS = 300
TERMINATION_BOUND_MS = 120_000
MAX_EVENTS = 400_000
BEHAVIOURS = ("silent", "equivocate", "invalid", "garbage")
#: Prevotes a round-0 proposal to one correct node only, and is otherwise silent (LockCrash).
PARTIAL = "partial"
#: Share of the scenarios (with f >= 1) drawn as a LockCrash.
LOCK_CRASH_SHARE = 0.15
#: How long a slow node of a LockCrash waits for a block's blob: past round 0's propose timeout.
SLOW_BLOB_MS = 2_500


def _key(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"bcfl-sim-validator-{i}".encode()).digest())


KEYS = [_key(i) for i in range(8)]
DIDS = [did_from_public_key(bytes(k.verify_key)) for k in KEYS]
OUTSIDER = _key(1000)
OUTSIDER_DID = did_from_public_key(bytes(OUTSIDER.verify_key))


class SafetyViolation(AssertionError):
    pass


@dataclass(frozen=True)
class LockCrash:
    """Lock, crash, Byzantine partial prevote, heal.

    At ``height`` the ``slow`` correct nodes (n - quorum of them) get every block's blob only
    SLOW_BLOB_MS after they first see it, so they prevote nil in round 0; the Byzantine
    validators (behaviour PARTIAL) prevote the proposal to ``victim`` only. The victim alone
    sees a quorum, locks, and crashes right after recording its precommit, before sending it or
    relaying the Byzantine prevote; it is back ``down_ms`` later. The others hold fewer than
    2f+1 prevotes for the block and are too few to decide without the victim, which prevotes
    nothing else: the height ends only if the restarted victim re-sends its proof of lock.
    """

    victim: int
    height: int
    slow: frozenset[int]
    down_ms: int


@dataclass
class Scenario:
    seed: int
    n: int
    byzantine: dict[int, str] = field(default_factory=dict)
    heights: int = 3
    loss: float = 0.0
    dup: float = 0.0
    delay_max: int = 50
    gst: int = 0
    partition: tuple[int, int, frozenset[int]] | None = None  # start, end, one side
    crashes: list[tuple[int, int, int]] = field(default_factory=list)  # node, at, restart at
    crash_after_signatures: tuple[int, int] | None = None  # node, k-th signature
    missing_pct: int = 0
    lock_crash: LockCrash | None = None

    @property
    def heal_time(self) -> int:
        return max([self.gst, *(r for _, _, r in self.crashes)])

    def describe(self) -> str:
        return (
            f"seed={self.seed} n={self.n} byzantine={self.byzantine} K={self.heights} "
            f"loss={self.loss} dup={self.dup} delay<={self.delay_max}ms gst={self.gst} "
            f"partition={self.partition} crashes={self.crashes} "
            f"crash_after={self.crash_after_signatures} missing={self.missing_pct}% "
            f"lock_crash={self.lock_crash}"
        )


def scenario_from_seed(seed: int, *, n: int | None = None, faults: bool = True) -> Scenario:
    rng = random.Random(seed)
    if n is None:
        n = rng.choices((1, 4, 7), weights=(15, 50, 35))[0]
    sc = Scenario(seed=seed, n=n)
    if not faults:
        return sc
    fmax = (n - 1) // 3
    byz = rng.sample(range(n), rng.randint(0, fmax))
    sc.byzantine = {i: rng.choice(BEHAVIOURS) for i in byz}
    if rng.random() < 0.6:
        sc.loss = rng.choice((0.05, 0.2, 0.4))
        sc.dup = rng.choice((0.0, 0.1, 0.3))
        sc.delay_max = rng.choice((200, 1_000, 3_000))
        sc.gst = rng.choice((2_000, 6_000, 15_000))
    correct = [i for i in range(n) if i not in sc.byzantine]
    if n > 1 and rng.random() < 0.3:
        start = rng.randint(0, 3_000)
        side = frozenset(rng.sample(range(n), rng.randint(1, n - 1)))
        sc.partition = (start, start + rng.randint(500, 8_000), side)
        sc.gst = max(sc.gst, sc.partition[1])
    if n > 1 and rng.random() < 0.3:
        node = rng.choice(correct)
        at = rng.randint(0, 6_000)
        sc.crashes = [(node, at, at + rng.randint(100, 5_000))]
    if rng.random() < 0.2:
        sc.missing_pct = rng.choice((20, 50))
    if fmax and rng.random() < LOCK_CRASH_SHARE:
        lock_crash(sc, rng)
    return sc


def lock_crash(sc: Scenario, rng: random.Random) -> None:
    """Turn ``sc`` into a LockCrash scenario: f PARTIAL validators, a victim, slow nodes.

    Drawn last, so that the other seeds' scenarios stay as they were. Half of them keep the
    seed's loss, delays and missing blobs (the lock may then not form: still a valid run), half
    run on a clean network, where it always forms.
    """
    n = sc.n
    fmax = (n - 1) // 3
    sc.byzantine = {i: PARTIAL for i in rng.sample(range(n), fmax)}
    correct = [i for i in range(n) if i not in sc.byzantine]
    victim = rng.choice(correct)
    quorum = 2 * n // 3 + 1
    slow = frozenset(rng.sample([i for i in correct if i != victim], n - quorum))
    height = rng.randint(1, sc.heights - 1)
    sc.lock_crash = LockCrash(victim, height, slow, rng.choice((300, 2_000, 10_000)))
    sc.partition, sc.crashes, sc.crash_after_signatures = None, [], None
    if rng.random() < 0.5:
        sc.loss, sc.dup, sc.delay_max, sc.gst, sc.missing_pct = 0.0, 0.0, 50, 0, 0


# --- the application: blocks and the validity predicate --------------------------------------
def make_block(height: int, prev: str, time: int, proposer_did: str, vset: ValidatorSet) -> Block:
    header = BlockHeader(height, prev, time, proposer_did, EMPTY_ROOT, vset.hash, CONFIG)
    return Block(header)


def block_valid(block: Block, height: int, prev: str, vset: ValidatorSet) -> bool:
    """The simulated validity predicate: an odd ``time`` marks a block as invalid."""
    h = block.header
    return (
        h.height == height
        and h.prev == prev
        and h.time % 2 == 0
        and h.tx_root == EMPTY_ROOT
        and not block.txs
        and h.validators == vset.hash
        and h.config == CONFIG
        and h.proposer in vset
    )


class SimApp:
    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self.sim = sim
        self.node = node

    def propose(self, height: int, round: int) -> Block:
        time = 2 * (height * 100_000 + round * 100 + self.node.index)
        return make_block(height, self.node.head, time, self.node.did, self.sim.vset)

    def validate(self, block: Block) -> Validity:
        sim, node = self.sim, self.node
        lc = sim.sc.lock_crash
        if lc is not None and node.index in lc.slow and block.height == lc.height:
            arrives = node.blob_arrival.setdefault(block.hash, sim.now + SLOW_BLOB_MS)
            if sim.now < arrives:
                sim.schedule(arrives, "recheck", node.index, None)
                return Validity.UNKNOWN
        if sim.sc.missing_pct:
            digest = hashlib.sha256(f"{sim.sc.seed}/{node.index}/{block.hash}".encode()).digest()
            if digest[0] * 100 < sim.sc.missing_pct * 256:
                arrives = node.blob_arrival.setdefault(block.hash, sim.now + 50 + digest[1] * 8)
                if sim.now < arrives:
                    sim.schedule(arrives, "recheck", node.index, None)
                    return Validity.UNKNOWN
        ok = block_valid(block, len(node.ledger) + 1, node.head, sim.vset)
        return Validity.VALID if ok else Validity.INVALID


# --- nodes ----------------------------------------------------------------------------------
@dataclass
class SimNode:
    index: int
    key: nacl.signing.SigningKey
    did: str
    guard: VoteGuard
    engine: Engine | None = None
    ledger: list[Block] = field(default_factory=list)
    own: list[Proposal | Vote] = field(default_factory=list)
    incarnation: int = 0
    signatures: int = 0
    blob_arrival: dict[str, int] = field(default_factory=dict)
    last_sync: dict[int, int] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.ledger[-1].hash if self.ledger else GENESIS

    @property
    def ledger_height(self) -> int:
        return len(self.ledger)

    @property
    def up(self) -> bool:
        return self.engine is not None


@dataclass
class Result:
    scenario: Scenario
    ok: bool
    violation: str | None
    committed: list[int]
    rounds: list[int]  # decision round + 1, per height
    protocol_messages: int
    total_messages: int
    evidence: int
    sim_time: int
    events: int
    lock_crashed: bool = False  # a LockCrash victim did crash while locked

    def replay_hint(self) -> str:
        return (
            f"{self.scenario.describe()}\n  replay: BCFL_SIM_SEED={self.scenario.seed} "
            ".venv/bin/pytest tests/consensus -k replay"
        )


class Simulation:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed ^ 0x5EED)
        self.now = 0
        self.queue: list[tuple[int, int, str, int, Any, int]] = []
        self.seq = 0
        self.events = 0
        self.vset = ValidatorSet.from_mapping({DIDS[i]: 1 for i in range(sc.n)})
        self.sig_cache: set[tuple[str, bytes, str, str]] = set()
        self.decided: dict[int, Block] = {}
        self.decided_round: dict[int, int] = {}
        self.protocol_messages = 0
        self.total_messages = 0
        self.evidence: list[Evidence] = []
        self.nodes = [SimNode(i, KEYS[i], DIDS[i], VoteGuard(":memory:")) for i in range(sc.n)]
        self.correct = [i for i in range(sc.n) if i not in sc.byzantine]
        self.healed = sc.heal_time  # moved on by every restart
        self.lock_crashed = False
        self.adversary = Adversary(self)

    # --- event queue ------------------------------------------------------------------------
    def schedule(self, at: int, kind: str, target: int, payload: Any) -> None:
        node = self.nodes[target]
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, target, payload, node.incarnation))

    def run(self) -> Result:
        violation = None
        try:
            for i in self.correct:
                self.start(self.nodes[i])
                self.schedule(GOSSIP_MS + i, "gossip", i, None)
            for node, at, back in self.sc.crashes:
                self.schedule(at, "crash", node, None)
                self.schedule(back, "restart", node, None)
            while self.queue and not self.finished():
                at, _, kind, target, payload, incarnation = heapq.heappop(self.queue)
                if at > self.healed + TERMINATION_BOUND_MS or self.events > MAX_EVENTS:
                    break
                self.now = at
                self.events += 1
                self.dispatch(kind, target, payload, incarnation)
            if not self.finished():
                heights = [len(self.nodes[i].ledger) for i in self.correct]
                violation = (
                    f"termination: correct nodes reached heights {heights} of "
                    f"{self.sc.heights} by t={self.now}ms (healed at {self.healed}ms)"
                )
        except SafetyViolation as exc:
            violation = str(exc)
        return Result(
            self.sc,
            violation is None,
            violation,
            [len(n.ledger) for n in self.nodes],
            [self.decided_round[h] + 1 for h in sorted(self.decided_round)],
            self.protocol_messages,
            self.total_messages,
            len(self.evidence),
            self.now,
            self.events,
            self.lock_crashed,
        )

    def finished(self) -> bool:
        return all(len(self.nodes[i].ledger) >= self.sc.heights for i in self.correct)

    def dispatch(self, kind: str, target: int, payload: Any, incarnation: int) -> None:
        node = self.nodes[target]
        if kind == "crash":
            node.engine = None
            node.own = []
            node.incarnation += 1
        elif kind == "restart":
            if not node.up:
                self.healed = max(self.healed, self.now)
                node.incarnation += 1
                self.start(node)
                self.schedule(self.now + GOSSIP_MS, "gossip", target, None)
        elif kind == "deliver":
            self.deliver(node, payload)
        elif not node.up or incarnation != node.incarnation:
            return
        elif kind == "timeout":
            self.feed(node, payload)
        elif kind == "recheck":
            self.feed(node, Recheck())
        elif kind == "gossip":
            assert node.engine is not None
            for msg in [*node.own, *node.engine.relay()]:
                self.broadcast(node, msg, first=False)
            self.broadcast(node, ("status", len(node.ledger)), first=False)
            self.schedule(self.now + GOSSIP_MS, "gossip", target, None)
        elif kind == "sync":
            self.feed(node, CommitReceived(payload))

    # --- network ----------------------------------------------------------------------------
    def connected(self, a: int, b: int) -> bool:
        part = self.sc.partition
        if part is None or not part[0] <= self.now < part[1]:
            return True
        return (a in part[2]) == (b in part[2])

    def send(self, src: int, dst: int, msg: Any, *, kind: str = "deliver") -> None:
        self.total_messages += 1
        if not self.connected(src, dst):
            return
        before_gst = self.now < self.sc.gst
        if before_gst and self.rng.random() < self.sc.loss:
            return
        copies = 2 if before_gst and self.rng.random() < self.sc.dup else 1
        for _ in range(copies):
            top = self.sc.delay_max if before_gst else min(self.sc.delay_max, 100)
            self.schedule(self.now + 1 + self.rng.randint(0, top), kind, dst, msg)

    def broadcast(self, node: SimNode, msg: Any, *, first: bool = True) -> None:
        for other in range(self.sc.n):
            if other != node.index:
                if first:
                    self.protocol_messages += 1
                self.send(node.index, other, msg)

    def deliver(self, node: SimNode, msg: Any) -> None:
        if node.index in self.sc.byzantine:
            return
        if not node.up:
            return
        if isinstance(msg, tuple):  # a peer's status: how far its ledger is
            if msg[1] >= node.ledger_height + 1:
                self.request_sync(node, node.ledger_height + 1)
            return
        if isinstance(msg, dict):  # garbage from the wire goes through the real decoders
            try:
                msg = Proposal.from_dict(msg) if "payload" in msg else Vote.from_dict(msg)
            except EncodingError:
                return
        if not isinstance(msg, Proposal | Vote):
            return
        assert node.engine is not None
        if msg.height > node.engine.height:
            self.request_sync(node, node.engine.height)
        event: Event = ProposalReceived(msg) if isinstance(msg, Proposal) else VoteReceived(msg)
        self.feed(node, event)

    def request_sync(self, node: SimNode, height: int) -> None:
        """Block sync: ask a peer that has decided ``height`` for the block and certificate."""
        if self.now - node.last_sync.get(height, -SYNC_RETRY_MS) < SYNC_RETRY_MS:
            return
        node.last_sync[height] = self.now
        peers = [i for i in self.correct if len(self.nodes[i].ledger) >= height and i != node.index]
        if peers:
            peer = self.rng.choice(peers)
            self.send(peer, node.index, self.nodes[peer].ledger[height - 1], kind="sync")

    # --- the edge: engine actions to effects ------------------------------------------------
    def start(self, node: SimNode) -> None:
        restored = node.guard.state(CHAIN)
        node.engine = Engine(
            chain=CHAIN,
            me=node.did,
            app=SimApp(self, node),
            timeouts=TIMEOUTS,
            restored=restored,
            signature_cache=self.sig_cache,
        )
        height = len(node.ledger) + 1
        self.feed(node, StartHeight(height, self.vset))
        if restored is not None and restored.height == height:
            for msg in restored.proof_messages(CHAIN):  # duty 6: re-send the proof of lock
                self.broadcast(node, msg, first=False)
        for vote in node.guard.votes_at(CHAIN, height, node.did):
            signed = vote.signed(node.key)  # deterministic: the very signature sent before
            node.own.append(signed)
            self.feed(node, VoteReceived(signed))

    def feed(self, node: SimNode, event: Event) -> None:
        work: deque[Event] = deque([event])
        while work and node.engine is not None:
            engine = node.engine
            for action in engine.handle(work.popleft()):
                if isinstance(action, BroadcastVote | BroadcastProposal):
                    signed = self.sign(node, action)
                    if signed is None:
                        return  # crashed right after recording, before sending
                    node.own.append(signed)
                    self.broadcast(node, signed)
                    if isinstance(signed, Proposal):
                        self.adversary.on_proposal(signed)
                        work.append(ProposalReceived(signed))
                    else:
                        work.append(VoteReceived(signed))
                elif isinstance(action, ScheduleTimeout):
                    fired = TimeoutFired(action.kind, action.height, action.round)
                    self.schedule(self.now + action.duration_ms, "timeout", node.index, fired)
                elif isinstance(action, Commit):
                    self.check_commit(node, action)
                    node.ledger.append(action.block)
                    node.own = []
                    if len(node.ledger) <= self.sc.heights:  # K+1 is only there to pull laggards
                        work.append(StartHeight(len(node.ledger) + 1, self.vset))
                elif isinstance(action, Evidence):
                    if DIDS.index(action.offender) not in self.sc.byzantine:
                        raise SafetyViolation(f"evidence against correct {action.offender}")
                    self.evidence.append(action)
            if node.engine is not None:
                self.adversary.observe(node.engine.height, node.engine.round)

    def sign(
        self, node: SimNode, action: BroadcastVote | BroadcastProposal
    ) -> Proposal | Vote | None:
        try:
            if isinstance(action, BroadcastVote):
                signed: Proposal | Vote = node.guard.sign_vote(action.vote, node.key, action.state)
            else:
                signed = node.guard.sign_proposal(action.proposal, node.key, action.state)
        except DoubleSignError as exc:
            raise SafetyViolation(f"vote guard refused correct node {node.index}: {exc}") from exc
        node.signatures += 1
        crash = self.sc.crash_after_signatures
        if crash is not None and crash == (node.index, node.signatures):
            self.crash_now(node, 300)
            return None
        lc = self.sc.lock_crash
        if (
            lc is not None
            and not self.lock_crashed
            and node.index == lc.victim
            and isinstance(signed, Vote)
            and signed.type is VoteType.PRECOMMIT
            and signed.block != NIL
            and signed.height == lc.height
        ):
            self.lock_crashed = True  # locked (L38): down before sending or relaying anything
            self.crash_now(node, lc.down_ms)
            return None
        return signed

    def crash_now(self, node: SimNode, down_ms: int) -> None:
        node.engine = None
        node.own = []
        node.incarnation += 1
        self.schedule(self.now + down_ms, "restart", node.index, None)

    # --- the properties -----------------------------------------------------------------------
    def check_commit(self, node: SimNode, commit: Commit) -> None:
        block, cert = commit.block, commit.certificate
        height = len(node.ledger) + 1
        where = f"node {node.index} at height {height}, t={self.now}ms"
        if block.height != height:
            raise SafetyViolation(f"{where}: committed a block of height {block.height}")
        if not block_valid(block, height, node.head, self.vset):
            raise SafetyViolation(f"validity: {where} committed an invalid block")
        earlier = self.decided.get(height)
        if earlier is not None and earlier.hash != block.hash:
            raise SafetyViolation(
                f"agreement: {where} committed {block.hash[:12]}, another correct node "
                f"committed {earlier.hash[:12]}"
            )
        if cert.block != block.hash or cert.height != height:
            raise SafetyViolation(f"{where}: certificate names another block")
        power = 0
        for did, sig in cert.signatures:
            vote = cert.precommit(CHAIN, did, sig)
            key = (did, Domain.VOTE.value, vote.hash, sig)
            if key in self.sig_cache or verify_by_did(did, Domain.VOTE, vote.hash, sig):
                power += self.vset.power_of(did)
        if not self.vset.has_quorum(power):
            raise SafetyViolation(f"{where}: certificate holds only {power} valid power")
        if earlier is None:
            self.decided[height] = block
            self.decided_round[height] = commit.round


class Adversary:
    """Omniscient, coordinated Byzantine validators (see BEHAVIOURS)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.rng = random.Random(sim.sc.seed ^ 0xBAD)
        self.seen: set[tuple[int, int]] = set()
        self.byz = sorted(sim.sc.byzantine)

    def _of(self, behaviour: str) -> list[int]:
        return [b for b in self.byz if self.sim.sc.byzantine[b] == behaviour]

    def _send_all(self, src: int, msg: Any) -> None:
        for dst in self.sim.correct:
            self.sim.send(src, dst, msg)

    def _vote(self, b: int, h: int, r: int, vtype: VoteType, block: str) -> Vote:
        return Vote(CHAIN, h, r, vtype, block, DIDS[b]).signed(KEYS[b])

    def _sides(self) -> tuple[list[int], list[int]]:
        correct = list(self.sim.correct)
        self.rng.shuffle(correct)
        return correct[::2], correct[1::2]

    def observe(self, h: int, r: int) -> None:
        if not self.byz or (h, r) in self.seen or h - 1 not in self.sim.decided and h > 1:
            return
        self.seen.add((h, r))
        sim = self.sim
        prev = sim.decided[h - 1].hash if h > 1 else GENESIS
        lead = DIDS.index(proposer(sim.vset, h, r))
        for b in self._of("garbage"):
            self._garbage(b, h, r)
        for b in self._of("invalid"):
            bad = make_block(h, prev, 2 * (h * 100_000 + r * 100 + b) + 1, DIDS[b], sim.vset)
            if lead == b:
                p = Proposal(CHAIN, h, r, bad, -1, DIDS[b]).signed(KEYS[b])
                self._send_all(b, p)
            for vtype in VoteType:
                self._send_all(b, self._vote(b, h, r, vtype, bad.hash))
        if lead in self._of("equivocate"):
            side_a, side_b = self._sides()
            blocks = [
                make_block(h, prev, 2 * (h * 100_000 + r * 100 + 50 + k), DIDS[lead], sim.vset)
                for k in range(2)
            ]
            for side, block in zip((side_a, side_b), blocks, strict=True):
                p = Proposal(CHAIN, h, r, block, -1, DIDS[lead]).signed(KEYS[lead])
                for dst in side:
                    sim.send(lead, dst, p)
                self._split_votes(h, r, side, block.hash)

    def on_proposal(self, p: Proposal) -> None:
        """A correct proposer spoke: equivocators vote for it to half and nil to the rest;
        PARTIAL validators prevote it to one correct node only (the LockCrash victim), in round
        0 only: a prevote for a later round's proposal would lend the victim a quorum for that
        block, unlock it, and the height would end anyway."""
        lc = self.sim.sc.lock_crash
        victim = lc.victim if lc is not None else self.sim.correct[0]
        for b in self._of(PARTIAL) if p.round == 0 else []:
            self.sim.send(
                b, victim, self._vote(b, p.height, p.round, VoteType.PREVOTE, p.block_hash)
            )
        if not self._of("equivocate"):
            return
        side_a, side_b = self._sides()
        self._split_votes(p.height, p.round, side_a, p.block_hash)
        self._split_votes(p.height, p.round, side_b, NIL)

    def _split_votes(self, h: int, r: int, side: list[int], block: str) -> None:
        for b in self._of("equivocate"):
            for vtype in VoteType:
                vote = self._vote(b, h, r, vtype, block)
                for dst in side:
                    self.sim.send(b, dst, vote)

    def _garbage(self, b: int, h: int, r: int) -> None:
        good = self._vote(b, h, r, VoteType.PREVOTE, NIL)
        victim = DIDS[self.sim.correct[0]]
        forged = Vote(CHAIN, h, r, VoteType.PRECOMMIT, NIL, victim, good.signature)
        samples: list[Any] = [
            {"junk": True},
            {**good.to_dict(), "round": -1},
            {**good.to_dict(), "sig": "00" * 64},
            {**good.to_dict(), "extra": 1},
            forged,  # a correct validator's name with the wrong signature
            Vote(CHAIN, h, r, VoteType.PREVOTE, NIL, OUTSIDER_DID).signed(OUTSIDER),
            Vote("ab" * 32, h, r, VoteType.PREVOTE, NIL, DIDS[b]).signed(KEYS[b]),
            self._vote(b, h, r + 5_000, VoteType.PREVOTE, NIL),
            self._vote(b, h + 7, r, VoteType.PREVOTE, NIL),
        ]
        if proposer(self.sim.vset, h, r) != DIDS[b]:
            block = make_block(h, GENESIS, 2, DIDS[b], self.sim.vset)
            samples.append(Proposal(CHAIN, h, r, block, -1, DIDS[b]).signed(KEYS[b]))
        for msg in samples:
            self._send_all(b, msg)


def run_seed(seed: int, **kwargs: Any) -> Result:
    return Simulation(scenario_from_seed(seed, **kwargs)).run()
