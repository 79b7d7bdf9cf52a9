"""What a simulation runs: members, rounds, the job, the network and the faults.

Faults are named by member index (0-based). A Byzantine *trainer* sends an attacked update
(``fl/attacks.py``) through the honest consensus path; a Byzantine *validator* is ``silent``
(never sends anything, never trains) or ``equivocate`` (signs every vote for a block and, for
half of its peers, a conflicting nil vote too, so the others record misbehaviour evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.spec import RULE_NAMES, UPDATE_DTYPE_NAMES
from bcfl_cli.simulation.network import NetworkConfig, Partition

#: Members one simulation may hold (each keeps a ledger and a consensus engine in memory).
MAX_SIM_MEMBERS = 1_000
TRAINER_ATTACKS = ("sign-flip", "scaling", "noise", "free-rider")
VALIDATOR_FAULTS = ("silent", "equivocate")


@dataclass(frozen=True)
class Crash:
    """Member ``member`` is down from ``at_ms`` to ``back_ms`` (None: for good)."""

    member: int
    at_ms: int
    back_ms: int | None = None


@dataclass(frozen=True)
class SimOptions:
    members: int = 4
    rounds: int = 3
    seed: int = 0
    rule: str = "fedavg"
    non_iid: float = 0.5  # Dirichlet alpha of the label split; 0: IID
    local_epochs: int = 1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    crashes: tuple[Crash, ...] = ()
    byzantine: tuple[tuple[int, str], ...] = ()  # (member, attack or validator fault)
    train_ms: int = 100  # logical time a member's local training takes
    update_wait_ms: int = 2_000  # how long a proposer waits for a round's missing updates
    deadline_blocks: int = 3
    out: Path | None = None  # where the member homes go (default: a new temporary directory)
    data_dir: Path | None = None
    score: bool = True  # test accuracy of every aggregate on digits-test.csv
    #: one contract verdict and one aggregate check per process instead of per member
    #: (deterministic computations; every member still applies every chain rule)
    share_checks: bool = False
    #: the genesis' ``contract.update_dtype``: the dtype every update is rounded to and sent in
    update_dtype: str = "float32"

    def behaviour(self, member: int) -> str | None:
        return dict(self.byzantine).get(member)

    def check(self) -> None:
        """Refuse impossible runs before anything is created."""
        n = self.members
        if not 1 <= n <= MAX_SIM_MEMBERS:
            raise UsageError(f"--members {n}: expected 1 to {MAX_SIM_MEMBERS}")
        if not 1 <= self.rounds <= 10_000:
            raise UsageError(f"--rounds {self.rounds}: expected 1 to 10000")
        if self.rule not in RULE_NAMES:
            raise UsageError(f"--rule {self.rule!r}: expected one of {', '.join(RULE_NAMES)}")
        if self.update_dtype not in UPDATE_DTYPE_NAMES:
            raise UsageError(
                f"--update-dtype {self.update_dtype!r}: expected one of "
                f"{', '.join(UPDATE_DTYPE_NAMES)}"
            )
        if self.non_iid < 0:
            raise UsageError("--non-iid: a Dirichlet alpha > 0, or 0 for an IID split")
        for crash in self.crashes:
            if not 0 <= crash.member < n:
                raise UsageError(f"--crash: member {crash.member} is not in 0..{n - 1}")
            if crash.back_ms is not None and crash.back_ms <= crash.at_ms:
                raise UsageError(f"--crash {crash.member}: it must come back after it went down")
        for member, what in self.byzantine:
            if not 0 <= member < n:
                raise UsageError(f"--byzantine: member {member} is not in 0..{n - 1}")
            if what not in TRAINER_ATTACKS + VALIDATOR_FAULTS:
                raise UsageError(
                    f"--byzantine {member}:{what}: expected one of "
                    f"{', '.join(TRAINER_ATTACKS + VALIDATOR_FAULTS)}"
                )
        try:
            NetworkConfig(self.network.delay_ms, self.network.drop, self.network.partitions)
        except ValueError as exc:
            raise UsageError(f"network: {exc}") from exc
        faulty = {m for m, what in self.byzantine if what in VALIDATOR_FAULTS}
        faulty |= {c.member for c in self.crashes}
        if len(faulty) > (n - 1) // 3:
            raise UsageError(
                f"{len(faulty)} crashed or Byzantine validators of {n}: BFT tolerates at most "
                f"floor((n-1)/3) = {(n - 1) // 3}",
                hint="a quorum is floor(2n/3) + 1 of n; n = 3 tolerates no fault at all",
            )


def parse_crash(text: str) -> Crash:
    """``MEMBER@AT_MS`` or ``MEMBER@AT_MS-BACK_MS`` (logical milliseconds)."""
    try:
        member, _, when = text.partition("@")
        at, _, back = when.partition("-")
        return Crash(int(member), int(at), int(back) if back else None)
    except ValueError as exc:
        raise UsageError(
            f"--crash {text!r}: expected MEMBER@AT_MS or MEMBER@AT_MS-BACK_MS"
        ) from exc


def parse_partition(text: str) -> Partition:
    """``START_MS-END_MS:I,J,...``: the listed members hear only each other meanwhile."""
    try:
        span, _, side = text.partition(":")
        start, _, end = span.partition("-")
        members = frozenset(int(i) for i in side.split(",") if i)
        if not members or int(end) <= int(start):
            raise ValueError(text)
        return Partition(int(start), int(end), members)
    except ValueError as exc:
        raise UsageError(f"--partition {text!r}: expected START_MS-END_MS:I,J,...") from exc


def parse_byzantine(text: str) -> tuple[int, str]:
    """``MEMBER:BEHAVIOUR`` (an attack of a trainer, or silent/equivocate)."""
    member, _, what = text.partition(":")
    try:
        return int(member), what
    except ValueError as exc:
        raise UsageError(f"--byzantine {text!r}: expected MEMBER:BEHAVIOUR") from exc


def parse_delay(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` or ``MS`` (logical milliseconds)."""
    low, _, high = text.partition("-")
    try:
        pair = (int(low), int(high or low))
    except ValueError as exc:
        raise UsageError(f"--delay {text!r}: expected LOW-HIGH in milliseconds") from exc
    if not 0 <= pair[0] <= pair[1]:
        raise UsageError(f"--delay {text!r}: expected 0 <= LOW <= HIGH")
    return pair
