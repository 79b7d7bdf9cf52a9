"""The member's pin: the genesis hash and the highest verified head, kept outside the store.

A verifier that reads its trust anchor from the store it verifies proves nothing against
whoever holds that file: the store's own ``genesis_hash`` row is replaced along with the blocks,
and deleting the last blocks (the triggers are dropped first) leaves a shorter chain that is
still internally valid. So ``HOME/pin.json`` records, apart from ``chain.sqlite``:

- ``genesis``: the consortium this home belongs to, written by ``bcfl init`` and ``bcfl join``
  (through :meth:`bcfl_cli.store.ledger.Ledger.create`);
- ``height`` and ``head``: the highest block this member has seen verified (by its node, which
  applies the chain rules to every block before appending it, or by ``bcfl verify-chain``).
  It only moves forward, so a later truncation of the store below it is a fault.

Crash safety: the pin never runs ahead of the durable store. The node writes it only after the
block's database transaction has committed (SQLite ``synchronous=FULL``), and every write goes
to a temporary file that is fsynced and renamed over the old one (then the directory is
fsynced), so a crash leaves either the old pin or the new one, never a torn file, and never a
height the store has not got.

The pin guards against a store that is replaced, restored from an old copy or edited; it does
not guard against someone who can rewrite the whole home (they rewrite the pin too). For that,
keep the genesis hash and a recent ``HEIGHT:HASH`` elsewhere (``verify-chain --genesis``,
``--trusted-head``) or compare with a peer (``--against``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bcfl_cli.errors import EncodingError, StoreError
from bcfl_cli.protocol.encoding import canonical, is_hash_hex, parse_json

#: A pin file is a few hundred bytes; anything larger is not one.
MAX_PIN_BYTES = 4096
PIN_VERSION = 1


@dataclass(frozen=True)
class Pin:
    """The genesis of this home's consortium and the highest head verified so far."""

    genesis: str
    height: int
    head: str

    def to_dict(self) -> dict[str, int | str]:
        return {"v": PIN_VERSION, "genesis": self.genesis, "height": self.height, "head": self.head}


def read_pin(path: Path) -> Pin | None:
    """The pin at ``path``; ``None`` when there is none (a home made before pins existed).

    A pin that is there but unreadable is an error, not ``None``: an attacker who could turn a
    pin into garbage must not get trust-on-first-use again.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PIN_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the pin {path}: {exc}") from exc
    hint = f"restore {path.name} from a copy, or delete it to pin again on the next verify"
    if len(data) > MAX_PIN_BYTES:
        raise StoreError(f"the pin {path} is larger than {MAX_PIN_BYTES} bytes", hint=hint)
    try:
        value = parse_json(data, max_bytes=MAX_PIN_BYTES)
    except (EncodingError, ValueError, RecursionError) as exc:
        raise StoreError(f"the pin {path} is not valid JSON: {exc}", hint=hint) from exc
    if (
        not isinstance(value, dict)
        or value.get("v") != PIN_VERSION
        or set(value) != {"v", "genesis", "height", "head"}
        or not isinstance(value["genesis"], str)
        or not is_hash_hex(value["genesis"])
        or not isinstance(value["head"], str)
        or not is_hash_hex(value["head"])
        or type(value["height"]) is not int
        or value["height"] < 0
        or (value["height"] == 0 and value["head"] != value["genesis"])
    ):
        raise StoreError(
            f"the pin {path} is not a version-{PIN_VERSION} pin "
            '{"v", "genesis", "height", "head"}',
            hint=hint,
        )
    return Pin(value["genesis"], value["height"], value["head"])


def write_pin(path: Path, pin: Pin) -> None:
    """Replace the pin atomically and durably (temporary file, fsync, rename, fsync the dir)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = canonical(pin.to_dict()) + b"\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write the pin {path}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    """The rename is durable only once the directory is (POSIX); not possible everywhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pin_genesis(path: Path, genesis: str) -> Pin:
    """At ``bcfl init`` / ``bcfl join``: pin ``genesis`` at height 0, unless already pinned.

    A pin of another consortium is refused: the home belonged to that one, and silently
    re-pinning is exactly what a replaced store would want.
    """
    current = read_pin(path)
    if current is not None:
        if current.genesis != genesis:
            raise StoreError(
                f"{path} pins consortium {current.genesis}, not {genesis}",
                hint=f"a home holds one consortium; use another --home, or delete {path.name} "
                "if you really mean to leave that consortium",
            )
        return current
    pin = Pin(genesis, 0, genesis)
    write_pin(path, pin)
    return pin


