"""Markdown and self-contained HTML reports of a :class:`~kmtools.report.collect.Run`.

The report is built once as a small document model (sections of text, tables and figures)
and written either as one HTML page (inline CSS, figures as base64 ``data:`` URIs, no external
URL at all) or as Markdown with its figures in ``<stem>_files/`` beside it.

Contents, each only where the run has the data: gate outcomes; the softmax-vs-Gauss summary in
the layout of the paper's Table 1 (accuracy, mean confidence, one-pixel attack rate, confidence
in fooled predictions); outlier thresholds; OOD detection; the Theorem 2 bound; confidence
histograms; FGSM curves; one-pixel examples and scatter; prototypes and outliers; DeepFool
norms; TailorNetwork training; NEON feature-adding AUC and heatmaps; boundary curvature profiles
and the detection ROC; other commands' results and figures; provenance (docs/report.md).

References: Hess et al., "Softmax-based Classification is k-means Clustering" (Table 1, Figures
1-3); Kauffmann et al., "From clustering to cluster explanations via neural networks" (NEON,
Algorithm 1, Table I); Fawzi et al., "Empirical study of the topology and geometry of deep
networks" (Fig. 4b, Algorithm 2).
"""

from __future__ import annotations

import base64
import html
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmtools import io
from kmtools.errors import ConfigError, OutputExistsError
from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.gates import GateResult

MISSING = "–"
_METRIC_KEYS = ("accuracy", "mean_confidence", "outlier_rate", "onepixel", "fgsm", "threshold")
# result keys that are never a head kind
_NOT_KINDS = {
    "ood",
    "theorem2",
    "reject",
    "history",
    "onepixel",
    "fgsm",
    "deepfool",
    "config",
    "options",
    "settings",
    "models",
}


# --------------------------------------------------------------------------------------------
# document model


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] | None = None  # HTML-only spanning header row


@dataclass
class FigureRef:
    caption: str
    path: Path


Block = str | Table | FigureRef


@dataclass
class Section:
    """A titled run of blocks: paragraphs (``str``), tables and figures, in order."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    def has_content(self) -> bool:
        return any(not isinstance(b, str) for b in self.blocks)


@dataclass
class Report:
    title: str
    sections: list[Section]


# --------------------------------------------------------------------------------------------
# formatting


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def pct(v: Any) -> str:
    f = _num(v)
    return MISSING if f is None else f"{100.0 * f:.2f}%"


def dec(v: Any, digits: int = 3) -> str:
    f = _num(v)
    return MISSING if f is None else f"{f:.{digits}f}"


def fmt(v: Any) -> str:
    """Generic value: ints as is, floats to 4 significant digits, short lists inline."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return MISSING if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if not v:
            return MISSING
        if len(v) <= 8 and all(not isinstance(x, (Mapping, list, tuple)) for x in v):
            return ", ".join(fmt(x) for x in v)
        return f"[{len(v)} values]"
    if isinstance(v, Mapping):
        return f"{{{len(v)} fields}}"
    return str(v)


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


# --------------------------------------------------------------------------------------------
# metrics per head kind


def _primary_kind(doc: Mapping[str, Any]) -> str:
    res = doc.get("results") or {}
    model = doc.get("model") or {}
    kind = res.get("head_kind") or (model.get("head_kind") if isinstance(model, Mapping) else None)
    return str(kind) if kind else "model"


def _looks_like_metrics(d: Any) -> bool:
    return isinstance(d, Mapping) and any(k in d for k in _METRIC_KEYS)


