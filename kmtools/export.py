"""Export a :class:`~kmtools.models.KmModel` as self-contained files, with a parity check.

Three formats, all taking *pixel-space* inputs (normalisation is the model's first layer)
and all written into one folder:

* ``kmtools``: ``model.safetensors`` with kmtools' JSON metadata
  (:func:`kmtools.models.save_model`); reloads with ``kmtools.models.load_model`` and is
  the input every other ``kmtools`` command accepts.
* ``pt2``: a ``torch.export`` program (:func:`torch.export.save`). It holds the graph and
  the weights, needs only ``torch`` to run (``torch.export.load(p).module()(x)``) and is
  kmtools' "TorchScript export": ``torch.jit.script``/``trace`` are deprecated in current
  torch (see DESIGN.md), ``torch.export`` is their successor.
* ``onnx``: an ONNX model (opset >= 17) from torch's dynamo exporter; needs only
  ``onnxruntime`` (or any ONNX runtime) to run.

The ``pt2`` and ``onnx`` programs have one input ``input`` of shape ``(batch, *input_shape)``
with a dynamic batch dimension and two outputs:

* ``scores`` (batch, c): what the head computes: logits for a softmax head, the
  Gauss-confidences κ_k(x) = exp(-γ‖f(x) - C_k‖²) for a Gauss head (not normalised),
  the head's own class scores for a prototype head (``kmtools.heads``);
* ``confidences`` (batch, c): the head's confidence rule applied to the scores
  (softmax of the logits; κ itself for a Gauss head; the prototype head's
  ``confidences``). The outlier rule of the Gauss paper is
  ``confidences[argmax] < outlier_threshold`` (stored in the metadata, default 1/c).

Every file is first written into a hidden staging folder beside its target; the ``pt2``
program is reloaded with ``torch.export.load`` and the ONNX model run in ``onnxruntime``
on random batches of 1 and 7 inputs, and both compared with the eager model. Only when
every check passes are the files moved into place, so a failed export leaves nothing
behind, and an existing file is never replaced without ``force``.

This module holds :func:`export` and its stages, the result records and the writing and
reloading of each format; the formats, the ONNX graph and the checks are in
:mod:`kmtools.export_formats`, :mod:`kmtools.export_onnx` and :mod:`kmtools.export_checks`
(their names are re-exported here).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kmtools.errors import ConfigError
from kmtools.export_checks import (
    CHECK_BATCHES,
    _check_inputs,
    _check_targets,
    _cpu_copy,
    _eager,
    _example,
    _fsync,
    _max_diff,
    _missing_dirs,
    _random,
    _size,
)
from kmtools.export_formats import (
    _MAX_BATCH,
    _NATIVE_OPSET,
    BATCH_DIM,
    FORMATS,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAMES,
    SUFFIXES,
    ExportError,
    ScoresAndConfidences,
    _quiet,
    _require,
    _save_pt2,
    _short,
    _trace,
    metadata,
    output_paths,
    parse_formats,
)
from kmtools.export_onnx import (
    _REDUCE_OPS,
    _TORCHLIB_REGISTRIES,
    _check_opset,
    _convert_opset,
    _name_batch_dim,
    _opset_of,
    _reuse_torchlib_registry,
    onnx_proto,
)
from kmtools.models.checkpoint import save_model
from kmtools.models.core import KmModel

__all__ = [
    "BATCH_DIM", "CHECK_BATCHES", "FORMATS", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAMES", "SUFFIXES",
    "_MAX_BATCH", "_NATIVE_OPSET", "_ONNX_EXTERNAL_BYTES", "_ONNX_EXTERNAL_MIN_TENSOR", "_REDUCE_OPS",
    "_TORCHLIB_REGISTRIES", "ExportError", "ExportResult", "ExportedFile", "ScoresAndConfidences", "_check_inputs",
    "_check_opset", "_check_targets", "_convert_opset", "_cpu_copy", "_eager", "_example", "_fsync", "_max_diff",
    "_missing_dirs", "_name_batch_dim", "_opset_of", "_parity", "_quiet", "_random", "_require",
    "_reuse_torchlib_registry", "_runner", "_save_onnx", "_save_pt2", "_short", "_size", "_trace", "export",
    "metadata", "onnx_proto", "output_paths", "parse_formats",
]

# Protobuf's hard limit is 2 GiB; above this the weights go to an external-data file.
_ONNX_EXTERNAL_BYTES = 1_800_000_000
# ... and tensors of at least this many bytes go there (smaller ones stay inline).
_ONNX_EXTERNAL_MIN_TENSOR = 1024


@dataclass
class ExportedFile:
    """One written file: where, how big, how long it took, how close to the eager model."""

    format: str
    path: str
    bytes: int
    seconds: float
    max_abs_diff: float | None = None
    check_seconds: float = 0.0
    extra_paths: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "max_abs_diff": self.max_abs_diff,
            "check_seconds": round(self.check_seconds, 4),
        }
        if self.extra_paths:
            d["extra_paths"] = list(self.extra_paths)
        return d


@dataclass
class ExportResult:
    """What :func:`export` wrote. ``files`` maps a format to its :class:`ExportedFile`;
    ``max_abs_diff`` there is the largest |exported - eager| over the checked inputs (None
    without a check). ``opset`` is the ONNX opset actually written (None without ONNX)."""

    out_dir: str
    files: dict[str, ExportedFile]
    opset: int | None
    head_kind: str
    num_classes: int
    classes: list[str]
    input_shape: list[int]
    outlier_threshold: float
    checked: bool
    atol: float
    check_batches: list[int]
    input_name: str = INPUT_NAME
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    trace_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def paths(self) -> dict[str, Path]:
        return {k: Path(f.path) for k, f in self.files.items()}

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [f.max_abs_diff for f in self.files.values() if f.max_abs_diff is not None]
        return max(diffs) if diffs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "files": {k: f.to_dict() for k, f in self.files.items()},
            "opset": self.opset,
            "input_name": self.input_name,
            "output_names": list(self.output_names),
            "dynamic_batch": True,
            "head_kind": self.head_kind,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "outlier_threshold": self.outlier_threshold,
            "checked": self.checked,
            "atol": self.atol,
            "check_batches": list(self.check_batches),
            "max_abs_diff": self.max_abs_diff,
            "trace_seconds": round(self.trace_seconds, 4),
            "seconds": round(self.seconds, 4),
        }




def export(
    model: KmModel,
    out_dir_or_path: str | Path,
    *,
    formats: str | Sequence[str] = FORMATS,
    opset: int = 18,
    example: torch.Tensor | None = None,
    force: bool = False,
    check: bool = True,
    atol: float = 1e-4,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` as self-contained files and check them against the eager model.

    Parameters
    ----------
    model : the :class:`KmModel` (any device, any head); it is copied to the CPU in float32
        and in eval mode for the export and is not modified.
    out_dir_or_path : a folder, or a ``.onnx``/``.pt2``/``.safetensors`` path whose stem
        names the files (see :func:`output_paths`).
    formats : any of ``kmtools``, ``pt2``, ``onnx`` (a sequence or ``"a,b"``).
    opset : ONNX opset, >= 17 (17 is reached by converting the exporter's opset-18 graph).
    example : an input batch (N, *input_shape) in pixel space for tracing; default random
        inputs of ``model.input_shape``. Its value range also sets the range of the random
        check inputs (else [0, 1] for images, N(0, 1) for vectors).
    force : replace existing files (otherwise :class:`OutputExistsError` before any work).
    check : reload/run every written file on random batches of 1 and 7 inputs (and on
        ``example``) and compare with the eager model; a difference above ``atol`` raises
        :class:`ExportError` and nothing is written. ``False`` skips it (no diffs).
    atol : the largest absolute difference accepted, on ``scores`` and ``confidences``.
    seed : seeds the random check inputs.
    progress : called with a short message before each stage.

    Returns
    -------
    :class:`ExportResult` with the paths, sizes, timings, per-format max abs differences
    and the ONNX opset written.
    """
    t_start = time.perf_counter()
    fmts = parse_formats(formats)
    opset = _check_options(model, fmts, opset, check, atol)
    targets = output_paths(out_dir_or_path, fmts)
    _check_targets(targets.values(), force)

    net = _cpu_copy(model)
    x0 = _example(net, example)
    inputs = _check_inputs(x0, seed, given=example is not None) if check else []
    job = _Job(net, x0, fmts, targets, inputs, [_eager(net, x) for x in inputs], check, atol, opset,
               progress or (lambda msg: None))
    folder = next(iter(targets.values())).parent
    created = _missing_dirs(folder)
    stage = _make_stage(folder)
    try:
        files, actual_opset, t_trace = _write_staged(job, stage)
        _move_into_place(job, stage, files)
    except BaseException:
        _discard(stage, created)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return ExportResult(
        out_dir=str(folder),
        files=files,
        opset=actual_opset,
        head_kind=model.head_kind,
        num_classes=model.num_classes,
        classes=list(model.classes),
        input_shape=list(x0.shape[1:]),
        outlier_threshold=model.threshold,
        checked=check,
        atol=atol,
        check_batches=[int(x.shape[0]) for x in inputs],
        trace_seconds=t_trace,
        seconds=time.perf_counter() - t_start,
    )


