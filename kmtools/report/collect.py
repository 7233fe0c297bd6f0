"""Read run directories and result files into one :class:`Run` for reports and gates.

A run directory (see docs/schema.md) holds what commands wrote with ``--out DIR``:
``tailor.json``, ``evaluate.json`` (+ ``evaluate.npz``), ``attack-onepixel.json``,
``attack-fgsm.json``, ``attack-deepfool.json`` (+ ``.npz``, ``.jsonl``), the explain and geometry
results, figures in ``DIR/figures/``, and files that are no results at all (checkpoints,
exported models, metadata JSON). :func:`load_run` accepts directories and single JSON files,
checks every document with :func:`kmtools.report.schema.validate` and merges them.

In a directory, any subset of the commands may be present and unknown files are tolerated:
a JSON file that is no kmtools result (no ``schema_version``: settings such as
``attack-onepixel.run.json``, model metadata) is ignored; one that names a ``schema_version``
but cannot be read, does not validate, or is a ``report``/``check`` document is skipped and
listed in :attr:`Run.skipped`. A file named after a command (``evaluate.json``) that is broken, and any
file given explicitly, is an error.
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

#: Result files the report knows by name (``<command>.json``); others are found by content.
COMMANDS = (
    "tailor",
    "evaluate",
    "attack-onepixel",
    "attack-fgsm",
    "attack-deepfool",
    "explain",
    "explain-neon",
    "explain-evaluate",
    "geometry",
    "geometry-distance",
    "geometry-curvature",
    "geometry-detect",
    "geometry-path",
    "inspect",
    "centroids",
    "export",
    "demo",
)
#: Documents about other documents: never part of a run's results.
META_COMMANDS = ("report", "check")
FIGURE_SUFFIXES = (".png",)
_HEAD = 4096  # bytes read to recognise a result file by content


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
    figures: PNG files the commands wrote (``figures/`` folders, PNGs beside the results and
        those a document lists in ``results.files``), in name order per directory.
    owned: ``{command: [PNG]}`` for figures a document lists in its ``results.files``.
    skipped: ``(path, reason)`` of files in run directories that look like results (they name a
        ``schema_version``) but could not be used; other JSON files are ignored silently.
    """

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    array_files: dict[str, Path] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    owned: dict[str, list[Path]] = field(default_factory=dict)
    _arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def commands(self) -> list[str]:
        return list(self.docs)

    def doc(self, command: str) -> dict[str, Any] | None:
        return self.docs.get(command_key(command))

    def results(self, command: str) -> dict[str, Any]:
        """``results`` of ``command`` (empty when that command is not in the run)."""
        doc = self.doc(command)
        res = doc.get("results") if doc else None
        return dict(res) if isinstance(res, Mapping) else {}

    def arrays(self, command: str) -> dict[str, np.ndarray]:
        """Arrays saved with ``command`` (``{}`` when it saved none). Raises DataError if corrupt."""
        key = command_key(command)
        if key not in self._arrays:
            path = self.array_files.get(key)
            self._arrays[key] = _read_npz(path) if path is not None else {}
        return self._arrays[key]

    def family(self, prefix: str) -> list[str]:
        """Commands of one group, e.g. ``family("geometry")`` -> ``["geometry-detect", ...]``."""
        return [c for c in self.docs if c == prefix or c.startswith(f"{prefix}-")]

    def figures_of(self, command: str) -> list[Path]:
        """The run's own figures of ``command``: those its document lists, and those whose file
        name starts with the command (``attack-fgsm_gauss.png``)."""
        key = command_key(command)
        listed = self.owned.get(key, [])
        named = [f for f in self.figures if figure_command(f, self.docs) == key and f not in listed]
        return [*listed, *named]

    def add(self, doc: Mapping[str, Any], source: Path, npz: Path | None = None, pngs: Iterable[Path] = ()) -> None:
        key = command_key(str(doc["command"]))
        if key in self.docs:
            self.replaced.append(self.sources[key])
            self.array_files.pop(key, None)
            self._arrays.pop(key, None)
            old = set(self.owned.pop(key, []))  # the replaced result's figures go with it
            self.figures = [f for f in self.figures if f not in old]
        self.docs[key] = dict(doc)
        self.sources[key] = source
        if npz is not None:
            self.array_files[key] = npz
        if pngs:
            self.owned[key] = list(pngs)

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


