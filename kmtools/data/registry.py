"""Names -> datasets from local folders. Nothing is downloaded unless ``download=True``.

Every dataset yields ``(x, y)`` with ``x`` a float tensor in pixel space ([0, 1] for images,
(C, H, W); raw features for tabular data) and ``y`` an int class index.

Names: ``digits``, ``wine`` (scikit-learn, bundled), ``cifar10``, ``cifar100``, ``mnist``,
``fashion-mnist``, ``svhn`` (torchvision formats or ImageFolder trees under the data root),
any ImageFolder path (``train/<class>/…``, ``test/<class>/…`` or ``<class>/…``), an ``.npz``
file with ``x`` and ``y``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from kmtools.errors import ConfigError, DataError

NAMES = ("digits", "wine", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn")
SPLITS = ("train", "test")
#: ImageFolder trees may also hold a ``val/`` folder (the ImageNet layout).
FOLDER_SPLITS = ("train", "val", "test")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


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


def _finish(ds: Dataset[Any], name: str, split: str, classes: list[str], source: str) -> DataInfo:
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"dataset {name} ({split}) at {source} is empty")
    x0, _ = ds[0]
    return DataInfo(ds, name, split, classes, tuple(torch.as_tensor(x0).shape), source)


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


#: ImageFolders of small images (≤ 64×64, e.g. CIFAR as JPEG) with at most this many files are
#: decoded once into a uint8 tensor (60k CIFAR images: 184 MB), so training and attacks slice
#: batches from memory instead of decoding JPEGs every epoch.
MAX_DECODE_IN_MEMORY = 200_000


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
