"""The single output object: data on stdout (rich table or one JSON document), progress
and hints on stderr, hidden with ``--quiet`` or when stderr is not a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kmtools.errors import ConfigError
from kmtools.io import dumps
from kmtools.report import gates

FORMATS = ("human", "json")


class Output:
    def __init__(self, fmt: str = "human", quiet: bool = False) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be human or json, not {fmt!r}")
        self.fmt = fmt
        self.quiet = quiet
        self.out = Console(soft_wrap=True)
        self.err = Console(stderr=True, soft_wrap=True)

    @property
    def json(self) -> bool:
        return self.fmt == "json"

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg, highlight=False)

    def warn(self, msg: str) -> None:
        self.err.print(f"warning: {msg}", highlight=False, style="yellow")

    def emit(self, doc: Mapping[str, Any], human: Callable[[Console], None] | None = None) -> None:
        """Print the result: ``doc`` as JSON, or the ``human`` rendering."""
        if self.json or human is None:
            sys.stdout.write(dumps(doc) + "\n")
            sys.stdout.flush()
        else:
            human(self.out)

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A ``progress(done, total, extra="")`` callback drawing a rich bar on stderr (when visible)."""
        if self.quiet or not self.err.is_terminal:
            yield lambda done, tot, extra="": None
            return
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.err, transient=True,
        )
        with bar:
            task = bar.add_task(description, total=total, extra="")

            def update(done: int, tot: int, extra: str = "") -> None:
                bar.update(task, completed=done, total=tot, extra=extra)

            yield update

    def gate(self, exprs: Sequence[str] | None, doc: Mapping[str, Any]) -> None:
        """Apply ``--gate`` conditions: exit 3 naming each failed condition and its value."""
        if not exprs:
            return
        results = gates.check(exprs, doc)
        failed = [r for r in results if not r.passed]
        for r in results:
            mark = "ok  " if r.passed else "FAIL"
            self.info(f"gate {mark} {r.expr}  (value {r.value:.6g}, bound {r.bound:.6g})")
        if failed:
            self.err.print(
                "error: gate failed: " + "; ".join(f"{r.expr} (value {r.value:.6g})" for r in failed),
                highlight=False,
            )
            raise typer.Exit(3)


def text_table(t: Any) -> Table:
    """A view's :class:`~kmtools.report.views.TextTable` as a rich table (first column bold;
    the first ``t.left`` columns left-aligned, the others right-aligned)."""
    table = Table(title=t.title, title_justify="left")
    for i, c in enumerate(t.columns):
        table.add_column(c, justify="left" if i < t.left else "right", style="bold" if i == 0 else None)
    for r in t.rows:
        table.add_row(*(v if isinstance(v, str) else fmt(v) for v in r))
    return table


def print_tables(con: Console, items: Sequence[Any]) -> None:
    """A view's terminal tables (and lines of text), in order."""
    for item in items:
        con.print(item if isinstance(item, str) else text_table(item))


def kv_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, fmt(v))
    return t


def grid_table(grid: Any) -> Table:
    """A :class:`kmtools.report.views.grid.Grid` as a rich table: the first column bold, the
    others right-aligned."""
    t = Table(title=grid.title, title_justify="left")
    for i, c in enumerate(grid.header):
        t.add_column(c, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
    for row in grid.rows:
        t.add_row(*row)
    if grid.caption:
        t.caption, t.caption_justify = grid.caption, "left"
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    if v is None:
        return "-"
    return str(v)


def jsonable(obj: Any) -> Any:
    return json.loads(dumps(obj))
