"""ImageFolder trees (``train/<class>/<image>``, ``test/…``, optionally ``val/…``, or just
``<class>/<image>``) for :mod:`kmtools.data.registry`: files decoded with PIL (resized as
they are decoded with ``--image-size``), small images decoded once into memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kmtools.data.info import DataInfo, Resize, _finish, _U8Dataset, crop_box, resized_hw
from kmtools.errors import DataError

#: ImageFolder trees may also hold a ``val/`` folder (the ImageNet layout).
FOLDER_SPLITS = ("train", "val", "test")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
#: ImageFolders of small images (≤ 64×64, e.g. CIFAR as JPEG) with at most this many files are
#: decoded once into a uint8 tensor (60k CIFAR images: 184 MB), so training and attacks slice
#: batches from memory instead of decoding JPEGs every epoch.
MAX_DECODE_IN_MEMORY = 200_000


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """ImageFolder-style files decoded to float tensors in [0, 1] (RGB or grayscale)."""

    def __init__(self, files: Sequence[tuple[Path, int]], mode: str, size: Resize | None = None) -> None:
        self.files = list(files)
        self.mode = mode
        self.size = size  # how each image is resized as it is decoded, or None
        self.shape: tuple[int, ...] | None = None  # set once known: every image must match it

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[i]
        try:
            with Image.open(path) as im:
                img = im.convert(self.mode)
                if self.size is not None:
                    img = _pil_resize(img, self.size)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot decode image {path} ({exc})") from exc
        t = torch.from_numpy(arr.copy())
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        if self.shape is not None and tuple(t.shape) != self.shape:
            raise DataError(
                f"image {path} has shape {tuple(t.shape)} but the first image has {self.shape}: "
                "pass --image-size N (or HxW) to resize every image as it is loaded"
            )
        return t.float().div_(255.0), label


def _pil_resize(img: Any, r: Resize) -> Any:
    """Scale (PIL bilinear, which widens its kernel when shrinking: antialiased), then crop."""
    from PIL import Image

    w, h = img.size
    th, tw = resized_hw(h, w, r)
    if (th, tw) != (h, w):
        img = img.resize((tw, th), Image.Resampling.BILINEAR)
    if (th, tw) != r.size:
        top, left = crop_box(th, tw, r)
        img = img.crop((left, top, left + r.size[1], top + r.size[0]))
    return img


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _imagefolder(folder: Path, name: str, split: str, size: Resize | None = None) -> DataInfo:
    classes = _class_dirs(folder)
    files = [
        (f, ci)
        for ci, cdir in enumerate(classes)
        for f in sorted(cdir.iterdir())
        if f.suffix.lower() in _IMG_EXT
    ]
    if not files:
        raise DataError(f"no images found under {folder} (expected <class>/<image> files)")
    from PIL import Image

    with Image.open(files[0][0]) as im:
        mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
        small = (size.size[0] * size.size[1] if size else im.size[0] * im.size[1]) <= 64 * 64
    images = ImageFiles(files, mode, size)
    images.shape = tuple(images[0][0].shape)
    ds: Dataset[tuple[torch.Tensor, int]] = images
    if small and len(files) <= MAX_DECODE_IN_MEMORY:
        ds = _decode_all(images)
    info = _finish(ds, name, split, [c.name for c in classes], str(folder))
    info.image_size = size
    return info


def _decode_all(images: ImageFiles) -> Dataset[tuple[torch.Tensor, int]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> torch.Tensor:
        return images[i][0].mul(255.0).round().to(torch.uint8)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        xs = list(pool.map(one, range(len(images)), chunksize=256))
    if len({tuple(x.shape) for x in xs}) > 1:
        return images  # mixed sizes: decode per item (the model's input check reports them)
    y = torch.tensor([label for _, label in images.files])
    return _U8Dataset(torch.stack(xs), y)


def _imagefolder_root(path: Path, split: str, name: str, size: Resize | None = None) -> DataInfo:
    if (path / split).is_dir():
        return _imagefolder(path / split, name, split, size)
    other = [s for s in FOLDER_SPLITS if (path / s).is_dir()]
    if other:
        raise DataError(f"{path} has no {split}/ folder (it has {', '.join(other)}/): use --split {other[0]}")
    return _imagefolder(path, name, split, size)