def per_kind(doc: Mapping[str, Any] | None, key: str | None = None) -> dict[str, dict[str, Any]]:
    """``{head_kind: metrics}`` from one command's document.

    With ``key`` (``"onepixel"``, ``"fgsm"``): ``results[key]`` is the primary model's and
    ``results[kind][key]`` each compared model's. Without: the top-level metrics of ``results``
    are the primary model's and every ``results[kind]`` sub-object holding metrics is a
    compared model's. When compared models are present the top level (a copy of the first
    model, as the commands write it) only fills gaps of the sub-object of the same kind.
    """
    if not doc:
        return {}
    res = doc.get("results") or {}
    primary = _primary_kind(doc)
    top = res.get(key) if key else res
    top_metrics: dict[str, Any] | None = None
    if isinstance(top, Mapping) and (key is not None or _looks_like_metrics(top)):
        top_metrics = {k: v for k, v in top.items() if key is not None or not _looks_like_metrics(v)}
    subs: dict[str, dict[str, Any]] = {}
    for kind, sub in res.items():
        if kind in _NOT_KINDS or not isinstance(sub, Mapping):
            continue
        part = sub.get(key) if key else sub
        if isinstance(part, Mapping) and (key is not None or _looks_like_metrics(part)):
            subs[kind] = dict(part)
    if not subs:
        return {primary: top_metrics} if top_metrics is not None else {}
    if top_metrics is not None and primary in subs:
        subs[primary] = {**top_metrics, **subs[primary]}
    return subs


SUMMARY_KEYS = ("accuracy", "confidence", "attack_rate", "attack_confidence")


def summary(run: Run) -> dict[str, dict[str, Any]]:
    """Table 1 numbers per head kind: accuracy, confidence, attack rate, confidence in fooled.

    Accuracy and mean confidence come from ``evaluate`` when it ran, else from ``tailor``'s
    test-set evaluation, else from the clean images of ``attack onepixel``; the attack rate and
    the confidence in fooled predictions from ``attack onepixel``. :func:`summary_sources`
    says which file gave each number.
    """
    return {kind: {k: v for k, (v, _) in vals.items()} for kind, vals in _summary(run).items()}


def summary_sources(run: Run) -> dict[str, dict[str, str | None]]:
    """``{kind: {field: command}}``: where each number of :func:`summary` comes from."""
    return {kind: {k: src for k, (_, src) in vals.items()} for kind, vals in _summary(run).items()}


def _summary(run: Run) -> dict[str, dict[str, tuple[float | None, str | None]]]:
    ev = per_kind(run.doc("evaluate"))
    tl = per_kind(run.doc("tailor"))
    op = per_kind(run.doc("attack-onepixel"), "onepixel")
    kinds = figures.model_order(sorted({*ev, *tl, *op}))
    out: dict[str, dict[str, tuple[float | None, str | None]]] = {}
    for kind in kinds:
        row: dict[str, tuple[float | None, str | None]] = {}
        for field_, key in (("accuracy", "accuracy"), ("confidence", "mean_confidence")):
            row[field_] = (None, None)
            for cmd, table in (("evaluate", ev), ("tailor", tl), ("attack-onepixel", op)):
                v = _num(table.get(kind, {}).get(key))
                if v is not None:
                    row[field_] = (v, cmd)
                    break
        for field_, key in (("attack_rate", "rate"), ("attack_confidence", "mean_conf_fooled")):
            v = _num(op.get(kind, {}).get(key))
            row[field_] = (v, "attack-onepixel" if v is not None else None)
        if any(v is not None for v, _ in row.values()):
            out[kind] = row
    return out


TABLE1_FIELDS = (
    ("accuracy", "accuracy", pct),
    ("confidence", "conf", dec),
    ("attack_rate", "attack rate", pct),
    ("attack_confidence", "attack conf", dec),
)


def _model_name(run: Run) -> str:
    for doc in run.docs.values():
        model = doc.get("model")
        if isinstance(model, Mapping):
            name = model.get("arch") or (Path(str(model["path"])).name if model.get("path") else None)
            if name:
                return str(name)
    return "model"


