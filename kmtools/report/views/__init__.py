"""One view per result kind, keyed by the ``command`` its document carries.

A :class:`View` says how one command's JSON document is shown: ``summary`` gives the
terminal's key/value rows (the CLI prints them as a table), ``section`` the report's section,
``figures`` the figures the report draws from the run's data. Every view module registers
its views with :func:`register` when :mod:`kmtools.report.views` is imported, so a result
kind is known in one place: its view module (docs/architecture.md, "Adding a view").
"""

from __future__ import annotations

# each view module registers its views on import
from kmtools.report.views import (  # noqa: F401
    deepfool,
    evaluate,
    explain,
    external,
    fgsm,
    geometry,
    onepixel,
    pgd,
    tailor,
)
from kmtools.report.views.base import VIEWS, AddFigure, Rows, TextTable, View, all_views, register, summary, view_for

__all__ = ["VIEWS", "AddFigure", "Rows", "TextTable", "View", "all_views", "register", "summary", "view_for"]
