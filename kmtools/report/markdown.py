"""The report as Markdown (figures referenced in ``<stem>_files/``), and a reader of its tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from kmtools.report.document import MISSING, FigureRef, Report, Table


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
