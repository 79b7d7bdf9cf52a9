"""The model card: a verified proof's history, as JSON and as Markdown (PROTOCOL.md §9.3).

Built only from a :class:`ModelHistory` that ``verify_model`` returned, so every line of the
card is backed by the certified chain; nothing is taken from the exporter's word.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from bcfl_cli.provenance.verify import ModelHistory, RoundRecord

#: Metric names a trainer's update reports (fl/training.py, training/local_round.py).
_ACCURACY = "eval_accuracy"
_EPSILON = "dp_epsilon"
_EPSILON_TOTAL = "dp_epsilon_total"


def card_json(history: ModelHistory) -> dict[str, Any]:
    """The card as one JSON document (decimal metrics stay strings, as signed)."""
    return {
        "consortium": history.consortium,
        "chain": history.chain,
        "round": history.round,
        "model": history.model,
        "model_size": history.model_size,
        "height": history.height,
        "rule": history.rule,
        "params": history.params,
        "members": [{"did": did, **info} for did, info in sorted(history.members.items())],
        "rounds": [_round_json(r) for r in history.rounds],
        "dp_epsilon": _epsilons(history),
    }


def card_markdown(history: ModelHistory) -> str:
    """The card for people: what the model is, who trained it, what was refused and why."""
    lines = [
        f"# Model card: {history.consortium}, round {history.round}",
        "",
        f"- model (SHA-256): `{history.model}`"
        + (f", {history.model_size} bytes" if history.model_size is not None else ""),
        f"- consortium genesis: `{history.chain}`",
        f"- certified at block {history.height}",
        f"- aggregation rule: `{history.rule}` {_params_text(history.params)}",
        "",
        "Every fact below was checked offline against the pinned genesis " "(`bcfl model verify`).",
        "",
        "## Members",
        "",
        "| name | roles | power | status | since block |",
        "|---|---|---|---|---|",
    ]
    for info in sorted(history.members.values(), key=lambda m: str(m["name"])):
        roles = ", ".join(info["roles"])
        lines.append(
            f"| {_cell(info['name'])} | {roles} | {info['power']} | {info['status']} "
            f"| {info['since']} |"
        )
    lines += ["", "## Rounds", ""]
    if not history.rounds:
        lines.append("The initial model of the genesis: no round has trained it.")
    else:
        lines += [
            "| round | blocks | updates accepted | rejected | mean eval accuracy | model |",
            "|---|---|---|---|---|---|",
        ]
        for r in history.rounds:
            accepted = sum(u.verdict == "accept" for u in r.updates)
            accuracy = _mean_accuracy(r)
            lines.append(
                f"| {r.number} | {r.opened_at}-{r.closed_at} | {accepted} "
                f"| {len(r.updates) - accepted} | {accuracy or '-'} | `{r.model[:16]}` |"
            )
    rejected = [(r.number, u) for r in history.rounds for u in r.updates if u.verdict != "accept"]
    lines += ["", "## Rejected updates", ""]
    if not rejected:
        lines.append("None.")
    else:
        lines += ["| round | member | reason | update |", "|---|---|---|---|"]
        for number, u in rejected:
            lines.append(f"| {number} | {_cell(u.name)} | {_cell(u.reason)} | `{u.tx[:16]}` |")
    epsilons = _epsilons(history)
    lines += ["", "## Differential privacy", ""]
    if not epsilons:
        lines.append("No contributing update reports a DP epsilon (trained without DP-SGD).")
    else:
        lines += ["| member | epsilon (latest round, cumulative where reported) |", "|---|---|"]
        for name, eps in sorted(epsilons.items()):
            lines.append(f"| {_cell(name)} | {eps} |")
    return "\n".join(lines) + "\n"


def _round_json(r: RoundRecord) -> dict[str, Any]:
    return {
        "round": r.number,
        "opened_at": r.opened_at,
        "closed_at": r.closed_at,
        "base_model": r.base_model,
        "model": r.model,
        "rule": r.rule,
        "params": r.params,
        "aggregated": list(r.aggregated),
        "mean_eval_accuracy": _mean_accuracy(r),
        "updates": [
            {
                "tx": u.tx,
                "member": u.name,
                "did": u.author,
                "verdict": u.verdict,
                "reason": u.reason,
                "num_samples": u.num_samples,
                "metrics": u.metrics,
            }
            for u in r.updates
        ],
    }


def _mean_accuracy(r: RoundRecord) -> str | None:
    """Mean of the accepted updates' held-out accuracy, where they report one."""
    return mean_decimal(u.metrics.get(_ACCURACY) for u in r.updates if u.verdict == "accept")


def mean_decimal(texts: Iterable[str | None]) -> str | None:
    """The mean of the finite decimal strings among ``texts`` to four places (None when there
    are none): the card's and the explorer's accuracy column, computed once for both."""
    values = [v for text in texts if (v := _decimal(text)) is not None]
    if not values:
        return None
    return f"{sum(values) / len(values):.4f}"


def _epsilons(history: ModelHistory) -> dict[str, str]:
    """Per member, the epsilon its latest accepted update reports (cumulative if stated)."""
    found: dict[str, str] = {}
    for r in history.rounds:
        for u in r.updates:
            if u.verdict != "accept":
                continue
            eps = u.metrics.get(_EPSILON_TOTAL) or u.metrics.get(_EPSILON)
            if eps is not None:
                found[u.name] = eps
    return found


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _params_text(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} = {v}" for k, v in sorted(params.items())) + ")" if params else ""


def _cell(text: object) -> str:
    """A table cell: signed names are printable (one line) but may hold Markdown or HTML, which
    a renderer would act on; they are shown as text."""
    out = str(text)
    for raw, safe in _ESCAPES:
        out = out.replace(raw, safe)
    return out


#: ``&`` first, so the entities written after it are not escaped again.
_ESCAPES = (
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("|", "\\|"),
    ("`", "'"),
    ("[", "\\["),
    ("]", "\\]"),
    ("*", "\\*"),
)
