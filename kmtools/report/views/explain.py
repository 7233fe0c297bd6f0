"""``explain``: NEON's feature-adding AUC against its baselines (NEON paper, Algorithm 1,
Table I) before the generic table, and heatmaps from the command's arrays (``inputs``,
``relevance``, ``assignments``: :meth:`kmtools.explain.api.NeonRun.arrays`) when it drew none."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, Block, Table, dec, get, num
from kmtools.report.views.base import AddFigure, Rows, View, register
from kmtools.report.views.grid import Grid


def _explain_blocks(res: Mapping[str, Any]) -> list[Block]:
    """The feature-adding AUC of NEON and its baselines (NEON paper, Algorithm 1 and Table I)."""
    auc = res.get("auc")
    if not isinstance(auc, Mapping) or not auc:
        return []
    ref = get(res, "reference.auc")
    ref = ref if isinstance(ref, Mapping) else {}
    best = max((k for k in auc if num(auc[k]) is not None), key=lambda k: float(auc[k]), default=None)
    rows = [
        [str(m) + (" (best)" if m == best else ""), dec(v, 2), dec(ref.get(m), 2) if ref else MISSING]
        for m, v in auc.items()
    ]
    cols = ["method", "AUC", str(get(res, "reference.source") or "paper")]
    how = res.get("evaluation") if isinstance(res.get("evaluation"), Mapping) else {}
    text = (
        "Feature-adding AUC (NEON paper, Algorithm 1): features are added in the order of their "
        "relevance and the cluster assignment is re-scored; higher is better"
        + (f" ({how.get('imputation')} imputation, {how.get('repeats')} repeats)." if how else ".")
    )
    return [text, Table(cols if ref else cols[:2], [r if ref else r[:2] for r in rows])]


_SHOWN_ELSEWHERE = {"auc", "reference", "best_method"}


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    """NEON heatmaps: inputs and image-shaped relevance."""
    for cmd in run.family("explain"):
        if run.figures_of(cmd):
            continue  # the command drew its heatmaps itself: those are shown
        arr = run.arrays(cmd)
        rel, img = arr.get("relevance"), arr.get("inputs")
        if rel is None or img is None or rel.ndim < 3 or img.ndim < 3:
            continue
        assign = arr.get("assignments")
        titles = [f"cluster {int(a)}" for a in assign.ravel()] if assign is not None else None
        name = Path(figures.NAMES["neon"])
        p = figures.relevance_heatmaps(
            img, rel, out / f"{name.stem}_{cmd}{name.suffix}", titles=titles, force=force, svg=svg
        )
        add(
            cmd,
            f"NEON explanations ({cmd}): inputs and the relevance of each pixel for the assigned "
            "cluster, red for and blue against (cf. the NEON paper's Figures 7-8).",
            p,
        )


# ------------------------------------------------------------------ terminal tables
_LABELS = {"random": "random", "x2": "x²", "pda0": "PDA0", "pdacs": "PDAcs", "grad2": "(∇f)²",
           "gradxinput": "∇f⊙x", "ig10": "IG-10", "nca": "NCA", "neon": "NEON"}  # AUC key -> method


def summary(doc: Mapping[str, Any]) -> tuple[str, Rows]:
    """The terminal's key/value table of an ``explain`` document."""
    res = doc["results"]
    rows: Rows = [
        ("clusters", f"{res['clusters']} (K = {res['k']}, {res['k_choice']})"),
        ("layer", res["layer"]),
        ("inputs explained", res["n"]),
        ("features", res.get("feature_dim", res["d"])),
        ("stiffness β", res["beta"]),
        ("mean f_c", res["mean_score"]),
        ("assigned (f_c > 0)", f"{100 * res['assigned_fraction']:.1f}%"),
        ("Σ R / f_c (median)", get(res, "conservation.ratio_median")),
        ("cluster sizes", res["cluster_counts"]),
    ]
    if res.get("mode") == "network":
        rows.insert(2, ("LRP", f"γ = {res.get('gamma')} in convolutions, first layer {res.get('first_rule')}, "
                               f"engine {res.get('lrp_engine')}"))
    else:
        rows.insert(2, ("standardised", res.get("standardized")))
    data = doc.get("data") or {}
    return f"NEON on {data.get('name')} ({data.get('split')})", rows


def auc_grid(res: Mapping[str, Any]) -> Grid | None:
    """Table I as rows per method (narrow terminals): kmtools' AUC, and the paper's where it applies."""
    auc = res.get("auc")
    if not isinstance(auc, Mapping) or not auc:
        return None
    how = res.get("evaluation") or {}
    where = f" at layer {res['layer']}" if res.get("layer") != "input" else ""
    ref = get(res, "reference.auc")
    grid = Grid(f"feature-adding AUC{where} (Algorithm 1, {how.get('imputation')} imputation, "
                f"{how.get('repeats')} repeats; higher is better)",
                ["method", "kmtools"] + (["paper (Table I, winer)"] if isinstance(ref, Mapping) else []))
    for key, v in auc.items():
        cells = [f"{v:.2f}" + (" ◀ best" if key == res.get("best_method") else "")]
        if isinstance(ref, Mapping):
            cells.append(f"{ref[key]:.2f}" if key in ref else "—")
        grid.rows.append([f"{_LABELS.get(key, key)}  ({key})", *cells])
    return grid


register(View("explain", summary=summary, lead=_explain_blocks, shown_in_lead=frozenset(_SHOWN_ELSEWHERE),
              figures=draw, order=70))
for _cmd in ("explain-neon", "explain-evaluate"):
    register(View(_cmd, lead=_explain_blocks, shown_in_lead=frozenset(_SHOWN_ELSEWHERE), order=70))
