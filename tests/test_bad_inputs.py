"""Bad data and arguments (issue 10, item 2): a clear one-line error and exit 1, never a traceback.

Also the GPU out-of-memory policy: :func:`kmtools.device.retry_oom` halves the batch where the
result does not depend on it (feature extraction), tested on the CPU with fake OOM errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools.device import is_oom, resolve, retry_oom
from kmtools.errors import ConfigError, DataError, DeviceError
from kmtools.features import extract
from kmtools.models import KmModel, save_model, wrap, zoo
from kmtools_cli.main import app


def cli(*args: Any, **kw: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, **kw)


def refused(res: Any, *needles: str, code: int = 1) -> str:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    if code == 1:
        assert last.startswith("error: "), res.stderr
        assert "internal error" not in last, last  # the CLI's catch-all for bugs: not a handled error
    for n in needles:
        assert n in last, last
    return last


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = zoo.create("smallcnn", width=8)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                 input_shape=(1, 8, 8))
    return save_model(model, tmp_path_factory.mktemp("bad") / "m.safetensors")


def _png(path: Path, shape: tuple[int, ...], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _npz(path: Path, x: Any, y: Any) -> Path:
    np.savez(path, x=x, y=y)
    return path


# --------------------------------------------------------------------------- missing and empty data
def test_missing_named_dataset_lists_where_it_looked(model_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KMTOOLS_DATA", str(tmp_path / "nowhere"))
    line = refused(cli("inspect", model_path, "--data", "cifar10"), "not found", "--download")
    assert str(tmp_path / "nowhere") in line


def test_missing_path_and_unknown_name(model_path: Path, tmp_path: Path) -> None:
    refused(cli("inspect", model_path, "--data", tmp_path / "none.npz"), "not found")
    refused(cli("inspect", model_path, "--data", "imagenet-9000"), "unknown dataset")


def test_empty_image_folders(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused(cli("inspect", model_path, "--data", tmp_path / "empty"), "no images found")
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir()
    (tmp_path / "classes" / "a" / "notes.txt").write_text("not an image")
    refused(cli("inspect", model_path, "--data", tmp_path / "classes"), "no images found")
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    _png(tmp_path / "split" / "train" / "a" / "0.png", (8, 8))
    refused(cli("inspect", model_path, "--data", tmp_path / "split"), "--split train")


def test_empty_npz(model_path: Path, tmp_path: Path) -> None:
    p = _npz(tmp_path / "empty.npz", np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))
    refused(cli("inspect", model_path, "--data", p), "empty")


@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        ("no-arrays", lambda p: np.savez(p, a=np.zeros(3)), "must hold arrays 'x' and 'y'"),
        ("rows-differ", lambda p: _npz(p, np.zeros((5, 1, 8, 8), np.float32), np.arange(4)), "5 rows but y has 4"),
        ("nan-x", lambda p: _npz(p, np.full((3, 1, 8, 8), np.nan, np.float32), np.arange(3)), "NaN or Inf"),
        ("strings-x", lambda p: _npz(p, np.array([["a"] * 64] * 3), np.arange(3)), "must hold numbers"),
        ("scalar-x", lambda p: _npz(p, np.float32(1.0), np.arange(1)), "must be (N, features...)"),
        ("float-labels", lambda p: _npz(p, np.zeros((3, 1, 8, 8), np.float32), np.array([0.5, 1, 2])),
         "integer class indices"),
        ("negative-labels", lambda p: _npz(p, np.zeros((3, 1, 8, 8), np.float32), np.array([0, -1, 2])),
         "non-negative"),
        ("not-a-zip", lambda p: p.write_bytes(os.urandom(200)), "not an .npz archive"),
    ],
)
def test_malformed_npz(model_path: Path, tmp_path: Path, name: str, make: Any, needle: str) -> None:
    p = tmp_path / f"{name}.npz"
    make(p)
    refused(cli("inspect", model_path, "--data", p), needle)


def test_npz_with_pickled_objects_is_not_unpickled(model_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    x = np.empty(2, dtype=object)
    x[0] = x[1] = Payload()
    np.savez(tmp_path / "evil.npz", x=x, y=np.arange(2))
    refused(cli("inspect", model_path, "--data", tmp_path / "evil.npz"))
    assert not marker.exists()


def test_npz_bigger_than_memory_is_refused_before_unpacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An .npz whose arrays unpack to more than half the machine's RAM (a deflated zip bomb)
    is refused from the zip directory alone. RAM is faked down to 16 MiB for the test."""
    import kmtools.data.registry as registry

    p = tmp_path / "bomb.npz"
    np.savez_compressed(p, x=np.zeros((1000, 1, 64, 64), np.float32), y=np.zeros(1000, np.int64))
    assert p.stat().st_size < 200_000  # 16 MiB of zeros deflated
    real = os.sysconf
    fake = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 4096}  # 16 MiB
    monkeypatch.setattr(registry.os, "sysconf", lambda name: fake.get(name) or real(name))
    with pytest.raises(DataError, match="more than half of this machine's memory"):
        load_dataset(str(p))
    monkeypatch.undo()
    assert len(load_dataset(str(p))) == 1000  # with the real RAM it loads


