"""Checkpoint formats, safety, and the head split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError, UntrustedCheckpointError
from kmtools.models import GaussHead, KmModel, load_model, save_model, split, zoo


@pytest.mark.parametrize("arch", ["resnet18", "vgg16", "smallcnn", "mlp", "torchvision:resnet18"])
def test_split_reproduces_forward(arch: str) -> None:
    torch.manual_seed(0)
    net = zoo.create(arch).eval()
    shape = zoo.default_input_shape(arch)
    if arch.startswith("torchvision"):
        shape = (3, 64, 64)
    x = torch.rand(3, *shape)
    # perturb BN statistics so eval-mode BN is not an identity
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    backbone, head, path = split(net, x[:2])
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(head(backbone(x).flatten(1)), net(x), atol=1e-5, rtol=1e-4)
    # the original model is not modified
    assert isinstance(net.get_submodule(path), nn.Linear)


def test_split_finds_nested_head_in_torchvision_vgg() -> None:
    net = zoo.create("torchvision:vgg11", num_classes=7).eval()
    _, head, path = split(net, torch.rand(1, 3, 32, 32))
    assert path == "classifier.6" and head.out_features == 7


def _save_sd(tmp: Path, net: nn.Module, wrapper: str | None, prefix: str = "") -> Path:
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    p = tmp / "ckpt.pt"
    torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, p)
    return p


@pytest.mark.parametrize("wrapper,prefix", [(None, ""), ("state_dict", ""), ("model", "module."), ("net", "module.")])
def test_state_dict_wrappers_and_dataparallel(tmp_path: Path, wrapper: str | None, prefix: str) -> None:
    net = zoo.create("smallcnn", num_classes=7).eval()
    p = _save_sd(tmp_path, net, wrapper, prefix)
    m = load_model(p, arch="smallcnn")
    x = torch.rand(2, 1, 8, 8)
    assert m.num_classes == 7
    torch.testing.assert_close(m(x), net(x))


def test_kmtools_format_round_trip_with_gauss_head(tmp_path: Path) -> None:
    net = zoo.create("smallcnn").eval()
    p = _save_sd(tmp_path, net, None)
    m = load_model(p, arch="smallcnn", mean=[0.5], std=[0.25])
    m.head = GaussHead(torch.randn(10, 64), gamma=0.3)
    m.classes = [f"c{i}" for i in range(10)]
    out = save_model(m, tmp_path / "g.safetensors")
    m2 = load_model(out)
    x = torch.rand(4, 1, 8, 8)
    assert m2.head_kind == "gauss" and m2.classes == m.classes
    assert float(m2.head.gamma) == pytest.approx(0.3)
    torch.testing.assert_close(m2(x), m(x))
    torch.testing.assert_close(m2.normalize.mean, torch.tensor([0.5]))
    with pytest.raises(Exception, match="--force"):
        save_model(m, out)


def test_torchscript_loads(tmp_path: Path) -> None:
    net = zoo.create("mlp").eval()
    p = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(net, torch.rand(2, 13)), str(p))
    opaque = load_model(p, input_shape=(13,))
    x = torch.rand(3, 13)
    torch.testing.assert_close(opaque(x), net(x))
    splittable = load_model(p, arch="mlp")
    torch.testing.assert_close(splittable(x), net(x))
    assert splittable.head_path == "fc"


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_untrusted_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil(str(marker))}, p)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_model(p, arch="mlp")
    assert not marker.exists()


def test_whole_module_needs_trust(tmp_path: Path) -> None:
    net = zoo.create("mlp").eval()
    p = tmp_path / "whole.pt"
    torch.save(net, p)
    with pytest.raises(UntrustedCheckpointError):
        load_model(p)
    m = load_model(p, trust=True, input_shape=(13,))
    x = torch.rand(2, 13)
    torch.testing.assert_close(m(x), net(x))


def test_mismatch_names_keys(tmp_path: Path) -> None:
    net = zoo.create("smallcnn").eval()
    p = _save_sd(tmp_path, net, None)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(p, arch="resnet18")
    with pytest.raises(ConfigError, match="--arch"):
        load_model(p)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_model(p, arch="mlp")


def test_nan_weights_refused(tmp_path: Path) -> None:
    net = zoo.create("mlp")
    sd = net.state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    p = tmp_path / "nan.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(p, arch="mlp")


def test_gauss_head_formula() -> None:
    c = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    head = GaussHead(c, gamma=0.5)
    f = torch.tensor([[1.0, 1.0]])
    expected = torch.tensor([[torch.exp(torch.tensor(-0.5 * 2.0)), torch.exp(torch.tensor(-0.5 * 1.0))]])
    torch.testing.assert_close(head(f), expected)
    m = KmModel(nn.Identity(), head)
    assert m.threshold == pytest.approx(0.5)  # 1/c
