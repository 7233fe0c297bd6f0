"""A terminal table with a header row: what a view hands the CLI when key/value rows
(:attr:`View.summary`) are not enough (models side by side, one row per score)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Grid:
    """``title``, column ``header`` and ``rows`` of text cells; the first column names the row
    (the CLI prints it bold, the others right-aligned); ``caption`` goes under the table."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str | None = None
