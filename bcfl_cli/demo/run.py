"""``bcfl demo``: a whole consortium trains on this machine, and the chain is checked after.

The run, in order: pick (or make) one data partition per member; write the consortium file;
every founder makes its identity and its genesis (``LocalConsortium``); one ``bcfl node``
process per member starts and trains on its own partition (attackers run the same node with
``--attack``); the demo follows the chain of the first node that answers, scoring every
aggregate model on the held-out test set; once the planned rounds are closed all nodes stop and
every home is re-verified from its genesis (``verify-chain --deep``). The homes are kept (in a
temporary directory unless ``keep`` names one) so the chain can be inspected afterwards.

Accuracy is computed by the demo from the aggregate models named on chain: the nodes never
report it, so a node cannot make the curve look better than its chain is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from bcfl_cli.demo.launcher import GenesisPlan, LocalConsortium, MemberPlan, wait_for
from bcfl_cli.demo.progress import ChainProgress
from bcfl_cli.errors import BcflError, NodeError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.protocol.spec import (
    RULE_NAMES,
    UPDATE_DTYPE_NAMES,
    AggregationSpec,
    AppModelSpec,
    ContractRules,
    ModelSpec,
    TrainingPlan,
)

Dataset = Literal["digits", "breast-cancer"]
DATASETS: tuple[str, ...] = ("digits", "breast-cancer")
RULES: tuple[str, ...] = RULE_NAMES
#: The demo's attack names -> the node's ``--attack`` names.
ATTACKS: dict[str, str] = {
    "sign-flip": "sign_flip",
    "scaling": "scaling",
    "label-flip": "label_flip",
    "noise": "gaussian",
    "free-rider": "free_rider",
    "alie": "alie",
    "ipm": "ipm",
}
HONEST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
SPLIT_SEED = 2024
MAX_MEMBERS = 32
POLL_S = 0.2


# --- options and the genesis plan -----------------------------------------------------------
@dataclass(frozen=True)
class DemoOptions:
    members: int = 4
    rounds: int = 10
    dataset: str = "digits"
    non_iid: float = 0.5  # Dirichlet alpha of the label split; 0 means an IID split
    attackers: int = 0
    attack: str | None = None
    rule: str = "fedavg"
    keep: Path | None = None
    data_dir: Path | None = None  # where sample_data lives (default: found beside the package)
    timeout_s: float | None = None
    empty_block_interval: float = 0.3
    timeout_propose_ms: int = 1500
    seed: int | None = None  # seeds every member's training (None: each node draws its own)
    app: Path | None = None  # a model app's folder (None: the builtin mlp for the dataset)
    tls: bool = False  # --tls: every node serves TLS 1.3 with its pinned certificate (issue 22)
    #: --update-dtype: the genesis' contract.update_dtype (issue 19: compact updates)
    update_dtype: str = "float32"

    def check(self) -> None:
        """Refuse impossible combinations before anything is created."""
        if not 1 <= self.members <= MAX_MEMBERS:
            raise UsageError(f"--members {self.members}: expected 1 to {MAX_MEMBERS}")
        if not 1 <= self.rounds <= 1000:
            raise UsageError(f"--rounds {self.rounds}: expected 1 to 1000")
        if self.dataset not in DATASETS:
            raise UsageError(f"--dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if self.rule not in RULES:
            raise UsageError(f"--rule {self.rule!r}: expected one of {', '.join(RULES)}")
        if self.non_iid < 0:
            raise UsageError("--non-iid: a Dirichlet alpha > 0, or 0 for an IID split")
        if not 0 <= self.attackers < self.members:
            raise UsageError(
                f"--attackers {self.attackers}: expected 0 to {self.members - 1} "
                "(at least one member must be honest)"
            )
        if self.attackers and self.attack is None:
            raise UsageError("--attackers needs --attack NAME", hint=f"one of {sorted(ATTACKS)}")
        if self.attack is not None and self.attack not in ATTACKS:
            raise UsageError(f"--attack {self.attack!r}: expected one of {sorted(ATTACKS)}")
        if self.update_dtype not in UPDATE_DTYPE_NAMES:
            raise UsageError(
                f"--update-dtype {self.update_dtype!r}: expected one of "
                f"{', '.join(UPDATE_DTYPE_NAMES)}"
            )

    @property
    def split_name(self) -> str:
        return f"{self.members}-iid" if self.non_iid == 0 else f"{self.members}-dir{self.non_iid:g}"


def member_names(members: int, attackers: int) -> list[str]:
    """Honest members by the usual names, attackers (the last ``attackers``) as mallory-N."""
    honest = members - attackers
    names = [
        HONEST_NAMES[i] if i < len(HONEST_NAMES) else f"member-{i + 1:02d}" for i in range(honest)
    ]
    return names + [f"mallory-{i + 1}" for i in range(attackers)]


def genesis_plan(options: DemoOptions) -> GenesisPlan:
    """The demo's genesis: small models, plans tuned so the default run takes well under 2 min.

    Digits: 5 local epochs of SGD (lr 0.05) per round reach ~0.91 test accuracy in 10 rounds on
    the Dirichlet 0.5 split (plain FedAvg, measured), where 1 epoch reaches ~0.85. Breast cancer
    needs Adam (see sample_data/README.md) and 10 local epochs (~0.9 after 10 rounds; 3 epochs
    stay at the majority class, 0.63). The contract's norm bound (10) is ~6x an honest
    digits update's first-round norm (~1.7), so a boost by 10 is rejected on chain while every
    honest update passes. A round closes once every member's update is
    accepted, or ``deadline_blocks`` after it opened (rejected attackers cost that wait).
    """
    validators = options.members
    if options.dataset == "digits":
        model = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, hidden=[64], seed=0)
        optimiser: Literal["sgd", "adam"] = "sgd"
        lr, epochs, max_norm = 0.05, 5, 10.0
    else:
        model = ModelSpec(architecture="mlp", input_shape=[30], num_classes=2, hidden=[32], seed=0)
        optimiser, lr, epochs, max_norm = "adam", 0.01, 10, 10.0
    training = TrainingPlan(
        rounds=options.rounds,
        optimizer=optimiser,
        lr=lr,
        batch_size=32,
        local_epochs=epochs,
        min_updates=options.members,
        deadline_blocks=12 + options.members,
    )
    # Rules set for the attackers expected (f, at least one), as a consortium fearing them
    # would: the trimmed mean cuts f at each end; Multi-Krum keeps the m = n - f best-scored
    # deltas (n - f - 2 is the size of each score's neighbourhood, inside the rule, not m)
    expected = max(1, options.attackers)
    aggregation = AggregationSpec(
        rule=options.rule,  # type: ignore[arg-type]
        trim_beta=min(0.45, max(0.1, expected / options.members)),
        krum_f=expected,
        krum_m=max(1, options.members - expected),
    )
    approvals = max(1, min(2, validators))
    return GenesisPlan(
        model=model,
        training=training,
        contract=ContractRules(
            max_update_norm=max_norm,
            min_samples=10,
            update_dtype=options.update_dtype,  # type: ignore[arg-type]
        ),
        aggregation=aggregation,
        name=f"bcfl demo ({options.dataset}, {options.members} members)",
        admission_approvals=approvals,
        removal_approvals=approvals,
        tls="pinned" if options.tls else None,
    )


# --- data ---------------------------------------------------------------------------------------
def sample_data_dir(explicit: Path | None = None) -> Path:
    """The sample data: ``explicit``, $BCFL_SAMPLE_DATA, or ``sample_data/`` of the checkout."""
    candidates = [explicit] if explicit is not None else []
    env = os.environ.get("BCFL_SAMPLE_DATA")
    if env:
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "sample_data")
    for path in candidates:
        if path is not None and (path / "digits-train.csv").is_file():
            return path
    raise UsageError(
        "the sample data (sample_data/digits-train.csv) was not found",
        hint="run the demo from a source checkout, or point BCFL_SAMPLE_DATA at sample_data/",
    )


def partitions(options: DemoOptions, data: Path, scratch: Path) -> list[Path]:
    """One CSV per member: the shipped split where one exists, else a fresh one in ``scratch``."""
    shipped = data / "partitions" / options.dataset / options.split_name
    files = sorted(shipped.glob("member-*.csv")) if shipped.is_dir() else []
    if len(files) == options.members:
        return files
    from bcfl_cli.fl.split import split_csv

    report = split_csv(
        data / f"{options.dataset}-train.csv",
        options.members,
        seed=SPLIT_SEED,
        dirichlet=None if options.non_iid == 0 else options.non_iid,
        out_dir=scratch / f"{options.dataset}-{options.split_name}",
    )
    return list(report.files)


def demo_data(
    options: DemoOptions, plan: GenesisPlan, data: Path, scratch: Path
) -> tuple[list[Path], Path]:
    """Each member's partition and the test set: the app's ``demo_data`` hook where it has
    one (data that is not the sample CSVs), else the sample data set split as usual."""
    if plan.app_folder is not None:
        from bcfl_cli.apps.runner import bind_app

        app = bind_app(plan.model, plan.training, plan.app_folder)
        found = app.demo_data(
            options.members,
            scratch,
            seed=SPLIT_SEED,
            non_iid=options.non_iid,
        )
        if found is not None:
            return found
    return partitions(options, data, scratch), data / f"{options.dataset}-test.csv"


class Scorer:
    """Scores a model blob on the held-out test set (loss, accuracy), with the genesis' app."""

    def __init__(self, plan: GenesisPlan, test_path: Path, max_bytes: int) -> None:
        from bcfl_cli.apps.runner import bind_app

        self.app = bind_app(plan.model, plan.training, plan.app_folder)
        self.max_bytes = max_bytes
        self.test = self.app.load_data(test_path)

    def score(self, blob: bytes) -> tuple[float, float]:
        from bcfl_cli.fl.tensors import decode_tensors

        state = decode_tensors(blob, max_bytes=self.max_bytes)
        metrics = self.app.evaluate(state, self.test)
        return metrics.get("loss", float("nan")), metrics.get("accuracy", float("nan"))


