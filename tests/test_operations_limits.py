"""docs/OPERATIONS.md's limits table states what the code enforces, figure by figure.

Every row of "## Limits and their defaults" is bound, in ``_bindings``, to the constants (or
CLI defaults, or genesis defaults) that enforce it, each rendered the way the doc writes it
("8 MiB", "1,024 blobs", "10 min", "±30 s"). The tests fail when:

- a row of the table has no binding (a new limit must name its code);
- a binding names a row that is not in the table (a renamed or removed row);
- a rendered code value is not in its row's default cell (the doc or the code changed);
- a figure in a default cell is covered by no rendered value (a number nobody checks), unless
  ``NOT_LIMITS`` says why it is no limit (an HTTP status).

A renderer never rounds: a value that is not a whole number of the doc's unit renders with a
fraction ("8.5 MiB") and so no longer matches the doc.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

import bcfl_cli.node.app as node_app
from bcfl_cli import primitives
from bcfl_cli.apps import manifest as app_manifest
from bcfl_cli.apps import runner as app_runner
from bcfl_cli.chain import config as chain_config
from bcfl_cli.chain import state as chain_state
from bcfl_cli.cli.app import app
from bcfl_cli.client import api as client_api
from bcfl_cli.client import blobs as blob_fetch
from bcfl_cli.client import large_body
from bcfl_cli.client import transport as client
from bcfl_cli.fl import checks as fl_checks
from bcfl_cli.fl import data, tensorfile, tensors, update_file, update_summary
from bcfl_cli.fl.aggregation import stream
from bcfl_cli.fl.loaders import _checks as loader_checks
from bcfl_cli.fl.loaders import images
from bcfl_cli.identity import tls_cert
from bcfl_cli.node import (
    auth,
    blob_keeper,
    blob_routes,
    blob_service,
    budget,
    compare,
    connections,
    consensus_driver,
    limits,
    mempool,
    peers,
    server,
    traffic,
)
from bcfl_cli.node import sync as node_sync
from bcfl_cli.node import tls as node_tls
from bcfl_cli.node import trainer as node_trainer
from bcfl_cli.node.explorer import routes as explorer_routes
from bcfl_cli.protocol import block, encoding, spec, tx, txbodies
from bcfl_cli.provenance import bundle
from bcfl_cli.simulation import network as sim_network
from bcfl_cli.simulation import options as sim_options
from bcfl_cli.simulation import shared_checks, simulator
from bcfl_cli.store import backends, content_record, pin, scratch
from bcfl_cli.verify import sharing
from bcfl_cli.wire import schemas

DOC = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"
HEADING = "## Limits and their defaults"
KiB = 1024
MiB = 1024 * 1024

#: Plain bytes a block takes in a model proof of a chain with 4 validators, with a round every
#: 10 and every 100 blocks, as provenance/bundle.py's MAX_PROOF_BYTES comment states them
#: (bench/README.md, "Model proofs", measures 1.9 and 1.1 KB with certificates cut to their
#: least quorum, so these are the larger, all-signatures sizes). Measured, not enforced: the
#: doc's "30,000-50,000 blocks" is MAX_PROOF_BYTES over these, rounded down to ten thousands.
PROOF_BLOCK_BYTES = (2_100, 1_300)


#: Figures in a default cell that are no limit, each with why it is not bound here.
NOT_LIMITS: dict[str, dict[str, str]] = {
    "request bodies held": {
        "503 `busy`": "the HTTP refusal past the budget (tests/node/test_front_door.py)",
    },
    "blob size (models and updates)": {
        "(413)": "the HTTP refusal of a larger size (tests/node/test_blob_streaming.py)",
    },
    "explorer proof builds (`GET /explorer/proof/{round}`)": {
        "503 `busy`": "the HTTP refusal past the waiting bound (tests/node/test_explorer.py)",
        "(429)": "the HTTP refusal past the rates (tests/node/test_explorer.py)",
    },
}


# --- the doc's table --------------------------------------------------------------------------
def _table() -> dict[str, str]:
    """Limit name (first cell, as written) -> default cell."""
    text = DOC.read_text(encoding="utf-8")
    assert HEADING in text, f"{DOC.name} has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1]
    rows: dict[str, str] = {}
    started = False
    for line in section.splitlines():
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a limits row has {len(cells)} cells, not 3: {line}"
        if cells[0] == "limit" or set(cells[0]) <= {"-", ":"}:
            continue  # the header and the separator
        assert cells[0] not in rows, f"two rows named {cells[0]!r}"
        rows[cells[0]] = cells[1]
    assert len(rows) >= 30, f"only {len(rows)} rows read from {HEADING!r}"
    return rows


# --- rendering, the way the doc writes figures ------------------------------------------------
def _n(value: float) -> str:
    """A whole number with thousands separators; anything else with its fraction."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,}"


