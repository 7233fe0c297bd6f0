"""DataLoader workers for large ImageFolders (decoded per item) and the ``val/`` split."""

from __future__ import annotations

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
