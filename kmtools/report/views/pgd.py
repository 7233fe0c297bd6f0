"""``attack pgd``: robust accuracy, attack and effective rates per ε and model (terminal view;
the report shows its evidence section, :func:`kmtools.report.curves.evidence_sections`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmtools.report.curves import eps_label
from kmtools.report.views.base import TextTable, View, register
from kmtools.report.views.cells import ci, diff_ci, inputs, models, pct, pval


def sanity_line(key: str, sc: Mapping[str, Any]) -> str:
    """The gradient-masking checks of one model in one line (Carlini et al. 2019)."""
    ok = "passed" if sc.get("passed") else "FAILED (gradient masking?)"
    return (
        f"{key}: gradient-masking checks on {sc['inputs']} inputs {ok}: accuracy at ε = {sc['large_eps']:.3g} is "
        f"{pct(sc['accuracy_at_large_eps'])} (≤ 5% expected); at ε = {sc['eps_max']:.3g} "
        f"{pct(sc['accuracy_at_eps_max'])}, with {sc['stronger']['steps']} steps × {sc['stronger']['restarts']} "
        f"restarts {pct(sc['stronger']['accuracy'])} (must not be higher)"
    )


def _title(doc: Mapping[str, Any], d: Mapping[str, dict[str, Any]], settings: Mapping[str, Any] | None) -> str:
    o = next(iter(d.values()))
    how = f"{o['norm']}, {o['steps']} steps, {o['restarts']} restart(s), {o['loss']} loss"
    how += ", detector-aware" if o["adaptive"] else ""
    tgt = (settings or {}).get("target")
    how += f", target {tgt}" if tgt is not None else ""
    reused = (doc.get("run") or {}).get("records_reused")
    how += f"; {reused} records resumed" if reused else ""
    att = ", ".join(f"{k} {s['n']}" for k, s in d.items())
    return (f"PGD on {inputs(doc)} inputs ({how}). Accuracy over all inputs; rates over the clean-correct ones "
            f"({att}); [95% Wilson interval]; effective = fooled and not flagged as an outlier")


def tables(doc: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[TextTable | str]:
    """One row per ε and model: robust accuracy, attack rate and effective rate with 95% Wilson
    intervals; with two models the second's rows add the paired difference of robust accuracy
    (points, Newcombe interval) and McNemar's p; then each model's sanity checks."""
    d = models(doc, "pgd")
    paired = (doc.get("results") or {}).get("paired")
    cols = ["ε", "model", "robust accuracy", "attack rate", "effective rate"]
    if paired:
        cols += [f"Δ accuracy vs {paired['a']}", "McNemar p"]
    rows = []
    first = next(iter(d.values()))
    for i, e in enumerate(first["eps"]):
        for j, (key, s) in enumerate(d.items()):
            row: list[Any] = [eps_label(e, first["norm"]) if j == 0 else "", key,
                              ci(s["accuracy"][i], s["accuracy_lo"][i], s["accuracy_hi"][i]),
                              ci(s["rate"][i], s["rate_lo"][i], s["rate_hi"][i]),
                              ci(s["effective_rate"][i], s["effective_rate_lo"][i], s["effective_rate_hi"][i])]
            if paired:
                diff = {k: paired[k][i] for k in ("diff", "diff_lo", "diff_hi")}
                row += ["", ""] if j == 0 else [diff_ci(diff), pval(paired["p_value"][i])]
            rows.append(row)
    out: list[TextTable | str] = [TextTable(_title(doc, d, settings), cols, rows)]
    return out + [sanity_line(key, s["sanity"]) for key, s in d.items() if s.get("sanity")]


register(View("attack-pgd", tables=tables, order=35))
