"""``bcfl keygen`` and ``bcfl identity show|check``."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, cast

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.home import Home
from bcfl_cli.identity import (
    ENV_VAR,
    KdfPreset,
    PublicIdentity,
    generate_identity,
    load_identity,
    passphrase_from,
    read_public_identity,
)

PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"Read the passphrase from this file (else ${ENV_VAR}, else a hidden prompt).",
        dir_okay=False,
        show_default=False,
    ),
]

identity_app = typer.Typer(
    name="identity", help="This member's identity (did:key).", no_args_is_help=True
)


def _default_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "member"


def _public_json(identity: PublicIdentity, home: Home) -> dict[str, str]:
    return {
        "name": identity.name,
        "did": identity.did,
        "public_key": identity.public_key_hex,
        "key_file": str(home.key_file),
    }


def _render(identity: PublicIdentity, home: Home, title: str) -> None:
    render.print_kv(
        title,
        [
            ("name", identity.name),
            ("did", identity.did),
            ("public key", identity.public_key_hex),
            ("key file", str(home.key_file)),
        ],
    )


def keygen(
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Your member name (default: your user name).", show_default=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing key (the old one is lost).")
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    kdf: Annotated[
        str,
        typer.Option("--kdf", hidden=True, help="Argon2id preset: interactive|moderate|sensitive."),
    ] = "moderate",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create an Ed25519 key pair, stored encrypted (Argon2id + SecretBox) in a 0600 file."""
    if kdf not in ("interactive", "moderate", "sensitive"):
        raise typer.BadParameter("use interactive, moderate or sensitive", param_hint="--kdf")
    preset = cast(KdfPreset, kdf)
    member_home = Home.resolve(home)
    passphrase = passphrase_from(passphrase_file, confirm=True)
    identity = generate_identity(
        member_home, name or _default_name(), passphrase, force=force, kdf=preset
    )
    public = identity.public()
    if json_out:
        render.print_json(_public_json(public, member_home))
    else:
        _render(public, member_home, "New identity")


@identity_app.command("show", epilog=examples("bcfl identity show --home homes/alice --json"))
def show(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Print this member's did, public key and name (no passphrase needed)."""
    member_home = Home.resolve(home)
    public = read_public_identity(member_home)
    if json_out:
        render.print_json(_public_json(public, member_home))
    else:
        _render(public, member_home, "Identity")


@identity_app.command("check", epilog=examples("bcfl identity check --home homes/alice"))
def check(
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Unlock the key once, to confirm the passphrase before a node or a script needs it."""
    member_home = Home.resolve(home)
    public = load_identity(member_home, passphrase_from(passphrase_file, confirm=False)).public()
    if json_out:
        render.print_json({**_public_json(public, member_home), "unlocked": True})
    else:
        render.success(f"passphrase unlocks {public.name} ({public.did})")


def register(app: typer.Typer) -> None:
    app.command(
        "keygen",
        epilog=examples(
            "bcfl keygen --name alice --home homes/alice",
            "bcfl keygen --name alice --passphrase-file pass.txt",
        ),
    )(keygen)
    app.add_typer(identity_app)
