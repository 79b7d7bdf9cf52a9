"""The lanes of ``make test`` (tests/lanes.py): which xdist group a test joins, in what order."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import LocalConsortium
from tests.faults.helpers import members, plan
from tests.lanes import LONE_NODE_GROUP, NETWORK_GROUP, LaneError, lane_rank, xdist_group


def test_consortia_share_one_group_lone_nodes_another_the_rest_their_file() -> None:
    assert xdist_group("tests/a/test_x.py::test_one", {"network"}) == NETWORK_GROUP
    assert xdist_group("tests/b/test_y.py::test_two", {"network"}) == NETWORK_GROUP
    lone = xdist_group("tests/a/test_x.py::test_three", {"network", "lone_node"})
    assert lone == LONE_NODE_GROUP != NETWORK_GROUP
    assert xdist_group("tests/a/test_x.py::test_four[1]", set()) == "tests/a/test_x.py"
    assert xdist_group("tests/a/test_x.py::C::test_five", {"slow"}) == "tests/a/test_x.py"


def test_a_lone_node_mark_without_network_names_no_lane() -> None:
    with pytest.raises(LaneError, match="not marked network"):
        xdist_group("tests/a/test_x.py::test_one", {"lone_node"})


def test_consortia_sort_first_then_lone_nodes_then_the_rest() -> None:
    marks = [set(), {"network", "lone_node"}, {"network"}, {"slow"}, {"network"}]
    order = sorted(range(len(marks)), key=lambda i: lane_rank(marks[i]))
    assert order == [2, 4, 1, 0, 3]  # stable: collection order within a lane


@pytest.mark.lone_node
@pytest.mark.network
def test_a_lone_node_test_may_not_start_a_second_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = LocalConsortium(tmp_path / "c", members(["alice", "bob"]), plan(validators=2))
    c.members["alice"].proc = _Running()  # type: ignore[assignment]
    with pytest.raises(AssertionError, match=r"starts bob's node beside \['alice'\]"):
        c.start("bob", train=False)


class _Running:
    """Stands for a running node process: ``poll`` answers None (nothing is started)."""

    def poll(self) -> None:
        return None


def test_make_test_compiles_bcfl_before_the_suite_starts_its_processes() -> None:
    """Each node and CLI process reads bcfl's bytecode instead of compiling its sources again
    where PYTHONDONTWRITEBYTECODE is set (no process would write it)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    steps = [line.strip() for line in recipe if line.startswith("\t")]
    compile_at = next(i for i, step in enumerate(steps) if "-m compileall" in step)
    pytest_at = next(i for i, step in enumerate(steps) if "/pytest " in step)
    assert compile_at < pytest_at
    assert steps[compile_at].split()[-1] == "bcfl_cli"
