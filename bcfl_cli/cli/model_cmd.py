"""``bcfl model export``: a round's global model as safetensors, checked against the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import NodeOption, transfer_progress
from bcfl_cli.errors import NodeError
from bcfl_cli.home import Home
from bcfl_cli.node.operations import NodeApi, export_model, node_url

model_app = typer.Typer(name="model", help="The consortium's global models.", no_args_is_help=True)


def _node_api(home: Home, node: str | None) -> NodeApi | None:
    """--node, else this member's own node if one is recorded, else none (local blobs only)."""
    try:
        return NodeApi(node_url(home, node))
    except NodeError:
        if node:
            raise
        return None


@model_app.command(
    "export",
    epilog=examples("bcfl model export --round 3 --out global.safetensors --home homes/alice"),
)
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the model.", dir_okay=False)
    ],
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round",
            min=0,
            help="Round whose aggregate to export (default: the latest; 0: the initial model).",
            show_default=False,
        ),
    ] = None,
    node: NodeOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write a round's global model (safetensors); its hash is checked against the chain.

    The model comes from this member's blob store, else from --node URL (default: your node).
    """
    member_home = Home.resolve(home)
    api = _node_api(member_home, node)
    try:
        with transfer_progress("fetching model", enabled=not json_out) as progress:
            outcome = export_model(
                member_home, out, round_number=round_number, api=api, progress=progress
            )
    finally:
        if api is not None:
            api.close()
    if json_out:
        render.print_json(outcome.to_json())
        return
    source = "initial model (genesis)" if outcome.height is None else f"block {outcome.height}"
    render.success(
        f"round {outcome.round} model {outcome.model} ({outcome.size} bytes, from {source}) "
        f"written to {outcome.path}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(model_app)
