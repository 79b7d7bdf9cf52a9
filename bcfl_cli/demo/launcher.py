"""A whole consortium on one machine: one real ``bcfl node`` process per member on loopback.

The one local-consortium harness: ``bcfl demo`` (``run.py``), the multi-process tests
(``tests/network/cluster.py``, ``tests/faults/helpers.py``) and the benchmarks
(``bench/common.py``'s ``BenchConsortium``) all start their nodes here, so that a fix to how
homes are made, ports are chosen or processes are stopped reaches all of them.

How the founders' homes are made: every founder generates its own identity, the consortium file
lists all their dids, and *each* founder runs ``init_consortium`` on that same file with the
same genesis time, exactly as each organisation would run ``bcfl init consortium.toml`` on its
own machine. The genesis is a pure function of the file and the time, so all founders hold the
same genesis hash without copying any store.

``LocalConsortium`` always stops what it started: use it as a context manager. Stopping sends
SIGCONT first (a paused node cannot handle SIGTERM), then SIGTERM, then SIGKILL after a grace,
and reaps every child, so neither a finished run nor a Ctrl-C leaves a process behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.errors import NodeError
from bcfl_cli.home import Home
from bcfl_cli.identity import Identity, generate_identity
from bcfl_cli.protocol.spec import (
    AggregationSpec,
    AppModelSpec,
    ContractRules,
    ModelSpec,
    TrainingPlan,
)

#: Local demo keys only: the homes are throw-away and the passphrase reaches the nodes by env.
DEMO_PASSPHRASE = "bcfl local consortium (not a secret)"  # noqa: S105
DEFAULT_GENESIS_TIME_MS = 1_763_000_000_000
STOP_GRACE_S = 10.0

T = TypeVar("T")


# --- the consortium file ------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberPlan:
    """One founder: its roles and power in the genesis, and what its node does when started."""

    name: str
    roles: tuple[str, ...] = ("trainer", "validator")
    power: int = 1
    data: Path | None = None  # --train PART.csv
    attack: str | None = None  # --attack NAME (a simulated attacker)
    train_seed: int | None = None  # --train-seed S (None: random at each start)


@dataclass(frozen=True)
class GenesisPlan:
    """Everything of the consortium file except the members."""

    model: ModelSpec | AppModelSpec
    training: TrainingPlan
    contract: ContractRules = field(default_factory=ContractRules)
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)
    name: str = "Local Consortium"
    admission_approvals: int = 2
    removal_approvals: int = 2
    #: the genesis cap on pending join requests; None leaves it at the default (not written)
    max_pending_joins: int | None = None
    #: the folder of the model app ``model`` pins (every node gets ``--app`` through BCFL_APP)
    app_folder: Path | None = None
    #: ``consortium.tls`` (issue 22): "pinned" has every founder's node certificate pinned
    tls: str | None = None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_table(name: str, values: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    nested = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in nested]
    for key, sub in nested.items():
        lines += ["", *_toml_table(f"{name}.{key}", sub)]
    return [*lines, ""]


def consortium_toml(
    plan: GenesisPlan,
    members: Sequence[tuple[MemberPlan, str]],
    pins: dict[str, str] | None = None,
) -> str:
    """The consortium file (what ``bcfl init`` reads) for ``members`` as (plan, did) pairs;
    ``pins``: member name -> its ``tls = {...}`` line (``bcfl tls init`` prints it)."""
    lines = [
        "# Written by bcfl_cli.demo: a local consortium, one node process per member.",
        *_toml_table(
            "consortium",
            {
                "name": plan.name,
                "admission_approvals": plan.admission_approvals,
                "removal_approvals": plan.removal_approvals,
                **(
                    {"max_pending_joins": plan.max_pending_joins}
                    if plan.max_pending_joins is not None
                    else {}
                ),
                **({"tls": plan.tls} if plan.tls is not None else {}),
            },
        ),
    ]
    for member, did in members:
        lines += [
            "[[members]]",
            f"name = {_toml_value(member.name)}",
            f"did = {_toml_value(did)}",
            f"roles = {_toml_value(list(member.roles))}",
            f"power = {member.power}",
            *([pins[member.name]] if pins and member.name in pins else []),
            "",
        ]
    if isinstance(plan.model, AppModelSpec):
        from bcfl_cli.apps.project import pin_toml

        lines += [pin_toml(plan.model.app)]
    else:
        lines += _toml_table("model", plan.model.model_dump(mode="python"))
    lines += _toml_table("training", plan.training.model_dump(mode="python", exclude_none=True))
    lines += _toml_table("contract", plan.contract.model_dump(mode="python"))
    lines += _toml_table("aggregation", plan.aggregation.model_dump(mode="python"))
    return "\n".join(lines)


# --- small helpers ----------------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) comes from the ephemeral range, where every
    outgoing connection on a busy machine also takes its local port: one may take ours between
    choosing it and the node binding it. Random free ports in 20000-30000 avoid that.
    """
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(100 * count + 1000):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(20_000, 30_000)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    raise NodeError(f"found only {len(chosen)} of {count} free ports in 20000-30000")


