"""The ONNX graph of :mod:`kmtools.export`: torch's dynamo exporter (with its operator
registry built once per process and opset), conversion to opset 17, the named dynamic batch
dimension and kmtools' metadata. :func:`kmtools.export._save_onnx` writes the result.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch

import kmtools
from kmtools.errors import ConfigError
from kmtools.export_formats import (
    _NATIVE_OPSET,
    BATCH_DIM,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAMES,
    ExportError,
    _quiet,
    _short,
    metadata,
)
from kmtools.models.core import KmModel


def _check_opset(opset: int) -> int:
    import onnx

    top = int(onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {top} (this onnx package), got {opset}")
    return int(opset)


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


def onnx_proto(program: torch.export.ExportedProgram, net: KmModel, x0: torch.Tensor, opset: int) -> tuple[Any, int]:
    """The checked ONNX model of ``program`` at ``opset`` with kmtools' metadata, and the
    opset it holds."""
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
    return proto, written


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


