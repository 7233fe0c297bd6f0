"""The view registry (see :mod:`kmtools.report.views`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from kmtools.report.collect import Run
    from kmtools.report.document import Block, FigureRef, Section

Rows = list[tuple[str, Any]]
AddFigure = Callable[[str, str, "Path"], None]


@dataclass(frozen=True)
class TextTable:
    """A terminal table: ``columns`` over ``rows`` (strings as they are, other values formatted
    by the CLI); the first ``left`` columns are left-aligned, the others right-aligned."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    left: int = 1


Tables = Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[TextTable | str]]


@dataclass(frozen=True)
class View:
    """How one result kind is shown. ``command`` is the document's ``command`` with dashes
    (``"attack-onepixel"``, ``"geometry-distance"``: :func:`kmtools.report.collect.command_key`).

    - ``summary(doc) -> (title, rows)``: the terminal's key/value table of one document;
    - ``tables(doc, settings)``: the terminal's tables (and lines) of one document, for
      multi-column results (``settings``: the run's ``.run.json``, when there is one);
    - ``section(run, figs)``: the report's section (``None``: the generic results table);
    - ``figures(run, out, force, add, svg)``: draws figures from the run's data, ``add(section,
      caption, path)`` each; ``figs`` then maps section names to them;
    - ``lead(results)``: blocks the generic section shows first (``shown_in_lead``: result keys
      they cover, left out of the generic table);
    - ``hidden(run, figs)``: the command's own figures that the report's drawings replace;
    - ``own_figures``: append the command's own figures after its section;
    - ``order``: place of the section in the report (lower first).
    """

    command: str
    summary: Callable[[Mapping[str, Any]], tuple[str, Rows]] | None = None
    tables: Tables | None = None
    section: Callable[[Run, Mapping[str, list[FigureRef]]], Section | None] | None = None
    figures: Callable[[Run, Path, bool, AddFigure, bool], None] | None = None
    lead: Callable[[Mapping[str, Any]], list[Block]] | None = None
    shown_in_lead: frozenset[str] = frozenset()
    hidden: Callable[[Run, Mapping[str, list[FigureRef]]], list[Path]] | None = None
    own_figures: bool = True
    order: int = 100


VIEWS: dict[str, View] = {}


def register(view: View) -> View:
    """Add ``view`` to the registry (one view per command)."""
    if view.command in VIEWS:
        raise ValueError(f"a view for {view.command!r} is registered twice")
    VIEWS[view.command] = view
    return view


def view_for(command: str) -> View | None:
    """The view of a document's ``command`` (spaces or dashes; ``attack torchattacks:PGD`` is
    ``attack-torchattacks``'s), or ``None`` (generic table)."""
    key = command.replace(" ", "-")
    found = VIEWS.get(key)
    return found if found is not None or ":" not in key else VIEWS.get(key.split(":", 1)[0])


def all_views() -> list[View]:
    """Every registered view, in report order."""
    return sorted(VIEWS.values(), key=lambda v: (v.order, v.command))


def summary(doc: Mapping[str, Any]) -> tuple[str, Rows] | None:
    """The terminal summary of ``doc`` by its command's view, or ``None``."""
    view = view_for(str(doc.get("command", "")))
    return view.summary(doc) if view is not None and view.summary is not None else None

