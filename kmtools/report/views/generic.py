"""What every command's results get: a path/value table with its figures (for commands whose
view has no section of its own), the figures a command drew itself, provenance, gates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kmtools.report.collect import Run
from kmtools.report.document import MISSING, FigureRef, Section, Table, flatten, fmt, get, num
from kmtools.report.gates import GateResult


def own_figures(run: Run, command: str, paths: Sequence[Path] | None = None) -> list[FigureRef]:
    """The figures ``command`` wrote itself, captioned with their file and the command."""
    chosen = run.figures_of(command) if paths is None else paths
    return [FigureRef(f"{p.name}, written by kmtools {command.replace('-', ' ')}.", p) for p in chosen]


_MAX_ROWS = 80


def generic_section(command: str, run: Run, figs: Mapping[str, list[FigureRef]]) -> Section:
    """Any command's results as a path/value table, with its figures (drawn and its own); a
    view's ``lead`` blocks (e.g. explain's AUC table) come first."""
    from kmtools.report.views.base import view_for

    res = run.results(command)
    sec = Section(command.replace("-", " "))
    view = view_for(command)
    lead = view.lead(res) if view is not None and view.lead is not None else []
    if lead:
        sec.add(*lead)
        res = {k: v for k, v in res.items() if k not in view.shown_in_lead}  # type: ignore[union-attr]
    # file paths are shown as figures and in the provenance; "_private" keys are internals
    res = {k: v for k, v in res.items() if k != "files" and not str(k).startswith("_")}
    rows = [[k, fmt(v)] for k, v in flatten(res)]
    if rows:
        sec.add(Table(["result", "value"], rows[:_MAX_ROWS]))
        if len(rows) > _MAX_ROWS:
            sec.add(f"{len(rows) - _MAX_ROWS} more values in {run.sources[command].name}.")
    else:
        sec.add("No results.")
    sec.add(*figs.get(command, []))
    sec.add(*own_figures(run, command))
    return sec


def _provenance_section(run: Run) -> Section:
    rows = []
    for cmd, doc in run.docs.items():
        model: Mapping[str, Any] = doc.get("model") or {}
        data: Mapping[str, Any] = doc.get("data") or {}
        sha = str(model.get("sha256") or "")
        dsha = str(data.get("sha256") or "")
        rows.append(
            [
                cmd,
                run.sources[cmd].name,
                str(model.get("path") or model.get("arch") or MISSING) + (f" (sha256 {sha[:12]}…)" if sha else ""),
                str(data.get("name") or data.get("path") or MISSING)
                + (f" {data['split']}" if data.get("split") else "")
                + (f" (sha256 {dsha[:12]}…)" if dsha else ""),
                fmt(doc.get("seed")),
                str(doc.get("device") or MISSING),
                f"{sum(float(v) for v in (doc.get('timings') or {}).values() if num(v) is not None):.2f} s",
                f"kmtools {get(doc, 'versions.kmtools')}, torch {get(doc, 'versions.torch')}",
            ]
        )
    sec = Section("Provenance").add(
        Table(["command", "file", "model", "data", "seed", "device", "time", "versions"], rows)
    )
    if run.replaced:
        sec.add("Replaced by a later result of the same command: " + ", ".join(str(p) for p in run.replaced))
    if run.skipped:
        sec.add("Not read: " + "; ".join(f"{p.name} ({why})" for p, why in run.skipped))
    return sec


def _gates_section(gates: Sequence[GateResult]) -> Section:
    rows = [[g.expr, fmt(g.value), fmt(g.bound), "pass" if g.passed else "FAIL"] for g in gates]
    failed = sum(not g.passed for g in gates)
    text = f"{len(gates) - failed} of {len(gates)} gates passed." if gates else "No gates."
    return Section("Gates").add(text, Table(["gate", "value", "bound", "result"], rows))
