"""Flower's deployment engine as an arm of bench/flower_compare.py: one ``flower-superlink`` and
N ``flower-supernode`` processes on 127.0.0.1 (random free ports), the job of bench/flower_app
submitted with ``flwr run``, as Flower's "Run Flower with the Deployment Runtime" guide does it.
The real-process counterpart of N ``bcfl node`` processes.

Two transports: insecure mode (``--insecure`` everywhere), and TLS as Flower's "Enable TLS
connections" guide sets it up. A throwaway CA and a server certificate for 127.0.0.1/localhost
are made for the run; the SuperLink serves with ``--ssl-ca-certfile --ssl-certfile
--ssl-keyfile`` (and hands them to the SuperExec it starts), every SuperNode trusts the CA with
``--root-certificates``, and ``flwr run`` reaches the SuperLink's Control API through the
``root-certificates`` key of the connection in ``FLWR_HOME/config.toml``.

Every process started here carries a marker in its environment; at the end all of them, and
the SuperExec and app processes Flower detaches from them, are stopped by that marker, each
wait bounded.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import FedRun, log
from bench.flower_compare import ROOT, sum_counters

APP_DIR = ROOT / "bench" / "flower_app"
#: The SuperLink and the SuperNodes must be up within this (a bound, not an expectation).
STARTUP_TIMEOUT_S = 120.0
#: Each round may take this long before the run is declared stuck.
ROUND_TIMEOUT_S = 90.0
#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0
#: The throwaway certificates live for a day: longer than any run, short if a copy leaks.
CERT_LIFETIME_S = 24 * 3600


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM files of one run's TLS: the CA the clients trust, the SuperLink's chain and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_material(folder: Path) -> TlsMaterial:
    """A throwaway CA and a server certificate it signs, valid for 127.0.0.1 and localhost, as
    the ``ca.crt``, ``server.pem`` and ``server.key`` of Flower's TLS guide (ECDSA P-256 instead
    of its RSA: gRPC accepts both, and P-256 keys are made in microseconds); the CA helper the
    ``ca`` trust mode's tests use (tests/network/throwaway_ca.py)."""
    from tests.network.throwaway_ca import Ca

    ca = Ca.create("bcfl bench Flower CA", lifetime=datetime.timedelta(seconds=CERT_LIFETIME_S))
    folder.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = ca.issue(
        folder, "server", dns_names=("localhost",), client_auth=False, suffixes=(".pem", ".key")
    )
    return TlsMaterial(ca.bundle(folder, "ca.crt"), server_cert, server_key)


def superlink_transport(tls: TlsMaterial | None) -> list[str]:
    """The SuperLink's transport flags: ``--insecure``, or its certificates."""
    if tls is None:
        return ["--insecure"]
    return [
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.server_cert),
        "--ssl-keyfile",
        str(tls.server_key),
    ]


def supernode_transport(tls: TlsMaterial | None) -> list[str]:
    """A SuperNode's transport flags: ``--insecure``, or the CA it trusts."""
    return ["--insecure"] if tls is None else ["--root-certificates", str(tls.ca_cert)]


