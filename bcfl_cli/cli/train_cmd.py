"""``bcfl train``: train this member's update for the current round on its local data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import AppFolderOption, HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import render_plan_finished
from bcfl_cli.errors import PlanFinished
from bcfl_cli.home import Home


def train(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="PART.csv",
            help="This member's data: CSV with the genesis label column and numeric features, "
            "or what the consortium's model app loads (a file or a folder).",
            exists=True,
            readable=True,
        ),
    ],
    round: Annotated[
        int | None,
        typer.Option(
            "--round", min=1, help="Round to train for (default: the open round, else the next)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            dir_okay=False,
            help="Update file (default: HOME/updates/round-N.safetensors; sidecar FILE.json).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            max=2**53 - 1,
            help="Seed for a reproducible run (default: random; never fix it with DP on).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda[:N] or auto (default: $BCFL_DEVICE, else auto: CUDA if present).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing update file.")
    ] = False,
    app: AppFolderOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Train on local data from the round's global model; write the weight delta + metrics.

    Once the training plan is finished (its last round closed), says so and exits 0 without
    writing anything.
    """
    from bcfl_cli.training.local_round import train_for_round  # torch loads only when needed

    try:
        with render.training_bar(enabled=not json_out) as on_step:
            update = train_for_round(
                Home.resolve(home),
                data,
                round=round,
                out=out,
                seed=seed,
                on_step=on_step,
                device=device,
                force=force,
                app_folder=app,
            )
    except PlanFinished as finished:  # exit 0: nothing to train is not a failure
        render_plan_finished(finished, json_out=json_out)
        return
    for warning in update.warnings:
        render.warn(warning)
    side = update.sidecar
    if json_out:
        render.print_json({**side, "file": str(update.path), "sidecar": str(update.sidecar_path)})
        return
    state = "open" if side["round_open"] else "not open yet"
    render.print_kv(
        f"Update for round {side['round']} ({state})",
        [
            ("file", str(update.path)),
            ("blob", side["blob"]),
            ("base model", side["base_model"]),
            ("samples", side["num_samples"]),
            ("update norm", side["update_norm"]),
            *sorted(side["metrics"].items()),
            ("device", side["local"]["device"]),
            ("seconds", side["local"]["seconds"]),
        ],
    )
    render.success(f"update written; its metadata is in {update.sidecar_path}")


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        epilog=examples(
            "bcfl train --home homes/alice --data parts/member-01.csv",
            "bcfl train --home homes/alice --data parts/member-01.csv --seed 7 --json",
            "bcfl train --home homes/alice --data parts/member-01.csv --device cuda",
            "bcfl train --home homes/alice --data parts/member-01.csv --app my_app",
        ),
    )(train)
