"""``evaluate``: confidence and outliers, OOD detection, the Theorem 2 bound; confidence
histograms (the paper's Figures 1 and 3) and prototypes/outliers (Figure 3) from
``evaluate.npz`` (``<key>_confidence``, ``<key>_noise_confidence``, ``images``, ``labels``,
``images_confidence``: the names :func:`kmtools.runs.arrays.evaluate_arrays` writes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, FigureRef, Section, Table, dec, get, num, pct
from kmtools.report.layout import per_kind, primary_kind
from kmtools.report.views.base import AddFigure, View, register
from kmtools.report.views.grid import Grid


def _prefixed(arrays: Mapping[str, np.ndarray], name: str, primary: str) -> dict[str, np.ndarray]:
    """``{kind: arrays["<kind>_<name>"]}``, or ``{primary: arrays[name]}`` when unprefixed."""
    out = {
        k[: -len(name) - 1]: v
        for k, v in arrays.items()
        if k.endswith(f"_{name}") and k[: -len(name) - 1] and "_" not in k[: -len(name) - 1]
    }
    if not out and name in arrays:
        out[primary] = arrays[name]
    return out


def _classes(run: Run) -> list[str] | None:
    for doc in run.docs.values():
        data = doc.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("classes"), list):
            return [str(c) for c in data["classes"]]
    return None


def _threshold(run: Run) -> float | None:
    ev = run.results("evaluate")
    t = num(ev.get("threshold"))
    if t is None:
        for sub in per_kind(run.docs.get("evaluate")).values():
            t = num(sub.get("threshold"))
            if t is not None:
                break
    return t


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    ev_doc = run.docs.get("evaluate")
    if ev_doc is None:
        return
    arr = run.arrays("evaluate")
    primary = primary_kind(ev_doc)
    test = _prefixed(arr, "confidence", primary)
    noise = _prefixed(arr, "noise_confidence", primary)
    test = {k: v for k, v in test.items() if k not in ("noise", "images", "image")}
    if test:
        p = figures.confidence_histograms(
            test, out / figures.NAMES["confidence"], noise=noise or None, threshold=_threshold(run), force=force,
            svg=svg,
        )
        add(
            "confidence",
            "Confidence of the predicted class on test data and on noise images "
            "(softmax probability vs Gauss confidence κ; cf. the paper's Figures 1 and 3).",
            p,
        )
    kappa = arr.get("images_confidence")
    if "images" in arr and "labels" in arr and kappa is not None and len(kappa) == len(arr["images"]):
        p = figures.prototypes_outliers(
            arr["images"], arr["labels"], kappa, out / figures.NAMES["prototypes"], classes=_classes(run),
            threshold=_threshold(run), force=force, svg=svg,
        )
        whose = "gauss" if "gauss" in per_kind(ev_doc) else primary
        measure = "Gauss confidence κ" if whose == "gauss" else f"{figures.label(whose)}'s confidence"
        add(
            "prototypes",
            f"Prototypes (top) and outliers (bottom) of each class by the {measure}, printed "
            "above each image; red: below the outlier threshold (cf. the paper's Figure 3).",
            p,
        )


def _outlier_section(run: Run, figs: Mapping[str, list[FigureRef]]) -> Section | None:
    ev = per_kind(run.docs.get("evaluate"))
    op = per_kind(run.docs.get("attack-onepixel"), "onepixel")
    sec = Section("Confidence and outliers")
    rows = []
    for kind in figures.model_order(list(ev)):
        m = ev[kind]
        rows.append(
            [
                kind,
                dec(m.get("threshold"), 4),
                dec(m.get("recommended_threshold"), 4),
                pct(m.get("outlier_rate")),
                pct(op.get(kind, {}).get("outlier_share")),
            ]
        )
    if rows:
        sec.add(
            "An input is an outlier when the confidence of its predicted class is below the threshold "
            "(1/c for Gauss confidences, as in the paper). The recommended threshold is the one evaluate "
            "suggests from the data; the last column is the share of fooled one-pixel attacks flagged "
            "as outliers.",
            Table(["model", "threshold", "recommended threshold", "outlier rate", "fooled flagged"], rows),
        )
    ood = [
        [kind, str(get(m, "ood.source") or MISSING), dec(get(m, "ood.auroc"), 4), pct(get(m, "ood.fpr95"))]
        for kind, m in ((k, ev[k]) for k in figures.model_order(list(ev)))
        if isinstance(m.get("ood"), Mapping)
    ]
    if ood:
        sec.add(
            "Out-of-distribution detection by the predicted-class confidence "
            "(higher AUROC and lower FPR at 95% TPR are better).",
            Table(["model", "OOD source", "AUROC", "FPR95"], ood),
        )
    t2 = [
        [
            kind,
            str(get(m, "theorem2.space") or MISSING),
            *(dec(get(m, f"theorem2.{s}"), 4) for s in ("mean", "median", "min", "p05")),
            pct(get(m, "theorem2.vacuous_share")),
        ]
        for kind, m in ((k, ev[k]) for k in figures.model_order(list(ev)))
        if isinstance(m.get("theorem2"), Mapping)
    ]
    if t2:
        sec.add(
            "Theorem 2: lower bound on the perturbation that can change a prediction, over the test "
            "set: in input space when a Lipschitz modulus was given, else the feature-space margin; "
            "vacuous: inputs whose bound is zero.",
            Table(["model", "space", "mean", "median", "min", "5th percentile", "vacuous"], t2),
        )
    sec.add(*figs.get("confidence", []), *figs.get("prototypes", []))
    return sec if sec.has_content() else None


# ------------------------------------------------------------------ terminal tables
_ROWS: list[tuple[str, str]] = [
    ("head", "head_kind"),
    ("inputs", "n"),
    ("accuracy [95% CI]", "ci%:accuracy"),
    ("mean confidence", "mean_confidence"),
    ("mean confidence, correct", "mean_confidence_correct"),
    ("mean confidence, wrong", "mean_confidence_wrong"),
    ("outlier threshold", "threshold"),
    ("outlier rate", "ci%:outlier_rate"),
    ("recommended threshold (95% of correct above)", "recommended_threshold"),
    ("  fitted on", "threshold_fit"),
    ("  reported on held-out inputs: correct kept", "rate:threshold_heldout.correct_kept"),
    ("  reported on held-out inputs: flagged", "rate:threshold_heldout.flagged"),
    ("OOD:", ""),
    ("boundary distance, exact (feature space): mean", "boundary.mean"),
    ("boundary distance, exact: median", "boundary.median"),
    ("boundary distance, exact: p05", "boundary.p05"),
    ("boundary distance, exact: min", "boundary.min"),
    ("boundary distance / L_p (input space, estimate): median", "est:boundary.input.median"),
    ("Thm 2 centroids (corollary, loose)", "theorem2.centroids"),
    ("Thm 2 feature margin: mean", "theorem2.feature_margin.mean"),
    ("Thm 2 feature margin: median", "theorem2.feature_margin.median"),
    ("Thm 2 feature margin: p05", "theorem2.feature_margin.p05"),
    ("Thm 2 feature margin: min", "theorem2.feature_margin.min"),
    ("Thm 2 vacuous share", "theorem2.vacuous_share"),
    ("Lipschitz modulus L_p", "theorem2.lipschitz"),
    ("Thm 2 bound ‖Δ‖: mean", "theorem2.input_bound.mean"),
    ("Thm 2 bound ‖Δ‖: median", "theorem2.input_bound.median"),
    ("Thm 2 bound ‖Δ‖: p05", "theorem2.input_bound.p05"),
    ("Thm 2 bound ‖Δ‖: min", "theorem2.input_bound.min"),
    ("accuracy-reject AUC", "reject.auc"),
    ("accuracy rejecting 10%", "reject.acc_at_reject_10"),
    ("min-cost reject (λ_r=0.25): reject rate", "reject.operating_point.reject_rate"),
    ("min-cost reject (λ_r=0.25): accuracy", "reject.operating_point.accuracy"),
    ("n-ball reject: reject rate", "reject.nball.operating_point.reject_rate"),
    ("n-ball reject: accuracy on accepted", "reject.nball.operating_point.accuracy"),
]
_OOD_ROWS: list[tuple[str, str]] = [
    ("inputs", "n"),
    ("mean confidence", "mean_ood_confidence"),
    ("flagged as outliers", "ood_outlier_rate"),
    ("flagged at the recommended threshold", "rate:flagged_at_recommended"),
    ("AUROC", "ci:auroc"),
    ("FPR at 95% TPR", "fpr95"),
]
_SCORE_NAMES = {"msp": "MSP (softmax)", "max_logit": "max-logit (softmax)", "energy": "energy (softmax)",
                "mahalanobis": "Mahalanobis (softmax features)", "knn": "k-NN (softmax features)",
                "kappa": "κ (Gauss network)"}


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_text(x) for x in v)
    return "-" if v is None else str(v)


def _cell(m: Mapping[str, Any], path: str) -> tuple[Any, str]:
    """(raw value, text) of one table cell; ``ci:``/``ci%:`` add ``path_lo``/``path_hi``,
    ``rate:`` formats a Wilson rate dict, ``est:`` marks an estimate unless L_p is a bound."""
    kind, _, rest = path.rpartition(":")
    if not kind:
        v = get(m, path)
        return v, _text(v)
    if kind == "rate":
        d = get(m, rest)
        if not isinstance(d, dict) or d.get("rate") is None:
            return None, "-"
        k = next((d[c] for c in ("kept", "flagged", "correct", "k") if c in d), None)
        return d, (f"{100 * d['rate']:.1f}% [{100 * d['rate_lo']:.1f}, {100 * d['rate_hi']:.1f}]"
                   + (f" {k}/{d['n']}" if k is not None else ""))
    if kind == "est":
        v = get(m, rest)
        if v is None:
            return None, "-"
        return v, _text(v) + ("" if get(m, "boundary.input_is_bound") else " (estimate)")
    head, _, leaf = rest.rpartition(".")
    pre = f"{head}." if head else ""
    v, lo, hi = get(m, rest), get(m, f"{pre}{leaf}_lo"), get(m, f"{pre}{leaf}_hi")
    if v is None:
        return None, "-"
    return v, _ci(v, lo, hi, pct=kind == "ci%")


def _ci(v: Any, lo: Any, hi: Any, pct: bool = False) -> str:
    """``v [lo, hi]`` (3 decimals, or a percentage with 1); ``-`` for no value."""
    if v is None:
        return "-"
    f = (lambda x: f"{100 * float(x):.1f}") if pct else (lambda x: f"{float(x):.3f}")
    tail = f" [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else ""
    return f(v) + ("%" if pct else "") + tail


def metrics_grid(per_model: Mapping[str, Mapping[str, Any]], title: str) -> Grid:
    """Rows = metrics, columns = models; rows where no model has a value are dropped. OOD
    rows come once per source (``OOD uniform: AUROC`` …); rates carry their intervals."""
    grid = Grid(title, ["metric", *per_model])
    sources: list[str] = []
    for m in per_model.values():
        sources += [s for s in (m.get("ood_by_source") or {}) if s not in sources]
    for label, path in _ROWS:
        if label == "OOD:":
            for src in sources:
                for sub, key in _OOD_ROWS:
                    kind, _, rest = key.rpartition(":")
                    cells = [_cell(m, f"{kind + ':' if kind else ''}ood_by_source.{src}.{rest}")
                             if src in (m.get("ood_by_source") or {}) else (None, "-") for m in per_model.values()]
                    if any(v is not None for v, _ in cells):
                        grid.rows.append([f"OOD {src}: {sub}", *(c for _, c in cells)])
            continue
        cells = [_cell(m, path) for m in per_model.values()]
        if any(v is not None for v, _ in cells):
            grid.rows.append([label, *(c for _, c in cells)])
    return grid


def baselines_grid(src: str, rep: Mapping[str, Any]) -> Grid:
    """One OOD source: a row per score with AUROC, AUPR-in, AUPR-out [bootstrap 95%] and FPR@95."""
    first = next(iter(rep["scores"].values()))
    grid = Grid(f"OOD {src}: {first['n_in']} in vs {first['n_out']} OOD inputs; baselines fitted on "
                f"{rep['n_train']} train inputs, k-NN k = {rep['knn_k']}; (bootstrap 95% intervals)",
                ["score", "AUROC", "AUPR-in", "AUPR-out", "FPR@95"])
    for name, m in rep["scores"].items():
        label = _SCORE_NAMES.get(name, name) + (" ← best baseline" if name == rep.get("best_baseline") else "")
        grid.rows.append([label, _ci(m["auroc"], m["auroc_lo"], m["auroc_hi"]),
                          _ci(m["aupr_in"], m["aupr_in_lo"], m["aupr_in_hi"]),
                          _ci(m["aupr_out"], m["aupr_out_lo"], m["aupr_out_hi"]),
                          _ci(m["fpr95"], None, None, pct=True)])
    vs = rep.get("kappa_vs_best")
    if vs:
        grid.caption = (f"κ − {vs['baseline']}: ΔAUROC {vs['diff']:+.3f} "
                        + (f"[{vs['diff_lo']:+.3f}, {vs['diff_hi']:+.3f}] (paired bootstrap)"
                           if vs["diff_lo"] is not None else ""))
    return grid


def calibration_grid(cal: Mapping[str, Any]) -> Grid:
    """ECE [bootstrap 95%], NLL and Brier per model (in-distribution inputs)."""
    grid = Grid("calibration on the in-distribution inputs (15 equal-width bins; κ normalised by "
                "softmax of log κ)", ["model", "ECE", "NLL", "Brier"])
    for k, c in cal.items():
        grid.rows.append([k, _ci(c["ece"], c["ece_lo"], c["ece_hi"]), f"{c['nll']:.4f}", f"{c['brier']:.4f}"])
    return grid


def terminal_grids(per_model: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Any] | None,
                   data: str) -> list[Grid]:
    """Every table ``kmtools evaluate`` prints: the metrics, then per OOD source the baselines
    and the calibration (with ``--baselines``)."""
    grids = [metrics_grid(per_model, f"evaluate on {data}; [95% interval: Wilson for rates, bootstrap for AUROC]")]
    if baselines is not None:
        grids += [baselines_grid(src, rep) for src, rep in baselines["ood_baselines"].items()]
        grids.append(calibration_grid(baselines["calibration"]))
    return grids


register(View("evaluate", section=_outlier_section, figures=draw, order=10, own_figures=False))
