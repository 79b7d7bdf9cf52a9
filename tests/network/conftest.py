"""The ``cluster`` fixture: a factory of ``Cluster``s whose processes are always stopped."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.network.cluster import Cluster

MakeCluster = Callable[..., Cluster]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    with contextlib.ExitStack() as made:
        count = itertools.count()

        def factory(names: list[str] | None = None, **kw: Any) -> Cluster:
            root = tmp_path / f"cluster{next(count)}"
            names = names or ["alice", "bob", "carol", "dave"]
            return made.enter_context(Cluster(root, names, **kw))

        yield factory
