"""The ``cluster`` fixture: a factory of ``Cluster``s whose processes are always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.network.cluster import Cluster

MakeCluster = Callable[..., Cluster]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    made: list[Cluster] = []

    def factory(names: list[str] | None = None, **kw: Any) -> Cluster:
        c = Cluster(
            tmp_path / f"cluster{len(made)}", names or ["alice", "bob", "carol", "dave"], **kw
        )
        made.append(c)
        return c

    try:
        yield factory
    finally:
        for c in made:
            c.close()
