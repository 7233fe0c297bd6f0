"""Read run directories and result files into one :class:`Run` for reports and gates.

A run directory (see docs/schema.md) holds, per command run with ``--out DIR``:
``DIR/<command>.json`` (the schema envelope), optionally ``DIR/<command>.npz`` (arrays) and
figures in ``DIR/figures/``. :func:`load_run` accepts directories and single JSON files, checks
every document with :func:`kmtools.report.schema.validate` and merges them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.errors import DataError
from kmtools.report.schema import validate

COMMANDS = (
    "tailor",
    "evaluate",
    "attack-onepixel",
    "attack-fgsm",
    "attack-deepfool",
    "explain",
    "geometry-distance",
    "geometry-curvature",
    "geometry-detect",
    "geometry-path",
    "demo",
)
FIGURE_SUFFIXES = (".png",)


def command_key(command: str) -> str:
    """``"attack onepixel"`` / ``"attack_onepixel"`` -> ``"attack-onepixel"`` (file-name form)."""
    return "-".join(command.replace("_", " ").split())


@dataclass
class Run:
    """Result documents of one or more commands, merged.

    Attributes
    ----------
    docs: ``{command: envelope}`` in load order (a later document of the same command
        replaces an earlier one; the replaced sources are listed in ``replaced``).
    sources: ``{command: path of its JSON file}``.
    array_files: ``{command: path of its .npz}`` where one exists (read lazily by
        :meth:`arrays`).
    figures: PNG files found in the runs' ``figures/`` folders, in name order.
    """

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    array_files: dict[str, Path] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    _arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def commands(self) -> list[str]:
        return list(self.docs)

    def results(self, command: str) -> dict[str, Any]:
        """``results`` of ``command`` (empty when that command is not in the run)."""
        doc = self.docs.get(command_key(command))
        res = doc.get("results") if doc else None
        return dict(res) if isinstance(res, Mapping) else {}

    def arrays(self, command: str) -> dict[str, np.ndarray]:
        """Arrays saved with ``command`` (``{}`` when it saved none). Raises DataError if corrupt."""
        key = command_key(command)
        if key not in self._arrays:
            path = self.array_files.get(key)
            self._arrays[key] = _read_npz(path) if path is not None else {}
        return self._arrays[key]

    def add(self, doc: Mapping[str, Any], source: Path, npz: Path | None = None) -> None:
        key = command_key(str(doc["command"]))
        if key in self.docs:
            self.replaced.append(self.sources[key])
            self.array_files.pop(key, None)
            self._arrays.pop(key, None)
        self.docs[key] = dict(doc)
        self.sources[key] = source
        if npz is not None:
            self.array_files[key] = npz

    def gate_doc(self) -> dict[str, Any]:
        """The document gates are evaluated against.

        One command: its envelope as is. Several: an envelope-like document whose ``results``
        is the deep merge of all commands' results in load order (so ``gauss.accuracy`` from
        evaluate and ``gauss.onepixel.rate`` from attack-onepixel sit side by side), plus each
        command's own results under its name with ``_`` for ``-`` (``attack_onepixel.onepixel.rate``).
        """
        if len(self.docs) == 1:
            return next(iter(self.docs.values()))
        merged: dict[str, Any] = {}
        for doc in self.docs.values():
            _deep_merge(merged, doc.get("results") or {})
        for cmd, doc in self.docs.items():
            merged[cmd.replace("-", "_")] = doc.get("results") or {}
        return {"command": "+".join(self.docs), "results": merged}


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = _copy(v)


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read the arrays ({exc}); re-run the command that wrote it") from exc


def read_doc(path: Path) -> dict[str, Any]:
    """Parse and validate one result file; any problem is a one-line DataError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    problems = validate(doc)
    if problems:
        raise DataError(f"{path}: not a kmtools result document: {'; '.join(problems)}")
    return dict(doc)


def _is_result_file(path: Path) -> bool:
    """In a directory: ``<command>.json`` files, and any JSON naming a ``schema_version``."""
    if command_key(path.stem) in COMMANDS:
        return True
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return '"schema_version"' in head


def load_run(paths: Iterable[str | Path]) -> Run:
    """Read run directories and/or JSON result files into one :class:`Run`.

    - A directory contributes every ``*.json`` result file directly in it (``<command>.json``,
      or any JSON document with a ``schema_version`` field; other JSON files such as model
      metadata are skipped), the ``<stem>.npz`` beside each, and the PNGs in ``figures/``.
    - A JSON file contributes itself, its sibling ``<stem>.npz`` and the ``figures/`` folder
      beside it.

    Raises
    ------
    DataError: a path does not exist, a directory holds no result file, or a file is not valid
        JSON or not a kmtools result document (one line, naming the file).
    """
    run = Run()
    seen_fig: set[Path] = set()
    given = [Path(p) for p in paths]
    if not given:
        raise DataError("no run directory or result file given")
    for path in given:
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json") if p.is_file() and _is_result_file(p))
            if not files:
                raise DataError(
                    f"{path}: no kmtools result file (<command>.json) in this directory; "
                    "run a command with --out DIR first"
                )
            fig_dir = path / "figures"
        elif path.is_file():
            files = [path]
            fig_dir = path.parent / "figures"
        else:
            raise DataError(f"{path}: no such file or directory")
        for f in files:
            doc = read_doc(f)
            npz = f.with_suffix(".npz")
            run.add(doc, f, npz if npz.is_file() else None)
        if fig_dir.is_dir():
            for fig in sorted(fig_dir.iterdir()):
                if fig.suffix.lower() in FIGURE_SUFFIXES and fig.is_file() and fig.resolve() not in seen_fig:
                    seen_fig.add(fig.resolve())
                    run.figures.append(fig)
    return run