def table1_note(run: Run) -> str:
    """Which command and how many inputs each column of Table 1 comes from."""
    src = summary_sources(run)
    parts = []
    for field_, what in (("accuracy", "accuracy and confidence"), ("attack_rate", "attack columns")):
        cmds = sorted({c for s in src.values() if (c := s.get(field_))})
        if not cmds:
            continue
        described = []
        for cmd in cmds:
            doc = run.doc(cmd) or {}
            data: Mapping[str, Any] = doc["data"] if isinstance(doc.get("data"), Mapping) else {}
            n = _num(_get(run.results(cmd), "onepixel.images")) if cmd == "attack-onepixel" else None
            n = n if n is not None else _num(data.get("n"))
            bits = (data.get("name"), data.get("split"), f"{int(n)} inputs" if n is not None else None)
            detail = ", ".join(str(x) for x in bits if x)
            label = "attack onepixel" if cmd == "attack-onepixel" else cmd
            if cmd == "tailor":
                detail = "its test-set evaluation"
            described.append(f"{label} ({detail})" if detail else label)
        parts.append(f"{what} from {' and '.join(described)}")
    return ("Sources: " + "; ".join(parts) + ".") if parts else ""


def table1(run: Run) -> Table | None:
    rows = summary(run)
    if not rows:
        return None
    columns = ["network"]
    cells = [_model_name(run)]
    groups: list[tuple[str, int]] = [("", 1)]
    for kind, vals in rows.items():
        groups.append((figures.label(kind), len(TABLE1_FIELDS)))
        for key, head, f in TABLE1_FIELDS:
            columns.append(f"{kind} {head}")
            cells.append(f(vals.get(key)))
    return Table(columns, [cells], groups)


# --------------------------------------------------------------------------------------------
# figures drawn from the run's arrays


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
    t = _num(ev.get("threshold"))
    if t is None:
        for sub in per_kind(run.docs.get("evaluate")).values():
            t = _num(sub.get("threshold"))
            if t is not None:
                break
    return t