def mib(n: int) -> str:
    return f"{_n(n / MiB)} MiB"


def kib(n: int) -> str:
    return f"{_n(n / KiB)} KiB"


def s(seconds: float) -> str:
    return f"{_n(seconds)} s"


def mins(seconds: float) -> str:
    return f"{_n(seconds / 60)} min"


def hours(seconds: float) -> str:
    return f"{_n(seconds / 3600)} h"


def days(seconds: float) -> str:
    count = seconds / 86_400
    return f"{_n(count)} {'day' if count == 1 else 'days'}"


def times(count: int, one: str, many: str) -> str:
    return f"{_n(count)} {one if count == 1 else many}"


def power_of_two(n: int) -> str:
    exponent = n.bit_length() - 1
    return f"2^{exponent}" if n == 1 << exponent else _n(n)


def rate(per_s: float, burst: float) -> str:
    return f"{_n(per_s)} per s (burst {_n(burst)})"


def ms_to_s(ms: int) -> float:
    return ms / 1000


# --- where the values live outside module constants --------------------------------------------
def _param(path: str, option: str) -> Any:
    """The click parameter ``option`` of the command ``path`` ("members approve")."""
    command: Any = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    for param in command.params:
        if option in param.opts:
            return param
    raise AssertionError(f"`bcfl {path}` has no option {option}")


def _opt(path: str, option: str) -> str:
    """The option, rendered as the doc writes it, once the command is known to have it."""
    return f"`{_param(path, option).opts[0]}`"


def _default(path: str, option: str) -> Any:
    return _param(path, option).default


def _field(model: Any, name: str) -> str:
    """A pydantic field's name, once the model is known to have it."""
    assert name in model.model_fields, f"{model.__name__} has no field {name}"
    return name


