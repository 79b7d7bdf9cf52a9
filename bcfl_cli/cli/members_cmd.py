"""``bcfl members list|approve|remove``: admission and removal of members by the validators."""

from __future__ import annotations

from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.identity_cmd import PassphraseFileOption
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import NodeOption, TimeoutOption
from bcfl_cli.client import (
    DEFAULT_WAIT_S,
    MemberChange,
    NodeApi,
    approve_member,
    local_state,
    members_view,
    node_url,
    remove_member,
)
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity, passphrase_from

members_app = typer.Typer(
    name="members", help="List, admit and remove consortium members.", no_args_is_help=True
)

NoWaitOption = Annotated[
    bool, typer.Option("--no-wait", help="Return once the node accepted the transaction.")
]


@members_app.command("list", epilog=examples("bcfl members list --home homes/alice"))
def list_members(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Members, roles, power and status, and pending join requests with their approvals.

    Read from this member's own ledger (kept in sync by its node); no node call is made.
    """
    view = members_view(local_state(Home.resolve(home)))
    if json_out:
        render.print_json(view.to_json())
        return
    render.print_table(
        f"Members at height {view.height}",
        ["name", "roles", "power", "status", "since", "did"],
        [(m.name, ", ".join(m.roles), m.power, m.status, m.since, m.did) for m in view.members],
        no_wrap=["did"],
    )
    if view.pending:
        render.print_table(
            f"Pending join requests ({view.admission_approvals} approvals admit)",
            ["name", "roles", "power", "approvals", "approve by height", "did"],
            [
                (
                    p.name,
                    ", ".join(p.roles),
                    p.power,
                    f"{len(p.approvals)}/{view.admission_approvals} {', '.join(p.approvals)}",
                    p.expires_after,
                    p.did,
                )
                for p in view.pending
            ],
            no_wrap=["did"],
        )
        render.info("Approve one with `bcfl members approve DID` (validators only).")
    removals = [m for m in view.members if m.removal_approvals]
    for m in removals:
        render.info(
            f"Removal of {m.name} asked by {', '.join(m.removal_approvals)} "
            f"({len(m.removal_approvals)}/{view.removal_approvals})."
        )


def _render_change(change: MemberChange, json_out: bool) -> None:
    if json_out:
        render.print_json(vars(change))
        return
    verb = "approval" if change.kind == "approve_member" else "removal request"
    if not change.committed:
        render.success(f"{verb} for {change.name} sent ({change.tx_hash[:16]})")
        return
    render.success(f"{verb} for {change.name} committed in block {change.height}")
    if change.effective:
        done = "admitted" if change.kind == "approve_member" else "removed"
        render.info(f"{change.name} is now {done} ({change.did}).")
    else:
        render.info(f"{change.approvals} of {change.needed} approvals so far.")


def approve(
    member: Annotated[str, typer.Argument(help="The DID (or name) of the pending request.")],
    node: NodeOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    no_wait: NoWaitOption = False,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Approve a pending join request (signed approve_member, sent to your node).

    The request is looked up at the node's head: blocks this home's ledger lacks are fetched
    from the node and checked first, so a lagging ledger is no obstacle; with no node running
    it says so (start `bcfl node`, or pass --node URL).
    """
    member_home = Home.resolve(home)
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    with NodeApi(node_url(member_home, node), identity.signing_key, home=member_home) as api:
        change = approve_member(
            member_home, identity.signing_key, api, member, wait_s=None if no_wait else timeout
        )
    _render_change(change, json_out)


def remove(
    member: Annotated[str, typer.Argument(help="The DID (or name) of the member to remove.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded on chain, up to 256 characters).")
    ] = "",
    node: NodeOption = None,
    timeout: TimeoutOption = DEFAULT_WAIT_S,
    no_wait: NoWaitOption = False,
    passphrase_file: PassphraseFileOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ask for a member's removal; it takes effect when enough validators asked."""
    member_home = Home.resolve(home)
    identity = load_identity(member_home, passphrase_from(passphrase_file, confirm=False))
    with NodeApi(node_url(member_home, node), identity.signing_key, home=member_home) as api:
        change = remove_member(
            member_home,
            identity.signing_key,
            api,
            member,
            reason=reason,
            wait_s=None if no_wait else timeout,
        )
    _render_change(change, json_out)


members_app.command("approve", epilog=examples("bcfl members approve erin --home homes/alice"))(
    approve
)
members_app.command("remove", epilog=examples("bcfl members remove dave --home homes/alice"))(
    remove
)


def register(app: typer.Typer) -> None:
    app.add_typer(members_app)
