"""``bcfl verify-chain``, ``bcfl log`` and ``bcfl inspect``: reading the ledger."""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.cli import render
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.errors import StoreError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import Report
from bcfl_cli.verify.anchor import TrustedHead
from bcfl_cli.verify.anchored import verify_anchored

#: Chains at least this long show a progress bar while verifying.
PROGRESS_MIN_BLOCKS = 200


def register(app: typer.Typer) -> None:
    app.command(
        "verify-chain",
        epilog=examples(
            "bcfl verify-chain --home homes/alice",
            "bcfl verify-chain --deep --json --home homes/alice",
            "bcfl verify-chain --deep --models-only --home homes/eve",
            "bcfl verify-chain --home homes/alice "
            "--store-url postgresql+psycopg://alice@db.example.org/bcfl",
        ),
    )(verify_chain_cmd)
    app.command("log", epilog=examples("bcfl log --limit 20 --home homes/alice"))(log_cmd)
    app.command(
        "inspect",
        epilog=examples(
            "bcfl inspect 0 --home homes/alice", "bcfl inspect 3f2a9c --json --home homes/alice"
        ),
    )(inspect_cmd)


# --- verify-chain ---------------------------------------------------------------------------
def verify_chain_cmd(
    home: HomeOption = None,
    deep: Annotated[
        bool,
        typer.Option("--deep", help="Also re-run the update contract and recompute aggregates."),
    ] = False,
    models_only: Annotated[
        bool,
        typer.Option(
            "--models-only",
            help="With --deep, for a member that trains without validating (its node fetches "
            "each round's model, not the others' updates): rounds whose update blobs are not "
            "here are checked to their certified model and listed, not recomputed.",
        ),
    ] = False,
    genesis: Annotated[
        str | None,
        typer.Option(
            "--genesis",
            metavar="HASH",
            help="The consortium's genesis hash, as you were given it: a store of any other "
            "consortium (even one with the same member names) fails.",
            show_default=False,
        ),
    ] = None,
    trusted_head: Annotated[
        str | None,
        typer.Option(
            "--trusted-head",
            metavar="HEIGHT:HASH",
            help="A block you know from outside this store (e.g. noted from `bcfl status`): "
            "a store that stops below HEIGHT, or holds another block there, fails.",
            show_default=False,
        ),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="URL",
            help="A peer's node: fail if it serves a different committed block at a common "
            "height, or a committed block past this store's head.",
            show_default=False,
        ),
    ] = None,
    no_pin: Annotated[
        bool,
        typer.Option(
            "--no-pin",
            help="Neither check nor move this home's pin (HOME/pin.json), e.g. for a copy of "
            "someone else's store.",
        ),
    ] = False,
    as_json: JsonOption = False,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            metavar="URL",
            help="Verify the ledger in this database (SQLite or PostgreSQL URL) instead of the "
            "home's own, with the home's blobs and anchors; not recorded in the home.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-derive the whole chain from its genesis and check it against the anchors you hold.

    Exit 0 if valid, 1 at the first fault. By default the chain is checked against this home's
    pin (genesis and highest verified head, kept outside the store), which then moves forward.
    """
    head = TrustedHead.parse(trusted_head) if trusted_head is not None else None
    member_home = Home.resolve(home)
    after = None
    if against is not None:
        from bcfl_cli.node.compare import compare_with_peer

        after = functools.partial(compare_with_peer, against)
    with Ledger.open(member_home, store_url) as ledger:
        checks = _deep_checks(ledger) if deep else None
        with _progress(enabled=not as_json and ledger.height >= PROGRESS_MIN_BLOCKS) as update:
            report = verify_anchored(
                ledger,
                pin_file=None if no_pin else member_home.pin_file,
                genesis=genesis,
                trusted_head=head,
                after=after,
                deep=deep,
                checks=checks,
                progress=update,
                models_only=models_only,
            )
    if as_json:
        render.print_json(report.to_dict())
    else:
        _render_report(report, member_home)
    raise typer.Exit(0 if report.ok else 1)


def _deep_checks(ledger: Ledger) -> AppChecks:
    """The FL engine's checks, imported only for --deep (they load torch).

    ``keep_models=False``: verifying must not write into the member's blob store.
    """
    from bcfl_cli.fl.checks import FLChecks

    return FLChecks(ledger.blobs, keep_models=False)


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[bold]verifying",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=render.err_console(),
    ) as bar:
        task = bar.add_task("verifying", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _rounds_text(rounds: list[int]) -> str:
    """``none``, or the rounds and why: their update blobs are not in this store."""
    if not rounds:
        return "none"
    shown = ", ".join(map(str, rounds[:20])) + (
        f" (+{len(rounds) - 20})" if len(rounds) > 20 else ""
    )
    return f"{shown} (update blobs not here: their models were taken on the validators' commit)"


def _render_report(report: Report, home: Home) -> None:
    fault = report.fault
    if fault is None:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.tx_kinds.items())) or "none"
        render.success(
            f"chain valid: height {report.height}, head {report.head}"
            + (" (deep)" if report.deep else "")
        )
        render.print_kv(
            None,
            [
                ("chain id", report.chain_id),
                ("blocks", report.blocks),
                ("transactions", f"{report.txs} ({kinds})"),
                ("signatures checked", report.signatures),
                ("blobs checked", report.blobs),
                *(
                    [("rounds not recomputed", _rounds_text(report.unverified_rounds))]
                    if report.models_only
                    else []
                ),
                ("anchors", _anchors_text(report) or "none (see --genesis, --trusted-head)"),
                ("pin", report.pin),
                ("time", f"{report.elapsed_s:.2f} s"),
            ],
        )
        if report.pin == "created":
            render.warn(
                f"{home.pin_file} did not exist (a home made before pins): this store's genesis "
                f"was trusted on first use and pinned with head {report.height}. Check the "
                "chain id against the one your consortium gave you (--genesis)."
            )
        return
    console = render.err_console()
    console.print("[bold red]✗ chain invalid[/]")
    rows = [
        ("first bad height", fault.height if fault.height is not None else "-"),
        ("transaction", fault.tx or "-"),
        ("code", fault.code),
        ("reason", fault.message),
        ("valid prefix", f"0..{report.height} of {report.stored_height}"),
    ]
    for key, value in rows:
        console.print(f"  [bold]{key}:[/] {escape(str(value))}")


def _anchors_text(report: Report) -> str:
    """e.g. ``genesis (--genesis) ok, head 120 (pin) ok, peer http://… ok``."""
    parts = []
    for row in report.anchors:
        verdict = {True: "ok", False: "FAILED", None: "not checked"}[row["ok"]]
        if row["anchor"] == "peer":
            parts.append(f"peer {row['source']} at {row['height']} {verdict}")
        elif row["anchor"] == "head":
            parts.append(f"head {row['height']} ({row['source']}) {verdict}")
        else:
            parts.append(f"genesis ({row['source']}) {verdict}")
    return ", ".join(parts)


