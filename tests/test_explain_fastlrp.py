"""The fast LRP engine gives zennit's relevances (kmtools.explain.fastlrp, docs/explain.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.explain import DeepNeonExplainer
from kmtools.explain.fastlrp import FastLRP, unsupported
from kmtools.models import zoo
from kmtools.models.core import KmModel, Normalize, split

pytest.importorskip("zennit")


def _shake_bn(net: nn.Module) -> None:
    """Trained-looking BatchNorm statistics, so merging them changes the weights and biases."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _km(net: nn.Module, shape: tuple[int, ...], n: int, dtype: torch.dtype) -> tuple[KmModel, torch.Tensor]:
    _shake_bn(net)
    net.eval()
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(3))
    backbone, head, _ = split(net, x[:2])
    c = shape[0]
    model = KmModel(backbone, head, Normalize([0.5] * c, [0.25] * c)).eval().to(dtype)
    return model, x.to(dtype)


def _run(model: KmModel, x: torch.Tensor, engine: str, layer: str | None = None,
         first_rule: str = "auto") -> tuple[torch.Tensor, torch.Tensor, DeepNeonExplainer]:
    ex = DeepNeonExplainer(model, None, layer=layer, engine=engine, first_rule=first_rule)
    feats = ex.features(x)
    ex.set_centroids(feats[:3].clone() + 0.01)
    out = ex.explain(x, beta=1.0)
    assert ex.engine_used == engine
    return out.relevance, out.features, ex


def _backward(model: KmModel, x: torch.Tensor, r: torch.Tensor | None, engine: str, layer: str | None,
              first_rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations at the layer, input relevance for relevance ``r`` there; default r = a)."""
    ex = DeepNeonExplainer(model, None, layer=layer, engine=engine, first_rule=first_rule)
    ex._register(x)
    z = ex.normalize(x).detach()
    if ex._fast is not None:
        a = ex._fast.forward(z).flatten(1)
        rel = ex._fast.relevance((a if r is None else r).to(a.dtype))
        return a, rel
    z.requires_grad_(True)
    with torch.enable_grad():
        act = ex.activations(z)
        (rel,) = torch.autograd.grad(act, z, (act.detach() if r is None else r).to(act.dtype))
    return act.detach(), rel


def _agree(model: KmModel, x: torch.Tensor, layer: str | None = None, first_rule: str = "auto") -> DeepNeonExplainer:
    """float64: the same numbers end to end (NEON included). float32, for the same relevance at
    the layer: no further from the float64 result than zennit's own float32 result is."""
    r_ref, f_ref, _ = _run(model, x, "zennit", layer, first_rule)
    r_fast, f_fast, ex = _run(model, x, "fast", layer, first_rule)
    scale = r_ref.abs().max()
    assert scale > 0
    assert torch.allclose(f_fast, f_ref, rtol=1e-9, atol=1e-12)
    assert float((r_fast - r_ref).abs().max() / scale) < 1e-9
    a64, ref = _backward(model, x, None, "zennit", layer, first_rule)
    m32, x32 = model.float(), x.float()
    _, z32 = _backward(m32, x32, a64.float(), "zennit", layer, first_rule)
    _, f32 = _backward(m32, x32, a64.float(), "fast", layer, first_rule)
    s2 = ref.abs().max()
    err_zennit = float((z32.double() - ref).abs().max() / s2)
    err_fast = float((f32.double() - ref).abs().max() / s2)
    assert err_fast <= 2 * err_zennit + 1e-6, (err_fast, err_zennit)
    r_z32, _, _ = _run(m32, x32, "zennit", layer, first_rule)  # end to end in float32
    r_f32, _, _ = _run(m32, x32, "fast", layer, first_rule)
    assert float((r_f32 - r_z32).abs().max() / r_z32.abs().max()) < 1e-3
    model.double()
    return ex


def test_smallcnn_matches_zennit() -> None:
    torch.manual_seed(0)
    model, x = _km(zoo.create("smallcnn", in_channels=1, width=4), (1, 12, 12), 4, torch.float64)
    ex = _agree(model, x)
    assert ex._fast is not None and ex._fast.stats["layers"] == 4  # 3 convs (the first by z^B) and fc1 (ε)


