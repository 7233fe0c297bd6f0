"""Terminal cells of the attack views: rates in percent with their 95% intervals, paired
differences in points, p-values, and the tables every attack shares (one column per model;
the paired comparison of two models on the same inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kmtools.report.layout import per_kind
from kmtools.report.views.base import TextTable


def pct(v: Any) -> str:
    """``"43.0%"`` (``-`` when undefined)."""
    return "-" if v is None else f"{100 * float(v):.1f}%"


def ci(rate: Any, lo: Any, hi: Any) -> str:
    """``"43.0% [38.7, 47.4]"``: a rate with its 95% interval (``-`` when undefined)."""
    if rate is None:
        return "-"
    if lo is None or hi is None:
        return pct(rate)
    return f"{100 * float(rate):.1f}% [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def rate_ci(d: Mapping[str, Any] | None) -> str:
    """A ``wilson(...).to_dict()`` rate as ``"12.5% [9.0, 17.1] 25/200"``."""
    if not d or d.get("rate") is None:
        return "-"
    k = next((d[c] for c in ("fooled", "correct", "k") if c in d), None)
    return ci(d["rate"], d.get("rate_lo"), d.get("rate_hi")) + (f" {k}/{d['n']}" if k is not None else "")


def diff_ci(d: Mapping[str, Any]) -> str:
    """A paired difference ``{"diff", "diff_lo", "diff_hi"}`` in points: ``"+3.1 [-0.5, +6.8]"``."""
    if d.get("diff") is None:
        return "-"
    return f"{100 * d['diff']:+.1f} [{100 * d['diff_lo']:+.1f}, {100 * d['diff_hi']:+.1f}]"


def pval(v: Any) -> str:
    return "-" if v is None else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def inputs(doc: Mapping[str, Any]) -> str:
    """``"8 digits test"``: how many inputs of which data and split the run attacked."""
    data = doc.get("data") or {}
    return f"{data.get('n')} {data.get('name')} {data.get('split')}"


def models(doc: Mapping[str, Any], nest: str) -> dict[str, dict[str, Any]]:
    """``{key: summary}`` of each attacked model (the ``--compare`` layout's reader)."""
    return per_kind(doc, nest)


def metric_table(title: str, keys: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> TextTable:
    """Rows = metrics, one column per model (narrow enough for side-by-side comparisons)."""
    return TextTable(title, ["metric", *keys], [[label, *vals] for label, vals in rows])


def paired_table(p: Mapping[str, Any]) -> TextTable:
    """``paired()`` of two results as rows: robust accuracy over all shared inputs, attack and
    effective rates over the inputs both models attacked (Newcombe interval, McNemar test)."""
    rows: list[list[Any]] = []
    for key, label in (("robust", "robust accuracy"), ("fooled", "attack rate"), ("effective", "effective rate")):
        d = p[key]
        rows.append([label, diff_ci(d), f"{d['only_a']} / {d['only_b']}", pval(d["p_value"]), d["n"]])
    return TextTable(
        f"paired: {p['b']} − {p['a']} on the same images ({p['attacked_by_both']} attacked by both); "
        "difference in points [Newcombe 95% CI], McNemar exact test on the discordant images",
        ["", "difference (pts)", f"only {p['a']} / only {p['b']}", "McNemar p", "images"],
        rows,
    )
