"""``bcfl simulate``: many members in one process, the nodes' rules over a seeded network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli.options import JsonOption, UpdateDtypeOption, examples


def simulate(
    members: Annotated[
        int, typer.Option("--members", min=1, max=1000, help="Members (all in this process).")
    ] = 4,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=10_000, help="Rounds.")] = 3,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seeds keys, data split, network and training.")
    ] = 0,
    rule: Annotated[
        str,
        typer.Option("--rule", help="Aggregation: fedavg, clipped, median, trimmed, krum, ..."),
    ] = "fedavg",
    non_iid: Annotated[
        float,
        typer.Option("--non-iid", min=0.0, help="Dirichlet alpha of the label split (0: IID)."),
    ] = 0.5,
    local_epochs: Annotated[
        int, typer.Option("--local-epochs", min=1, max=1000, help="Local epochs a round.")
    ] = 1,
    delay: Annotated[
        str,
        typer.Option(
            "--delay",
            metavar="LOW-HIGH",
            help="Message delay, LOW-HIGH logical ms (uniform, seeded).",
        ),
    ] = "5-20",
    drop: Annotated[
        float, typer.Option("--drop", min=0.0, max=0.99, help="Share of messages lost.")
    ] = 0.0,
    partition: Annotated[
        list[str] | None,
        typer.Option(
            "--partition", metavar="START-END:I,J", help="START_MS-END_MS:I,J,... (repeatable)."
        ),
    ] = None,
    crash: Annotated[
        list[str] | None,
        typer.Option(
            "--crash",
            metavar="MEMBER@AT[-BACK]",
            help="MEMBER@AT_MS or MEMBER@AT_MS-BACK_MS (repeatable).",
        ),
    ] = None,
    byzantine: Annotated[
        list[str] | None,
        typer.Option(
            "--byzantine",
            metavar="MEMBER:WHAT",
            help=(
                "MEMBER:BEHAVIOUR (repeatable): sign-flip, scaling, noise, free-rider "
                "(trainers), silent or equivocate (validators)."
            ),
        ),
    ] = None,
    share_checks: Annotated[
        bool,
        typer.Option(
            "--share-checks",
            help="Compute each contract verdict and aggregate once for all members.",
        ),
    ] = False,
    update_dtype: UpdateDtypeOption = "float32",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the member homes here (default: a temporary dir)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate a consortium in one process: same chain rules, consensus, signatures and
    checks as the nodes, over an in-memory seeded network; the same seed gives the same chain."""
    from rich.console import Console

    from bcfl_cli.cli import render
    from bcfl_cli.simulation.network import NetworkConfig
    from bcfl_cli.simulation.options import (
        SimOptions,
        parse_byzantine,
        parse_crash,
        parse_delay,
        parse_partition,
    )
    from bcfl_cli.simulation.render import round_line, summary
    from bcfl_cli.simulation.simulator import Simulation

    options = SimOptions(
        members=members,
        rounds=rounds,
        seed=seed,
        rule=rule,
        non_iid=non_iid,
        local_epochs=local_epochs,
        network=NetworkConfig(
            delay_ms=parse_delay(delay),
            drop=drop,
            partitions=tuple(parse_partition(p) for p in partition or []),
        ),
        crashes=tuple(parse_crash(c) for c in crash or []),
        byzantine=tuple(parse_byzantine(b) for b in byzantine or []),
        share_checks=share_checks,
        update_dtype=update_dtype,
        out=out,
    )
    console = Console(stderr=as_json)
    listener = None if as_json else round_line(console)
    result = Simulation(options, listener=listener).run()
    if as_json:
        render.print_json(result.to_dict())
    else:
        summary(console, result)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(
        "simulate",
        epilog=examples(
            "bcfl simulate --members 10 --rounds 5",
            "bcfl simulate --members 10 --update-dtype bfloat16",
            "bcfl simulate --members 7 --crash 2@500 --byzantine 5:equivocate --drop 0.1",
            "bcfl simulate --members 100 --rounds 2 --share-checks --json",
        ),
    )(simulate)
