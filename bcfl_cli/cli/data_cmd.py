"""``bcfl data split``: per-member partitions of any labelled CSV, IID or label-skewed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bcfl_cli.cli import render
from bcfl_cli.cli.options import JsonOption, examples
from bcfl_cli.errors import UsageError

data_app = typer.Typer(name="data", help="Prepare local data files.", no_args_is_help=True)


@data_app.command(
    "split",
    epilog=examples(
        "bcfl data split sample_data/digits-train.csv --members 4 --dirichlet 0.5 --out parts"
    ),
)
def split(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="DATA.csv",
            help="CSV with a header, a label column and numeric features.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    members: Annotated[int, typer.Option("--members", "-n", min=1, help="Number of parts.")],
    dirichlet: Annotated[
        float | None,
        typer.Option(
            "--dirichlet",
            metavar="ALPHA",
            help="Label skew: class shares per member ~ Dirichlet(ALPHA); small = more skew.",
        ),
    ] = None,
    iid: Annotated[
        bool, typer.Option("--iid", help="Uniformly random parts (the default).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the split.")] = 0,
    label_column: Annotated[
        str, typer.Option("--label-column", help="Name of the label column.")
    ] = "label",
    min_samples: Annotated[
        int | None,
        typer.Option(
            "--min-samples",
            min=1,
            help="Dirichlet: redraw until every member has this many rows "
            "(default: min(10, rows / (5 members))).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            file_okay=False,
            help="Output directory (default: DATA-N-iid or DATA-N-dirALPHA next to DATA.csv).",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Split DATA.csv into DIR/member-01.csv ...; prints each member's label counts."""
    if iid and dirichlet is not None:
        raise UsageError("--iid and --dirichlet exclude each other")
    from bcfl_cli.fl.split import split_csv  # torch loads only when the command runs

    report = split_csv(
        source,
        members,
        seed=seed,
        dirichlet=dirichlet,
        label_column=label_column,
        out_dir=out,
        min_samples=min_samples,
    )
    if json_out:
        render.print_json(report.to_json())
        return
    labels = sorted({label for counts in report.label_counts for label in counts})
    render.print_table(
        f"{source.name}: {report.scheme} split, seed {report.seed}",
        ["file", "rows", *(str(label) for label in labels)],
        [
            (f.name, sum(c.values()), *(c.get(label, 0) for label in labels))
            for f, c in zip(report.files, report.label_counts, strict=True)
        ],
    )
    render.success(f"wrote {len(report.files)} files to {report.out_dir}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app)
