"""``bcfl train``: one member's contribution to a round, from its own ledger and its own data.

The model, the training plan and the contract come from the signed genesis document; the base
weights are the round's global model, read from the member's blob store by hash (so they are
exactly what the chain names) and parsed with safetensors only. The update is written twice: into
the blob store (ready to be offered to peers, content-addressed) and as a ``.safetensors`` file
with a ``.json`` sidecar whose fields ``round``, ``base_model``, ``blob``, ``blob_size``,
``num_samples`` and ``metrics`` are the body of the ``update`` transaction.

The sidecar stays on the member's machine. It records the seed so a run can be repeated, except
under differential privacy: whoever knows the seed knows the noise, so it is left out there, and
the default seed is always drawn from the OS's secure random source. Seeds stay below 2^53 (53
random bits): the sidecar is read back by the strict I-JSON parser, which refuses larger integers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bcfl_cli.apps.runner import bind_app
from bcfl_cli.chain.chain import Chain
from bcfl_cli.chain.config import GenesisConfig
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import (
    ContractError,
    PlanFinished,
    StoreError,
    UsageError,
    VerificationError,
)
from bcfl_cli.fl.device import pick_device
from bcfl_cli.fl.dp import epsilon_spent
from bcfl_cli.fl.training import Progress, StepReport, decimal
from bcfl_cli.home import Home
from bcfl_cli.training.update import train_update

SIDECAR_VERSION = 1
# The sidecar is JSON read back by `bcfl submit` with the protocol's I-JSON parser, whose integers
# stop at 2^53 - 1: a default seed of 63 bits broke train-then-submit on almost every run.
SEED_BITS = 53
MAX_SEED = (1 << SEED_BITS) - 1
#: Bytes copied at a time from the stored update to the ``--out`` file.
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RoundTarget:
    """Which round to train for and from which global model."""

    round: int
    base_model: str
    open: bool  # False: the round is not opened on chain yet (training ahead of open_round)


@dataclass(frozen=True)
class LocalUpdate:
    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def blob(self) -> str:
        return str(self.sidecar["blob"])


def target_round(state: ChainState, requested: int | None) -> RoundTarget:
    """The open round; if none is open, the next one (its base is the latest global model).

    PlanFinished once the plan's last round is closed: no round will open again, so an update
    trained now could never be submitted (it used to be written for round N+1, "not open yet",
    and refused by the node).
    """
    if state.plan_finished:
        raise PlanFinished(state.config.training.rounds)
    current = state.round
    target = (
        RoundTarget(current.number, current.base_model, True)
        if current.open
        else RoundTarget(current.number + 1, current.model, False)
    )
    if requested is not None and requested != target.round:
        where = "is open" if target.open else "comes next (none is open)"
        raise UsageError(
            f"cannot train for round {requested}: round {target.round} {where}",
            hint=f"use --round {target.round}, or leave --round out",
        )
    return target


def _write_atomic(path: Path, data: bytes | BinaryIO) -> None:
    """Write ``data`` (bytes, or a file streamed in chunks) to ``path`` or leave it as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                shutil.copyfileobj(data, handle, COPY_CHUNK)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _precheck(config: GenesisConfig, norm: float, num_samples: int, size: int) -> list[str]:
    """Contract bounds the update visibly breaks: better said now than as a rejection later."""
    rules = config.contract
    warnings = []
    if norm > rules.max_update_norm:
        warnings.append(
            f"the update's L2 norm {norm:.4g} exceeds contract.max_update_norm "
            f"{rules.max_update_norm:g}: validators will reject it"
        )
    if not rules.min_samples <= num_samples <= rules.max_samples:
        warnings.append(
            f"{num_samples} training samples is outside the contract's "
            f"[{rules.min_samples}, {rules.max_samples}]: validators will reject it"
        )
    if size > rules.max_blob_bytes:
        warnings.append(f"the update takes {size} bytes, over contract.max_blob_bytes")
    return warnings