def _image_kappa(arrays: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
    for key in ("images_confidence", "image_confidence", "images_kappa", "gauss_images_confidence"):
        if key in arrays and len(arrays[key]) == n:
            return arrays[key]
    for key in ("gauss_confidence", "confidence"):
        if key in arrays and len(arrays[key]) == n:
            return arrays[key]
    return None


def draw_figures(run: Run, out_dir: str | Path, force: bool = False, *, svg: bool = True) -> dict[str, list[FigureRef]]:
    """Draw every figure the run's data allows into ``out_dir``.

    Returns ``{section: [FigureRef]}`` with sections ``confidence``, ``fgsm``, ``onepixel``,
    ``prototypes``, ``tailor``. Commands may call this to fill ``DIR/figures/``.
    """
    out = Path(out_dir)
    got: dict[str, list[FigureRef]] = {}

    def add(section: str, caption: str, path: Path) -> None:
        got.setdefault(section, []).append(FigureRef(caption, path))

    ev_doc = run.docs.get("evaluate")
    if ev_doc is not None:
        arr = run.arrays("evaluate")
        primary = _primary_kind(ev_doc)
        test = _prefixed(arr, "confidence", primary)
        noise = _prefixed(arr, "noise_confidence", primary)
        test = {k: v for k, v in test.items() if k not in ("noise", "images", "image")}
        if test:
            p = figures.confidence_histograms(
                test,
                out / figures.NAMES["confidence"],
                noise=noise or None,
                threshold=_threshold(run),
                force=force,
                svg=svg,
            )
            add(
                "confidence",
                "Confidence of the predicted class on test data and on noise images "
                "(softmax probability vs Gauss confidence κ; cf. the paper's Figures 1 and 3).",
                p,
            )
        if "images" in arr and "labels" in arr:
            kappa = _image_kappa(arr, len(arr["images"]))
            if kappa is not None:
                p = figures.prototypes_outliers(
                    arr["images"],
                    arr["labels"],
                    kappa,
                    out / figures.NAMES["prototypes"],
                    classes=_classes(run),
                    threshold=_threshold(run),
                    force=force,
                    svg=svg,
                )
                kinds = per_kind(ev_doc)
                whose = "gauss" if "gauss" in kinds else primary
                measure = "Gauss confidence κ" if whose == "gauss" else f"{figures.label(whose)}'s confidence"
                add(
                    "prototypes",
                    f"Prototypes (top) and outliers (bottom) of each class by the {measure}, printed "
                    "above each image; red: below the outlier threshold (cf. the paper's Figure 3).",
                    p,
                )

    fg = per_kind(run.docs.get("attack-fgsm"), "fgsm")
    if fg:
        p = figures.fgsm_curves(fg, out / figures.NAMES["fgsm"], force=force, svg=svg)
        add(
            "fgsm",
            "Accuracy and mean confidence under FGSM against the step size ε (cf. the paper's Figure 2).",
            p,
        )

    op_doc = run.docs.get("attack-onepixel")
    if op_doc is not None:
        arr = run.arrays("attack-onepixel")
        primary = _primary_kind(op_doc)
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
                x,
                x_adv,
                before[kind],
                after[kind],
                out / f"{name.stem}_{kind}{name.suffix}",
                success=success.get(kind),
                pixel=_pick(arr, kind, "pixel"),
                labels=_pick(arr, kind, "labels", "label", "y"),
                pred_adv=_pick(arr, kind, "pred_adv", "adv_labels"),
                classes=_classes(run),
                title=f"{figures.label(kind)}: fooled one-pixel attacks, conf(x) → conf(x̃)",
                force=force,
                svg=svg,
            )
            add(
                "onepixel",
                f"Fooled one-pixel attacks on the {figures.label(kind)}, changed pixel circled.",
                p,
            )

    history = run.results("tailor").get("history")
    if isinstance(history, list) and history:
        p = figures.training_curves(history, out / figures.NAMES["tailor"], force=force, svg=svg)
        add("tailor", "TailorNetwork fine-tuning: loss, accuracy and centroid movement per epoch.", p)

    _draw_explain(run, out, force, add, svg)
    _draw_geometry(run, out, force, add, svg)
    return got


_GENERIC_PARTS = {"results", "detect", "detection", "evaluation", "curvature", "roc", "summary", "metrics"}


def find_objects(obj: Any, test: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Mapping]]:
    """Every mapping inside ``obj`` (depth first, ``obj`` included) for which ``test(m)`` holds."""
    found: list[tuple[tuple[str, ...], Mapping]] = []
    if isinstance(obj, Mapping):
        if test(obj):
            found.append((path, obj))
        for k, v in obj.items():
            found.extend(find_objects(v, test, (*path, str(k))))
    return found


def _series_name(path: tuple[str, ...], command: str, doc: Mapping[str, Any]) -> str:
    """A legend name for a result found at ``path``: the head kind / model key it sits under."""
    parts = [p for p in path if p not in _GENERIC_PARTS]
    if parts:
        return ".".join(parts)
    kind = _primary_kind(doc)
    return kind if kind != "model" else command


def _draw_explain(run: Run, out: Path, force: bool, add: Any, svg: bool = True) -> None:
    """NEON heatmaps from an explain command's arrays: inputs and image-shaped relevance."""
    for cmd in run.family("explain"):
        if run.figures_of(cmd):
            continue  # the command drew its heatmaps itself: those are shown
        arr = run.arrays(cmd)
        rel_key = next(
            (k for k in ("relevance", "heatmaps", "heatmap", "R") if k in arr and arr[k].ndim >= 3),
            next((k for k in arr if k.endswith("_relevance") and arr[k].ndim >= 3), None),
        )
        img_key = next((k for k in ("x", "inputs", "images") if k in arr and arr[k].ndim >= 3), None)
        if rel_key is None or img_key is None:
            continue
        assign = next((arr[k] for k in ("assignments", "clusters", "assignment", "labels") if k in arr), None)
        titles = [f"cluster {int(a)}" for a in assign.ravel()] if assign is not None else None
        name = Path(figures.NAMES["neon"])
        p = figures.relevance_heatmaps(
            arr[img_key], arr[rel_key], out / f"{name.stem}_{cmd}{name.suffix}", titles=titles, force=force, svg=svg
        )
        add(
            cmd,
            f"NEON explanations ({cmd}): inputs and the relevance of each pixel for the assigned "
            "cluster, red for and blue against (cf. the NEON paper's Figures 7-8).",
            p,
        )


