"""Kernel k-means (paper Sec. III, Prop. 5, Appendix F) and its NEON."""

from __future__ import annotations

import torch

from kmtools.explain import KernelKMeans, fit_kernel_kmeans, kernel_neon, neon
from kmtools.explain.kernel import lme


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]], dtype=torch.float64)
    y = torch.arange(90) % 3
    return centers[y] + 0.7 * torch.randn(90, 2, generator=g, dtype=torch.float64), y


def _random_model(seed: int = 1, k: int = 3, m: int = 4, d: int = 3) -> KernelKMeans:
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(k, 1, d, generator=g, dtype=torch.float64)
    return KernelKMeans(centers + torch.randn(k, m, d, generator=g, dtype=torch.float64), gamma=0.3)


def test_fit_recovers_separated_clusters() -> None:
    x, y = _blobs()
    model = fit_kernel_kmeans(x, 3, m=3, iters=30, restarts=2, seed=0)
    pred = model.predict(x)
    # a perfect partition up to relabelling
    pairs = {(int(a), int(b)) for a, b in zip(y, pred, strict=True)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
    assert model.gamma > 0 and model.support.shape == (3, 3, 2)
    # γ is the fixed point of Eq. 38 for the final responsibilities (≈ 1/(2σ²), σ = 0.7)
    assert 0.3 < model.gamma < 3.0


def test_network_reproduces_decision_of_eq6() -> None:
    model = _random_model()
    x = 3 * torch.randn(50, 3, dtype=torch.float64)
    d2 = ((x[:, None, None, :] - model.support[None]) ** 2).sum(-1)  # (N, K, M)
    soft = -1 / model.gamma * torch.log(torch.exp(-model.gamma * d2).mean(2))  # LME^{−γ}, Eq. 7
    assert torch.equal(model.predict(x), soft.argmin(1))
    c = model.predict(x)
    assert (model.score(x, c) > 0).all()
    for k in range(3):  # f_k > 0 exactly for the inputs assigned to k (Prop. 5)
        assert torch.equal(model.score(x, torch.full((50,), k)) > 0, c == k)
    # Prop. 5 layer by layer: h_ijk = d_j − d_i; h_jk = LME^γ_i; h_k = LME^{−γ}_j
    n, k = 0, int((c[0] + 1) % 3)
    hijk = d2[n, k][None, :] - d2[n, c[0]][:, None]  # (i, j)
    hjk = lme(hijk, model.gamma, dim=0)
    hk = lme(hjk, -model.gamma, dim=0)
    assert torch.allclose(hk, model.hidden(x[:1], c[:1])[0, k])


def test_kernel_neon_equals_neuron_level_propagation() -> None:
    """Closed form vs footnote 1 + Eq. 10 + Eq. 4 evaluated neuron by neuron."""
    model = _random_model(seed=2)
    x = 3 * torch.randn(6, 3, dtype=torch.float64)
    c = model.predict(x)
    beta, g = 0.8, model.gamma
    u = model.support
    out = kernel_neon(x, model, c, beta)
    for n in range(x.shape[0]):
        cn = int(c[n])
        h = model.hidden(x[n : n + 1], c[n : n + 1])[0]
        comp = [k for k in range(3) if k != cn]
        wk = torch.softmax(-beta * h[comp], 0)
        f = h[comp].min()
        r = torch.zeros(3, dtype=torch.float64)
        for idx, k in enumerate(comp):
            rk = wk[idx] * f  # Eq. 2
            hijk = torch.empty(4, 4, dtype=torch.float64)
            for i in range(4):
                for j in range(4):
                    w = 2 * (u[cn, i] - u[k, j])
                    b = u[k, j].pow(2).sum() - u[cn, i].pow(2).sum()
                    hijk[i, j] = w @ x[n] + b
            hjk = lme(hijk, g, dim=0)
            sj = torch.softmax(-g * hjk, 0)
            for i in range(4):
                si = torch.softmax(g * hijk[:, 0], 0)[i]  # independent of j (footnote 1)
                for j in range(4):
                    assert torch.allclose(torch.softmax(g * hijk[:, j], 0)[i], si)
                    rijk = si * sj[j] * rk
                    rijk = rijk * hijk[i, j] / h[k]  # Eq. 10
                    w = 2 * (u[cn, i] - u[k, j])
                    mij = (u[cn, i] + u[k, j]) / 2
                    r += (x[n] - mij) * w / ((x[n] - mij) @ w) * rijk  # Eq. 4
        assert torch.allclose(out[n], r, atol=1e-9)


def test_one_support_vector_per_cluster_is_standard_neon() -> None:
    g = torch.Generator().manual_seed(3)
    mu = 3 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    model = KernelKMeans(mu[:, None, :], gamma=0.5)
    x = mu[torch.arange(30) % 4] + torch.randn(30, 5, generator=g, dtype=torch.float64)
    c = model.predict(x)
    assert torch.equal(c, torch.cdist(x, mu).argmin(1))
    r = kernel_neon(x, model, c, beta=0.4)
    assert torch.allclose(r, neon(x, mu, c, beta=0.4), atol=1e-9)
    # … hence conservation holds exactly in that case
    assert torch.allclose(r.sum(1), model.score(x, c), atol=1e-9)
