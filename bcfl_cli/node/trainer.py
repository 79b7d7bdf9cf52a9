"""``bcfl node --train PART.csv``: train and submit an update in every round this member can.

The trainer watches the node's chain state. Whenever a round is open, this member is an active
trainer, has not submitted to that round yet and holds the round's base model, it trains on the
base model in a worker thread (the event loop keeps serving peers and voting), stores the delta
in the blob store the node serves to its peers, and hands the signed ``update`` transaction to
the node's mempool. A member that was down while a round was open simply finds the next one:
nothing is owed for missed rounds.

Attacks (``--attack NAME``) exist so that the demo and the tests can run real attacker nodes
against the contract and the robust aggregation rules; an honest member never sets one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import torch

from bcfl_cli.apps.runner import BoundApp, bind_app
from bcfl_cli.chain.state import ChainState
from bcfl_cli.client.api import NodeApi
from bcfl_cli.client.blobs import SharedChunks, upload_blob
from bcfl_cli.client.submit import build_update_tx
from bcfl_cli.errors import BcflError, ContractError, StoreError, UsageError
from bcfl_cli.fl import attacks
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.sgd import PlainSgd
from bcfl_cli.fl.training import TrainResult, starts_torch_optim, subseed
from bcfl_cli.fl.update_summary import SummaryFeed, UpdateSummaries
from bcfl_cli.home import Home
from bcfl_cli.node.interfaces import BlobPeers, TrainerHost
from bcfl_cli.node.peers import did_tag
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.training.update import Rewrite, train_update
from bcfl_cli.wire.schemas import MAX_INLINE_BLOB_BYTES

log = logging.getLogger("bcfl.node.trainer")

Delta = dict[str, torch.Tensor]
StateSource = Callable[[], ChainState]
#: Hand a signed update to the node: (tx, tags of the members that hold it already).
Submit = Callable[[Transaction, frozenset[str]], Awaitable[object]]
#: Send an update's blob (with the update where it can) to the peers: the tags of those that
#: took the update too, whom the node's gossip then skips.
Publish = Callable[[Transaction], Awaitable[frozenset[str]]]

DEFAULT_POLL_S = 0.5
PUBLISH_TIMEOUT_S = 60.0
#: Bytes of its own update a trainer's push has read but not yet summarised; past it, no
#: summary (the node's check of its own update then reads the file, as before).
OWN_SUMMARY_BACKLOG = 16 * 1024 * 1024
#: Threads of the pool a trainer's pushes run on (one a peer for a whole upload, up to this
#: many at once; further peers wait for a free one): their own, not the event loop's default
#: executor, behind which the node's other threaded work (blob downloads, submissions,
#: summaries) would otherwise wait for whole uploads once the peers outnumber its threads.
PUSH_THREADS = 16
PUSH_THREAD_PREFIX = "bcfl-push"
MAX_ATTEMPTS_PER_ROUND = 3
#: Seconds between two progress lines of one round's training in the node's log.
STEP_LOG_S = 5.0


# --- attacks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attack:
    """How a simulated attacker corrupts its contribution: its labels, its delta, or both."""

    name: str
    labels: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    delta: Callable[[Delta, int], Delta] | None = None  # (delta, round) -> delta
    #: Attacks built on the honest updates' statistics (ALIE) estimate them from models
    #: trained on bootstrap resamples of the attacker's own data: (own + resampled) -> delta.
    from_estimates: Callable[[list[Delta]], Delta] | None = None


ESTIMATE_MODELS = 4


def _resample(data: Dataset, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(data.labels), (len(data.labels),), generator=generator)
    return Dataset(data.features[rows], data.labels[rows])


def _as_dataset(data: Any, attack: Attack) -> Dataset:
    if not isinstance(data, Dataset):
        raise UsageError(f"--attack {attack.name} needs data loaded as rows (a Dataset)")
    return data


def _nan(delta: Delta, _round: int) -> Delta:
    return {k: torch.full_like(v, math.nan) for k, v in delta.items()}


def attack_by_name(spec: str) -> Attack:
    """``NAME`` or ``NAME:VALUE`` (the value scales the attack where it has a knob)."""
    name, _, raw = spec.partition(":")
    try:
        value = float(raw) if raw else None
    except ValueError:
        raise UsageError(f"--attack {spec!r}: {raw!r} is not a number") from None
    builders: dict[str, Callable[[float | None], Attack]] = {
        "label_flip": lambda _: Attack("label_flip", labels=attacks.label_flip),
        "sign_flip": lambda v: Attack(
            "sign_flip", delta=lambda d, _r: attacks.sign_flip(d, 1.0 if v is None else v)
        ),
        "scaling": lambda v: Attack(
            "scaling", delta=lambda d, _r: attacks.scaling(d, 10.0 if v is None else v)
        ),
        "gaussian": lambda v: Attack(
            "gaussian",
            delta=lambda d, r: attacks.gaussian(d, std=1.0 if v is None else v, seed=r),
        ),
        "free_rider": lambda _: Attack(
            "free_rider", delta=lambda d, _r: attacks.free_rider_zero(d)
        ),
        "nan": lambda _: Attack("nan", delta=_nan),
        # IPM with the attacker's own delta standing in for the honest mean (eps default 0.5)
        "ipm": lambda v: Attack(
            "ipm", delta=lambda d, _r: attacks.ipm([d], eps=0.5 if v is None else v)
        ),
        # ALIE: mean - z * std of the estimates, z = 1 unless given (Baruch et al. use ~1)
        "alie": lambda v: Attack(
            "alie",
            from_estimates=lambda ds: attacks.alie(ds, n=len(ds), f=0, z=1.0 if v is None else v),
        ),
    }
    if name not in builders:
        raise UsageError(f"--attack {spec!r}: expected one of {sorted(builders)}")
    return builders[name](value)


# --- the trainer ---------------------------------------------------------------------------
def warm_up(app: BoundApp | None = None) -> None:
    """Blocking: pay torch's one-time lazy start of training now, before the node serves.

    The first ``torch.optim`` optimiser a process builds (and ``torch.func``, which DP-SGD
    uses) imports torch's compiler stack, ``torch._dynamo`` among ~830 modules: seconds, and
    ~70 MB the process keeps. A trainer that did it in its first round made that round
    seconds to tens of seconds longer than the others, so the node pays it at start-up. bcfl's
    own loop with plain SGD on CPU (``app`` without its own ``train``; ``fl/sgd.py``) never
    imports it: then only a first backward pass and step are paid here, and the node stays
    ~70 MB smaller (issue 19). Without ``app``, everything is paid, as for any app.
    """
    weight = torch.nn.Parameter(torch.zeros(2))
    if app is not None and app.uses_bcfl_loop and not starts_torch_optim(app.plan, "cpu"):
        sgd = PlainSgd([weight], lr=0.1)
        (weight * weight).sum().backward()  # type: ignore[no-untyped-call]
        sgd.step()
        return
    for optimiser in (torch.optim.SGD([weight], lr=0.1), torch.optim.Adam([weight], lr=0.1)):
        optimiser.zero_grad()
        (weight * weight).sum().backward()  # type: ignore[no-untyped-call]
        optimiser.step()


def load_app_and_data(
    path: Path, state: ChainState, app_folder: Path | None = None
) -> tuple[BoundApp, Any]:
    """The genesis' app, which must match its pin, and the member's data loaded by it (both
    at start, not mid-round; the builtin app checks the CSV against the model)."""
    app = bind_app(state.config.model, state.config.training, app_folder)
    return app, app.load_data(path)


def check_app_at_start(home: Home, app_folder: Path | None = None) -> BoundApp:
    """Before the node serves: the genesis' app is installed and matches its pin (AppError,
    naming the files that differ, otherwise), so ``bcfl node --train`` fails at once."""
    from bcfl_cli.chain.config import parse_document
    from bcfl_cli.store.ledger import Ledger

    with Ledger.open(home) as ledger:
        config = parse_document(ledger.document)
    return bind_app(config.model, config.training, app_folder)


def load_training_data(path: Path, state: ChainState, app_folder: Path | None = None) -> Any:
    """The member's data, as :func:`load_app_and_data` loads it."""
    return load_app_and_data(path, state, app_folder)[1]


