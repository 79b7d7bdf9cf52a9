"""What every aggregation rule shares: inputs, result, registry and exact arithmetic helpers.

Every peer recomputes each aggregate and compares hashes, so a rule must give the same bits on
any CPU, thread count or arrival order. The helpers here make that the default:

- updates are sorted by their hash before anything else happens;
- values are widened to float64 (exact) and combined update by update with separate
  element-wise multiplies and adds (IEEE, identical everywhere; no fused ``add_(alpha=)``, no
  library reduction over the update axis, whose order depends on threads and SIMD width);
- ``-0.0`` is normalised to ``+0.0`` on entry, so sorting (median, trimmed mean) can never
  pick a differently signed zero on two peers;
- the new global model is ``global + delta`` in float64, cast once to float32.

A rule is a small object registered under its name (one file per rule); the registry is what
``aggregate`` dispatches on, so adding a rule is adding one file (and its name to
``AggregationSpec.rule``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.spec import AggregationSpec

#: Values allowed in the ``params`` of an aggregate transaction (floats as decimal strings).
Params = dict[str, str | int]
State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class UpdateInput:
    """One accepted update: its transaction hash, its weight delta, its claimed sample count."""

    hash: str
    delta: State
    num_samples: int


@dataclass(frozen=True)
class Combined:
    """What a rule returns: the float64 delta to add to the global model, and what it used."""

    delta: dict[str, torch.Tensor]
    included: list[str]


@dataclass(frozen=True)
class AggregateResult:
    """The new global model (float32), the updates it includes (hash order) and the rule's
    parameters as recorded in the ``aggregate`` transaction."""

    new_state: dict[str, torch.Tensor]
    included: list[str]
    rule: str
    params: Params = field(default_factory=dict)

    @property
    def model_bytes(self) -> bytes:
        return encode_tensors(self.new_state)

    @property
    def model_hash(self) -> str:
        return aggregate_hash(self.new_state)


class Rule(Protocol):
    """An aggregation rule. ``combine`` gets updates already sorted by hash and float64.

    It reads its parameters from the ``AggregationSpec``; the aggregate transaction records
    the whole signed aggregation section (see ``tx_params``), whichever fields a rule reads.
    """

    name: str

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined: ...


@dataclass(frozen=True)
class Prepared:
    """An update as rules see it: float64 tensors (zeros normalised), sorted by hash."""

    hash: str
    delta: dict[str, torch.Tensor]
    num_samples: int


class TrajectoryRule(Rule, Protocol):
    """A rule that also reads how far the global model has moved since genesis.

    ``trajectory`` is the global model minus the genesis ``initial_model`` (float64, exact for
    float32 models), or ``None`` when the caller gave no initial model: the rule must then
    behave as in a chain's first round (the global model still at genesis).
    """

    needs_initial_model: bool

    def combine_along(
        self,
        spec: AggregationSpec,
        updates: Sequence[Prepared],
        trajectory: dict[str, torch.Tensor] | None,
    ) -> Combined: ...


RULES: dict[str, Rule] = {}


def reads_trajectory(rule: Rule) -> TypeGuard[TrajectoryRule]:
    """Whether ``rule`` reads the global model's movement since genesis."""
    return bool(getattr(rule, "needs_initial_model", False))


def rule_needs_initial_model(name: str) -> bool:
    """Whether the registered rule ``name`` must be given the genesis ``initial_model``."""
    rule = RULES.get(name)
    return rule is not None and reads_trajectory(rule)


def register(rule: Rule) -> Rule:
    """Add ``rule`` to the registry under ``rule.name`` (each rule module calls this once)."""
    if rule.name in RULES:
        raise ValueError(f"aggregation rule {rule.name!r} registered twice")
    RULES[rule.name] = rule
    return rule


def aggregate_hash(state: State) -> str:
    """SHA-256 of the canonical safetensors bytes: the blob hash an aggregate tx records."""
    return hashlib.sha256(encode_tensors(dict(state))).hexdigest()


def tx_params(spec: AggregationSpec) -> Params:
    """The ``params`` of an aggregate transaction: the genesis aggregation section less ``rule``.

    The chain rules require exactly this (``GenesisConfig.aggregation_params``), so a peer can
    see from the transaction alone which parameters produced the model.
    """
    document = spec.to_document()
    return {k: v for k, v in document.items() if k != "rule"}


