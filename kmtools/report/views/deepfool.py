"""``attack deepfool``: norms of the minimal perturbation r(x) per model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import FigureRef, Section, Table, fmt
from kmtools.report.layout import per_kind
from kmtools.report.views.base import TextTable, View, register
from kmtools.report.views.cells import inputs, metric_table, models, pct


def _deepfool_section(run: Run, figs: Mapping[str, list[FigureRef]]) -> Section | None:
    df = per_kind(run.doc("attack-deepfool"), "deepfool")
    if not df:
        return None
    keys = ("images", "converged", "norm_mean", "norm_median", "norm_min", "norm_max", "iterations_mean")
    rows = [[kind, *(fmt(df[kind].get(k)) for k in keys)] for kind in figures.model_order(list(df))]
    lp = next((str(d.get("norm")) for d in df.values() if d.get("norm")), "")
    return Section("DeepFool").add(
        "The minimal perturbation r(x) that changes the prediction (Moosavi-Dezfooli et al.); norms "
        f"{'(' + lp + ') ' if lp else ''}over the inputs whose prediction flipped.",
        Table(["model", "inputs", "flipped", "‖r‖ mean", "‖r‖ median", "‖r‖ min", "‖r‖ max", "steps"], rows),
    )


def tables(doc: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[TextTable | str]:
    """The terminal view: one column per model, the norms of r(x) over the flipped inputs."""
    d = models(doc, "deepfool")
    first = next(iter(d.values()))
    kind = (doc.get("results") or {}).get("head_kind")
    rows: list[tuple[str, list[Any]]] = [
        ("head", [kind if k in ("model", "compare") else k for k in d]),  # keys are head kinds, or both are one
        ("inputs", [s["images"] for s in d.values()]),
        ("accuracy (clean)", [pct(s["accuracy"]) for s in d.values()]),
        ("prediction flipped", [s["flipped"] for s in d.values()]),
        (f"‖r‖ mean ({first['norm']})", [s["norm_mean"] for s in d.values()]),
        ("‖r‖ median", [s["norm_median"] for s in d.values()]),
        ("‖r‖ min", [s["norm_min"] for s in d.values()]),
        ("‖r‖ max", [s["norm_max"] for s in d.values()]),
        ("mean steps", [s["iterations_mean"] for s in d.values()]),
        ("mean confidence at x + r", [s["mean_conf_adv"] for s in d.values()]),
        ("flagged as outliers", [pct(s["outlier_share"]) for s in d.values()]),
    ]
    return [metric_table(f"DeepFool on {inputs(doc)} inputs (overshoot {first['overshoot']:g})", list(d), rows)]


register(View("attack-deepfool", section=_deepfool_section, tables=tables, order=40))