class StepLog:
    """Logs a round's training progress (step, mean loss since the last line) at most every
    ``STEP_LOG_S`` seconds, and its last step always: the node's log shows training move."""

    def __init__(self, round_number: int) -> None:
        self.round = round_number
        self.last = time.monotonic()

    def __call__(self, step: int, total: int, /, loss: float | None = None) -> None:
        now = time.monotonic()
        if step < total and now - self.last < STEP_LOG_S:
            return
        self.last = now
        shown = "-" if loss is None else f"{loss:.4f}"
        log.info("round %d: step %d/%s, loss %s", self.round, step, total or "?", shown)


def http_submitter(api: NodeApi) -> Submit:
    """Submit through the node's HTTP API (for a trainer that runs beside, not inside, a node)."""

    async def submit(tx: Transaction, _told: frozenset[str]) -> object:
        return await asyncio.to_thread(api.submit_tx, tx)  # that node gossips it to all

    return submit


class AutoTrainer:
    """Trains once per open round; drive it with :meth:`run` or step it with :meth:`step`."""

    def __init__(
        self,
        *,
        key: nacl.signing.SigningKey,
        data: Any,
        blobs: BlobStore,
        state: StateSource,
        submit: Submit,
        attack: Attack | None = None,
        seed: int | None = None,
        poll_s: float = DEFAULT_POLL_S,
        publish: Publish | None = None,
        app: BoundApp | None = None,
    ) -> None:
        self.key = key
        self._app = app  # None: bound from the genesis at the first round
        self.did = did_from_public_key(bytes(key.verify_key))
        self.data = data
        self.blobs = blobs
        self.state = state
        self.submit = submit
        self.attack = attack
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.poll_s = poll_s
        self.publish = publish
        self.submitted: dict[int, str] = {}  # round -> update tx hash
        self._attempts: dict[int, int] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """The chain moved (a block was committed): look for an open round now, not at the poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Step until ``stop`` is set; errors are logged and the next poll tries again.

        A step runs on every :meth:`wake` (the node calls it on each commit, so a round that
        opens is seen at once) and otherwise every ``poll_s`` (a base model that arrives later
        by sync, a retry after a failure).
        """
        log.info("trainer started for %s (attack: %s)", self.did, self.attack and self.attack.name)
        while not stop.is_set():
            self._wake.clear()  # a commit during the step below wakes the next one at once
            try:
                await self.step()
            except BcflError as exc:
                log.warning("trainer: %s", exc.message)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    def wants(self, state: ChainState) -> bool:
        """Is there an open round this member should (and can yet) contribute to?"""
        rnd = state.round
        member = state.member(self.did)
        return (
            rnd.open
            and member is not None
            and member.is_trainer
            and self.did not in rnd.submitted
            and rnd.number not in self.submitted
            and self._attempts.get(rnd.number, 0) < MAX_ATTEMPTS_PER_ROUND
        )

    async def step(self) -> Transaction | None:
        """Train and submit for the open round if it is due; the submitted tx, else None."""
        state = self.state()
        if not self.wants(state):
            return None
        rnd = state.round
        if not self.blobs.has(rnd.base_model):
            log.info("round %d: waiting for base model %s", rnd.number, rnd.base_model[:16])
            return None
        self._attempts[rnd.number] = self._attempts.get(rnd.number, 0) + 1
        log.info("round %d: training", rnd.number)
        started = time.perf_counter()
        tx = await asyncio.to_thread(self.train, state)
        told: frozenset[str] = frozenset()
        if self.publish is not None:
            log.info(
                "round %d: trained and stored in %.2f s; pushing the update to peers",
                rnd.number,
                time.perf_counter() - started,
            )
            pushed = time.perf_counter()
            told = await self.publish(tx)
            log.info("round %d: pushed in %.2f s", rnd.number, time.perf_counter() - pushed)
        try:
            await self.submit(tx, told)
        except BcflError as exc:
            status = getattr(exc, "status", None)  # a Refusal and a Refusal carry one
            if not isinstance(status, int) or not 400 <= status < 500:
                raise  # the node could not judge it (down, overloaded): the next poll retries
            # the node judged it (round closed meanwhile, duplicate): retrying cannot help
            self._attempts[rnd.number] = MAX_ATTEMPTS_PER_ROUND
            log.warning("round %d: update refused: %s", rnd.number, exc.message)
            return None
        self.submitted[rnd.number] = tx.hash
        log.info("round %d: submitted update %s", rnd.number, tx.hash[:16])
        return tx

    def train(self, state: ChainState) -> Transaction:
        """Blocking: train on the round's base model, store the delta, sign the update tx.

        The base model is read from its blob and the delta written into the blob store one
        tensor at a time (``training/update.py``): a trainer never holds the update whole.
        """
        config = state.config
        rnd = state.round
        if self._app is None:  # bound once: the genesis, and so the app, never changes
            self._app = bind_app(config.model, config.training)
        app = self._app
        data = self.data
        if self.attack is not None and self.attack.labels is not None:
            data = _as_dataset(data, self.attack)
            classes = (
                config.model.num_classes
                if isinstance(config.model, ModelSpec)
                else int(data.labels.max()) + 1
            )
            data = Dataset(data.features, self.attack.labels(data.labels, classes))
        seed = subseed(self.seed, f"round-{rnd.number}")
        rewrite = None
        if self.attack is not None and (self.attack.delta or self.attack.from_estimates):
            rewrite = self._attacked(app, data, seed, rnd.number)

        def stored(seconds: float) -> None:
            log.info("round %d: update written into the blob store in %.2f s", rnd.number, seconds)

        try:
            update = train_update(
                app,
                self.blobs,
                rnd.base_model,
                data,
                config.contract,
                seed=seed,
                progress=StepLog(rnd.number),
                rewrite=rewrite,
                with_norm=False,  # nobody reads it here; the validators compute it
                on_stored=stored,
            )
        except ContractError as exc:
            raise StoreError(f"base model {rnd.base_model} unreadable: {exc.message}") from exc
        return build_update_tx(
            self.key,
            state.chain_id,
            round_number=rnd.number,
            base_model=rnd.base_model,
            blob=update.blob,
            blob_size=update.blob_size,
            num_samples=update.num_samples,
            metrics=update.metrics,
        )

    def _attacked(self, app: BoundApp, data: Any, seed: int, round_number: int) -> Rewrite:
        """The attack's rewrite of the honest delta (attackers hold whole deltas: tests only)."""
        attack = self.attack
        assert attack is not None

        def rewrite(base: Mapping[str, torch.Tensor], result: TrainResult) -> Delta:
            delta = dict(result.delta)
            if attack.from_estimates is not None:
                rows = _as_dataset(data, attack)
                estimates = [
                    dict(
                        app.train_round(
                            base,
                            _resample(rows, subseed(seed, f"estimate-{k}")),
                            seed=subseed(seed, f"estimate-train-{k}"),
                        ).delta
                    )
                    for k in range(ESTIMATE_MODELS)
                ]
                delta = attack.from_estimates([delta, *estimates])
            if attack.delta is not None:
                delta = attack.delta(delta, round_number)
            return delta

        return rewrite


