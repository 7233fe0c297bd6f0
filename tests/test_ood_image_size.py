"""``--ood DIR`` follows ``--image-size`` (issue 17): a folder of mixed-size images loads as an
OOD set, resized as ``--data`` is (shorter side, centre crop), then to the model's input shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools.models import save_model, wrap, zoo
from kmtools.runs.evaluate import DataSpec, ood_sources
from kmtools_cli.main import app

GREEN, RED = (0, 200, 0), (255, 0, 0)


def _png(path: Path, hw: tuple[int, int], seed: int, border: bool = False) -> None:
    """Random RGB pixels; with ``border``, a green image whose left and right quarters are red
    (a centre crop of a wide image keeps only green)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if border:
        arr = np.zeros((*hw, 3), np.uint8)
        arr[:] = GREEN
        q = hw[1] // 4
        arr[:, :q], arr[:, -q:] = RED, RED
    else:
        arr = (np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _model(tmp_path: Path, side: int, classes: int = 2) -> Path:
    torch.manual_seed(0)
    net = zoo.create("smallcnn", num_classes=classes, in_channels=3, width=4)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": classes, "in_channels": 3, "width": 4},
                 input_shape=(3, side, side))
    return save_model(model, tmp_path / "m.safetensors")


def _mixed_data(root: Path) -> Path:
    for k, sizes in enumerate([[(20, 30), (40, 12), (16, 16)], [(7, 9), (64, 48), (25, 25)]]):
        for i, hw in enumerate(sizes):
            _png(root / f"c{k}" / f"{i}.png", hw, seed=10 * k + i)
    return root


def _mixed_ood(root: Path) -> Path:
    """An OOD folder of five images of five sizes, none of them the data's."""
    for i, hw in enumerate([(11, 50), (30, 14), (90, 33), (19, 19), (45, 60)]):
        _png(root / "other" / f"{i}.png", hw, seed=100 + i)
    return root


def test_cli_evaluate_with_a_mixed_size_ood_folder(tmp_path: Path) -> None:
    """--ood and --val-data folders of mixed sizes load with --image-size, as --data does."""
    mp, data, ood = _model(tmp_path, 16), _mixed_data(tmp_path / "data"), _mixed_ood(tmp_path / "ood")
    val = tmp_path / "val"
    for k in range(2):
        for i, hw in enumerate([(18, 40), (70, 21)]):
            _png(val / f"c{k}" / f"{i}.png", hw, seed=50 + 10 * k + i)
    args = ["evaluate", str(mp), "--data", str(data), "--image-size", "16", "--ood", str(ood), "--ood", "uniform",
            "--val-data", str(val), "--n-noise", "50", "--format", "json", "-q", "--out", str(tmp_path / "ev")]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads(res.stdout)
    assert doc["data"]["image_size"] == [16, 16] and doc["data"]["n"] == 6
    by_source = doc["results"]["ood_by_source"]
    assert sorted(by_source) == sorted([str(ood), "uniform"]), list(by_source)
    folder = by_source[str(ood)]
    assert folder["n"] == 5 and folder["flagged_at_recommended"]["n"] == 5  # every image, each resized
    assert 0.0 <= folder["auroc"] <= 1.0
    assert doc["results"]["validation"]["n"] == 4


def test_mixed_size_ood_folder_without_image_size_is_a_one_line_error(tmp_path: Path) -> None:
    mp, ood = _model(tmp_path, 8, classes=10), _mixed_ood(tmp_path / "ood")
    res = CliRunner().invoke(app, ["evaluate", str(mp), "--data", "digits", "-n", "20", "--ood", str(ood),
                                   "--format", "json", "-q", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "--image-size" in last, res.output


@pytest.mark.parametrize(("image_size", "model_side"), [("12", 12), ("12", 8)])
def test_ood_images_are_centre_cropped_then_fitted_to_the_model(tmp_path: Path, image_size: str,
                                                                model_side: int) -> None:
    """Wide images with red left/right quarters: ``--image-size 12`` keeps the green centre (no
    red at all, as --data would be loaded); a model of another size then gets them resized."""
    root = tmp_path / "ood"
    for i, hw in enumerate([(20, 60), (33, 90), (12, 40)]):
        _png(root / "wide" / f"{i}.png", hw, seed=i, border=True)
    from kmtools.models import load_model

    model = load_model(_model(tmp_path, model_side))
    data = DataSpec("digits", image_size=image_size)
    info = load_dataset("digits", split="test", image_size=image_size)
    logs: list[str] = []
    parts = ood_sources([str(root)], data, n_noise=100, model=model, info=info, log=logs.append)
    assert len(parts) == 1 and len(parts[0]) == 3
    x = torch.stack([parts[0].dataset[i][0] for i in range(3)])
    assert tuple(x.shape) == (3, 3, model_side, model_side)
    red, green = x[:, 0], x[:, 1]
    assert float(red.max()) < 0.05 and float(green.min()) > 0.7  # the red borders were cropped away
    assert bool(logs) == (model_side != 12)  # resized to the model only where the sizes differ
