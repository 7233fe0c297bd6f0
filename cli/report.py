"""``kmtools report`` (HTML/Markdown report of run directories) and ``kmtools check`` (gates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kmtools.errors import DataError, GateError
from kmtools.report import gates
from kmtools_cli._options import OutputOptions, Use, grouped

RunArgs = Annotated[
    list[Path],
    typer.Argument(
        help="Run directories (written by a command's --out DIR) and/or result JSON files; merged in order.",
        show_default=False,
    ),
]


ReportOutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Report file: .html (self-contained) or .md (required).", show_default=False),
]


def _existing(paths: list[Path]) -> None:
    """Every path must exist: a missing one is a one-line error naming it and the fix (exit 1)."""
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such file or directory: give a run folder (a command's --out DIR), "
                            "a folder of them, or a result .json file")


@grouped
def report(
    *,
    output: Annotated[OutputOptions, Use(options={"out": ReportOutOpt})],
    paths: RunArgs,
    title: Annotated[str | None, typer.Option("--title", help="Report title.")] = None,
) -> None:
    """Write one report of the given runs: the softmax-vs-Gauss table in the layout of the paper's
    Table 1, outlier thresholds, OOD detection, attacks, training curves and figures.

    HTML is a single file (inline CSS, images embedded); Markdown keeps its figures in
    <name>_files/ beside it. --gate conditions are checked on the merged results, shown in the
    report, and fail the command with exit 3 after the report is written.

    Example: kmtools report runs/resnet18/ --out report.html --gate 'gauss.onepixel.rate<=0.15'
    """
    out = output.output()
    _existing(paths)
    if output.out is None:
        out.err.print("error: kmtools report needs --out FILE (.html or .md), e.g. --out report.html", highlight=False)
        raise typer.Exit(2)
    # imported when the command runs, so that --help does not load torch
    from kmtools.report.collect import load_run
    from kmtools.report.render import summary, write_report
    from kmtools.report.schema import envelope

    run = load_run(paths)
    for skipped, why in run.skipped:
        out.info(f"skipped {skipped}: {why}")
    doc = run.gate_doc()
    outcome = gates.check(output.gate or [], doc)  # a malformed gate stops here, before any drawing
    out.info(f"drawing figures and writing {output.out} …")
    path = write_report(run, output.out, output.force, gates=outcome, title=title)
    table = summary(run)
    results = {
        "out": str(path),
        "commands": run.commands,
        "figures": len(run.figures),
        "summary": table,
        "gates": [g.to_dict() for g in outcome],
    }

    def human(con: Console) -> None:
        con.print(f"wrote {path} ({', '.join(run.commands)})", highlight=False)
        if table:
            con.print(_summary_table(table))

    out.emit(envelope("report", results), human)
    out.gate(output.gate, doc)


@grouped
def check(
    *,
    output: Annotated[OutputOptions, Use(skip=("out", "force"))],
    paths: Annotated[list[Path], typer.Argument(help="Result JSON files and/or run directories.", show_default=False)],
    list_paths: Annotated[
        bool, typer.Option("--paths", help="List the paths gates can use on these results, and exit.")
    ] = False,
) -> None:
    """Check --gate conditions on existing results; exit 3 when any fails.

    A gate is PATH OP EXPR with OP one of < <= > >= == != and EXPR a number, a path or
    arithmetic of those; paths are dotted keys into the results. Several files or run
    directories are merged: each command's results also sit under its name
    (attack_onepixel.gauss.onepixel.rate). A list element is path[i] (fgsm.accuracy[-1]). A bad
    expression or unknown path is a usage error (exit 2) that lists the valid paths; --paths
    lists them. Grammar and paths of every command: docs/gates.md.

    Example: kmtools check runs/evaluate.json --gate 'gauss.accuracy>=softmax.accuracy-0.003'
    """
    out = output.output()
    if not output.gate and not list_paths:
        raise GateError(
            "kmtools check needs at least one --gate EXPR, e.g. --gate 'accuracy>=0.9' (--paths lists them)"
        )
    from kmtools.report.collect import load_run
    from kmtools.report.schema import envelope

    _existing(paths)
    doc = load_run(paths).gate_doc()
    if list_paths:
        valid = gates.valid_paths(doc)

        def show(con: Console) -> None:
            con.print("\n".join(valid), highlight=False, markup=False)

        out.emit(envelope("check", {"paths": valid}), show)
        return
    outcome = gates.check(output.gate or [], doc)
    failed = [g for g in outcome if not g.passed]
    results = {"passed": not failed, "gates": [g.to_dict() for g in outcome]}

    def human(con: Console) -> None:
        t = Table(show_header=True, title_justify="left")
        for col in ("result", "gate", "value", "bound"):
            t.add_column(col, justify="right" if col in ("value", "bound") else "left")
        for g in outcome:
            t.add_row(
                "[green]pass[/]" if g.passed else "[bold red]FAIL[/]",
                escape(g.expr),
                f"{g.value:.6g}",
                f"{g.bound:.6g}",
            )
        con.print(t)

    out.emit(envelope("check", results), human)
    if failed:
        out.err.print(
            "error: gate failed: " + "; ".join(f"{g.expr} (value {g.value:.6g})" for g in failed),
            highlight=False,
        )
        raise typer.Exit(3)


def _summary_table(rows: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="softmax vs Gauss (paper Table 1)", title_justify="left")
    for col in ("model", "accuracy", "confidence", "attack rate", "conf in fooled"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for kind, vals in rows.items():
        cells = [vals.get(k) for k in ("accuracy", "confidence", "attack_rate", "attack_confidence")]
        t.add_row(kind, *("-" if v is None else f"{v:.4g}" for v in cells))
    return t


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("check")(check)


__all__ = ["check", "register", "report"]
