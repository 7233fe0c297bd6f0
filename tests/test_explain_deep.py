"""NEON through a deep feature extractor (paper Sec. IV) with zennit LRP rules."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from kmtools.errors import ConfigError, KmtoolsError
from kmtools.explain import DeepNeonExplainer, explain_deep, neon
from kmtools.models.core import GaussHead, KmModel, Normalize, split

pytest.importorskip("zennit")


class TinyCNN(nn.Module):
    """conv-BN-ReLU-conv-ReLU-maxpool-conv-ReLU-avgpool-linear, optionally without any bias."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1, bias=bias),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 12, bias=bias),
            nn.ReLU(),
        )
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _model(bias: bool, seed: int = 0) -> tuple[KmModel, torch.Tensor]:
    torch.manual_seed(seed)
    net = TinyCNN(bias)
    bn = net.body[1]
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        if bias:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.bias.uniform_(-0.1, 0.1)
    net.eval()
    x = torch.rand(10, 1, 8, 8)
    backbone, head, path = split(net, x[:2])
    return KmModel(backbone, head, Normalize([0.5], [0.25]), head_path=path), x


@pytest.mark.parametrize("gamma", [0.0, 0.25])
def test_lrp_conserves_relevance_without_biases(gamma: float) -> None:
    model, x = _model(bias=False)
    with torch.no_grad():
        feats = model.features(x)
    mu = feats[:4].clone() + 0.01
    ex = explain_deep(model, x, mu, gamma=gamma, first_rule="gamma", details=True)
    assert ex.relevance.shape == x.shape
    r_feat = ex.feature_relevance.sum(1)
    assert torch.allclose(r_feat, ex.score, rtol=1e-6)  # NEON conserves at the cluster layer
    total = ex.relevance.flatten(1).sum(1).double()
    # bias-free network, BN with zero shift: LRP conserves down to the pixels
    assert torch.allclose(total, r_feat.double(), rtol=1e-3, atol=1e-6)
    assert torch.allclose(ex.features, feats, atol=1e-5)  # canonized copy computes the same features


def test_feature_relevance_is_neon_of_the_features_and_model_untouched() -> None:
    model, x = _model(bias=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        feats = model.features(x)
    mu = feats[:3].clone()
    ex = explain_deep(model, x, mu, details=True)
    expected = neon(feats.double(), mu.double(), ex.assignments, ex.beta).float()
    assert torch.allclose(ex.feature_relevance, expected, atol=1e-4)
    assert ex.settings["first_rule"] == "zbox"
    assert torch.isfinite(ex.relevance).all()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_gauss_network_uses_class_centroids() -> None:
    model, x = _model(bias=True)
    with torch.no_grad():
        feats = model.features(x)
    gauss = model.with_head(GaussHead(feats[:3].clone()))
    ex = explain_deep(gauss, x, details=True)
    with torch.no_grad():
        pred = gauss(x).argmax(1)
    assert torch.equal(ex.assignments, pred)  # clusters = the Gauss network's classes
    assert (ex.score > 0).all()
    with pytest.raises(ConfigError, match="centroids"):
        explain_deep(model, x)  # softmax head: k-means centroids must be given


def _zoo_model(name: str, shape: tuple[int, ...]) -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    from kmtools.models import zoo

    torch.manual_seed(1)
    net = zoo.create(name).eval()
    x = torch.rand(2, *shape)
    backbone, head, _ = split(net, x)
    model = KmModel(backbone, head, Normalize([0.5] * shape[0], [0.25] * shape[0]))
    with torch.no_grad():
        feats = model.features(x)
    return model, x, feats


def _check_zoo(name: str, shape: tuple[int, ...]) -> None:
    model, x, feats = _zoo_model(name, shape)
    mu = torch.stack([feats[0], feats[1], feats.mean(0)])
    ex = explain_deep(model, x, mu, beta=1.0, details=True)
    assert ex.relevance.shape == x.shape and torch.isfinite(ex.relevance).all()
    assert torch.allclose(ex.features, feats, atol=1e-4, rtol=1e-4)  # canonizers keep the function
    assert ex.relevance.abs().sum() > 0


def test_zoo_smallcnn() -> None:
    _check_zoo("smallcnn", (1, 8, 8))


def test_resnet_blocks_of_the_zoo_conserve_through_skip_sums() -> None:
    """A narrow network of the zoo's (kuangliu-layout) BasicBlocks: BN merged, skip sums by Norm."""
    from kmtools.models.zoo import BasicBlock

    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
        BasicBlock(4, 4), BasicBlock(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)  # no shifts: the merged convs stay bias-free
    net.eval()
    model = KmModel(net, nn.Linear(8, 2))
    x = 20 * torch.rand(6, 3, 8, 8)  # large activations: the rules' 1e-6 stabilisers are negligible
    with torch.no_grad():
        feats = model.features(x)
    mu = feats[:3].clone() + 0.01
    ex = explain_deep(model, x, mu, first_rule="gamma", details=True)
    assert torch.allclose(ex.features, feats, atol=1e-5)
    total = ex.relevance.flatten(1).sum(1).double()
    # NEON's midpoint rule also gives relevance to features that are exactly 0 (a dead ReLU
    # channel); no LRP rule can pass that on, so conservation holds for the live features
    live = (ex.feature_relevance * (ex.features > 0)).sum(1).double()
    assert (ex.features == 0).any()  # the case is really exercised
    assert torch.allclose(total, live, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("resnet18", (3, 8, 8)), ("vgg16", (3, 32, 32))])
def test_zoo_cifar_networks(name: str, shape: tuple[int, ...]) -> None:
    _check_zoo(name, shape)


def test_intermediate_layer() -> None:
    model, x, _ = _zoo_model("smallcnn", (1, 8, 8))
    with pytest.raises(ConfigError, match="centroids"):
        explain_deep(model, x, None, layer="features.3")  # k-means centroids are required there
    no_centroids = DeepNeonExplainer(model, None, layer="features.3")
    with pytest.raises(ConfigError, match="centroids"):
        no_centroids.explain(x, beta=1.0)  # none set yet (set_centroids after k-means)
    no_centroids.close()
    with torch.no_grad():
        a = model.backbone.features[:4](model.normalize(x)).flatten(1)
    mu = torch.stack([a[0], a[1]])
    with DeepNeonExplainer(model, mu, layer="features.3", first_rule="gamma") as ex:
        out = ex.explain(x, beta=1.0)
    assert out.relevance.shape == x.shape and out.features.shape == a.shape
    assert torch.allclose(out.features, a, atol=1e-5)
    assert torch.allclose(out.feature_relevance.sum(1), out.score.float(), atol=1e-5)
    with pytest.raises(ConfigError, match="no layer"):
        DeepNeonExplainer(model, mu, layer="nope")


def test_missing_zennit_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(bias=True)
    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(KmtoolsError, match="pip install"):
        explain_deep(model, x, torch.zeros(2, 12), engine="zennit")


def test_auto_engine_needs_no_zennit_for_covered_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(bias=True)
    monkeypatch.setitem(sys.modules, "zennit", None)
    ex = explain_deep(model, x, torch.randn(2, 12), beta=1.0, details=True)
    assert ex.settings["lrp_engine"] == "fast" and torch.isfinite(ex.relevance).all()