def advance_pin(path: Path, current: Pin | None, genesis: str, height: int, head: str) -> Pin:
    """Move the pin forward to a verified ``height``/``head``; never backward, never across
    consortia. ``current`` is the pin as last read (``None``: none yet, trust on first use).

    The node and ``verify-chain`` may both move the pin at once: under an exclusive lock the
    pin on disk is read again, and only a height above it is written, so neither can move it
    back past what the other wrote.
    """
    if current is not None and current.genesis != genesis:
        raise StoreError(f"refusing to re-pin {path} from {current.genesis} to {genesis}")
    with _locked(path):
        on_disk = read_pin(path)
        if on_disk is not None:
            if on_disk.genesis != genesis:
                raise StoreError(f"refusing to re-pin {path} from {on_disk.genesis} to {genesis}")
            if height <= on_disk.height:
                return on_disk
        pin = Pin(genesis, height, head)
        write_pin(path, pin)
        return pin


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``.pin.json.lock`` next to the pin (POSIX ``flock``; where
    there is none, writers are not serialised and a race can only leave a lower pin)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot lock the pin {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


#: A running node moves the pin forward at most this often (and once more when it stops): a
#: pin write is an fsync or two, cheap once every few seconds, wasteful at every block; the
#: blocks after the last write are simply pinned on the next one.
PIN_INTERVAL_S = 5.0


class PinKeeper:
    """The pin of a node's home, moved forward as the node appends verified blocks.

    Started on the node's store (``height``, ``hash_at``), it refuses a store that the pin says
    was replaced (another genesis) or rewritten (another block at the pinned height). A store
    that is merely shorter than the pin (truncated, or restored from an older copy) is allowed
    to start, and reported in ``behind``: the node then syncs the missing blocks back from its
    peers, and the pin does not move until the store has passed it again.
    """

    def __init__(
        self,
        path: Path,
        genesis: str,
        height: int,
        hash_at: Callable[[int], str],
        *,
        interval_s: float = PIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.genesis = genesis
        self.interval_s = interval_s
        self.clock = clock
        self.pin = read_pin(path)
        self.behind = 0  # pinned blocks the store lacks at start
        self._pending: tuple[int, str] | None = None
        self._written_at = -math.inf
        pin = self.pin
        if pin is None:
            self._pending = (height, hash_at(height))  # trust on first use, written at once
            self._written_at = -math.inf
            return
        if pin.genesis != genesis:
            raise StoreError(
                f"the store holds consortium {genesis}, but {path} pins {pin.genesis}: "
                "the store was replaced",
                hint="restore this home's own chain.sqlite, or use the home that holds it",
            )
        if pin.height > height:
            self.behind = pin.height - height
        elif hash_at(pin.height) != pin.head:
            raise StoreError(
                f"block {pin.height} of the store is {hash_at(pin.height)}, but {path} pins "
                f"{pin.head}: the store was rewritten",
                hint="restore this home's own chain.sqlite; `bcfl verify-chain` shows more",
            )

    def note(self, height: int, head: str) -> None:
        """A block was appended and is durable; the pin follows within ``interval_s``."""
        self._pending = (height, head)
        if self.clock() - self._written_at >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the last noted head if it is past the pin (a failure raises ``StoreError``)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._written_at = self.clock()
        self.pin = advance_pin(self.path, self.pin, self.genesis, *pending)
