"""The export formats of :mod:`kmtools.export`: their names and file suffixes, the exported
graph (pixel-space ``input`` -> ``scores``, ``confidences``), the metadata every file carries,
tracing with ``torch.export`` and writing the ``.pt2`` program.

The module docstring of :mod:`kmtools.export` describes the formats and their outputs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kmtools
from kmtools.errors import ConfigError, KmtoolsError
from kmtools.models.core import KmModel, head_confidences

FORMATS = ("kmtools", "pt2", "onnx")
SUFFIXES = {"kmtools": ".safetensors", "pt2": ".pt2", "onnx": ".onnx"}
INPUT_NAME = "input"
OUTPUT_NAMES = ("scores", "confidences")
BATCH_DIM = "batch"
MIN_OPSET = 17
# The dynamo exporter's lowest native opset; lower targets are converted after export.
_NATIVE_OPSET = 18
_MAX_BATCH = 1 << 20


class ExportError(KmtoolsError):
    """An export failed: the model does not trace, a runtime is missing, or parity failed."""




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




def _require(module: str, what: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{what} needs the {module} package: pip install 'kmtools[onnx]'") from exc


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


