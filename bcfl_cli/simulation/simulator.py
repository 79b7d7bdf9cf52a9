"""N members of one consortium in one process: the nodes' rules over a simulated network.

Each member holds what a node holds: its own ledger opened as a ``Chain`` (the real store,
``HOME/chain.sqlite``), the pure consensus ``Engine`` behind its own ``VoteGuard``, the
contract and aggregate checks (``FLChecks``), a mempool, its Ed25519 key and its shard of the
data. Proposals, votes and transactions are signed and travel over ``network.Network``: seeded
delays, drops, partitions and crashes on a logical clock. Nothing waits on wall time, so a run
is as fast as its computation, and the same options give the same chain, block for block.

What differs from N ``bcfl node`` processes, on purpose: no HTTP, and one content-addressed
blob directory shared by all homes (``ROOT/blobs``, linked from each ``HOME/blobs``): a blob is
named by its hash, so sharing it changes no check, only the bytes written. Verified signatures
are shared too (a fact about a key and a message, the engine's ``SignatureCache``).
"""

from __future__ import annotations

import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import torch

from bcfl_cli.chain.builder import build_block
from bcfl_cli.chain.chain import Chain
from bcfl_cli.chain.state import ChainState
from bcfl_cli.consensus import (
    BroadcastProposal,
    BroadcastVote,
    Commit,
    Engine,
    Event,
    Evidence,
    Proposal,
    ProposalReceived,
    ScheduleTimeout,
    SignatureCache,
    StartHeight,
    TimeoutConfig,
    TimeoutFired,
    Validity,
    VoteReceived,
)
from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.demo.launcher import DEFAULT_GENESIS_TIME_MS, GenesisPlan, MemberPlan, consortium_toml
from bcfl_cli.errors import BcflError, UsageError, VerificationError
from bcfl_cli.fl import attacks
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.data import Dataset, load_csv
from bcfl_cli.fl.device import pick_device
from bcfl_cli.fl.models import num_features
from bcfl_cli.fl.split import partition_dirichlet, partition_iid
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.fl.training import evaluate, starts_torch_optim, subseed, train_local
from bcfl_cli.fl.update_file import to_update_dtype, update_dtype
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import NIL, Block, Vote
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec, TrainingPlan
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.simulation.network import Network
from bcfl_cli.simulation.options import VALIDATOR_FAULTS, SimOptions
from bcfl_cli.simulation.planner import nonce, plan_block
from bcfl_cli.simulation.shared_checks import SharedChecks
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.vote_guard import VoteGuard
from bcfl_cli.training.rounds import pending_updates

#: Logical gap between a commit and the next height's start when there is work.
BLOCK_INTERVAL_MS = 10
#: Every member re-sends its own messages of the current height this often (the node's
#: re-send on a stall): a dropped message costs one gossip, never liveness.
GOSSIP_MS = 1_000
#: Consensus timeouts on the logical clock: the node's schedule (doubling, capped).
TIMEOUTS = TimeoutConfig(propose_ms=1_000, prevote_ms=500, precommit_ms=500, max_ms=8_000)
#: Logical time a run may take per planned round before it is stopped as stuck.
MAX_MS_PER_ROUND = 600_000
#: Plans a proposer tries, each without the pending transaction the rules refused last.
MAX_PROPOSAL_TRIES = 8
#: A member's mempool holds at most this many transactions (evidence and updates).
MAX_MEMPOOL = 4_096
SPLIT_SEED = 7

DIGITS_MLP = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, hidden=[64], seed=0)


def member_key(seed: int, index: int) -> nacl.signing.SigningKey:
    """Member ``index``'s key, from the run's seed: the same seed gives the same consortium."""
    from hashlib import sha256

    return nacl.signing.SigningKey(sha256(f"bcfl-simulate/{seed}/{index}".encode()).digest())


