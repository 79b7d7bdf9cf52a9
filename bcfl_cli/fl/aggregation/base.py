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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeGuard, cast

import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.aggregation.stream import Member, Plan, RoundTensors, one_thread, shape_now
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.fl.tensorwriter import SafetensorsWriter, TensorSpec, data_order
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
    """An aggregation rule, registered under ``name``: a ``StreamingRule`` (every shipped
    rule) or a ``WholeStateRule`` (all updates in memory at once; still accepted, for a rule
    that cannot stream).

    It reads its parameters from the ``AggregationSpec``; the aggregate transaction records
    the whole signed aggregation section (see ``tx_params``), whichever fields a rule reads.
    """

    name: str


class StreamingRule(Rule, Protocol):
    """A rule that reads the round tensor by tensor (``stream.RoundTensors``, updates in hash
    order) and returns a ``Plan``: what it includes and each slice's float64 delta."""

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan: ...


class WholeStateRule(Rule, Protocol):
    """A rule that gets every update whole, already sorted by hash and float64."""

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined: ...


@dataclass(frozen=True)
class Prepared:
    """An update as a whole-state rule sees it: float64 tensors (zeros normalised)."""

    hash: str
    delta: dict[str, torch.Tensor]
    num_samples: int


class TrajectoryRule(WholeStateRule, Protocol):
    """A whole-state rule that also reads how far the global model has moved since genesis.

    ``trajectory`` is the global model minus the genesis ``initial_model`` (float64, exact for
    float32 models), or ``None`` when the caller gave no initial model: the rule must then
    behave as in a chain's first round (the global model still at genesis). A streaming rule
    reads the same from ``RoundTensors.trajectory``; both declare ``needs_initial_model``.
    """

    needs_initial_model: bool

    def combine_along(
        self,
        spec: AggregationSpec,
        updates: Sequence[Prepared],
        trajectory: dict[str, torch.Tensor] | None,
    ) -> Combined: ...


RULES: dict[str, Rule] = {}


def reads_trajectory(rule: Rule) -> bool:
    """Whether ``rule`` reads the global model's movement since genesis."""
    return bool(getattr(rule, "needs_initial_model", False))


def streams(rule: Rule) -> TypeGuard[StreamingRule]:
    """Whether ``rule`` reads the round tensor by tensor (else it gets whole updates)."""
    return callable(getattr(rule, "plan", None))


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
#: Receives the new model slice by slice (float32), in the order of the safetensors data.
Sink = Callable[[str, torch.Tensor], None]


@dataclass(frozen=True)
class AggregateJob:
    """A checked round, ready to stream: the rule, the inputs and the output's layout."""

    rule: Rule
    spec: AggregationSpec
    tensors: RoundTensors

    @property
    def layout(self) -> dict[str, TensorSpec]:
        """The new model's tensors: the base model's names and shapes, all float32."""
        return {
            name: TensorSpec(torch.float32, self.tensors.shape(name)) for name in self.tensors.names
        }

    def run(self, sink: Sink) -> tuple[list[str], str, Params]:
        """Stream the new model into ``sink``; (included hashes, rule name, params)."""
        tensors = self.tensors
        with one_thread():
            plan = self._plan()
            tensors.release()
            for name in data_order(self.layout):
                for part in tensors.parts(name):
                    new = tensors.base(name, part) + plan.delta(name, part)
                    sink(name, new.to(torch.float32))
            tensors.release()
        return list(plan.included), self.rule.name, tx_params(self.spec)

    def _plan(self) -> Plan:
        rule, tensors = self.rule, self.tensors
        if streams(rule):
            return rule.plan(self.spec, tensors)
        # A whole-state rule: every update widened at once, as before streaming.
        names = tensors.names
        prepared = []
        for index, member in enumerate(tensors.members):
            delta = {
                k: _whole(tensors, k, tensors.rows(k, tensors.whole(k), [index])[0]) for k in names
            }
            prepared.append(Prepared(member.hash, delta, member.num_samples))
        if reads_trajectory(rule):
            trajectory = None
            if tensors.has_initial:
                trajectory = {
                    k: _whole(tensors, k, tensors.trajectory(k, tensors.whole(k))) for k in names
                }
            combined = cast(TrajectoryRule, rule).combine_along(self.spec, prepared, trajectory)
        else:
            combined = cast(WholeStateRule, rule).combine(self.spec, prepared)
        flat = {k: v.reshape(-1) for k, v in combined.delta.items()}
        return Plan(list(combined.included), lambda name, part: flat[name][part])


