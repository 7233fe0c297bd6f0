"""``attack fgsm``: accuracy and confidence against ε (the paper's Figure 2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, FigureRef, Section, Table, dec, fmt, pct
from kmtools.report.layout import per_kind
from kmtools.report.views.base import AddFigure, View, register


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


register(View("attack-fgsm", section=_fgsm_section, figures=draw, order=30))
