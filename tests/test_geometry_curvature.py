"""Principal curvatures from Hessian-vector products + Lanczos (Fawzi et al., Eq. 1, Sec. V).

Checked against surfaces whose curvature is known exactly (spheres: all 1/ρ; hyperplanes:
0; a quadric graph with prescribed curvatures of both signs) and against a full-Hessian
computation on a tiny smooth network. Sign convention: F = s_other - s_own, so a convex
own-class region has positive curvature.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.geometry import boundary_curvature, mean_curvature, principal_curvatures
from kmtools.geometry.curvature import BoundaryOperator, resolve_method
from kmtools.models import KmModel
from tests.helpers import tiny_mlp_model


class Balls(nn.Module):
    """Class 0 = background (score 0); class j = inside ball j: s_j = (ρ_j² - ‖x - c_j‖²)/(2ρ_j)."""

    def __init__(self, centres: torch.Tensor, radii: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", centres)
        self.register_buffer("rho", radii)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = (x[:, None, :] - self.c[None]).pow(2).sum(-1)
        s = (self.rho.pow(2) - d2) / (2 * self.rho)
        return torch.cat([torch.zeros_like(s[:, :1]), s], 1)


class Hyperplane(nn.Module):
    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


class Quadric(nn.Module):
    """s_0 = 0, s_1 = x_d - ½ Σ_{i<d} a_i x_i²: at 0 the boundary's principal curvatures are -a_i."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, -1] - 0.5 * (self.a * x[:, :-1].pow(2)).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    u = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


def _pairs(n: int, own: int, other: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), other, dtype=torch.long), torch.full((n,), own, dtype=torch.long)


# ----------------------------------------------------------------------------- analytic surfaces


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_sphere_all_principal_curvatures_are_one_over_radius(method: str) -> None:
    d, rho = 9, 2.5
    c = torch.full((1, d), 0.3, dtype=torch.float64)
    model = Balls(c, torch.tensor([rho], dtype=torch.float64))
    z = c + rho * _unit(4, d, 0)  # on the sphere
    others, labels = _pairs(4, own=1, other=0)  # own class = inside the ball: convex, +1/ρ
    res = principal_curvatures(model, z, others, labels, top=d - 1, bottom=d - 1, steps=d - 1, method=method,
                               fd_step=1e-3)
    assert res.method == method
    assert res.top.shape == (4, d - 1) and res.bottom.shape == (4, d - 1)
    torch.testing.assert_close(res.top, torch.full_like(res.top, 1 / rho), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.bottom, torch.full_like(res.bottom, 1 / rho), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.grad_norm, torch.ones(4, dtype=res.grad_norm.dtype), rtol=1e-9, atol=1e-9)


def test_sphere_seen_from_outside_has_negative_curvature_and_rows_are_independent() -> None:
    """Off the boundary the level set of F through x is a sphere of radius ‖x - c‖: every
    principal curvature is 1/‖x - c‖, per row of a batch, negative from the outside."""
    d = 7
    c = torch.zeros(1, d, dtype=torch.float64)
    model = Balls(c, torch.tensor([1.0], dtype=torch.float64))
    r = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    x = r[:, None] * _unit(5, d, 1)
    others, labels = _pairs(5, own=0, other=1)  # own class = background: concave, -1/r
    res = principal_curvatures(model, x, others, labels, top=3, bottom=3, steps=d - 1, method="exact",
                               samples=5)
    expect = (-1 / r)[:, None].expand(5, 3)
    torch.testing.assert_close(res.top, expect, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.bottom, expect, rtol=1e-9, atol=1e-9)
    # v^T G v = -1/r for *every* unit tangent v, so the average is exact with any sample
    torch.testing.assert_close(res.mean.double(), -1 / r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "fd", "auto"])
def test_hyperplane_is_flat(method: str) -> None:
    d = 12
    w = torch.linspace(-1, 2, d, dtype=torch.float64)
    model = Hyperplane(w, 0.7)
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z = z - ((z @ w + 0.7) / w.dot(w))[:, None] * w  # project onto the plane
    others, labels = _pairs(3, own=0, other=1)
    res = principal_curvatures(model, z, others, labels, top=4, bottom=4, method=method, samples=3)
    assert float(res.top.abs().max()) < 1e-9 and float(res.bottom.abs().max()) < 1e-9
    assert float(res.mean.abs().max()) < 1e-6