def genesis_plan(options: SimOptions) -> GenesisPlan:
    """The benchmark job (bench/common.py): digits MLP, SGD lr 0.05, batch 32, no holdout."""
    honest = options.members - len(
        {m for m, _ in options.byzantine} | {c.member for c in options.crashes}
    )
    return GenesisPlan(
        model=DIGITS_MLP,
        training=TrainingPlan(
            rounds=options.rounds,
            lr=0.05,
            batch_size=32,
            local_epochs=options.local_epochs,
            holdout_fraction=0.0,
            min_updates=max(1, honest),
            deadline_blocks=options.deadline_blocks,
        ),
        contract=ContractRules(
            max_update_norm=10.0,
            min_samples=1,
            update_dtype=options.update_dtype,  # type: ignore[arg-type]
        ),
        aggregation=AggregationSpec(rule=options.rule),  # type: ignore[arg-type]
        name=f"bcfl simulate ({options.members} members, seed {options.seed})",
        admission_approvals=1,
        removal_approvals=1,
    )


@dataclass
class Member:
    index: int
    key: nacl.signing.SigningKey
    did: str
    home: Home
    chain: Chain
    checks: FLChecks
    guard: VoteGuard
    data: Dataset
    behaviour: str | None
    engine: Engine | None = None
    incarnation: int = 0
    mempool: dict[str, Transaction] = field(default_factory=dict)
    validated: dict[tuple[str, str], tuple[Validity, ChainState | None]] = field(
        default_factory=dict
    )
    own: list[Proposal | Vote] = field(default_factory=list)
    round_seen_ms: int = 0
    #: (incarnation, height, logical ms) of the forced start already scheduled
    wait_until: tuple[int, int, int] = (0, 0, 0)

    @property
    def up(self) -> bool:
        return self.engine is not None


@dataclass
class RoundRecord:
    round: int
    closed_height: int
    logical_ms: int
    wall_s: float
    cpu_s: float
    bytes: int
    accepted: int
    model: str
    accuracy: float | None = None
    loss: float | None = None