def bcfl_command() -> list[str]:
    """How to run ``bcfl`` with the interpreter that runs us (venv script, else ``-c``)."""
    script = Path(sys.executable).parent / "bcfl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from bcfl_cli.cli.app import main; main()"]


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; NodeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NodeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- members and their processes ------------------------------------------------------------
@dataclass
class Member:
    name: str
    home: Home
    identity: Identity
    port: int
    data: Path | None = None
    attack: str | None = None
    train_seed: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0
    paused: bool = False
    tls: bool = False  # serves HTTPS with its pinned certificate (``bcfl node --tls``)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalConsortium:
    """Founders of one consortium, each with its own home under ``root`` and its own port."""

    def __init__(
        self,
        root: Path,
        members: Sequence[MemberPlan],
        genesis: GenesisPlan,
        *,
        passphrase: str = DEMO_PASSPHRASE,
        genesis_time_ms: int = DEFAULT_GENESIS_TIME_MS,
        empty_block_interval: float | None = 0.3,
        empty_blocks: bool = True,
        heartbeat_interval: float | None = None,
        timeout_propose_ms: int | None = 1500,
        log_json: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        if len({m.name for m in members}) != len(members):
            raise NodeError("member names must be distinct")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.passphrase = passphrase
        self.genesis_plan = genesis
        # None leaves a setting at the node's own default (the benches measure bcfl as shipped)
        self.empty_block_interval = empty_block_interval
        # The demo's rounds close on a deadline in blocks, and the tests wait for heights to
        # grow: both keep the empty-block pace (``bcfl node --empty-blocks``).
        self.empty_blocks = empty_blocks
        self.heartbeat_interval = heartbeat_interval  # None: the node's default
        self.timeout_propose_ms = timeout_propose_ms
        self.log_json = log_json
        self.extra_env = dict(env or {})
        app_folder = genesis.app_folder
        if app_folder is not None:  # every node imports the app from there (bcfl node --app)
            self.extra_env["BCFL_APP"] = str(Path(app_folder).resolve())
        self.members: dict[str, Member] = {}
        self.http = httpx.Client(timeout=5.0)
        self._https: dict[str, httpx.Client] = {}  # per TLS member: trusts its certificate only
        ports = free_ports(len(members))
        pins: dict[str, str] = {}
        for plan, port in zip(members, ports, strict=True):
            member = self._new_member(plan.name, port)
            member.data, member.attack = plan.data, plan.attack
            member.train_seed = plan.train_seed
            self.members[plan.name] = member
            if genesis.tls == "pinned":
                pins[plan.name] = self._make_certificate(member)
        self.names = [m.name for m in members]
        self.config_file = self.root / "consortium.toml"
        toml = consortium_toml(genesis, [(p, self.members[p.name].did) for p in members], pins)
        self.config_file.write_text(toml, encoding="utf-8")
        self.genesis_hash = ""
        self.initial_model = ""
        for member in self.members.values():
            result = init_consortium(
                member.home, self.config_file, time_ms=genesis_time_ms, app_folder=app_folder
            )
            self.genesis_hash, self.initial_model = result.genesis_hash, result.initial_model

    def _new_member(self, name: str, port: int) -> Member:
        home = Home.resolve(self.root / name).ensure()
        identity = generate_identity(home, name, self.passphrase.encode(), kdf="interactive")
        return Member(name, home, identity, port)

    def _make_certificate(self, member: Member) -> str:
        """``bcfl tls init`` for ``member``: its certificate, and the pin line for the file."""
        from bcfl_cli.node.tls_rotation import init_certificate

        member.tls = True
        return init_certificate(member.home, member.identity.signing_key).toml()

    def client_for(self, member: Member) -> httpx.Client:
        """An observer's client for ``member``: over TLS it trusts that member's node
        certificate only (the one in its home, re-read after a rotation)."""
        if not member.tls:
            return self.http
        import ssl

        from bcfl_cli.identity.tls_cert import TLS_CERT_FILE

        pem = (member.home.root / TLS_CERT_FILE).read_text(encoding="ascii")
        cached = self._https.get(member.name)
        if cached is None or getattr(cached, "_bcfl_pem", None) != pem:
            if cached is not None:
                cached.close()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(cadata=pem)
            cached = httpx.Client(timeout=5.0, verify=ctx)
            cached._bcfl_pem = pem  # type: ignore[attr-defined]
            self._https[member.name] = cached
        return cached

    def add_member(self, name: str) -> Member:
        """A newcomer: identity and port only (no ledger: it joins with ``bcfl join``)."""
        if name in self.members:
            raise NodeError(f"member {name!r} exists already")
        member = self._new_member(name, free_ports(1)[0])
        self.members[name] = member
        return member

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BCFL_PASSPHRASE"] = self.passphrase
        env.pop("BCFL_HOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.extra_env)
        return env

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``bcfl`` command with the consortium's passphrase in its env."""
        return subprocess.run(
            [*bcfl_command(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def node_args(
        self, member: Member, *, train: bool = True, peers: Iterable[str] | None = None
    ) -> list[str]:
        args = [
            *bcfl_command(),
            "node",
            "--home",
            str(member.home.root),
            "--listen",
            f"127.0.0.1:{member.port}",
            "--empty-blocks" if self.empty_blocks else "--no-empty-blocks",
        ]
        if self.empty_block_interval is not None:
            args += ["--empty-block-interval", str(self.empty_block_interval)]
        if self.timeout_propose_ms is not None:
            args += ["--timeout-propose-ms", str(self.timeout_propose_ms)]
        if self.heartbeat_interval is not None:
            args += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if self.log_json:
            args.append("--log-json")
        if member.tls:
            args.append("--tls")
        urls = (
            [m.url for m in self.members.values() if m.name != member.name]
            if peers is None
            else list(peers)
        )
        for url in urls:
            args += ["--peer", url]
        if train and member.data is not None:
            args += ["--train", str(member.data)]
            if member.attack:
                args += ["--attack", member.attack]
            if member.train_seed is not None:
                args += ["--train-seed", str(member.train_seed)]
        return args

    def start(
        self,
        name: str,
        *,
        train: bool = True,
        extra: Sequence[str] | None = None,
        peers: Iterable[str] | None = None,
    ) -> Member:
        """Start ``name``'s node (a no-op if it runs); output goes to HOME/stdout-N.log."""
        member = self.members[name]
        if member.running:
            return member
        args = [*self.node_args(member, train=train, peers=peers), *(extra or [])]
        member.starts += 1
        member.paused = False
        member.log_path = member.home.root / f"stdout-{member.starts}.log"
        with open(member.log_path, "wb") as out:
            member.proc = subprocess.Popen(
                args, env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        return member

    def start_all(self, *, train: bool = True, wait: bool = True, timeout: float = 60.0) -> None:
        for name in self.names:
            self.start(name, train=train)
        if wait:
            for name in self.names:
                self.wait_ready(name, timeout=timeout)

    def check_alive(self, name: str) -> None:
        """NodeError with the tail of its output if ``name``'s node exited on its own."""
        member = self.members[name]
        if member.proc is not None and member.proc.poll() is not None:
            raise NodeError(
                f"{name}'s node exited with {member.proc.returncode}",
                hint=f"its output: {member.log_path}\n{self.log(name, 1500)}",
            )

    def wait_ready(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """``name``'s status once its node answers and has written ``node/node.json`` (a
        few milliseconds after it starts serving: a loaded machine widens that gap)."""
        node_file = self.members[name].home.node_dir / "node.json"

        def ready() -> dict[str, Any] | None:
            self.check_alive(name)
            status = self.try_status(name)
            return status if status is not None and node_file.is_file() else None

        return wait_for(ready, timeout, f"{name} to answer /v1/status")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal ``name``'s node and reap it (SIGKILL after ``timeout``); its exit code."""
        member = self.members[name]
        proc = member.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        if member.paused and sig != signal.SIGKILL:
            self.resume(name)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
        finally:
            member.paused = False

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a hung machine)."""
        member = self.members[name]
        if member.running and not member.paused:
            assert member.proc is not None
            member.proc.send_signal(signal.SIGSTOP)
            member.paused = True

    def resume(self, name: str) -> None:
        member = self.members[name]
        if member.running and member.paused:
            assert member.proc is not None
            member.proc.send_signal(signal.SIGCONT)
        member.paused = False

    def close(self) -> None:
        """Stop every node: SIGCONT, SIGTERM, wait up to the grace, then SIGKILL; reap all."""
        live = [m for m in self.members.values() if m.running]
        for member in live:
            assert member.proc is not None
            if member.paused:
                member.proc.send_signal(signal.SIGCONT)
                member.paused = False
            member.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for member in self.members.values():
            if member.proc is None:
                continue
            try:
                member.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait(5)
        self.http.close()
        for client in self._https.values():
            client.close()

    def pids(self) -> list[int]:
        """Process ids of the nodes still running."""
        return [m.proc.pid for m in self.members.values() if m.proc is not None and m.running]

    # --- observation ----------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        """``GET /v1/status`` of ``name``'s node (httpx.HTTPError when it does not answer)."""
        member = self.members[name]
        response = self.client_for(member).get(member.url + "/v1/status")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def try_status(self, name: str) -> dict[str, Any] | None:
        try:
            return self.status(name)
        except (httpx.HTTPError, ValueError, OSError):
            return None

    def heights(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Each node's height (-1 where it does not answer)."""
        out = {}
        for name in names or self.names:
            status = self.try_status(name)
            out[name] = int(status["height"]) if status else -1
        return out

    def wait_height(
        self, height: int, names: Sequence[str] | None = None, timeout: float = 60.0
    ) -> None:
        wait_for(
            lambda: all(h >= height for h in self.heights(names).values()) or None,
            timeout,
            f"height {height} on {names or self.names} (now {self.heights(names)})",
        )

    def wait_round_closed(
        self, number: int, names: Sequence[str] | None = None, timeout: float = 90.0
    ) -> None:
        def done() -> bool | None:
            for name in names or self.names:
                status = self.try_status(name)
                if status is None:
                    return None
                rnd = status["round"]
                if rnd["number"] < number or (rnd["number"] == number and rnd["state"] == "open"):
                    return None
            return True

        wait_for(done, timeout, f"round {number} closed on {names or self.names}")

    def blocks(self, name: str, start: int, limit: int = 100) -> list[dict[str, Any]]:
        """Decided blocks from ``start`` (at most ``limit``) as served by ``name``'s node."""
        member = self.members[name]
        response = self.client_for(member).get(
            member.url + "/v1/blocks", params={"start": start, "limit": limit}
        )
        response.raise_for_status()
        blocks: list[dict[str, Any]] = response.json()["blocks"]
        return blocks

    def log(self, name: str, tail: int = 4000) -> str:
        member = self.members[name]
        if member.log_path is None or not member.log_path.exists():
            return ""
        return member.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def copy_home(self, name: str, dest: Path) -> Path:
        shutil.copytree(self.members[name].home.root, dest)
        return dest


__all__ = [
    "DEMO_PASSPHRASE",
    "GenesisPlan",
    "LocalConsortium",
    "Member",
    "MemberPlan",
    "bcfl_command",
    "consortium_toml",
    "free_ports",
    "wait_for",
]
