"""The named datasets of :mod:`kmtools.data.registry` (``cifar10``, ``cifar100``, ``mnist``,
``fashion-mnist``, ``svhn``): searched under the data roots in torchvision's formats, as idx
files or as ImageFolder trees; downloaded only when asked to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmtools.data.imagefolder import _class_dirs, _imagefolder
from kmtools.data.info import DataInfo, Resize, _finish, _U8Dataset
from kmtools.data.readers import _idx
from kmtools.errors import DataError


def _named(key: str, roots: list[Path], split: str, download: bool,
           size: Resize | None = None) -> DataInfo:
    aliases = {
        "cifar10": ["cifar10", "cifar-10", "CIFAR10", "CIFAR-10-images", "cifar10-jpeg"],
        "cifar100": ["cifar100", "cifar-100", "CIFAR100"],
        "mnist": ["mnist", "MNIST"],
        "fashion-mnist": ["fashion-mnist", "FashionMNIST", "fashion_mnist"],
        "svhn": ["svhn", "SVHN"],
    }[key]
    searched: list[str] = []
    extra = [Path("/usr/share/datasets")] if key == "fashion-mnist" else []
    for root in roots + extra:
        for folder in [root / a for a in aliases] + [root]:
            searched.append(str(folder))
            if not folder.is_dir():
                continue
            info = _try_formats(key, folder, split, size)
            if info is not None:
                return info
    if download:
        return _download(key, roots[0], split)
    shown = ", ".join(dict.fromkeys(searched[:8]))
    raise DataError(
        f"dataset {key} not found (searched {shown}): put it under --data-root/$KMTOOLS_DATA in "
        f"torchvision's format or as an ImageFolder tree train/<class>/, or pass --download"
    )


def _try_formats(key: str, folder: Path, split: str, size: Resize | None = None) -> DataInfo | None:
    train = split == "train"
    if key in ("cifar10", "cifar100"):
        batches = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
        if (folder / batches).is_dir():
            import torchvision

            cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
            try:
                ds = cls(str(folder), train=train, download=False)
            except RuntimeError as exc:
                raise DataError(f"{folder / batches} is incomplete or corrupt ({exc})") from exc
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            tds = _U8Dataset(x, torch.tensor(ds.targets))
            return _finish(tds, key, split, list(ds.classes), str(folder / batches))
    if key in ("mnist", "fashion-mnist"):
        for raw in (folder / "raw", folder / ("FashionMNIST" if key == "fashion-mnist" else "MNIST") / "raw", folder):
            info = _idx(raw, key, split)
            if info is not None:
                return info
    if key == "svhn":
        mat = folder / f"{split}_32x32.mat"
        if mat.is_file():
            import torchvision

            ds = torchvision.datasets.SVHN(str(folder), split=split, download=False)
            tds = _U8Dataset(torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64)))
            return _finish(tds, key, split, [str(i) for i in range(10)], str(mat))
    if (folder / split).is_dir() and _class_dirs(folder / split):
        return _imagefolder(folder / split, key, split, size)
    return None


def _download(key: str, root: Path, split: str) -> DataInfo:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    train = split == "train"
    cls: Any = {
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
        "mnist": torchvision.datasets.MNIST,
        "fashion-mnist": torchvision.datasets.FashionMNIST,
    }.get(key)
    try:
        if key == "svhn":
            torchvision.datasets.SVHN(str(root / "svhn"), split=split, download=True)
            return _named(key, [root], split, False)
        cls(str(root / key), train=train, download=True)
    except Exception as exc:
        raise DataError(f"download of {key} failed ({exc}): fetch it by hand into {root}") from exc
    return _named(key, [root], split, False)
