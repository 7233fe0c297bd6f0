"""What every dataset of :mod:`kmtools.data` is: the :class:`DataInfo` record, the
``--image-size`` geometry (:class:`Resize`: scale, then centre crop, as torchvision's
``Resize(N)`` + ``CenterCrop(N)``; :class:`Resized` applies it per item) and uint8 images
held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kmtools.errors import ConfigError, DataError


@dataclass
class DataInfo:
    """A dataset with what commands need to know about it."""

    dataset: Dataset[Any]
    name: str
    split: str
    classes: list[str]
    input_shape: tuple[int, ...]
    source: str
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    #: ``(H, W)`` every image was resized to on loading (``--image-size``), or None; a
    #: :class:`Resize`, which also says how (passing it on to another split resizes alike).
    image_size: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resize(self) -> str | None:
        """``"crop"`` (shorter side to N, centre N×N: ``--image-size N``), ``"exact"`` (``HxW``)
        or None when the images were not resized."""
        if self.image_size is None:
            return None
        return "crop" if getattr(self.image_size, "crop", False) else "exact"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """sha256 over name, split, size and the first/last samples (cheap, stable)."""
        h = hashlib.sha256(f"{self.name}|{self.split}|{len(self)}".encode())
        n = len(self)
        for i in sorted({0, 1, n // 2, n - 2, n - 1}):
            if 0 <= i < n:
                x, y = self.dataset[i]
                h.update(np.ascontiguousarray(torch.as_tensor(x).float().numpy()).tobytes())
                h.update(str(int(y)).encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "n": len(self), "source": self.source,
                "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "image_size": list(self.image_size) if self.image_size else None,
                "resize": self.resize, "sha256": self.fingerprint()}


class Resize(tuple[int, int]):
    """``--image-size``: the output ``(H, W)`` (it is that tuple) and whether the shorter side
    is scaled to N and the centre N×N cropped (``crop``: torchvision's ``Resize(N)`` +
    ``CenterCrop(N)``, for ``N``) or the image is scaled to exactly H×W (``HxW``)."""

    crop: bool

    def __new__(cls, size: Sequence[int], crop: bool = False) -> Resize:
        obj = super().__new__(cls, (int(size[0]), int(size[1])))
        obj.crop = bool(crop)
        return obj

    def __getnewargs__(self) -> tuple[tuple[int, int], bool]:  # type: ignore[override]  # pickling (workers)
        return (self[0], self[1]), self.crop

    @property
    def size(self) -> tuple[int, int]:
        return self[0], self[1]

    def __repr__(self) -> str:
        return f"Resize({self[0]}, {self[1]}, crop={self.crop})"


def parse_resize(spec: str | int | Sequence[int] | None) -> Resize | None:
    """``N`` -> shorter side to N then centre crop N×N; ``HxW`` or ``(H, W)`` -> exact resize
    (a :class:`Resize` passes through, keeping its mode)."""
    if spec is None or isinstance(spec, Resize):
        return spec
    crop = False
    try:
        if isinstance(spec, int):
            hw, crop = [spec, spec], True
        elif isinstance(spec, str):
            parts = spec.lower().replace("×", "x").split("x")
            crop = len(parts) == 1
            hw = [int(p) for p in parts] * (2 if crop else 1)
        else:
            hw = [int(v) for v in spec]
    except ValueError:
        hw = []
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"--image-size must be N or HxW with positive integers (e.g. 64 or 224x224), not {spec!r}")
    return Resize((hw[0], hw[1]), crop)


def parse_image_size(spec: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``--image-size``: ``N`` (square), ``HxW`` or ``(H, W)`` -> ``(H, W)``; None stays None."""
    r = parse_resize(spec)
    return None if r is None else r.size


def resized_hw(h: int, w: int, r: Resize) -> tuple[int, int]:
    """The size an ``h×w`` image is scaled to before the crop: the shorter side becomes N, the
    longer keeps the aspect ratio (truncated, as torchvision's ``Resize(N)``); ``HxW`` as is."""
    if not r.crop:
        return r.size
    n = r.size[0]
    if h <= w:
        return n, max(n, int(n * w / h))
    return max(n, int(n * h / w)), n


def crop_box(h: int, w: int, r: Resize) -> tuple[int, int]:
    """Top and left of the centre ``N×N`` crop of an ``h×w`` image (torchvision's rounding)."""
    return round((h - r.size[0]) / 2.0), round((w - r.size[1]) / 2.0)


def _finish(ds: Dataset[Any], name: str, split: str, classes: list[str], source: str) -> DataInfo:
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"dataset {name} ({split}) at {source} is empty")
    x0, _ = ds[0]
    return DataInfo(ds, name, split, classes, tuple(torch.as_tensor(x0).shape), source)


class Resized(Dataset[tuple[torch.Tensor, int]]):
    """Images of ``inner`` resized per item as :class:`Resize` says: bilinear with antialiasing
    (``F.interpolate``), a convex combination of pixels, so [0, 1] inputs stay in [0, 1]; then
    the centre crop for ``--image-size N``."""

    def __init__(self, inner: Dataset[Any], size: Resize | tuple[int, int]) -> None:
        self.inner = inner
        self.resize = size if isinstance(size, Resize) else Resize(size, False)
        self.size = self.resize.size

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.inner[i]
        x = torch.as_tensor(x).float()
        h, w = (int(v) for v in x.shape[-2:])
        th, tw = resized_hw(h, w, self.resize)
        if (th, tw) != (h, w):
            x = torch.nn.functional.interpolate(x[None], size=(th, tw), mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        if (th, tw) != self.size:
            top, left = crop_box(th, tw, self.resize)
            x = x[..., top : top + self.size[0], left : left + self.size[1]]
        return x, int(y)


class _U8Dataset(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images held in memory, converted to [0, 1] floats per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i].float().div(255.0), int(self.y[i])

    def u8_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (uint8) and labels, for batch slicing without per-item overhead."""
        return self.x, self.y
