"""The report's document model (sections of paragraphs, tables and figures) and the value
formatting every view shares. Written out by :mod:`kmtools.report.html` and
:mod:`kmtools.report.markdown`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = "–"


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


def num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def pct(v: Any) -> str:
    f = num(v)
    return MISSING if f is None else f"{100.0 * f:.2f}%"


def dec(v: Any, digits: int = 3) -> str:
    f = num(v)
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


def get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.extend(flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out
