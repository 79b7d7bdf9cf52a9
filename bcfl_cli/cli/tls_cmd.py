"""``bcfl tls init|show|rotate|mode``: this member's node certificate, and the consortium's
trust mode (issue 22)."""

from __future__ import annotations

from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.identity_cmd import PassphraseFileOption
from bcfl_cli.cli.members_cmd import NoWaitOption
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import NodeOption, TimeoutOption
from bcfl_cli.client.address import node_url
from bcfl_cli.client.api import DEFAULT_WAIT_S, NodeApi
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity, passphrase_from
from bcfl_cli.identity.tls_cert import TLS_CERT_FILE, read_fingerprint
from bcfl_cli.node.tls_rotation import init_certificate, rotate_certificate, vote_tls_mode

tls_app = typer.Typer(
    name="tls",
    help="This member's node certificate: made, shown, rotated (pinned on chain).",
    no_args_is_help=True,
)


def init(
    force: Annotated[
        bool, typer.Option("--force", help="Make a new certificate even if one exists.")
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make this member's node certificate and print its pin for the consortium file.

    The key is stored encrypted in HOME/tls.key (opened with the identity), the certificate in
    HOME/tls.crt. A founder pastes the printed `tls = {...}` line into the member's
    [[members]] entry; a member that joins later sends the fingerprint with `bcfl join`.
    """
    member_home = Home.resolve(home)
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    pin = init_certificate(member_home, identity.signing_key, force=force)
    data = {
        "fingerprint": pin.fingerprint,
        "sig": pin.sig,
        "created": pin.created,
        "certificate": str(member_home.root / TLS_CERT_FILE),
        "toml": pin.toml(),
    }
    if json_out:
        render.print_json(data)
        return
    render.print_kv(
        "Node certificate" + (" (new)" if pin.created else " (existing)"),
        [("fingerprint", pin.fingerprint), ("certificate", data["certificate"])],
    )
    render.console().print(
        "\nfor this member's [[members]] entry in the consortium file:", markup=False
    )
    render.console().print(pin.toml(), markup=False, soft_wrap=True)


def show(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """The fingerprint of this member's node certificate (and of a rotation in progress)."""
    member_home = Home.resolve(home)
    data = {
        "fingerprint": read_fingerprint(member_home),
        "next_fingerprint": read_fingerprint(member_home, next_key=True),
    }
    if json_out:
        render.print_json(data)
        return
    render.print_kv(
        "Node certificate",
        [
            ("fingerprint", data["fingerprint"] or "none (run `bcfl tls init`)"),
            ("rotation", data["next_fingerprint"] or "none in progress"),
        ],
    )


def rotate(
    node: NodeOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    no_wait: NoWaitOption = False,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make a new node certificate and pin it on chain (a signed tls_certificate).

    The running node serves the new certificate from the block that commits it on; nothing
    restarts, and links already open stay up.
    """
    member_home = Home.resolve(home)
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    with NodeApi(node_url(member_home, node), identity.signing_key, home=member_home) as api:
        outcome = rotate_certificate(
            member_home, identity.signing_key, api, wait_s=None if no_wait else timeout
        )
    data = {
        "tx": outcome.tx_hash,
        "fingerprint": outcome.fingerprint,
        "committed": outcome.committed,
        "height": outcome.height,
    }
    if json_out:
        render.print_json(data)
        return
    where = f"committed at height {outcome.height}" if outcome.committed else "sent"
    render.print_kv(
        f"Certificate rotation {where}",
        [("fingerprint", outcome.fingerprint), ("transaction", outcome.tx_hash)],
    )


def mode(
    wanted: Annotated[str, typer.Argument(metavar="MODE", help="pinned or ca.")],
    node: NodeOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    no_wait: NoWaitOption = False,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ask, as a validator, for another trust mode (a signed tls_mode transaction).

    The consortium's mode changes once as many validators as admit a member asked for the same
    one; every node then calls its peers under the new rules.
    """
    member_home = Home.resolve(home)
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    with NodeApi(node_url(member_home, node), identity.signing_key, home=member_home) as api:
        outcome = vote_tls_mode(
            identity.signing_key, api, wanted, wait_s=None if no_wait else timeout
        )
    data = {"tx": outcome.tx_hash, "mode": wanted, "committed": outcome.committed}
    if json_out:
        render.print_json({**data, "height": outcome.height})
        return
    where = f"committed at height {outcome.height}" if outcome.committed else "sent"
    render.print_kv(f"Vote for TLS trust mode {wanted} {where}", [("transaction", outcome.tx_hash)])


tls_app.command("init", epilog=examples("bcfl tls init --home homes/alice"))(init)
tls_app.command("show", epilog=examples("bcfl tls show --home homes/alice --json"))(show)
tls_app.command("rotate", epilog=examples("bcfl tls rotate --home homes/alice"))(rotate)
tls_app.command("mode", epilog=examples("bcfl tls mode ca --home homes/alice"))(mode)


def register(app: typer.Typer) -> None:
    app.add_typer(tls_app)
