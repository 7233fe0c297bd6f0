"""``--image-size`` (issue 17): images resized on loading, ImageFolders of mixed sizes load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kmtools.data import load_dataset, subset, to_tensors
from kmtools.data.registry import parse_image_size
from kmtools.errors import ConfigError, DataError
from kmtools.models import save_model, wrap, zoo
from kmtools_cli.main import app


def _png(path: Path, hw: tuple[int, int], value: int | None = None, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.full((*hw, 3), value, np.uint8) if value is not None else (rng.random((*hw, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _mixed(root: Path) -> Path:
    """Two classes, four RGB PNGs of four different sizes (one of them constant grey 200)."""
    _png(root / "cat" / "0.png", (20, 30), seed=0)
    _png(root / "cat" / "1.png", (40, 12), value=200)
    _png(root / "dog" / "0.png", (7, 7), seed=2)
    _png(root / "dog" / "1.png", (64, 48), seed=3)
    return root


def test_parse_image_size() -> None:
    assert parse_image_size("64") == (64, 64)
    assert parse_image_size("32x48") == (32, 48)
    assert parse_image_size(None) is None
    for bad in ("0", "a", "1x2x3", "-4"):
        with pytest.raises(ConfigError, match="--image-size"):
            parse_image_size(bad)


def test_mixed_size_imagefolder_needs_and_takes_image_size(tmp_path: Path) -> None:
    root = _mixed(tmp_path / "imgs")
    with pytest.raises(DataError, match="--image-size"):
        load_dataset(str(root))
    info = load_dataset(str(root), image_size="16x24")
    assert info.input_shape == (3, 16, 24)
    assert info.image_size == (16, 24) and info.to_dict()["image_size"] == [16, 24]
    x, y = to_tensors(info.dataset)
    assert x.shape == (4, 3, 16, 24) and y.tolist() == [0, 0, 1, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # a constant image stays constant under bilinear resizing
    assert torch.allclose(x[1], torch.full_like(x[1], 200 / 255), atol=1 / 255)
    # subsets keep the recorded size
    assert subset(info, 2, shuffle=True).to_dict()["image_size"] == [16, 24]


def test_digits_resized_to_16() -> None:
    plain = load_dataset("digits", split="test")
    info = load_dataset("digits", split="test", image_size=16)
    assert info.input_shape == (1, 16, 16) and len(info) == len(plain)
    x, y = info.dataset[0]
    assert tuple(x.shape) == (1, 16, 16) and int(y) == int(plain.dataset[0][1])
    xs, _ = to_tensors(info.dataset)
    assert xs.shape == (len(plain), 1, 16, 16)
    assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0
    # upsampling by 2 keeps the mean intensity of each image (to interpolation error)
    x0 = torch.as_tensor(plain.dataset[0][0])
    assert abs(float(x.mean()) - float(x0.mean())) < 0.02
    assert plain.to_dict()["image_size"] is None


def test_tabular_data_refuses_image_size() -> None:
    with pytest.raises(ConfigError, match="drop --image-size"):
        load_dataset("wine", image_size=8)


def _cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_evaluate_on_resized_mixed_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo.create("smallcnn", num_classes=2, in_channels=3, width=4)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 2, "in_channels": 3, "width": 4},
                 input_shape=(3, 16, 16))
    mp = save_model(model, tmp_path / "m.safetensors")
    root = _mixed(tmp_path / "imgs")
    res = _cli("evaluate", mp, "--data", root, "--ood", "none", "--format", "json", "-q")
    assert res.exit_code == 1 and "--image-size" in res.stderr.strip().splitlines()[-1], res.output
    res = _cli("evaluate", mp, "--data", root, "--image-size", "16", "--ood", "none", "--format", "json", "-q")
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads(res.stdout)
    assert doc["data"]["image_size"] == [16, 16] and doc["data"]["input_shape"] == [3, 16, 16]
    assert doc["data"]["n"] == 4


def test_a_users_any_size_model_is_compared_at_the_resized_size(tmp_path: Path) -> None:
    """The issue's path: a user's class (any image size) and its state dict, data resized with
    --image-size; ``--compare`` loads the same class and must adopt the data's size too."""
    import shutil

    from sklearn.datasets import load_digits

    shutil.copy(Path(__file__).parent / "usermodel" / "netdef.py", tmp_path / "netdef.py")
    import importlib.util

    spec = importlib.util.spec_from_file_location("netdef_copy", tmp_path / "netdef.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Net().state_dict(), tmp_path / "model.pt")
    d = load_digits()
    np.savez(tmp_path / "digits.npz", x=(d.images[:40, None] / 16.0).astype(np.float32), y=d.target[:40])
    args = ["--arch", f"{tmp_path / 'netdef.py'}:Net", "--data", str(tmp_path / "digits.npz"), "--image-size", "16"]
    for cmd in (["evaluate", str(tmp_path / "model.pt"), "--compare", str(tmp_path / "model.pt")],
                ["attack", "onepixel", str(tmp_path / "model.pt"), "--compare", str(tmp_path / "model.pt"),
                 "-n", "2", "--popsize", "8", "--steps", "2"]):
        res = CliRunner().invoke(app, [*cmd, *args, "--out", str(tmp_path / cmd[0]), "--format", "json", "-q"])
        assert res.exit_code == 0, (cmd, res.output)
        assert json.loads(res.stdout)["data"]["input_shape"] == [1, 16, 16]


def test_grey_data_for_an_rgb_model_is_converted(tmp_path: Path) -> None:
    """Grey digits given to a 3-channel model arrive as RGB (the channel repeated)."""
    net = zoo.create("smallcnn", num_classes=10, in_channels=3, width=4)
    path = tmp_path / "rgb.safetensors"
    save_model(wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 3, "width": 4},
                    input_shape=(3, 8, 8)), path)
    res = CliRunner().invoke(app, ["evaluate", str(path), "--data", "digits", "-n", "20", "--format", "json", "-q",
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["input_shape"] == [3, 8, 8]


def test_workers_do_not_change_tailor_or_attack_results(tmp_path: Path) -> None:
    """--workers loads an ImageFolder (decoded per item) through DataLoader processes; the
    tailored network and the attack's records are the same as with no workers."""
    for split, n in (("train", 12), ("test", 4)):
        for k in range(2):
            for i in range(n):
                seed = 100 * k + i + (7 if split == "test" else 0)
                _png(tmp_path / "imgs" / split / f"c{k}" / f"{i}.png", (8, 8), seed=seed)
    net = zoo.create("smallcnn", num_classes=2, in_channels=3, width=4)
    model = tmp_path / "m.safetensors"
    save_model(wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 2, "in_channels": 3, "width": 4},
                    input_shape=(3, 8, 8)), model)
    outs = []
    for w in ("0", "2"):
        out = tmp_path / f"t{w}"
        res = CliRunner().invoke(app, ["tailor", str(model), "--data", str(tmp_path / "imgs"), "--epochs", "1",
                                       "--batch-size", "8", "--val-split", "0.25", "--max-drop", "100",
                                       "--workers", w, "--export", "", "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
        att = CliRunner().invoke(app, ["attack", "onepixel", str(out / "gauss.safetensors"), "--data",
                                       str(tmp_path / "imgs"), "-n", "4", "--popsize", "8", "--steps", "2",
                                       "--workers", w, "--out", str(tmp_path / f"a{w}"), "--format", "json", "-q"])
        assert att.exit_code == 0, att.output
        fooled = json.loads(att.stdout)["results"]["onepixel"]["fooled"]
        outs.append(((out / "gauss.safetensors").read_bytes(), fooled))
    assert outs[0] == outs[1]


# --------------------------------------------------------------------------- shorter side + centre crop
RED, GREEN, BLUE = (255, 0, 0), (0, 200, 0), (0, 0, 255)


def _bordered(path: Path, hw: tuple[int, int], border: tuple[int, int, int], wide: bool) -> None:
    """A green image whose outer quarters (left/right when ``wide``, else top/bottom) are ``border``."""
    arr = np.zeros((*hw, 3), np.uint8)
    arr[:] = GREEN
    q = (hw[1] if wide else hw[0]) // 4
    if wide:
        arr[:, :q], arr[:, -q:] = border, border
    else:
        arr[:q], arr[-q:] = border, border
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _bordered_folder(root: Path) -> Path:
    _bordered(root / "wide" / "0.png", (20, 60), RED, wide=True)
    _bordered(root / "wide" / "1.png", (33, 90), RED, wide=True)
    _bordered(root / "tall" / "0.png", (80, 24), BLUE, wide=False)
    _bordered(root / "tall" / "1.png", (50, 21), BLUE, wide=False)
    return root


def test_image_size_n_keeps_the_centre_of_non_square_images(tmp_path: Path) -> None:
    """--image-size N scales the shorter side to N and crops the centre N×N (torchvision's
    convention): the coloured borders of wide and tall images are cut away, the aspect is kept.
    HxW squashes the whole image in, borders included."""
    root = _bordered_folder(tmp_path / "imgs")
    info = load_dataset(str(root), image_size="10")
    assert info.input_shape == (3, 10, 10) and info.to_dict()["resize"] == "crop"
    x, _ = to_tensors(info.dataset)
    green = torch.tensor(GREEN, dtype=torch.float32).div(255)[:, None, None]
    assert x.shape == (4, 3, 10, 10)
    assert float((x - green).abs().max()) <= 2 / 255  # every pixel of every crop is the centre's green
    exact = load_dataset(str(root), image_size="10x10")
    assert exact.to_dict()["resize"] == "exact"
    xe, _ = to_tensors(exact.dataset)
    assert float(xe[:, 0].max()) > 0.9 and float(xe[:, 2].max()) > 0.9  # red and blue borders squashed in


def test_pil_crop_is_torchvisions_resize_and_centre_crop(tmp_path: Path) -> None:
    """Pixel for pixel what torchvision.transforms Resize(N) + CenterCrop(N) give on the PIL image."""
    from torchvision import transforms

    root = tmp_path / "imgs"
    sizes = [(20, 30), (41, 17), (64, 48), (9, 9)]
    for i, hw in enumerate(sizes):
        _png(root / "c" / f"{i}.png", hw, seed=i)
    tf = transforms.Compose([transforms.Resize(12), transforms.CenterCrop(12), transforms.PILToTensor()])
    info = load_dataset(str(root), image_size=12)
    for i, _ in enumerate(sizes):
        with Image.open(root / "c" / f"{i}.png") as im:
            want = tf(im.convert("RGB")).float() / 255
        assert torch.equal(info.dataset[i][0], want), i


def test_in_memory_images_are_cropped_alike(tmp_path: Path) -> None:
    """Tensors (an .npz, digits…) take the same geometry per item: a wide image's side borders go."""
    arr = np.zeros((3, 3, 16, 48), np.float32)
    arr[:, 1] = 0.8  # green
    arr[:, :, :, :12] = 0.0
    arr[:, 0, :, :12] = 1.0  # red left quarter
    arr[:, :, :, -12:] = 0.0
    arr[:, 0, :, -12:] = 1.0  # red right quarter
    np.savez(tmp_path / "wide.npz", x=arr, y=np.array([0, 1, 0]))
    info = load_dataset(str(tmp_path / "wide.npz"), image_size="8")
    x, _ = to_tensors(info.dataset)
    assert x.shape == (3, 3, 8, 8) and info.to_dict()["resize"] == "crop"
    assert float(x[:, 0].max()) < 1e-6 and torch.allclose(x[:, 1], torch.full_like(x[:, 1], 0.8))
    # and the train split of the same data is resized the same way (the mode travels with the size)
    again = load_dataset(str(tmp_path / "wide.npz"), split="train", image_size=info.image_size)
    assert again.to_dict()["resize"] == "crop" and torch.equal(to_tensors(again.dataset)[0], x)


def test_cli_image_size_crops_and_records_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo.create("smallcnn", num_classes=2, in_channels=3, width=4)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 2, "in_channels": 3, "width": 4},
                 input_shape=(3, 10, 10))
    mp = save_model(model, tmp_path / "m.safetensors")
    root = _bordered_folder(tmp_path / "imgs")
    res = _cli("evaluate", mp, "--data", root, "--image-size", "10", "--ood", "none", "--format", "json", "-q")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    assert data["image_size"] == [10, 10] and data["resize"] == "crop" and data["input_shape"] == [3, 10, 10]


def test_ood_images_of_another_size_are_resized_to_the_models_input(tmp_path: Path) -> None:
    """--ood with a folder of 24×24 images for a 3×10×10 model: converted to the model's input."""
    torch.manual_seed(0)
    net = zoo.create("smallcnn", num_classes=2, in_channels=3, width=4)
    mp = save_model(wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 2, "in_channels": 3, "width": 4},
                         input_shape=(3, 10, 10)), tmp_path / "m.safetensors")
    root = tmp_path / "imgs"  # 10×10 data (with --image-size the OOD set would load at 10 too: test_ood_image_size.py)
    for k in range(2):
        for i in range(2):
            _png(root / f"c{k}" / f"{i}.png", (10, 10), seed=10 * k + i)
    for i in range(6):
        _png(tmp_path / "ood" / "x" / f"{i}.png", (24, 24), seed=50 + i)
    res = _cli("evaluate", mp, "--data", root, "--ood", tmp_path / "ood", "--format", "json")
    assert res.exit_code == 0, res.output
    assert "(3, 24, 24) -> (3, 10, 10)" in res.stderr
    by_src = json.loads(res.stdout)["results"]["ood_by_source"]
    assert [v["n"] for v in by_src.values()] == [6]
