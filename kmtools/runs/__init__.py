"""The run layer: what commands share around the maths (see docs/architecture.md).

- :class:`RunContext` (``with`` block): ``--out`` folder and files, ``--force``, seed,
  timings, signal catching and the JSON document;
- :class:`Journal`: per-input records appended as they finish, resumable;
- :func:`catch_signals` / :class:`Interrupted`: SIGINT/SIGTERM become one error (exit 128+n);
- helpers: :func:`tensors`, :func:`save_npz`, :func:`check_gates`, :func:`finite`.

Command-level runs live beside their maths, e.g. :mod:`kmtools.geometry.run`.
"""

from kmtools.runs.context import (
    ProgressFactory,
    RunContext,
    Timer,
    check_gates,
    check_out_dir,
    finite,
    no_progress,
    save_npz,
    tensors,
    to_numpy,
)
from kmtools.runs.journal import Journal, jsonl, settings_diff
from kmtools.runs.signals import Interrupted, Signals, catch_signals, signal_name

__all__ = [
    "Interrupted", "Journal", "ProgressFactory", "RunContext", "Signals", "Timer", "catch_signals", "check_gates",
    "check_out_dir", "finite", "jsonl", "no_progress", "save_npz", "settings_diff", "signal_name", "tensors",
    "to_numpy",
]
