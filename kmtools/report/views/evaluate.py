"""``evaluate``: confidence and outliers, OOD detection, the Theorem 2 bound; confidence
histograms (the paper's Figures 1 and 3) and prototypes/outliers (Figure 3) from
``evaluate.npz`` (``<key>_confidence``, ``<key>_noise_confidence``, ``images``, ``labels``,
``images_confidence``: the names :func:`kmtools.runs.arrays.evaluate_arrays` writes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, FigureRef, Section, Table, dec, get, num, pct
from kmtools.report.layout import per_kind, primary_kind
from kmtools.report.views.base import AddFigure, View, register


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


register(View("evaluate", section=_outlier_section, figures=draw, order=10, own_figures=False))
