"""Datasets read from single files for :mod:`kmtools.data.registry`: scikit-learn's bundled
``digits`` and ``wine``, ``.npz`` archives with ``x`` and ``y`` (or ``x_<split>``,
``y_<split>``), and MNIST-style idx files (``*-images-idx3-ubyte[.gz]``).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from kmtools.data.info import DataInfo, _finish, _U8Dataset
from kmtools.errors import DataError


def _sklearn(key: str, split: str) -> DataInfo:
    from sklearn.datasets import load_digits, load_wine

    if key == "digits":
        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        classes = [str(c) for c in bunch.target_names]
    else:
        bunch = load_wine()
        x = torch.tensor(bunch.data, dtype=torch.float32)
        classes = [str(c) for c in bunch.target_names]
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = round(0.75 * len(y))
    sel = idx[:cut] if split == "train" else idx[cut:]
    info = _finish(TensorDataset(x[sel], y[sel]), key, split, classes, "scikit-learn (bundled)")
    if key == "wine":  # tabular: recommended standardisation from the training split
        tr = x[idx[:cut]]
        info.mean, info.std = tr.mean(0).tolist(), tr.std(0).tolist()
    return info


def _check_npz(path: Path) -> None:
    """An .npz is a zip of .npy arrays; refuse other files and archives that would unpack to
    more than half of this machine's memory (np.load decompresses whole arrays)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not an .npz archive (a zip of .npy arrays, as np.savez writes)") from exc
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return
    if total > ram // 2:
        raise DataError(
            f"{path} would unpack to {total / 2**30:.1f} GiB, more than half of this machine's memory: "
            "split it into smaller files or use an ImageFolder tree"
        )


def _npz(path: Path, split: str) -> DataInfo:
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            kx = f"x_{split}" if f"x_{split}" in files else "x"
            ky = f"y_{split}" if f"y_{split}" in files else "y"
            if kx not in files or ky not in files:
                raise DataError(
                    f"{path} must hold arrays 'x' and 'y' (or 'x_{split}', 'y_{split}'); it has {sorted(files)}"
                )
            x, y = z[kx], z[ky]
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    if x.ndim < 2 or y.ndim < 1:
        raise DataError(f"{path}: x must be (N, features...) and y (N,), got shapes {x.shape} and {y.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{path}: x must hold numbers, not {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer) and not (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    ):
        raise DataError(f"{path}: y must hold integer class indices, got {y.dtype} values")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    xt = torch.from_numpy(np.asarray(x))
    xt = xt.float() / 255.0 if xt.dtype == torch.uint8 else xt.float()
    if not bool(torch.isfinite(xt).all()):
        raise DataError(f"{path}: x holds NaN or Inf values")
    yt = torch.from_numpy(np.asarray(y)).long().flatten()
    if len(yt) and int(yt.min()) < 0:
        raise DataError(f"{path}: labels must be non-negative class indices")
    classes = [str(i) for i in range(int(yt.max()) + 1 if len(yt) else 0)]
    return _finish(TensorDataset(xt, yt), path.stem, split, classes, str(path))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        data = fh.read()
    if len(data) < 4:
        raise DataError(f"{path} is not an idx file")
    _, _, dtype, ndim = struct.unpack(">BBBB", data[:4])
    if dtype != 0x08:
        raise DataError(f"{path}: unsupported idx dtype {dtype}")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated")
    return arr.reshape(dims)


def _idx(folder: Path, key: str, split: str) -> DataInfo | None:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for part, stem in (("x", f"{prefix}-images-idx3-ubyte"), ("y", f"{prefix}-labels-idx1-ubyte")):
        for cand in (folder / stem, folder / f"{stem}.gz"):
            if cand.is_file():
                found[part] = cand
                break
    if len(found) < 2:
        return None
    x = torch.from_numpy(_read_idx(found["x"]).copy()).unsqueeze(1)
    y = torch.from_numpy(_read_idx(found["y"]).astype(np.int64))
    classes = (
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        if key == "fashion-mnist"
        else [str(i) for i in range(10)]
    )
    return _finish(_U8Dataset(x, y), key, split, classes, str(folder))