def _draw_geometry(run: Run, out: Path, force: bool, add: Any, svg: bool = True) -> None:
    """Curvature profiles and detection ROC curves found anywhere in geometry results (for
    results without the command's own figure, e.g. copied JSON or several models merged)."""
    for cmd in run.family("geometry"):
        if run.figures_of(cmd):
            continue  # the command drew its curvature profile / ROC itself: those are shown
        doc = run.docs[cmd]
        res = run.results(cmd)
        profiles = {
            _series_name(path, cmd, doc): m
            for path, m in find_objects(
                res, lambda m: isinstance(m.get("top_mean_profile"), list) and bool(m["top_mean_profile"])
            )
        }
        if profiles:
            name = Path(figures.NAMES["curvature"])
            p = figures.curvature_profiles(profiles, out / f"{name.stem}_{cmd}{name.suffix}", force=force, svg=svg)
            add(
                cmd,
                "Average principal curvatures of the decision boundary at boundary points near the "
                "inputs, largest on the left and smallest on the right (boundary-geometry paper, Fig. 4b).",
                p,
            )
        curves: dict[str, dict[str, Any]] = {}
        for path, m in find_objects(res, lambda m: isinstance(m.get("roc"), Mapping)):
            roc = m["roc"]
            fp = roc.get("false_positive", roc.get("fpr"))
            tp = roc.get("true_positive", roc.get("tpr"))
            if not isinstance(fp, list) or not isinstance(tp, list):
                continue
            t0: Mapping[str, Any] = m["t0"] if isinstance(m.get("t0"), Mapping) else {}
            point = None
            if _num(t0.get("false_positive")) is not None and _num(t0.get("true_positive")) is not None:
                point = (float(t0["false_positive"]), float(t0["true_positive"]))
            curves[_series_name(path, cmd, doc)] = {
                "false_positive": fp,
                "true_positive": tp,
                "auc": m.get("auc"),
                "point": point,
            }
        if curves:
            name = Path(figures.NAMES["roc"])
            p = figures.roc_curves(curves, out / f"{name.stem}_{cmd}{name.suffix}", force=force, svg=svg)
            add(
                cmd,
                "Detection of small adversarial perturbations by the sign of the average boundary "
                "curvature (Algorithm 2): clean inputs declared clean against perturbed inputs declared "
                "clean over the threshold t (boundary-geometry paper, Fig. 8).",
                p,
            )


def _pick(arr: Mapping[str, np.ndarray], kind: str, *names: str) -> np.ndarray | None:
    """The first of ``<kind>_<name>`` (per-model arrays) or the shared ``<name>`` that exists."""
    for name in names:
        for key in (f"{kind}_{name}", name):
            if key in arr:
                return arr[key]
    return None


# --------------------------------------------------------------------------------------------
# sections


def _gates_section(gates: Sequence[GateResult]) -> Section:
    rows = [[g.expr, fmt(g.value), fmt(g.bound), "pass" if g.passed else "FAIL"] for g in gates]
    failed = sum(not g.passed for g in gates)
    text = f"{len(gates) - failed} of {len(gates)} gates passed." if gates else "No gates."
    return Section("Gates").add(text, Table(["gate", "value", "bound", "result"], rows))


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
        [kind, str(_get(m, "ood.source") or MISSING), dec(_get(m, "ood.auroc"), 4), pct(_get(m, "ood.fpr95"))]
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
            str(_get(m, "theorem2.space") or MISSING),
            *(dec(_get(m, f"theorem2.{s}"), 4) for s in ("mean", "median", "min", "p05")),
            pct(_get(m, "theorem2.vacuous_share")),
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
    return sec if sec.has_content() else None


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