# --------------------------------------------------------------------------- the stages of export()


@dataclass
class _Job:
    """What one :func:`export` call writes and checks (CPU float32 copy, example, targets, check
    inputs with their eager outputs, options)."""

    net: KmModel
    x0: torch.Tensor
    fmts: tuple[str, ...]
    targets: dict[str, Path]
    inputs: list[torch.Tensor]
    refs: list[tuple[torch.Tensor, torch.Tensor]]
    check: bool
    atol: float
    opset: int
    say: Callable[[str], None]


def _check_options(model: KmModel, fmts: Sequence[str], opset: int, check: bool, atol: float) -> int:
    """Refuse what cannot work before any work is done; returns the checked ONNX opset."""
    if not isinstance(model, KmModel):
        raise ConfigError(f"export needs a KmModel, got {type(model).__name__}")
    if "onnx" in fmts:
        opset = _check_opset(opset)
        _require("onnxscript", "ONNX export (torch's dynamo exporter)")
        if check:
            _require("onnxruntime", "the ONNX parity check (or pass check=False / --no-check)")
    if "kmtools" in fmts and model.arch is None:
        raise ConfigError(
            "this model has no known architecture, so it cannot be written in kmtools format: "
            "load it with --arch, or export only pt2/onnx (--formats pt2,onnx)"
        )
    if not (atol > 0 and math.isfinite(atol)):
        raise ConfigError(f"atol must be a positive number, got {atol}")
    return opset


