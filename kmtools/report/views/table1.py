"""Table 1 of "Softmax-based Classification is k-means Clustering" across a run's commands:
accuracy and mean confidence (from evaluate, else tailor, else attack onepixel), one-pixel
attack rate and the confidence of the fooled predictions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import Section, Table, dec, get, num, pct
from kmtools.report.layout import per_kind

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
                v = num(table.get(kind, {}).get(key))
                if v is not None:
                    row[field_] = (v, cmd)
                    break
        for field_, key in (("attack_rate", "rate"), ("attack_confidence", "mean_conf_fooled")):
            v = num(op.get(kind, {}).get(key))
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
            n = num(get(run.results(cmd), "onepixel.images")) if cmd == "attack-onepixel" else None
            n = n if n is not None else num(data.get("n"))
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


def section(run: Run) -> Section | None:
    """The Table 1 section, or ``None`` when no command gave its numbers."""
    t1 = table1(run)
    if t1 is None:
        return None
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
    return sec
