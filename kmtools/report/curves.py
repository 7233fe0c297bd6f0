"""Robustness curves: robust accuracy and effective attack success against ε, one line per
model with its 95% Wilson band (the issue's "accuracy against ε under PGD, softmax vs Gauss").

Input is what :meth:`kmtools.attacks.pgd.PGDResult.to_dict` writes (``eps``, ``accuracy``,
``accuracy_lo``/``_hi``, ``effective_rate``, ``effective_rate_lo``/``_hi``), keyed by model, so
the same function draws the curve for ``kmtools attack pgd --plot`` and for ``kmtools report``
from ``attack-pgd.json``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PANELS", "curve_figure", "curve_png_base64", "eps_label", "robustness_curve"]

PANELS: tuple[tuple[str, str], ...] = (
    ("accuracy", "robust accuracy"),
    ("effective_rate", "effective attack success\n(fooled, not flagged)"),
)


def eps_label(e: float, norm: str = "linf") -> str:
    """``8/255`` for ℓ∞ radii that are whole 255ths and print long as decimals, else ``0.05``."""
    k = e * 255
    short = f"{e:g}"
    if norm == "linf" and e > 0 and abs(k - round(k)) < 1e-6 and len(short) > 5:
        return f"{round(k)}/255"
    return short


def _band(vals: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in vals]


def curve_figure(summaries: Mapping[str, Mapping[str, Any]], *, title: str = "", norm: str = "linf") -> Any:
    """A matplotlib Figure: one panel per entry of :data:`PANELS` (rate against ε), a line per
    model with markers at the measured ε and a shaded 95% interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS), squeeze=False)[0]
    eps_all: list[float] = []
    for (key, label), ax in zip(PANELS, axes, strict=True):
        for name, d in summaries.items():
            if key not in d or "eps" not in d:
                continue
            order = sorted(range(len(d["eps"])), key=lambda i: float(d["eps"][i]))
            x = [float(d["eps"][i]) for i in order]
            y = [_band(d[key])[i] for i in order]
            lo = [_band(d.get(f"{key}_lo", [None] * len(x)))[i] for i in order]
            hi = [_band(d.get(f"{key}_hi", [None] * len(x)))[i] for i in order]
            (line,) = ax.plot(x, y, marker="o", label=name)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
            eps_all += x
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(label)
        ax.set_xlabel(f"ε ({norm})")
        ax.grid(alpha=0.3)
    ticks = sorted(set(eps_all))
    for ax in axes:
        if 0 < len(ticks) <= 8:
            ax.set_xticks(ticks)
            ax.set_xticklabels([eps_label(e, norm) for e in ticks], fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def robustness_curve(summaries: Mapping[str, Mapping[str, Any]], path: Path, *, title: str = "",
                     norm: str = "linf", force: bool = False) -> Path:
    """Write :func:`curve_figure` as a PNG to ``path`` (atomically; ``force`` overwrites)."""
    from kmtools.io import write_with

    fig = curve_figure(summaries, title=title, norm=norm)

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")

    return write_with(Path(path), writer, force)


def curve_png_base64(summaries: Mapping[str, Mapping[str, Any]], *, title: str = "", norm: str = "linf") -> str:
    """The same figure as a base64 PNG, for an HTML report's ``<img src="data:...">``."""
    buf = io.BytesIO()
    curve_figure(summaries, title=title, norm=norm).savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ report sections
def _ci(d: Mapping[str, Any] | None, key: str = "rate", pct: bool = True) -> str:
    """``"43.0% [38.7, 47.4]"`` from ``d[key]``, ``d[key_lo]``, ``d[key_hi]`` (``–`` if missing)."""
    if not d or d.get(key) is None:
        return "–"
    lo, hi = d.get(f"{key}_lo"), d.get(f"{key}_hi")
    f = (lambda v: f"{100 * float(v):.1f}") if pct else (lambda v: f"{float(v):.3f}")
    return f(d[key]) + ("%" if pct else "") + (f" [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else "")


def _at(d: Mapping[str, Any], i: int, key: str) -> dict[str, Any]:
    return {key: d[key][i], f"{key}_lo": d[f"{key}_lo"][i], f"{key}_hi": d[f"{key}_hi"][i]}


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    return f"{100 * d['diff']:+.1f} [{100 * d['diff_lo']:+.1f}, {100 * d['diff_hi']:+.1f}] pts, p = {d['p_value']:.2g}"


def evidence_sections(run: Any, fig_dir: str | Path, *, force: bool = False) -> list[Any]:
    """Report sections for ``kmtools report`` (the hook in :func:`kmtools.report.render.build`):
    PGD robust accuracy / attack rates with Wilson intervals, paired McNemar and the robustness
    curve (PNG in ``fig_dir``); one-pixel intervals, effective rate and the paired test; the OOD
    baselines (AUROC/AUPR bootstrap intervals, κ minus the best baseline) and calibration."""
    from kmtools.report.document import FigureRef, Section, Table
    from kmtools.report.layout import per_kind

    out: list[Any] = []
    pgd_doc = run.docs.get("attack-pgd")
    pg = per_kind(pgd_doc, "pgd")
    if pg and pgd_doc is not None:
        res = pgd_doc.get("results") or {}
        paired = res.get("paired")
        first = next(iter(pg.values()))
        norm = str(first.get("norm", "linf"))
        rows = []
        for i, e in enumerate(first.get("eps", [])):
            for j, (kind, d) in enumerate(pg.items()):
                row = [eps_label(e, norm) if j == 0 else "", kind, _ci(_at(d, i, "accuracy"), "accuracy"),
                       _ci(_at(d, i, "rate")), _ci(_at(d, i, "effective_rate"), "effective_rate")]
                if paired:
                    row.append("" if j == 0 else _diff({k: paired[k][i] for k in ("diff", "diff_lo", "diff_hi",
                                                                                  "p_value")}))
                rows.append(row)
        cols = ["ε", "model", "robust accuracy", "attack rate", "effective rate"]
        if paired:
            cols.append(f"Δ robust accuracy vs {paired['a']} (McNemar)")
        sec = Section("PGD: robustness against ε").add(
            f"PGD ({norm}, {first.get('steps')} steps, {first.get('restarts')} restart(s), {first.get('loss')} "
            f"loss{', detector-aware' if first.get('adaptive') else ''}) on the model's own scores. Rates over "
            "the clean-correct inputs; effective = fooled and not flagged as an outlier; [95% Wilson interval]; "
            "the paired difference has Newcombe's interval and McNemar's exact p.",
            Table(cols, rows),
        )
        sanity = [f"{k}: {'passed' if d['sanity'].get('passed') else 'FAILED'} (accuracy "
                  f"{100 * d['sanity']['accuracy_at_large_eps']:.1f}% at ε = {d['sanity']['large_eps']:g})"
                  for k, d in pg.items() if d.get("sanity")]
        if sanity:
            sec.add("Gradient-masking checks: " + "; ".join(sanity) + ".")
        fig = Path(fig_dir) / "pgd_robustness_curve.png"
        robustness_curve(pg, fig, title="PGD robustness curve (95% Wilson bands)", norm=norm, force=True)
        sec.add(FigureRef("Robust accuracy and effective attack success against ε, 95% Wilson bands.", fig))
        out.append(sec)
    op_doc = run.docs.get("attack-onepixel")
    op = per_kind(op_doc, "onepixel")
    if op and op_doc is not None and any("rate_lo" in d for d in op.values()):
        rows = [[k, _ci(d), _ci(d.get("effective")), _ci(d.get("robust_accuracy")),
                 str(d.get("fitness", "–")), str(d.get("success_rule", "–")), str(d.get("bounds", "–"))]
                for k, d in op.items()]
        sec = Section("One-pixel attack: intervals").add(
            Table(["model", "attack rate", "effective rate", "robust accuracy", "fitness", "success", "bounds"],
                  rows))
        p = (op_doc.get("results") or {}).get("paired")
        if p:
            sec.add(f"Paired, {p['b']} − {p['a']}: robust accuracy {_diff(p['robust'])}; attack rate "
                    f"{_diff(p['fooled'])}; effective rate {_diff(p['effective'])}.")
        out.append(sec)
    ev = run.docs.get("evaluate")
    base = ((ev or {}).get("results") or {}).get("ood_baselines")
    if base:
        sec = Section("OOD detection: Gauss network vs post-hoc baselines")
        sec.add("Scores of the original softmax network (MSP, max-logit, energy, Mahalanobis with tied covariance, "
                "k-NN on normalised features) beside the Gauss network's κ, on the same inputs; [bootstrap 95%].")
        for src, rep in base.items():
            rows = [[s + (" (best baseline)" if s == rep.get("best_baseline") else ""), _ci(m, "auroc", False),
                     _ci(m, "aupr_in", False), _ci(m, "aupr_out", False), f"{100 * m['fpr95']:.1f}%"]
                    for s, m in rep["scores"].items()]
            sec.add(f"OOD source: {src}", Table(["score", "AUROC", "AUPR-in", "AUPR-out", "FPR@95"], rows))
            vs = rep.get("kappa_vs_best")
            if vs and vs.get("diff_lo") is not None:
                sec.add(f"κ − {vs['baseline']}: ΔAUROC {vs['diff']:+.3f} [{vs['diff_lo']:+.3f}, "
                        f"{vs['diff_hi']:+.3f}] (paired bootstrap).")
        cal = ev["results"].get("calibration") if ev else None
        if cal:
            sec.add("Calibration on the in-distribution inputs:",
                    Table(["model", "ECE", "NLL", "Brier"],
                          [[k, _ci(c, "ece", False), f"{c['nll']:.4f}", f"{c['brier']:.4f}"] for k, c in cal.items()]))
        out.append(sec)
    return out
