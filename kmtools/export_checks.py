"""What :func:`kmtools.export.export` checks: the output targets (``--force``), the example
and the random check inputs, the eager reference outputs, the largest difference between
two outputs; and the staging helpers (folders it creates, sizes, fsync).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from kmtools.errors import ConfigError, OutputExistsError
from kmtools.export_formats import ScoresAndConfidences
from kmtools.models.core import KmModel

CHECK_BATCHES = (1, 7)


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


