"""Dataset registry: bundled sets, ImageFolder, npz, idx files, clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kmtools.data import load_dataset, subset
from kmtools.errors import DataError


def test_digits_and_wine() -> None:
    tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797 and tr.input_shape == (1, 8, 8) and tr.num_classes == 10
    x, _ = tr.dataset[0]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    w = load_dataset("wine", split="train")
    assert w.input_shape == (13,) and w.num_classes == 3 and len(w.mean) == 13


def test_imagefolder_tree(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            d = tmp_path / "cifar10" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                arr = np.full((32, 32, 3), 40 * i + (100 if c == "dog" else 0), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    info = load_dataset("cifar10", root=tmp_path, split="test")
    assert info.classes == ["cat", "dog"] and len(info) == 6 and info.input_shape == (3, 32, 32)
    x, y = info.dataset[4]
    assert y == 1 and float(x[0, 0, 0]) == pytest.approx((100 + 40) / 255)
    direct = load_dataset(str(tmp_path / "cifar10"), split="train")
    assert len(direct) == 6


def test_idx_gz_fashion_layout(tmp_path: Path) -> None:
    raw = tmp_path / "fashion-mnist"
    raw.mkdir()
    imgs = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    labels = np.array([0, 1, 2, 3, 9], dtype=np.uint8)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 5, 28, 28) + imgs.tobytes())
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + labels.tobytes())
    info = load_dataset("fashion-mnist", root=tmp_path, split="test")
    x, y = info.dataset[4]
    assert x.shape == (1, 28, 28) and y == 9 and info.classes[9] == "Ankle boot"
    torch.testing.assert_close(x[0], torch.from_numpy(imgs[4]).float() / 255)


def test_npz(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.rand(10, 4).astype(np.float32), y=np.arange(10) % 3)
    info = load_dataset(str(p))
    assert len(info) == 10 and info.num_classes == 3


def test_missing_dataset_lists_searched_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("cifar10", root=tmp_path)


def test_empty_imagefolder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(tmp_path))


def test_subset_too_large() -> None:
    info = load_dataset("wine", split="test")
    with pytest.raises(DataError, match="larger than the dataset"):
        subset(info, 10_000)


def test_n_on_a_class_sorted_imagefolder_keeps_every_class(tmp_path: Path) -> None:
    """`-n` on an ImageFolder (files in class blocks) must not return only the first class."""
    from PIL import Image

    from kmtools.data.registry import class_sorted

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("RGB", (4, 4), color=(i * 20, 0, 0)).save(tmp_path / c / f"{i}.png")
    info = load_dataset(str(tmp_path))
    assert class_sorted(info.dataset)
    sub = subset(info, 9, seed=0)
    labels = [int(sub.dataset[i][1]) for i in range(9)]
    assert len(set(labels)) == 3 and labels == sorted(labels)
    assert [int(subset(info, 9, seed=0).dataset[i][1]) for i in range(9)] == labels  # seeded