# --- log --------------------------------------------------------------------------------------
def log_cmd(
    home: HomeOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest blocks shown.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """The newest blocks: height, hash, time, proposer, transactions by kind."""
    with Ledger.open(Home.resolve(home)) as ledger:
        names = _member_names(ledger)
        top = ledger.height
        blocks = list(ledger.blocks(max(0, top - limit + 1), top))
    blocks.reverse()
    if as_json:
        render.print_json(
            [
                {
                    "height": b.height,
                    "hash": b.hash,
                    "time": b.header.time,
                    "proposer": b.header.proposer,
                    "proposer_name": names.get(b.header.proposer, ""),
                    "txs": dict(Counter(str(t.kind) for t in b.txs)),
                }
                for b in blocks
            ]
        )
        return
    render.print_table(
        f"chain {ledger.genesis_hash[:16]}… (height {top})",
        ["height", "hash", "time (UTC)", "proposer", "transactions"],
        [
            (
                b.height,
                b.hash[:16],
                _time(b.header.time),
                names.get(b.header.proposer, _short(b.header.proposer)) or "(genesis)",
                _kinds(b),
            )
            for b in blocks
        ],
        no_wrap=["hash", "time (UTC)"],
    )


def _member_names(ledger: Ledger) -> dict[str, str]:
    """did -> name from the genesis members and every join request on the chain."""
    names = {
        str(m["did"]): str(m["name"])
        for m in ledger.document.get("members", [])
        if isinstance(m, dict) and "did" in m and "name" in m
    }
    for tx, _height in ledger.txs_of_kind(TxKind.JOIN_REQUEST):
        names.setdefault(tx.author, str(tx.body["name"]))
    return names


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(did: str) -> str:
    return did[:16] + "…" if len(did) > 16 else did


def _kinds(block: Block) -> str:
    counts = Counter(str(t.kind) for t in block.txs)
    return ", ".join(f"{k}×{n}" for k, n in sorted(counts.items())) or "-"


# --- inspect --------------------------------------------------------------------------------
def inspect_cmd(
    target: Annotated[str, typer.Argument(help="A height, a block hash or a transaction hash.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one block (by height or hash) or one transaction (by hash or unique prefix)."""
    with Ledger.open(Home.resolve(home)) as ledger:
        names = _member_names(ledger)
        found = _resolve(ledger, target.strip().lower())
        if isinstance(found, Block):
            _show_block(found, names, as_json)
        else:
            tx, height = found
            block = ledger.block(height)
            index = next(i for i, t in enumerate(block.txs) if t.hash == tx.hash)
            _show_tx(tx, height, index, names, as_json)


def _resolve(ledger: Ledger, target: str) -> Block | tuple[Transaction, int]:
    if target.isascii() and target.isdigit():
        # a height when the chain has one; else, from 6 digits on, a hash prefix that happens
        # to be all digits (about 1 in 280 twelve-digit prefixes is)
        height = int(target)
        if height <= ledger.height:
            return ledger.block(height)
        if len(target) < 6:
            raise UsageError(f"no block at height {height}: the head is {ledger.height}")
    if not target or any(c not in "0123456789abcdef" for c in target):
        raise UsageError(f"{target!r} is neither a height nor a hash")
    if len(target) < 6:
        raise UsageError("give at least 6 hex digits of a hash")
    if is_hash_hex(target):
        try:
            return ledger.block_by_hash(target)
        except StoreError:
            pass
        try:
            return ledger.tx(target)
        except StoreError:
            raise UsageError(f"no block or transaction with hash {target}") from None
    matches = [("block", h) for h in ledger.find_block_hashes(target)] + [
        ("tx", h) for h in ledger.find_tx_hashes(target)
    ]
    if not matches:
        if target.isdigit():
            raise UsageError(
                f"no block at height {target} (the head is {ledger.height}) "
                f"and no block or transaction hash starts with {target}"
            )
        raise UsageError(f"no block or transaction hash starts with {target}")
    if len(matches) > 1:
        raise UsageError(f"{target} is ambiguous: {len(matches)} hashes start with it")
    what, full = matches[0]
    return ledger.block_by_hash(full) if what == "block" else ledger.tx(full)


def _show_block(block: Block, names: dict[str, str], as_json: bool) -> None:
    if as_json:
        render.print_json({"hash": block.hash, **block.to_dict()})
        return
    h = block.header
    render.print_kv(
        f"block {h.height}",
        [
            ("hash", block.hash),
            ("prev", h.prev),
            ("time (UTC)", f"{_time(h.time)} ({h.time})"),
            ("proposer", f"{names.get(h.proposer, '')} {h.proposer}".strip() or "(genesis)"),
            ("tx root", h.tx_root),
            ("validators", h.validators),
            ("config", h.config),
            (
                "commit",
                "none (genesis)"
                if block.commit is None
                else f"round {block.commit.round}, {len(block.commit.signatures)} signatures: "
                + ", ".join(names.get(d, _short(d)) for d, _ in block.commit.signatures),
            ),
        ],
    )
    if block.txs:
        render.print_table(
            "transactions",
            ["#", "hash", "kind", "author", "summary"],
            [
                (i, t.hash[:16], str(t.kind), names.get(t.author, _short(t.author)), _summary(t))
                for i, t in enumerate(block.txs)
            ],
            no_wrap=["hash"],
        )


def _summary(tx: Transaction) -> str:
    b = tx.body
    match tx.kind:
        case TxKind.JOIN_REQUEST:
            return f"{b['name']} as {'+'.join(b['roles'])}, power {b['power']}"
        case TxKind.APPROVE_MEMBER | TxKind.REMOVE_MEMBER:
            return _short(str(b["member"]))
        case TxKind.OPEN_ROUND:
            return (
                f"round {b['round']} from {b['base_model'][:12]}, deadline {b['deadline_height']}"
            )
        case TxKind.UPDATE:
            return f"round {b['round']}, {b['num_samples']} samples, blob {b['blob'][:12]}"
        case TxKind.VALIDATION:
            return f"{b['verdict']} ({b['reason']}) {b['update'][:12]}"
        case TxKind.AGGREGATE:
            return (
                f"round {b['round']}, {len(b['updates'])} updates, {b['rule']} -> {b['model'][:12]}"
            )
        case TxKind.MISBEHAVIOUR:
            return f"evidence against {_short(str(b['offender']))}"
        case TxKind.TLS_CERTIFICATE:
            return f"pins TLS certificate {b['fingerprint'][:16]}"
        case TxKind.TLS_MODE:
            return f"asks for TLS trust mode {b['mode']}"
    return ""


def _show_tx(
    tx: Transaction, height: int, index: int, names: dict[str, str], as_json: bool
) -> None:
    if as_json:
        render.print_json(
            {
                "hash": tx.hash,
                "height": height,
                "index": index,
                "signature_valid": tx.signature_valid(),
                **tx.to_dict(),
            }
        )
        return
    rows: list[tuple[str, Any]] = [
        ("hash", tx.hash),
        ("block", f"{height}, position {index}"),
        ("kind", str(tx.kind)),
        ("author", f"{names.get(tx.author, '')} {tx.author}".strip()),
        ("time (UTC)", f"{_time(tx.time)} ({tx.time})"),
        ("nonce", tx.nonce),
        ("signature", "valid" if tx.signature_valid() else "INVALID"),
    ]
    rows += [(f"body.{k}", v) for k, v in tx.body.items()]
    render.print_kv(f"transaction {tx.hash[:16]}", rows)
