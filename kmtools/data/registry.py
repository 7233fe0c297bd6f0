"""Names -> datasets from local folders. Nothing is downloaded unless ``download=True``.

Every dataset yields ``(x, y)`` with ``x`` a float tensor in pixel space ([0, 1] for images,
(C, H, W); raw features for tabular data) and ``y`` an int class index.

Names: ``digits``, ``wine`` (scikit-learn, bundled), ``cifar10``, ``cifar100``, ``mnist``,
``fashion-mnist``, ``svhn`` (torchvision formats or ImageFolder trees under the data root),
any ImageFolder path (``train/<class>/…``, ``test/<class>/…`` or ``<class>/…``), an ``.npz``
file with ``x`` and ``y``.

The pieces: :mod:`kmtools.data.info` (:class:`DataInfo`, ``--image-size``, in-memory images),
:mod:`kmtools.data.imagefolder`, :mod:`kmtools.data.readers` (scikit-learn, ``.npz``, idx)
and :mod:`kmtools.data.named` (the named datasets); this module re-exports their names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from kmtools.data.imagefolder import (
    _IMG_EXT,
    FOLDER_SPLITS,
    MAX_DECODE_IN_MEMORY,
    ImageFiles,
    _class_dirs,
    _decode_all,
    _imagefolder,
    _imagefolder_root,
    _pil_resize,
)
from kmtools.data.info import (
    DataInfo,
    Resize,
    Resized,
    _finish,
    _U8Dataset,
    crop_box,
    parse_image_size,
    parse_resize,
    resized_hw,
)
from kmtools.data.named import _download, _named, _try_formats
from kmtools.data.readers import _check_npz, _idx, _npz, _read_idx, _sklearn
from kmtools.errors import ConfigError, DataError

__all__ = [
    "FOLDER_SPLITS", "MAX_DECODE_IN_MEMORY", "NAMES", "SPLITS", "_IMG_EXT", "DataInfo", "ImageFiles", "Resize",
    "Resized", "_U8Dataset", "_check_npz", "_class_dirs", "_decode_all", "_download", "_finish", "_idx",
    "_imagefolder", "_imagefolder_root", "_labels", "_load", "_named", "_npz", "_pil_resize", "_read_idx",
    "_sklearn", "_try_formats", "check_compatible", "class_sorted", "crop_box", "data_roots", "load_dataset",
    "parse_image_size", "parse_resize", "resized_hw", "subset", "to_tensors",
]

NAMES = ("digits", "wine", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn")
SPLITS = ("train", "test")


def data_roots(root: str | Path | None = None) -> list[Path]:
    """Where datasets are searched: ``--data-root``, ``$KMTOOLS_DATA``, ``./data``."""
    out: list[Path] = []
    if root:
        out.append(Path(root).expanduser())
    env = os.environ.get("KMTOOLS_DATA")
    if env:
        out.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    out.append(Path("data"))
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen

def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "test",
    download: bool = False,
    image_size: str | int | Sequence[int] | None = None,
) -> DataInfo:
    """Load a dataset by name or path (see module docstring). ``image_size`` ``N`` scales the
    shorter side of every image to N (aspect kept) and crops the centre N×N (torchvision's
    ``Resize(N)`` + ``CenterCrop(N)``); ``HxW`` scales to exactly H×W. Bilinear with
    antialiasing: ImageFolder files with PIL as they are decoded (so folders of mixed sizes
    load), in-memory images per item."""
    size = parse_resize(image_size)
    info = _load(name, root, split, download, size)
    if size is None:
        return info
    if len(info.input_shape) != 3:
        raise ConfigError(f"--image-size applies to images (C, H, W); {info.name} has inputs of shape "
                          f"{tuple(info.input_shape)}: drop --image-size")
    if info.image_size is None:  # in-memory tensors (ImageFolders were resized as decoded)
        info.dataset = Resized(info.dataset, size)
    info.input_shape = (info.input_shape[0], *size.size)
    info.image_size = size
    return info


def _load(name: str, root: str | Path | None, split: str, download: bool, size: Resize | None) -> DataInfo:
    if split not in FOLDER_SPLITS:
        raise ConfigError(f"--split must be train, val (ImageFolder trees) or test, not {split!r}")
    key = name.strip().lower().replace("_", "-")
    if split == "val" and not Path(name).expanduser().is_dir():
        raise ConfigError(f"--split val exists only for ImageFolder trees with a val/ folder; {name} has "
                          "train and test")
    if key in ("digits", "wine"):
        return _sklearn(key, split)
    path = Path(name).expanduser()
    if key not in NAMES:
        if path.suffix == ".npz" and path.is_file():
            return _npz(path, split)
        if path.is_dir():
            return _imagefolder_root(path, split, name, size)
        if path.suffix == ".npz" or "/" in name or path.suffix:
            raise DataError(f"dataset {name!r} not found: no such file or folder")
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)}, an ImageFolder path or an .npz file")
    info = _named(key, data_roots(root), split, download, size)
    if len(info) == 0:
        raise DataError(f"dataset {name} ({split}) is empty: check the files under {info.source}")
    return info


def _labels(ds: Any) -> torch.Tensor | None:
    """All labels without loading inputs, for the in-memory and ImageFolder datasets."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[1]
    if isinstance(ds, _U8Dataset):
        return ds.y
    if isinstance(ds, ImageFiles):
        return torch.tensor([label for _, label in ds.files])
    if isinstance(ds, Resized):
        return _labels(ds.inner)
    return None


