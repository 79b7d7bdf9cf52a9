"""Bounded per-peer state: token-bucket rate limits and the replay (nonce) cache.

Both tables have a hard size cap, so a flood of distinct peers or nonces costs bounded memory;
when full, the oldest entry goes. For the nonce cache, evicting an entry would reopen a replay
window, so eviction also raises a floor: signatures created at or before the newest evicted
``created`` are refused from then on (a replay can then never slip through, at worst a genuine
request with an old-but-in-window clock is refused and retried).

The nonce cache gives each member its own bounded share with its own floor, and puts every
non-member in one shared pool with a floor of its own: a stranger's flood of signed reads can
only evict strangers' nonces, and a member who overflows its share refuses only its own old
requests. Across restarts it holds by refusing what was signed before the node started (see
``NonceCache`` and ``ReplayJournal``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bcfl_cli.wire.httpsig import DEFAULT_WINDOW_S

log = logging.getLogger("bcfl.node.auth")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_RATE_PER_S = 200.0
DEFAULT_BURST = 400.0
DEFAULT_MAX_PEERS = 4096
DEFAULT_MAX_NONCES = 100_000
#: Nonces one member keeps in the cache: 136 requests a second, sustained over the 60 s nonces
#: are remembered; past it, only that member's own oldest go (and only its old requests are
#: refused). Members are admitted by the chain, so their shares are few.
DEFAULT_NONCES_PER_MEMBER = 8192
#: A node relays strangers' join requests to its peers at most this fast (node-wide): one
#: address at the join route's rate, or many at once, never makes members flood each other at
#: the members' rate. A request not relayed stays in this node's pool (a validator proposes it).
JOIN_RELAY_RATE_PER_S = 1.0
JOIN_RELAY_BURST = 20.0
#: The per-address bucket is this many times the per-signer one (``NodeLimits.address_factor``).
DEFAULT_ADDRESS_FACTOR = 4.0
#: A nonce is remembered until its ``created`` is this many signature windows old: a request
#: is fresh while ``created`` is within one window of the node's clock, so one window past
#: ``created`` is the least that is safe; the second is a margin (expiry runs lazily, and the
#: node's clock may be stepped).
NONCE_MEMORY_WINDOWS = 2


@dataclass(frozen=True)
class NodeLimits:
    """The HTTP-side limits of a node (the genesis sets the blob limits)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    window_s: int = DEFAULT_WINDOW_S
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: float = DEFAULT_BURST
    max_peers: int = DEFAULT_MAX_PEERS
    max_nonces: int = DEFAULT_MAX_NONCES
    nonces_per_member: int = DEFAULT_NONCES_PER_MEMBER
    #: the per-address bucket is this many times the per-signer one (several members may share
    #: an address; a join route's signers are fresh keys, so there it is 1: the address is all)
    address_factor: float = DEFAULT_ADDRESS_FACTOR


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


_NO_FLOOR = -(2**62)


@dataclass
class _Share:
    """One signer's remembered nonces (or the strangers' pool) and the floor its evictions set."""

    seen: OrderedDict[str, int] = field(default_factory=OrderedDict)
    floor: int = _NO_FLOOR

    def remember(self, key: str, created: int, cap: int) -> int:
        """Add ``key``; evict this share's oldest beyond ``cap``; how many went."""
        self.seen[key] = created
        evicted = 0
        while len(self.seen) > cap:
            _, old = self.seen.popitem(last=False)
            self.floor = max(self.floor, old)
            evicted += 1
        return evicted

    def expire(self, horizon: float) -> int:
        # Entries arrive roughly in created order; stop at the first one still inside the
        # window (a later, older one stays a little longer, which is harmless).
        gone = 0
        while self.seen:
            key, created = next(iter(self.seen.items()))
            if created >= horizon:
                break
            del self.seen[key]
            gone += 1
        return gone


