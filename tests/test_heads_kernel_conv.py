"""Kernel-prototype convolution (prototype-based-nn-layers, Sec. 6.2, Eq. 21):
x ⊛ k = x² ∗ 1 - 2 x ∗ k ⊕ ‖k‖², the squared distance of every patch to the kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kmtools.errors import ConfigError
from kmtools.heads.kernel_conv import KernelPrototypeConv2d, unfold_dissimilarity
from kmtools.heads.rbf import squared_distances


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _layer(
    c: int, p: int, k: int | tuple[int, int], weight: torch.Tensor | None = None, **kw: object
) -> KernelPrototypeConv2d:
    layer = KernelPrototypeConv2d(c, p, k, **kw)  # type: ignore[arg-type]
    if weight is not None:
        with torch.no_grad():
            layer.weight.copy_(weight)
    return layer


def _brute(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """‖x̃_ij - k̃‖² by explicit loops over positions (the definition)."""
    xp = F.pad(x, (padding,) * 4)
    n, _, h, wd = xp.shape
    p, _, kh, kw = w.shape
    ho = (h - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, p, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride, j * stride
            r1, c1 = r0 + dilation * (kh - 1) + 1, c0 + dilation * (kw - 1) + 1
            patch = xp[:, :, r0:r1:dilation, c0:c1:dilation]
            out[:, :, i, j] = ((patch[:, None] - w[None]) ** 2).flatten(2).sum(-1)
    return out


def test_exact_small_case() -> None:
    """3×3 input, 2×2 kernel-prototype diag(1, 1): patches [1,2,0,1], [2,0,1,3], [0,1,2,0],
    [1,3,0,1] are at squared distances 4, 6, 7, 9."""
    x = torch.tensor([[[[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    layer = _layer(1, 1, 2, k)
    assert layer(x).tolist() == [[[[4.0, 6.0], [7.0, 9.0]]]]
    # the three terms of Eq. (21), literally: x² ∗ 1 - 2 x ∗ k ⊕ ‖k‖²
    literal = F.conv2d(x * x, torch.ones(1, 1, 2, 2)) - 2 * F.conv2d(x, k) + (k * k).sum()
    assert torch.equal(layer.dissimilarity(x), literal)


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 1, 2)])
def test_matches_unfold_and_loops(stride: int, padding: int, dilation: int) -> None:
    g = torch.Generator().manual_seed(stride + 10 * padding + 100 * dilation)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64)
    layer = _layer(3, 4, (3, 2), stride=stride, padding=padding, dilation=dilation).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    fast = layer(x)
    ref = unfold_dissimilarity(x, w, stride=stride, padding=padding, dilation=dilation)
    assert fast.shape == ref.shape == (2, 4, *layer.output_size(9, 8))
    conv = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, dilation=dilation)
    assert fast.shape[2:] == conv(x.float()).shape[2:]
    assert torch.allclose(fast, ref, atol=1e-10)
    assert torch.allclose(ref, _brute(x, w, stride, padding, dilation), atol=1e-10)
    # the channel sum of x² convolved with a 1-channel ones kernel = x² ∗ 1 with a C-channel one
    one = F.conv2d((x * x).sum(1, keepdim=True), torch.ones(1, 1, 3, 2, dtype=x.dtype), None, stride, padding,
                   dilation)
    many = F.conv2d(x * x, torch.ones(1, 3, 3, 2, dtype=x.dtype), None, stride, padding, dilation)
    assert torch.allclose(one, many, atol=1e-10)


def test_gradients_match_the_explicit_distance() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    layer = _layer(2, 3, 3, padding=1).double()
    w = layer.weight
    target = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64)
    (layer(x) * target).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()  # type: ignore[union-attr]
    x.grad = None
    w.grad = None
    (unfold_dissimilarity(x, w, padding=1) * target).sum().backward()
    assert torch.allclose(gx, x.grad, atol=1e-9) and torch.allclose(gw, w.grad, atol=1e-9)  # type: ignore[arg-type]


def test_one_by_one_kernel_is_a_vq_layer() -> None:
    """A 1×1 kernel-prototype convolution is the squared distance of every pixel's channel
    vector to each prototype (the VQ layer of Sec. 9)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 4, 3, generator=g)
    protos = torch.randn(6, 5, generator=g)
    out = _layer(5, 6, 1, protos.view(6, 5, 1, 1))(x)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 5)
    expected = squared_distances(pixels, protos).view(2, 4, 3, 6).permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-4)


