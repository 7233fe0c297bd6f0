"""kmtools.evaluate: κ and outliers by hand, thresholds, AUROC/FPR95 vs sklearn, Theorem 2
against exact Voronoi distances, noise images, streaming in bounded memory."""

from __future__ import annotations

import gc
import json
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kmtools.centroids import equidistant
from kmtools.errors import ConfigError, DataError
from kmtools.evaluate import (
    EvalResult,
    auroc,
    evaluate,
    fpr_at_tpr,
    noise_batches,
    recommended_threshold,
    theorem2_margin,
)
from kmtools.models import GaussHead, KmModel

C3 = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])


def gauss_2d(centroids: torch.Tensor = C3, scale: float = 1.0, threshold: float | None = None) -> KmModel:
    """f(x) = scale·x on 2-D inputs, Gauss head with the given centroids (γ = 1)."""
    backbone: nn.Module = nn.Identity() if scale == 1.0 else _Scale(scale)
    return KmModel(backbone, GaussHead(centroids), input_shape=(2,), outlier_threshold=threshold).eval()


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * x


# --------------------------------------------------------------------------- κ, outliers, prototypes


def test_kappa_outliers_and_prototypes_by_hand() -> None:
    x = torch.tensor([[0.1, 0.0], [3.0, 0.5], [1.0, 1.0], [20.0, 10.0], [0.0, 2.0], [-0.5, 0.0]])
    y = torch.tensor([0, 1, 2, 1, 2, 0])
    res = evaluate(gauss_2d(), TensorDataset(x, y), batch_size=4, per_class=1)
    # nearest centroids by hand: (0,0); (3,0); (1,1) is at distance² 2, 5, 5 -> class 0; (20,10)
    # -> (3,0) with d² = 389 (κ underflows to 0 but the prediction is still the nearest centroid);
    # (0,2) -> (0,3) with d² = 1; (-0.5,0) -> (0,0) with d² = 0.25
    d2 = [0.01, 0.25, 2.0, 389.0, 1.0, 0.25]
    assert res.prediction.tolist() == [0, 1, 0, 1, 2, 0]
    np.testing.assert_allclose(res.confidence, np.exp(-np.array(d2)), rtol=1e-6, atol=1e-30)
    assert res.correct.tolist() == [True, True, False, True, True, True]
    assert res.accuracy == pytest.approx(5 / 6)
    assert res.mean_confidence == pytest.approx(np.exp(-np.array(d2)).mean(), rel=1e-6)
    # threshold 1/c = 1/3: exp(-2) = 0.135, exp(-389) = 0 and exp(-1) = 0.368 -> 2 of 6 below
    assert res.threshold == pytest.approx(1 / 3)
    assert res.outlier_rate == pytest.approx(2 / 6)
    # confidence of the true class: (1,1) labelled 2 has κ_2 = exp(-5)
    assert res.label_confidence[2] == pytest.approx(math.exp(-5.0), rel=1e-6)
    # prototypes/outliers by confidence of the true class, per class
    assert dict(zip(res.proto_labels.tolist(), res.proto_index.tolist(), strict=True)) == {0: 0, 1: 1, 2: 4}
    assert dict(zip(res.outlier_labels.tolist(), res.outlier_index.tolist(), strict=True)) == {0: 5, 1: 3, 2: 2}
    np.testing.assert_allclose(res.proto_images[res.proto_labels == 2][0], [0.0, 2.0])
    # a custom threshold from the model
    res2 = evaluate(gauss_2d(threshold=0.5), TensorDataset(x, y))
    assert res2.threshold == 0.5
    assert res2.outlier_rate == pytest.approx(3 / 6)  # exp(-1) < 0.5 too


def test_softmax_confidence_is_max_probability() -> None:
    torch.manual_seed(0)
    head = nn.Linear(2, 3)
    model = KmModel(nn.Identity(), head, input_shape=(2,), head_path="fc").eval()
    x = torch.randn(50, 2) * 3
    y = torch.randint(0, 3, (50,))
    res = evaluate(model, TensorDataset(x, y), batch_size=16)
    p = torch.softmax(head(x), 1).detach()
    np.testing.assert_allclose(res.confidence, p.max(1).values.numpy(), rtol=1e-5)
    assert res.prediction.tolist() == p.argmax(1).tolist()
    assert res.outlier_rate == 0.0  # a softmax maximum is never below 1/c
    assert res.head_kind == "softmax" and res.theorem2_centroids == "equidistant"


