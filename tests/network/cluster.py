"""Real ``bcfl node`` processes on 127.0.0.1 for multi-process tests (and the CLI tests).

How the founders' homes are made (the honest, simple way): every founder generates its own
identity (fast Argon2id limits), the consortium file lists all their dids, and *each* founder
runs ``init_consortium`` on that same file with the same genesis time, exactly as each
organisation would run ``bcfl init consortium.toml`` on its own machine. The genesis is a pure
function of the file and the time, so all founders hold the same genesis hash without copying
any store. Late members get a home with an identity only and use ``bcfl join``.

``Cluster`` always stops what it started: use it as a context manager, or through the
``cluster`` fixture of ``tests/network/conftest.py`` (SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.home import Home
from bcfl_cli.identity import Identity, generate_identity

PASSPHRASE = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]
DIGITS_4 = REPO / "sample_data" / "partitions" / "digits" / "4-iid"
GENESIS_TIME_MS = 1_763_000_000_000


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range.

    Ports handed out by the kernel (bind to 0) come from the ephemeral range, where every
    outgoing connection on this busy machine also takes its local port: one may take ours
    between choosing it and the node binding it. Random ports in 20000-30000 avoid that.
    """
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20_000, 30_000)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def consortium_toml(
    members: list[tuple[str, str]],
    *,
    rounds: int = 3,
    min_updates: int = 4,
    deadline_blocks: int = 40,
    hidden: int = 16,
    rule: str = "fedavg",
    max_blob_bytes: int = 64 * 1024 * 1024,
    input_shape: str = "[64]",
    admission_approvals: int | None = None,
) -> str:
    approvals = admission_approvals or min(2, len(members))
    lines = [
        "[consortium]",
        'name = "Network Test Consortium"',
        f"admission_approvals = {approvals}",
        f"removal_approvals = {approvals}",
        "",
    ]
    for name, did in members:
        lines += [
            "[[members]]",
            f'name = "{name}"',
            f'did = "{did}"',
            'roles = ["trainer", "validator"]',
            "power = 1",
            "",
        ]
    lines += [
        "[model]",
        'architecture = "mlp"',
        f"input_shape = {input_shape}",
        "num_classes = 10",
        f"hidden = [{hidden}]",
        "seed = 0",
        "",
        "[training]",
        f"rounds = {rounds}",
        "lr = 0.05",
        "batch_size = 32",
        "local_epochs = 1",
        f"min_updates = {min_updates}",
        f"deadline_blocks = {deadline_blocks}",
        "",
        "[contract]",
        "max_update_norm = 1000.0",
        "min_samples = 1",
        f"max_blob_bytes = {max_blob_bytes}",
        "",
        "[aggregation]",
        f'rule = "{rule}"',
        "",
    ]
    return "\n".join(lines)


def bcfl_command() -> list[str]:
    script = Path(sys.executable).parent / "bcfl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from bcfl_cli.cli.app import main; main()"]


@dataclass
class Member:
    name: str
    home: Home
    identity: Identity
    port: int
    data: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """Founders (and later members) of one consortium, each with its own home and port."""

    root: Path
    names: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    empty_block_interval: float = 0.3
    timeout_propose_ms: int = 1500

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(len(self.names))
        for i, (name, port) in enumerate(zip(self.names, ports, strict=True)):
            self.members[name] = self._new_member(name, port)
            data = DIGITS_4 / f"member-{i % 4 + 1:02d}.csv"
            self.members[name].data = data if data.exists() else None
        toml = consortium_toml([(m.name, m.did) for m in self.members.values()], **self.config)
        self.config_file = self.root / "consortium.toml"
        self.config_file.write_text(toml, encoding="utf-8")
        for member in self.members.values():
            result = init_consortium(member.home, self.config_file, time_ms=GENESIS_TIME_MS)
            self.genesis_hash = result.genesis_hash

    def _new_member(self, name: str, port: int) -> Member:
        home = Home.resolve(self.root / name).ensure()
        identity = generate_identity(home, name, PASSPHRASE.encode(), kdf="interactive")
        return Member(name, home, identity, port)

    def add_member(self, name: str) -> Member:
        """A newcomer: identity and port only (no ledger: it joins with ``bcfl join``)."""
        member = self._new_member(name, free_ports(1)[0])
        self.members[name] = member
        return member

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BCFL_PASSPHRASE"] = PASSPHRASE
        env.pop("BCFL_HOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*bcfl_command(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, name: str, *, train: bool = True, extra: list[str] | None = None) -> Member:
        member = self.members[name]
        if member.running:
            return member
        peers = [m.url for m in self.members.values() if m.name != name]
        args = [
            *bcfl_command(),
            "node",
            "--home",
            str(member.home.root),
            "--listen",
            f"127.0.0.1:{member.port}",
            "--log-json",
            "--empty-block-interval",
            str(self.empty_block_interval),
            "--timeout-propose-ms",
            str(self.timeout_propose_ms),
        ]
        for url in peers:
            args += ["--peer", url]
        if train and member.data is not None:
            args += ["--train", str(member.data)]
        args += extra or []
        member.starts += 1
        member.log_path = member.home.root / f"stdout-{member.starts}.log"
        with open(member.log_path, "wb") as out:
            member.proc = subprocess.Popen(
                args, env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        return member

    def start_all(self, **kw: Any) -> None:
        for name in self.names:
            self.start(name, **kw)
        for name in self.names:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        member = self.members[name]

        def ready() -> dict[str, Any] | None:
            if member.proc is not None and member.proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {member.proc.returncode}:\n{self.log(name)}"
                )
            try:
                return self.status(name)
            except httpx.HTTPError:
                return None

        return wait_for(ready, timeout, f"{name} to answer /v1/status")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        member = self.members[name]
        proc = member.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def close(self) -> None:
        for name in list(self.members):
            member = self.members[name]
            if member.running:
                assert member.proc is not None
                member.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for member in self.members.values():
            if member.proc is None:
                continue
            try:
                member.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait(5)

    # --- observation ----------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        response = httpx.get(self.members[name].url + "/v1/status", timeout=5.0)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def heights(self, names: list[str] | None = None) -> dict[str, int]:
        out = {}
        for name in names or self.names:
            try:
                out[name] = int(self.status(name)["height"])
            except httpx.HTTPError:
                out[name] = -1
        return out

    def wait_height(
        self, height: int, names: list[str] | None = None, timeout: float = 60.0
    ) -> None:
        wait_for(
            lambda: all(h >= height for h in self.heights(names).values()) or None,
            timeout,
            f"height {height} on {names or self.names} (now {self.heights(names)})",
        )

    def wait_round_closed(
        self, number: int, names: list[str] | None = None, timeout: float = 90.0
    ) -> None:
        def done() -> bool | None:
            for name in names or self.names:
                rnd = self.status(name)["round"]
                if rnd["number"] < number or (rnd["number"] == number and rnd["state"] == "open"):
                    return None
            return True

        wait_for(done, timeout, f"round {number} closed on {names or self.names}")

    def log(self, name: str, tail: int = 4000) -> str:
        member = self.members[name]
        if member.log_path is None or not member.log_path.exists():
            return ""
        return member.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def copy_home(self, name: str, dest: Path) -> Path:
        shutil.copytree(self.members[name].home.root, dest)
        return dest


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def iter_members(cluster: Cluster) -> Iterator[Member]:
    yield from cluster.members.values()
