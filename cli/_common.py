"""Glue shared by commands: options -> library objects (model, data, device).

The library (and torch) is imported inside the functions, so that a command module can import
this one at its top and its ``--help`` stays light (tests/test_cli_help.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from kmtools.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from kmtools.data import DataInfo
    from kmtools.models import KmModel

__all__ = ["describe_model", "device_of", "floats", "ints", "open_data", "open_model"]


def floats(text: str | None, name: str) -> list[float] | None:
    """Parse ``"0.1,0.2"`` into finite floats; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from exc
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{name} must be finite numbers, got {text!r}")
    return vals


def ints(text: str | None, name: str) -> list[int] | None:
    """Parse ``"3,32,32"`` into integers; ``None`` stays ``None``."""
    vals = floats(text, name)
    if vals is None:
        return None
    if not all(v == int(v) for v in vals):
        raise ConfigError(f"{name} must be comma-separated whole numbers, got {text!r}")
    return [int(v) for v in vals]


def open_model(
    path: Path,
    *,
    arch: str | None = None,
    head: str | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    norm: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    input_shape: str | None = None,
    arch_kwargs: str | None = None,
    trust_code: bool = False,
) -> KmModel:
    """Load a checkpoint with the shared model options."""
    from kmtools.models import load_model

    if norm is not None and (mean or std):
        raise ConfigError("give either --norm or --mean/--std, not both")
    m: list[float] | str | None = norm if norm is not None else floats(mean, "--mean")
    s = floats(std, "--std")
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together")
    return load_model(path, arch=arch, head=head, num_classes=num_classes, trust=trust, mean=m, std=s,
                      input_shape=ints(input_shape, "--input-shape"), arch_kwargs=json_object(arch_kwargs, "--arch-kwargs"),
                      trust_code=trust_code)


def json_object(text: str | None, name: str) -> dict[str, object] | None:
    """Parse a JSON object option such as ``--arch-kwargs '{"num_classes": 10}'``."""
    if text is None:
        return None
    import json

    try:
        val = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}") from exc
    if not isinstance(val, dict):
        raise ConfigError(f"{name} must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return val


def open_data(
    name: str | None,
    *,
    root: Path | None = None,
    split: str = "test",
    n: int | None = None,
    download: bool = False,
    seed: int = 0,
    model: KmModel | None = None,
    shuffle: bool = False,
    image_size: str | None = None,
) -> DataInfo:
    """Load ``--data`` (resized to ``--image-size``; grey images given to an RGB model and back
    converted) and check it fits ``model`` (class count, input shape)."""
    from kmtools.data import load_dataset, subset

    if not name:
        raise ConfigError("this command needs --data NAME|PATH (e.g. --data digits)")
    info = load_dataset(name, root=root, split=split, download=download, image_size=image_size)
    if model is not None:
        want, have = model.input_shape, info.input_shape
        if want is not None and len(want) == len(have) == 3 and {int(want[0]), int(have[0])} == {1, 3}:
            from kmtools.ood import MatchShape  # grey <-> RGB: channel repeat or ITU-R 601 luma

            info.dataset = MatchShape(info.dataset, (int(want[0]), *have[1:]))
            info.input_shape = (int(want[0]), *have[1:])
        fit_model(info, model)
    return subset(info, n, seed=seed, shuffle=shuffle)


def fit_model(info: DataInfo, model: KmModel) -> None:
    """A model that takes any size adopts the data's; then the class count and shape must fit."""
    from kmtools.data.registry import check_compatible
    from kmtools.models.inputs import fit_to_data

    fit_to_data(model, info.input_shape)
    check_compatible(info, model.num_classes, model.input_shape)


def device_of(spec: str) -> torch.device:
    from kmtools.device import resolve

    return resolve(spec)


def describe_model(path: Path, model: KmModel) -> dict[str, object] | None:
    from kmtools.report.schema import model_info

    return model_info(path, model)
