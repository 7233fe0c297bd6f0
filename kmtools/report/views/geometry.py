"""Views of the geometry results (``geometry distance|curvature|detect|path``): the terminal
summaries (Fawzi et al., Sec. II-V; Gauss-network paper Theorem 2) and the report figures
(curvature profiles, Fig. 4b; detection ROC, Fig. 8) for results without the command's own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import num
from kmtools.report.layout import primary_kind
from kmtools.report.views.base import AddFigure, Rows, View, register


def _results(doc: Mapping[str, Any]) -> dict[str, Any]:
    return dict(doc.get("results") or {})


def _data_name(doc: Mapping[str, Any]) -> str:
    data = doc.get("data")
    return str(data.get("name")) if isinstance(data, Mapping) and data.get("name") else "data"


def _median(d: Any) -> Any:
    return d.get("median") if isinstance(d, Mapping) else None


def distance_summary(doc: Mapping[str, Any]) -> tuple[str, Rows]:
    r = _results(doc)
    d = r.get("distance") or {}
    rows: Rows = [
        ("head", r.get("head_kind")),
        ("inputs", r.get("inputs")),
        ("DeepFool converged", r.get("converged")),
        ("z on the boundary", r.get("on_boundary")),
        ("‖r(x)‖ median", d.get("median")),
        ("‖r(x)‖ mean", d.get("mean")),
        ("‖r(x)‖ min / max", [d.get("min"), d.get("max")]),
    ]
    t2 = r.get("theorem2")
    if t2:
        lipv = (t2.get("lipschitz") or {}).get("value")
        rows += [
            ("Theorem 2 L_p", lipv if not isinstance(lipv, Mapping) else lipv.get("median")),
            ("bound (at x_adv) median", _median(t2.get("bound_at_adv"))),
            ("bound (any x̃) median", _median(t2.get("bound_any"))),
            ("bound (bisector) median", _median(t2.get("bound_margin"))),
            ("non-vacuous (any x̃)", t2.get("nonvacuous_any")),
            ("violations (bound > ‖r‖)", t2.get("violations")),
        ]
    return f"Boundary distance r(x) on {r.get('inputs')} {_data_name(doc)} inputs", rows


def curvature_summary(doc: Mapping[str, Any]) -> tuple[str, Rows]:
    r = _results(doc)
    tp, bp = r.get("top_mean_profile") or [], r.get("bottom_mean_profile") or []
    h = r.get("fd_step")
    rows: Rows = [
        ("head", r.get("head_kind")),
        ("inputs (valid)", f"{r.get('inputs')} ({r.get('valid')})"),
        ("input dimension d", r.get("dim")),
        ("Hessian-vector products", f"{r.get('hvp')}" + (f" (h = {h:.4g})" if h else "")),
        ("Lanczos steps", r.get("lanczos_steps")),
        ("largest κ (mean over inputs)", [round(v, 4) for v in tp[:5] if v is not None]),
        ("smallest κ (mean over inputs)", [round(v, 4) for v in bp[:5] if v is not None]),
        ("average curvature κ̄ (mean)", r.get("mean_curvature_mean")),
        ("κ̄ < 0 (paper: natural inputs)", r.get("fraction_negative")),
        ("distance median", r.get("distance_median")),
    ]
    return "Principal curvatures at z = x + r(x) (F = s_other - s_own)", rows


def detect_summary(doc: Mapping[str, Any]) -> tuple[str, Rows]:
    r = _results(doc)
    t0 = r.get("t0") or {}
    h = r.get("fd_step")
    best, t_best = r.get("best_balanced_accuracy"), r.get("best_threshold")
    rows: Rows = [
        ("head", r.get("head_kind")),
        ("clean / perturbed inputs", f"{r.get('clean')} / {r.get('perturbed')} "
                                     f"({(r.get('perturbed_source') or {}).get('kind')})"),
        ("Hessian-vector products", f"{r.get('hvp')}" + (f" (h = {h:.4g})" if r.get("hvp") == "fd" and h else "")),
        ("AUC of TP(FP) (Fig. 8)", r.get("auc")),
        ("t = 0: clean declared clean (TP)", t0.get("true_positive")),
        ("t = 0: perturbed declared clean (FP)", t0.get("false_positive")),
        ("best balanced accuracy (t)", f"{best:.3f} (t = {t_best:.3g})" if best is not None and t_best is not None
         else None),
        ("label recovery, all perturbed", r.get("recovery_all")),
        ("label recovery, flagged at t = 0", r.get("recovery_detected")),
        ("chance level of recovery", r.get("chance_recovery")),
        ("ρ median clean / perturbed", [(r.get("clean_rho") or {}).get("rho_median"),
                                         (r.get("perturbed_rho") or {}).get("rho_median")]),
    ]
    t2 = r.get("table2")
    if t2:
        rows += [("Table II: clean κ̄ < 0", t2.get("clean_negative")),
                 ("Table II: perturbed κ̄ > 0", t2.get("perturbed_positive"))]
    return f"Algorithm 2 at t = {r.get('threshold', 0.0):g} (paper: >95% detection, 74-92% recovery)", rows


def path_summary(doc: Mapping[str, Any]) -> tuple[str, Rows]:
    r = _results(doc)
    rate = r.get("success_rate")
    rows: Rows = [
        ("head", r.get("head_kind")),
        ("pairs (same predicted class)", r.get("pairs")),
        ("path found", f"{r.get('success')} ({rate:.0%})" if rate is not None else r.get("success")),
        ("straight segment already inside", r.get("straight_rate")),
        ("anchors (mean)", r.get("anchors_mean")),
        ("midpoint projections (mean)", r.get("projections_mean")),
        ("path length / straight length", r.get("length_ratio_mean")),
    ]
    failed = [p for p in r.get("paths") or [] if not p.get("success")]
    if failed:
        rows.append(("failed pairs", ", ".join(f"{p['pair'][0]}-{p['pair'][1]} ({p.get('reason')})"
                                               for p in failed[:5])))
    return "Algorithm 1: paths inside classification regions (paper: always found)", rows


_GENERIC_PARTS = {"results", "detect", "detection", "evaluation", "curvature", "roc", "summary", "metrics"}


def find_objects(
    obj: Any, test: Callable[[Mapping[str, Any]], bool], path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Mapping[str, Any]]]:
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
    kind = primary_kind(doc)
    return kind if kind != "model" else command


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
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
            if num(t0.get("false_positive")) is not None and num(t0.get("true_positive")) is not None:
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


register(View("geometry", figures=draw, order=60))
for _cmd, _summary in (("distance", distance_summary), ("curvature", curvature_summary),
                       ("detect", detect_summary), ("path", path_summary)):
    register(View(f"geometry-{_cmd}", summary=_summary, order=60))