def test_quadric_prescribed_curvatures_top_and_bottom_sorted() -> None:
    """Distinct curvatures of both signs: top-k descending, bottom-k ascending, exact values,
    also when Lanczos runs fewer steps than d - 1 (the extremes converge first)."""
    a = torch.tensor([-3.0, -1.5, -0.4, 0.0, 0.2, 0.9, 1.7, 2.4, 5.0, -2.2, 0.6], dtype=torch.float64)
    d = a.numel() + 1
    model = Quadric(a)
    z = torch.zeros(2, d, dtype=torch.float64)
    others, labels = _pairs(2, own=0, other=1)
    kappa = (-a).sort(descending=True).values
    full = principal_curvatures(model, z, others, labels, top=d - 1, bottom=3, steps=d - 1, method="exact")
    torch.testing.assert_close(full.top, kappa.expand(2, -1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(full.bottom, kappa.flip(0)[:3].expand(2, -1), rtol=1e-9, atol=1e-9)
    part = principal_curvatures(model, z, others, labels, top=2, bottom=2, steps=8, method="exact")
    torch.testing.assert_close(part.top[:, 0], kappa[:1].expand(2), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(part.bottom[:, 0], kappa[-1:].expand(2), rtol=1e-3, atol=1e-3)
    # Ritz values interlace: never beyond the true ones
    assert bool((part.top[:, 1] <= kappa[1] + 1e-9).all())
    assert bool((part.bottom[:, 1] >= kappa[-2] - 1e-9).all())
    # swapping the sides flips every curvature
    flip = principal_curvatures(model, z, labels, others, top=2, bottom=2, steps=d - 1, method="exact")
    torch.testing.assert_close(flip.top, -kappa.flip(0)[:2].expand(2, -1), rtol=1e-9, atol=1e-9)


def test_average_curvature_is_trace_over_d_minus_1() -> None:
    a = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0, 1.0, -0.5], dtype=torch.float64)
    d = a.numel() + 1
    z = torch.zeros(1, d, dtype=torch.float64)
    others, labels = _pairs(1, own=0, other=1)
    T = 4000
    kap, used, _ = mean_curvature(Quadric(a), z, others, labels, samples=T, method="exact", seed=3)
    # v uniform on the tangent sphere S^{m-1}, m = d - 1: E[vᵀDv] = tr D / m, Var = 2(Σκ² - (Σκ)²/m)/(m(m+2))
    m, k = d - 1, -a
    sd = math.sqrt(2 * (float(k.pow(2).sum()) - float(k.sum()) ** 2 / m) / (m * (m + 2)) / T)
    assert used == "exact"
    assert abs(float(kap[0]) - float(k.mean())) < 5 * sd


def test_boundary_curvature_end_to_end_on_a_ball() -> None:
    """DeepFool + bisection find z on the sphere; curvatures there are +1/ρ (own = inside),
    and the distance is ρ - ‖x - c‖."""
    d, rho = 6, 1.5
    c = torch.tensor([[0.2] * d], dtype=torch.float64)
    model = Balls(c, torch.tensor([rho], dtype=torch.float64))
    r = torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64)
    x = c + r[:, None] * _unit(3, d, 4)
    res = boundary_curvature(model, x, top=2, bottom=2, steps=d - 1, samples=4, method="exact")
    assert bool(res.valid.all())
    torch.testing.assert_close(res.distance.double(), rho - r, rtol=1e-5, atol=1e-6)
    expect = torch.full((3, 2), 1 / rho, dtype=torch.float64)
    torch.testing.assert_close(res.top.double(), expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.bottom.double(), expect, rtol=1e-4, atol=1e-5)
    assert res.labels.tolist() == [1, 1, 1] and res.others.tolist() == [0, 0, 0]
    assert res.to_dict()["fraction_negative"] == 0.0


# --------------------------------------------------------------------------- a tiny network


def _tanh_net(d: int = 10, c: int = 4) -> KmModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
    return KmModel(backbone, nn.Linear(8, c), input_shape=(d,)).double().eval()


def _full_hessian_curvatures(model: nn.Module, z: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """All d - 1 principal curvatures from the full Hessian of F = s_i - s_k (ascending)."""
    def F(v: torch.Tensor) -> torch.Tensor:
        s = model(v[None])[0]
        return s[i] - s[k]

    g = torch.autograd.functional.jacobian(F, z)
    H = torch.autograd.functional.hessian(F, z)
    n = g / g.norm()
    # orthonormal basis of the tangent space: the last d - 1 columns of a QR of [n, I]
    Q, _ = torch.linalg.qr(torch.cat([n[:, None], torch.eye(z.numel(), dtype=z.dtype)], 1))
    U = Q[:, 1 : z.numel()]
    return torch.linalg.eigvalsh(U.T @ H @ U / g.norm())


def test_lanczos_matches_full_hessian_on_tiny_network() -> None:
    model = _tanh_net()
    d = 10
    x = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    k, i = top2[:, 0], top2[:, 1]
    res = principal_curvatures(model, x, i, k, top=d - 1, bottom=d - 1, steps=d - 1, method="exact")
    for row in range(3):
        ref = _full_hessian_curvatures(model, x[row], int(i[row]), int(k[row]))
        torch.testing.assert_close(res.bottom[row], ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(res.top[row], ref.flip(0), rtol=1e-8, atol=1e-10)
    # finite differences of gradients agree with the exact products on a smooth network
    fd = principal_curvatures(model, x, i, k, top=2, bottom=2, steps=d - 1, method="fd", fd_step=1e-5)
    torch.testing.assert_close(fd.top, res.top[:, :2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fd.bottom, res.bottom[:, :2], rtol=1e-4, atol=1e-6)


def test_operator_never_forms_hessian_and_is_symmetric_on_tangent_space() -> None:
    model = _tanh_net()
    x = torch.randn(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    op = BoundaryOperator(model, x, torch.tensor([1, 2]), torch.tensor([0, 0]), "exact")
    u, v = torch.randn(2, 2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    gu, gv = op.gvp(u), op.gvp(v)
    torch.testing.assert_close((v * gu).sum(1), (u * gv).sum(1), rtol=1e-10, atol=1e-12)  # G symmetric
    zero = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close((gu * op.normal).sum(1), zero, atol=1e-12, rtol=0)  # G v is tangent
    torch.testing.assert_close(op.quad(u), (u * gu).sum(1), rtol=1e-10, atol=1e-12)


def test_auto_method_picks_fd_for_piecewise_linear_networks() -> None:
    relu = tiny_mlp_model()
    x = torch.randn(4, 6)
    i, k = torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    assert resolve_method(relu, x, i, k, "auto") == "fd"
    smooth = _tanh_net()
    assert resolve_method(smooth, torch.randn(4, 10, dtype=torch.float64), i, k, "auto") == "exact"
    with pytest.raises(ConfigError):
        resolve_method(relu, x, i, k, "bogus")
    with pytest.raises(ConfigError):
        principal_curvatures(relu, x, k, k)  # same class on both sides