class NonceCache:
    """Refuse a (keyid, nonce) seen within the signature window; bounded in entries.

    Members (``member=True``) each have a share of at most ``per_member`` nonces; when a share
    overflows, its own oldest nonce goes and raises its own floor, so one member's flood never
    refuses another member's request. Non-members share one pool of ``max_entries`` nonces
    with one floor: a stranger can only crowd out strangers. Members' shares are few (the chain
    admits members), but beyond ``max_members`` shares a new signer is pooled with the
    strangers, so a layer whose ``is_member`` admits anyone stays bounded too.

    Restarts: a cache in memory forgets, so a request accepted before a restart would be fresh
    again after it. ``not_before`` (the node's start, in seconds) refuses anything created
    before it; the only requests accepted before the restart that this leaves open are those
    created at or after the second they were accepted in (a clock ahead of the node's, or a
    restart within one second), and ``journal`` keeps exactly those, so that they are
    refused after the restart too.
    """

    def __init__(
        self,
        window_s: int = DEFAULT_WINDOW_S,
        *,
        max_entries: int = DEFAULT_MAX_NONCES,
        per_member: int = DEFAULT_NONCES_PER_MEMBER,
        max_members: int = DEFAULT_MAX_PEERS,
        not_before: int | None = None,
        journal: ReplayJournal | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.per_member = per_member
        self.max_members = max_members
        self._clock = clock
        self._members: dict[str, _Share] = {}
        self._strangers = _Share()
        self._size = 0
        self._swept = _NO_FLOOR * 1.0
        self.journal = journal
        self.not_before = _NO_FLOOR if not_before is None else not_before
        if journal is not None:
            now = self._clock()
            last, kept = journal.load(horizon=now - NONCE_MEMORY_WINDOWS * window_s)
            # a last second far ahead means the clock went back: whatever was signed after
            # now + window is refused as stale anyway, so refusing longer would only stall us
            self.not_before = max(self.not_before, min(last + 1, int(now) + window_s + 1))
            for keyid, nonce, created in kept:
                self._remember(keyid, nonce, created, member=True)

    @property
    def floor(self) -> int:
        """The strangers' pool's floor (members' floors are their own)."""
        return self._strangers.floor

    def check_and_add(
        self, keyid: str, nonce: str, created: int, *, member: bool = True
    ) -> str | None:
        """None when fresh (and now remembered); else a one-line reason for refusal."""
        if created < self.not_before:
            return "signed before this node started; requests are not accepted across a restart"
        share = self._share(keyid, member)
        self._expire(share)
        if created <= share.floor:
            return "the replay cache overflowed; requests this old are refused, resend"
        key = nonce if share is not self._strangers else f"{keyid} {nonce}"
        if key in share.seen:
            return "this nonce was already used: the request is a replay"
        if self.journal is not None and share is not self._strangers:
            self.journal.note(keyid, nonce, created, now=self._clock())
        self._add(share, key, created)
        return None

    def _share(self, keyid: str, member: bool) -> _Share:
        if not member:
            return self._strangers
        share = self._members.get(keyid)
        if share is None:
            if len(self._members) >= self.max_members:
                return self._strangers
            share = self._members[keyid] = _Share()
        return share

    def _remember(self, keyid: str, nonce: str, created: int, *, member: bool) -> None:
        share = self._share(keyid, member)
        self._add(share, nonce if share is not self._strangers else f"{keyid} {nonce}", created)

    def _add(self, share: _Share, key: str, created: int) -> None:
        cap = self.max_entries if share is self._strangers else self.per_member
        self._size += 1 - share.remember(key, created, cap)

    def _expire(self, share: _Share) -> None:
        """Expire ``share`` and the strangers' pool now, every member's share once a second
        (a sweep of all shares on every request would cost a flood of signers dearly)."""
        now = self._clock()
        horizon = now - NONCE_MEMORY_WINDOWS * self.window_s
        self._size -= self._strangers.expire(horizon)
        if share is not self._strangers:
            self._size -= share.expire(horizon)
        if now - self._swept < 1.0:
            return
        self._swept = now
        for keyid in list(self._members):
            member = self._members[keyid]
            self._size -= member.expire(horizon)
            if not member.seen and member.floor < horizon and member is not share:
                del self._members[keyid]  # its floor can no longer refuse anything in-window

    def __len__(self) -> int:
        return self._size


class ReplayJournal:
    """What a node's nonce cache must remember across a restart (``HOME/node/replay.log``).

    With ``not_before`` at the start, a request accepted before a restart can be accepted
    again after it only if its ``created`` is not before the restart's second: it was created
    at or after the second in which it was accepted (a signer's clock ahead of the node's, by
    up to the window). Those few are appended here, as is each new second in which a request
    was accepted (at most one line a second), so that a restart within that same second
    refuses that second too. No fsync: what must survive is a crashed or restarted process
    (the kernel keeps its writes), not a machine crash (whose reboot outlasts the window).
    The file is rewritten, without what has expired, when it reaches ``max_lines``.
    """

    def __init__(self, path: Path, *, max_lines: int = 100_000) -> None:
        self.path = path
        self.max_lines = max_lines
        self._last = _NO_FLOOR
        self._live: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lines = 0

    def load(self, *, horizon: float) -> tuple[int, list[tuple[str, str, int]]]:
        """The last second a request was accepted in, and the nonces not yet expired; the file
        is rewritten with only those. A torn or foreign line is skipped, never fatal."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            log.warning("replay journal %s unreadable (%s); starting without it", self.path, exc)
            text = ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
                if "s" in record:
                    self._last = max(self._last, int(record["s"]))
                elif int(record["c"]) >= horizon:
                    self._live[(str(record["k"]), str(record["n"]))] = int(record["c"])
            # OverflowError: int() of an infinite float ({"s": 1e999} parses)
            except (ValueError, TypeError, KeyError, RecursionError, AttributeError, OverflowError):
                continue
        self._rewrite(horizon)
        return self._last, [(k, n, c) for (k, n), c in self._live.items()]

    def note(self, keyid: str, nonce: str, created: int, *, now: float) -> None:
        """Record an accepted request, if it could outlive a restart (see the class doc)."""
        second = int(now)
        lines = []
        if second > self._last:
            self._last = second
            lines.append(json.dumps({"s": second}))
        if created >= second:
            self._live[(keyid, nonce)] = created
            lines.append(json.dumps({"k": keyid, "n": nonce, "c": created}))
        if not lines:
            return
        if self._lines + len(lines) > self.max_lines:
            self._rewrite(now - 120)
        self._append("".join(line + "\n" for line in lines))
        self._lines += len(lines)

    def _rewrite(self, horizon: float) -> None:
        for key in [k for k, c in self._live.items() if c < horizon]:
            del self._live[key]
        while len(self._live) > self.max_lines // 2:
            # forgetting a nonce would reopen it after a restart: refuse its second instead
            _, created = self._live.popitem(last=False)
            self._last = max(self._last, created)
        lines = [json.dumps({"s": self._last})] if self._last != _NO_FLOOR else []
        lines += [json.dumps({"k": k, "n": n, "c": c}) for (k, n), c in self._live.items()]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot rewrite the replay journal %s: %s", self.path, exc)
        self._lines = len(lines)

    def _append(self, text: str) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            log.warning("cannot append to the replay journal %s: %s", self.path, exc)
