"""NEON for k-means (paper Sec. II): neuralization, min-take-most, midpoint rule, Props. 2–3."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kmtools.errors import ConfigError
from kmtools.explain import assign, cluster_score, min_take_most, neon, neuralize, stiffness
from kmtools.explain.baselines import nca


def _data(n: int = 40, d: int = 5, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    x = mu[torch.arange(n) % k] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, mu


def _shapley(f, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Exact Shapley values of f at x with absent features set to ``ref`` (Supplement, App. B Eq. 3)."""
    d = x.numel()
    out = torch.zeros(d, dtype=torch.float64)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            w = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for subset in itertools.combinations(others, size):
                with_i = ref.clone()
                present = [*subset, i]
                with_i[present] = x[present]
                without = ref.clone()
                without[list(subset)] = x[list(subset)]
                out[i] += w * (f(with_i) - f(without))
    return out


def test_neuralized_network_reproduces_kmeans() -> None:
    x, mu = _data()
    c = assign(x, mu)
    dist = torch.cdist(x, mu) ** 2
    assert torch.equal(c, dist.argmin(1))
    net = neuralize(mu, c)
    # w_k = 2(μ_c − μ_k), b_k = ‖μ_k‖² − ‖μ_c‖² (Prop. 1)
    n0, k0 = 3, int((c[3] + 1) % mu.shape[0])
    assert torch.allclose(net.weight[n0, k0], 2 * (mu[c[n0]] - mu[k0]))
    assert torch.allclose(net.bias[n0, k0], mu[k0].pow(2).sum() - mu[c[n0]].pow(2).sum())
    h = net.hidden(x)
    expected = dist - dist.gather(1, c[:, None])  # h_k = ‖x − μ_k‖² − ‖x − μ_c‖² (App. A)
    mask = net.mask
    assert torch.allclose(h[mask], expected[mask])
    f = net(x)
    assert (f > 0).all()  # every point is assigned to its own cluster
    assert torch.allclose(f, cluster_score(x, mu, c))
    # for any other cluster the network says "not assigned"
    other = (c + 1) % mu.shape[0]
    assert (neuralize(mu, other)(x) < 0).all()


def test_positive_score_iff_assigned_for_every_cluster() -> None:
    """Prop. 1: f_c(x) > 0 exactly when x is assigned to c (Eq. 1), for every c and every x."""
    g = torch.Generator().manual_seed(11)
    mu = 2.0 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    x = 3.0 * torch.randn(400, 3, generator=g, dtype=torch.float64)  # points in every Voronoi cell
    nearest = torch.cdist(x, mu).argmin(1)
    assert len(nearest.unique()) == 5
    for c in range(5):
        cc = torch.full((400,), c)
        f = cluster_score(x, mu, cc)
        assert torch.equal(f > 0, nearest == c)
        assert torch.allclose(neuralize(mu, cc)(x), f)
        # conservation holds for members and non-members alike ("why (not) c?")
        assert torch.allclose(neon(x, mu, cc, beta=0.5).sum(1), f, atol=1e-9)


def test_fast_midpoint_rule_equals_eq4_written_out() -> None:
    x, mu = _data(n=12, d=4, k=5, seed=1)
    c = assign(x, mu)
    beta = 0.7
    net = neuralize(mu, c)
    h = net.hidden(x)
    rk = min_take_most(h, beta)
    m = (mu[c][:, None, :] + mu[None, :, :]) / 2  # m_k = (μ_c + μ_k)/2
    contrib = (x[:, None, :] - m) * net.weight  # (x_i − m_ik) w_ik
    denom = contrib.sum(2, keepdim=True)
    expected = torch.where(net.mask[..., None], contrib / denom * rk[..., None], torch.zeros(())).sum(1)
    assert torch.allclose(neon(x, mu, c, beta), expected, atol=1e-10)


@pytest.mark.parametrize("reference", ["midpoint", "zero"])
def test_conservation(reference: str) -> None:
    x, mu = _data(seed=2)
    for beta in (0.0, 0.3, None, 50.0):
        r = neon(x, mu, beta=beta, reference=reference)
        assert torch.allclose(r.sum(1), cluster_score(x, mu), rtol=1e-8, atol=1e-8)