def connection_toml(port: int, tls: TlsMaterial | None) -> str:
    """``FLWR_HOME/config.toml`` naming this run's SuperLink as the default connection of
    ``flwr run``: insecure, or trusting the run's CA (an absolute path, as Flower requires)."""
    transport = (
        "insecure = true\n"
        if tls is None
        else f'insecure = false\nroot-certificates = "{tls.ca_cert.resolve()}"\n'
    )
    return (
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\n{transport}'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after the start-up bound")


def marked_pids(marker: str) -> list[int]:
    """This user's processes whose environment holds ``marker`` (those this run started,
    directly or through Flower's detached SuperExec)."""
    needle = f"BCFL_FLOWER_RUN={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_all(procs: list[subprocess.Popen[bytes]], marker: str) -> int:
    """SIGTERM then, after a bounded grace, SIGKILL every marked process; returns how many
    were still alive for SIGKILL."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE_S)
    for pid in marked_pids(marker):
        with _ignored():
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = marked_pids(marker)
    for pid in left:
        with _ignored():
            os.kill(pid, signal.SIGKILL)
    return len(left)


class _ignored:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)  # type: ignore[arg-type]


def run_flower_deployment(
    python: str, members: int, rounds: int, seed: int, *, quiet: bool = False, tls: bool = False
) -> FedRun:
    """The job on a SuperLink and ``members`` SuperNodes, insecure or (``tls``) over TLS with a
    throwaway CA made before the clock starts; start-up and rounds timed as the simulation arm
    times them (evaluate_fn stamps, the earliest training start)."""
    bindir = Path(python).parent
    marker = uuid.uuid4().hex
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bcfl-flower-deploy-") as tmp_name:
        tmp = Path(tmp_name)
        home, counters, logs = tmp / "flwr-home", tmp / "counters", tmp / "logs"
        for folder in (home, counters, logs):
            folder.mkdir()
        out = tmp / "result.json"
        link_port = free_port()
        material = make_tls_material(tmp / "certs") if tls else None
        (home / "config.toml").write_text(connection_toml(link_port, material))
        (tmp / "run-config.toml").write_text(
            f"members = {members}\nrounds = {rounds}\nseed = {seed}\n"
            f'out = "{out}"\ncounters = "{counters}"\n'
        )
        env = dict(
            os.environ,
            # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name.
            PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            FLWR_HOME=str(home),
            BCFL_FLOWER_RUN=marker,
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        )

        def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            handle = (logs / f"{name}.log").open("wb")
            proc = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
            procs.append(proc)
            return proc

        launched = time.time()
        start_clock = time.perf_counter()
        try:
            start(
                "superlink",
                [
                    str(bindir / "flower-superlink"),
                    *superlink_transport(material),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(link_port),
                    "--disable-runtime-dependency-installation",
                ],
            )
            for index in range(members):
                start(
                    f"supernode-{index}",
                    [
                        str(bindir / "flower-supernode"),
                        *supernode_transport(material),
                        "--superlink",
                        f"127.0.0.1:{link_port}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        f"partition-id={index} num-partitions={members}",
                        "--max-retries",
                        "100",
                        "--max-wait-time",
                        str(int(STARTUP_TIMEOUT_S)),
                    ],
                )
            wait_for_port(link_port, time.monotonic() + STARTUP_TIMEOUT_S)
            log(
                f"    SuperLink on 127.0.0.1:{link_port}, {members} SuperNodes; flwr run",
                quiet=quiet,
            )
            submit = subprocess.run(
                [
                    str(bindir / "flwr"),
                    "run",
                    str(APP_DIR),
                    "bench",
                    "--run-config",
                    str(tmp / "run-config.toml"),
                ],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=STARTUP_TIMEOUT_S,
                check=False,
            )
            if submit.returncode != 0:
                raise SystemExit(
                    f"flwr run failed (exit {submit.returncode}):\n"
                    f"{(submit.stdout + submit.stderr)[-3000:]}"
                )
            deadline = time.monotonic() + STARTUP_TIMEOUT_S + rounds * ROUND_TIMEOUT_S
            while not out.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(
                        "the deployment run did not finish in time; logs:\n" + _log_tails(logs)
                    )
                if procs[0].poll() is not None:
                    raise SystemExit("the SuperLink exited; logs:\n" + _log_tails(logs))
                time.sleep(0.1)
            total = time.perf_counter() - start_clock
            data = json.loads(out.read_text())
            counted = sum_counters(counters)
        except BaseException:
            log("the deployment arm failed; its logs:\n" + _log_tails(logs))
            raise
        finally:
            killed = stop_all(procs, marker)
    stamps = data["stamps"]
    transport = "TLS, " if tls else ""
    run = FedRun(f"Flower {_version(python)} (deployment, {transport}{members} SuperNodes)", rounds)
    run.startup_s = stamps[0] - launched
    run.round_s = [b - a for a, b in itertools.pairwise(stamps)]
    run.total_s = total
    run.accuracy = data["accuracy"]
    if counted["first_train"] is not None:
        run.extra["first_training_s"] = counted["first_train"] - launched
    if len(stamps) > 1:
        run.extra["first_aggregate_s"] = stamps[1] - launched
    run.extra["cache_loads"] = counted["loads"]
    run.extra["cache_hits"] = counted["hits"]
    run.extra["actor_processes"] = counted["processes"]
    run.extra["killed_at_stop"] = killed
    run.extra["transport"] = "TLS (throwaway CA)" if tls else "insecure"
    return run


def _log_tails(logs: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log"))
    )


def _version(python: str) -> str:
    probe = subprocess.run(
        [python, "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() or "?"