def figure_command(path: Path, docs: Mapping[str, Any]) -> str | None:
    """The command (of ``docs``) whose name starts the figure's file name, longest match first."""
    stem = path.stem.replace("_", "-")
    for cmd in sorted(docs, key=len, reverse=True):
        if stem == cmd or stem.startswith((f"{cmd}-", f"{cmd}.")):
            return cmd
    return None


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
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(f"{path}: cannot read it ({reason})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    problems = validate(doc)
    if problems:
        raise DataError(f"{path}: not a kmtools result document: {'; '.join(problems)}")
    return dict(doc)


def _named_result(path: Path) -> bool:
    return command_key(path.stem) in COMMANDS


def _looks_like_result(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
    except OSError:
        return False
    return b'"schema_version"' in head


def _scan_dir(path: Path, run: Run) -> list[tuple[Path, dict[str, Any]]]:
    """The result documents directly in ``path``; other JSON files go to ``run.skipped``."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for f in sorted(p for p in path.glob("*.json") if p.is_file()):
        if _named_result(f):
            doc = read_doc(f)  # named after a command: broken is an error
        elif not _looks_like_result(f):
            continue  # settings, metadata, …: not a result, nothing to say
        else:
            try:
                doc = read_doc(f)
            except DataError as exc:
                run.skipped.append((f, str(exc).removeprefix(f"{f}: ")))
                continue
        if command_key(str(doc["command"])) in META_COMMANDS:
            run.skipped.append((f, f"a {doc['command']} document, not a result"))
            continue
        found.append((f, doc))
    return found


def _file_names(obj: Any) -> list[str]:
    """Every string in ``obj`` (nested objects and lists)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, Mapping):
        return [s for v in obj.values() for s in _file_names(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _file_names(v)]
    return []


def _locate(name: str, json_path: Path) -> Path | None:
    """A file a document names: as written (relative to the working directory when the command
    ran), else by its name beside the document or in ``figures/`` (a moved run directory)."""
    given = Path(name)
    for cand in (given, json_path.parent / given.name, json_path.parent / "figures" / given.name):
        if cand.is_file():
            return cand
    return None


def companions(doc: Mapping[str, Any], json_path: Path) -> tuple[Path | None, list[Path]]:
    """The arrays (``.npz``) and figures (``.png``) that belong to the document at ``json_path``.

    The arrays are ``<stem>.npz`` beside it, else the ``.npz`` its ``results.files`` names
    (``explain`` writes ``relevance.npz``); the figures are the PNGs ``results.files`` names.
    """
    res = doc.get("results")
    named = _file_names(res.get("files")) if isinstance(res, Mapping) else []
    npz: Path | None = json_path.with_suffix(".npz")
    if npz is not None and not npz.is_file():
        npz = next((p for n in named if n.lower().endswith(".npz") and (p := _locate(n, json_path)) is not None), None)
    pngs = [p for n in named if n.lower().endswith(".png") and (p := _locate(n, json_path)) is not None]
    return npz, pngs


def _figures_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FIGURE_SUFFIXES and p.is_file())


def load_run(paths: Iterable[str | Path]) -> Run:
    """Read run directories and/or JSON result files into one :class:`Run`.

    - A directory contributes every result file directly in it (``<command>.json``, or any
      JSON document with a ``schema_version`` field), the ``<stem>.npz`` beside each, and the
      PNGs in it and in its ``figures/``. Other files are tolerated (see the module doc). A
      directory with no result file contributes those of its immediate subfolders instead
      (``kmtools report demo-out``).
    - A JSON file contributes itself, its sibling ``<stem>.npz`` and the ``figures/`` folder
      beside it.

    Raises
    ------
    DataError: a path does not exist, a directory holds no result file, or a result file
        (named after a command, or given explicitly) is not valid JSON or not a kmtools result
        document (one line, naming the file).
    """
    run = Run()
    seen_fig: set[Path] = set()
    given = [Path(p) for p in paths]
    if not given:
        raise DataError("no run directory or result file given")
    for path in given:
        if path.is_dir():
            docs = _scan_dir(path, run)
            figs = _figures_in(path) + _figures_in(path / "figures")
            if not docs:  # a folder of run folders (e.g. demo-out/): its subfolders' results
                for sub in sorted(p for p in path.iterdir() if p.is_dir() and p.name != "figures"):
                    docs += _scan_dir(sub, run)
                    figs += _figures_in(sub) + _figures_in(sub / "figures")
            if not docs:
                raise DataError(
                    f"{path}: no kmtools result file (<command>.json) in this directory or its subfolders; "
                    "run a command with --out DIR first"
                )
        elif path.is_file():
            docs = [(path, read_doc(path))]
            figs = _figures_in(path.parent / "figures")
        else:
            raise DataError(f"{path}: no such file or directory")
        for f, doc in docs:
            npz, pngs = companions(doc, f)
            run.add(doc, f, npz, pngs)
            figs += pngs
        for fig in figs:
            if fig.resolve() not in seen_fig:
                seen_fig.add(fig.resolve())
                run.figures.append(fig)
    return run
