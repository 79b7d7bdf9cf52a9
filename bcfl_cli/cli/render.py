"""All of bcfl's terminal output: rich tables for people, plain JSON for scripts.

Command modules build rows and call these helpers, so that output looks the same everywhere and
``--json`` output is never wrapped, coloured or marked up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: Width used when output is not a terminal (pipes, files, tests): wide enough that a did:key
#: and a hash fit on one line, so the output stays greppable.
PIPE_WIDTH = 200


def console() -> Console:
    """Standard output; built per call so that redirected streams (tests, pipes) are honoured.

    ``emoji=False``: rich would otherwise turn the ``:key:`` inside every did into an emoji.
    """
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(highlight=False, soft_wrap=True, emoji=False, width=width)


def err_console() -> Console:
    width = None if sys.stderr.isatty() else PIPE_WIDTH
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, width=width)


def print_json(obj: Any) -> None:
    """Machine-readable output: stable key order, two-space indent, one document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def model_text(model: Any) -> str:
    """One line for a genesis' model section: the builtin architecture or the pinned app."""
    app = getattr(model, "app", None)
    if app is not None:
        return f"app {app.entry_point} (manifest {app.manifest[:16]}...)"
    return f"{model.architecture} {list(model.input_shape)}"


def print_kv(title: str | None, rows: Iterable[tuple[str, Any]]) -> None:
    """A two-column key/value table (no borders) for one object."""
    table = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(escape(key), escape(str(value)))
    console().print(table)


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    no_wrap: Sequence[str] = (),
) -> None:
    """A table with a header row; cells are shown verbatim (markup in data is escaped)."""
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, no_wrap=name in no_wrap, overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    console().print(table)


def print_line(text: str) -> None:
    """A line of text that may hold rich markup written by bcfl itself (never user data)."""
    console().print(text)


def print_raw(text: str) -> None:
    """Text exactly as given on stdout (a Markdown document): no markup, no wrapping."""
    sys.stdout.write(text)
    sys.stdout.flush()


def fault(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    """A failed check on stderr: a red title, then key: value lines (data escaped)."""
    console = err_console()
    console.print(f"[bold red]✗ {escape(title)}[/]")
    for key, value in rows:
        console.print(f"  [bold]{escape(key)}:[/] {escape(str(value))}")


def info(text: str) -> None:
    """Plain text; data is escaped, so a name like ``[red]`` is printed as it is."""
    console().print(escape(text))


def success(text: str) -> None:
    console().print(f"[green]✓[/] {escape(text)}")


def warn(text: str) -> None:
    """A warning on stderr: something legal but risky; never changes the exit code."""
    err_console().print(f"[bold yellow]warning:[/] {escape(text)}")


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields ``update(done, total)``. Silent when disabled (--json)
    or when stderr is not a terminal, so logs and pipes get no control sequences."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[bold]{escape(description)}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class StepUpdate(Protocol):
    """``update(step, total, loss=None)``: the shape of ``fl.training.StepReport``."""

    def __call__(self, step: int, total: int, /, loss: float | None = None) -> None: ...


@contextmanager
def training_bar(*, enabled: bool = True) -> Iterator[StepUpdate]:
    """``bcfl train``'s bar: steps done of the round's total and the recent mean loss; yields
    ``update(step, total, loss=None)``. Silent when disabled (--json) or stderr is no
    terminal."""

    def silent(step: int, total: int, /, loss: float | None = None) -> None:
        return None

    if not enabled or not sys.stderr.isatty():
        yield silent
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        "[bold]training",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err_console(),
        transient=False,
    ) as bar:
        task = bar.add_task("training", total=None, loss="-")

        def update(step: int, total: int, /, loss: float | None = None) -> None:
            shown = "-" if loss is None else f"{loss:.4f}"  # None: no loss formed (DP-SGD)
            bar.update(task, completed=step, total=total or None, loss=shown)

        yield update
