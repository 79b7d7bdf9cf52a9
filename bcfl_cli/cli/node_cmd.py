"""``bcfl node``: run this member's peer until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from bcfl_cli.cli.options import AppFolderOption, HomeOption, StoreUrlOption, examples
from bcfl_cli.errors import UsageError
from bcfl_cli.home import Home

DEFAULT_LISTEN = "127.0.0.1:7420"


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _saved_peers(home: Home) -> list[str]:
    try:
        data = json.loads((home.node_dir / "node.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    peers = data.get("peers") if isinstance(data, dict) else None
    return [p for p in peers if isinstance(p, str)] if isinstance(peers, list) else []


def node(
    home: HomeOption = None,
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            help="HOST:PORT to serve the peer API on (0.0.0.0 or :: needs --advertise).",
        ),
    ] = DEFAULT_LISTEN,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer",
            help="URL of another member's node (repeat). Default: the peers of the last run.",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option("--advertise", help="URL peers reach this node at (behind a proxy/TLS)."),
    ] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option("--passphrase-file", help="File holding the key passphrase."),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="One JSON object per log line.")
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            envvar="BCFL_LOG_LEVEL",
            case_sensitive=False,
            help="debug shows every vote, timeout and proposal; info shows commits, rounds, "
            "peers and refusals.",
        ),
    ] = LogLevel.info,
    empty_block_interval: Annotated[
        float,
        typer.Option(
            "--empty-block-interval",
            min=0.05,
            max=3600.0,
            help=(
                "Seconds a proposer waits for more before proposing a round's first updates"
                " while other trainers' are still expected (up to 4 intervals while more keep"
                " arriving); with --empty-blocks, also the pace of empty blocks."
            ),
        ),
    ] = 1.0,
    empty_blocks: Annotated[
        bool,
        typer.Option(
            "--empty-blocks/--no-empty-blocks",
            help=(
                "Propose an empty block every --empty-block-interval while there is nothing"
                " to do (the demo's and tests' pace). Default: a block only when there is"
                " something to put in it (a transaction, a round to open or close)."
            ),
        ),
    ] = False,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            min=1.0,
            max=86400.0,
            help=(
                "Without --empty-blocks: seconds between empty blocks while the open round's"
                " deadline is counted in blocks only (a genesis with training.deadline_blocks"
                " and no round_deadline_s); no other idle state makes blocks."
            ),
        ),
    ] = 60.0,
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            metavar="PART.csv",
            help="Train on this data (a CSV, or what the consortium's model app loads) and "
            "submit an update in every round.",
            exists=True,
        ),
    ] = None,
    app: AppFolderOption = None,
    attack: Annotated[
        str | None,
        typer.Option("--attack", hidden=True, help="Simulated attack (demo and tests only)."),
    ] = None,
    train_seed: Annotated[
        int | None,
        typer.Option(
            "--train-seed",
            min=0,
            help=(
                "Seed of local training with --train (default: a fresh random seed at each"
                " start). Fixed, every round's update is the same on every run and restart."
            ),
        ),
    ] = None,
    timeout_propose_ms: Annotated[
        int,
        typer.Option(
            "--timeout-propose-ms",
            min=100,
            help=(
                "Consensus propose timeout of round 0 (ms). All consensus timeouts double with"
                " each failed consensus round of a height (capped at 60 s) and restart with the"
                " next height."
            ),
        ),
    ] = 3000,
    blob_retention: Annotated[
        str,
        typer.Option(
            "--blob-retention",
            metavar="DURATION",
            help=(
                "Remove blobs that no block references once nobody has stored them for this"
                " long (90s, 30m, 24h, 7d), or 'keep' to keep every blob."
            ),
        ),
    ] = "24h",
    blob_quota_mib: Annotated[
        int | None,
        typer.Option(
            "--blob-quota-mib",
            min=1,
            help=(
                "MiB of blobs no block references that one member may keep on this node"
                " (default: 4 blobs the size of the genesis model, at least 16 MiB)."
            ),
        ),
    ] = None,
    verify_updates: Annotated[
        bool,
        typer.Option(
            "--verify-updates",
            help=(
                "Fetch every update and recompute every verdict and aggregate although this"
                " member does not validate (a validator always does; default: fetch each"
                " round's model only and take the validators' certified aggregate)."
            ),
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help=(
                "Serve HTTPS (TLS 1.3) with this member's node certificate (`bcfl tls init`),"
                " or with --tls-cert/--tls-key."
            ),
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            help="With --tls: a PEM certificate chain from a CA (ca mode).",
            exists=True,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="With --tls-cert: its PEM private key.", exists=True),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            help="Trust the CAs in this PEM file for https:// peers (default: the system's).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    allow_clear_text: Annotated[
        bool,
        typer.Option(
            "--allow-clear-text",
            help=(
                "Send and serve blobs and models over plain HTTP to other machines (default:"
                " only to loopback; use it only on a network you trust)."
            ),
        ),
    ] = False,
    store_url: StoreUrlOption = None,
) -> None:
    """Run this member's peer: sync, consensus, blob transfer and the training rounds."""
    from bcfl_cli.consensus.messages import TimeoutConfig
    from bcfl_cli.identity import load_identity, passphrase_from
    from bcfl_cli.node.app import advertised_authorities
    from bcfl_cli.node.blob_keeper import parse_retention
    from bcfl_cli.node.logging import setup_logging
    from bcfl_cli.node.server import NodeOptions, iter_peers, serve
    from bcfl_cli.node.tls import TlsOptions

    resolved = Home.resolve(home)
    host, port = _split_listen(listen)
    retention_s = parse_retention(blob_retention)
    advertised_authorities(host, port, advertise)  # a wildcard needs a name, before the key
    if store_url is not None:
        from bcfl_cli.store.ledger import use_store_url

        use_store_url(resolved, store_url)
    if train is not None:
        from bcfl_cli.node.trainer import check_app_at_start

        check_app_at_start(resolved, app)  # a missing or changed app stops the node here
    identity = load_identity(resolved, passphrase_from(passphrase_file, confirm=False))
    setup_logging(
        json_lines=log_json,
        log_file=resolved.node_dir / "node.log",
        level=logging.getLevelNamesMapping()[log_level.value.upper()],
    )
    peers = list(iter_peers(peer)) if peer else _saved_peers(resolved)
    options = NodeOptions(
        host=host,
        port=port,
        peers=tuple(peers),
        advertise=advertise,
        timeouts=TimeoutConfig(propose_ms=timeout_propose_ms),
        empty_block_interval_s=empty_block_interval,
        empty_blocks=empty_blocks,
        heartbeat_interval_s=heartbeat_interval,
        train=train,
        attack=attack,
        train_seed=train_seed,
        app=app,
        blob_retention_s=retention_s,
        blob_quota_bytes=None if blob_quota_mib is None else blob_quota_mib * 1024 * 1024,
        verify_updates=verify_updates,
        tls=TlsOptions(
            serve=tls or tls_cert is not None,
            cert_file=tls_cert,
            key_file=tls_key,
            ca_bundle=ca_bundle,
            allow_clear_text=allow_clear_text,
        ),
    )
    _run_to_exit(serve(resolved, identity, options))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's.

    A node is a few hundred small signed HTTP exchanges a round; with 10 nodes on 2 cores the
    event loop's own overhead is a measurable part of each (bench/README.md).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_to_exit(main: Coroutine[Any, Any, None]) -> None:
    """Run the node; once it has closed its stores, exit without waiting for helper threads.

    A thread may still be in a blob download or a training step, which only write temporary
    files or atomic blobs; waiting for them (as ``asyncio.run`` and the interpreter do) would
    hold a stopping node for up to a network timeout.
    """
    loop = new_event_loop()
    try:
        loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    busy = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    logging.getLogger("bcfl.node").info("exiting; not waiting for threads %s", busy[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def register(app: typer.Typer) -> None:
    app.command(
        "node",
        epilog=examples(
            "bcfl node --home homes/alice --listen 127.0.0.1:7420 --peer http://127.0.0.1:7421",
            "bcfl node --home homes/alice --train parts/member-01.csv --log-json",
            "bcfl node --home homes/dana --train parts/member-04.csv --verify-updates",
            "bcfl node --home homes/alice --tls --listen 0.0.0.0:7420"
            " --advertise https://alice.example:7420 --peer https://bob.example:7420",
            "bcfl node --home homes/alice --store-url postgresql+psycopg://alice@db.example.org/bcfl",
        ),
    )(node)
