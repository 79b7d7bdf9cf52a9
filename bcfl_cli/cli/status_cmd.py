"""``bcfl status``: what this member's node sees: chain head, round, peers, members, alarms."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.markup import escape

from bcfl_cli.cli import render
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import NodeOption
from bcfl_cli.client import NodeApi, local_status, node_status, node_url
from bcfl_cli.errors import IdentityError, NodeError
from bcfl_cli.home import Home
from bcfl_cli.identity import read_public_identity
from bcfl_cli.wire.refusal import Refusal


def _short(value: Any, n: int = 16) -> str:
    text = str(value) if value is not None else "-"
    return text[:n] if len(text) > n else text


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _ago(ms: Any, now_ms: int | None = None) -> str:
    """A peer's last contact as "4 s ago", not as raw epoch milliseconds."""
    if not isinstance(ms, int) or isinstance(ms, bool) or ms <= 0:
        return "never"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, now - ms) // 1000
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def render_alarm(alarm: Any) -> None:
    """A safety alarm: two committed blocks at one height. Loud, red, impossible to miss."""
    blocks = alarm.get("blocks", []) if isinstance(alarm, dict) else []
    height = alarm.get("height", "?") if isinstance(alarm, dict) else "?"
    message = alarm.get("message", "") if isinstance(alarm, dict) else str(alarm)
    render.print_line(
        f"[bold white on red] SAFETY ALARM [/] [bold red]two committed blocks at height "
        f"{escape(str(height))}: {escape(', '.join(map(str, blocks)))}[/]"
    )
    if message:
        render.print_line(f"[red]{escape(str(message))}[/]")
    render.print_line(
        "[red]This node stopped following the chain and kept both blocks as evidence. "
        "See docs/OPERATIONS.md, 'Safety alarm'.[/]"
    )


def render_status(status: dict[str, Any]) -> None:
    alarm = status.get("alarm")
    if alarm:
        render_alarm(alarm)
    if status.get("offline"):
        render.print_line("[bold yellow]node not running[/]: figures from this home's ledger")
    rnd = status.get("round") or {}
    me = status.get("me") or {}
    updates = rnd.get("updates", [])
    accepted = len(updates) if isinstance(updates, list) else updates
    planned = status.get("rounds_planned")
    of = f" of {planned}" if planned else ""
    deadline = ""
    if rnd.get("state") == "open":
        deadline = _deadline(rnd)
    rows = [
        ("genesis", status.get("genesis", "-")),
        ("height", _cell(status.get("height"))),
        ("head", _cell(status.get("head"))),
        (
            "round",
            f"{rnd.get('number', '-')}{of} ({rnd.get('state', '-')}, "
            f"{accepted} updates accepted{deadline})",
        ),
        ("training plan", _plan(status.get("plan"), planned)),
        ("global model", rnd.get("model", rnd.get("base_model", "-"))),
        ("this node", f"{me.get('name') or me.get('did', '-')} ({me.get('role', '-')})"),
    ]
    if "mempool" in status:
        rows.append(("mempool", f"{status['mempool']} pending transactions"))
    pending = status.get("pending_members") or []
    if pending:
        rows.append(("join requests", f"{len(pending)} pending (bcfl members list)"))
    render.print_kv(f"Consortium {status.get('consortium', '?')}", rows)
    peers = status.get("peers") or []
    render.print_table(
        "Peers",
        ["url", "did", "height", "last seen", "stream", "link"],
        [
            (
                p.get("url", "-"),
                _short(p.get("did"), 24),
                _cell(p.get("height")),
                _ago(p.get("last_seen")),
                _stream(p),
                _link(p),
            )
            for p in peers
            if isinstance(p, dict)
        ],
    )
    members = status.get("members") or []
    render.print_table(
        "Members",
        ["name", "roles", "power", "status", "did"],
        [
            (
                m.get("name", "-"),
                ", ".join(m.get("roles", [])),
                m.get("power", "-"),
                m.get("status", "-"),
                m.get("did", "-"),
            )
            for m in members
            if isinstance(m, dict)
        ],
        no_wrap=["did"],
    )


def _deadline(rnd: dict[str, Any]) -> str:
    """The open round's deadlines: a height (0: none) and/or a block time (ms)."""
    parts = []
    if rnd.get("deadline_height"):
        parts.append(f"height {rnd['deadline_height']}")
    if isinstance(rnd.get("deadline_time"), int):
        at = time.strftime("%H:%M:%S UTC", time.gmtime(rnd["deadline_time"] / 1000))
        parts.append(f"{at}")
    return f", deadline {' or '.join(parts)}" if parts else ""


def _plan(plan: Any, planned: Any) -> str:
    """ "finished (10 of 10 rounds) at height 41, 12:03:04 UTC", or "running"."""
    if not isinstance(plan, dict):
        return "-"
    rounds = plan.get("rounds", planned)
    if not plan.get("finished"):
        return f"running ({rounds} rounds planned)"
    when = ""
    if isinstance(plan.get("finished_time"), int):
        when = ", " + time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(plan["finished_time"] / 1000)
        )
    return (
        f"finished ({rounds} of {rounds} rounds) at height "
        f"{plan.get('finished_height', '-')}{when}; nothing to train"
    )


def _own_did(home: Home) -> str | None:
    try:
        return read_public_identity(home).did
    except IdentityError:
        return None


def status(
    node: NodeOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show the node's chain height and head, the round, peers, members and any safety alarm.

    Exits 3 when the node reports a safety alarm, so that monitoring scripts notice. When this
    member's own node is not running, shows what the home's ledger holds ("offline": true).
    """
    member_home = Home.resolve(home)
    try:
        with NodeApi(node_url(member_home, node), home=member_home) as api:
            data = node_status(api)
    except NodeError as exc:
        if node or not member_home.has_ledger or (isinstance(exc, Refusal) and exc.answered):
            raise
        # this member's node is down: say so, and show what its own ledger holds
        render.warn(f"{exc.message}; showing this home's ledger instead")
        data = local_status(member_home, _own_did(member_home))
    if json_out:
        render.print_json(data)
    else:
        render_status(data)
    if data.get("alarm"):
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command(
        "status",
        epilog=examples(
            "bcfl status --home homes/alice", "bcfl status --node http://127.0.0.1:7421 --json"
        ),
    )(status)


def _link(peer: dict[str, Any]) -> str:
    """Whether the link to this peer is encrypted and how its certificate was verified."""
    refused = peer.get("tls_refused")
    if refused:  # "TLS refused for URL: REASON: detail": the reason code (the JSON has it all)
        parts = str(refused).split(": ")
        return f"refused ({parts[1] if len(parts) >= 3 else refused})"
    if not peer.get("encrypted"):
        return "clear"
    verified = str(peer.get("verified", "none"))
    if verified.startswith("pinned:"):
        return f"TLS, pinned ({_short(verified.removeprefix('pinned:'), 20)})"
    return f"TLS, {verified}"


def _stream(peer: dict[str, Any]) -> str:
    """Whether messages go to this peer on a stream (else by POST), and how many did."""
    sent = peer.get("streamed", 0)
    return f"{'open' if peer.get('stream_open') else 'closed'}, {sent} sent"
