"""Bounded per-peer state: token-bucket rate limits and the replay (nonce) cache.

Both tables have a hard size cap, so a flood of distinct peers or nonces costs bounded memory;
when full, the oldest entry goes. For the nonce cache, evicting an entry would reopen a replay
window, so eviction also raises a floor: signatures created at or before the newest evicted
``created`` are refused from then on (a replay can then never slip through, at worst a genuine
request with an old-but-in-window clock is refused and retried).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_RATE_PER_S = 200.0
DEFAULT_BURST = 400.0
DEFAULT_MAX_PEERS = 4096
DEFAULT_MAX_NONCES = 100_000
#: A node relays strangers' join requests to its peers at most this fast (node-wide): one
#: address at the join route's rate, or many at once, never makes members flood each other at
#: the members' rate. A request not relayed stays in this node's pool (a validator proposes it).
JOIN_RELAY_RATE_PER_S = 1.0
JOIN_RELAY_BURST = 20.0


@dataclass(frozen=True)
class NodeLimits:
    """The HTTP-side limits of a node (the genesis sets the blob limits)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    window_s: int = 30
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: float = DEFAULT_BURST
    max_peers: int = DEFAULT_MAX_PEERS
    max_nonces: int = DEFAULT_MAX_NONCES
    #: the per-address bucket is this many times the per-signer one (several members may share
    #: an address; a join route's signers are fresh keys, so there it is 1: the address is all)
    address_factor: float = 4.0


class TokenBucketLimiter:
    """One token bucket per key (a peer's did, or its address before it is authenticated)."""

    def __init__(
        self,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: float = DEFAULT_BURST,
        *,
        max_keys: int = DEFAULT_MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate, burst and table size must be positive")
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 when allowed, else the seconds to wait before retrying."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class NonceCache:
    """Refuse a (keyid, nonce) seen within the signature window; bounded in entries."""

    def __init__(
        self,
        window_s: int = 30,
        *,
        max_entries: int = DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.floor = -(2**62)  # created at or below this is refused (see module docstring)

    def check_and_add(self, keyid: str, nonce: str, created: int) -> str | None:
        """None when fresh (and now remembered); else a one-line reason for refusal."""
        self._expire()
        if created <= self.floor:
            return "the replay cache overflowed; requests this old are refused, resend"
        key = (keyid, nonce)
        if key in self._seen:
            return "this nonce was already used: the request is a replay"
        self._seen[key] = created
        while len(self._seen) > self.max_entries:
            _, evicted_created = self._seen.popitem(last=False)
            self.floor = max(self.floor, evicted_created)
        return None

    def _expire(self) -> None:
        # Entries arrive roughly in created order; stop at the first one still inside the window
        # (a later, older one stays a little longer, which is harmless).
        horizon = self._clock() - 2 * self.window_s
        while self._seen:
            key, created = next(iter(self._seen.items()))
            if created >= horizon:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
