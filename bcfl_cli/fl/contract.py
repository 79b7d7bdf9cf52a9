"""The contract: may this update enter the chain? (docs/PROTOCOL.md, update validation)

Every validator runs these checks before voting for a block that holds an ``update``
transaction, so they are pure and deterministic: the same claim, chain context and blob bytes
give the same verdict on every peer. A rejection carries a named reason code that a
``validation`` transaction records. The checks run cheapest first and in a fixed order, so the
reason for a blob with several faults is the same everywhere:

1. chain context (no blob needed): ``not_trainer``, ``round_not_open``, ``wrong_base_model``,
   ``duplicate_update``, ``samples_out_of_bounds``;
2. the blob as bytes: ``blob_too_large`` (the claimed size, so nobody fetches a huge blob),
   ``blob_missing``, ``blob_hash_mismatch``;
3. the blob as safetensors, layout only (nothing is built yet, nothing is ever unpickled):
   ``malformed_blob``, ``wrong_tensor_names``, ``wrong_dtype``, ``wrong_shape``;
4. the values: ``non_finite``, ``norm_exceeded`` (exact L2 norm, see ``numerics``).

The blob is bytes or, on a node, a file of the blob store (``fl/tensorfile.py``): hashed a
MiB at a time, its layout read from the header alone, its values a piece at a time, so a
validator holds a few MiB while checking an update, not the update (issue 19).

Checking ends in a verdict, whatever the bytes: a blob on which the checks themselves fail
with an unexpected exception (a parser bug, a ``RecursionError``) is rejected as
``malformed_blob`` with the exception's type in the detail, so one hostile update can neither
crash a validator nor stop the round it was sent to. Only ``MemoryError`` and the node's own
``BcflError``s (a corrupt local copy, say) still propagate: they say nothing about the bytes,
and a verdict drawn from them could differ from a peer's.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcfl_cli.errors import BcflError, BlobError, ContractError
from bcfl_cli.fl.numerics import (
    SMALL_SUM,
    ExactSum,
    float32_squares_units,
    from_units,
)
from bcfl_cli.fl.tensorfile import PIECE_ELEMENTS, FileSource, TensorFile, sha256_of
from bcfl_cli.fl.tensors import ByteSource, BytesSource, check_safetensors_layout
from bcfl_cli.fl.update_summary import UpdateSummary
from bcfl_cli.protocol.spec import ContractRules, ModelSpec

MAX_DETAIL_CHARS = 512

#: name -> (safetensors dtype, shape): what an update's tensors must look like exactly.
Layout = Mapping[str, tuple[str, tuple[int, ...]]]


class Reason(enum.StrEnum):
    """Verdict codes recorded on chain; ``OK`` is the one accepting code."""

    OK = "ok"
    NOT_TRAINER = "not_trainer"
    ROUND_NOT_OPEN = "round_not_open"
    WRONG_BASE_MODEL = "wrong_base_model"
    DUPLICATE_UPDATE = "duplicate_update"
    SAMPLES_OUT_OF_BOUNDS = "samples_out_of_bounds"
    BLOB_TOO_LARGE = "blob_too_large"
    BLOB_MISSING = "blob_missing"
    BLOB_HASH_MISMATCH = "blob_hash_mismatch"
    MALFORMED_BLOB = "malformed_blob"
    WRONG_TENSOR_NAMES = "wrong_tensor_names"
    WRONG_DTYPE = "wrong_dtype"
    WRONG_SHAPE = "wrong_shape"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"


@dataclass(frozen=True)
class Verdict:
    """The outcome of the contract for one update, as a ``validation`` transaction states it."""

    accept: bool
    reason: str
    detail: str = ""

    @classmethod
    def ok(cls, detail: str = "") -> Verdict:
        return cls(True, Reason.OK.value, _bounded(detail))

    @classmethod
    def reject(cls, reason: Reason | str, detail: str) -> Verdict:
        return cls(False, str(reason), _bounded(detail))

    def body(self, update_hash: str) -> dict[str, Any]:
        """The ``validation`` transaction body for this verdict on ``update_hash``."""
        return {
            "update": update_hash,
            "verdict": "accept" if self.accept else "reject",
            "reason": self.reason,
            "detail": self.detail,
        }


def _bounded(detail: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in detail)
    return text[:MAX_DETAIL_CHARS]


@dataclass(frozen=True)
class UpdateClaim:
    """What an ``update`` transaction asserts about its blob (its author and body)."""

    author: str
    round: int
    base_model: str
    blob: str
    blob_size: int
    num_samples: int

    @classmethod
    def from_body(cls, author: str, body: Mapping[str, Any]) -> UpdateClaim:
        return cls(
            author=author,
            round=int(body["round"]),
            base_model=str(body["base_model"]),
            blob=str(body["blob"]),
            blob_size=int(body["blob_size"]),
            num_samples=int(body["num_samples"]),
        )


@dataclass(frozen=True)
class RoundContext:
    """The slice of chain state the contract reads (the chain module builds it, no DB here).

    ``submitted`` holds the authors that already have an update in this round; the chain
    state decides which of their updates count (this module only refuses a second one).
    """

    trainers: frozenset[str]
    round: int | None
    round_open: bool
    base_model: str | None
    submitted: frozenset[str] = frozenset()


# --- 1. chain context ------------------------------------------------------------------
def check_context(rules: ContractRules, claim: UpdateClaim, ctx: RoundContext) -> Verdict | None:
    """The checks that need no blob; None when they all pass."""
    if claim.author not in ctx.trainers:
        return Verdict.reject(Reason.NOT_TRAINER, f"{claim.author} is not an admitted trainer")
    if not ctx.round_open or ctx.round is None or claim.round != ctx.round:
        current = f"round {ctx.round} is {'open' if ctx.round_open else 'closed'}"
        return Verdict.reject(
            Reason.ROUND_NOT_OPEN, f"update for round {claim.round}, but {current}"
        )
    if claim.base_model != ctx.base_model:
        return Verdict.reject(
            Reason.WRONG_BASE_MODEL,
            f"update trained on {claim.base_model}, round {ctx.round} is based on "
            f"{ctx.base_model}",
        )
    if claim.author in ctx.submitted:
        return Verdict.reject(
            Reason.DUPLICATE_UPDATE, f"{claim.author} already submitted in round {ctx.round}"
        )
    if not rules.min_samples <= claim.num_samples <= rules.max_samples:
        return Verdict.reject(
            Reason.SAMPLES_OUT_OF_BOUNDS,
            f"{claim.num_samples} samples, allowed {rules.min_samples}..{rules.max_samples}",
        )
    return None


# --- 2-4. the blob -----------------------------------------------------------------------
def check_blob(
    rules: ContractRules,
    layout: Layout,
    claim: UpdateClaim,
    blob: bytes | Path | None,
    *,
    named_by_hash: bool = False,
    summary: UpdateSummary | None = None,
) -> Verdict:
    """The blob checks, on bytes in memory or on a file read piece by piece (one code).

    Nothing decoded is returned nor kept: a file is hashed ``HASH_CHUNK`` at a time, its
    layout read from the header alone, and its values read ``PIECE_ELEMENTS`` at a time, so
    checking an update holds a few MiB whatever its size. ``named_by_hash``: ``blob`` is a
    content-addressed file named ``claim.blob``, so content that hashes to anything else is a
    corrupt local copy (``BlobError``), not the sender's fault.

    ``summary``: what ``update_summary`` computed over exactly the bytes that hash to
    ``claim.blob`` as they were received; the same checks then run on it, in the same order,
    without reading the file again (the verdict is the one the file would get).
    """
    limit = rules.max_blob_bytes
    if claim.blob_size > limit:
        return Verdict.reject(
            Reason.BLOB_TOO_LARGE, f"claimed {claim.blob_size} bytes, limit {limit}"
        )
    if blob is None:
        return Verdict.reject(Reason.BLOB_MISSING, f"blob {claim.blob} is not available")
    if summary is not None and summary.size == claim.blob_size:
        return _check_summary(rules, layout, summary)
    if isinstance(blob, Path):
        try:
            source: FileSource | BytesSource = FileSource(blob)
        except FileNotFoundError:
            return Verdict.reject(Reason.BLOB_MISSING, f"blob {claim.blob} is not available")
    else:
        source = BytesSource(blob)
    try:
        try:
            verdict = _check_source(rules, layout, claim, source, named_by_hash=named_by_hash)
        except ContractError as exc:  # a short read while hashing: the file shrank
            _refuse_a_changed_file(source, claim, exc)
            raise
        _refuse_a_changed_file(source, claim, None)
        return verdict
    finally:
        source.close()


def _refuse_a_changed_file(
    source: ByteSource, claim: UpdateClaim, cause: BaseException | None
) -> None:
    """A file that changed while it was read got a verdict on no fixed bytes: the node's
    problem (a peer checked other bytes), so no verdict at all."""
    if isinstance(source, FileSource) and source.changed():
        raise BlobError(
            f"blob {claim.blob} changed on disk while it was checked",
            hint="check it again; nothing but the blob store should write there",
        ) from cause


def _check_source(
    rules: ContractRules,
    layout: Layout,
    claim: UpdateClaim,
    source: ByteSource,
    *,
    named_by_hash: bool,
) -> Verdict:
    limit = rules.max_blob_bytes
    size = source.size
    if size > limit:
        return Verdict.reject(Reason.BLOB_TOO_LARGE, f"{size} bytes, limit {limit}")
    digest = sha256_of(source)
    if digest != claim.blob or size != claim.blob_size:
        if named_by_hash and digest != claim.blob:
            raise BlobError(f"blob {claim.blob} is corrupt: its content does not match its name")
        return Verdict.reject(
            Reason.BLOB_HASH_MISMATCH,
            f"claimed {claim.blob} ({claim.blob_size} bytes), got {digest} ({size} bytes)",
        )
    try:
        found = check_safetensors_layout(source, max_bytes=limit)
    except ContractError as exc:
        return Verdict.reject(exc.reason, _message(exc))
    verdict = check_layout(layout, found)
    if verdict is not None:
        return verdict
    try:
        tensors = TensorFile(source, max_bytes=limit)
        if tensors.layout != found:
            raise ContractError("malformed_blob", "the header changed while it was read")
        non_finite, norm = finite_l2_norm(tensors)
    except ContractError as exc:
        return Verdict.reject(exc.reason, _message(exc))
    if non_finite is not None:
        return Verdict.reject(Reason.NON_FINITE, f"tensor {non_finite!r} has NaN or inf")
    if not norm <= rules.max_update_norm:
        return Verdict.reject(
            Reason.NORM_EXCEEDED, f"L2 norm {norm!r} exceeds {rules.max_update_norm!r}"
        )
    return Verdict.ok(f"L2 norm {norm!r}")


def _check_summary(rules: ContractRules, layout: Layout, summary: UpdateSummary) -> Verdict:
    """``_check_source``'s steps on a summary of content named ``claim.blob`` of
    ``claim.blob_size`` bytes (so the hash and the size match): the limit, the layout, then
    the norm. A summary exists only for a valid, all-float32, finite blob of more than
    ``SMALL_SUM`` values, where ``finite_l2_norm`` takes the same integer path."""
    if summary.size > rules.max_blob_bytes:
        return Verdict.reject(
            Reason.BLOB_TOO_LARGE, f"{summary.size} bytes, limit {rules.max_blob_bytes}"
        )
    verdict = check_layout(layout, summary.layout)
    if verdict is not None:
        return verdict
    norm = summary.norm
    if not norm <= rules.max_update_norm:
        return Verdict.reject(
            Reason.NORM_EXCEEDED, f"L2 norm {norm!r} exceeds {rules.max_update_norm!r}"
        )
    return Verdict.ok(f"L2 norm {norm!r}")


def finite_l2_norm(
    tensors: TensorFile, *, piece_elements: int = PIECE_ELEMENTS
) -> tuple[str | None, float]:
    """The first tensor (by name) holding NaN or inf, else the exact L2 norm of all of them.

    One pass, a piece at a time, and the pieces bound the memory (a few times a piece, not the
    update). An all-float32 update (the default ``update_dtype``) sums its squares exactly
    with ``numerics.float32_squares_units``: the same total, the same bits, ~0.3x the CPU of
    the general path, which a node catching up spends on every update it re-checks (up to
    ``SMALL_SUM`` values the general path costs less). Other dtypes go to an ``ExactSum``,
    whose result does not depend on how the values are grouped either: bit for bit
    ``l2_norm`` of the whole state.
    """
    layout = tensors.layout.values()
    elements = sum(math.prod(shape) for _, shape in layout)
    if elements > SMALL_SUM and all(dtype == "F32" for dtype, _ in layout):
        units = 0
        for name in tensors.names:
            for piece in tensors.pieces(name, piece_elements):
                values = piece.reshape(-1).numpy()
                if not np.isfinite(values).all():
                    return name, math.nan
                units += float32_squares_units(values)
        return None, math.sqrt(from_units(units))
    total = ExactSum()
    overflowed = False
    for name in tensors.names:
        for values in tensors.float64_pieces(name, piece_elements):
            if not np.isfinite(values).all():
                return name, math.nan
            with np.errstate(over="ignore"):
                squares = values * values
            huge = np.isinf(squares)  # a float64 value past 2^512 squares to inf
            if huge.any():
                overflowed = True
                squares = squares[~huge]
            total.add(squares)
    # As ``l2_norm`` (``math.fsum``) has it: OverflowError when the finite squares alone pass
    # the largest double, else inf when one square did; unreachable with float32 layouts.
    finite = total.value()
    return None, math.inf if overflowed else math.sqrt(finite)


def _message(exc: ContractError) -> str:
    return exc.message.removeprefix(f"{exc.reason}: ")


def check_layout(layout: Layout, found: Mapping[str, tuple[str, list[int]]]) -> Verdict | None:
    """Names, then dtypes, then shapes, against the genesis model; None when they match."""
    if set(found) != set(layout):
        missing = sorted(set(layout) - set(found))
        extra = sorted(set(found) - set(layout))
        return Verdict.reject(
            Reason.WRONG_TENSOR_NAMES, f"missing {missing[:8]}, unexpected {extra[:8]}"
        )
    for name in sorted(layout):
        if found[name][0] != layout[name][0]:
            return Verdict.reject(
                Reason.WRONG_DTYPE,
                f"tensor {name!r} is {found[name][0]}, expected {layout[name][0]}",
            )
    for name in sorted(layout):
        if tuple(found[name][1]) != tuple(layout[name][1]):
            return Verdict.reject(
                Reason.WRONG_SHAPE,
                f"tensor {name!r} has shape {found[name][1]}, expected {list(layout[name][1])}",
            )
    return None


# --- the whole contract ------------------------------------------------------------------
_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}
#: ``contract.update_dtype`` -> the safetensors dtype every tensor of an update must have.
UPDATE_DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def layout_of(
    state: Mapping[str, torch.Tensor], update_dtype: str = "float32"
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The layout an update of ``state``'s model must have (a delta mirrors the weights; its
    float32 tensors travel in the genesis' ``update_dtype``)."""
    return with_update_dtype(
        {k: (_DTYPE_NAMES[v.dtype], tuple(v.shape)) for k, v in state.items()}, update_dtype
    )


