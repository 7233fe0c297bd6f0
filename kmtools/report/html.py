"""The report as one self-contained HTML page: inline CSS, figures as base64 ``data:`` URIs,
no external URL."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from kmtools.report.document import FigureRef, Report, Table

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.fail{color:#b00020;font-weight:bold}.pass{color:#1b7f2a}.note{font-size:.85em;color:#666}
"""


def _data_uri(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_cell(tag: str, text: str, attrs: str = "") -> str:
    cls = ' class="fail"' if text == "FAIL" else (' class="pass"' if text == "pass" else "")
    return f"<{tag}{attrs}{cls}>{html.escape(text)}</{tag}>"


def _html_table(t: Table) -> str:
    out = ["<table>"]
    cols = t.columns
    if t.groups:
        out.append("<tr>" + "".join(_html_cell("th", g, f' colspan="{n}"') for g, n in t.groups) + "</tr>")
        # under a group, drop the group prefix ("gauss accuracy" -> "accuracy")
        sub, i = [], 0
        for g, n in t.groups:
            for c in cols[i : i + n]:
                sub.append(c.split(" ", 1)[1] if g and " " in c else c)
            i += n
        cols = sub
    out.append("<tr>" + "".join(_html_cell("th", c) for c in cols) + "</tr>")
    out += ["<tr>" + "".join(_html_cell("td", c) for c in row) + "</tr>" for row in t.rows]
    out.append("</table>")
    return "\n".join(out)


def to_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    for sec in report.sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(_html_table(b))
            elif isinstance(b, FigureRef):
                parts.append(
                    f'<figure><img src="{_data_uri(b.path)}" alt="{html.escape(b.path.name)}" width="600">'
                    f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{html.escape(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
