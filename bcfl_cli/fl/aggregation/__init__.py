"""Deterministic aggregation rules, one module each, behind one ``aggregate`` entry point.

``aggregate(spec, global_state, updates)`` returns the next global model, the hashes of the
updates it includes and the rule's parameters for the ``aggregate`` transaction; its
``model_hash`` (= ``aggregate_hash(new_state)``) is the blob hash that transaction records.
``aggregate_to(out, ...)`` streams the same bytes into a file, tensor by tensor, for models too
large to hold (see ``stream``). Importing this package registers every rule shipped with bcfl.
"""

from __future__ import annotations

from bcfl_cli.fl.aggregation import (
    clipped,
    cosine,
    cosine_trajectory,
    fedavg,
    krum,
    median,
    trimmed,
)
from bcfl_cli.fl.aggregation.base import (
    RULES,
    AggregateResult,
    Params,
    Rule,
    StreamedAggregate,
    UpdateInput,
    aggregate,
    aggregate_hash,
    aggregate_to,
    register,
    rule_needs_initial_model,
)

__all__ = [
    "RULES",
    "AggregateResult",
    "Params",
    "Rule",
    "StreamedAggregate",
    "UpdateInput",
    "aggregate",
    "aggregate_hash",
    "aggregate_to",
    "clipped",
    "cosine",
    "cosine_trajectory",
    "fedavg",
    "krum",
    "median",
    "register",
    "rule_needs_initial_model",
    "trimmed",
]
