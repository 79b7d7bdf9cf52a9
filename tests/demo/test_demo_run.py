"""``bcfl demo`` end to end, as a user runs it: real node processes, then verification.

Short on purpose (2 rounds): the default 10-round run is measured by hand and in the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import bcfl_command

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BCFL_HOME", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_demo_json_summary(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    out = subprocess.run(
        [*bcfl_command(), "demo", "--members", "4", "--rounds", "2", "--json", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=280,
        env=_env(),
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["ok"] is True and summary["interrupted"] is False
    assert len(summary["accuracy"]) == 2 and summary["final_accuracy"] == summary["accuracy"][-1]
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    assert [m["name"] for m in summary["members"]] == ["alice", "bob", "carol", "dave"]
    for member in summary["members"]:
        assert member["accepted"] == 2 and member["rejected"] == 0, member
        assert [u["status"] for u in member["updates"]] == ["accepted", "accepted"]
    nodes = summary["nodes"]
    assert len(nodes) == 4 and all(n["verify"]["ok"] and n["verify"]["deep"] for n in nodes)
    assert summary["consistent"] is True
    assert {r["aggregated_updates"] for r in summary["rounds"]} == {4}
    assert set(summary["timings"]) >= {"setup_s", "startup_s", "training_s", "verify_s", "total_s"}
    assert Path(summary["png"]).read_bytes()[:4] == b"\x89PNG"
    assert (keep / "homes" / "alice" / "chain.sqlite").exists()


def _node_pids(homes: Path) -> list[int]:
    pids = []
    for info in homes.glob("*/node/node.json"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            pids.append(int(json.loads(info.read_text())["pid"]))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _as_from_a_terminal() -> None:
    """The demo as a user's shell starts it: Ctrl-C not ignored. A shell without job control
    starts a background job (``cmd &``, how CI is often launched) with SIGINT ignored, every
    child inherits that, and Python then leaves SIGINT alone, as it should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_interrupting_the_demo_leaves_no_node_behind(tmp_path: Path, sig: int) -> None:
    keep = tmp_path / "demo"
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [*bcfl_command(), "demo", "--rounds", "50", "--keep", str(keep)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        preexec_fn=_as_from_a_terminal,
    )
    try:
        deadline = time.monotonic() + 120
        while len(pids := _node_pids(keep / "homes")) < 4:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo's nodes did not start in 120 s"
            time.sleep(0.2)
        assert all(_alive(p) for p in pids)
        demo.send_signal(sig)  # the demo only, not its process group: it must stop the nodes
        assert demo.wait(60) == 130, (tmp_path / "demo.log").read_text()[-3000:]
        assert [p for p in pids if _alive(p)] == []
        assert "every node was stopped" in (tmp_path / "demo.log").read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid in _node_pids(keep / "homes"):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


def test_demo_with_tls(tmp_path: Path) -> None:
    """``bcfl demo --tls`` (issue 22): the 4-node demo with every node on TLS 1.3, its
    certificate pinned in the genesis; every peer link encrypted and verified by its pin."""
    keep = tmp_path / "demo"
    out = subprocess.run(
        [*bcfl_command(), "demo", "--tls", "--rounds", "2", "--json", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=280,
        env=_env(),
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["ok"] is True and summary["options"]["tls"] is True
    assert len(summary["accuracy"]) == 2 and summary["consistent"] is True
    assert all(n["verify"]["ok"] for n in summary["nodes"])
    homes = keep / "homes"
    config = (keep / "homes" / "consortium.toml").read_text()
    assert 'tls = "pinned"' in config and config.count("tls = { fingerprint") == 4
    for name in ("alice", "bob", "carol", "dave"):
        node = json.loads((homes / name / "node" / "node.json").read_text())
        assert node["tls"] is True and node["url"].startswith("https://")
        assert all(peer.startswith("https://") for peer in node["peers"])
        assert "peer refused" not in (homes / name / "node" / "node.log").read_text()


def test_demo_with_bfloat16_updates(tmp_path: Path) -> None:
    """Issue 19: a consortium whose genesis fixes ``update_dtype = "bfloat16"`` trains through
    real nodes, every update BF16 on disk (half the bytes), every aggregate float32, and every
    node's ``verify-chain --deep`` recomputes it all."""
    from bcfl_cli.fl.tensors import check_safetensors_layout

    keep = tmp_path / "demo"
    out = subprocess.run(
        [
            *bcfl_command(),
            "demo",
            "--members",
            "4",
            "--rounds",
            "2",
            "--update-dtype",
            "bfloat16",
            "--seed",
            "7",
            "--json",
            "--keep",
            str(keep),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env=_env(),
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["ok"] is True and summary["consistent"] is True
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    for member in summary["members"]:
        assert member["accepted"] == 2 and member["rejected"] == 0, member
    assert all(n["verify"]["ok"] and n["verify"]["deep"] for n in summary["nodes"])
    dtypes: dict[str, int] = {}
    for blob in (keep / "homes" / "alice" / "blobs").glob("??/*"):
        data = blob.read_bytes()
        if data[8:9] != b"{" or b'"dtype"' not in data[:4096]:
            continue  # not a tensor file (the genesis document)
        kinds = {dtype for dtype, _ in check_safetensors_layout(data, max_bytes=2**30).values()}
        assert len(kinds) == 1, kinds
        kind = kinds.pop()
        dtypes[kind] = dtypes.get(kind, 0) + 1
    # 8 updates in BF16; the initial model and the 2 aggregates in F32
    assert dtypes == {"BF16": 8, "F32": 3}, dtypes