class PeerPublisher:
    """Pushes an update's blob to every peer before its transaction is gossiped (a
    :data:`Publish`); :meth:`close` ends its threads (the node's trainer does, as it stops).

    A validator checks an update only once it holds the blob, and it fetches blobs from the
    peers it knows; a member admitted after the founders started is known to none of them, so
    its update would never be checked. Pushing the blob (chunked, resumable, idempotent) makes
    it available wherever the transaction goes. A blob of at most ``MAX_INLINE_BLOB_BYTES``
    goes with its transaction in one request where the peer takes the pair (half the requests
    of a round's updates). Best effort and bounded: a peer that is down or slow costs at most
    ``PUBLISH_TIMEOUT_S`` and is logged. A larger blob's uploads run on a pool of their own,
    at most ``PUSH_THREADS`` threads (started as the peers need them), so that they never
    hold up the node's other threaded work however many peers there are.

    ``checks`` says whether a peer (by did, None while unknown) checks updates: only those
    get the blob (issue 19: a member that only trains fetches the round's model, not its
    peers' updates, and an update of 440 MB is not sent where nobody reads it). Without it,
    every live peer does.

    ``summaries``: the node's (``fl/update_summary.py``). The update's chunks, read once for
    the push, are also summarised on a worker thread, so that this node's own contract check
    of its update reads no byte of it again either (it was on the round's critical path: the
    quorum waits for a trainer's node).
    """

    def __init__(
        self,
        peers: BlobPeers,
        blobs: BlobStore,
        *,
        checks: Callable[[str | None], bool] | None = None,
        summaries: UpdateSummaries | None = None,
    ) -> None:
        self.peers = peers
        self.blobs = blobs
        self.checks = checks
        self.summaries = summaries
        self._worker = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcfl-own-summary")
            if summaries is not None
            else None
        )
        # threads start one a push as needed (ThreadPoolExecutor's), up to the bound
        self._pushes = ThreadPoolExecutor(PUSH_THREADS, thread_name_prefix=PUSH_THREAD_PREFIX)

    def close(self) -> None:
        """Drop the pushes that wait for a thread; one under way runs to its end on its own
        thread (each of its requests bounded by the client's timeouts), as it did before."""
        self._pushes.shutdown(wait=False, cancel_futures=True)
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def _push(self, peer: Any, digest: str, shared: SharedChunks) -> None:
        with self.peers.blob_client(peer) as client:
            upload_blob(client, digest, self.blobs, shared=shared)

    async def _push_one(
        self, peer: Any, tx: Transaction, small: bytes | None, shared: SharedChunks
    ) -> bool:
        # A small blob (an update of a small model) goes on the node's pooled connections,
        # concurrently on the event loop: with its update, else alone; the rest, or a peer
        # that wants to resume a partial upload, through the resumable upload in a thread.
        # True: the peer holds the update as well.
        digest = tx.body["blob"]
        put_small = getattr(self.peers, "put_small_blob", None)
        push_update = getattr(self.peers, "push_update", None)
        if small is not None and push_update is not None and await push_update(peer, tx, small):
            return True
        if small is not None and put_small is not None and await put_small(peer, digest, small):
            return False
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pushes, self._push, peer, digest, shared)
        return False

    async def __call__(self, tx: Transaction) -> frozenset[str]:
        peers, blobs, checks = self.peers, self.blobs, self.checks
        digest = tx.body["blob"]
        live = peers.live()
        identify = getattr(peers, "identify", None)
        if checks is not None and identify is not None:
            # a peer the sync loop has not reached yet: ask who it is, rather than send a
            # whole update to a member that never reads it (one status request each)
            unknown = [p for p in live if getattr(p, "did", None) is None]
            await asyncio.gather(*(identify(p) for p in unknown), return_exceptions=True)
        targets = [p for p in live if checks is None or checks(getattr(p, "did", None))]
        small = None
        if blobs.size(digest) <= MAX_INLINE_BLOB_BYTES:
            small = blobs.get(digest, max_bytes=MAX_INLINE_BLOB_BYTES)
        feed = None
        if self._worker is not None and small is None and targets:
            feed = SummaryFeed(blobs.size(digest), self._worker, backlog_bytes=OWN_SUMMARY_BACKLOG)
        # each chunk read and digested once for all the peers (and summarised once)
        shared = SharedChunks(on_read=feed.offer if feed is not None else None)
        results = await asyncio.gather(
            *(
                asyncio.wait_for(self._push_one(p, tx, small, shared), PUBLISH_TIMEOUT_S)
                for p in targets
            ),
            return_exceptions=True,
        )
        if feed is not None and self.summaries is not None:
            summary = await asyncio.to_thread(feed.result, digest)
            if summary is not None:
                self.summaries.put(digest, summary)
        told: set[str] = set()
        for peer, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("update blob %s not pushed to %s: %s", digest[:16], peer.url, result)
            elif result and getattr(peer, "did", None):
                told.add(did_tag(peer.did))
        return frozenset(told)


