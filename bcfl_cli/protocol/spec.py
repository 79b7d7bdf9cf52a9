"""The FL parts of the genesis: model, training plan, contract rules, aggregation rule.

These are fixed by the genesis, so a peer only ever builds an architecture it shipped. In the
signed genesis document every float is a decimal string (no floats in signed objects); the
TOML file may use plain numbers.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from bcfl_cli.protocol.manifest import manifest_hash

#: The largest model or update blob a consortium accepts when its file states no
#: ``contract.max_blob_bytes`` (docs/OPERATIONS.md's limits table). 1 GiB: a float32 update of
#: a 110M-parameter model (BERT-base, ~440 MB) fits out of the box; blobs are streamed to disk and
#: never held whole (issue 19), and a node's disk quota follows the model on the chain, not this.
DEFAULT_MAX_BLOB_BYTES = 1024 * 1024 * 1024
#: The round deadline of a plan that names none (in blocks; the value every genesis held
#: before ``round_deadline_s`` existed).
DEFAULT_DEADLINE_BLOCKS = 20
#: Bounds of ``training.round_deadline_s``. At most one day, the largest step one block's time
#: may take past its parent's (PROTOCOL.md §6.2): the first block a proposer makes once the
#: deadline has passed, however long the chain sat idle, then always carries a time at or past
#: it, so the round can close in that block.
MIN_ROUND_DEADLINE_S = 10
MAX_ROUND_DEADLINE_S = 24 * 3600


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_document(self) -> dict[str, Any]:
        """JSON-ready dict with floats as their shortest round-trip decimal string."""
        document: dict[str, Any] = _floats_to_strings(self.model_dump(mode="python"))
        return document


def _floats_to_strings(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: _floats_to_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_floats_to_strings(v) for v in value]
    return value


class ModelSpec(_Spec):
    architecture: Literal["logreg", "mlp", "cnn"]
    input_shape: list[int] = Field(min_length=1, max_length=3)
    num_classes: int = Field(ge=2, le=10_000)
    hidden: list[int] = Field(default_factory=lambda: [64], max_length=8)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _shape_fits(self) -> ModelSpec:
        if any(d < 1 or d > 100_000 for d in self.input_shape + self.hidden):
            raise ValueError("input_shape and hidden sizes must be between 1 and 100000")
        if self.architecture == "cnn" and len(self.input_shape) != 3:
            raise ValueError("cnn needs input_shape = [channels, height, width]")
        return self


#: A model app's entry point, ``module:object`` (both may be dotted), as pinned by a genesis.
ENTRY_POINT_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z"
)
MAX_ENTRY_POINT_CHARS = 200
#: Files an app's source manifest may list (each is a line of the genesis document).
MAX_APP_FILES = 1_000
MAX_APP_PATH_CHARS = 256
_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")


def _no_floats(value: Any, where: str = "config") -> None:
    if isinstance(value, float):
        raise ValueError(f'{where}: {value!r} is a float; write it as a string ("{value!r}")')
    if isinstance(value, dict):
        for key, item in value.items():
            _no_floats(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_floats(item, f"{where}[{i}]")


class AppPin(_Spec):
    """What a genesis pins of a model app (PROTOCOL.md, "The model app pin").

    ``files`` maps each source file's path (relative to the folder holding the app's top-level
    package) to its SHA-256; ``manifest`` is the SHA-256 of the canonical manifest built from
    them, so the one hash a founder reads and the list a member diffs against always agree.
    """

    entry_point: str = Field(min_length=3, max_length=MAX_ENTRY_POINT_CHARS)
    manifest: str
    files: dict[str, str] = Field(min_length=1, max_length=MAX_APP_FILES)
    initial_model: str
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("entry_point")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not ENTRY_POINT_RE.match(value):
            raise ValueError("expected module:object (Python names, dots allowed)")
        return value

    @field_validator("manifest", "initial_model")
    @classmethod
    def _hash(cls, value: str) -> str:
        if not _HASH_RE.match(value):
            raise ValueError("expected a SHA-256 hex hash (64 lowercase hex digits)")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for path, digest in value.items():
            parts = path.split("/")
            if (
                not 1 <= len(path) <= MAX_APP_PATH_CHARS
                or not path.isprintable()
                or "\\" in path
                or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
            ):
                raise ValueError(f"{path!r} is not a relative path of the app's source")
            if not _HASH_RE.match(digest):
                raise ValueError(f"{path!r}: expected a SHA-256 hex hash")
        return dict(sorted(value.items(), key=lambda item: item[0].encode()))

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        _no_floats(value)
        return value

    @model_validator(mode="after")
    def _manifest_matches(self) -> AppPin:
        if manifest_hash(self.files) != self.manifest:
            raise ValueError("manifest is not the SHA-256 of the manifest of files")
        return self


class AppModelSpec(_Spec):
    """A ``[model]`` section that names a model app instead of a builtin architecture."""

    app: AppPin


def _model_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "app_model" if "app" in value else "builtin_model"
    return "app_model" if isinstance(value, AppModelSpec) else "builtin_model"


#: The genesis' ``[model]`` section: a builtin architecture (every genesis before model apps,
#: unchanged byte for byte) or a pinned model app.
ModelSection = Annotated[
    Annotated[ModelSpec, Tag("builtin_model")] | Annotated[AppModelSpec, Tag("app_model")],
    Discriminator(_model_kind),
]
MODEL_SECTION: TypeAdapter[ModelSpec | AppModelSpec] = TypeAdapter(ModelSection)
#: Tags in a validation error's location, left out when the error names the key.
MODEL_SECTION_TAGS = frozenset({"builtin_model", "app_model"})


class DPSpec(_Spec):
    enabled: bool = False
    noise_multiplier: float = Field(default=1.0, ge=0.0, le=100.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)


#: Keys of the training plan that a genesis document holds only when the plan sets them, so
#: every genesis written before they existed keeps its bytes and its hash.
OPTIONAL_PLAN_KEYS = (
    "deadline_blocks",
    "round_deadline_s",
    "weight_decay",
    "lr_schedule",
    "lr_step_size",
    "lr_gamma",
    "local_steps",
    "grad_clip_norm",
    "precision",
)


class TrainingPlan(_Spec):
    """How every member trains a round (the default loop, ``fl/training.py``).

    Options added after the first release (``OPTIONAL_PLAN_KEYS``) are absent unless set, and
    absent means the loop of that release: no weight decay (AdamW: torch's 0.01), a constant
    learning rate, ``local_epochs`` passes, no gradient clipping, float32.
    """

    rounds: int = Field(default=10, ge=1, le=100_000)
    #: sgd (with ``momentum``), adam, or adamw (decoupled weight decay)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0, le=10.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    local_epochs: int = Field(default=1, ge=1, le=1_000)
    fedprox_mu: float = Field(default=0.0, ge=0.0, le=100.0)
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    label_column: str = Field(default="label", min_length=1, max_length=64)
    #: a round closes once this many updates are accepted ...
    min_updates: int = Field(default=2, ge=1, le=10_000)
    #: ... or once every trainer has sent its update (accepted or not), or at its deadline:
    #: this many blocks after it opened, and/or this many seconds of block time after it
    #: opened, whichever comes first (PROTOCOL.md §6.3). A plan that names neither gets
    #: ``deadline_blocks = DEFAULT_DEADLINE_BLOCKS`` (what every genesis before
    #: ``round_deadline_s`` held). A deadline in blocks needs heights to grow while nobody
    #: sends anything (a node's heartbeat, ``bcfl node --heartbeat-interval``); a deadline in
    #: seconds does not: the proposer wakes up for it.
    deadline_blocks: int | None = Field(default=None, ge=1, le=1_000_000)
    round_deadline_s: int | None = Field(
        default=None, ge=MIN_ROUND_DEADLINE_S, le=MAX_ROUND_DEADLINE_S
    )
    dp: DPSpec = Field(default_factory=DPSpec)
    #: L2 penalty (sgd, adam) or decoupled decay (adamw)
    weight_decay: float | None = Field(default=None, ge=0.0, le=10.0)
    #: how the learning rate moves over a member's steps in one round: constant; cosine (from
    #: ``lr`` down to 0 at the round's last step); step (times ``lr_gamma`` every
    #: ``lr_step_size`` steps)
    lr_schedule: Literal["constant", "cosine", "step"] | None = None
    lr_step_size: int | None = Field(default=None, ge=1, le=10_000_000)
    lr_gamma: float | None = Field(default=None, gt=0.0, le=1.0)
    #: optimiser steps per round; set, it replaces ``local_epochs`` (a member with little data
    #: cycles through it; one with much sees part of it), so every member's update weighs the
    #: same number of steps
    local_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    #: clip the gradient of each step to this L2 norm (after DP-SGD's noise, when DP is on)
    grad_clip_norm: float | None = Field(default=None, gt=0.0, le=1e6)
    #: mixed precision of the forward pass: bf16 autocast on CPU; fp16 (with loss scaling) or
    #: bf16 on CUDA (fp16 asked on a CPU trains with bf16); the weights, the optimiser and the
    #: update stay float32. DP-SGD steps always run in float32.
    precision: Literal["fp32", "bf16", "fp16"] | None = None

    @model_validator(mode="after")
    def _schedule_keys(self) -> TrainingPlan:
        stepped = self.lr_schedule == "step"
        if stepped and self.lr_step_size is None:
            raise ValueError("lr_schedule = 'step' needs lr_step_size (steps between decays)")
        for key in ("lr_step_size", "lr_gamma"):
            if getattr(self, key) is not None and not stepped:
                raise ValueError(f"{key} is only used with lr_schedule = 'step'")
        return self

    @model_validator(mode="before")
    @classmethod
    def _a_deadline(cls, data: Any) -> Any:
        """A plan naming no deadline keeps the block deadline every older genesis had."""
        if isinstance(data, dict) and (
            data.get("deadline_blocks") is None and data.get("round_deadline_s") is None
        ):
            data = {**data, "deadline_blocks": DEFAULT_DEADLINE_BLOCKS}
        return data

    def to_document(self) -> dict[str, Any]:
        """As ``_Spec.to_document``, leaving out the optional keys the plan does not set (older
        genesis documents, which all name ``deadline_blocks``, keep their bytes and hash)."""
        document = super().to_document()
        for key in OPTIONAL_PLAN_KEYS:
            if document.get(key) is None:
                document.pop(key, None)
        return document


#: The dtypes an update's deltas may travel in (``contract.update_dtype``, PROTOCOL.md "Update
#: dtype"); the model itself, and every aggregate, stay float32.
UpdateDtype = Literal["float32", "bfloat16", "float16"]
UPDATE_DTYPE_NAMES: tuple[str, ...] = get_args(UpdateDtype)
#: What a genesis that names no ``update_dtype`` means (every genesis before issue 19).
DEFAULT_UPDATE_DTYPE: UpdateDtype = "float32"


class ContractRules(_Spec):
    max_update_norm: float = Field(default=100.0, gt=0.0)
    min_samples: int = Field(default=1, ge=1)
    max_samples: int = Field(default=10_000_000, ge=1)
    max_blob_bytes: int = Field(default=DEFAULT_MAX_BLOB_BYTES, ge=1024, le=2**40)
    #: the dtype every update's tensors must have: float32, or half the bytes with bfloat16
    #: (float32's range, 8 bits of mantissa) or float16 (11 bits, at most 65504)
    update_dtype: UpdateDtype = DEFAULT_UPDATE_DTYPE

    def to_document(self) -> dict[str, Any]:
        """As ``_Spec.to_document``, leaving ``update_dtype`` out when it is float32: a
        genesis written before the key existed keeps its bytes and its hash."""
        document = super().to_document()
        if document.get("update_dtype") == DEFAULT_UPDATE_DTYPE:
            del document["update_dtype"]
        return document

    @model_validator(mode="after")
    def _ordered(self) -> ContractRules:
        if self.min_samples > self.max_samples:
            raise ValueError("min_samples must not exceed max_samples")
        return self


#: The aggregation rules a genesis may name (one module each under ``fl/aggregation/``).
RuleName = Literal["fedavg", "clipped", "median", "trimmed", "krum", "cosine", "cosine_trajectory"]
RULE_NAMES: tuple[str, ...] = get_args(RuleName)


class AggregationSpec(_Spec):
    rule: RuleName = "fedavg"
    clip_norm: float = Field(default=5.0, gt=0.0)
    trim_beta: float = Field(default=0.1, ge=0.0, lt=0.5)
    krum_f: int = Field(default=1, ge=0)
    krum_m: int = Field(default=1, ge=1)