def test_zoo_resnet_matches_zennit_and_uses_the_second_product() -> None:
    torch.manual_seed(1)
    model, x = _km(zoo.create("resnet10", width=4), (3, 16, 16), 3, torch.float64)
    ex = _agree(model, x)
    assert ex._fast is not None and ex._fast.stats["second_products"] > 0  # relevance at z < 0 (skip sums)


def test_layers_inside_the_network() -> None:
    torch.manual_seed(2)
    model, x = _km(zoo.create("resnet10", width=4), (3, 16, 16), 3, torch.float64)
    _agree(model, x, layer="layer2")  # a container: its last node
    model, x = _km(zoo.create("smallcnn", in_channels=1, width=4), (1, 12, 12), 4, torch.float64)
    _agree(model, x, layer="features.4")  # a BatchNorm leaf merged into the conv before it
    ex = _agree(model, x, layer="features.5")  # a ReLU: NEON gives relevance where it outputs 0
    assert ex._fast is not None and not ex._fast.steps[-3].extra["relu_gated"]


def test_relu_gating_needs_consumers_that_multiply() -> None:
    """A BatchNorm after a ReLU (not merged: no conv before it) passes relevance to zeros of the
    ReLU; the conv before that ReLU is not relu-gated, the conv after the BatchNorm is."""
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 3))
    model, x = _km(net, (1, 8, 8), 4, torch.float64)
    ex = _agree(model, x, first_rule="gamma")
    assert ex._fast is not None
    gated = {st.name: st.extra["relu_gated"] for st in ex._fast.steps if st.kind == "conv"}
    assert list(gated.values()) == [True, False, True], gated


def test_gamma_first_layer_with_inputs_of_both_signs() -> None:
    torch.manual_seed(3)
    model, x = _km(zoo.create("smallcnn", in_channels=1, width=4), (1, 12, 12), 4, torch.float64)
    _agree(model, x, first_rule="gamma")  # normalised pixels are negative: the four-term γ-rule


def test_mlp_epsilon_first_layer() -> None:
    torch.manual_seed(4)
    net = zoo.create("mlp", in_features=7, hidden=16, feature_dim=8)
    model, x = _km(net, (7,), 6, torch.float64)
    _agree(model, x)  # tabular input: ε in every linear layer


def test_torchvision_resnet_blocks() -> None:
    tv = pytest.importorskip("torchvision.models.resnet")
    torch.manual_seed(5)
    down = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        tv.BasicBlock(4, 4), tv.BasicBlock(4, 8, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    model, x = _km(net, (3, 16, 16), 3, torch.float64)
    _agree(model, x)


class _Tanhy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


def test_auto_falls_back_to_zennit_and_fast_says_why() -> None:
    torch.manual_seed(6)
    model, x = _km(_Tanhy(), (1, 8, 8), 4, torch.float32)
    assert "Tanh" in (unsupported(model.backbone) or "")
    ex = DeepNeonExplainer(model, None, engine="auto")
    ex.set_centroids(ex.features(x)[:3].clone())
    ex.explain(x, beta=1.0)
    assert ex.engine_used == "zennit" and "Tanh" in (ex.fallback_reason or "")
    fast = DeepNeonExplainer(model, None, engine="fast")
    fast.set_centroids(ex.centroids)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"fast LRP engine does not cover.*Tanh"):
        fast.explain(x, beta=1.0)
    with pytest.raises(ConfigError, match="engine must be one of"):
        DeepNeonExplainer(model, None, engine="quick")


def test_engine_conserves_like_the_rule_says() -> None:
    """No biases, γ-rule everywhere, positive inputs: Σ R_in = Σ R_out at every layer."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten())
    eng = FastLRP(net, first_rule="gamma", gamma=0.25)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    eng.net.double()
    a = eng.forward(x)
    r = eng.relevance(a)
    assert torch.allclose(r.sum((1, 2, 3)), a.sum(1), rtol=1e-4)  # up to the 1e-6 stabilisers


class _Branches(nn.Module):
    """Two conv branches concatenated (torch.cat) and a channel slice (getitem): gradient rule."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.a = nn.Conv2d(4, 3, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.relu(torch.cat([self.a(h), self.b(h)], 1))[:, 1:]
        return self.fc(self.pool(h).flatten(1))


def test_concatenation_and_slicing_follow_the_gradient() -> None:
    torch.manual_seed(8)
    model, x = _km(_Branches(), (1, 8, 8), 4, torch.float64)
    _agree(model, x)