def test_recommended_threshold_is_5th_percentile() -> None:
    conf = np.arange(1, 101) / 100.0
    ok = np.ones(100, dtype=bool)
    t = recommended_threshold(conf, ok)
    assert t == pytest.approx(0.0595)  # numpy's linear interpolation: 0.05 + 0.95 * 0.01
    assert (conf[ok] >= t).mean() == pytest.approx(0.95)
    rng = np.random.default_rng(1)
    conf = rng.random(1000)
    ok = rng.random(1000) < 0.8
    t = recommended_threshold(conf, ok)
    assert t == pytest.approx(np.percentile(conf[ok], 5))
    assert 0.94 <= (conf[ok] >= t).mean() <= 0.96
    assert recommended_threshold(conf, np.zeros(1000, dtype=bool)) is None
    # through evaluate
    # through evaluate: fitted on a seeded half, never on the inputs it is reported on
    res = evaluate(gauss_2d(), TensorDataset(torch.randn(300, 2) * 1.5, torch.randint(0, 3, (300,))))
    fit = res.fit_mask
    assert fit is not None and fit.sum() == 150
    assert res.recommended_threshold == pytest.approx(np.percentile(res.confidence[fit & res.correct], 5))
    held = res.to_dict()["threshold_heldout"]
    assert held["correct_kept"]["n"] == int((~fit & res.correct).sum())
    assert held["flagged"]["n"] == 150 and "seeded half" in res.to_dict()["threshold_fit"]
    again = evaluate(gauss_2d(), TensorDataset(torch.randn(300, 2) * 1.5, torch.randint(0, 3, (300,))))
    assert again.fit_mask is not None and np.array_equal(again.fit_mask, fit)  # seeded
    val = TensorDataset(torch.randn(200, 2) * 1.5, torch.randint(0, 3, (200,)))
    vres = evaluate(gauss_2d(), TensorDataset(torch.randn(50, 2), torch.randint(0, 3, (50,))), val_data=val)
    assert vres.fit_mask is None and vres.val_confidence is not None and vres.val_correct is not None
    assert vres.recommended_threshold == pytest.approx(
        np.percentile(vres.val_confidence[vres.val_correct], 5))
    assert vres.to_dict()["threshold_heldout"]["flagged"]["n"] == 50


# --------------------------------------------------------------------------- OOD metrics


@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_fpr95_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    npos, nneg = rng.integers(1, 300, size=2)
    pos = rng.normal(1.0, 1.0, npos)
    neg = rng.normal(0.0, 1.0, nneg)
    if seed % 2:  # many ties
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    scores = np.concatenate([pos, neg])
    truth = np.concatenate([np.ones(npos), np.zeros(nneg)])
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert fpr_at_tpr(pos, neg, 0.5) == pytest.approx(fpr[np.argmax(tpr >= 0.5)], abs=1e-12)


def test_auroc_edge_cases() -> None:
    assert auroc([1, 2, 3], [0, 0]) == 1.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    assert fpr_at_tpr([1, 2, 3], [0, 0]) == 0.0
    with pytest.raises(DataError):
        auroc([], [1.0])


def test_noise_images() -> None:
    u = torch.cat(list(noise_batches("uniform", 500, (1, 8, 8), seed=3, batch_size=128)))
    assert u.shape == (500, 1, 8, 8) and float(u.min()) >= 0 and float(u.max()) <= 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    g = torch.cat(list(noise_batches("gaussian", 2000, (1, 8, 8), seed=3, batch_size=256)))
    assert float(g.min()) == 0.0 and float(g.max()) == 1.0  # clipped to [0, 1]
    assert float(g.mean()) == pytest.approx(0.5, abs=0.01)
    clipped = float(((g == 0) | (g == 1)).float().mean())
    assert clipped == pytest.approx(0.0455, abs=0.005)  # P(|N(0,1)| > 2)
    g2 = torch.cat(list(noise_batches("gaussian", 2000, (1, 8, 8), seed=3, batch_size=2000)))
    assert torch.equal(g, g2)  # batch size does not change the images
    with pytest.raises(ConfigError):
        next(noise_batches("salt", 1, (2,)))