def with_app(plan: GenesisPlan, folder: Path) -> GenesisPlan:
    """``plan`` training the app in ``folder``: its pin as the model, and its
    ``[tool.bcfl.demo.training]`` keys (if any) over the demo's training plan."""
    from bcfl_cli.apps.project import pin_for, read_project

    project = read_project(folder)
    training = plan.training
    if project.demo_training:
        try:
            training = TrainingPlan.model_validate(
                {**training.model_dump(exclude_none=True), **project.demo_training}
            )
        except ValueError as exc:
            raise UsageError(f"{folder}/pyproject.toml [tool.bcfl.demo.training]: {exc}") from exc
    return replace(
        plan,
        model=AppModelSpec(app=pin_for(project)),
        training=training,
        app_folder=Path(folder).resolve(),
    )


# --- the result -------------------------------------------------------------------------------
@dataclass
class NodeResult:
    name: str
    did: str
    attack: str | None
    height: int = -1
    head: str = ""
    verify: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return bool(self.verify.get("ok"))


@dataclass
class DemoRun:
    """The live state of a run (what the progress display draws) and, at the end, its result."""

    options: DemoOptions
    root: Path
    names: list[str]
    attackers: dict[str, str]  # name -> demo attack name
    dids: dict[str, str] = field(default_factory=dict)
    phase: str = "setting up"
    started: float = field(default_factory=time.monotonic)
    genesis: str = ""
    progress: ChainProgress | None = None
    heights: dict[str, int] = field(default_factory=dict)
    initial_accuracy: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    nodes: list[NodeResult] = field(default_factory=list)
    consistent: bool | None = None
    common_height: int = -1
    png: Path | None = None
    #: why no PNG was drawn (matplotlib missing), shown in the summary
    png_note: str = ""
    interrupted: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def curve(self) -> list[tuple[int, float]]:
        """(round, test accuracy): round 0 is the initial model."""
        points = [] if self.initial_accuracy is None else [(0, self.initial_accuracy)]
        if self.progress is not None:
            points += [
                (r.number, r.accuracy)
                for r in self.progress.closed_rounds
                if r.accuracy is not None
            ]
        return points

    @property
    def final_accuracy(self) -> float | None:
        curve = self.curve()
        return curve[-1][1] if len(curve) > 1 else None

    @property
    def ok(self) -> bool:
        rounds_done = self.progress is not None and len(self.progress.closed_rounds) >= (
            self.options.rounds
        )
        verified = bool(self.nodes) and all(n.verified for n in self.nodes)
        return rounds_done and verified and bool(self.consistent) and not self.interrupted

    def verdicts(self) -> dict[str, Any]:
        """What the contract made of the attackers' updates and of the honest ones."""
        members = self.to_dict()["members"]
        attackers = [m for m in members if m["attack"]]
        honest = [m for m in members if not m["attack"]]
        return {
            "attacker_accepted": sum(m.get("accepted", 0) for m in attackers),
            "attacker_rejected": sum(m.get("rejected", 0) for m in attackers),
            "rejection_reasons": sorted({r for m in attackers for r in m["rejections"]}),
            "honest_rejected": sum(m.get("rejected", 0) for m in honest),
        }

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable summary (``bcfl demo --json``)."""
        progress = self.progress
        members = []
        for name in self.names:
            did = self.dids.get(name, "")
            updates = []
            if progress is not None:
                updates = [
                    {
                        "round": r.round,
                        "status": r.status,
                        "reason": r.reason,
                        "tx": r.tx,
                        "included_by_rule": r.included,
                    }
                    for _, r in sorted(progress.updates.get(did, {}).items())
                ]
            counts = progress.member_counts(did) if progress else {}
            members.append(
                {
                    "name": name,
                    "did": did,
                    "attack": self.attackers.get(name),
                    **counts,
                    "rejections": progress.rejections(did) if progress else {},
                    "updates": updates,
                }
            )
        rounds = [
            {
                "round": r.number,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "opened_height": r.opened_height,
                "closed_height": r.closed_height,
                "aggregated_updates": r.aggregated,
                "rule": r.rule,
                "model": r.model,
            }
            for r in (progress.closed_rounds if progress else [])
        ]
        o = self.options
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "options": {
                "members": o.members,
                "rounds": o.rounds,
                "dataset": o.dataset,
                "non_iid": o.non_iid,
                "attackers": o.attackers,
                "attack": o.attack,
                "rule": o.rule,
                "seed": o.seed,
                "tls": o.tls,
            },
            "genesis": self.genesis,
            "homes": str(self.root),
            "initial_accuracy": self.initial_accuracy,
            "final_accuracy": self.final_accuracy,
            "accuracy": [acc for _, acc in self.curve()[1:]],
            "rounds": rounds,
            "members": members,
            "misbehaviour": progress.misbehaviour if progress else [],
            "nodes": [
                {
                    "name": n.name,
                    "did": n.did,
                    "height": n.height,
                    "head": n.head,
                    "verify": n.verify,
                }
                for n in self.nodes
            ],
            "consistent": self.consistent,
            "common_height": self.common_height,
            "png": str(self.png) if self.png else None,
            "timings": self.timings,
        }


Listener = Callable[[DemoRun], None]


# --- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the nodes are stopped on every way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(options: DemoOptions, *, listener: Listener | None = None) -> DemoRun:
    """Run the whole demo; the returned ``DemoRun`` holds the result (``ok``, ``to_dict``).

    KeyboardInterrupt (Ctrl-C, SIGTERM) stops every node before it propagates; the partial run
    is then in the exception's ``demo_run`` attribute.
    """
    options.check()
    notify = listener or (lambda _run: None)
    data = sample_data_dir(options.data_dir)
    root = (
        options.keep.expanduser().resolve()
        if options.keep is not None
        else Path(tempfile.mkdtemp(prefix="bcfl-demo-"))
    )
    if root.exists() and any(root.iterdir()) and (root / "consortium.toml").exists():
        raise UsageError(
            f"{root} already holds a demo consortium", hint="pass an empty or new --keep DIR"
        )
    names = member_names(options.members, options.attackers)
    attackers = {n: options.attack for n in names if n.startswith("mallory-") and options.attack}
    run = DemoRun(options, root, names, attackers)
    with _terminate_as_interrupt():
        try:
            _run(run, data, notify)
        except KeyboardInterrupt as exc:
            run.interrupted = True
            run.phase = "interrupted"
            exc.demo_run = run  # type: ignore[attr-defined]
            raise
    return run


def member_plans(run: DemoRun, parts: list[Path]) -> list[MemberPlan]:
    """Each member's node: its partition, its attack if any, and its training seed.

    With ``--seed`` every member trains with its own seed derived from it and its name, so a
    rerun submits the same updates and the chain reaches the same models bit for bit.
    """
    from bcfl_cli.fl.training import subseed  # imports torch, which the CLI's start-up avoids

    seed = run.options.seed
    return [
        MemberPlan(
            name,
            data=parts[i],
            attack=ATTACKS[run.attackers[name]] if name in run.attackers else None,
            train_seed=None if seed is None else subseed(seed, f"demo-member-{name}"),
        )
        for i, name in enumerate(run.names)
    ]


def _run(run: DemoRun, data: Path, notify: Listener) -> None:
    options = run.options
    plan = genesis_plan(options)
    t0 = time.monotonic()
    if options.app is not None:
        plan = with_app(plan, options.app)
    parts, test_path = demo_data(options, plan, data, run.root / "data")
    members = member_plans(run, parts)
    notify(run)
    with LocalConsortium(
        run.root / "homes",
        members,
        plan,
        empty_block_interval=options.empty_block_interval,
        timeout_propose_ms=options.timeout_propose_ms,
    ) as consortium:
        run.genesis = consortium.genesis_hash
        run.dids = {name: consortium.members[name].did for name in run.names}
        run.timings["setup_s"] = round(time.monotonic() - t0, 2)
        run.phase = "starting nodes"
        notify(run)
        t_launch = time.monotonic()
        consortium.start_all(wait=False)
        scorer = Scorer(plan, test_path, 1 << 30)
        run.initial_accuracy = _initial_accuracy(scorer, consortium)
        for name in run.names:
            consortium.wait_ready(name, timeout=120.0)
            notify(run)
        run.timings["startup_s"] = round(time.monotonic() - t_launch, 2)
        run.phase = "training"
        _follow(run, consortium, scorer, notify, t_launch)
        run.phase = "stopping nodes"
        notify(run)
        t_stop = time.monotonic()
        consortium.close()
        run.timings["stop_s"] = round(time.monotonic() - t_stop, 2)
    run.phase = "verifying"
    notify(run)
    t_verify = time.monotonic()
    _verify_all(run, consortium)
    run.timings["verify_s"] = round(time.monotonic() - t_verify, 2)
    if run.progress is not None:
        with contextlib.suppress(BcflError):
            mark_rule_inclusion(
                run.progress,
                plan.aggregation,
                consortium.initial_model,
                lambda digest: _model_blob(consortium, digest, scorer.max_bytes),
                scorer.max_bytes,
            )
    from bcfl_cli.demo.chart import write_chart

    if len(run.curve()) >= 2:
        run.png, run.png_note = write_chart(run, run.root / "accuracy.png")
    run.timings["total_s"] = round(time.monotonic() - t0, 2)
    run.phase = "done"
    notify(run)


def mark_rule_inclusion(
    progress: ChainProgress,
    spec: AggregationSpec,
    initial_model: str,
    load: Callable[[str], bytes | None],
    max_bytes: int,
) -> None:
    """Mark which accepted updates each round's rule used.

    The ``aggregate`` transaction lists every accepted update; a robust rule (``krum``,
    ``cosine``, ``cosine_trajectory``) may give some of them no weight, and that is not on the
    chain. It is recomputed here from the blobs, as ``verify-chain --deep`` recomputes it, and
    kept only when the recomputed model is the one on chain.
    """
    from bcfl_cli.fl.aggregation.base import UpdateInput, aggregate, rule_needs_initial_model
    from bcfl_cli.fl.tensors import decode_tensors

    initial = None
    if rule_needs_initial_model(spec.rule):
        raw = load(initial_model)
        if raw is None:
            return
        initial = decode_tensors(raw, max_bytes=max_bytes)
    records = {r.tx: r for per in progress.updates.values() for r in per.values()}
    for rnd in progress.closed_rounds:
        used = [records[h] for h in rnd.updates if h in records]
        base_raw = load(rnd.base_model)
        blobs = [load(r.blob) for r in used]
        if base_raw is None or any(b is None for b in blobs) or not used:
            continue
        inputs = [
            UpdateInput(r.tx, decode_tensors(b, max_bytes=max_bytes), r.num_samples)
            for r, b in zip(used, blobs, strict=True)
            if b is not None
        ]
        base = decode_tensors(base_raw, max_bytes=max_bytes)
        result = aggregate(spec, base, inputs, initial_state=initial)
        if result.model_hash != rnd.model:
            continue  # not what the chain holds: say nothing rather than something wrong
        for record in used:
            record.included = record.tx in result.included


def _initial_accuracy(scorer: Scorer, consortium: LocalConsortium) -> float | None:
    blob = _model_blob(consortium, consortium.initial_model, scorer.max_bytes)
    return None if blob is None else scorer.score(blob)[1]


def _model_blob(consortium: LocalConsortium, digest: str, max_bytes: int) -> bytes | None:
    """An aggregate model from any member's blob store (each node stores what it verified)."""
    from bcfl_cli.store.blobs import BlobStore

    for member in consortium.members.values():
        store = BlobStore(member.home.blob_dir)
        if store.has(digest):
            with contextlib.suppress(BcflError):
                return store.get(digest, max_bytes=max_bytes)
    return None