# --------------------------------------------------------------------------- data that does not fit the model
def test_class_count_larger_than_the_head(model_path: Path, tmp_path: Path) -> None:
    p = _npz(tmp_path / "c20.npz", np.zeros((20, 1, 8, 8), np.float32), np.arange(20))
    refused(cli("inspect", model_path, "--data", p), "20 classes", "head has 10")


def test_labels_out_of_range_in_the_library() -> None:
    from kmtools.centroids import class_means

    with pytest.raises(DataError, match=r"0\.\.2"):
        class_means(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), 3)


def test_classes_without_samples(model_path: Path, tmp_path: Path) -> None:
    p = _npz(tmp_path / "c3.npz", np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32),
             np.array([0, 1, 2, 0, 1, 2]))
    refused(cli("centroids", model_path, "--data", p, "--device", "cpu"), "have no samples")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((16, 16, 3), "(1, 16, 16)"), ((9, 9), "(1, 9, 9)")],  # RGB is converted to grey, then the size differs
)
def test_wrong_image_size_or_channels(model_path: Path, tmp_path: Path, shape: tuple[int, ...],
                                      expected: str) -> None:
    for i in range(2):
        _png(tmp_path / "imgs" / "a" / f"{i}.png", shape, seed=i)
    refused(cli("inspect", model_path, "--data", tmp_path / "imgs"), expected, "(1, 8, 8)", "--image-size")


def test_rgb_images_of_the_right_size_feed_a_grey_model(model_path: Path, tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / "imgs" / "a" / f"{i}.png", (8, 8, 3), seed=i)
    assert cli("inspect", model_path, "--data", tmp_path / "imgs").exit_code == 0


def test_num_classes_that_contradicts_a_kmtools_file(model_path: Path) -> None:
    refused(cli("inspect", model_path, "--num-classes", "5"), "10 classes, not 5")
    assert cli("inspect", model_path, "--num-classes", "10").exit_code == 0


def test_tabular_data_for_an_image_model(model_path: Path) -> None:
    refused(cli("inspect", model_path, "--data", "wine"), "(13,)", "(1, 8, 8)")


def test_images_of_mixed_sizes_name_the_odd_file(model_path: Path, tmp_path: Path) -> None:
    _png(tmp_path / "mixed" / "a" / "0.png", (8, 8))
    _png(tmp_path / "mixed" / "a" / "1.png", (9, 9))
    refused(cli("inspect", model_path, "--data", tmp_path / "mixed"), "1.png", "resize")


def test_undecodable_image(model_path: Path, tmp_path: Path) -> None:
    _png(tmp_path / "bad" / "a" / "0.png", (8, 8))
    (tmp_path / "bad" / "a" / "1.png").write_bytes(b"\x89PNG but not really")
    refused(cli("inspect", model_path, "--data", tmp_path / "bad"), "cannot decode image", "1.png")


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("n", "needle"), [("100000", "larger than the dataset"), ("0", "positive"),
                                           ("-3", "positive")])
def test_bad_n(model_path: Path, n: str, needle: str) -> None:
    refused(cli("inspect", model_path, "--data", "digits", "-n", n), needle)


@pytest.mark.parametrize("bs", ["0", "-5"])
def test_bad_batch_size_is_a_usage_error(model_path: Path, bs: str) -> None:
    res = cli("inspect", model_path, "--data", "digits", "--batch-size", bs)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--batch-size" in res.stderr


