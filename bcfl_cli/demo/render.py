"""How ``bcfl demo`` looks in a terminal: a live table while it runs, a summary at the end.

All of the demo's rich output lives here. On a terminal the progress is a ``rich.live`` view
redrawn from the ``DemoRun`` on every poll; elsewhere (CI logs, a pipe) one line per event.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bcfl_cli.demo.plot import text_plot
from bcfl_cli.demo.run import DemoRun

STATUS_STYLE = {"submitted": "yellow", "accepted": "green", "rejected": "red"}


def _member_table(run: DemoRun) -> Table:
    progress = run.progress
    current = progress.current_round if progress else None
    title = f"round {current.number}" if current else "waiting for round 1"
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("member", "node", "height", "this round", "accepted", "rejected"):
        table.add_column(column, justify="left" if column in ("member", "this round") else "right")
    for name in run.names:
        did = run.dids.get(name, "")
        height = run.heights.get(name, -1)
        node = "[green]up[/]" if height >= 0 else "[dim]starting[/]"
        label = name + (f" [red]({run.attackers[name]})[/]" if name in run.attackers else "")
        now = "-"
        counts = {"accepted": 0, "rejected": 0}
        if progress is not None and current is not None:
            record = progress.in_round(did, current.number)
            if record is not None:
                style = STATUS_STYLE[record.status]
                now = f"[{style}]{record.status}[/]"
                if record.status == "rejected":
                    now += f" [dim]{escape(record.reason)}[/]"
            counts = progress.member_counts(did)
        table.add_row(
            label,
            node,
            str(height) if height >= 0 else "-",
            now,
            str(counts["accepted"]),
            str(counts["rejected"]) if counts["rejected"] else "-",
        )
    return table


def live_view(run: DemoRun) -> RenderableType:
    progress = run.progress
    head = Text.from_markup(
        f"[bold]bcfl demo[/]  {run.options.members} nodes, {run.options.dataset}, "
        f"rule [cyan]{run.options.rule}[/]  ·  {run.phase}  ·  {run.elapsed:5.1f} s"
    )
    lines: list[RenderableType] = [head, _member_table(run)]
    curve = run.curve()
    if curve:
        accs = "  ".join(f"r{n}: {a:.3f}" for n, a in curve[-8:])
        lines.append(Text.from_markup(f"[bold]test accuracy[/]  {accs}"))
    if progress is not None and progress.misbehaviour:
        lines.append(Text(f"misbehaviour recorded on chain: {len(progress.misbehaviour)}"))
    return Group(*lines)


class LineReporter:
    """One line per closed round or phase change, for a non-terminal output."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase = ""
        self.rounds = 0

    def __call__(self, run: DemoRun) -> None:
        if run.phase != self.phase:
            self.phase = run.phase
            self.console.print(
                f"[{run.elapsed:6.1f} s] {run.phase}", highlight=False, soft_wrap=True
            )
        progress = run.progress
        if progress is None:
            return
        for rnd in progress.closed_rounds[self.rounds :]:
            if rnd.accuracy is None:
                break
            self.rounds += 1
            statuses = []
            for name in run.names:
                record = progress.in_round(run.dids.get(name, ""), rnd.number)
                mark = record.status if record else "missing"
                if record is not None and record.status == "rejected":
                    mark += f" ({record.reason})"
                statuses.append(f"{name}: {mark}")
            self.console.print(
                f"[{run.elapsed:6.1f} s] round {rnd.number} closed at height "
                f"{rnd.closed_height}: accuracy {rnd.accuracy:.3f}; " + ", ".join(statuses),
                highlight=False,
                soft_wrap=True,  # one line per round in a log, however wide
            )


@contextmanager
def progress_display(console: Console) -> Iterator[Any]:
    """A listener for ``run_demo``: a live view on a terminal, else lines."""
    if not console.is_terminal:
        yield LineReporter(console)
        return
    view = _LiveView()
    with Live(view, console=console, refresh_per_second=4, transient=True) as live:

        def update(run: DemoRun) -> None:
            view.run = run
            live.refresh()

        yield update


class _LiveView:
    """Rendered anew on each of Live's refreshes, so the clock keeps moving while the demo
    blocks (starting nodes took 21 s of a 29 s run with the view frozen at 0.5 s)."""

    def __init__(self) -> None:
        self.run: DemoRun | None = None

    def __rich__(self) -> RenderableType:
        return Text("bcfl demo: setting up") if self.run is None else live_view(self.run)


def summary(console: Console, run: DemoRun) -> None:
    """The end of the demo: per-member table, accuracy curve, verification, where things are."""
    progress = run.progress
    table = Table(title="members", title_justify="left")
    for column in ("member", "attack", "submitted", "accepted", "rejected (reason)"):
        table.add_column(column, justify="left" if column in ("member", "attack") else "right")
    for name in run.names:
        did = run.dids.get(name, "")
        counts = progress.member_counts(did) if progress else {}
        reasons = progress.rejections(did) if progress else {}
        rejected = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "-"
        table.add_row(
            name,
            run.attackers.get(name, "-"),
            str(counts.get("submitted", 0)),
            str(counts.get("accepted", 0)),
            rejected,
        )
    console.print(table)

    curve = run.curve()
    if curve:
        console.print("[bold]test accuracy per round[/] (held-out test set, aggregate on chain)")
        for row in text_plot(curve):
            console.print(row, highlight=False)
    if run.final_accuracy is not None:
        console.print(
            f"final accuracy after round {curve[-1][0]}: [bold]{run.final_accuracy:.3f}[/]"
            + (f" (initial model {run.initial_accuracy:.3f})" if run.initial_accuracy else "")
        )

    nodes = Table(title="verify-chain --deep on every home", title_justify="left")
    for column in ("node", "height", "head", "verify-chain --deep"):
        nodes.add_column(column)
    for node in run.nodes:
        verdict = "[green]ok[/]" if node.verified else "[red]FAILED[/]"
        fault = node.verify.get("fault") or node.verify.get("error")
        if fault:
            verdict += f" {escape(str(fault))}"
        nodes.add_row(node.name, str(node.height), node.head[:16], verdict)
    if run.nodes:
        console.print(nodes)
        same = (
            f"[green]all {len(run.nodes)} nodes hold the same block at height "
            f"{run.common_height}[/]"
            if run.consistent
            else "[red]the nodes' chains differ[/]"
        )
        console.print(same)
    if progress is not None and progress.misbehaviour:
        console.print(f"misbehaviour evidence on chain: {len(progress.misbehaviour)}")
    t = run.timings
    console.print(
        f"wall time {t.get('total_s', run.elapsed):.1f} s (setup {t.get('setup_s', 0):.1f} s, "
        f"nodes up {t.get('startup_s', 0):.1f} s, training {t.get('training_s', 0):.1f} s, "
        f"verify {t.get('verify_s', 0):.1f} s)",
        highlight=False,
    )
    if run.png is not None:
        console.print(f"accuracy plot: {run.png}", highlight=False)
    elif run.png_note:
        console.print(f"[dim]no PNG chart: {escape(run.png_note)}[/]", highlight=False)
    first = run.names[0]
    console.print(
        f"homes kept in {run.root / 'homes'}; e.g. "
        f"bcfl log --home {run.root / 'homes' / first}",
        highlight=False,
        soft_wrap=True,
    )
