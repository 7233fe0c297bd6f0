"""``attack fgsm``: accuracy and confidence against ε (the paper's Figure 2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, FigureRef, Section, Table, dec, fmt, pct
from kmtools.report.layout import per_kind
from kmtools.report.views.base import AddFigure, TextTable, View, register
from kmtools.report.views.cells import inputs, models
from kmtools.report.views.cells import pct as pct1


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    fg = per_kind(run.docs.get("attack-fgsm"), "fgsm")
    if fg:
        p = figures.fgsm_curves(fg, out / figures.NAMES["fgsm"], force=force, svg=svg)
        add("fgsm", "Accuracy and mean confidence under FGSM against the step size ε (cf. the paper's Figure 2).", p)


def _fgsm_section(run: Run, figs: Mapping[str, list[FigureRef]]) -> Section | None:
    fg = per_kind(run.docs.get("attack-fgsm"), "fgsm")
    sec = Section("FGSM")
    kinds = figures.model_order(list(fg))
    eps: list[Any] = []
    for k in kinds:
        e = fg[k].get("eps")
        if isinstance(e, list) and len(e) > len(eps):
            eps = e
    if eps:
        # (result key, column name, formatter); "confidence_wrong" only when a model reports it
        fields = [("accuracy", "accuracy", pct), ("confidence", "conf", dec)]
        if any(fg[k].get("confidence_wrong") for k in kinds):
            fields.append(("confidence_wrong", "conf wrong", dec))
        cols = ["ε", *(f"{k} {name}" for k in kinds for _, name, _ in fields)]
        rows = []
        for i, e in enumerate(eps):
            row = [fmt(e)]
            for k in kinds:
                for key, _, f in fields:
                    vals = fg[k].get(key) or []
                    row.append(f(vals[i]) if i < len(vals) else MISSING)
            rows.append(row)
        sec.add(
            "Accuracy and mean confidence of the predicted class under FGSM with step size ε "
            "(conf wrong: mean confidence of the misclassified inputs, as in the paper's Figure 2).",
            Table(cols, rows),
        )
    sec.add(*figs.get("fgsm", []))
    return sec if sec.has_content() else None


def tables(doc: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[TextTable | str]:
    """The terminal view, the paper's Figure 2 as a table: per ε and model the accuracy, the
    confidence of the wrong predictions and the share of the fooled inputs flagged as outliers."""
    d = models(doc, "fgsm")
    cols = ["ε"]
    for key in d:
        cols += [f"{key}\naccuracy", f"{key}\nconf wrong", f"{key}\noutliers"]
    first = next(iter(d.values()))
    rows = []
    for i, e in enumerate(first["eps"]):
        row: list[Any] = [f"{e:g}"]
        for s in d.values():
            row += [pct1(s["accuracy"][i]), s["confidence_wrong"][i], pct1(s["outlier_share_fooled"][i])]
        rows.append(row)
    clipped = " (clipped to [0, 1])" if first.get("clip") is not None else ""
    return [TextTable(f"FGSM on {inputs(doc)} inputs{clipped}; outliers: share of the fooled inputs flagged as "
                      "outliers", cols, rows)]


register(View("attack-fgsm", section=_fgsm_section, figures=draw, tables=tables, order=30))
