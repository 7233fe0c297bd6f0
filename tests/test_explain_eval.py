"""Baselines (Sec. VII), KDE imputation (App. G) and the feature-adding AUC (Algorithm 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmtools.errors import ConfigError
from kmtools.explain import (
    KDE,
    METHODS,
    cluster_score,
    explain_data,
    feature_adding_auc,
    feature_adding_curves,
    loo_sigma,
    table_row,
)
from kmtools.explain.baselines import integrated_gradients, nca, pda, random_relevance, sensitivity, squared
from kmtools.explain.plots import feature_bars, heatmap, heatmap_grid


def _informative(n: int = 60, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clusters that differ in features 0 and 1 only; the other features are noise."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.zeros(2, d, dtype=torch.float64)
    mu[0, :2], mu[1, :2] = 2.0, -2.0
    x = mu[torch.arange(n) % 2] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, mu


def test_loo_sigma_is_fixed_point_of_eq42() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    s = loo_sigma(x)
    d2 = torch.cdist(x, x) ** 2
    d2.fill_diagonal_(float("inf"))
    w = torch.softmax(-d2 / (2 * s * s), 1)
    again = float((w * torch.nan_to_num(d2, posinf=0.0)).sum()) / (50 * 3)
    assert math.sqrt(again) == pytest.approx(s, rel=1e-6)
    # it maximises the leave-one-out likelihood (Eq. 41): nearby bandwidths do worse
    def loo_nll(sig: float) -> float:
        logp = -d2 / (2 * sig**2) - 1.5 * math.log(2 * math.pi * sig**2)
        return float(-(torch.logsumexp(logp, 1) - math.log(49)).sum())
    assert loo_nll(s) < loo_nll(0.8 * s) and loo_nll(s) < loo_nll(1.25 * s)


def test_kde_conditional_sampling() -> None:
    data = torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]], dtype=torch.float64)
    kde = KDE(data, sigma=0.01)
    z = torch.tensor([[9.5, 0.0, 0.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    present = torch.tensor([True, False, False])
    s = kde.sample_conditional(z, present, 20, gen)
    assert torch.all(s[..., 0] == 9.5)  # given features are kept
    # α picks n = 1, the only data point near the given feature
    assert torch.allclose(s[..., 1:], torch.full((1, 20, 2), 10.0, dtype=torch.float64), atol=0.1)


def test_auc_perfect_ranking_beats_random_and_bounds() -> None:
    x, mu = _informative()
    perfect = torch.zeros_like(x)
    perfect[:, :2] = 1.0
    rnd = torch.stack([random_relevance(x, mu, seed=s) for s in range(5)])
    for imp in ("kde", "zero"):
        good = feature_adding_auc(x, mu, None, perfect, imputation=imp, repeats=5, seed=0)
        bad = feature_adding_auc(x, mu, None, rnd, imputation=imp, repeats=5, seed=0)
        worst = feature_adding_auc(x, mu, None, -perfect, imputation=imp, repeats=5, seed=0)
        assert 0 <= worst < bad < good <= 100
        assert good - bad > 10
    curves = feature_adding_curves(x, mu, None, perfect, "zero", repeats=1)
    assert torch.all(curves[..., -1] == 1)  # with every feature present, z itself is scored
    assert curves.shape == (1, 60, 8)


def test_auc_steps_and_errors() -> None:
    x, mu = _informative()
    r = METHODS["NEON"](x, mu)
    full = feature_adding_auc(x, mu, None, r, imputation="zero", repeats=1)
    coarse = feature_adding_auc(x, mu, None, r, imputation="zero", repeats=1, steps=4)
    assert abs(full - coarse) < 15
    with pytest.raises(ConfigError):
        feature_adding_auc(x, mu, None, r, imputation="mean")
    with pytest.raises(ConfigError):
        feature_adding_auc(x, mu, None, r[:, :3])


def test_gradient_baselines_on_the_piecewise_linear_score() -> None:
    x, mu = _informative(n=10)
    c = torch.arange(10) % 2
    k = 1 - c
    w = 2 * (mu[c] - mu[k])  # ∇f_c for K = 2 (Prop. 1)
    assert torch.allclose(sensitivity(x, mu, c), w**2)
    # f_c is linear for K = 2: IG from the origin is exactly (x − 0) ⊙ w for any number of steps
    assert torch.allclose(integrated_gradients(x, mu, c, steps=3), x * w)
    assert torch.allclose(nca(x, mu, c).sum(1), cluster_score(x, mu, c))
    assert torch.allclose(squared(x, mu), x**2)


def test_pda_indicator_and_score() -> None:
    x, mu = _informative(n=20)
    r0 = pda(x, mu, imputation="zero")
    assert set(r0.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(r0[:, 2:] == 0)  # removing a noise feature never changes the cluster
    rs = pda(x, mu, imputation="zero", target="score")
    f = cluster_score(x, mu)
    for i in range(x.shape[1]):
        z = x.clone()
        z[:, i] = 0
        assert torch.allclose(rs[:, i], f - cluster_score(z, mu, _c(x, mu)))
    rk = pda(x, mu, imputation="kde", samples=4, seed=1)
    assert rk.shape == x.shape and torch.all((rk >= 0) & (rk <= 1))


def _c(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, mu).argmin(1)


def test_table_row_neon_beats_random() -> None:
    x, mu = _informative(n=40, d=6, seed=3)
    methods = ["random", "x2", "PDA0", "grad2", "IG-10", "NCA", "NEON"]
    row = table_row(x, mu, repeats=2, seed=0, methods=methods)
    assert list(row) == methods
    assert all(0 <= v <= 100 for v in row.values())
    assert row["NEON"] > row["random"] + 5
    with pytest.raises(ConfigError):
        table_row(x, mu, methods=["SHAP"])


def test_plots_write_pngs(tmp_path) -> None:
    img = torch.rand(3, 8, 8)
    rel = torch.randn(3, 8, 8)
    for p in (
        heatmap(tmp_path / "a.png", img, rel, title="c=1"),
        heatmap_grid(
            tmp_path / "b.png", img[None].repeat(3, 1, 1, 1), rel[None].repeat(3, 1, 1, 1), titles=list("abc")
        ),
        feature_bars(tmp_path / "c.png", np.array([0.5, -0.2, 0.1]), ["alcohol", "ash", "hue"]),
    ):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="exists"):
        heatmap(tmp_path / "a.png", img, rel)


def test_explain_data_elbow_standardisation_and_conservation() -> None:
    g = torch.Generator().manual_seed(4)
    centers = 8.0 * torch.eye(4, 3, dtype=torch.float64)  # 4 separated blobs (one at the origin)
    x = centers[torch.arange(120) % 4] + 0.5 * torch.randn(120, 3, generator=g, dtype=torch.float64)
    run = explain_data(x, None, standardize_features=False)
    assert run.k_choice == "elbow" and run.num_clusters == 4  # the elbow finds the 4 blobs
    assert (run.score > 0).all()
    assert torch.allclose(run.relevance.sum(1), run.score, atol=1e-9)  # Σ_i R_i = f_c
    # standardisation (App. H) makes the result independent of each feature's unit
    scaled = explain_data(x * torch.tensor([1.0, 100.0, 0.01], dtype=torch.float64), 4)
    plain = explain_data(x, 4)
    assert torch.allclose(scaled.inputs.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(scaled.inputs.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(scaled.relevance, plain.relevance, atol=1e-6)
    assert scaled.to_dict()["conservation"]["max_abs_error"] < 1e-9


def test_small_work_runs_on_one_thread_and_restores() -> None:
    from kmtools.explain._threads import single_thread_if_small, small_work

    torch.set_num_threads(2)
    with single_thread_if_small(100):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with single_thread_if_small(10**9):
        assert torch.get_num_threads() == 2  # large work keeps the caller's threads

    @small_work
    def threads(x: torch.Tensor) -> int:
        return torch.get_num_threads()

    assert threads(torch.zeros(3)) == 1 and torch.get_num_threads() == 2