def test_ood_noise_and_dataset() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]]).repeat(10, 1)
    y = torch.tensor([0, 1, 2]).repeat(10)
    data = TensorDataset(x, y)
    far = TensorDataset(torch.full((7, 2), 50.0), torch.zeros(7, dtype=torch.long))
    res = evaluate(gauss_2d(), data, ood=far)
    assert res.ood_source == "dataset" and res.noise_confidence is not None
    assert res.noise_confidence.shape == (7,)
    assert res.auroc == 1.0 and res.fpr95 == 0.0
    d = res.to_dict()["ood"]
    assert d["n"] == 7 and d["ood_outlier_rate"] == 1.0
    res = evaluate(gauss_2d(), data, ood="uniform", n_noise=40, seed=1)
    assert res.ood_source == "uniform" and res.noise_confidence is not None
    assert res.noise_confidence.shape == (40,)
    again = evaluate(gauss_2d(), data, ood="uniform", n_noise=40, seed=1, batch_size=7)
    np.testing.assert_array_equal(res.noise_confidence, again.noise_confidence)
    with pytest.raises(ConfigError):
        evaluate(gauss_2d(), data, ood="cifar10")


def test_several_ood_sources_are_scored_separately() -> None:
    """noise and a dataset in one call: each source gets its own metrics, equal to a run with
    that source alone; the first one is also the ``ood`` summary and ``noise_confidence``."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(90, 2, generator=g) * 0.5 + C3.repeat(30, 1)
    y = torch.arange(3).repeat(30)
    data = TensorDataset(x, y)
    far = TensorDataset(torch.randn(12, 2, generator=g) + 6.0, torch.zeros(12, dtype=torch.long))
    both = evaluate(gauss_2d(), data, ood=["gaussian", far, far], n_noise=25, seed=2, batch_size=16)
    assert list(both.ood_confidence) == ["gaussian", "dataset", "dataset-2"]
    alone_noise = evaluate(gauss_2d(), data, ood="gaussian", n_noise=25, seed=2)
    alone_far = evaluate(gauss_2d(), data, ood=far)
    d = both.to_dict()
    assert d["ood"] == alone_noise.to_dict()["ood"] == d["ood_by_source"]["gaussian"]
    far_metrics = {**alone_far.to_dict()["ood"], "source": "dataset-2"}
    assert d["ood_by_source"]["dataset-2"] == far_metrics
    assert d["ood_by_source"]["dataset"]["auroc"] == far_metrics["auroc"]
    np.testing.assert_array_equal(both.noise_confidence, alone_noise.noise_confidence)
    arr = both.arrays()
    np.testing.assert_array_equal(arr["ood_dataset_confidence"], alone_far.noise_confidence)
    assert arr["ood_gaussian_confidence"].shape == (25,) and arr["noise_confidence"].shape == (25,)
    no_ood = evaluate(gauss_2d(), data).to_dict()
    assert no_ood["ood"] is None and no_ood["ood_by_source"] is None


def test_prototypes_and_outliers_match_brute_force() -> None:
    """The streamed per-class top/bottom k (across batch boundaries, with ties) equal a sort
    of the whole dataset: highest/lowest confidence of the true class, earlier input first."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(203, 2, generator=g) * 2
    x[50:60] = x[10]  # ties across batches
    y = torch.randint(0, 3, (203,), generator=g)
    res = evaluate(gauss_2d(), TensorDataset(x, y), batch_size=16, per_class=3)
    lc = res.label_confidence
    want_top, want_bottom = [], []
    for c in range(3):
        idx = np.flatnonzero(y.numpy() == c)
        want_top += idx[np.argsort(-lc[idx], kind="stable")[:3]].tolist()
        want_bottom += idx[np.argsort(lc[idx], kind="stable")[:3]].tolist()
    assert res.proto_index.tolist() == want_top
    assert res.outlier_index.tolist() == want_bottom
    np.testing.assert_array_equal(res.proto_images, x[res.proto_index].numpy())
    np.testing.assert_array_equal(res.proto_conf, lc[res.proto_index])
    assert res.outlier_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_reject_curve_in_results() -> None:
    """Accuracy-reject curve of the confidence (kmtools.heads.reject): the accuracy after
    rejecting the least confident 10% equals that of the other 90%, computed by hand."""
    pytest.importorskip("kmtools.heads.reject")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 2, generator=g) * 1.5
    y = torch.cdist(x + torch.randn(400, 2, generator=g), C3).argmin(1)  # wrong mostly near boundaries
    res = evaluate(gauss_2d(), TensorDataset(x, y))
    assert 0.5 < res.accuracy < 0.95
    rej = res.to_dict()["reject"]
    order = np.argsort(-res.confidence.astype(np.float64), kind="stable")
    assert rej["acc_at_reject_10"] == pytest.approx(res.correct[order[:360]].mean())
    assert rej["thr_at_reject_10"] == pytest.approx(float(res.confidence[order[359]]))
    arr = res.arrays()
    assert arr["reject_rate"][0] == 0.0 and arr["reject_accuracy"][0] == pytest.approx(res.accuracy)
    assert len(arr["reject_rate"]) <= 201 and np.all(np.diff(arr["reject_rate"]) > 0)


