"""``bcfl demo``: a whole consortium on this machine, one real node process per member."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli.options import JsonOption, UpdateDtypeOption, examples


def demo(
    members: Annotated[
        int, typer.Option("--members", min=1, max=32, help="Members (one node each).")
    ] = 4,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=1000, help="Rounds.")] = 10,
    dataset: Annotated[
        str, typer.Option("--dataset", help="digits or breast-cancer (sample_data/).")
    ] = "digits",
    non_iid: Annotated[
        float,
        typer.Option("--non-iid", min=0.0, help="Dirichlet alpha of the label split (0: IID)."),
    ] = 0.5,
    attackers: Annotated[
        int, typer.Option("--attackers", min=0, help="How many members attack (mallory-N).")
    ] = 0,
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            help="sign-flip, scaling, label-flip, alie, ipm, noise or free-rider.",
        ),
    ] = None,
    rule: Annotated[
        str,
        typer.Option(
            "--rule",
            help=(
                "Aggregation: fedavg, clipped, median, trimmed, krum, cosine or "
                "cosine_trajectory."
            ),
        ),
    ] = "fedavg",
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Keep the homes here (default: a new temporary directory)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            help="Seed every member's training, for a reproducible run (default: random).",
        ),
    ] = None,
    app: Annotated[
        Path | None,
        typer.Option(
            "--app",
            metavar="FOLDER",
            file_okay=False,
            exists=True,
            help="Train the model app in FOLDER (pinned in the genesis; every node imports it "
            "from there) instead of the builtin model for --dataset.",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Every node serves TLS 1.3 with a certificate pinned in the genesis (issue 22).",
        ),
    ] = False,
    update_dtype: UpdateDtypeOption = "float32",
    as_json: JsonOption = False,
) -> None:
    """Run a consortium on this machine: train, watch the chain, verify every node's copy."""
    from rich.console import Console

    from bcfl_cli.cli import render
    from bcfl_cli.demo.render import progress_display, summary
    from bcfl_cli.demo.run import DemoOptions, DemoRun, run_demo

    options = DemoOptions(
        members=members,
        rounds=rounds,
        dataset=dataset,
        non_iid=non_iid,
        attackers=attackers,
        attack=attack,
        rule=rule,
        keep=keep,
        seed=seed,
        app=app,
        tls=tls,
        update_dtype=update_dtype,
    )
    options.check()
    console = Console(stderr=as_json)
    run: DemoRun
    try:
        if as_json:
            run = run_demo(options)
        else:
            with progress_display(console) as listener:
                run = run_demo(options, listener=listener)
    except KeyboardInterrupt as exc:
        partial: DemoRun | None = getattr(exc, "demo_run", None)
        where = f"; homes kept in {partial.root}" if partial is not None else ""
        Console(stderr=True).print(f"interrupted: every node was stopped{where}", highlight=False)
        raise typer.Exit(130) from None
    if as_json:
        render.print_json(run.to_dict())
    else:
        summary(console, run)
    if not run.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(
        "demo",
        epilog=examples(
            "bcfl demo",
            "bcfl demo --members 10 --attackers 3 --attack ipm --rule cosine_trajectory",
            "bcfl demo --seed 7 --json",
            "bcfl demo --app my_app --rounds 5",
            "bcfl demo --tls --rounds 5",
            "bcfl demo --update-dtype bfloat16 --seed 7",
        ),
    )(demo)