def test_conservation_float32_and_other_cluster() -> None:
    x, mu = _data(seed=3)
    r = neon(x.float(), mu.float())
    assert r.dtype == torch.float32
    assert torch.allclose(r.sum(1).double(), cluster_score(x, mu), rtol=1e-4)
    # "why not cluster k?": negative evidence, still conserved
    other = (assign(x, mu) + 1) % mu.shape[0]
    r = neon(x, mu, other, beta=stiffness(x, mu))
    f = cluster_score(x, mu, other)
    assert (f < 0).all()
    assert torch.allclose(r.sum(1), f, rtol=1e-7)


def test_default_beta_is_inverse_mean_score() -> None:
    x, mu = _data(seed=4)
    f = cluster_score(x, mu)
    beta = 1.0 / float(f.mean())  # Eq. 3
    assert stiffness(x, mu) == pytest.approx(beta)
    assert torch.allclose(neon(x, mu), neon(x, mu, beta=beta))


def test_proposition_3_two_clusters_is_shapley_value() -> None:
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(2, 5, generator=g, dtype=torch.float64)
    x = mu[0] + 0.4 * torch.randn(5, generator=g, dtype=torch.float64)
    c = assign(x[None], mu)
    k = 1 - int(c)
    r = neon(x[None], mu, c, beta=1.3)[0]
    w = 2 * (mu[c[0]] - mu[k])
    b = mu[k].pow(2).sum() - mu[c[0]].pow(2).sum()
    m = (mu[0] + mu[1]) / 2
    assert torch.allclose(r, (x - m) * w)  # Supplement Eq. 14
    phi = _shapley(lambda z: float(w @ z + b), x, m)  # reference point x̃ = m_k
    assert torch.allclose(r, phi, atol=1e-10)


def test_proposition_2_beta_zero_is_uniform_and_shapley_of_min() -> None:
    x, mu = _data(n=1, d=3, k=5, seed=6)
    c = assign(x, mu)
    net = neuralize(mu, c)
    h = net.hidden(x)
    rk = min_take_most(h, 0.0)
    f = h.min(1).values
    comp = net.mask[0]
    assert torch.allclose(rk[0, comp], f.expand(4) / 4)  # uniform over the K − 1 competitors
    assert rk[0, ~comp].item() == 0.0
    hv = h[0, comp]
    phi = _shapley(lambda z: float(z.min()), hv, torch.zeros(4, dtype=torch.float64))  # reference h̃ = 0
    assert torch.allclose(rk[0, comp], phi, atol=1e-12)
    # β → ∞: min-take-all
    assert torch.allclose(min_take_most(h, 1e6)[0, comp].max(), f[0])


def test_translation_invariance_of_midpoint_rule() -> None:
    x, mu = _data(seed=7)
    t = torch.tensor([5.0, -3.0, 100.0, 0.5, -20.0], dtype=torch.float64)
    r1 = neon(x, mu)
    r2 = neon(x + t, mu + t)
    assert torch.allclose(r1, r2, atol=1e-8)
    # the zero root point is not translation invariant (a real check that the test bites)
    assert not torch.allclose(neon(x, mu, reference="zero"), neon(x + t, mu + t, reference="zero"), atol=1e-3)


def test_irrelevant_constant_feature_gets_zero() -> None:
    x, mu = _data(seed=8)
    x2 = torch.cat([x, torch.full((x.shape[0], 1), 7.0, dtype=torch.float64)], 1)
    mu2 = torch.cat([mu, torch.full((mu.shape[0], 1), 7.0, dtype=torch.float64)], 1)
    r = neon(x2, mu2)
    assert torch.all(r[:, -1].abs() < 1e-10)
    assert torch.allclose(r[:, :-1], neon(x, mu), atol=1e-9)


def test_min_take_all_limit_is_nca() -> None:
    x, mu = _data(seed=9)
    assert torch.allclose(neon(x, mu, beta=1e6), nca(x, mu), atol=1e-6)
    assert torch.allclose(nca(x, mu).sum(1), cluster_score(x, mu))


def test_bad_inputs_raise() -> None:
    x, mu = _data()
    with pytest.raises(ConfigError):
        neon(x, mu[:1])
    with pytest.raises(ConfigError):
        neon(x, mu[:, :3])
    with pytest.raises(ConfigError):
        neon(x, mu, torch.full((x.shape[0],), 9))
    with pytest.raises(ConfigError):
        neon(x, mu, reference="median")
    with pytest.raises(ConfigError):
        stiffness(x, mu, (assign(x, mu) + 1) % 4)
