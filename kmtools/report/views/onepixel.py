"""``attack onepixel``: attack rate, confidence in fooled predictions and outliers per model;
the confidence scatter (the paper's Figure 1) and fooled examples from ``attack-onepixel.npz``
(``x``, ``labels``, ``<key>_x_adv``, ``<key>_conf_before``, ``<key>_conf_adv``, ``<key>_success``,
``<key>_skipped``, ``<key>_pixel``, ``<key>_pred_adv``: :func:`kmtools.runs.arrays.onepixel_arrays`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import FigureRef, Section, Table, fmt, pct
from kmtools.report.layout import per_kind, primary_kind
from kmtools.report.views.base import AddFigure, TextTable, View, register
from kmtools.report.views.cells import ci, inputs, metric_table, models, paired_table, pval, rate_ci
from kmtools.report.views.cells import pct as pct1
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


def _how(doc: Mapping[str, Any], d: Mapping[str, Any], settings: Mapping[str, Any] | None) -> str:
    """``1 pixel, population 400, ≤100 generations, fitness confidence, ...``: the run's settings."""
    px = d["pixels"]
    how = f"{px} pixel{'s' if px > 1 else ''}, population {d['popsize']}, ≤{d['maxiter']} generations, "
    how += f"fitness {d['fitness']}, success {d['success_rule']}, bounds {d['bounds']}"
    how += f"{', detector-aware' if d['adaptive'] else ''}, seed {doc.get('seed')}"
    tgt = (settings or {}).get("target")
    if tgt is not None:
        classes = (doc.get("data") or {}).get("classes") or []
        how += f", target {classes[tgt] if tgt < len(classes) else tgt}"
    reused = (doc.get("run") or {}).get("records_reused")
    return how + (f"; {reused} records resumed" if reused else "")


def _rows(doc: Mapping[str, Any], d: Mapping[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    keys = list(d)
    timings, new = doc.get("timings") or {}, (doc.get("run") or {}).get("attacked_this_run") or {}
    wall = {k: timings.get(f"attack_{k}", 0.0) for k in keys}
    by = {k: d[k].get("by_fitness") or {} for k in keys}
    return [
        ("head", [d[k]["head_kind"] for k in keys]),
        ("accuracy (clean)", [pct1(d[k]["accuracy"]) for k in keys]),
        ("mean confidence (clean)", [d[k]["mean_confidence"] for k in keys]),
        ("attacked", [d[k]["attacked"] for k in keys]),
        ("skipped (misclassified)", [d[k]["skipped"] for k in keys]),
        ("fooled", [d[k]["fooled"] for k in keys]),
        ("attack rate [95% CI] fooled/attacked", [rate_ci(d[k]) for k in keys]),
        ("effective rate (fooled, not flagged)", [rate_ci(d[k]["effective"]) for k in keys]),
        ("robust accuracy", [rate_ci(d[k]["robust_accuracy"]) for k in keys]),
        *[(f"  fitness {f}: attack rate", [rate_ci(by[k].get(f)) for k in keys])
          for f in ("confidence", "margin") if any(f in by[k] for k in keys)],
        *[("  confidence vs margin: McNemar p", [pval(by[k]["mcnemar"]["p_value"]) for k in keys])
          for _ in [0] if all("mcnemar" in by[k] for k in keys)],
        ("mean confidence of fooled", [d[k]["mean_conf_fooled"] for k in keys]),
        ("fooled flagged as outliers", [pct1(d[k]["outlier_share"]) for k in keys]),
        ("outlier threshold", [d[k]["outlier_threshold"] for k in keys]),
        ("mean generations", [d[k]["generations_mean"] for k in keys]),
        ("images per second (this run)",
         [new.get(k, 0) / wall[k] if wall[k] > 0 and new.get(k) else None for k in keys]),
    ]


def table1_text(files: Mapping[str, str], d: Mapping[str, dict[str, Any]]) -> TextTable:
    """The paper's Table 1 columns, one row per model: prediction (accuracy, mean confidence)
    and one-pixel attack (rate, mean confidence of the fooled predictions), plus the share of
    the fooled predictions flagged as outliers."""
    rows = [[k, Path(files.get(k, k)).stem, pct1(s["accuracy"]), s["mean_confidence"],
             ci(s["rate"], s.get("rate_lo"), s.get("rate_hi")), s["mean_conf_fooled"], pct1(s["outlier_share"])]
            for k, s in d.items()]
    return TextTable("Table 1 layout (Gauss-network paper)",
                     ["model", "file", "accuracy", "conf", "attack rate", "attack conf", "outliers"], rows, left=2)


def tables(doc: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[TextTable | str]:
    """The terminal view: one column per model, then (two models) Table 1 and the paired test."""
    d = models(doc, "onepixel")
    first = next(iter(d.values()))
    out: list[TextTable | str] = [metric_table(
        f"one-pixel attack on {inputs(doc)} inputs ({_how(doc, first, settings)})", list(d), _rows(doc, d))]
    res = doc.get("results") or {}
    if "paired" in res:
        out += [table1_text(res.get("models") or {}, d), paired_table(res["paired"])]
    return out


register(View("attack-onepixel", section=_onepixel_section, figures=draw, hidden=hidden, tables=tables, order=20,
              own_figures=False))