def with_update_dtype(layout: Layout, update_dtype: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``layout`` with its F32 tensors in ``update_dtype`` (PROTOCOL.md §7.1)."""
    code = UPDATE_DTYPE_CODES[update_dtype]
    return {k: (code if dtype == "F32" else dtype, shape) for k, (dtype, shape) in layout.items()}


@functools.lru_cache(maxsize=8)
def _layout_for(spec_json: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    from bcfl_cli.fl.models import initial_shapes

    shapes = initial_shapes(ModelSpec.model_validate_json(spec_json))
    return {name: ("F32", shape) for name, shape in shapes.items()}


def layout_for(spec: ModelSpec, update_dtype: str = "float32") -> Layout:
    """Expected update layout: the genesis model's initial state (names, shapes), its tensors
    in the genesis' ``update_dtype`` (F32, BF16 or F16)."""
    return with_update_dtype(_layout_for(spec.model_dump_json()), update_dtype)


def check_update(
    rules: ContractRules,
    model: ModelSpec | Layout,
    claim: UpdateClaim,
    ctx: RoundContext,
    blob: bytes | Path | None,
    *,
    named_by_hash: bool = False,
    summary: UpdateSummary | None = None,
) -> Verdict:
    """The contract's verdict on one update: every check, in the documented order
    (``summary``: see ``check_blob``)."""
    verdict = check_context(rules, claim, ctx)
    if verdict is not None:
        return verdict
    if isinstance(model, ModelSpec):
        layout = layout_for(model, rules.update_dtype)
    else:
        layout = with_update_dtype(model, rules.update_dtype)
    try:
        return check_blob(rules, layout, claim, blob, named_by_hash=named_by_hash, summary=summary)
    except (BcflError, MemoryError):
        raise
    except Exception as exc:  # whatever a peer sends ends in a verdict
        return Verdict.reject(
            Reason.MALFORMED_BLOB, f"checking the blob failed: {type(exc).__name__}: {exc}"
        )