def _deepfool_section(run: Run) -> Section | None:
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
    rows = [[k, fmt(v)] for k, v in _flatten(other)]
    if rows:
        sec.add(Table(["result", "value"], rows))
    config = res.get("config")
    if isinstance(config, Mapping) and config:
        sec.add("Settings: " + ", ".join(f"{k}={fmt(v)}" for k, v in _flatten(config)) + ".")
    history = res.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], Mapping):
        cols = [k for k in ("epoch", "loss", "accuracy", "centroid_shift", "mean_kappa") if k in history[-1]]
        sec.add(Table(cols, [[fmt(h.get(k)) for k in cols] for h in history if isinstance(h, Mapping)]))
    sec.add(*figs.get("tailor", []))
    return sec


def own_figures(run: Run, command: str, paths: Sequence[Path] | None = None) -> list[FigureRef]:
    """The figures ``command`` wrote itself, captioned with their file and the command."""
    chosen = run.figures_of(command) if paths is None else paths
    return [FigureRef(f"{p.name}, written by kmtools {command.replace('-', ' ')}.", p) for p in chosen]


_MAX_ROWS = 80


def _explain_blocks(res: Mapping[str, Any]) -> list[Block]:
    """The feature-adding AUC of NEON and its baselines (NEON paper, Algorithm 1 and Table I)."""
    auc = res.get("auc")
    if not isinstance(auc, Mapping) or not auc:
        return []
    ref = _get(res, "reference.auc")
    ref = ref if isinstance(ref, Mapping) else {}
    best = max((k for k in auc if _num(auc[k]) is not None), key=lambda k: float(auc[k]), default=None)
    rows = [
        [str(m) + (" (best)" if m == best else ""), dec(v, 2), dec(ref.get(m), 2) if ref else MISSING]
        for m, v in auc.items()
    ]
    cols = ["method", "AUC", str(_get(res, "reference.source") or "paper")]
    how = res.get("evaluation") if isinstance(res.get("evaluation"), Mapping) else {}
    text = (
        "Feature-adding AUC (NEON paper, Algorithm 1): features are added in the order of their "
        "relevance and the cluster assignment is re-scored; higher is better"
        + (f" ({how.get('imputation')} imputation, {how.get('repeats')} repeats)." if how else ".")
    )
    return [text, Table(cols if ref else cols[:2], [r if ref else r[:2] for r in rows])]


_SHOWN_ELSEWHERE = {"auc", "reference", "best_method"}


def _generic_section(command: str, run: Run, figs: Mapping[str, list[FigureRef]]) -> Section:
    """Any command's results as a path/value table, with its figures (drawn and its own)."""
    res = run.results(command)
    sec = Section(command.replace("-", " "))
    lead = _explain_blocks(res) if command.startswith("explain") else []
    if lead:
        sec.add(*lead)
        res = {k: v for k, v in res.items() if k not in _SHOWN_ELSEWHERE}
    # file paths are shown as figures and in the provenance; "_private" keys are internals
    res = {k: v for k, v in res.items() if k != "files" and not str(k).startswith("_")}
    rows = [[k, fmt(v)] for k, v in _flatten(res)]
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
                f"{sum(float(v) for v in (doc.get('timings') or {}).values() if _num(v) is not None):.2f} s",
                f"kmtools {_get(doc, 'versions.kmtools')}, torch {_get(doc, 'versions.torch')}",
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


# commands with a section of their own; the others get a generic one
_OWN = ("evaluate", "attack-onepixel", "attack-fgsm", "attack-deepfool", "tailor", "attack-pgd")