def class_sorted(ds: Any) -> bool:
    """True when the labels are in blocks by class (ImageFolder order), so the first ``n``
    samples would hold only the first classes."""
    y = _labels(ds)
    return y is not None and len(y) > 1 and bool((y[1:] >= y[:-1]).all()) and int(y[0]) != int(y[-1])


def subset(info: DataInfo, n: int | None, seed: int = 0, shuffle: bool = False) -> DataInfo:
    """The first ``n`` samples, or a seeded random ``n`` (kept in dataset order) with ``shuffle``
    or when the dataset is sorted by class (an ImageFolder), so that every class is present."""
    if n is None:
        return info
    total = len(info)
    if n <= 0:
        raise ConfigError(f"-n must be positive, got {n}")
    if n > total:
        raise DataError(f"-n {n} is larger than the dataset ({info.name} {info.split} has {total} samples)")
    if shuffle:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    elif n < total and class_sorted(info.dataset):
        idx = sorted(torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].tolist())
    else:
        idx = list(range(n))
    return DataInfo(Subset(info.dataset, idx), info.name, info.split, info.classes, info.input_shape,
                    info.source, info.mean, info.std, info.image_size)


def to_tensors(data: Dataset[Any], workers: int = 0, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` as ``(x float, y long)`` tensors. In-memory datasets are sliced; others
    (large ImageFolders, decoded per item) go through a DataLoader with ``workers`` processes,
    in dataset order, so the result does not depend on ``workers``."""
    from kmtools.features import as_tensors, loader

    t = as_tensors(data)
    if t is not None:
        return t[0].float(), torch.as_tensor(t[1]).long()
    xs, ys = [], []
    for x, y in loader(data, batch_size, torch.device("cpu"), workers):
        xs.append(x.float())
        ys.append(torch.as_tensor(y).long())
    if not xs:
        raise DataError("the dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def check_compatible(info: DataInfo, num_classes: int, input_shape: Sequence[int] | None) -> None:
    """Class count and input shape of the data must match the model's."""
    if info.num_classes > num_classes:
        raise DataError(
            f"dataset {info.name} has {info.num_classes} classes but the model's head has {num_classes}: "
            "use a matching checkpoint or --num-classes"
        )
    if input_shape is not None and tuple(input_shape) != tuple(info.input_shape):
        have, want = tuple(info.input_shape), tuple(input_shape)
        if len(have) == len(want) == 3 and have[0] == want[0]:
            raise DataError(
                f"dataset {info.name} has images of shape {have} but the model expects {want}: "
                f"pass --image-size {want[1]}x{want[2]} to resize them as they are loaded"
            )
        raise DataError(
            f"dataset {info.name} has inputs of shape {tuple(info.input_shape)} but the model expects "
            f"{tuple(input_shape)}: use matching data (or --input-shape when loading the model)"
        )
