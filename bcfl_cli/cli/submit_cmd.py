"""``bcfl submit [UPDATE]``: upload an update, sign it, and wait for the contract's verdict."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bcfl_cli.cli import render
from bcfl_cli.cli.identity_cmd import PassphraseFileOption
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.client import (
    DEFAULT_WAIT_S,
    NodeApi,
    SubmitOutcome,
    ensure_plan_running,
    latest_update,
    node_url,
    read_update,
    submit_update,
)
from bcfl_cli.errors import NodeError, PlanFinished, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity, passphrase_from
from bcfl_cli.wire.refusal import Refusal

NodeOption = Annotated[
    str | None,
    typer.Option(
        "--node",
        help="URL of the node to talk to (default: this member's own, from HOME/node/node.json).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.0, help="Seconds to wait for the transaction to commit."),
]


@contextmanager
def transfer_progress(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr fed by (done, total) callbacks; None when disabled."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=render.err_console(),
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _render(outcome: SubmitOutcome) -> None:
    rows = [
        ("round", outcome.round),
        ("update", outcome.tx_hash),
        ("blob", f"{outcome.blob} ({outcome.blob_size} bytes)"),
        ("height", outcome.height if outcome.height is not None else "-"),
    ]
    render.print_kv("Update", rows)
    if outcome.accepted:
        render.success(f"accepted in block {outcome.height}")
    else:
        detail = f" ({outcome.detail})" if outcome.detail else ""
        render.print_line(f"[bold red]rejected:[/] {escape(outcome.reason + detail)}")


def _latest_or_finished(home: Home, url: str) -> Path:
    """The latest update ``bcfl train`` wrote; when there is none because the plan is over
    (train writes nothing then), PlanFinished rather than "no update"."""
    try:
        return latest_update(home)
    except UsageError:
        with contextlib.suppress(NodeError), NodeApi(url, home=home) as api:
            ensure_plan_running(api)
        raise


def render_plan_finished(finished: PlanFinished, *, json_out: bool) -> None:
    """What train and submit print once the plan is over (exit 0)."""
    if json_out:
        render.print_json(
            {"plan_finished": True, "rounds": finished.rounds, "message": finished.message}
        )
    else:
        render.info(finished.message)


def submit(
    update: Annotated[
        Path | None,
        typer.Argument(
            help="The update (round-N.safetensors with its .json sidecar); default: the latest "
            "one written by `bcfl train` in HOME/updates.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    node: NodeOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Upload an update to your node, sign it, and wait until it is accepted or rejected.

    Exits 1 when the contract (or the node) rejects the update, printing the reason.
    """
    member_home = Home.resolve(home)
    url = node_url(member_home, node)
    try:
        path = update if update is not None else _latest_or_finished(member_home, url)
        update_file = read_update(path)
        identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
        with (
            NodeApi(url, identity.signing_key, home=member_home) as api,
            transfer_progress(f"uploading {path.name}", enabled=not json_out) as progress,
        ):
            outcome = submit_update(
                member_home,
                identity.signing_key,
                api,
                update_file,
                wait_s=timeout,
                progress=progress,
            )
    except PlanFinished as finished:
        render_plan_finished(finished, json_out=json_out)
        return
    except Refusal as exc:
        if node or exc.answered:
            raise
        raise NodeError(
            f"this member's node does not answer at {url} ({exc.message})",
            hint=f"start it with `bcfl node --home {member_home.root}` "
            "(it records its address in HOME/node/node.json), or pass --node URL",
        ) from exc
    for miss in outcome.unreached:
        render.warn(f"update blob not pushed to peer {miss}")
    if json_out:
        render.print_json(outcome.to_json())
    else:
        _render(outcome)
    if not outcome.accepted:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(
        "submit",
        epilog=examples(
            "bcfl submit --home homes/alice",
            "bcfl submit updates/round-3.safetensors --home homes/alice --json",
        ),
    )(submit)
