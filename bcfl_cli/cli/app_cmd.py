"""``bcfl app``: start a model app and check it before a consortium pins it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import JsonOption, examples

app_group = typer.Typer(
    name="app",
    help="Model apps: the consortium's own model and training code.",
    no_args_is_help=True,
)


@app_group.command(
    "new",
    epilog=examples("bcfl app new my_app", "bcfl app new my_app --dir apps"),
)
def new(
    name: Annotated[str, typer.Argument(help="The app's Python package name, e.g. my_app.")],
    parent: Annotated[
        Path,
        typer.Option("--dir", metavar="FOLDER", file_okay=False, help="Where to create it."),
    ] = Path("."),
    json_out: JsonOption = False,
) -> None:
    """Write a working app (model, data loader, test, README) to start from."""
    from bcfl_cli.apps.scaffold import new_app

    written = new_app(name, parent)
    if json_out:
        render.print_json({"app": str(parent / name), "files": [str(p) for p in written]})
        return
    render.print_table("Files", ["path"], [(str(p),) for p in written])
    render.success(f"created {parent / name}")
    render.info(f"next: bcfl app check {parent / name} --data sample_data/digits-train.csv")


@app_group.command(
    "check",
    epilog=examples(
        "bcfl app check my_app --data sample_data/digits-train.csv",
        "bcfl app check my_app --data sample_data/digits-train.csv --json",
    ),
)
def check(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER", help="The app folder (with pyproject.toml's [tool.bcfl.app])."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option("--data", metavar="SAMPLE", exists=True, help="Sample data to train on."),
    ],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the training step.")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda[:N] (default cpu).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Build the model, train one step on SAMPLE, and show what a genesis will pin."""
    from bcfl_cli.apps.check import check_app
    from bcfl_cli.apps.project import pin_toml

    result = check_app(folder, data, seed=seed, device=device)
    if json_out:
        render.print_json(result.to_json())
        return
    render.print_kv(
        f"App {result.pin.entry_point}",
        [
            ("parameters", f"{result.parameters:,}"),
            ("update size", f"{result.update_bytes:,} bytes"),
            ("manifest", result.pin.manifest),
            ("files", len(result.pin.files)),
            ("initial model", result.pin.initial_model),
            ("samples trained", result.samples),
            *sorted(result.metrics.items()),
            *((f"eval {k}", f"{v:.4f}") for k, v in sorted(result.evaluation.items())),
            ("seconds", f"{result.seconds:.2f}"),
        ],
    )
    render.info("The genesis will pin:")
    render.print_raw(pin_toml(result.pin))
    render.success(
        f"the app works; pin it with `bcfl consortium example --app {folder} --member ...`"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(app_group)
