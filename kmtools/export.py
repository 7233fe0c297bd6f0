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
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kmtools
from kmtools.errors import ConfigError, KmtoolsError, OutputExistsError
from kmtools.models.checkpoint import save_model
from kmtools.models.core import KmModel, head_confidences

FORMATS = ("kmtools", "pt2", "onnx")
SUFFIXES = {"kmtools": ".safetensors", "pt2": ".pt2", "onnx": ".onnx"}
INPUT_NAME = "input"
OUTPUT_NAMES = ("scores", "confidences")
BATCH_DIM = "batch"
CHECK_BATCHES = (1, 7)
MIN_OPSET = 17
# The dynamo exporter's lowest native opset; lower targets are converted after export.
_NATIVE_OPSET = 18
# Protobuf's hard limit is 2 GiB; above this the weights go to an external-data file.
_ONNX_EXTERNAL_BYTES = 1_800_000_000
# ... and tensors of at least this many bytes go there (smaller ones stay inline).
_ONNX_EXTERNAL_MIN_TENSOR = 1024
_MAX_BATCH = 1 << 20


class ExportError(KmtoolsError):
    """An export failed: the model does not trace, a runtime is missing, or parity failed."""


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


class ScoresAndConfidences(nn.Module):
    """The exported graph: pixel-space ``input`` -> ``(scores, confidences)``."""

    def __init__(self, model: KmModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores: torch.Tensor = self.model(x)
        return scores, head_confidences(self.model.head, scores)


# --------------------------------------------------------------------------- public API


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"kmtools,onnx"`` or a sequence -> validated, de-duplicated tuple in given order."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name in ("torchscript", "torch.export", "export"):
            name = "pt2"
        if name == "safetensors":
            name = "kmtools"
        if name not in FORMATS:
            raise ConfigError(f"unknown export format {raw.strip()!r}: choose from {', '.join(FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"no export format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def output_paths(out: str | Path, formats: Sequence[str]) -> dict[str, Path]:
    """Where :func:`export` writes each format.

    ``out`` is a folder (files ``model.safetensors``, ``model.pt2``, ``model.onnx`` inside
    it) or a file path whose suffix is one of those (its stem names every file:
    ``out/gauss.onnx`` -> ``out/gauss.safetensors``, ``out/gauss.pt2``, ``out/gauss.onnx``).
    """
    p = Path(out)
    if p.suffix.lower() in SUFFIXES.values():
        base = p.with_suffix("")
    else:
        if p.exists() and not p.is_dir():
            raise ConfigError(
                f"--out {p} is an existing file: give a folder or a .onnx/.pt2/.safetensors path"
            )
        base = p / "model"
    return {fmt: base.with_name(base.name + SUFFIXES[fmt]) for fmt in parse_formats(formats)}


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
    say = progress or (lambda msg: None)
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
    targets = output_paths(out_dir_or_path, fmts)
    _check_targets(targets.values(), force)

    net = _cpu_copy(model)
    x0 = _example(net, example)
    inputs = _check_inputs(x0, seed, given=example is not None) if check else []
    refs = [_eager(net, x) for x in inputs]
    folder = next(iter(targets.values())).parent
    created = _missing_dirs(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".kmtools-export-", dir=folder))
    except OSError as exc:
        raise ConfigError(
            f"cannot write into {folder} ({exc.strerror or exc}): choose another --out"
        ) from exc
    files: dict[str, ExportedFile] = {}
    actual_opset: int | None = None
    t_trace = 0.0
    try:
        program: torch.export.ExportedProgram | None = None
        if "pt2" in fmts or "onnx" in fmts:
            say("tracing with torch.export")
            t0 = time.perf_counter()
            program = _trace(net, x0)
            t_trace = time.perf_counter() - t0
        for fmt in fmts:
            staged = stage / targets[fmt].name
            t0 = time.perf_counter()
            extra: list[Path] = []
            if fmt == "kmtools":
                say("writing kmtools format")
                save_model(net, staged, force=True)
            elif fmt == "pt2":
                say("saving the torch.export program")
                assert program is not None
                _save_pt2(program, net, x0, staged)
            else:
                say(f"exporting ONNX (opset {opset})")
                assert program is not None
                actual_opset, extra = _save_onnx(program, net, x0, staged, opset)
            seconds = time.perf_counter() - t0
            diff: float | None = None
            t0 = time.perf_counter()
            if check:
                say(f"checking {fmt} against the eager model")
                diff = _parity(fmt, staged, inputs, refs)
                if not diff <= atol:
                    raise ExportError(
                        f"the {fmt} export differs from the eager model by {diff:.3g} (> atol {atol:g}) "
                        "on random inputs; nothing was written. Check the model for ops that "
                        "behave differently when traced, or raise --atol if the difference is expected"
                    )
            extra_paths = [str(targets[fmt].parent / e.name) for e in extra]
            files[fmt] = ExportedFile(fmt, str(targets[fmt]), _size(staged, extra), seconds, diff,
                                      time.perf_counter() - t0, extra_paths)
        say("moving files into place")
        for fmt in fmts:
            staged = stage / targets[fmt].name
            for src in [staged, *(stage / Path(p).name for p in files[fmt].extra_paths)]:
                _fsync(src)
                os.replace(src, targets[fmt].parent / src.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in created:  # deepest first; only the folders this call made, and only if empty
            with contextlib.suppress(OSError):
                d.rmdir()
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


def metadata(model: KmModel, input_shape: Sequence[int]) -> dict[str, Any]:
    """What the exported files carry about the model (JSON-able): classes, head kind,
    input shape, normalisation, outlier threshold, input/output names."""
    meta = model.meta()
    return {
        "producer": f"kmtools {kmtools.__version__}",
        "arch": meta["arch"],
        "head_kind": meta["head_kind"],
        "classes": meta["classes"],
        "num_classes": meta["num_classes"],
        "input_shape": list(input_shape),
        "mean": meta["mean"],
        "std": meta["std"],
        "outlier_threshold": model.threshold,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
    }


# --------------------------------------------------------------------------- helpers


def _check_opset(opset: int) -> int:
    import onnx

    top = int(onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {top} (this onnx package), got {opset}")
    return int(opset)


def _require(module: str, what: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{what} needs the {module} package: pip install 'kmtools[onnx]'") from exc


def _check_targets(paths: Iterable[Path], force: bool) -> None:
    existing = []
    for p in paths:
        if p.is_dir():
            raise OutputExistsError(f"{p} is a directory: remove it or choose another --out")
        if p.exists():
            existing.append(p)
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise OutputExistsError(f"{names} already {verb}: pass --force to overwrite")


def _missing_dirs(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, deepest first."""
    out: list[Path] = []
    p = folder.absolute()
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _cpu_copy(model: KmModel) -> KmModel:
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _example(net: KmModel, example: torch.Tensor | None) -> torch.Tensor:
    """A float32 CPU batch of at least 2 inputs (tracing would specialise a batch of 1).

    Default: 2 random inputs of ``net.input_shape``, uniform in [0, 1] for images
    (pixel space) and standard normal for vectors (tabular data as given)."""
    if example is None:
        if not net.input_shape:
            raise ConfigError(
                "the model does not know its input shape: pass an example input (--input-shape C,H,W)"
            )
        return _random((2, *net.input_shape), torch.Generator().manual_seed(0))
    x = example.detach().to("cpu", torch.float32)
    if x.dim() < 2:
        raise ConfigError(f"the example must be a batch (N, *input_shape), got shape {tuple(x.shape)}")
    if net.input_shape and tuple(x.shape[1:]) != tuple(net.input_shape):
        raise ConfigError(
            f"the example has shape {tuple(x.shape[1:])} per input, "
            f"the model expects {tuple(net.input_shape)}"
        )
    if x.shape[0] == 0:
        raise ConfigError("the example batch is empty")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("the example holds NaN or infinite values")
    if x.shape[0] == 1:
        x = torch.cat([x, x])
    return x[:8].contiguous()


def _random(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) if len(shape) > 2 else torch.randn(shape, generator=g)


def _check_inputs(x0: torch.Tensor, seed: int, given: bool) -> list[torch.Tensor]:
    """Random batches of :data:`CHECK_BATCHES` inputs plus the example itself. With a
    user example they are uniform in its value range, else drawn like the default example."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(x0.shape[1:])
    lo, hi = float(x0.min()), float(x0.max())
    out = []
    for n in CHECK_BATCHES:
        if given:
            out.append(torch.rand((n, *shape), generator=g) * (hi - lo) + lo)
        else:
            out.append(_random((n, *shape), g))
    out.append(x0)
    return out


def _eager(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        s, c = ScoresAndConfidences(net)(x)  # type: ignore[arg-type]
    return s, c


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' prints off stdout (which carries the CLI's result) and their
    deprecation chatter out of the user's way."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:200]


def _trace(net: KmModel, x0: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim(BATCH_DIM, min=1, max=_MAX_BATCH)
    try:
        with _quiet():
            return torch.export.export(ScoresAndConfidences(net), (x0,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ExportError(
            f"torch.export could not trace the model ({type(exc).__name__}: {_short(exc)}); a TorchScript "
            "checkpoint loaded without --arch cannot be re-exported: load its weights with --arch"
        ) from exc


def _save_pt2(program: torch.export.ExportedProgram, net: KmModel, x0: torch.Tensor, path: Path) -> None:
    meta = json.dumps(metadata(net, x0.shape[1:]), default=str)
    try:
        with _quiet():
            torch.export.save(program, str(path), extra_files={"kmtools.json": meta})
    except Exception as exc:
        raise ExportError(
            f"could not save the torch.export program ({type(exc).__name__}: {_short(exc)})"
        ) from exc


_TORCHLIB_REGISTRIES: dict[int, Any] = {}


@contextlib.contextmanager
def _reuse_torchlib_registry() -> Iterator[None]:
    """Build torch's ONNX operator registry once per process and opset.

    ``torch.onnx.export(dynamo=True)`` rebuilds it on every call by parsing the source of
    ~500 onnxscript functions: about half of the export time of a small model (seconds on
    a 2-core CPU), paid again for every model a process exports (``kmtools demo`` exports
    two). The exporter only reads the registry, so one copy serves every export. This
    reaches into torch's private exporter module; when that module is not where it is
    expected, the export runs unchanged.
    """
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - depends on the torch version
        yield
        return
    cls = getattr(_registration, "ONNXRegistry", None)
    original = getattr(cls, "__dict__", {}).get("from_torchlib")
    if not isinstance(original, classmethod):  # pragma: no cover - depends on the torch version
        yield
        return
    build = original.__func__

    def cached(klass: Any, opset_version: int = _NATIVE_OPSET) -> Any:
        key = int(opset_version)
        if key not in _TORCHLIB_REGISTRIES:
            _TORCHLIB_REGISTRIES[key] = build(klass, opset_version=opset_version)
        return _TORCHLIB_REGISTRIES[key]

    cls.from_torchlib = classmethod(cached)  # type: ignore[union-attr]
    try:
        yield
    finally:
        cls.from_torchlib = original  # type: ignore[union-attr]


def _save_onnx(
    program: torch.export.ExportedProgram, net: KmModel, x0: torch.Tensor, path: Path, opset: int
) -> tuple[int, list[Path]]:
    import onnx

    try:
        with _quiet(), _reuse_torchlib_registry():
            onnx_program = torch.onnx.export(
                program, (x0,), dynamo=True, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                opset_version=max(opset, _NATIVE_OPSET), verbose=False, optimize=True,
            )
    except Exception as exc:
        raise ExportError(f"the ONNX exporter failed ({type(exc).__name__}: {_short(exc)})") from exc
    if onnx_program is None:  # pragma: no cover - only the legacy exporter returns None
        raise ExportError("the ONNX exporter returned no model")
    proto = onnx_program.model_proto
    written = _opset_of(proto)
    if written != opset:
        proto = _convert_opset(proto, opset)
        written = _opset_of(proto)
    _name_batch_dim(proto)
    meta = metadata(net, x0.shape[1:])
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"kmtools.{k}"
        entry.value = v if isinstance(v, str) else json.dumps(v)
    proto.producer_name = "kmtools"
    proto.producer_version = kmtools.__version__
    proto.doc_string = (
        f"kmtools export: input '{INPUT_NAME}' (batch, {', '.join(map(str, x0.shape[1:]))}) in pixel space; "
        f"outputs 'scores' and 'confidences' (batch, {net.num_classes}); head {net.head_kind}"
    )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model is invalid ({_short(exc)})") from exc
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


def _opset_of(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return -1


_REDUCE_OPS = ("ReduceMin", "ReduceMax", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _convert_opset(proto: Any, opset: int) -> Any:
    """Convert the exporter's optimised graph to ``opset`` (17: below the exporter's own).

    Converting *before* optimisation, as the exporter does when asked for 17, fails on
    reductions whose axes are computed tensors (prototype heads); the optimised graph has
    constant axes and converts. ``onnx.version_converter`` leaves the opset-18 attribute
    ``noop_with_empty_axes`` on the reductions; its value 0 is the opset-17 behaviour, so
    it is dropped (a value of 1 cannot be expressed and is refused).
    """
    from onnx import version_converter

    try:
        out = version_converter.convert_version(proto, opset)
    except Exception as exc:
        raise ExportError(
            f"cannot convert the ONNX graph to opset {opset} ({_short(exc)}): "
            f"use --opset {_NATIVE_OPSET} or higher"
        ) from exc
    if opset < _NATIVE_OPSET:
        for node in out.graph.node:
            if node.op_type in _REDUCE_OPS:
                attrs = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                if any(a.name == "noop_with_empty_axes" and a.i != 0 for a in node.attribute):
                    raise ExportError(
                        f"{node.op_type} with noop_with_empty_axes=1 has no opset-{opset} form: "
                        "use --opset 18"
                    )
                del node.attribute[:]
                node.attribute.extend(attrs)
    return out


def _name_batch_dim(proto: Any) -> None:
    """Call the exporter's symbolic batch dimension (e.g. ``s77``) ``batch`` everywhere."""
    graph = proto.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        raise ExportError("the ONNX input has no dynamic batch dimension")
    old = dims[0].dim_param
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = BATCH_DIM


def _size(path: Path, extra: Sequence[Path]) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in extra)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|; inf when shapes or the positions of non-finite values differ."""
    if a.shape != b.shape:
        return math.inf
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb) or not torch.equal(a[~fa], b[~fb]):
        return math.inf
    if not bool(fa.any()):
        return 0.0
    return float((a[fa] - b[fb]).abs().max())


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