def _follow(
    run: DemoRun,
    consortium: LocalConsortium,
    scorer: Scorer,
    notify: Listener,
    t_launch: float,
) -> None:
    """Fold blocks in until the planned rounds are closed and scored (bounded in time)."""
    options = run.options
    names = {m.did: m.name for m in consortium.members.values()}
    progress = run.progress = ChainProgress(names)
    limit = options.timeout_s if options.timeout_s is not None else 90.0 + 20.0 * options.rounds
    deadline = time.monotonic() + limit
    closed_at: dict[int, float] = {}
    while True:
        for name in run.names:
            consortium.check_alive(name)
        run.heights = consortium.heights(run.names)
        source = max(run.names, key=lambda n: run.heights.get(n, -1))
        if run.heights.get(source, -1) > progress.height:
            with contextlib.suppress(Exception):
                _fetch(consortium, source, progress)
        for rnd in progress.closed_rounds:
            if rnd.accuracy is None and rnd.model is not None:
                blob = _model_blob(consortium, rnd.model, scorer.max_bytes)
                if blob is not None:
                    rnd.loss, rnd.accuracy = scorer.score(blob)
                    closed_at.setdefault(rnd.number, time.monotonic() - t_launch)
        if progress.rounds and "first_round_open_s" not in run.timings:
            run.timings["first_round_open_s"] = round(time.monotonic() - t_launch, 2)
        notify(run)
        scored = [r for r in progress.closed_rounds if r.accuracy is not None]
        if len(scored) >= options.rounds:
            break
        if time.monotonic() > deadline:
            raise NodeError(
                f"the demo did not finish {options.rounds} rounds in {limit:g} s "
                f"({len(scored)} closed)",
                hint=f"the nodes' output is under {consortium.root}/*/stdout-*.log",
            )
        time.sleep(POLL_S)
    marks = [closed_at[r] for r in sorted(closed_at)]
    run.timings["round_closed_s"] = [round(m, 2) for m in marks]
    first = run.timings.get("first_round_open_s", 0.0)
    run.timings["training_s"] = round(marks[-1] - first, 2) if marks else 0.0
    # Let every node hold the last aggregate before stopping (each verifies its own copy).
    target = progress.closed_rounds[-1].closed_height or progress.height
    with contextlib.suppress(NodeError):
        wait_for(
            lambda: all(h >= target for h in consortium.heights(run.names).values()) or None,
            20.0,
            f"every node at height {target}",
        )


