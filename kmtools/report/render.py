"""Markdown and self-contained HTML reports of a :class:`~kmtools.report.collect.Run`.

This module builds the report from the views (:mod:`kmtools.report.views`, one per result
kind, keyed by the document's ``command``) and writes it with :mod:`kmtools.report.html` or
:mod:`kmtools.report.markdown`; the document model is in :mod:`kmtools.report.document`.

The report is built once as a small document model (sections of text, tables and figures)
and written either as one HTML page (inline CSS, figures as base64 ``data:`` URIs, no external
URL at all) or as Markdown with its figures in ``<stem>_files/`` beside it.

Contents, each only where the run has the data: gate outcomes; the softmax-vs-Gauss summary in
the layout of the paper's Table 1 (accuracy, mean confidence, one-pixel attack rate, confidence
in fooled predictions); outlier thresholds; OOD detection; the Theorem 2 bound; confidence
histograms; FGSM curves; one-pixel examples and scatter; prototypes and outliers; DeepFool
norms; TailorNetwork training; NEON feature-adding AUC and heatmaps; boundary curvature profiles
and the detection ROC; other commands' results and figures; provenance (docs/report.md).

References: Hess et al., "Softmax-based Classification is k-means Clustering" (Table 1, Figures
1-3); Kauffmann et al., "From clustering to cluster explanations via neural networks" (NEON,
Algorithm 1, Table I); Fawzi et al., "Empirical study of the topology and geometry of deep
networks" (Fig. 4b, Algorithm 2).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from kmtools import io
from kmtools.errors import ConfigError, OutputExistsError
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, Block, FigureRef, Report, Section, Table, dec, fmt, pct
from kmtools.report.gates import GateResult
from kmtools.report.html import to_html
from kmtools.report.layout import per_kind
from kmtools.report.markdown import parse_markdown_tables, to_markdown
from kmtools.report.views import all_views, view_for
from kmtools.report.views.generic import _gates_section, _provenance_section, generic_section, own_figures
from kmtools.report.views.geometry import _series_name, find_objects
from kmtools.report.views.table1 import SUMMARY_KEYS, summary, summary_sources, table1, table1_note
from kmtools.report.views.table1 import section as table1_section

__all__ = [
    "MISSING", "SUMMARY_KEYS", "Block", "FigureRef", "Report", "Section", "Table", "_series_name", "build", "dec",
    "draw_figures", "find_objects", "fmt", "own_figures", "parse_markdown_tables", "pct", "per_kind", "summary",
    "summary_sources", "table1", "table1_note", "to_html", "to_markdown", "write_report",
]


def draw_figures(run: Run, out_dir: str | Path, force: bool = False, *, svg: bool = True) -> dict[str, list[FigureRef]]:
    """Draw every figure the run's data allows into ``out_dir`` (each view draws its own).

    Returns ``{section: [FigureRef]}`` with sections ``confidence``, ``prototypes``, ``fgsm``,
    ``onepixel``, ``tailor`` and one per explain/geometry command.
    """
    out = Path(out_dir)
    got: dict[str, list[FigureRef]] = {}

    def add(section: str, caption: str, path: Path) -> None:
        got.setdefault(section, []).append(FigureRef(caption, path))

    for view in all_views():
        if view.figures is not None:
            view.figures(run, out, force, add, svg)
    return got


def build(
    run: Run,
    fig_dir: str | Path,
    *,
    force: bool = False,
    gates: Sequence[GateResult] | None = None,
    title: str | None = None,
    svg: bool = True,
) -> Report:
    """The report's document model; figures are drawn into ``fig_dir`` (PNG, and SVG with ``svg``).

    Sections: gates, Table 1, then each view's section in view order (with the command's own
    figures), a generic results table for every other command, figures no section showed,
    provenance.
    """
    figs = draw_figures(run, fig_dir, force=force, svg=svg)
    sections: list[Section] = []
    if gates:
        sections.append(_gates_section(gates))
    t1 = table1_section(run)
    if t1 is not None:
        sections.append(t1)
    hidden: list[Path] = []
    for view in all_views():
        if view.section is None:
            continue
        part = view.section(run, figs)
        if view.hidden is not None:
            hidden += view.hidden(run, figs)
        if part is not None:
            sections.append(part.add(*own_figures(run, view.command)) if view.own_figures else part)
    from kmtools.report.curves import evidence_sections  # intervals, PGD curve, OOD baselines

    sections += evidence_sections(run, fig_dir, force=force)
    for cmd in run.docs:
        found = view_for(cmd)
        if cmd != "attack-pgd" and (found is None or found.section is None):  # PGD: its evidence section
            sections.append(generic_section(cmd, run, figs))
    placed = {b.path.resolve() for sec in sections for b in sec.blocks if isinstance(b, FigureRef)}
    placed |= {p.resolve() for p in hidden}
    extra = [FigureRef(p.name, p) for p in run.figures if p.resolve() not in placed]
    if extra:
        sections.append(Section("Figures from the runs").add(*extra))
    sections.append(_provenance_section(run))
    return Report(title or f"kmtools report: {_model_name(run)}", sections)


def _model_name(run: Run) -> str:
    from kmtools.report.views.table1 import _model_name as name

    return name(run)


def write_report(
    run: Run,
    out_path: str | Path,
    force: bool = False,
    *,
    gates: Sequence[GateResult] | None = None,
    title: str | None = None,
) -> Path:
    """Write the report of ``run`` to ``out_path`` (``.html``/``.htm`` or ``.md``/``.markdown``).

    HTML is one self-contained file (PNG figures as ``data:`` URIs, no external reference).
    Markdown references its figures in ``<stem>_files/`` beside it (PNG, with an SVG copy of
    each figure the report drew). Nothing is overwritten without ``force``; the report file itself is written
    last and atomically, so a failure leaves no half-written report.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".markdown"):
        raise ConfigError(f"{out}: the report must end in .html or .md")
    io.check_writable(out, force)
    if suffix in (".html", ".htm"):
        with tempfile.TemporaryDirectory(prefix="kmtools-report-") as tmp:
            text = to_html(build(run, tmp, force=True, gates=gates, title=title, svg=False))
        return io.write_text(out, text, force)
    files = out.with_name(f"{out.stem}_files")
    report = build(run, files, force=force, gates=gates, title=title)
    link: dict[Path, str] = {}
    for f in (b for sec in report.sections for b in sec.blocks if isinstance(b, FigureRef)):
        target = files / f.path.name
        if f.path.resolve() != target.resolve():  # a run's own figure: copy it beside the report
            target = _free_name(target, set(link.values()), files)
            if target.exists() and not force:
                raise OutputExistsError(f"{target} already exists: pass --force to overwrite it")
            io.write_bytes(target, f.path.read_bytes(), force=True)
        link[f.path] = f"{files.name}/{target.name}"
    return io.write_text(out, to_markdown(report, link), force)


def _free_name(target: Path, used: set[str], files: Path) -> Path:
    n = 1
    cand = target
    while f"{files.name}/{cand.name}" in used:
        n += 1
        cand = target.with_name(f"{target.stem}_{n}{target.suffix}")
    return cand
