"""verify-chain as a member runs it: the chain, its anchors, the home's pin, then the pin
moves forward (docs/PROTOCOL.md §8.6, docs/OPERATIONS.md "What verify-chain proves")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.errors import StoreError, VerificationError
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.store.pin import Pin, advance_pin, read_pin
from bcfl_cli.verify.anchor import Anchors, TrustedHead
from bcfl_cli.verify.chain import Progress, Verified, verify_chain_state
from bcfl_cli.verify.report import Fault, Report

#: A check run after the chain verified (the peer comparison): it appends its row to
#: ``verified.report.anchors`` and raises ``VerificationError`` for a fault.
AfterCheck = Callable[[Ledger, Verified], None]


def verify_anchored(
    ledger: Ledger,
    *,
    pin_file: Path | None,
    genesis: str | None = None,
    trusted_head: TrustedHead | None = None,
    after: AfterCheck | None = None,
    deep: bool = False,
    checks: AppChecks | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    models_only: bool = False,
) -> Report:
    """verify-chain as a member runs it: the chain, checked against every anchor given and
    against the home's pin (``pin_file``; ``None``: not used), which then moves forward.

    A home made before pins existed has no pin file: the store's own genesis is trusted on
    first use and pinned with the verified head (``report.pin == "created"``). The pin is only
    written when everything held, so a faulty store never becomes the reference.
    """
    pin: Pin | None = None
    if pin_file is not None:
        try:
            pin = read_pin(pin_file)
        except StoreError as exc:
            report = Report(
                chain_id=ledger.genesis_hash, deep=deep, models_only=models_only, pin="unreadable"
            )
            report.fault = Fault(None, None, "pin_unreadable", exc.message)
            return report
    verified = verify_chain_state(
        ledger,
        deep=deep,
        checks=checks,
        workers=workers,
        progress=progress,
        anchors=Anchors(genesis=genesis, trusted_head=trusted_head, pin=pin),
        models_only=models_only,
    )
    report = verified.report
    report.pin = "not used" if pin_file is None else "checked"
    if report.ok and after is not None:
        try:
            after(ledger, verified)
        except VerificationError as exc:
            report.fault = Fault.from_error(exc)
    if report.ok and pin_file is not None:
        new = advance_pin(pin_file, pin, report.chain_id, report.height, report.head)
        if pin is None:
            report.pin = "created"
        elif new != pin:
            report.pin = "advanced"
    return report