def _example_training(key: str) -> Any:
    """A value of the ``[training]`` table of the shipped example consortium file."""
    import tomllib

    from bcfl_cli.consortium import example

    text = (Path(example.__file__).parent / "example.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)["training"][key]


def _bound(model: Any, name: str, kind: str) -> Any:
    """A pydantic field's ``ge`` / ``le`` constraint."""
    for item in model.model_fields[name].metadata:
        if hasattr(item, kind):
            return getattr(item, kind)
    raise AssertionError(f"{model.__name__}.{name} has no {kind} bound")


def _consortium_key(name: str) -> str:
    assert name in chain_config.OPTIONAL_CONSORTIUM_KEYS, f"no consortium key {name}"
    return name


def tx_metrics_cap() -> int:
    """The most metrics an update transaction carries (``protocol/txbodies.py``'s schema)."""
    names = {f"m{i}": "1" for i in range(64)}
    return max(n for n in range(65) if txbodies._metrics(dict(list(names.items())[:n])))


@cache
def _bindings() -> dict[str, list[str]]:
    """Row name -> the texts, rendered from the code, that its default cell must contain."""
    node = limits.NodeLimits()  # what a node runs with (NodeOptions.limits' default)
    join = node_app.JOIN_LIMITS
    guard = connections.ConnectionGuard()  # node_guard() lowers max_total only to fit the fd limit
    contract = spec.ContractRules()
    max_blob = _field(spec.ContractRules, "max_blob_bytes")
    pending_joins = _consortium_key("max_pending_joins")
    big = 1 << 40  # a genesis blob limit large enough that the quota is its multiple
    quota_factor = blob_keeper.default_quota(big) // big
    retention_cli = blob_keeper.parse_retention(_default("node", "--blob-retention"))
    proof_low, proof_high = (
        math.floor(bundle.MAX_PROOF_BYTES / per_block / 10_000) * 10_000
        for per_block in PROOF_BLOCK_BYTES
    )
    waits = [
        f"{s(_default(path, '--timeout'))} ({_opt(path, '--timeout')})"
        for path in ("submit", "members approve", "members remove")
    ]
    return {
        "request body (signed routes)": [mib(node.max_body_bytes)],
        "blob chunk": [mib(blob_routes.CHUNK_SIZE)],
        "blob size (models and updates)": [
            f"`contract.{max_blob}`",
            f"({mib(spec.DEFAULT_MAX_BLOB_BYTES)} by default)",
            f"({mib(contract.max_blob_bytes)} by default)",
        ],
        "join request body / rate": [
            f"{kib(node_app.MAX_TX_BODY)} / {rate(join.rate_per_s, join.burst)}"
            + (" per address" if join.address_factor == 1 else f" x{join.address_factor}"),
        ],
        "join requests relayed to peers": [
            f"{rate(limits.JOIN_RELAY_RATE_PER_S, limits.JOIN_RELAY_BURST)} per node",
        ],
        "pending join requests": [
            f"`consortium.{pending_joins}`",
            f"({_n(chain_config.DEFAULT_MAX_PENDING_JOINS)} by default)",
            f"`{_consortium_key('join_request_ttl_blocks')}`",
        ],
        "requests per peer": [
            f"{rate(node.rate_per_s, node.burst)} per signer",
            f"{_n(node.address_factor)}x that per address",
        ],
        "request head (line and headers)": [f"within {s(guard.head_timeout_s)}"],
        "open connections": [
            f"{_n(guard.max_per_address)} per client address",
            f"{_n(guard.max_total)} in all",
            f"open-file limit to {_n(guard.max_total + connections.RESERVED_FDS)}",
            f"serves {_n(connections.RESERVED_FDS)} connections fewer",
        ],
        "response not read by its client": [f"after {s(guard.write_stall_s)}"],
        "request body read": [
            f"whole within {s(auth.BODY_TIMEOUT_S)}",
            f"each piece within {s(node_app.BODY_READ_TIMEOUT_S)}",
        ],
        "request bodies held": [
            f"{mib(budget.BodyBudget().per_signer)} per signer",
            f"{mib(budget.BodyBudget().total)} in all",
        ],
        "signature freshness": [
            f"within ±{s(node.window_s)}",
            f"nonces remembered {s(limits.NONCE_MEMORY_WINDOWS * node.window_s)}",
        ],
        "block time ahead of a validator's clock, for its prevote": [
            s(ms_to_s(chain_state.MAX_CLOCK_DRIFT_MS)),
        ],
        "block time step over its parent": [days(ms_to_s(chain_state.MAX_BLOCK_TIME_STEP_MS))],
        "block time behind a validator's clock, for its prevote": [
            s(ms_to_s(chain_state.MAX_CLOCK_LAG_MS)),
            f"{_n(chain_state.MAX_BLOCK_TIME_STEP_MS / 86_400_000)}-day step limit",
        ],
        "round deadline in time": [
            f"`training.{_field(spec.TrainingPlan, 'round_deadline_s')}`",
            f"{s(spec.MIN_ROUND_DEADLINE_S)} to {days(spec.MAX_ROUND_DEADLINE_S)}",
            f"({s(_example_training('round_deadline_s'))} in the example file)",
            f"{days(ms_to_s(chain_state.MAX_BLOCK_TIME_STEP_MS))} is the largest step",
        ],
        "round deadline in blocks": [
            f"`training.{_field(spec.TrainingPlan, 'deadline_blocks')}`",
            f"{_n(_bound(spec.TrainingPlan, 'deadline_blocks', 'ge'))} to "
            f"{_n(_bound(spec.TrainingPlan, 'deadline_blocks', 'le'))}",
            f"({_n(spec.DEFAULT_DEADLINE_BLOCKS)} when the genesis names no deadline)",
        ],
        "empty blocks while idle": [
            f"default {s(_default('node', '--empty-block-interval'))}",
            f"at most every {s(server.DEFAULT_HEARTBEAT_S)}",
            f"at most every {s(_default('node', '--heartbeat-interval'))}",
            f"at most {s(consensus_driver.PREPARING_WAIT_S)}",
        ],
        "replay cache": [
            f"{_n(node.nonces_per_member)} nonces per member",
            f"{_n(node.max_nonces)} shared",
            f"{_n(join.nonces_per_member)} per signer on `/v1/join`",
        ],
        "transaction size": [kib(tx.MAX_TX_BYTES)],
        "JSON from peers (bodies, blocks, answers)": [
            mib(encoding.MAX_JSON_BYTES),
            f"nested at most {_n(encoding.MAX_JSON_DEPTH)} deep",
        ],
        "update blob header (safetensors)": [
            mib(tensors.MAX_HEADER_BYTES),
            f"nested at most {_n(tensors.MAX_HEADER_DEPTH)} deep",
            f"{_n(tensors.MAX_TENSORS)} tensors",
            f"{_n(tensors.MAX_DIMS)} dimensions a tensor",
            f"below {power_of_two(encoding.MAX_SAFE_INT + 1)}",
        ],
        "memory of the contract checking one update": [
            f"hashed {mib(tensorfile.HASH_CHUNK)} at a time",
            f"read {_n(tensorfile.PIECE_ELEMENTS)} at a time",
            f"({kib(tensorfile.PIECE_ELEMENTS * 4)} of single-precision floats)",
        ],
        "memory of an aggregate (proposer and every validator)": [
            f"hashed {mib(tensorfile.HASH_CHUNK)} at a time",
            f"combined {_n(stream.PART)} at a time",
            f"({kib(stream.PART * 8)} of double-precision floats a row)",
            f"at most {_n(fl_checks.MODEL_CACHE)} recomputed models",
        ],
        "memory of a trainer writing its update": [
            f"written and summed {_n(update_file.WRITE_CHUNK)} values at a time",
            f"a half-precision value past {_n(update_file.FLOAT16_MAX)} refused",
        ],
        "a peer's error body, upload status, chunk acknowledgement": [
            f"{kib(client.MAX_ERROR_BODY_BYTES)} each",
            f"{kib(blob_fetch.MAX_STATUS_BYTES)} each",
        ],
        "transactions per block / bytes per block": [
            f"{_n(block.MAX_TXS_PER_BLOCK)} transactions",
            f"{mib(chain_state.MAX_BLOCK_TX_BYTES)} of transactions",
        ],
        "blocks per `GET /v1/blocks`": [
            f"{_n(schemas.MAX_BLOCKS_PER_RESPONSE)} "
            f"(and {mib(node_app.MAX_BLOCKS_RESPONSE_BYTES)})",
        ],
        "mempool": [
            f"{_n(mempool.DEFAULT_MAX_TXS)} transactions",
            f", {mib(mempool.DEFAULT_MAX_BYTES)},",
            f"{_n(mempool.DEFAULT_PER_AUTHOR)} per author",
            f"at most {_n(mempool.DEFAULT_MAX_JOINS)} join requests",
        ],
        "blobs no block references, per member": [
            f"{_n(quota_factor)} x `contract.{max_blob}`",
            f"{_n(blob_keeper.QUOTA_BLOBS)} x `contract.{max_blob}`",
            f"{_n(blob_keeper.QUOTA_BLOBS)} x (the genesis initial model's size + "
            f"{mib(blob_keeper.QUOTA_SLACK_BYTES)})",
            f"at least {mib(blob_keeper.default_quota(1))}",
            f"at least {mib(blob_keeper.MIN_QUOTA_BYTES)}",
            _opt("node", "--blob-quota-mib"),
            f"{_n(blob_keeper.MAX_UNREFERENCED_PER_MEMBER)} blobs",
        ],
        "rounds shown in `/v1/status` (`traffic`, `unverified_rounds`)": [
            f"the last {_n(traffic.KEEP_ROUNDS)} rounds",
            f"the last {_n(blob_service.KEEP_UNVERIFIED_ROUNDS)} rounds",
        ],
        "unreferenced blob retention": [
            f"{hours(blob_keeper.DEFAULT_RETENTION_S)} ({_opt('node', '--blob-retention')}",
            f"{hours(retention_cli or 0)} (",
            "`keep` for ever" if blob_keeper.parse_retention("keep") is None else "`keep` ends",
            f"1/{_n(len(blob_keeper._PREFIXES) / blob_keeper.PREFIXES_PER_PASS)} of the store",
            f"at most {_n(blob_keeper.MAX_REMOVALS_PER_PASS)} removals",
        ],
        "uploads in progress (multi-chunk blobs)": [
            f"{_n(blob_routes.MAX_UPLOADS_PER_MEMBER)} per member",
            f"{_n(blob_routes.MAX_PENDING_UPLOADS)} in all",
            f"no chunk for {mins(blob_routes.STALE_UPLOAD_S)}",
        ],
        "update summaries (what a node computed of each update as its chunks arrived, read by "
        "its contract check)": [
            f"the last {_n(update_summary.MAX_UPDATE_SUMMARIES)} uploads",
            f"{mib(blob_routes.SUMMARY_BACKLOG_BYTES)} of an upload's chunks at most waiting",
            f"{mib(blob_service.SUMMARY_PIECE)} gathered at a time a download",
        ],
        "blobs whose content a node remembers (re-checked before an aggregate by file identity "
        "and XXH3-128 instead of SHA-256)": [
            f"the last {_n(content_record.MAX_RECORDED_BLOBS)} blobs",
        ],
        "chunks shared by the pushes of one update to its peers (each read and digested once)": [
            f"the last {_n(blob_fetch.SHARED_CHUNKS)} "
            f"({mib(blob_fetch.SHARED_CHUNKS * blob_routes.CHUNK_SIZE)} at "
            f"{mib(blob_routes.CHUNK_SIZE)} chunks)",
            f"{mib(node_trainer.OWN_SUMMARY_BACKLOG)} read at most waiting",
        ],
        "threads of a trainer's pushes (one a peer for a whole upload)": [
            f"{_n(node_trainer.PUSH_THREADS)}, a pool of their own",
            f"within the push's {s(node_trainer.PUBLISH_TIMEOUT_S)}",
        ],
        "scratch files a crash leaves in `blobs/tmp/`": [
            f"nothing has written to them for {hours(scratch.SCRATCH_STALE_S)}",
        ],
        "peer connect / read timeout": [
            f"{s(peers.CONNECT_TIMEOUT_S)} / {s(peers.READ_TIMEOUT_S)}",
        ],
        "blob fetch by a validator checking a proposal": [
            f"{s(consensus_driver.VALIDATION_FETCH_S)} for all its blobs",
        ],
        "blob fetch while catching up (sync)": [
            f"{s(blob_service.BLOB_FETCH_TIMEOUT_S)} a blob",
            f"at most {s(blob_service.PEER_BLOB_SLICE_S)}",
            f"its slice, {s(peers.BLOB_CLIENT_TIMEOUT_S)} without one",
            f"never under {s(peers.MIN_BLOB_CLIENT_TIMEOUT_S)}",
            f"; {node_sync.PREFETCH_BLOBS} downloads at once",
            f"), {node_sync.PREFETCH_MODELS} (a trainer-only member's models",
            f"at most {node_sync.PREFETCH_AHEAD} update blobs ahead",
            f"{mib(large_body.PIECE_BYTES)} at a time",
            f"handed on after {s(large_body.PIECE_WAIT_S)} however little came",
            f"once {kib(large_body.MAX_HEAD_BYTES)} came",
        ],
        "pending-transaction wait in `submit`, `members approve/remove`": [
            f"{s(client_api.DEFAULT_WAIT_S)} (`--timeout`)",
            *waits,
        ],
        "pin moved forward by a running node": [f"at most every {s(pin.PIN_INTERVAL_S)}"],
        "pin file size": [kib(pin.MAX_PIN_BYTES)],
        "peer certificates remembered (pinned mode)": [
            _n(node_tls.MAX_REMEMBERED_CERTS),
            f"at most {s(node_tls.PREFETCH_TIMEOUT_S)}",
        ],
        "TLS key file (`tls.key`, `tls.next.key`)": [kib(tls_cert.MAX_TLS_KEY_FILE_BYTES)],
        "PostgreSQL connection attempt (`--store-url`)": [s(backends.POSTGRES_CONNECT_TIMEOUT_S)],
        "`verify-chain --against` requests": [
            f"{_n(compare.COMPARE_MAX_REQUESTS)} at most",
            f"{s(compare.COMPARE_TIMEOUT_S)} each",
            times(compare.COMPARE_RETRIES, "retry", "retries"),
        ],
        "`verify-chain` helper processes": [
            f"{_n(sharing.DEPTH)} batches at most",
            kib(primitives.RESULT_FRAME_MAX),
            f"killed after {s(sharing.STOP_WAIT_S)}",
        ],
        "rounds per `GET /v1/rounds`": [
            _n(schemas.MAX_ROUNDS_PER_RESPONSE),
            f"{_n(explorer_routes.MAX_UPDATES_PER_RESPONSE)} updates",
        ],
        "explorer proof builds (`GET /explorer/proof/{round}`)": [
            f"{_n(explorer_routes.PROOF_MAX_WAITING)} waiting",
            f"1 per {_n(1 / explorer_routes.PROOF_RATE_PER_S)} s "
            f"(burst {_n(explorer_routes.PROOF_BURST)}) per client address",
            f"1 per {_n(1 / explorer_routes.PROOF_TOTAL_RATE_PER_S)} s "
            f"(burst {_n(explorer_routes.PROOF_TOTAL_BURST)}) in all",
            f"the last {_n(explorer_routes.PROOF_CACHE_ENTRIES)} rounds",
            f"{mib(explorer_routes.PROOF_CACHE_BYTES)} in all",
        ],
        "explorer status poll": [
            f"every {s(ms_to_s(_explorer_js_const('POLL_MS')))}",
            f"backing off to {s(ms_to_s(_explorer_js_const('MAX_BACKOFF_MS')))}",
        ],
        "model app source (what the genesis pins)": [
            f"{_n(spec.MAX_APP_FILES)} files",
            f"{mib(app_manifest.MAX_APP_SOURCE_BYTES)} in all",
            f"at most {_n(spec.MAX_APP_PATH_CHARS)} characters",
        ],
        "metrics a model app reports per update": [
            f"{_n(app_runner.MAX_APP_METRICS)} names",
            f"the update holds {_n(tx_metrics_cap())}",
        ],
        "`bcfl simulate` run": [
            f"{_n(sim_options.MAX_SIM_MEMBERS)} members",
            f"{_n(sim_network.MAX_EVENTS)} events",
            f"{_n(simulator.MAX_MS_PER_ROUND)} logical ms a planned round",
        ],
        "`bcfl simulate` memory per member": [
            f"{_n(simulator.MAX_MEMPOOL)} transactions in a member's mempool",
            f"{_n(shared_checks.MAX_SHARED_ANSWERS)} answers kept by `--share-checks`",
        ],
        "model proof read by `model verify` / `model card`": [
            f"{mib(bundle.MAX_PROOF_BYTES)} once decompressed",
            f"{_n(proof_low)}-{_n(proof_high)} blocks with 4 validators",
        ],
        "a member's local data file (CSV, `.npz`, Parquet)": [
            f"{mib(loader_checks.MAX_DATA_BYTES)} and {_n(data.MAX_ROWS)} rows",
        ],
        "a member's folder of images by class": [
            f"{_n(images.MAX_IMAGE_FILES)} images",
            f"{mib(images.MAX_IMAGE_BYTES)} a file",
            f"{_n(images.MAX_IMAGE_PIXELS)} pixels an image",
        ],
    }


def _explorer_js_const(name: str) -> int:
    """A ``const NAME = N;`` of the explorer's script (package data, not Python)."""
    script = Path(explorer_routes.__file__).parent / "static" / "explorer.js"
    found = re.search(rf"^const {name} = (\d+);", script.read_text(encoding="utf-8"), re.M)
    assert found, f"explorer.js has no const {name}"
    return int(found.group(1))


# --- the tests ------------------------------------------------------------------------------
_FIGURE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def test_every_binding_names_a_row() -> None:
    stale = sorted(set(_bindings()) - set(_table()))
    assert not stale, f"bound to rows that {DOC.name} no longer has: {stale}"


def test_every_exemption_is_in_its_row() -> None:
    table = _table()
    stale = [(r, t) for r, texts in NOT_LIMITS.items() for t in texts if t not in table.get(r, "")]
    assert not stale, f"NOT_LIMITS names texts the doc no longer has: {stale}"


@pytest.mark.parametrize("row", list(_table()))
def test_row_is_bound_to_code(row: str) -> None:
    assert (
        row in _bindings()
    ), f"the limits row {row!r} is bound to no code: add it to _bindings() in {__name__}"


@pytest.mark.parametrize("row", list(_table()))
def test_row_states_what_the_code_enforces(row: str) -> None:
    cell = _table()[row]
    missing = [text for text in _bindings().get(row, []) if text not in cell]
    assert not missing, f"{row!r}: the code says {missing}, the doc says {cell!r}"


@pytest.mark.parametrize("row", list(_table()))
def test_every_figure_in_a_row_is_bound(row: str) -> None:
    cell = _table()[row]
    covered = [False] * len(cell)
    for text in [*_bindings().get(row, []), *NOT_LIMITS.get(row, {})]:
        start = cell.find(text) if text else -1
        while start >= 0:
            covered[start : start + len(text)] = [True] * len(text)
            start = cell.find(text, start + 1)
    loose = [m.group() for m in _FIGURE.finditer(cell) if not all(covered[m.start() : m.end()])]
    assert not loose, f"{row!r}: figures no code value renders: {loose} in {cell!r}"
