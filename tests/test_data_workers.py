"""DataLoader workers for large ImageFolders (decoded per item) and the ``val/`` split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kmtools.data import load_dataset, to_tensors
from kmtools.data.registry import ImageFiles
from kmtools.errors import ConfigError
from kmtools_cli.main import app

NETDEF = Path(__file__).parent / "usermodel" / "netdef.py"


def _tree(root: Path) -> Path:
    """train/ and val/ with two classes of 70x70 grey PNGs (too large to be decoded up front)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 3)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8), "L").save(root / split / c / f"{i}.png")
    return root


def test_val_split_and_workers_give_the_same_tensors(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    val = load_dataset(str(root), split="val")
    assert len(val) == 6 and val.classes == ["cat", "dog"] and isinstance(val.dataset, ImageFiles)
    x0, y0 = to_tensors(val.dataset, workers=0, batch_size=4)
    x2, y2 = to_tensors(val.dataset, workers=2, batch_size=4)
    assert x0.shape == (6, 1, 70, 70) and torch.equal(x0, x2) and torch.equal(y0, y2)
    assert y0.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ConfigError, match="only for ImageFolder trees"):
        load_dataset("digits", split="val")


def test_centroids_takes_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "imgs")
    shutil.copy(NETDEF, tmp_path / "model.py")
    import importlib.util

    spec = importlib.util.spec_from_file_location("netdef_for_workers", NETDEF)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Net(num_classes=2).state_dict(), tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)
    outs = []
    for w in ("0", "2"):
        res = CliRunner().invoke(app, ["centroids", "m.pt", "--arch", "model.py:Net", "--data", str(root),
                                       "--split", "val", "--workers", w, "--out", f"c{w}.safetensors", "-q"])
        assert res.exit_code == 0, res.output
        from safetensors.torch import load_file

        outs.append(load_file(tmp_path / f"c{w}.safetensors")["centroids"])
    assert torch.equal(outs[0], outs[1])


def test_training_batches_of_per_item_data_are_the_in_memory_batches() -> None:
    """``kmtools.tailor.training.batches`` reads a per-item dataset through DataLoader workers in
    exactly the order the loop asks for: the same tensors as slicing the data held in memory."""
    from torch.utils.data import Dataset

    from kmtools.tailor.training import batches

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(23, 1, 5, 5, generator=g), torch.randint(0, 3, (23,), generator=g)

    class PerItem(Dataset[tuple[torch.Tensor, int]]):  # not sliceable: as_tensors gives None
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return x[i], int(y[i])

    order = torch.randperm(23, generator=g)
    want = [(s, a, b) for s, a, b in batches(PerItem(), (x, y), order, 4, 0, torch.device("cpu"))]
    assert [s for s, _, _ in want] == [0, 1, 2, 3, 4, 5]  # 5 × 4 items, then the last 3
    for workers in (0, 2):
        got = list(batches(PerItem(), None, order, 4, workers, torch.device("cpu")))
        assert [s for s, _, _ in got] == [s for s, _, _ in want]
        for (_, xa, ya), (_, xb, yb) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == torch.long
    tail = list(batches(PerItem(), None, order[:9], 4, 0, torch.device("cpu")))
    assert [len(b) for _, _, b in tail] == [4, 4]  # a 1-item batch would break BatchNorm statistics: skipped


def test_tailor_trains_the_same_network_with_and_without_workers(tmp_path: Path) -> None:
    """A 70×70 ImageFolder is read per item; ``tailor --workers 2`` trains on batches read by two
    DataLoader processes and must write the same network as ``--workers 0`` (the train/val tree
    also makes tailor test on val/, there being no test/)."""
    root = _tree(tmp_path / "imgs")
    info = load_dataset(str(root), split="train")
    from kmtools.features import as_tensors

    assert isinstance(info.dataset, ImageFiles) and as_tensors(info.dataset) is None  # per item
    import importlib.util

    spec = importlib.util.spec_from_file_location("netdef_for_tailor_workers", NETDEF)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Net(num_classes=2).state_dict(), tmp_path / "m.pt")
    outs = []
    for w in ("0", "2"):
        res = CliRunner().invoke(app, ["tailor", str(tmp_path / "m.pt"), "--arch", f"{NETDEF}:Net", "--arch-kwargs",
                                       '{"num_classes": 2}', "--data", str(root), "--epochs", "2", "--batch-size", "3",
                                       "--val-split", "0", "--workers", w, "--export", "", "--lr", "0.05",
                                       "--out", str(tmp_path / f"t{w}"), "--format", "json"])
        assert res.exit_code == 0, res.output
        assert "no test/: the test figures use val/" in res.stderr
        doc = json.loads(res.stdout)
        assert doc["results"]["test"]["softmax"]["n"] == 6  # val/ holds 3 + 3 images
        outs.append(((tmp_path / f"t{w}" / "gauss.safetensors").read_bytes(), doc["results"]["history"][-1]["loss"]))
    assert outs[0] == outs[1]
    assert outs[0][1] is not None and outs[0][1] > 0  # it trained (a loss was recorded)
