"""``attack deepfool``: norms of the minimal perturbation r(x) per model."""

from __future__ import annotations

from collections.abc import Mapping

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import FigureRef, Section, Table, fmt
from kmtools.report.layout import per_kind
from kmtools.report.views.base import View, register


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


register(View("attack-deepfool", section=_deepfool_section, order=40))
