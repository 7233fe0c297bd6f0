"""``attack torchattacks:NAME``: robust accuracy, attack and effective rates per model (terminal
view, found for every NAME; the report shows the generic results table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmtools.report.views.base import TextTable, View, register
from kmtools.report.views.cells import inputs, metric_table, models, paired_table, rate_ci


def tables(doc: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[TextTable | str]:
    """One column per model; with two models the paired test on the same inputs."""
    d = models(doc, "external")
    first = next(iter(d.values()))
    rows: list[tuple[str, list[Any]]] = [
        ("head", [s["head_kind"] for s in d.values()]),
        ("clean accuracy", [rate_ci(s["clean_accuracy"]) for s in d.values()]),
        ("robust accuracy", [rate_ci(s["robust_accuracy"]) for s in d.values()]),
        ("attack rate (fooled/attacked)", [rate_ci(s) for s in d.values()]),
        ("effective rate (fooled, not flagged)", [rate_ci(s["effective"]) for s in d.values()]),
        ("outlier threshold", [s["outlier_threshold"] for s in d.values()]),
    ]
    args = ", ".join(f"{k}={v}" for k, v in (first.get("kwargs") or {}).items()) or "defaults"  # values are repr()s
    name = str(first["attack"]).replace(":", ".")
    out: list[TextTable | str] = [metric_table(f"{name}({args}) on {inputs(doc)} inputs; [95% Wilson interval]",
                                               list(d), rows)]
    paired = (doc.get("results") or {}).get("paired")
    return out + ([paired_table(paired)] if paired else [])


register(View("attack-torchattacks", tables=tables, order=36))