def train_for_round(
    home: Home,
    data_path: Path,
    *,
    round: int | None = None,
    out: Path | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    device: str | None = None,
    force: bool = False,
    app_folder: Path | None = None,
    on_step: StepReport | None = None,
) -> LocalUpdate:
    """Train this member's update for the open (or next) round and write it out.

    The genesis' model app does the training; a pinned app must be installed (or in
    ``app_folder``) and match its pin, or nothing is trained (AppError naming the files).
    """
    try:
        chain = Chain.open(home)
    except VerificationError as exc:
        raise StoreError(
            f"the local ledger does not replay: {exc.message}",
            hint="run `bcfl verify-chain` to locate the fault",
        ) from exc
    with chain:
        ledger, state = chain.ledger, chain.state
        config = state.config
        target = target_round(state, round)
        path = (
            out if out is not None else home.root / "updates" / f"round-{target.round}.safetensors"
        )
        sidecar_path = path.with_suffix(".json")
        if sidecar_path == path:
            raise UsageError(f"--out {path}: the update needs its own name; .json is the sidecar's")
        if not force and (path.exists() or sidecar_path.exists()):
            raise UsageError(
                f"{path} already exists", hint="use --force to overwrite it, or --out FILE"
            )
        plan = config.training
        app = bind_app(config.model, plan, app_folder)
        dataset = app.load_data(Path(data_path))
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise UsageError(f"seed {seed} is outside 0..{MAX_SEED} (2^53 - 1)")
        run_seed = secrets.randbits(SEED_BITS) if seed is None else seed
        dev = pick_device(device)
        started = time.monotonic()
        try:
            update = train_update(
                app,
                ledger.blobs,
                target.base_model,
                dataset,
                config.contract,
                seed=run_seed,
                progress=on_step if on_step is not None else _with_loss(progress),
                device=str(dev),
            )
        except ContractError as exc:
            raise StoreError(f"global model {target.base_model} unreadable: {exc}") from exc
        elapsed = time.monotonic() - started
        blob = update.blob
        metrics = dict(update.metrics)
        if plan.dp.enabled:
            steps = int(update.metrics["steps"]) * target.round
            q = min(plan.batch_size, update.num_samples) / update.num_samples
            total, _ = epsilon_spent(q, plan.dp.noise_multiplier, steps, plan.dp.delta)
            # an upper bound: as if this member had trained on the same rows in every round
            metrics["dp_epsilon_total"] = decimal(total, 4)
        norm = update.norm
        sidecar: dict[str, Any] = {
            "v": SIDECAR_VERSION,
            "chain_id": ledger.genesis_hash,
            "round": target.round,
            "round_open": target.open,
            "base_model": target.base_model,
            "blob": blob,
            "blob_size": update.blob_size,
            "num_samples": update.num_samples,
            "metrics": metrics,
            "update_norm": decimal(norm),
            "local": {
                "data": str(Path(data_path).resolve()),
                "rows": _rows(dataset),
                "app": app.entry_point,
                "device": str(dev),
                "seconds": decimal(elapsed, 3),
                "seed": None if plan.dp.enabled else run_seed,
            },
        }
        warnings = _precheck(config, norm, update.num_samples, update.blob_size)
        with ledger.blobs.open(blob) as source:  # streamed: never the whole update in memory
            _write_atomic(path, source)
    _write_atomic(sidecar_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return LocalUpdate(path, sidecar_path, sidecar, warnings)


def _rows(dataset: object) -> int | None:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _with_loss(progress: Progress | None) -> StepReport | None:
    """A two-argument progress callback that an app may also call with its loss."""
    if progress is None:
        return None
    report = progress

    def call(step: int, total: int, /, loss: float | None = None) -> None:
        report(step, total)

    return call


def update_tx_body(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The ``update`` transaction body from a sidecar written by :func:`train_for_round`."""
    body = {k: sidecar[k] for k in ("round", "base_model", "blob", "blob_size", "num_samples")}
    body["metrics"] = dict(sidecar["metrics"])
    return body