def _whole(tensors: RoundTensors, name: str, flat: torch.Tensor | None) -> torch.Tensor:
    assert flat is not None
    return flat.reshape(tensors.shape(name))


def prepare(
    spec: AggregationSpec,
    global_state: State,
    updates: Sequence[UpdateLike],
    *,
    rules: Mapping[str, Rule] | None = None,
    initial_state: State | None = None,
) -> AggregateJob:
    """Check the round's inputs (names, sample counts, duplicates; shapes where known without
    reading, otherwise as each tensor is read) and set up the streaming job."""
    registry = RULES if rules is None else rules
    rule = registry.get(spec.rule)
    if rule is None:
        raise ContractError("unknown_rule", f"no aggregation rule named {spec.rule!r}")
    items = [u if isinstance(u, UpdateInput) else UpdateInput(*u) for u in updates]
    if not items:
        raise ContractError("no_updates", "an aggregate needs at least one accepted update")
    hashes = [u.hash for u in items]
    if len(set(hashes)) != len(hashes):
        raise ContractError("duplicate_update", "the same update appears twice in an aggregate")
    names = set(global_state)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in sorted(names):
        shape = shape_now(global_state, name)
        shapes[name] = tuple(global_state[name].shape) if shape is None else shape
    ordered = sorted(items, key=lambda x: x.hash)
    for u in ordered:
        known = set(u.delta) == names and all(
            shape_now(u.delta, k) in (None, shapes[k]) for k in sorted(names)
        )
        if not known:
            raise ContractError(
                "wrong_shape", f"update {u.hash} does not match the global model's tensors"
            )
        if u.num_samples < 1:
            raise ContractError("samples_out_of_bounds", f"update {u.hash} has no samples")
    initial = initial_state if reads_trajectory(rule) else None
    if initial is not None and (
        set(initial) != names
        or any(shape_now(initial, k) not in (None, shapes[k]) for k in sorted(names))
    ):
        raise ContractError("wrong_shape", "the initial model does not match the global model")
    members = [Member(u.hash, u.num_samples) for u in ordered]
    deltas = [u.delta for u in ordered]
    return AggregateJob(rule, spec, RoundTensors(global_state, members, deltas, initial, shapes))


def aggregate(
    spec: AggregationSpec,
    global_state: State,
    updates: Sequence[UpdateLike],
    *,
    rules: Mapping[str, Rule] | None = None,
    initial_state: State | None = None,
) -> AggregateResult:
    """The next global model under ``spec.rule``, in memory; the same bits whatever the order.

    ``initial_state`` (the genesis model) is read only by a rule that needs it (see
    ``TrajectoryRule``); callers on a chain pass it whenever ``rule_needs_initial_model``.
    For a model too large to hold, ``aggregate_to`` streams the same bytes into a file.
    """
    job = prepare(spec, global_state, updates, rules=rules, initial_state=initial_state)
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in job.tensors.names}
    included, rule, params = job.run(lambda name, piece: pieces[name].append(piece))
    new_state = {}
    for name in job.tensors.names:
        shape = job.tensors.shape(name)
        joined = torch.cat(pieces[name]) if pieces[name] else torch.zeros(0, dtype=torch.float32)
        new_state[name] = joined.reshape(shape).contiguous()
    return AggregateResult(new_state, included, rule, params)


@dataclass(frozen=True)
class StreamedAggregate:
    """An aggregate written to a file: its blob hash and size, and what the transaction says."""

    model_hash: str
    model_size: int
    included: list[str]
    rule: str
    params: Params = field(default_factory=dict)
    #: XXH3-128 of the written bytes (the blob store's cheap re-check, store/content_record.py)
    content_sum: str = ""


def aggregate_to(
    out: BinaryIO,
    spec: AggregationSpec,
    global_state: State,
    updates: Sequence[UpdateLike],
    *,
    rules: Mapping[str, Rule] | None = None,
    initial_state: State | None = None,
) -> StreamedAggregate:
    """``aggregate``, written tensor by tensor into ``out`` as the model blob and hashed on
    the way: the bytes of ``aggregate(...).model_bytes``, never the whole model in memory."""
    job = prepare(spec, global_state, updates, rules=rules, initial_state=initial_state)
    writer = SafetensorsWriter(out, job.layout)
    included, rule, params = job.run(writer.write)
    digest, size = writer.finish()
    return StreamedAggregate(digest, size, included, rule, params, writer.content_sum)
