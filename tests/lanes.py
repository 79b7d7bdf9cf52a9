"""The two lanes of ``make test`` (pytest-xdist ``--dist loadgroup`` on two workers).

A test's xdist group, from its markers alone (deterministic: the same on every worker):

- ``network`` (a consortium of real node processes on loopback): the one group ``network``,
  which one worker runs one test after another, never two consortia at once;
- ``network`` and ``lone_node`` (at most one node process, no consortium): the group
  ``network-lone-node``, which the other worker runs beside the consortia, as it runs the
  in-process tests (one node process loads the machine no more than they do). A test whose
  assertions read wall-clock pace or latency stays in ``network``, marked or not;
- anything else: the group of its file, so that a module's fixtures are built once.

Under xdist the workers sort the tests by ``lane_rank``: the consortia first (the longest
group, which one worker takes), then the lone nodes (the other worker's first group), then the
rest in collection order (``--no-loadscope-reorder`` keeps that order).
"""

from __future__ import annotations

from collections.abc import Collection

#: The group of every consortium test: one worker runs them one after another.
NETWORK_GROUP = "network"
#: The group of the ``network`` tests that start at most one node process.
LONE_NODE_GROUP = "network-lone-node"


class LaneError(ValueError):
    """A marker combination that names no lane (``lone_node`` without ``network``)."""


def xdist_group(nodeid: str, markers: Collection[str]) -> str:
    """The xdist group of the test ``nodeid`` that carries ``markers`` (their names)."""
    if "lone_node" in markers and "network" not in markers:
        raise LaneError(f"{nodeid}: lone_node marks a network test; this one is not marked network")
    if "network" not in markers:
        return nodeid.split("::")[0]
    return LONE_NODE_GROUP if "lone_node" in markers else NETWORK_GROUP


def lane_rank(markers: Collection[str]) -> int:
    """Sort key of a test under xdist: 0 consortia, 1 lone nodes, 2 everything else."""
    if "network" not in markers:
        return 2
    return 1 if "lone_node" in markers else 0