def _make_stage(folder: Path) -> Path:
    """Create ``folder`` and a hidden staging folder inside it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".kmtools-export-", dir=folder))
    except OSError as exc:
        raise ConfigError(
            f"cannot write into {folder} ({exc.strerror or exc}): choose another --out"
        ) from exc


def _write_staged(job: _Job, stage: Path) -> tuple[dict[str, ExportedFile], int | None, float]:
    """Trace once, write every format into ``stage`` and check it: (files, ONNX opset, trace seconds)."""
    files: dict[str, ExportedFile] = {}
    actual_opset: int | None = None
    t_trace = 0.0
    program: torch.export.ExportedProgram | None = None
    if "pt2" in job.fmts or "onnx" in job.fmts:
        job.say("tracing with torch.export")
        t0 = time.perf_counter()
        program = _trace(job.net, job.x0)
        t_trace = time.perf_counter() - t0
    for fmt in job.fmts:
        staged = stage / job.targets[fmt].name
        t0 = time.perf_counter()
        written, extra = _write_format(job, fmt, program, staged)
        actual_opset = written if written is not None else actual_opset
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        diff = _check_parity(job, fmt, staged)
        extra_paths = [str(job.targets[fmt].parent / e.name) for e in extra]
        files[fmt] = ExportedFile(fmt, str(job.targets[fmt]), _size(staged, extra), seconds, diff,
                                  time.perf_counter() - t0, extra_paths)
    return files, actual_opset, t_trace


def _write_format(
    job: _Job, fmt: str, program: torch.export.ExportedProgram | None, staged: Path
) -> tuple[int | None, list[Path]]:
    """Write one format at ``staged``: (the ONNX opset written or None, extra files)."""
    if fmt == "kmtools":
        job.say("writing kmtools format")
        save_model(job.net, staged, force=True)
        return None, []
    assert program is not None
    if fmt == "pt2":
        job.say("saving the torch.export program")
        _save_pt2(program, job.net, job.x0, staged)
        return None, []
    job.say(f"exporting ONNX (opset {job.opset})")
    return _save_onnx(program, job.net, job.x0, staged, job.opset)


def _check_parity(job: _Job, fmt: str, staged: Path) -> float | None:
    """The largest |exported - eager| of the staged file (None without a check); above
    ``atol`` raises :class:`ExportError`."""
    if not job.check:
        return None
    job.say(f"checking {fmt} against the eager model")
    diff = _parity(fmt, staged, job.inputs, job.refs)
    if not diff <= job.atol:
        raise ExportError(
            f"the {fmt} export differs from the eager model by {diff:.3g} (> atol {job.atol:g}) "
            "on random inputs; nothing was written. Check the model for ops that "
            "behave differently when traced, or raise --atol if the difference is expected"
        )
    return diff


def _move_into_place(job: _Job, stage: Path, files: dict[str, ExportedFile]) -> None:
    job.say("moving files into place")
    for fmt in job.fmts:
        staged = stage / job.targets[fmt].name
        for src in [staged, *(stage / Path(p).name for p in files[fmt].extra_paths)]:
            _fsync(src)
            os.replace(src, job.targets[fmt].parent / src.name)


def _discard(stage: Path, created: Sequence[Path]) -> None:
    """Remove the staging folder and the folders this call made (deepest first, only if empty)."""
    shutil.rmtree(stage, ignore_errors=True)
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


# --------------------------------------------------------------------------- writing and reloading


def _save_onnx(
    program: torch.export.ExportedProgram, net: KmModel, x0: torch.Tensor, path: Path, opset: int
) -> tuple[int, list[Path]]:
    """Write :func:`onnx_proto` at ``path``; a model above ``_ONNX_EXTERNAL_BYTES`` keeps its
    tensors of at least ``_ONNX_EXTERNAL_MIN_TENSOR`` bytes in ``<path>.data``."""
    import onnx

    proto, written = onnx_proto(program, net, x0, opset)
    extra: list[Path] = []
    if proto.ByteSize() > _ONNX_EXTERNAL_BYTES:
        data = path.with_name(path.name + ".data")
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=_ONNX_EXTERNAL_MIN_TENSOR)
        if data.exists():  # no tensor above the size threshold: everything stayed inline
            extra.append(data)
    else:
        path.write_bytes(proto.SerializeToString())
    return written, extra


def _parity(
    fmt: str, path: Path, inputs: Sequence[torch.Tensor], refs: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    run = _runner(fmt, path)
    worst = 0.0
    for x, ref in zip(inputs, refs, strict=True):
        try:
            got = run(x)
        except Exception as exc:
            raise ExportError(
                f"the {fmt} export fails on a batch of {x.shape[0]} ({type(exc).__name__}: {_short(exc)})"
            ) from exc
        if len(got) != len(ref):
            raise ExportError(f"the {fmt} export returns {len(got)} outputs, expected {len(ref)}")
        for g, r in zip(got, ref, strict=True):
            worst = max(worst, _max_diff(g, r))
    return worst


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    if fmt == "kmtools":
        from kmtools.models.checkpoint import load_model

        loaded = load_model(path, trust_code=True)  # the file export just wrote, from the code in use

        def run_kmtools(x: torch.Tensor) -> list[torch.Tensor]:
            return list(_eager(loaded, x))

        return run_kmtools
    if fmt == "pt2":
        with _quiet():
            module = torch.export.load(str(path)).module()

        def run_pt2(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                out = module(x)
            return list(out)

        return run_pt2
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != [INPUT_NAME]:
        raise ExportError(f"the ONNX model's inputs are {names}, expected ['{INPUT_NAME}']")

    def run_onnx(x: torch.Tensor) -> list[torch.Tensor]:
        outs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        return [torch.from_numpy(o) for o in outs]

    return run_onnx