def _fetch(consortium: LocalConsortium, source: str, progress: ChainProgress) -> None:
    from bcfl_cli.protocol.block import Block

    for _ in range(10):  # at most 1000 blocks a poll
        blocks = consortium.blocks(source, progress.height + 1, 100)
        if not blocks:
            return
        for raw in blocks:
            progress.feed(raw, Block.from_dict(raw).hash)


def _verify_all(run: DemoRun, consortium: LocalConsortium) -> None:
    """``verify-chain --deep`` of every home, then the hash of the common height everywhere."""
    from bcfl_cli.fl.checks import FLChecks
    from bcfl_cli.store.ledger import Ledger
    from bcfl_cli.verify import verify_chain

    run.nodes = []
    for name in run.names:
        member = consortium.members[name]
        result = NodeResult(name, member.did, run.attackers.get(name))
        try:
            with Ledger.open(member.home) as ledger:
                report = verify_chain(
                    ledger, deep=True, checks=FLChecks(ledger.blobs, keep_models=False)
                )
                result.height, result.head = ledger.height, ledger.head().hash
            result.verify = report.to_dict()
        except BcflError as exc:
            result.verify = {"ok": False, "error": exc.message}
        run.nodes.append(result)
    heights = [n.height for n in run.nodes if n.height >= 0]
    if len(heights) != len(run.nodes):
        run.consistent = False
        return
    run.common_height = min(heights)
    hashes = set()
    for name in run.names:
        with Ledger.open(Home.resolve(consortium.members[name].home.root)) as ledger:
            hashes.add(ledger.block(run.common_height).hash)
    run.consistent = len(hashes) == 1


__all__ = [
    "ATTACKS",
    "DATASETS",
    "RULES",
    "DemoOptions",
    "DemoRun",
    "NodeResult",
    "genesis_plan",
    "member_names",
    "partitions",
    "run_demo",
    "sample_data_dir",
]
