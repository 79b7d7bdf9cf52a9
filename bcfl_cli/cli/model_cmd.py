"""``bcfl model export|verify|card``: a round's global model, the proof it carries, its card.

``export`` writes the model, its proof bundle and its model card; ``verify`` and ``card`` read
only files and the genesis hash given on the command line (no store, no node, no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import HomeOption, JsonOption, examples
from bcfl_cli.cli.submit_cmd import NodeOption, transfer_progress
from bcfl_cli.client import NodeApi, export_model, node_url
from bcfl_cli.errors import NodeError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.provenance import MAX_PROOF_BYTES, ProofReport, card_json, card_markdown, verify_model

model_app = typer.Typer(name="model", help="The consortium's global models.", no_args_is_help=True)


def _node_api(home: Home, node: str | None) -> NodeApi | None:
    """--node, else this member's own node if one is recorded, else none (local blobs only)."""
    try:
        return NodeApi(node_url(home, node), home=home)
    except NodeError:
        if node:
            raise
        return None


@model_app.command(
    "export",
    epilog=examples("bcfl model export --round 3 --out global.safetensors --home homes/alice"),
)
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the model.", dir_okay=False)
    ],
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round",
            min=0,
            help="Round whose aggregate to export (default: the latest; 0: the initial model).",
            show_default=False,
        ),
    ] = None,
    proof: Annotated[
        Path | None,
        typer.Option(
            "--proof",
            help="Where to write the proof bundle (default: OUT's name with .proof.json.gz; "
            "gzip when the name ends in .gz, else plain JSON).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    no_proof: Annotated[
        bool, typer.Option("--no-proof", help="Write the model alone, without proof or card.")
    ] = False,
    node: NodeOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write a round's global model (safetensors), its proof bundle and its model card.

    The model comes from this member's blob store, else from --node URL (default: your node).
    The proof (MODEL.proof.json.gz) lets anyone check it offline (bcfl model verify); the
    card (MODEL.card.md) says how it was trained.
    """
    member_home = Home.resolve(home)
    proof_path = None if no_proof else proof or _beside(out, ".proof.json.gz")
    card_path = None if no_proof else _beside(proof_path or out, ".card.md")
    api = _node_api(member_home, node)
    try:
        with transfer_progress("fetching model", enabled=not json_out) as progress:
            outcome = export_model(
                member_home,
                out,
                round_number=round_number,
                api=api,
                progress=progress,
                proof=proof_path,
                card=card_path,
            )
    finally:
        if api is not None:
            api.close()
    if json_out:
        render.print_json(outcome.to_json())
        return
    source = "initial model (genesis)" if outcome.height is None else f"block {outcome.height}"
    render.success(
        f"round {outcome.round} model {outcome.model} ({outcome.size} bytes, from {source}) "
        f"written to {outcome.path}"
    )
    if outcome.proof is not None:
        render.info(
            f"proof ({outcome.proof_size} bytes) written to {outcome.proof}, "
            f"model card to {outcome.card}"
        )


def _beside(path: Path, suffix: str) -> Path:
    """``model.safetensors`` -> ``model<suffix>``; ``model.proof.json.gz`` -> ``model<suffix>``."""
    name = path.name.removesuffix(".gz").removesuffix(".proof.json")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return path.with_name(stem + suffix)


GenesisOption = Annotated[
    str,
    typer.Option(
        "--genesis",
        help="The consortium's genesis hash, pinned from a source you trust (not the proof).",
        show_default=False,
    ),
]
ProofArgument = Annotated[
    Path,
    typer.Argument(help="The proof bundle (MODEL.proof.json.gz, or plain JSON).", dir_okay=False),
]


def _read_proof(path: Path, genesis: str) -> bytes:
    if not is_hash_hex(genesis):
        raise UsageError(f"--genesis must be a 64-digit lowercase hex hash, found {genesis!r}")
    try:
        with path.expanduser().open("rb") as f:
            return f.read(MAX_PROOF_BYTES + 1)  # one byte over: the parser names the excess
    except OSError as exc:
        raise UsageError(f"cannot read proof {path}: {exc.strerror or exc}") from exc


@model_app.command(
    "verify",
    epilog=examples(
        "bcfl model verify global.safetensors global.proof.json.gz --genesis HASH",
        "bcfl model verify global.safetensors global.proof.json.gz --genesis HASH --json",
    ),
)
def verify(
    model: Annotated[Path, typer.Argument(help="The model file.", dir_okay=False)],
    proof: ProofArgument,
    genesis: GenesisOption,
    json_out: JsonOption = False,
) -> None:
    """Check a model against its proof, offline, from the genesis hash alone. Exit 0 or 1.

    Every header from genesis to the model's aggregate, each certificate against the
    validator set in force, the membership changes that move it, each transaction's place in
    its block, the rounds' lineage and the file's SHA-256 (docs/PROTOCOL.md §9).
    """
    report = verify_model(_read_proof(proof, genesis), genesis, model.expanduser())
    if json_out:
        render.print_json(report.to_dict())
    else:
        _render_report(report)
    raise typer.Exit(0 if report.ok else 1)


@model_app.command(
    "card", epilog=examples("bcfl model card global.proof.json.gz --genesis HASH --json")
)
def card(
    proof: ProofArgument,
    genesis: GenesisOption,
    json_out: JsonOption = False,
) -> None:
    """Print the model card (Markdown, or JSON) of a proof, after verifying it offline."""
    report = verify_model(_read_proof(proof, genesis), genesis)
    if report.fault is not None or report.history is None:
        _render_report(report)
        raise typer.Exit(1)
    if json_out:
        render.print_json(card_json(report.history))
    else:
        render.print_raw(card_markdown(report.history))


def _render_report(report: ProofReport) -> None:
    fault = report.fault
    if fault is None:
        render.success(
            f"model valid: round {report.round}, model {report.model or '-'}, "
            f"certified at block {report.height}"
        )
        render.print_kv(
            None,
            [
                ("genesis", report.chain_id),
                ("headers checked", report.headers),
                ("signatures checked", report.signatures),
                ("transactions proven", report.txs),
                ("proof size", f"{report.proof_bytes} bytes"),
                ("time", f"{report.elapsed_s:.2f} s"),
            ],
        )
        return
    render.fault(
        "model invalid",
        [
            ("code", fault.code),
            ("height", fault.height if fault.height is not None else "-"),
            ("transaction", fault.tx or "-"),
            ("reason", fault.message),
        ],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(model_app)