def test_library_rejects_zero_batch(model_path: Path) -> None:
    info = load_dataset("digits")
    model = KmModel(nn.Flatten(), nn.Linear(64, 10), input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="batch-size"):
        extract(model, info.dataset, batch_size=0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--split", "val"], "--split val exists only for ImageFolder trees"),
        (["--mean", "abc", "--std", "1"], "comma-separated numbers"),
        (["--mean", "0.5", "--std", "0"], "positive"),
        (["--mean", "0.5,0.5", "--std", "1"], "same number of values"),
        (["--mean", "0.5"], "go together"),
        (["--norm", "foo"], "unknown normalisation preset"),
        (["--norm", "mnist", "--mean", "0.1", "--std", "1"], "either --norm or --mean/--std"),
        (["--format", "xml"], "--format must be human or json"),
    ],
)
def test_bad_option_values(model_path: Path, args: list[str], needle: str) -> None:
    refused(cli("inspect", model_path, "--data", "digits", *args), needle)


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(model_path: Path) -> None:
    refused(cli("inspect", model_path, "--data", "digits", "--device", "cuda"),
            "CUDA is not available", "--device auto")
    refused(cli("inspect", model_path, "--data", "digits", "--device", "cuda:1"), "CUDA is not available")
    with pytest.raises(DeviceError):
        resolve("cuda")


def test_auto_falls_back_and_records_the_device(model_path: Path) -> None:
    res = cli("inspect", model_path, "--data", "digits", "-n", "20", "--device", "auto", "-f", "json")
    assert res.exit_code == 0, res.output
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads(res.stdout)["device"].startswith(expected)


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x", "cuda:-1"])
def test_unknown_devices(model_path: Path, spec: str) -> None:
    refused(cli("inspect", model_path, "--device", spec, "--data", "digits"), "device")


# --------------------------------------------------------------------------- out of memory
def _oom(msg: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> BaseException:
    return torch.cuda.OutOfMemoryError(msg)


def test_retry_oom_halves_until_it_fits() -> None:
    calls: list[int] = []
    logs: list[str] = []

    def fn(bs: int) -> str:
        calls.append(bs)
        if bs > 24:
            raise _oom()
        return f"done at {bs}"

    result, used = retry_oom(fn, 200, log=logs.append)
    assert (result, used) == ("done at 12", 12)
    assert calls == [200, 100, 50, 25, 12]
    assert len(logs) == 4 and "--batch-size 12" in logs[-1]


def test_retry_oom_gives_up_with_a_message() -> None:
    def fn(bs: int) -> None:
        raise _oom()

    with pytest.raises(DeviceError, match="out of GPU memory"):
        retry_oom(fn, 8)
    with pytest.raises(DeviceError, match="batch of 4"):
        retry_oom(fn, 64, min_batch_size=4)


def test_retry_oom_leaves_other_errors_alone() -> None:
    calls: list[int] = []

    def fn(bs: int) -> None:
        calls.append(bs)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        retry_oom(fn, 64)
    assert calls == [64]
    assert is_oom(RuntimeError("CUDA error: out of memory")) and not is_oom(ValueError("out of memory"))


class _OomAbove(nn.Module):
    """Raises a CUDA OOM error for batches larger than ``limit`` (a GPU that is too small)."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []  # type: ignore[var-annotated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise _oom()
        out: torch.Tensor = self.inner(x)
        return out


def test_feature_extraction_survives_oom_with_identical_results() -> None:
    """Features do not depend on the batch split, so extract() retries a smaller chunk and
    returns what an unconstrained run returns (up to float rounding)."""
    info = load_dataset("digits")
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    head = nn.Linear(16, 10)
    plain = extract(KmModel(backbone, head, input_shape=(1, 8, 8)), info.dataset, batch_size=128)
    small = _OomAbove(backbone, limit=20)
    got = extract(KmModel(small, head, input_shape=(1, 8, 8)), info.dataset, batch_size=128)
    # the same up to float rounding (a matmul over 20 rows may block differently than over 128)
    assert torch.allclose(got.features, plain.features, atol=1e-6, rtol=1e-6)
    assert torch.allclose(got.scores, plain.scores, atol=1e-6, rtol=1e-6)
    assert torch.equal(got.labels, plain.labels) and torch.equal(got.predictions, plain.predictions)
    assert max(small.sizes[4:]) <= 20  # after the first failures the smaller chunk is kept


def test_memory_error_in_a_command_is_one_line(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise MemoryError

    monkeypatch.setattr("kmtools.features.extract", boom)  # inspect imports it when it runs
    refused(cli("inspect", model_path, "--data", "digits"), "out of memory", "--batch-size")


def test_gpu_oom_in_a_command_is_one_line(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise _oom()

    monkeypatch.setattr("kmtools.features.extract", boom)
    refused(cli("inspect", model_path, "--data", "digits"), "out of", "--batch-size")