@dataclass
class SimResult:
    options: SimOptions
    root: Path
    genesis: str
    rounds: list[RoundRecord]
    heads: dict[int, tuple[int, str]]  # member -> (height, head hash)
    setup_s: float
    run_s: float
    logical_ms: int
    events: int
    messages: int
    dropped: int
    bytes: int
    evidence: int
    peak_rss_mb: float

    @property
    def head(self) -> str:
        """The head hash the correct members agree on ('' if they do not)."""
        heads = {h for h in self.heads.values()}
        return next(iter(heads))[1] if len(heads) == 1 else ""

    @property
    def ok(self) -> bool:
        return bool(self.head) and len(self.rounds) == self.options.rounds

    def to_dict(self) -> dict[str, Any]:
        walls = sorted(r.wall_s for r in self.rounds)
        cpus = sorted(r.cpu_s for r in self.rounds)
        return {
            "ok": self.ok,
            "members": self.options.members,
            "rounds_planned": self.options.rounds,
            "seed": self.options.seed,
            "genesis": self.genesis,
            "head": self.head,
            "homes": str(self.root),
            "setup_s": round(self.setup_s, 3),
            "run_s": round(self.run_s, 3),
            "round_wall_s_median": round(walls[len(walls) // 2], 4) if walls else None,
            "round_cpu_s_median": round(cpus[len(cpus) // 2], 4) if cpus else None,
            "logical_ms": self.logical_ms,
            "events": self.events,
            "messages": self.messages,
            "dropped": self.dropped,
            "bytes": self.bytes,
            "evidence": self.evidence,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "rounds": [
                {
                    "round": r.round,
                    "closed_height": r.closed_height,
                    "logical_ms": r.logical_ms,
                    "wall_s": round(r.wall_s, 4),
                    "cpu_s": round(r.cpu_s, 4),
                    "bytes": r.bytes,
                    "accepted": r.accepted,
                    "accuracy": r.accuracy,
                    "loss": r.loss,
                    "model": r.model,
                }
                for r in self.rounds
            ],
            "heads": {str(i): {"height": h, "head": x} for i, (h, x) in self.heads.items()},
        }


Listener = Callable[[RoundRecord], None]


class Simulation:
    """One run: ``Simulation(options).run()``; the homes stay under ``result.root``."""

    def __init__(self, options: SimOptions, *, listener: Listener | None = None) -> None:
        options.check()
        self.options = options
        self.listener = listener
        self.rng = random.Random(options.seed)
        self.net = Network(options.members, options.network, options.seed ^ 0x5EED)
        self.sig_cache: SignatureCache = set()
        self.members: list[Member] = []
        self.rounds: list[RoundRecord] = []
        self.evidence = 0
        self.genesis_time = DEFAULT_GENESIS_TIME_MS
        self._round_started_wall = 0.0
        self._round_started_cpu = 0.0
        self._round_started_bytes = 0
        self._round_started_ms = 0
        self.test: Dataset | None = None
        self.root = Path(".")
        self._done: bool | None = None
        self._sizes: dict[tuple[str, str], int] = {}
        self._trainers: dict[str, frozenset[str]] = {}

    # --- setting up --------------------------------------------------------------------------
    def setup(self) -> None:
        o = self.options
        self.root = (
            o.out.expanduser().resolve()
            if o.out is not None
            else Path(tempfile.mkdtemp(prefix="bcfl-simulate-"))
        )
        if (self.root / "consortium.toml").exists():
            raise UsageError(
                f"{self.root} already holds a simulated consortium",
                hint="pass an empty or new --out DIR",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        keys = [member_key(o.seed, i) for i in range(o.members)]
        dids = [did_from_public_key(bytes(k.verify_key)) for k in keys]
        plans = [MemberPlan(name=f"member-{i:03d}") for i in range(o.members)]
        config = self.root / "consortium.toml"
        config.write_text(consortium_toml(genesis_plan(o), list(zip(plans, dids, strict=True))))
        shared = self.root / "blobs"
        shared.mkdir(exist_ok=True)
        shards = self._shards()
        shared_checks = SharedChecks(FLChecks(BlobStore(shared))) if o.share_checks else None
        first: Home | None = None
        for i in range(o.members):
            home = Home(self.root / f"member-{i:03d}").ensure()
            link = home.blob_dir
            if not link.exists():
                link.symlink_to(Path("..") / "blobs", target_is_directory=True)
            if first is None:
                init_consortium(home, config, time_ms=self.genesis_time)
                first = home
            else:  # the genesis is a pure function of the file and the time: the same store
                shutil.copyfile(first.store_file, home.store_file)
                shutil.copyfile(first.pin_file, home.pin_file)
            chain = Chain.open(home)
            blobs = BlobStore(home.blob_dir)
            self.members.append(
                Member(
                    index=i,
                    key=keys[i],
                    did=dids[i],
                    home=home,
                    chain=chain,
                    checks=shared_checks or FLChecks(blobs),
                    guard=VoteGuard(":memory:"),
                    data=shards[i],
                    behaviour=o.behaviour(i),
                )
            )

    def _shards(self) -> list[Dataset]:
        from bcfl_cli.demo.run import sample_data_dir

        o = self.options
        data = sample_data_dir(o.data_dir)
        features = num_features(DIGITS_MLP)
        table = load_csv(data / "digits-train.csv", num_classes=10, num_features=features)
        if o.score:
            self.test = load_csv(data / "digits-test.csv", num_classes=10, num_features=features)
        labels = [int(v) for v in table.labels.tolist()]
        part = (
            partition_iid(labels, o.members, SPLIT_SEED)
            if o.non_iid == 0
            else partition_dirichlet(labels, o.members, o.non_iid, SPLIT_SEED, min_samples=1)
        )
        return [table.subset(torch.tensor(rows, dtype=torch.long)) for rows in part.parts]

    # --- the run -------------------------------------------------------------------------
    def run(self) -> SimResult:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one process, many members: no oversubscription, and bits fixed
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> SimResult:
        started = time.perf_counter()
        self.setup()
        _warm_up(self.members[0].chain.state.config.training)
        setup_s = time.perf_counter() - started
        run_started = time.perf_counter()
        self._round_started_wall = run_started
        self._round_started_cpu = time.process_time()
        o = self.options
        for m in self.members:
            if m.behaviour == "silent":
                self.net.down.add(m.index)
                continue
            self._start(m)
            self.net.schedule(GOSSIP_MS + m.index, "gossip", m.index)
        for crash in o.crashes:
            self.net.schedule(crash.at_ms, "crash", crash.member)
            if crash.back_ms is not None:
                self.net.schedule(crash.back_ms, "restart", crash.member)
        limit = MAX_MS_PER_ROUND * (o.rounds + 1)
        while not self._finished():
            event = self.net.next_event()
            if event is None or event.at_ms > limit:
                break
            self._dispatch(event.kind, event.target, event.payload)
        run_s = time.perf_counter() - run_started
        correct = [m for m in self.members if m.behaviour not in VALIDATOR_FAULTS and m.up]
        heads = {m.index: (m.chain.height, m.chain.state.head_hash) for m in correct}
        result = SimResult(
            options=o,
            root=self.root,
            genesis=self.members[0].chain.genesis_hash,
            rounds=self.rounds,
            heads=heads,
            setup_s=setup_s,
            run_s=run_s,
            logical_ms=self.net.now_ms,
            events=self.net.processed,
            messages=self.net.stats.delivered,
            dropped=self.net.stats.dropped + self.net.stats.cut,
            bytes=self.net.stats.bytes,
            evidence=self.evidence,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        for m in self.members:
            m.chain.close()
            m.guard.close()
        return result

    def _finished(self) -> bool:
        """Whether every live correct member's plan is over (asked again after commits only)."""
        if self._done is None:
            live = [m for m in self.members if m.up and m.behaviour not in VALIDATOR_FAULTS]
            self._done = bool(live) and all(m.chain.state.plan_finished for m in live)
        return self._done

    def _dispatch(self, kind: str, target: int, payload: Any) -> None:
        m = self.members[target]
        if kind in ("crash", "restart"):
            self._done = None
        if kind == "crash":
            self.net.down.add(target)
            m.engine, m.own = None, []
            m.incarnation += 1
        elif kind == "restart":
            self.net.down.discard(target)
            m.incarnation += 1
            self._sync(m)
            self._start(m)
            self.net.schedule(self.net.now_ms + GOSSIP_MS, "gossip", target)
        elif not m.up:
            return
        elif kind == "deliver":
            self._deliver(m, payload[1])
        elif kind == "timeout" and payload[0] == m.incarnation:
            self._feed(m, payload[1])
        elif kind == "start" and payload[0] == m.incarnation:
            self._maybe_start(m, force=payload[1])
        elif kind == "train" and payload[0] == m.incarnation:
            self._train(m, payload[1])
        elif kind == "gossip":
            self._gossip(m)

    # --- members -------------------------------------------------------------------------
    def _start(self, m: Member) -> None:
        m.engine = Engine(
            chain=m.chain.genesis_hash,
            me=m.did,
            app=_App(self, m),
            timeouts=TIMEOUTS,
            restored=m.guard.state(m.chain.genesis_hash),
            signature_cache=self.sig_cache,
        )
        m.round_seen_ms = self.net.now_ms
        self._maybe_start(m, force=False)
        self._train_if_due(m)

    def _maybe_start(self, m: Member, *, force: bool) -> None:
        """Start the next height when its block would hold the round's work (the node's
        ``has_work``), or once the update wait is over (``force``)."""
        engine = m.engine
        target = m.chain.height + 1
        if engine is None or engine.height >= target:
            return
        state = m.chain.state
        if state.plan_finished and not any(
            tx.kind is TxKind.MISBEHAVIOUR for tx in m.mempool.values()
        ):
            return
        rnd = state.round
        if not force and rnd.open:
            waiting = set(self._trainers_of(state)) - set(rnd.submitted)
            # the pool's updates cover at most one author each: while more trainers wait than
            # the pool holds transactions, someone still waits (no scan: N x N a round)
            if len(waiting) <= len(m.mempool):
                waiting -= {tx.author for tx in pending_updates(state, list(m.mempool.values()))}
            if waiting:
                due = max(m.round_seen_ms + self.options.update_wait_ms, self.net.now_ms)
                wake = (m.incarnation, target, due)
                if m.wait_until != wake:  # one wake-up per height, not one per update
                    m.wait_until = wake
                    self.net.schedule(due, "start", m.index, (m.incarnation, True))
                return
        self._feed(m, StartHeight(target, state.validator_set))
        if m.engine is not None:
            for vote in m.guard.votes_at(m.chain.genesis_hash, target, m.did):
                self._feed(m, VoteReceived(vote.signed(m.key)))

    def _trainers_of(self, state: ChainState) -> frozenset[str]:
        """``state.trainers`` (a new frozenset at each call), kept per head."""
        trainers = self._trainers.get(state.head_hash)
        if trainers is None:
            if len(self._trainers) >= MAX_MEMPOOL:
                self._trainers.clear()
            trainers = self._trainers[state.head_hash] = state.trainers
        return trainers

    def _deliver(self, m: Member, message: Any) -> None:
        engine = m.engine
        assert engine is not None
        if isinstance(message, Transaction):
            if message.hash in m.chain.state.seen_tx or len(m.mempool) >= MAX_MEMPOOL:
                return
            m.mempool.setdefault(message.hash, message)
            if message.kind is TxKind.UPDATE:
                self._maybe_start(m, force=False)
            return
        if not isinstance(message, Proposal | Vote):
            return
        if message.height > m.chain.height + 1:
            self._sync(m)
        if message.height == m.chain.height + 1 and engine.height < message.height:
            self._maybe_start(m, force=True)  # a peer is at the next height already
        event: Event = (
            ProposalReceived(message) if isinstance(message, Proposal) else VoteReceived(message)
        )
        self._feed(m, event)

    def _gossip(self, m: Member) -> None:
        """Re-send this member's messages of the height and its pending own transactions."""
        if m.engine is not None and not m.chain.state.plan_finished:
            for message in [*m.own, *m.engine.relay()]:
                self._broadcast(m, message)
            for tx in m.mempool.values():
                if tx.author == m.did:
                    self._broadcast(m, tx)
        self.net.schedule(self.net.now_ms + GOSSIP_MS, "gossip", m.index)

    def _broadcast(
        self, m: Member, message: Proposal | Vote | Transaction, to: list[int] | None = None
    ) -> None:
        key = (type(message).__name__, message.hash)
        size = self._sizes.get(key)
        if size is None:
            if len(self._sizes) >= MAX_MEMPOOL * 16:
                self._sizes.clear()
            size = self._sizes[key] = len(canonical(message.to_dict()))
        if isinstance(message, Transaction) and message.kind is TxKind.UPDATE:
            size += int(message.body["blob_size"])  # the blob travels to every peer once
        self.net.broadcast(m.index, message, size=size, to=to)

    def _feed(self, m: Member, event: Event) -> None:
        work = [event]
        while work and m.engine is not None:
            for action in m.engine.handle(work.pop(0)):
                if isinstance(action, BroadcastVote):
                    vote = m.guard.sign_vote(action.vote, m.key, action.state)
                    m.own.append(vote)
                    self._send_vote(m, vote)
                    work.append(VoteReceived(vote))
                elif isinstance(action, BroadcastProposal):
                    proposal = m.guard.sign_proposal(action.proposal, m.key, action.state)
                    m.own.append(proposal)
                    self._broadcast(m, proposal)
                    work.append(ProposalReceived(proposal))
                elif isinstance(action, ScheduleTimeout):
                    fired = TimeoutFired(action.kind, action.height, action.round)
                    self.net.schedule(
                        self.net.now_ms + action.duration_ms,
                        "timeout",
                        m.index,
                        (m.incarnation, fired),
                    )
                elif isinstance(action, Commit):
                    self._commit(m, action.block)
                elif isinstance(action, Evidence):
                    self._evidence(m, action)

    def _send_vote(self, m: Member, vote: Vote) -> None:
        if m.behaviour != "equivocate" or vote.block == NIL:
            self._broadcast(m, vote)
            return
        # Byzantine: the real vote to everyone, and a conflicting nil vote to half of the peers
        other = Vote(vote.chain, vote.height, vote.round, vote.type, NIL, m.did).signed(m.key)
        self._broadcast(m, vote)
        self._broadcast(m, other, to=[i for i in range(len(self.members)) if i % 2 != m.index % 2])

    def _evidence(self, m: Member, action: Evidence) -> None:
        first = action.first
        offence = (action.offender, first.height, first.round, str(first.type))
        state = m.chain.state
        if offence in state.offences or any(
            tx.kind is TxKind.MISBEHAVIOUR and tx.body["offender"] == action.offender
            for tx in m.mempool.values()
        ):
            return
        tx = make_tx(
            m.key,
            state.chain_id,
            TxKind.MISBEHAVIOUR,
            action.to_body(),
            time_ms=self._time(),
            nonce=nonce(self.rng),
        )
        self.evidence += 1
        m.mempool[tx.hash] = tx
        self._broadcast(m, tx)

    def _time(self) -> int:
        return self.genesis_time + self.net.now_ms

    # --- blocks --------------------------------------------------------------------------
    def _commit(self, m: Member, block: Block) -> None:
        chain = m.chain
        if block.height != chain.height + 1:
            return
        known = m.validated.get((block.hash, chain.state.head_hash))
        try:
            if known is not None and known[1] is not None:
                chain.persist(block, known[1], source="consensus")
            else:
                chain.import_block(block, checks=m.checks, source="consensus")
        except BcflError:
            self._sync(m)
            return
        self._after_block(m, block)

    def _after_block(self, m: Member, block: Block) -> None:
        self._done = None
        m.own = []
        m.validated.clear()
        for tx in block.txs:
            m.mempool.pop(tx.hash, None)
        state = m.chain.state
        for tx in list(m.mempool.values()):
            if tx.hash in state.seen_tx:
                m.mempool.pop(tx.hash, None)
        if any(tx.kind is TxKind.AGGREGATE for tx in block.txs):
            self._record_round(block, state)
        if any(tx.kind is TxKind.OPEN_ROUND for tx in block.txs):
            m.round_seen_ms = self.net.now_ms
            self._train_if_due(m)
        self.net.schedule(
            self.net.now_ms + BLOCK_INTERVAL_MS, "start", m.index, (m.incarnation, False)
        )

    def _sync(self, m: Member) -> None:
        """Block sync from the most advanced live member: every block checked in full."""
        peers = [p for p in self.members if p.up and p.chain.height > m.chain.height]
        if not peers:
            return
        peer = max(peers, key=lambda p: (p.chain.height, -p.index))
        for height in range(m.chain.height + 1, peer.chain.height + 1):
            block = peer.chain.ledger.block(height)
            try:
                m.chain.import_block(block, checks=m.checks, source="sync")
            except BcflError:
                return
            self._after_block(m, block)

    def _record_round(self, block: Block, state: ChainState) -> None:
        number = max(int(tx.body["round"]) for tx in block.txs if tx.kind is TxKind.AGGREGATE)
        if any(r.round >= number for r in self.rounds):
            return
        now, cpu = time.perf_counter(), time.process_time()
        record = RoundRecord(
            round=number,
            closed_height=block.height,
            logical_ms=self.net.now_ms - self._round_started_ms,
            wall_s=now - self._round_started_wall,
            cpu_s=cpu - self._round_started_cpu,
            bytes=self.net.stats.bytes - self._round_started_bytes,
            accepted=len(
                next(tx for tx in block.txs if tx.kind is TxKind.AGGREGATE).body["updates"]
            ),
            model=next(tx for tx in block.txs if tx.kind is TxKind.AGGREGATE).body["model"],
        )
        if self.test is not None:
            blobs = self.members[0].checks.blobs
            limit = state.config.contract.max_blob_bytes
            weights = decode_tensors(blobs.get(record.model, max_bytes=limit), max_bytes=limit)
            record.loss, record.accuracy = evaluate(DIGITS_MLP, weights, self.test)
        self.rounds.append(record)
        if self.listener is not None:
            self.listener(record)
        self._round_started_wall = time.perf_counter()
        self._round_started_cpu = time.process_time()
        self._round_started_ms = self.net.now_ms
        self._round_started_bytes = self.net.stats.bytes

    # --- training ------------------------------------------------------------------------
    def _train_if_due(self, m: Member) -> None:
        rnd = m.chain.state.round
        trainers = self._trainers_of(m.chain.state)
        if rnd.open and m.did in trainers and m.did not in rnd.submitted:
            self.net.schedule(
                self.net.now_ms + self.options.train_ms,
                "train",
                m.index,
                (m.incarnation, rnd.number),
            )

    def _train(self, m: Member, number: int) -> None:
        state = m.chain.state
        rnd = state.round
        if not rnd.open or rnd.number != number or m.did in rnd.submitted:
            return
        if any(
            tx.kind is TxKind.UPDATE and tx.author == m.did and tx.body["round"] == number
            for tx in m.mempool.values()
        ):
            return
        cfg = state.config
        blobs = m.checks.blobs
        base = decode_tensors(
            blobs.get(rnd.base_model, max_bytes=cfg.contract.max_blob_bytes),
            max_bytes=cfg.contract.max_blob_bytes,
        )
        seed = subseed(self.options.seed, f"train/{m.index}/{number}")
        if not isinstance(cfg.model, ModelSpec):  # its genesis is its own: a builtin model
            raise UsageError("bcfl simulate trains the builtin models only")
        result = train_local(cfg.model, cfg.training, base, m.data, seed=seed)
        delta = _attacked(m.behaviour, dict(result.delta), seed)
        # rounded to the genesis' update dtype, as a node's trainer writes it (PROTOCOL.md §7.1)
        dtype = update_dtype(cfg.contract.update_dtype)
        data = encode_tensors({k: to_update_dtype(k, v, dtype) for k, v in delta.items()})
        blob = blobs.put(data)
        body = {
            "round": number,
            "base_model": rnd.base_model,
            "blob": blob,
            "blob_size": len(data),
            "num_samples": result.num_samples,
            "metrics": dict(result.metrics),
        }
        tx = make_tx(
            m.key, state.chain_id, TxKind.UPDATE, body, time_ms=self._time(), nonce=nonce(self.rng)
        )
        m.mempool[tx.hash] = tx
        self._broadcast(m, tx)
        self._maybe_start(m, force=False)


def _warm_up(plan: TrainingPlan) -> None:
    """Build one optimiser where the loop will: torch imports its compiler stack (seconds) on
    the first one, a one-off cost that belongs to start-up, not to the first round. bcfl's SGD
    on CPU (``fl/sgd.py``) imports nothing: then there is nothing to pay."""
    if starts_torch_optim(plan, pick_device(None)):
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def _attacked(
    behaviour: str | None, delta: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """A Byzantine trainer's update (``fl/attacks.py``); an honest one's unchanged."""
    if behaviour == "sign-flip":
        return attacks.sign_flip(delta, 4.0)
    if behaviour == "scaling":
        return attacks.scaling(delta, 100.0)
    if behaviour == "noise":
        return attacks.gaussian(delta, std=1.0, seed=seed)
    if behaviour == "free-rider":
        return attacks.free_rider_zero(delta)
    return delta


class _App:
    """The engine's application callbacks for one member: the node's, without threads."""

    def __init__(self, sim: Simulation, member: Member) -> None:
        self.sim = sim
        self.m = member

    def propose(self, height: int, round: int) -> Block:
        """The planned block, checked with every rule; a pending transaction the rules refuse
        is dropped and the block planned again; an empty block if nothing else passes."""
        m = self.m
        state, head = m.chain.state, m.chain.head
        now = self.sim._time()
        pending = list(m.mempool.values())
        for _ in range(MAX_PROPOSAL_TRIES):
            try:
                txs = plan_block(
                    state,
                    head,
                    pending,
                    height=height,
                    now_ms=now,
                    key=m.key,
                    checks=m.checks,
                    blobs=m.checks.blobs,
                    rng=self.sim.rng,
                )
                block = build_block(state, head, txs, m.key, time_ms=now)
                after = state.apply(block, checks=m.checks, verify_signatures=False, proposal=True)
                m.validated[(block.hash, state.head_hash)] = (Validity.VALID, after)
                return block
            except VerificationError as exc:
                if exc.tx_hash is None or exc.tx_hash not in m.mempool:
                    break
                m.mempool.pop(exc.tx_hash, None)
                pending = [tx for tx in pending if tx.hash != exc.tx_hash]
            except BcflError:
                break
        block = build_block(state, head, [], m.key, time_ms=now)
        after = state.apply(block, verify_signatures=False, proposal=True)
        m.validated[(block.hash, state.head_hash)] = (Validity.VALID, after)
        return block

    def validate(self, block: Block) -> Validity:
        m = self.m
        state = m.chain.state
        if block.header.prev != state.head_hash or block.height != state.height + 1:
            return Validity.INVALID
        key = (block.hash, state.head_hash)
        known = m.validated.get(key)
        if known is not None:
            return known[0]
        try:
            after: ChainState | None = state.apply(block, checks=m.checks, proposal=True)
            validity = Validity.VALID
        except VerificationError:
            after, validity = None, Validity.INVALID
        except BcflError:
            after, validity = None, Validity.INVALID
        m.validated[key] = (validity, after)
        return validity
