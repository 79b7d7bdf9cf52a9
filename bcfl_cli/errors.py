"""The one error base of bcfl.

Every failure a user can cause or meet is a ``BcflError`` carrying a one-line human message and
the process exit code; the CLI root catches it once and prints it (``--verbose`` for the
traceback). Subclasses name the area so callers can catch narrowly::

    BcflError
     ├── UsageError          (exit 2) bad arguments, bad config file
     ├── PlanFinished        (exit 0) the training plan is over: nothing to train or submit
     ├── IdentityError       wrong passphrase, missing or corrupt key file
     ├── EncodingError       bytes that are not the canonical form of what they claim to be
     ├── StoreError          the SQLite store or the blob store
     │    └── BlobError      a missing, oversized or corrupt content-addressed blob
     ├── VerificationError   the chain breaks a rule of docs/PROTOCOL.md
     ├── ContractError       an update breaks the consortium's contract
     ├── AppError            the model app: missing, not the one the genesis pins, or failing
     └── NodeError           talking to peers
"""

from __future__ import annotations


class BcflError(Exception):
    """Base of every bcfl error: a human message and an exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(BcflError):
    exit_code = 2


class PlanFinished(BcflError):
    """The training plan's last round is closed: nothing to train or submit.

    Not a failure (exit code 0): ``bcfl train`` and ``bcfl submit`` print the message and
    succeed, so a script that trains every round ends cleanly with the plan.
    """

    exit_code = 0

    def __init__(self, rounds: int) -> None:
        super().__init__(f"the training plan is finished ({rounds} rounds); nothing to train")
        self.rounds = rounds


class IdentityError(BcflError):
    pass


class EncodingError(BcflError):
    pass


class StoreError(BcflError):
    pass


class BlobError(StoreError):
    pass


class VerificationError(BcflError):
    """A chain rule is broken; carries where, so verify-chain can name the first fault."""

    def __init__(
        self,
        message: str,
        *,
        height: int | None = None,
        tx_hash: str | None = None,
        code: str = "invalid",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.height = height
        self.tx_hash = tx_hash
        self.code = code


class ContractError(BcflError):
    """An update breaks the contract; ``reason`` is the code recorded on chain."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class AppError(BcflError):
    """The consortium's model app cannot be used: not installed, not matching the genesis pin
    (the message names the files that differ), or failing in its own code."""


class NodeError(BcflError):
    pass
