"""The deployment arm's process hygiene and app packaging, without Flower installed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import tomllib
import uuid

import bench.flower_deploy as flower_deploy


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
