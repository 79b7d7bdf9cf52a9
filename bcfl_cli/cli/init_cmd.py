"""``bcfl init`` (genesis from a consortium file) and ``bcfl consortium example``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import AppFolderOption, HomeOption, JsonOption, StoreUrlOption, examples
from bcfl_cli.consortium.example import example_text, filled_example, with_model_section
from bcfl_cli.errors import UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity import read_public_identity
from bcfl_cli.store.location import redact

if TYPE_CHECKING:
    from bcfl_cli.consortium.setup import InitResult

consortium_app = typer.Typer(
    name="consortium", help="Write and check consortium files.", no_args_is_help=True
)


def _result_json(result: InitResult) -> dict[str, Any]:
    header = result.genesis.header
    return {
        "consortium": result.config.name,
        "genesis_hash": result.genesis_hash,
        "config_hash": header.config,
        "validators_hash": header.validators,
        "initial_model": result.initial_model,
        "time": header.time,
        "home": str(result.home.root),
        "store": redact(result.home.store_url),
        "local_member": result.local_member,
        "members": [m.to_document() for m in result.config.members],
        "warnings": result.warnings,
    }


def init(
    config_file: Annotated[
        Path,
        typer.Argument(
            metavar="CONSORTIUM.toml", help="The consortium file (see `bcfl consortium example`)."
        ),
    ],
    home: HomeOption = None,
    json_out: JsonOption = False,
    time_ms: Annotated[
        int | None,
        typer.Option(
            "--time-ms",
            min=0,
            max=2**53 - 1,
            metavar="MS",
            help="Genesis time in milliseconds since the Unix epoch (UTC), e.g. "
            "1767225600000 for 2026-01-01T00:00:00Z. The time is part of the genesis block, so "
            "founders agree on one value and all pass it: the same consortium file and the "
            "same --time-ms give every founder the same genesis hash. Default: now, which "
            "only suits a consortium with one founder.",
        ),
    ] = None,
    app: AppFolderOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Create the genesis block from CONSORTIUM.toml; its hash is the consortium's identity.

    A file that pins a model app needs that app installed (or --app FOLDER), matching its pin:
    its initial weights go into the genesis.
    """
    # Imported here: building the initial model needs torch, which every other command
    # (keygen, identity show, --help) would otherwise pay for at start-up.
    from bcfl_cli.consortium.setup import init_consortium

    result = init_consortium(
        Home.resolve(home), config_file, time_ms=time_ms, store_url=store_url, app_folder=app
    )
    for warning in result.warnings:
        render.warn(warning)
    if json_out:
        render.print_json(_result_json(result))
        return
    config = result.config
    render.print_kv(
        f"Consortium {config.name}",
        [
            ("genesis hash", result.genesis_hash),
            ("genesis time", _time_text(result.genesis.header.time)),
            ("model", render.model_text(config.model)),
            ("initial model", result.initial_model),
            ("aggregation", config.aggregation.rule),
            ("home", str(result.home.root)),
            ("ledger", redact(result.home.store_url)),
        ],
    )
    render.print_table(
        "Founding members",
        ["name", "roles", "power", "did"],
        [(m.name, ", ".join(m.roles), m.power, m.did) for m in config.members],
        no_wrap=["did"],
    )
    if result.local_member:
        render.info(f"This home's identity is the founding member {result.local_member}.")
    render.info(
        "Members pin the genesis hash: it names this consortium. Check it with `bcfl verify-chain`."
    )
    others = [m.name for m in config.members if m.name != result.local_member]
    if others:
        render.info(
            f"Every other founder ({', '.join(others)}) runs, in its own home, `bcfl init "
            f"{config_file} --time-ms {result.genesis.header.time} --home THEIR_HOME` and "
            "compares the genesis hash with this one. Founders never run `bcfl join`: that is "
            "for organisations that are not in the consortium file."
        )


def _time_text(ms: int) -> str:
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):  # beyond year 9999
        return str(ms)
    return f"{ms} ({when.replace('+00:00', 'Z')})"


def _parse_member(spec: str) -> tuple[str, str]:
    name, sep, home = spec.partition("=")
    if not sep or not name or not home:
        raise UsageError(f"--member {spec!r}: expected NAME=HOME")
    return name, read_public_identity(Home.resolve(Path(home))).did


@consortium_app.command(
    "example",
    epilog=examples(
        "bcfl consortium example --member alice=homes/alice --member bob=homes/bob "
        "--out consortium.toml",
        "bcfl consortium example --app my_app --member alice=homes/alice --out consortium.toml",
    ),
)
def example(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write to FILE instead of printing.", dir_okay=False),
    ] = None,
    member: Annotated[
        list[str] | None,
        typer.Option(
            "--member",
            metavar="NAME=HOME",
            help="Fill the members with the identity in HOME (repeat; replaces the examples).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
    app: Annotated[
        Path | None,
        typer.Option(
            "--app",
            metavar="FOLDER",
            file_okay=False,
            help="Pin the model app in FOLDER (its pyproject.toml's [tool.bcfl.app]) instead "
            "of a builtin model: entry point, source manifest, config, initial weights' hash.",
        ),
    ] = None,
) -> None:
    """Print the commented example consortium file, optionally filled with real members."""
    text = filled_example([_parse_member(m) for m in member]) if member else example_text()
    if app is not None:
        from bcfl_cli.apps.project import pin_for, pin_toml, read_project  # imports the app

        text = with_model_section(text, pin_toml(pin_for(read_project(app))))
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="use --force to overwrite it")
    out.write_text(text, encoding="utf-8")
    render.success(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command(
        "init",
        epilog=examples(
            "bcfl init consortium.toml --home homes/alice",
            "bcfl init consortium.toml --time-ms 1767225600000 --home homes/bob",
            "bcfl init consortium.toml --home homes/alice "
            "--store-url postgresql+psycopg://alice@db.example.org/bcfl",
        ),
    )(init)
    app.add_typer(consortium_app)
