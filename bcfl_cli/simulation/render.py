"""What `bcfl simulate` shows: a line per closed round while it runs, a table at the end."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from bcfl_cli.simulation.simulator import RoundRecord, SimResult


def round_line(console: Console) -> Callable[[RoundRecord], None]:
    """A listener printing each round as the first member commits its aggregate."""

    def show(record: RoundRecord) -> None:
        accuracy = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
        console.print(
            f"round {record.round:>4}  height {record.closed_height:>5}  "
            f"{record.accepted:>4} updates  accuracy {accuracy}  "
            f"{record.wall_s:.3f} s wall  {record.cpu_s:.3f} s cpu  "
            f"{record.logical_ms} ms logical  {record.bytes / 1e6:.1f} MB sent",
            highlight=False,
        )

    return show


def summary(console: Console, result: SimResult) -> None:
    data = result.to_dict()
    table = Table(title="bcfl simulate", show_header=False)
    rows = [
        ("members", data["members"]),
        ("rounds", f"{len(result.rounds)} of {data['rounds_planned']}"),
        ("seed", data["seed"]),
        ("head", data["head"] or "members disagree"),
        ("heights", ", ".join(sorted({str(h) for h, _ in result.heads.values()}))),
        ("set-up", f"{data['setup_s']} s"),
        ("run", f"{data['run_s']} s wall, {data['logical_ms']} ms logical"),
        (
            "round (median)",
            f"{data['round_wall_s_median']} s wall, {data['round_cpu_s_median']} s cpu",
        ),
        (
            "messages",
            f"{data['messages']} delivered, {data['dropped']} lost, {data['bytes']} bytes",
        ),
        ("evidence", data["evidence"]),
        ("peak memory", f"{data['peak_rss_mb']} MB"),
        ("homes", data["homes"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if result.ok:
        console.print(
            "check a member's store: bcfl verify-chain --deep --home "
            f"{result.root / 'member-000'}",
            highlight=False,
        )
