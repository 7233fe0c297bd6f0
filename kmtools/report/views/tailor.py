"""``tailor``: accuracy and confidence before and after TailorNetwork, settings, history and
training curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import FigureRef, Section, Table, dec, flatten, fmt, pct
from kmtools.report.layout import per_kind
from kmtools.report.views.base import AddFigure, View, register


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    history = run.results("tailor").get("history")
    if isinstance(history, list) and history:
        p = figures.training_curves(history, out / figures.NAMES["tailor"], force=force, svg=svg)
        add("tailor", "TailorNetwork fine-tuning: loss, accuracy and centroid movement per epoch.", p)


_TAILOR_SETTINGS = ("config", "files", "export", "history")


def _tailor_section(run: Run, figs: Mapping[str, list[FigureRef]]) -> Section | None:
    res = run.results("tailor")
    if not res and not figs.get("tailor"):
        return None
    sec = Section("TailorNetwork fine-tuning")
    kinds = per_kind(run.doc("tailor"))
    if kinds:
        rows = [
            [kind, pct(m.get("accuracy")), dec(m.get("mean_confidence")), dec(m.get("threshold"), 4)]
            for kind, m in ((k, kinds[k]) for k in figures.model_order(list(kinds)))
        ]
        sec.add(
            "Algorithm 1 (TailorNetwork): the layers below the head are fine-tuned so that the features "
            "move onto their class centroids; test accuracy and mean confidence before and after.",
            Table(["model", "accuracy", "mean confidence", "outlier threshold"], rows),
        )
    other = {k: v for k, v in res.items() if k not in _TAILOR_SETTINGS and k not in kinds}
    rows = [[k, fmt(v)] for k, v in flatten(other)]
    if rows:
        sec.add(Table(["result", "value"], rows))
    config = res.get("config")
    if isinstance(config, Mapping) and config:
        sec.add("Settings: " + ", ".join(f"{k}={fmt(v)}" for k, v in flatten(config)) + ".")
    history = res.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], Mapping):
        cols = [k for k in ("epoch", "loss", "accuracy", "centroid_shift", "mean_kappa") if k in history[-1]]
        sec.add(Table(cols, [[fmt(h.get(k)) for k in cols] for h in history if isinstance(h, Mapping)]))
    sec.add(*figs.get("tailor", []))
    return sec


register(View("tailor", section=_tailor_section, figures=draw, order=50))
