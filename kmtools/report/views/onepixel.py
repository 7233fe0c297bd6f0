"""``attack onepixel``: attack rate, confidence in fooled predictions and outliers per model;
the confidence scatter (the paper's Figure 1) and fooled examples from ``attack-onepixel.npz``
(``x``, ``labels``, ``<key>_x_adv``, ``<key>_conf_before``, ``<key>_conf_adv``, ``<key>_success``,
``<key>_skipped``, ``<key>_pixel``, ``<key>_pred_adv``: :func:`kmtools.runs.arrays.onepixel_arrays`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import FigureRef, Section, Table, fmt, pct
from kmtools.report.layout import per_kind, primary_kind
from kmtools.report.views.base import AddFigure, View, register
from kmtools.report.views.evaluate import _classes, _prefixed
from kmtools.report.views.generic import own_figures


def _pick(arr: Mapping[str, np.ndarray], kind: str, name: str) -> np.ndarray | None:
    """``<kind>_<name>`` (per-model arrays) or the shared ``<name>``."""
    for key in (f"{kind}_{name}", name):
        if key in arr:
            return arr[key]
    return None


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    op_doc = run.docs.get("attack-onepixel")
    if op_doc is None:
        return
    arr = run.arrays("attack-onepixel")
    primary = primary_kind(op_doc)
    before = _prefixed(arr, "conf_before", primary)
    after = _prefixed(arr, "conf_adv", primary)
    success = _prefixed(arr, "success", primary)
    for kind, skipped in _prefixed(arr, "skipped", primary).items():  # skipped = misclassified already
        if kind in success:
            success[kind] = np.asarray(success[kind], bool) & ~np.asarray(skipped, bool)
    if before and after:
        p = figures.onepixel_scatter(
            before, after, out / figures.NAMES["onepixel_scatter"], success=success, force=force, svg=svg
        )
        add(
            "onepixel",
            "Confidence of x against that of its successful one-pixel attack x̃; point "
            "size grows with the square root of the count (cf. the paper's Figure 1).",
            p,
        )
    for kind in figures.model_order(list(before)):
        x = _pick(arr, kind, "x")
        x_adv = _pick(arr, kind, "x_adv")
        if x is None or x_adv is None or kind not in after:
            continue
        name = Path(figures.NAMES["onepixel_examples"])
        p = figures.onepixel_examples(
            x, x_adv, before[kind], after[kind], out / f"{name.stem}_{kind}{name.suffix}",
            success=success.get(kind), pixel=_pick(arr, kind, "pixel"), labels=_pick(arr, kind, "labels"),
            pred_adv=_pick(arr, kind, "pred_adv"), classes=_classes(run),
            title=f"{figures.label(kind)}: fooled one-pixel attacks, conf(x) → conf(x̃)", force=force, svg=svg,
        )
        add("onepixel", f"Fooled one-pixel attacks on the {figures.label(kind)}, changed pixel circled.", p)


def _drew_examples(figs: Mapping[str, list[FigureRef]]) -> bool:
    return any("examples" in r.path.name for r in figs.get("onepixel", []))


def hidden(run: Run, figs: Mapping[str, list[FigureRef]]) -> list[Path]:
    """The command's own example grids, when the report drew the fooled examples itself."""
    return run.figures_of("attack-onepixel") if _drew_examples(figs) else []


def _onepixel_section(run: Run, figs: Mapping[str, list[FigureRef]]) -> Section | None:
    op = per_kind(run.docs.get("attack-onepixel"), "onepixel")
    sec = Section("One-pixel attack")
    if op:
        keys = ("attacked", "skipped", "fooled", "rate", "mean_conf_fooled", "outlier_share")
        rows = [
            [
                kind,
                *(pct(op[kind].get(k)) if k in ("rate", "outlier_share") else fmt(op[kind].get(k)) for k in keys),
            ]
            for kind in figures.model_order(list(op))
        ]
        sec.add(
            "Differential evolution over one pixel's position and colour (Su et al.); the rate is the share "
            "of attacked (correctly classified) images whose prediction changed.",
            Table(["model", "attacked", "skipped", "fooled", "rate", "conf in fooled", "fooled flagged"], rows),
        )
    sec.add(*figs.get("onepixel", []))
    if not sec.has_content():
        return None
    return sec.add(*own_figures(run, "attack-onepixel", [] if _drew_examples(figs) else None))


register(View("attack-onepixel", section=_onepixel_section, figures=draw, hidden=hidden, order=20, own_figures=False))