def test_bias_and_activations() -> None:
    """With bias r², r² - x ⊛ k > 0 exactly inside the n-ball B_r(k̃); ReLU keeps the
    inside, sigmoid is > 0.5 inside, softmax over prototypes gives cluster probabilities
    whose argmax is the nearest prototype."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, 7, 7, generator=g)
    w = torch.rand(4, 2, 3, 3, generator=g)
    d = unfold_dissimilarity(x, w)
    r2 = torch.tensor([1.5, 2.0, 2.5, 3.0])  # E‖x̃ - k̃‖² = 18/6 = 3 for uniform values
    plain = _layer(2, 4, 3, w, bias=True)
    with torch.no_grad():
        plain.bias.copy_(r2)  # type: ignore[union-attr]
        s = plain(x)
    inside = d < r2.view(1, -1, 1, 1)
    assert 0.05 < float(inside.double().mean()) < 0.95  # both cases occur
    assert torch.allclose(s, r2.view(1, -1, 1, 1) - d, atol=1e-5)
    assert torch.equal(s > 0, inside)
    for act in ("relu", "sigmoid"):
        layer = _layer(2, 4, 3, w, bias=True, activation=act, temperature=0.5)
        with torch.no_grad():
            layer.bias.copy_(r2)  # type: ignore[union-attr]
            out = layer(x)
        if act == "relu":
            assert torch.equal(out > 0, inside) and bool((out >= 0).all())
        else:
            assert torch.equal(out > 0.5, inside)
            assert torch.allclose(out, torch.sigmoid((r2.view(1, -1, 1, 1) - d) / 0.5), atol=1e-5)
    soft = _layer(2, 4, 3, w, activation="softmax", temperature=0.25)
    with torch.no_grad():
        p = soft(x)
    assert torch.allclose(p.sum(1), torch.ones(3, 5, 5), atol=1e-5)
    assert torch.equal(p.argmax(1), d.argmin(1))
    assert torch.allclose(p, torch.softmax(-d / 0.25, dim=1), atol=1e-5)


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_hard_assignments_are_straight_through(act: str) -> None:
    """Sec. 8: the forward pass emits one-hot (softmax) or Heaviside (sigmoid) maps; the
    backward pass uses the soft activation's gradient."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 6, 6, generator=g)
    w = torch.rand(3, 1, 2, 2, generator=g)
    kw: dict[str, object] = {"activation": act, "temperature": 0.3, "bias": act == "sigmoid"}
    hard = _layer(1, 3, 2, w, hard=True, **kw)
    soft = _layer(1, 3, 2, w, hard=False, **kw)
    if act == "sigmoid":
        with torch.no_grad():
            hard.bias.fill_(0.6)  # type: ignore[union-attr]
            soft.bias.fill_(0.6)  # type: ignore[union-attr]
    out = hard(x)
    d = unfold_dissimilarity(x, w)
    if act == "softmax":
        assert torch.equal(out.detach(), F.one_hot(d.argmin(1), 3).permute(0, 3, 1, 2).float())
    else:
        assert torch.equal(out.detach(), (0.6 - d > 0).float())
    target = torch.randn(out.shape, generator=g)
    (out * target).sum().backward()
    (soft(x) * target).sum().backward()
    assert torch.allclose(hard.weight.grad, soft.weight.grad, atol=1e-6)  # type: ignore[arg-type]
    assert float(hard.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_configuration_errors_and_config() -> None:
    with pytest.raises(ConfigError, match="bias"):
        KernelPrototypeConv2d(1, 2, 3, activation="relu")
    with pytest.raises(ConfigError, match="hard"):
        KernelPrototypeConv2d(1, 2, 3, hard=True)
    with pytest.raises(ConfigError, match="activation"):
        KernelPrototypeConv2d(1, 2, 3, activation="tanh")
    with pytest.raises(ConfigError, match="temperature"):
        KernelPrototypeConv2d(1, 2, 3, temperature=0.0)
    layer = KernelPrototypeConv2d(2, 4, 3, padding=1, bias=True, activation="sigmoid")
    with pytest.raises(ConfigError, match="expected input"):
        layer(torch.rand(1, 3, 5, 5))
    cfg = layer.config()
    assert cfg["kernel_size"] == [3, 3] and cfg["bias"] is True and cfg["activation"] == "sigmoid"
    # initial radii²: the expected squared distance of a uniform patch to a uniform prototype
    assert float(layer.bias.detach()[0]) == pytest.approx(2 * 9 / 6)  # type: ignore[union-attr]
