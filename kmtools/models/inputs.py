"""What a model expects as input: shape and normalisation metadata.

kmtools models take pixel-space inputs; the normalisation is the first layer. Its statistics
come, in order, from ``--norm``/``--mean --std``, the kmtools file, the architecture's own
convention (ImageNet statistics for a 1,000-class ``torchvision:`` head, timm's pretrained
config for ``timm:``), else none. :func:`norm_source` says which one applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError

NORM_PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "mnist": ([0.1307], [0.3081]),
    "fashion-mnist": ([0.2860], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "none": ([], []),
}

#: Largest input (elements per sample) a checkpoint's metadata may declare.
MAX_INPUT_ELEMENTS = 1 << 26

#: Square sides tried, in order, for a user class that does not say its input size.
PROBE_SIDES = (32, 28, 224, 64, 96, 8)


def resolve_norm(
    mean: Sequence[float] | str | None, std: Sequence[float] | None
) -> tuple[list[float] | None, list[float] | None]:
    """``--norm PRESET`` or explicit ``--mean``/``--std``."""
    if isinstance(mean, str):
        if mean not in NORM_PRESETS:
            raise ConfigError(f"unknown normalisation preset {mean!r}: choose one of {', '.join(NORM_PRESETS)}")
        m, s = NORM_PRESETS[mean]
        return m, s
    return (list(mean) if mean else None), (list(std) if std else None)


def arch_norm(arch: str | None, num_classes: int | None, net: nn.Module | None = None, channels: int | None = None
              ) -> tuple[list[float] | None, list[float] | None, str]:
    """The architecture's own normalisation convention: ``(mean, std, source)``; RGB
    statistics are averaged for a one-channel (``in_chans=1``) model."""
    if arch and arch.startswith("timm:") and net is not None:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        if cfg.get("mean") and cfg.get("std"):
            m, s = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
            if channels == 1 and len(m) > 1:
                m, s = [sum(m) / len(m)], [sum(s) / len(s)]
            return m, s, "timm pretrained config"
    if arch and arch.startswith("torchvision:") and num_classes == 1000:
        m, s = NORM_PRESETS["imagenet"]
        return m, s, "ImageNet (torchvision, 1000 classes)"
    return None, None, "none"


def example(shape: Sequence[int]) -> torch.Tensor:
    """Two seeded uniform inputs of ``shape``: the probe for head search and class counts."""
    g = torch.Generator().manual_seed(0)
    return torch.rand((2, *shape), generator=g)


def check_shape(shape: Sequence[Any], where: str) -> tuple[int, ...]:
    """A plausible input shape (1 to 3 positive dims, at most MAX_INPUT_ELEMENTS elements)."""
    try:
        dims = tuple(int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: input shape {shape!r} is not a list of integers") from exc
    if not dims or len(dims) > 3 or min(dims) < 1 or math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise CheckpointError(f"{where}: implausible input shape {list(dims)}")
    return dims


def infer_in_channels(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels: dim 1 of the first 4-D (conv) weight in module order."""
    for v in sd.values():
        if v.dim() == 4:
            return int(v.shape[1])
    return None


def infer_in_features(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Input features of a tabular model: dim 1 of the first 2-D weight."""
    for v in sd.values():
        if v.dim() == 2:
            return int(v.shape[1])
    return None


def _runs(net: nn.Module, shape: Sequence[int]) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            out = net(example(shape))
    except Exception:  # the probe is allowed to fail: another shape is tried
        return None
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def probe_shape(net: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Input shape of a user class that does not declare one (``input_shape`` class attribute
    or ``--input-shape``): channels from the first conv weight, then the first square side of
    :data:`PROBE_SIDES` on which a forward pass works; a model without conv weights takes a
    vector of the first linear layer's width."""
    declared = getattr(net, "input_shape", None)
    if isinstance(declared, (tuple, list)) and declared:
        return check_shape(declared, type(net).__name__)
    channels = infer_in_channels(sd)
    if channels is None:
        width = infer_in_features(sd)
        if width is not None and _runs(net, (width,)) is not None:
            return (width,)
        raise ConfigError(
            f"cannot tell what input {type(net).__name__} takes: give it an input_shape class attribute "
            "or pass --input-shape C,H,W"
        )
    net.eval()
    for side in PROBE_SIDES:
        if _runs(net, (channels, side, side)) is not None:
            return (channels, side, side)
    raise ConfigError(
        f"{type(net).__name__} ran on none of the sizes {', '.join(map(str, PROBE_SIDES))} with {channels} channels: "
        "give it an input_shape class attribute or pass --input-shape C,H,W"
    )


def any_size(net: nn.Module, shape: Sequence[int]) -> bool:
    """True when ``net`` also runs on another spatial size with the same output shape
    (adaptive pooling): its input size then comes from the data."""
    if len(shape) != 3:
        return False
    a = _runs(net, shape)
    other = (shape[0], shape[1] + 8, shape[2] + 8)
    b = _runs(net, other)
    return a is not None and b is not None and a.shape == b.shape


def count_outputs(net: nn.Module, shape: Sequence[int] | None) -> int | None:
    """Class count of an opaque classifier from one forward pass (None when it fails)."""
    if shape is None:
        return None
    out = _runs(net, shape)
    return int(out.shape[1]) if out is not None else None


def fit_to_data(model: Any, data_shape: Sequence[int]) -> None:
    """A model that takes any spatial size adopts the data's (same channel count)."""
    shape = tuple(int(v) for v in data_shape)
    cur = model.input_shape
    if getattr(model, "any_size", False) and cur is not None and len(cur) == len(shape) == 3 and cur[0] == shape[0]:
        model.input_shape = shape