def build(
    run: Run,
    fig_dir: str | Path,
    *,
    force: bool = False,
    gates: Sequence[GateResult] | None = None,
    title: str | None = None,
    svg: bool = True,
) -> Report:
    """The report's document model; figures are drawn into ``fig_dir`` (PNG, and SVG with ``svg``)."""
    figs = draw_figures(run, fig_dir, force=force, svg=svg)
    sections: list[Section] = []
    if gates:
        sections.append(_gates_section(gates))
    t1 = table1(run)
    if t1 is not None:
        sec = Section("Softmax network vs Gauss network").add(
            "In the layout of the paper's Table 1: test accuracy, mean confidence of the predicted "
            "class, share of images misled by a one-pixel attack and the mean confidence in those "
            "misclassifications (softmax confidences for the softmax network, Gauss confidences κ "
            "for the Gauss network).",
            t1,
        )
        note = table1_note(run)
        if note:
            sec.add(note)
        sections.append(sec)
    op_own = run.figures_of("attack-onepixel")
    superseded: list[Path] = []
    if any("examples" in r.path.name for r in figs.get("onepixel", [])):
        op_own, superseded = [], op_own  # the report drew the fooled examples itself
    fg_own = own_figures(run, "attack-fgsm")
    df_own = own_figures(run, "attack-deepfool")
    for part, own in (
        (_outlier_section(run, figs), []),
        (_onepixel_section(run, figs), own_figures(run, "attack-onepixel", op_own)),
        (_fgsm_section(run, figs), fg_own),
        (_deepfool_section(run), df_own),
        (_tailor_section(run, figs), own_figures(run, "tailor")),
    ):
        if part is not None:
            sections.append(part.add(*own))
    from kmtools.report.curves import evidence_sections  # intervals, PGD curve, OOD baselines

    sections += evidence_sections(run, fig_dir, force=force)
    for cmd in run.docs:
        if cmd not in _OWN:
            sections.append(_generic_section(cmd, run, figs))
    placed = {b.path.resolve() for sec in sections for b in sec.blocks if isinstance(b, FigureRef)}
    placed |= {p.resolve() for p in superseded}
    extra = [FigureRef(p.name, p) for p in run.figures if p.resolve() not in placed]
    if extra:
        sections.append(Section("Figures from the runs").add(*extra))
    sections.append(_provenance_section(run))
    return Report(title or f"kmtools report: {_model_name(run)}", sections)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.fail{color:#b00020;font-weight:bold}.pass{color:#1b7f2a}.note{font-size:.85em;color:#666}
"""


def _data_uri(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_cell(tag: str, text: str, attrs: str = "") -> str:
    cls = ' class="fail"' if text == "FAIL" else (' class="pass"' if text == "pass" else "")
    return f"<{tag}{attrs}{cls}>{html.escape(text)}</{tag}>"


def _html_table(t: Table) -> str:
    out = ["<table>"]
    cols = t.columns
    if t.groups:
        out.append("<tr>" + "".join(_html_cell("th", g, f' colspan="{n}"') for g, n in t.groups) + "</tr>")
        # under a group, drop the group prefix ("gauss accuracy" -> "accuracy")
        sub, i = [], 0
        for g, n in t.groups:
            for c in cols[i : i + n]:
                sub.append(c.split(" ", 1)[1] if g and " " in c else c)
            i += n
        cols = sub
    out.append("<tr>" + "".join(_html_cell("th", c) for c in cols) + "</tr>")
    out += ["<tr>" + "".join(_html_cell("td", c) for c in row) + "</tr>" for row in t.rows]
    out.append("</table>")
    return "\n".join(out)


def to_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    for sec in report.sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(_html_table(b))
            elif isinstance(b, FigureRef):
                parts.append(
                    f'<figure><img src="{_data_uri(b.path)}" alt="{html.escape(b.path.name)}" width="600">'
                    f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{html.escape(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_NUMERIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?$")


def _md_table(t: Table) -> str:
    """A pipe table; columns whose cells are all numbers (or missing) are right-aligned."""

    def numeric(i: int) -> bool:
        return all(_NUMERIC.match(r[i]) or r[i] == MISSING for r in t.rows if i < len(r))

    lines = ["| " + " | ".join(_md_escape(c) for c in t.columns) + " |"]
    lines.append("|" + "|".join("---:" if i and numeric(i) else ":---" for i in range(len(t.columns))) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def to_markdown(report: Report, link: Mapping[Path, str]) -> str:
    """Markdown text; ``link`` maps each figure's path to the reference written for it."""
    parts = [f"# {report.title}"]
    for sec in report.sections:
        parts.append(f"## {sec.title}")
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(_md_table(b))
            elif isinstance(b, FigureRef):
                parts.append(f"![{_md_escape(b.path.name)}]({link[b.path]})\n\n*{b.caption}*")
            else:
                parts.append(b)
    return "\n\n".join(parts) + "\n"


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The pipe tables of a Markdown report as lists of ``{column: cell}`` (for tests and tools)."""
    tables: list[list[dict[str, str]]] = []
    block: list[list[str]] = []

    def split(line: str) -> list[str]:
        cells, cur, esc = [], "", False
        for ch in line.strip()[1:-1]:
            if esc:
                cur += ch
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == "|":
                cells.append(cur.strip())
                cur = ""
            else:
                cur += ch
        cells.append(cur.strip())
        return cells

    for line in [*text.splitlines(), ""]:
        if line.startswith("|") and line.rstrip().endswith("|"):
            block.append(split(line))
        elif block:
            if len(block) >= 2:
                head = block[0]
                tables.append([dict(zip(head, row, strict=False)) for row in block[2:]])
            block = []
    return tables


# --------------------------------------------------------------------------------------------
# entry point


def write_report(
    run: Run,
    out_path: str | Path,
    force: bool = False,
    *,
    gates: Sequence[GateResult] | None = None,
    title: str | None = None,
) -> Path:
    """Write the report of ``run`` to ``out_path`` (``.html``/``.htm`` or ``.md``/``.markdown``).

    HTML is one self-contained file (PNG figures as ``data:`` URIs, no external reference).
    Markdown references its figures in ``<stem>_files/`` beside it (PNG, with an SVG copy of
    each figure the report drew). Nothing is overwritten without ``force``; the report file itself is written
    last and atomically, so a failure leaves no half-written report.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".markdown"):
        raise ConfigError(f"{out}: the report must end in .html or .md")
    io.check_writable(out, force)
    if suffix in (".html", ".htm"):
        with tempfile.TemporaryDirectory(prefix="kmtools-report-") as tmp:
            text = to_html(build(run, tmp, force=True, gates=gates, title=title, svg=False))
        return io.write_text(out, text, force)
    files = out.with_name(f"{out.stem}_files")
    report = build(run, files, force=force, gates=gates, title=title)
    link: dict[Path, str] = {}
    for f in (b for sec in report.sections for b in sec.blocks if isinstance(b, FigureRef)):
        target = files / f.path.name
        if f.path.resolve() != target.resolve():  # a run's own figure: copy it beside the report
            target = _free_name(target, set(link.values()), files)
            if target.exists() and not force:
                raise OutputExistsError(f"{target} already exists: pass --force to overwrite it")
            io.write_bytes(target, f.path.read_bytes(), force=True)
        link[f.path] = f"{files.name}/{target.name}"
    return io.write_text(out, to_markdown(report, link), force)


def _free_name(target: Path, used: set[str], files: Path) -> Path:
    n = 1
    cand = target
    while f"{files.name}/{cand.name}" in used:
        n += 1
        cand = target.with_name(f"{target.stem}_{n}{target.suffix}")
    return cand
