"""One member's update for one round, from the base model's blob to the update's blob.

What ``bcfl train`` and ``bcfl node --train`` share: the base weights are read from the blob
store one tensor at a time (after its hash is checked, streamed), loaded into the app's model,
trained, and the delta is written straight into the blob store, rounded to the genesis'
``contract.update_dtype``, one tensor at a time. So a trainer holds about the model, its
gradients and one tensor of the update above its idle size, never the whole update as bytes
or as a dict (issue 19: at most 5x the update size above idle, measured by
tests/training/test_training_memory.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bcfl_cli.apps.api import Progress
from bcfl_cli.apps.runner import BoundApp
from bcfl_cli.errors import BlobError, StoreError
from bcfl_cli.fl.tensorfile import TensorFile
from bcfl_cli.fl.training import TrainResult
from bcfl_cli.fl.update_file import BaseWeights, WrittenUpdate, update_dtype, write_update
from bcfl_cli.protocol.spec import ContractRules
from bcfl_cli.store.blobs import BlobStore

#: ``(base weights, trained result) -> the delta to submit``: an attacker's hook (node/trainer.py).
Rewrite = Callable[[Mapping[str, torch.Tensor], TrainResult], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class TrainedUpdate:
    """An update in the blob store, with what its ``update`` transaction states."""

    blob: str
    blob_size: int
    num_samples: int
    metrics: dict[str, str]
    #: exact L2 norm of the stored (rounded) values, as the contract computes it (NaN for a
    #: non-finite update, or when not asked for: the contract computes it anyway)
    norm: float


@contextmanager
def base_weights(blobs: BlobStore, digest: str, max_bytes: int) -> Iterator[BaseWeights]:
    """The round's base model as a lazy mapping over its blob, checked against its hash
    (streamed) and its layout (the header), open for as long as the caller trains on it."""
    status, size = blobs.check(digest)
    if status != "ok":
        raise BlobError(
            f"blob {digest} is {status}: the round's base model is not usable here",
            hint="fetch it from a peer (bcfl node)",
        )
    if size > max_bytes:
        raise StoreError(f"base model {digest} has {size} bytes, over the limit of {max_bytes}")
    with TensorFile.open(blobs.path_for(digest), max_bytes=max_bytes) as file:
        yield BaseWeights(file)


def store_update(
    blobs: BlobStore,
    delta: Mapping[str, torch.Tensor],
    rules: ContractRules,
    *,
    with_norm: bool = True,
) -> WrittenUpdate:
    """Write ``delta`` (rounded to the genesis' update dtype) into the blob store, streaming."""
    tmp_dir = blobs.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="update-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            written = write_update(
                delta, out, update_dtype(rules.update_dtype), with_norm=with_norm
            )
        # renamed into the store under the hash computed while writing it: not copied, not
        # read again (``put_file`` re-read, re-hashed and re-wrote 440 MB at 110M, issue 19)
        blobs.adopt(
            tmp,
            expected=written.sha256,
            max_bytes=written.size,
            known_digest=written.sha256,
            known_sum=written.content_sum or None,
        )
    finally:
        tmp.unlink(missing_ok=True)
    return written


def train_update(
    app: BoundApp,
    blobs: BlobStore,
    base_model: str,
    data: Any,
    rules: ContractRules,
    *,
    seed: int,
    device: str = "cpu",
    progress: Progress | Callable[[int, int], None] | None = None,
    rewrite: Rewrite | None = None,
    with_norm: bool = True,
    on_stored: Callable[[float], None] | None = None,
) -> TrainedUpdate:
    """Train on ``base_model`` (a blob of ``blobs``) and store the update in ``blobs``.

    ``on_stored(seconds)``: told how long writing the update took (the node logs it: one
    stage of a round's timeline, bench/README.md).
    """
    with base_weights(blobs, base_model, rules.max_blob_bytes) as base:
        result = app.train_round(base, data, seed=seed, device=device, progress=progress)
        delta = result.delta if rewrite is None else rewrite(base, result)
        started = time.perf_counter()
        written = store_update(blobs, delta, rules, with_norm=with_norm)
        if on_stored is not None:
            on_stored(time.perf_counter() - started)
    trained = TrainedUpdate(
        written.sha256, written.size, result.num_samples, dict(result.metrics), written.norm
    )
    del result, delta  # the trained model, its last references
    return_freed_memory()
    return trained


def return_freed_memory() -> None:
    """Give the heap pages freed by a round back to the system (glibc's ``malloc_trim``).

    glibc keeps freed pages of its heap for later allocations: after a round at 10M
    parameters a trainer kept ~13 MB it no longer used (the train-loss pass' activations, the
    optimiser's small tensors) into the checks and aggregation that follow (issue 19). Tensors
    larger than 32 MB are mapped and unmapped on their own and are not concerned. A no-op
    where the C library has no ``malloc_trim`` (musl, macOS, Windows).
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


__all__ = [
    "Rewrite",
    "TrainedUpdate",
    "base_weights",
    "return_freed_memory",
    "store_update",
    "train_update",
]