def peer_publisher(
    peers: BlobPeers,
    blobs: BlobStore,
    *,
    checks: Callable[[str | None], bool] | None = None,
    summaries: UpdateSummaries | None = None,
) -> PeerPublisher:
    """A :class:`PeerPublisher` (its caller closes it)."""
    return PeerPublisher(peers, blobs, checks=checks, summaries=summaries)


async def run_node_trainer(
    host: TrainerHost,
    data_path: Path,
    stop: asyncio.Event,
    *,
    attack: str | None = None,
    seed: int | None = None,
    poll_s: float = DEFAULT_POLL_S,
    app_folder: Path | None = None,
) -> None:
    """The ``bcfl node --train PART.csv [--attack NAME]`` task, inside the node's event loop.

    The data is checked against the genesis model before the first round, so a wrong file
    fails the node at start rather than silently later.
    """
    app, data = await asyncio.to_thread(load_app_and_data, data_path, host.state, app_folder)

    async def submit(tx: Transaction, told: frozenset[str]) -> object:
        return host.submit(tx, seen=told)

    publisher = peer_publisher(
        host.peers,
        host.blobs,
        checks=lambda did: _checks_updates(host, did),
        summaries=_summaries_of(host),
    )
    trainer = AutoTrainer(
        key=host.key,
        data=data,
        blobs=host.blobs,
        state=lambda: host.state,
        submit=submit,
        attack=attack_by_name(attack) if attack else None,
        seed=seed,
        poll_s=poll_s,
        publish=publisher,
        app=app,
    )
    host.on_commit.append(lambda _block: trainer.wake())
    try:
        await trainer.run(stop)
    finally:  # stopped or cancelled (the node closing): its push threads go too
        publisher.close()


def _summaries_of(host: TrainerHost) -> UpdateSummaries | None:
    """The node's update summaries, which its contract checks read (a host without them,
    a test's, gets none: its own update is then checked from the file)."""
    summaries = getattr(host, "summaries", None)
    return summaries if isinstance(summaries, UpdateSummaries) else None


def _checks_updates(host: TrainerHost, did: str | None) -> bool:
    """Whether the peer ``did`` may check updates: anyone but an active member that only
    trains (node/server.py's ``BlobScope``: such a node fetches the round's model alone)."""
    if did is None:
        return True
    member = host.state.member(did)
    return member is None or not member.active or member.is_validator or not member.is_trainer


__all__ = [
    "Attack",
    "AutoTrainer",
    "PeerPublisher",
    "TrainerHost",
    "attack_by_name",
    "check_app_at_start",
    "http_submitter",
    "load_app_and_data",
    "load_training_data",
    "peer_publisher",
    "run_node_trainer",
    "warm_up",
]
