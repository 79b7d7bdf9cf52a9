"""The deployment arm's process hygiene, app packaging and TLS material, without Flower."""

from __future__ import annotations

import ast
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import uuid

import pytest

import bench.flower_compare as flower_compare
import bench.flower_deploy as flower_deploy
from bench.common import FedRun


def test_stop_all_stops_a_detached_grandchild_by_its_marker():
    # Flower's SuperLink and SuperNode detach their SuperExec (a new session): it is not in
    # our process group, so only the environment marker finds it.
    marker = uuid.uuid4().hex
    env = dict(os.environ, BCFL_FLOWER_RUN=marker)
    spawn = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", spawn], env=env)
    deadline = time.monotonic() + 20
    while len(flower_deploy.marked_pids(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(flower_deploy.marked_pids(marker)) == 2
    flower_deploy.stop_all([parent], marker)
    assert flower_deploy.marked_pids(marker) == []
    assert parent.returncode is not None


def test_the_flower_app_names_components_its_module_defines():
    config = tomllib.loads((flower_deploy.APP_DIR / "pyproject.toml").read_text())
    components = config["tool"]["flwr"]["app"]["components"]
    for ref in (components["serverapp"], components["clientapp"]):
        module, attribute = ref.split(":")
        tree = ast.parse((flower_deploy.APP_DIR / f"{module}.py").read_text())
        assigned = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert attribute in assigned
    assert set(config["tool"]["flwr"]["app"]["config"]) == {
        "members",
        "rounds",
        "seed",
        "out",
        "counters",
    }


def test_the_throwaway_ca_signs_a_certificate_a_tls_client_accepts_for_127_0_0_1(tmp_path):
    material = flower_deploy.make_tls_material(tmp_path / "certs")
    assert oct(material.server_key.stat().st_mode & 0o777) == "0o600"
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(material.server_cert, material.server_key)
    client_ctx = ssl.create_default_context(cafile=str(material.ca_cert))  # hostname checked
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve_once() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        for host in ("127.0.0.1", "localhost"):  # the two names the SAN covers
            thread = threading.Thread(target=serve_once, daemon=True)
            thread.start()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=host) as tls,
            ):
                assert tls.recv(2) == b"ok"
            thread.join(timeout=10)


def test_a_client_that_does_not_trust_the_throwaway_ca_refuses_the_server(tmp_path):
    material = flower_deploy.make_tls_material(tmp_path / "a")
    stranger = flower_deploy.make_tls_material(tmp_path / "b")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(material.server_cert, material.server_key)
    client_ctx = ssl.create_default_context(cafile=str(stranger.ca_cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve_once() -> None:
            conn, _ = listener.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve_once, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        thread.join(timeout=10)


def test_the_transport_flags_follow_flowers_tls_guide(tmp_path):
    assert flower_deploy.superlink_transport(None) == ["--insecure"]
    assert flower_deploy.supernode_transport(None) == ["--insecure"]
    material = flower_deploy.make_tls_material(tmp_path)
    link = flower_deploy.superlink_transport(material)
    assert "--insecure" not in link
    assert link[link.index("--ssl-ca-certfile") + 1] == str(material.ca_cert)
    assert link[link.index("--ssl-certfile") + 1] == str(material.server_cert)
    assert link[link.index("--ssl-keyfile") + 1] == str(material.server_key)
    assert flower_deploy.supernode_transport(material) == [
        "--root-certificates",
        str(material.ca_cert),
    ]


def test_flwr_run_reaches_the_superlink_insecure_or_through_the_ca(tmp_path):
    insecure = tomllib.loads(flower_deploy.connection_toml(9093, None))
    assert insecure["superlink"]["default"] == "bench"
    assert insecure["superlink"]["bench"] == {"address": "127.0.0.1:9093", "insecure": True}
    material = flower_deploy.make_tls_material(tmp_path)
    secure = tomllib.loads(flower_deploy.connection_toml(9093, material))["superlink"]["bench"]
    assert secure["insecure"] is False
    assert secure["root-certificates"] == str(
        material.ca_cert.resolve()
    )  # Flower wants it absolute


def test_flower_compare_refuses_an_unknown_arm():
    with pytest.raises(ValueError, match="unknown arms"):
        flower_compare.run(4, 1, flower="/nonexistent/python", arms=["flower-grpc"], quiet=True)


def test_flower_compare_skips_the_tls_arms_it_was_not_asked_for():
    report = flower_compare.run(
        4, 1, flower="/nonexistent/python", arms=["flower-deployment-tls"], quiet=True
    )
    assert [r["arm"] for r in report.rows] == ["plain FedAvg (no ledger)"]
    assert report.settings["arms"] == ["flower-deployment-tls"]
    assert any("Flower skipped" in note for note in report.notes)


def _run(name: str, round_s: float, first_training: float, total: float) -> FedRun:
    run = FedRun(name, 2)
    run.round_s = [round_s, round_s]
    run.total_s = total
    run.extra["first_training_s"] = first_training
    run.extra["first_aggregate_s"] = first_training + round_s
    return run


def test_pair_ratios_compare_bcfl_and_flower_on_the_same_transport():
    pairs = flower_compare.pair_ratios(
        {
            "flower-deployment": _run("fd", 20.0, 10.0, 400.0),
            "flower-deployment-tls": _run("fdt", 25.0, 12.0, 500.0),
            "bcfl-nodes": _run("b", 0.5, 20.0, 30.0),
            "bcfl-nodes-tls": _run("bt", 0.5, 24.0, 36.0),
        }
    )
    by_pair = {(p["arm"], p["against"]): p for p in pairs}
    tls = by_pair[("bcfl-nodes-tls", "flower-deployment-tls")]
    assert tls["round"] == pytest.approx(0.02)
    assert tls["to_first_training"] == pytest.approx(2.0)
    assert tls["to_first_aggregate"] == pytest.approx(24.5 / 37.0)
    assert tls["total"] == pytest.approx(36.0 / 500.0)
    assert ("bcfl-nodes", "flower-simulation") not in by_pair  # that arm did not run
    assert by_pair[("flower-deployment-tls", "flower-deployment")]["round"] == pytest.approx(1.25)
