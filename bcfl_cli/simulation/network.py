"""A seeded, in-memory network on a logical clock: what `bcfl simulate` sends messages over.

Time is an integer count of milliseconds that moves only from one scheduled event to the next,
so a run costs the CPU of its work and none of its waits, and every decision that a real
network leaves to chance (each delay, each drop) is drawn from one ``random.Random`` seeded
with the run's seed: the same seed replays the same run, event for event.

Faults are the network's: a message is dropped with ``drop`` probability, delayed by a uniform
draw from ``delay_ms``, never crosses an active partition, and never reaches (or leaves) a
member that is down. The network knows nothing of bcfl: payloads are opaque.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

#: Events one run may process before it is stopped (a bound on every loop of the simulation).
MAX_EVENTS = 5_000_000


@dataclass(frozen=True)
class Partition:
    """From ``start_ms`` to ``end_ms`` the members of ``side`` hear only each other."""

    start_ms: int
    end_ms: int
    side: frozenset[int]

    def cuts(self, src: int, dst: int, now_ms: int) -> bool:
        if not self.start_ms <= now_ms < self.end_ms:
            return False
        return (src in self.side) != (dst in self.side)


@dataclass(frozen=True)
class NetworkConfig:
    """How the simulated links behave (all draws from the run's seed)."""

    delay_ms: tuple[int, int] = (5, 20)
    drop: float = 0.0
    partitions: tuple[Partition, ...] = ()

    def __post_init__(self) -> None:
        low, high = self.delay_ms
        if not 0 <= low <= high:
            raise ValueError(f"delay_ms: expected 0 <= low <= high, found {self.delay_ms}")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop: expected a probability in [0, 1), found {self.drop}")


@dataclass(order=True)
class Event:
    """One scheduled event; ties at one instant go in the order they were scheduled."""

    at_ms: int
    seq: int
    kind: str = field(compare=False)
    target: int = field(compare=False)
    payload: Any = field(compare=False, default=None)


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    cut: int = 0
    bytes: int = 0


class Network:
    """The event queue and the links between ``members`` numbered 0..members-1."""

    def __init__(self, members: int, config: NetworkConfig, seed: int) -> None:
        self.members = members
        self.config = config
        self.rng = random.Random(seed)
        self.now_ms = 0
        self.down: set[int] = set()
        self.stats = NetworkStats()
        # (time, seq, event): ordered by the tuple's first two fields in C, never by the event
        # (seq is unique); a dataclass ordering built two tuples a comparison in Python
        self._queue: list[tuple[int, int, Event]] = []
        self._seq = 0
        self.processed = 0

    def schedule(self, at_ms: int, kind: str, target: int, payload: Any = None) -> None:
        """Run ``kind`` for ``target`` at logical time ``at_ms`` (never in the past)."""
        self._seq += 1
        at = max(at_ms, self.now_ms)
        heapq.heappush(self._queue, (at, self._seq, Event(at, self._seq, kind, target, payload)))

    def send(self, src: int, dst: int, payload: Any, *, size: int = 0) -> bool:
        """Queue ``payload`` from ``src`` to ``dst``; False when the network lost it."""
        self.stats.sent += 1
        if src in self.down:
            self.stats.dropped += 1
            return False
        if any(p.cuts(src, dst, self.now_ms) for p in self.config.partitions):
            self.stats.cut += 1
            return False
        if self.config.drop and self.rng.random() < self.config.drop:
            self.stats.dropped += 1
            return False
        low, high = self.config.delay_ms
        delay = self.rng.randint(low, high) if src != dst else 0
        self.stats.bytes += size
        self.schedule(self.now_ms + delay, "deliver", dst, (src, payload))
        return True

    def broadcast(
        self, src: int, payload: Any, *, size: int = 0, to: list[int] | None = None
    ) -> None:
        """``send`` to every member but ``src`` (or to ``to``), in member order."""
        for dst in to if to is not None else range(self.members):
            if dst != src:
                self.send(src, dst, payload, size=size)

    def next_event(self) -> Event | None:
        """The next event to run (its time becomes now); None when the run is over."""
        while self._queue and self.processed < MAX_EVENTS:
            event = heapq.heappop(self._queue)[2]
            self.now_ms = event.at_ms
            self.processed += 1
            if event.kind == "deliver" and event.target in self.down:
                self.stats.dropped += 1
                continue
            if event.kind == "deliver":
                self.stats.delivered += 1
            return event
        return None