# --------------------------------------------------------------------------- Theorem 2


def _exact_distance_to_other_cells(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact distance from each f to the nearest point assigned to another centroid.

    The Voronoi cell of k is ∩_l {z : ‖z − C_k‖ ≤ ‖z − C_l‖}; the distance from an interior
    point to its complement is the minimum over l of the distance to the bisector of C_k, C_l:
    (‖f − C_l‖² − ‖f − C_k‖²) / (2‖C_l − C_k‖)."""
    f, c = f.double(), c.double()
    d2 = torch.cdist(f, c).pow(2)
    k = d2.argmin(1)
    gap = torch.cdist(c, c)[k]  # (n, c)
    dist = (d2 - d2.gather(1, k[:, None])) / (2 * gap)
    dist[torch.arange(len(f)), k] = math.inf
    return dist.min(1).values


@pytest.mark.parametrize("seed", range(3))
def test_theorem2_margin_is_a_lower_bound_voronoi(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(4, 2, generator=g) * 3
    x = torch.cat([torch.randn(400, 2, generator=g) * 4, c])  # the centroids themselves too
    y = torch.cdist(x, c).argmin(1)
    res = evaluate(gauss_2d(c), TensorDataset(x, y), lipschitz=1.0)
    assert res.margin is not None and res.theorem2_centroids == "gauss"
    exact = _exact_distance_to_other_cells(x, c).numpy()
    assert (res.margin <= exact + 1e-9).all()
    assert (res.margin > 0).mean() > 0.1  # not vacuous
    # at a centroid the bound is tight: half the distance to the nearest other centroid
    np.testing.assert_allclose(res.margin[-4:], exact[-4:], rtol=1e-9)
    # the formula itself
    np.testing.assert_allclose(res.margin, theorem2_margin(x, c, torch.from_numpy(res.prediction)).numpy())
    # brute force: perturbations shorter than the bound never change the nearest centroid
    d = torch.randn(400, 64, 2, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True) * (torch.from_numpy(res.margin[:400])[:, None, None] * 0.999)
    moved = x[:400, None, :].double() + d
    pred = torch.cdist(moved.reshape(-1, 2), c.double()).argmin(1).reshape(400, 64)
    assert (pred == torch.from_numpy(res.prediction[:400])[:, None]).all()


def test_theorem2_input_bound_uses_lipschitz() -> None:
    g = torch.Generator().manual_seed(5)
    c = torch.randn(3, 2, generator=g) * 3
    x = torch.randn(300, 2, generator=g) * 2
    y = torch.zeros(300, dtype=torch.long)
    res = evaluate(gauss_2d(c, scale=2.0), TensorDataset(x, y), lipschitz=2.0)  # f = 2x has L_p = 2
    assert res.input_bound is not None and res.margin is not None
    np.testing.assert_allclose(res.input_bound, res.margin / 2.0)
    # true input-space distance to another class = feature distance / 2
    exact_in = _exact_distance_to_other_cells(2 * x, c).numpy() / 2
    assert (res.input_bound <= exact_in + 1e-9).all()
    t2 = res.to_dict()["theorem2"]
    assert t2["space"] == "input" and t2["lipschitz"] == 2.0
    assert t2["median"] == pytest.approx(float(np.median(res.input_bound)))
    assert t2["feature_margin"]["p05"] == pytest.approx(float(np.percentile(res.margin, 5)))
    with pytest.raises(ConfigError):
        evaluate(gauss_2d(c), TensorDataset(x, y), lipschitz=-1.0)


def test_theorem2_softmax_equidistant_is_a_lower_bound() -> None:
    torch.manual_seed(2)
    head = nn.Linear(2, 4)
    model = KmModel(nn.Identity(), head, input_shape=(2,), head_path="fc").eval()
    eq = equidistant(head)
    # points spread around the (feature part of the) equidistant centroids
    x = torch.cat([torch.randn(500, 2) * 3, eq.centroids[:, :2].float()])
    y = torch.zeros(len(x), dtype=torch.long)
    res = evaluate(model, TensorDataset(x, y))
    assert res.margin is not None and res.theorem2_centroids == "equidistant"
    # exact distance of f to the softmax decision boundary: min_l (s_k - s_l) / ‖W_k - W_l‖
    with torch.no_grad():
        s = head(x).double()
    w = head.weight.detach().double()
    k = s.argmax(1)
    gaps = (s.gather(1, k[:, None]) - s) / (w[k][:, None, :] - w[None, :, :]).norm(dim=-1).clamp_min(1e-300)
    gaps[torch.arange(len(x)), k] = math.inf
    exact = gaps.min(1).values.numpy()
    assert (res.margin <= exact + 1e-7).all()


# --------------------------------------------------------------------------- result and streaming


def test_result_serialises() -> None:
    x = torch.randn(60, 2) * 2
    y = torch.cdist(x, C3).argmin(1)
    res = evaluate(gauss_2d(), TensorDataset(x, y), ood="gaussian", n_noise=30, lipschitz=1.0, per_class=2)
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    for key in ("accuracy", "mean_confidence", "outlier_rate", "threshold", "recommended_threshold"):
        assert isinstance(d[key], float)
    assert d["head_kind"] == "gauss" and d["n"] == 60
    assert set(d["ood"]) >= {"source", "auroc", "fpr95"}
    assert set(d["theorem2"]) >= {"mean", "median", "min", "p05", "feature_margin", "input_bound"}
    try:
        import kmtools.heads.reject  # noqa: F401
    except ImportError:
        assert d["reject"] is None
    else:
        assert 0.0 <= d["reject"]["auc"] <= 1.0
    arr = res.arrays()
    for key in ("confidence", "correct", "prediction", "label", "noise_confidence", "margin"):
        assert isinstance(arr[key], np.ndarray)
    assert arr["noise_confidence"].shape == (30,)
    assert arr["proto_images"].shape == (6, 2) and arr["outlier_labels"].shape == (6,)
    assert isinstance(res, EvalResult)


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(DataError):
        evaluate(gauss_2d(), TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


class _OnTheFly(Dataset[tuple[torch.Tensor, int]]):
    """10,000 images of 3x32x32 (123 MB as float32) generated per item, never stored."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g), i % 4


class _Probe(nn.Module):
    """Backbone that keeps weak references to its input batches and, at every call, counts
    how many *earlier* batches are still alive (referenced by someone)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 3)
        self.refs: list[weakref.ref[torch.Tensor]] = []
        self.alive_before: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_before.append(sum(r() is not None for r in self.refs))
        self.refs.append(weakref.ref(x))
        return self.lin(x.flatten(1))


def test_streaming_10k_inputs_in_bounded_memory() -> None:
    """Memory is bounded by one batch plus a few scalars per input, whatever N: no input
    batch outlives its step (counted with weak references while evaluate runs, which,
    unlike the process RSS, does not depend on the allocator or on other processes), and
    the result holds O(N) scalars plus at most 2·per_class images per class."""
    n, bs = 10_000, 500
    torch.manual_seed(0)
    probe = _Probe()
    c = torch.randn(4, 3)
    model = KmModel(probe, GaussHead(c), input_shape=(3, 32, 32)).eval()
    res = evaluate(model, _OnTheFly(n), ood="uniform", n_noise=100, batch_size=bs, per_class=1)
    assert res.n == n and res.confidence.shape == (n,) and res.margin is not None
    assert res.noise_confidence is not None and res.noise_confidence.shape == (100,)
    assert res.proto_images.shape == (4, 3, 32, 32)
    assert len(probe.refs) == n // bs + 1
    # at every forward, no earlier batch was still referenced: one batch in memory at a time
    assert max(probe.alive_before) == 0, probe.alive_before
    gc.collect()
    assert not [r for r in probe.refs if r() is not None], "input batches outlive evaluate()"
    # what the result keeps: a few scalars per input and 2·per_class images per class
    kept = sum(a.nbytes for a in res.arrays().values())
    images = (res.proto_images.nbytes + res.outlier_images.nbytes)
    assert images == 2 * 4 * 3 * 32 * 32 * 4
    assert kept - images < 64 * (n + 100), kept
    dataset_bytes = n * 3 * 32 * 32 * 4
    assert kept < dataset_bytes / 100


# --------------------------------------------------------------------------- CLI


def _digits_gauss(softmax: KmModel) -> KmModel:
    """The Gauss network of ``softmax`` without fine-tuning: class-mean centroids of the
    training features and the auto feature scale of kmtools.tailor."""
    from kmtools.centroids import class_means
    from kmtools.data import load_dataset
    from kmtools.tailor import auto_gamma

    tr = load_dataset("digits", split="train").dataset
    assert isinstance(tr, TensorDataset)
    x, y = tr.tensors
    with torch.no_grad():
        f = softmax.features(x)
    c = class_means(f, y.long(), 10)
    return softmax.with_head(GaussHead(c, gamma=auto_gamma(f, y.long(), c))).eval()


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from kmtools.models import save_model
    from tests.helpers import digits_model

    root = tmp_path_factory.mktemp("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny CNN trains no faster on 2 threads, and far slower on a busy CPU
    try:
        soft = digits_model()
    finally:
        torch.set_num_threads(threads)
    save_model(soft, root / "softmax.safetensors")
    save_model(_digits_gauss(soft), root / "gauss.safetensors")
    return str(root / "softmax.safetensors"), str(root / "gauss.safetensors")


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from kmtools_cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_compare_json_out_and_gates(digits_pair: tuple[str, str], tmp_path: Path) -> None:
    """softmax vs its Gauss network on digits, side by side: the paper's Fig. 3 claim (noise
    gets high softmax confidence, low κ), the JSON envelope, evaluate.json/npz, gates."""
    from kmtools.report.schema import validate

    soft, gauss = digits_pair
    out = tmp_path / "run"
    common = ["--data", "digits", "-n", "200", "--ood", "uniform", "--ood", "gaussian", "--n-noise", "200"]
    r = _cli("evaluate", soft, "--compare", gauss, *common, "--out", str(out), "--format", "json", "--quiet",
             "--gate", "gauss.accuracy>=softmax.accuracy-0.05", "--gate", "gauss.ood.auroc>=0.5")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert validate(doc) == [] and doc["command"] == "evaluate" and doc["data"]["n"] == 200
    res = doc["results"]
    s, g = res["softmax"], res["gauss"]
    assert res["accuracy"] == s["accuracy"] and set(res["models"]) == {"softmax", "gauss"}
    assert s["accuracy"] > 0.9 and g["accuracy"] > 0.9
    for m in (s, g):
        assert set(m["ood_by_source"]) == {"uniform", "gaussian"} and m["ood"]["source"] == "uniform"
        assert m["recommended_threshold"] is not None and m["reject"] is not None
    # noise: the softmax network is confident, the Gauss network is not (paper Sec. 5.2, Fig. 3)
    for src in ("uniform", "gaussian"):
        assert s["ood_by_source"][src]["mean_ood_confidence"] > 0.5
        assert g["ood_by_source"][src]["mean_ood_confidence"] < 0.5 * s["ood_by_source"][src]["mean_ood_confidence"]
    # Theorem 2: vacuous for the softmax network's equidistant centroids, informative for κ
    assert s["theorem2"]["centroids"] == "equidistant" and g["theorem2"]["centroids"] == "gauss"
    assert g["theorem2"]["vacuous_share"] < s["theorem2"]["vacuous_share"]
    assert g["theorem2"]["median"] > 0
    # files for `kmtools report`
    saved = json.loads((out / "evaluate.json").read_text())
    assert saved["results"] == res
    with np.load(out / "evaluate.npz") as z:
        assert z["gauss_confidence"].shape == z["softmax_confidence"].shape == (200,)
        assert z["gauss_noise_confidence"].shape == (200,) and z["gauss_ood_gaussian_confidence"].shape == (200,)
        assert np.isclose(z["gauss_confidence"].mean(), g["mean_confidence"], rtol=1e-5)
        assert z["images"].shape == (40, 1, 8, 8) and z["labels"].shape == z["images_confidence"].shape == (40,)
        assert z["gauss_reject_rate"][0] == 0.0
    # a failing gate exits 3 after printing; existing outputs are not overwritten without --force
    r = _cli("evaluate", gauss, *common, "--quiet", "--gate", "accuracy>=0.999")
    assert r.exit_code == 3 and "gate failed" in r.output
    before = (out / "evaluate.json").read_bytes()
    r = _cli("evaluate", gauss, *common, "--out", str(out))
    assert r.exit_code == 1 and "--force" in r.output
    assert (out / "evaluate.json").read_bytes() == before


def test_cli_human_table_and_errors(digits_pair: tuple[str, str], tmp_path: Path) -> None:
    _, gauss = digits_pair
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "100", "--n-noise", "50", "--lipschitz", "2.5")
    assert r.exit_code == 0, r.output
    for row in ("accuracy", "outlier rate", "recommended threshold", "OOD uniform: AUROC", "Thm 2 bound"):
        assert row in r.stdout, row
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "50", "--ood", "none", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"]["ood"] is None
    # an OOD dataset of the same input shape: digits inverted (1 - x) as an .npz
    from kmtools.data import load_dataset

    te = load_dataset("digits", split="test").dataset
    assert isinstance(te, TensorDataset)
    np.savez(tmp_path / "inverted.npz", x=(1 - te.tensors[0][:60]).numpy(), y=te.tensors[1][:60].numpy())
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "100", "--ood", str(tmp_path / "inverted.npz"),
             "--format", "json")
    assert r.exit_code == 0, r.output
    ood = json.loads(r.stdout)["results"]["ood"]
    assert ood["n"] == 60 and ood["source"] == "inverted" and 0.0 <= ood["auroc"] <= 1.0
    # the n-ball reject option (prototype-layers Sec. 7.4) fitted on the whole train split (its
    # maths is tested in test_heads_reject.py): balls around the 10 centroids, applied to the
    # 100 test inputs evaluated
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "100", "--ood", "none", "--nball", "--format", "json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    nb = res["reject"]["nball"]
    assert nb["operating_point"]["rule"] == "nball" and nb["prototypes"] == 10 and nb["train_n"] == 1348
    assert 0 <= nb["operating_point"]["reject_rate"] < 0.5 and nb["curve"]["accepted"][-1] <= 100
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "50", "--ood", "none", "--format", "json")
    assert "nball" not in json.loads(r.stdout)["results"]["reject"]  # off by default for a Gauss head
    # clear one-line errors, exit 1 (usage errors of Typer: 2)
    r = _cli("evaluate", gauss, "--data", "digits", "--ood", "wine")
    assert r.exit_code == 1 and "shape" in r.output
    r = _cli("evaluate", gauss, "--data", "digits", "--ood", "none", "--ood", "uniform")
    assert r.exit_code == 1 and "--ood none" in r.output
    r = _cli("evaluate", gauss, "--data", "digits", "--lipschitz", "-1")
    assert r.exit_code == 1 and "--lipschitz" in r.output
    r = _cli("evaluate", gauss, "--data", "digits", "--gate", "accuracy>>0.9")
    assert r.exit_code == 2
