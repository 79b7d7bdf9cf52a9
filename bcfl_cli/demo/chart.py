"""The demo's picture: accuracy per round, and what happened to each member's update.

Drawn with matplotlib, the plotting library the field reads without a legend of our own; it is
an optional extra (``pip install 'bcfl[plot]'``), so a member's install does not carry it. Without
it the demo says how to get the PNG and keeps the terminal plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bcfl_cli.demo.run import DemoRun

#: cell colours of the member x round panel (colour-blind safe: Okabe-Ito)
CELL = {
    "included": "#009E73",  # accepted and used by the rule
    "left out": "#E69F00",  # accepted, but the robust rule gave it no weight
    "accepted": "#56B4E9",  # accepted (whether the rule used it was not computed)
    "rejected": "#D55E00",  # rejected by the validators (reason in the cell)
    "no update": "#DDDDDD",
}


def settings_line(run: DemoRun) -> str:
    o = run.options
    attackers = f", {o.attackers} attacker(s): {o.attack}" if o.attackers else ", no attacker"
    split = "IID" if o.non_iid == 0 else f"Dirichlet {o.non_iid:g}"
    seed = f", seed {o.seed}" if o.seed is not None else ", fresh seeds"
    return (
        f"{o.members} members{attackers} · {o.dataset}, {split} · rule {o.rule} · "
        f"{o.rounds} rounds{seed}"
    )


def cell_status(run: DemoRun, name: str, number: int) -> tuple[str, str]:
    """(legend key, short text) of one member's update in one round."""
    progress = run.progress
    record = None if progress is None else progress.in_round(run.dids.get(name, ""), number)
    if record is None or record.status == "submitted":
        return "no update", ""
    if record.status == "rejected":
        return "rejected", record.reason[:14]
    if record.included is None:
        return "accepted", ""
    return ("included", "") if record.included else ("left out", "")


def write_chart(run: DemoRun, path: Path) -> tuple[Path | None, str]:
    """Write the PNG; (None, why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        return None, "install the plot extra (pip install 'bcfl[plot]') for the PNG chart"

    curve = run.curve()
    progress = run.progress
    rounds = [r.number for r in progress.closed_rounds] if progress is not None else []
    names = list(run.names)
    fig, (top, grid) = plt.subplots(
        2,
        1,
        figsize=(max(7.0, 0.55 * len(rounds) + 3.0), 4.2 + 0.32 * len(names)),
        gridspec_kw={"height_ratios": [3, max(1.2, 0.32 * len(names))]},
        constrained_layout=True,
    )
    fig.suptitle(f"bcfl demo: test accuracy per round\n{settings_line(run)}", fontsize=10)
    xs = [x for x, _ in curve]
    ys = [y for _, y in curve]
    top.plot(xs, ys, marker="o", color="#0072B2", label="global model (held-out test set)")
    for x, y in curve:
        top.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                     fontsize=7)  # fmt: skip
    top.set_xlabel("round (0 = initial model)")
    top.set_ylabel("test accuracy")
    top.set_ylim(max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.06))
    top.set_xticks(xs)
    top.grid(True, alpha=0.3)
    top.legend(loc="lower right", fontsize=8)

    seen: set[str] = set()
    for row, name in enumerate(names):
        for col, number in enumerate(rounds):
            key, text = cell_status(run, name, number)
            seen.add(key)
            grid.add_patch(Rectangle((col, row), 0.95, 0.9, color=CELL[key], linewidth=0))
            if text:
                grid.text(col + 0.47, row + 0.45, text, ha="center", va="center", fontsize=5)
    grid.set_xlim(0, max(1, len(rounds)))
    grid.set_ylim(len(names), 0)
    grid.set_xticks([c + 0.47 for c in range(len(rounds))], [str(n) for n in rounds])
    labels = [n + (f" ({run.attackers[n]})" if n in run.attackers else "") for n in names]
    grid.set_yticks([r + 0.45 for r in range(len(names))], labels, fontsize=8)
    grid.set_xlabel("round: each member's update, and whether the rule used it")
    grid.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        grid.spines[side].set_visible(False)
    grid.legend(
        handles=[Patch(color=CELL[k], label=k) for k in CELL if k in seen],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if len(names) < 6 else -0.15),
        ncol=len(seen),
        fontsize=7,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, ""
