"""``bcfl join URL``: pin a consortium's genesis and ask its members to admit you."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.identity_cmd import PassphraseFileOption
from bcfl_cli.cli.options import HomeOption, JsonOption, StoreUrlOption, examples
from bcfl_cli.cli.submit_cmd import transfer_progress
from bcfl_cli.client import (
    JoinOutcome,
    NodeApi,
    RemoteGenesis,
    check_pinned_hash,
    fetch_genesis,
    join_consortium,
    parse_roles,
)
from bcfl_cli.errors import UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity, passphrase_from
from bcfl_cli.store.location import record_store_url


def _show_genesis(remote: RemoteGenesis) -> None:
    state = remote.state
    render.print_kv(
        f"Consortium {remote.consortium}",
        [
            ("genesis hash", remote.hash),
            ("served by", remote.url),
            ("members", ", ".join(sorted(m.name for m in state.members.values()))),
            ("model", render.model_text(state.config.model)),
            ("rounds", state.config.training.rounds),
            ("admission", f"{state.config.admission_approvals} validator approvals"),
        ],
    )


def _confirm(remote: RemoteGenesis) -> None:
    _show_genesis(remote)
    if not sys.stdin.isatty():
        raise UsageError(
            "no terminal to confirm the genesis on",
            hint="compare the hash with the one the consortium gave you and pass "
            "--genesis-hash HASH (or --yes)",
        )
    if not typer.confirm(
        f"Join {remote.consortium} with genesis hash {remote.hash}?", default=False
    ):
        raise typer.Exit(1)


def _render(outcome: JoinOutcome, peer: str) -> None:
    render.success(
        f"asked {outcome.consortium} to admit {outcome.name} "
        f"({', '.join(outcome.roles)}, power {outcome.power}); request {outcome.tx_hash[:16]}"
    )
    if outcome.ledger_created:
        render.info(f"Genesis {outcome.genesis_hash} pinned in this home's new ledger.")
    render.info(
        f"Next: {outcome.approvals_needed} validator(s) approve with "
        f"`bcfl members approve {outcome.did}` (validators: {', '.join(outcome.validators)})."
    )
    render.info(f"Meanwhile start your node so it syncs: `bcfl node --peer {peer}`.")


def join(
    url: Annotated[str, typer.Argument(help="URL of a member's node, e.g. https://node.example")],
    genesis_hash: Annotated[
        str | None,
        typer.Option(
            "--genesis-hash",
            help="The genesis hash the consortium gave you; required without a terminal.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Member name (default: your identity's).", show_default=False),
    ] = None,
    roles: Annotated[
        str, typer.Option("--roles", help="Comma-separated: trainer, validator.")
    ] = "trainer",
    power: Annotated[
        int | None,
        typer.Option(
            "--power",
            min=0,
            max=1_000_000,
            help="Voting power asked for (default: 1 for a validator, else 0).",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask to confirm the genesis.")
    ] = False,
    tls_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--tls-fingerprint",
            help=(
                "Pinned consortium: the SHA-256 fingerprint of that node's certificate (given"
                " with the genesis hash); the node must present exactly it."
            ),
            show_default=False,
        ),
    ] = None,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    store_url: StoreUrlOption = None,
) -> None:
    """Pin the consortium's genesis from URL and send a signed join request to that node."""
    wanted = parse_roles(roles)
    chosen_power = power if power is not None else (1 if "validator" in wanted else 0)
    member_home = Home.resolve(home)
    if store_url is not None:
        record_store_url(member_home, store_url)  # the ledger the join creates goes there
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    with NodeApi(url, identity.signing_key, tls_pin=tls_fingerprint) as api:
        remote = fetch_genesis(api)
        if genesis_hash is not None:
            check_pinned_hash(remote, genesis_hash)
        elif not yes:
            _confirm(remote)
        with transfer_progress("fetching initial model", enabled=not json_out) as progress:
            outcome = join_consortium(
                member_home,
                identity.signing_key,
                api,
                remote,
                name=name or identity.name,
                roles=wanted,
                power=chosen_power,
                progress=progress,
            )
    if json_out:
        render.print_json(vars(outcome))
    else:
        _render(outcome, api.url)


def register(app: typer.Typer) -> None:
    app.command(
        "join",
        epilog=examples(
            "bcfl join http://node.partner.example:7420 --genesis-hash HASH --roles trainer "
            "--home homes/erin",
            "bcfl join http://node.partner.example:7420 --genesis-hash HASH --home homes/erin "
            "--store-url postgresql+psycopg://erin@db.example.org/bcfl",
        ),
    )(join)
