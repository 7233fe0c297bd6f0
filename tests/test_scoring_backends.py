"""Scoring backends give eager's log-confidences; the one-pixel search with onnxruntime scoring
reaches eager's verdicts (kmtools.scoring_backends, docs/speed.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kmtools.attacks.onepixel import onepixel
from kmtools.data import load_dataset
from kmtools.errors import ConfigError
from kmtools.features import as_tensors
from kmtools.models.core import GaussHead, KmModel
from kmtools.models.scoring import class_log_confidences
from kmtools.scoring_backends import (
    ORT_MIN_CANDIDATES,
    build_scorer,
    default_chunk,
    onnxruntime_available,
    resolve_backend,
)
from tests.helpers import digits_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    model = digits_model(epochs=4).eval()
    te = load_dataset("digits", split="test")
    pair = as_tensors(te.dataset)
    assert pair is not None
    return model, pair[0][:24].float(), pair[1][:24].long()


def _gauss() -> tuple[KmModel, torch.Tensor]:
    torch.manual_seed(5)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4))
    return KmModel(backbone, GaussHead(torch.randn(3, 4) * 0.3)).eval(), torch.rand(7, 3, 6, 6)


@pytest.mark.parametrize("backend", ["eager", "channels-last", "onnxruntime"])
def test_backends_compute_eager_log_confidences(digits: tuple[KmModel, torch.Tensor, torch.Tensor],
                                                backend: str) -> None:
    model, x, _ = digits
    ref = class_log_confidences(model, x)
    sc = build_scorer(model, backend, example=x)
    assert sc.backend == backend
    out = sc(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(sc(x[:5]), ref[:5], atol=1e-5, rtol=1e-5)  # any batch size
    gauss, xg = _gauss()
    ref_g = class_log_confidences(gauss, xg)  # log κ of a Gauss head
    assert torch.allclose(build_scorer(gauss, backend, example=xg)(xg), ref_g, atol=1e-5, rtol=1e-5)


def test_resolve_backend_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert onnxruntime_available()  # the test environment has the onnx extra
    assert resolve_backend("auto", cpu) == "onnxruntime"
    assert resolve_backend("auto", cpu, budget=ORT_MIN_CANDIDATES) == "onnxruntime"
    assert resolve_backend("auto", cpu, budget=ORT_MIN_CANDIDATES - 1) == "channels-last"  # export would not pay
    assert resolve_backend("auto", cpu, budget=10, images=False) == "eager"
    assert resolve_backend("auto", torch.device("cuda")) == "eager"
    assert resolve_backend("eager", cpu, budget=10**9) == "eager"  # named backends are kept
    with pytest.raises(ConfigError, match="--backend must be one of"):
        resolve_backend("tensorrt", cpu)
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_backend("onnxruntime", torch.device("cuda"))
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    assert resolve_backend("auto", cpu) == "channels-last"
    assert resolve_backend("auto", cpu, images=False) == "eager"
    with pytest.raises(ConfigError, match="pip install 'kmtools\\[onnx\\]'"):
        resolve_backend("onnxruntime", cpu)


def test_default_chunk_keeps_whole_populations() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_chunk("eager", cpu, 399, 5) == 399  # one population per pass on the CPU
    assert default_chunk("channels-last", cpu, 60, 34) == 480  # 8 populations ≤ 512 candidates
    assert default_chunk("eager", cpu, 60, 3) == 180  # never more than the batch holds
    assert default_chunk("eager", cpu, 1000, 2) == 1000  # at least one population
    assert default_chunk("onnxruntime", cpu, 399, 5) == 1995  # flat throughput: one pass per generation
    assert default_chunk("eager", cuda, 400, 20) == 8000


def test_onepixel_with_onnxruntime_scoring_fools_the_same_images(
        digits: tuple[KmModel, torch.Tensor, torch.Tensor]) -> None:
    """Same seed, same budget: the fooled set equals eager's, and every verdict is eager float32.

    The search may pick a different child only where two fitness values tie to float
    rounding (onnxruntime and torch round differently); on this model and budget they do not
    change which images are fooled.
    """
    model, x, y = digits
    kw = dict(popsize=40, maxiter=12, seed=3, fitness="margin")
    eager = onepixel(model, x, y, backend="eager", **kw)  # type: ignore[arg-type]
    ort = onepixel(model, x, y, backend="onnxruntime", **kw)  # type: ignore[arg-type]
    assert ort.settings["backend"] == "onnxruntime" and eager.settings["backend"] == "eager"
    assert ort.settings["threads"] == 1
    assert eager.fooled > 0 and eager.fooled < eager.attacked  # the comparison means something
    assert torch.equal(ort.success, eager.success)
    # verdicts of the onnxruntime run are eager float32 on its own adversarial images
    logc = class_log_confidences(model, ort.x_adv)
    assert torch.equal(ort.adv_labels, logc.argmax(1))
    assert torch.allclose(ort.conf_adv, logc.amax(1).exp(), atol=1e-6)
    assert torch.equal(ort.success & ~ort.skipped, (logc.argmax(1) != y) & ~ort.skipped)


def test_attack_cli_backend_option(tmp_path: Path, digits: tuple[KmModel, torch.Tensor, torch.Tensor]) -> None:
    from typer.testing import CliRunner

    from kmtools.models import save_model
    from kmtools_cli.main import app

    model, _, _ = digits
    save_model(model, tmp_path / "m.safetensors")
    base = ["attack", "onepixel", str(tmp_path / "m.safetensors"), "--data", "digits", "-n", "6", "--popsize", "12",
            "--steps", "2", "--format", "json", "--device", "cpu"]
    docs = {}
    for b in ("eager", "onnxruntime"):
        res = CliRunner().invoke(app, [*base, "--backend", b])
        assert res.exit_code == 0, res.output
        docs[b] = json.loads(res.stdout)["results"]
    settings = docs["onnxruntime"]["onepixel"]["settings"]
    assert settings["backend"] == "onnxruntime" and settings["threads"] == torch.get_num_threads()
    assert docs["eager"]["onepixel"]["fooled"] == docs["onnxruntime"]["onepixel"]["fooled"]
    res = CliRunner().invoke(app, [*base, "--backend", "turbo"])
    assert res.exit_code == 1 and "--backend must be one of" in res.output