def decimal(value: float) -> str:
    """A float parameter as the shortest round-trip decimal string (no floats on chain)."""
    return repr(float(value))


# --- exact helpers -------------------------------------------------------------------------
def to_float64(tensor: torch.Tensor) -> torch.Tensor:
    """Widen to float64 (exact) and turn -0.0 into +0.0 (x + 0.0 does, under IEEE)."""
    return tensor.detach().to("cpu", torch.float64) + 0.0


def weighted_mean(updates: Sequence[Prepared], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean: sum of n_i * d_i in hash order, divided once by sum n_i.

    ``n_i * d_i`` is exact for float32-valued deltas and n_i < 2**29; the sum is rounded, but
    always in the same order, so it is the same everywhere.
    """
    total = sum(u.num_samples for u in updates)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        acc = torch.zeros_like(updates[0].delta[name])
        for u in updates:
            term = u.delta[name] * float(u.num_samples)
            acc = acc + term
        out[name] = acc / float(total)
    return out


def ordered_sum(rows: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Sum of ``rows`` one after another (never a library reduction over the row axis)."""
    acc = torch.zeros_like(rows[0])
    for row in rows:
        acc = acc + row
    return acc


def sorted_stack(updates: Sequence[Prepared], name: str) -> torch.Tensor:
    """The updates' tensor ``name`` stacked on axis 0 and sorted along it (sorting is exact)."""
    stacked = torch.stack([u.delta[name] for u in updates], dim=0)
    return torch.sort(stacked, dim=0, stable=True).values


# --- the entry point -------------------------------------------------------------------------
#: An update as ``UpdateInput`` or as the plain tuple (hash, delta, num_samples).
UpdateLike = UpdateInput | tuple[str, State, int]


def _prepare(global_state: State, items: Sequence[UpdateLike]) -> list[Prepared]:
    updates = [u if isinstance(u, UpdateInput) else UpdateInput(*u) for u in items]
    if not updates:
        raise ContractError("no_updates", "an aggregate needs at least one accepted update")
    hashes = [u.hash for u in updates]
    if len(set(hashes)) != len(hashes):
        raise ContractError("duplicate_update", "the same update appears twice in an aggregate")
    expected = {k: tuple(v.shape) for k, v in global_state.items()}
    prepared = []
    for u in sorted(updates, key=lambda x: x.hash):
        found = {k: tuple(v.shape) for k, v in u.delta.items()}
        if found != expected:
            raise ContractError(
                "wrong_shape", f"update {u.hash} does not match the global model's tensors"
            )
        if u.num_samples < 1:
            raise ContractError("samples_out_of_bounds", f"update {u.hash} has no samples")
        delta = {k: to_float64(u.delta[k]) for k in sorted(u.delta)}
        prepared.append(Prepared(u.hash, delta, u.num_samples))
    return prepared


def _trajectory(global_state: State, initial_state: State | None) -> dict[str, torch.Tensor] | None:
    if initial_state is None:
        return None
    expected = {k: tuple(v.shape) for k, v in global_state.items()}
    if {k: tuple(v.shape) for k, v in initial_state.items()} != expected:
        raise ContractError("wrong_shape", "the initial model does not match the global model")
    return {k: to_float64(global_state[k]) - to_float64(initial_state[k]) for k in sorted(expected)}


def aggregate(
    spec: AggregationSpec,
    global_state: State,
    updates: Sequence[UpdateLike],
    *,
    rules: Mapping[str, Rule] | None = None,
    initial_state: State | None = None,
) -> AggregateResult:
    """The next global model under ``spec.rule``; the same bits whatever the update order.

    ``initial_state`` (the genesis model) is read only by a rule that needs it (see
    ``TrajectoryRule``); callers on a chain pass it whenever ``rule_needs_initial_model``.
    """
    registry = RULES if rules is None else rules
    rule = registry.get(spec.rule)
    if rule is None:
        raise ContractError("unknown_rule", f"no aggregation rule named {spec.rule!r}")
    prepared = _prepare(global_state, updates)
    if reads_trajectory(rule):
        combined = rule.combine_along(spec, prepared, _trajectory(global_state, initial_state))
    else:
        combined = rule.combine(spec, prepared)
    new_state = {}
    for name in sorted(global_state):
        base = global_state[name].detach().to("cpu", torch.float64)
        new_state[name] = (base + combined.delta[name]).to(torch.float32).contiguous()
    return AggregateResult(new_state, list(combined.included), rule.name, tx_params(spec))
