"""K-means as an RBF network (kmeans-as-rbf-network-entmax, abstract): the claims, tested.

* the RBF loss L_T = Σ_x Σ_k r_k(x)‖x - μ_k‖² tends to the k-means objective as T → 0;
* one gradient step on μ with step size 1/(2 Σ_x r_k(x)) is Lloyd's centroid update, and
  repeated steps follow Lloyd's trajectory at low T;
* softmax at low T underflows in float32/bf16 where Entmax-1.5 stays finite and keeps the
  Voronoi argmax;
* ``kmtools.centroids.kmeans(method="rbf")`` is a working k-means; the RBF head behaves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

from kmtools.centroids import KMeansResult, kmeans, lloyd
from kmtools.errors import ConfigError
from kmtools.heads import RBFHead, build_head, decision_scores, head_loss
from kmtools.heads.rbf import (
    kmeans_objective,
    normalise,
    rbf_kmeans,
    rbf_loss,
    responsibilities,
    soft_centroid_step,
    squared_distances,
)

pytest.importorskip("entmax")

NORMALISERS = ("softmax", "entmax15")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: one thread avoids oversubscription on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _points(n: int = 240, d: int = 3, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 4.0
    x = centres.repeat_interleave(n // k, 0) + torch.randn(n, d, generator=g, dtype=torch.float64)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * 2.0  # not a fixed point: a real test
    return x, mu


@pytest.mark.parametrize("normaliser", NORMALISERS)
def test_rbf_loss_tends_to_kmeans_objective(normaliser: str) -> None:
    x, mu = _points()
    j = float(kmeans_objective(x, mu))
    # the objective itself, against a brute-force min over centroids
    brute = float(((x[:, None, :] - mu[None]) ** 2).sum(-1).min(1).values.sum())
    assert j == pytest.approx(brute, rel=1e-10)
    temps = [100.0, 10.0, 1.0, 0.1, 0.01, 1e-3, 1e-5]
    gaps = [float(rbf_loss(x, mu, t, normaliser)) - j for t in temps]
    assert all(g >= -1e-9 * j for g in gaps)  # Σ_k r_k d_k >= min_k d_k: r is a probability vector
    assert gaps[0] > 0.1 * j  # far from k-means at high T ...
    assert all(a >= b - 1e-9 * j for a, b in itertools.pairwise(gaps))  # ... shrinking with T
    assert gaps[-1] <= 1e-9 * j  # ... and equal to it in the limit


def test_entmax15_reaches_kmeans_objective_at_finite_temperature() -> None:
    """Entmax-1.5 responsibilities are exactly one-hot once T is below the smallest gap
    between the nearest and second-nearest centroid (softmax only approaches it)."""
    x, mu = _points()
    d = squared_distances(x, mu)
    two = d.topk(2, dim=1, largest=False).values
    t = 0.5 * float((two[:, 1] - two[:, 0]).min())
    r = responsibilities(x, mu, t, "entmax15")
    assert torch.equal(r, torch.nn.functional.one_hot(d.argmin(1), mu.shape[0]).to(r.dtype))
    assert float(rbf_loss(x, mu, t, "entmax15")) == pytest.approx(float(kmeans_objective(x, mu)), rel=1e-12)
    assert float(rbf_loss(x, mu, t, "softmax")) > float(kmeans_objective(x, mu))


@pytest.mark.parametrize("normaliser", NORMALISERS)
def test_gradient_step_is_lloyds_update(normaliser: str) -> None:
    """With responsibilities held fixed, μ_k - η_k ∇_μk L_T with η_k = 1/(2 Σ_x r_k(x)) is the
    responsibility-weighted mean; at low T that is exactly Lloyd's update."""
    x, mu = _points()
    # the gradient, by autograd of the public loss
    m = mu.clone().requires_grad_(True)
    t_low = 1e-6
    rbf_loss(x, m, t_low, normaliser, stop_grad=True).backward()
    assert m.grad is not None
    mass = responsibilities(x, mu, t_low, normaliser).sum(0)
    stepped = mu - m.grad / (2.0 * mass[:, None])
    expected = lloyd(x, mu, max_iter=1).centroids  # one Lloyd iteration
    assert torch.allclose(stepped, expected, atol=1e-10)
    new, mass2 = soft_centroid_step(x, mu, t_low, normaliser)
    assert torch.allclose(new, expected, atol=1e-10)
    assert torch.equal(mass2, mass)
    # at a moderate T the same step lands on the soft (responsibility-weighted) mean
    r = responsibilities(x, mu, 5.0, normaliser)
    soft_mean = (r.T @ x) / r.sum(0)[:, None]
    new, _ = soft_centroid_step(x, mu, 5.0, normaliser)
    assert torch.allclose(new, soft_mean, atol=1e-10)
    assert not torch.allclose(new, expected, atol=1e-3)  # and that is not Lloyd's update


def test_low_temperature_trajectory_matches_lloyd() -> None:
    x, mu = _points(seed=3)
    a = b = mu
    for _ in range(5):
        a, _ = soft_centroid_step(x, a, 1e-6, "entmax15")
        b = lloyd(x, b, max_iter=1).centroids
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_underflows_where_entmax15_stays_finite(dtype: torch.dtype) -> None:
    """The RBF responsibilities exp(-d/T) / Σ exp(-d/T) at low T: every exp underflows to 0
    (float32 and bf16 share the exponent range, e^-104 and below is 0), so rows are 0/0 =
    NaN. Entmax-1.5 on the same logits stays a finite probability vector with the same
    argmax; kmtools' own path (distances shifted by their minimum, in float32) keeps the
    Voronoi argmax exactly for both normalisers."""
    x, mu = _points(seed=1)
    x, mu = x.to(dtype), mu.to(dtype)
    d = squared_distances(x, mu)  # float32 even for bf16 inputs (never a bf16 matmul)
    voronoi = ((x.double()[:, None] - mu.double()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(d.argmin(1), voronoi)
    t = 1e-3
    z = (-d / t).to(dtype)
    e = torch.exp(z)
    naive = e / e.sum(-1, keepdim=True)
    all_zero = e.sum(-1) == 0
    assert float(all_zero.double().mean()) > 0.9  # underflow on (almost) every row
    assert bool(torch.isnan(naive[all_zero]).all())
    q = normalise(z, "entmax15")
    assert q.dtype == dtype and bool(torch.isfinite(q).all())
    assert torch.allclose(q.float().sum(-1), torch.ones(len(q)), atol=1e-2)
    top = z.gather(1, q.argmax(1, keepdim=True)).squeeze(1)
    assert torch.equal(top, z.max(1).values)  # the argmax of its own logits (order-preserving)
    for normaliser in NORMALISERS:
        r = responsibilities(x, mu, t, normaliser)
        assert bool(torch.isfinite(r).all())
        assert torch.equal(r.argmax(1), voronoi)
        assert torch.allclose(r.sum(-1), torch.ones(len(r), dtype=r.dtype))


def test_responsibilities_reject_bad_temperature() -> None:
    x, mu = _points()
    with pytest.raises(ConfigError, match="temperature"):
        responsibilities(x, mu, 0.0)
    with pytest.raises(ConfigError, match="normaliser"):
        normalise(x, "sparsemax")


@pytest.mark.parametrize("normaliser", NORMALISERS)
def test_kmeans_method_rbf(normaliser: str) -> None:
    """Differentiable k-means finds the blobs: same partition as Lloyd (k-means++ restarts)
    and an inertia no worse than 1% above it."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    truth = torch.arange(4).repeat_interleave(50)
    x = centres[truth] + torch.randn(200, 2, generator=g)
    if normaliser == "softmax":
        res = kmeans(x, 4, method="rbf", seed=0)
    else:
        res = rbf_kmeans(x, 4, normaliser=normaliser, seed=0, device="cpu")
    ref = kmeans(x, 4, seed=0)
    assert isinstance(res, KMeansResult) and res.centroids.shape == (4, 2)
    # the returned labels are the nearest centroids and the inertia is their objective
    assert torch.equal(res.labels, squared_distances(x, res.centroids).argmin(1))
    assert res.inertia == pytest.approx(float(kmeans_objective(x, res.centroids)), rel=1e-5)
    assert res.inertia <= 1.01 * ref.inertia
    # every true blob is one cluster
    for c in range(4):
        assert res.labels[truth == c].unique().numel() == 1
    assert res.labels.unique().numel() == 4
    with pytest.raises(ConfigError, match="method"):
        kmeans(x, 4, method="elkan")


def _head_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    y = torch.arange(3).repeat_interleave(40)
    return centres[y] + torch.randn(120, 2, generator=g), y


@pytest.mark.parametrize("normaliser", NORMALISERS)
def test_rbf_head_scores_and_loss(normaliser: str) -> None:
    f, y = _head_data()
    head = build_head("rbf", f, y, 3, temperature=2.0, normaliser=normaliser)
    assert isinstance(head, RBFHead) and head.kind == "rbf"
    # one prototype per class on the class means
    assert torch.allclose(head.prototypes, torch.stack([f[y == c].mean(0) for c in range(3)]), atol=1e-5)
    with torch.no_grad():
        s = head(f)
        nearest = head.prototype_labels[squared_distances(f, head.prototypes).argmin(1)]
        assert torch.allclose(s.sum(1), torch.ones(len(f)), atol=1e-5)
        assert torch.equal(s.argmax(1), nearest)
        assert torch.equal(decision_scores(head, f).argmax(1), nearest)
        assert torch.equal(head.confidences(s), s)
        expected_r = normalise(-squared_distances(f, head.prototypes) / 2.0, normaliser)
        assert torch.allclose(head.responsibilities(f), expected_r, atol=1e-5)
    loss = head_loss(head, f, y)
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    if normaliser == "softmax":  # the negative log class posterior
        nll = float(-torch.log(s.gather(1, y[:, None])).mean())
        assert float(loss.detach()) == pytest.approx(nll, rel=1e-4)
    loss.backward()
    assert head.prototypes.grad is not None and bool(head.prototypes.grad.abs().sum() > 0)
    # entmax15 responsibilities are exactly one-hot deep inside a Voronoi cell
    if normaliser == "entmax15":
        with torch.no_grad():
            assert torch.equal(head(head.prototypes.detach()), torch.eye(3))
    # the paper's unsupervised distortion is Σ_k r_k ‖f - μ_k‖² (mean over the batch)
    with torch.no_grad():
        dist = (head.responsibilities(f) * squared_distances(f, head.prototypes)).sum(1).mean()
        assert float(head.distortion(f)) == pytest.approx(float(dist), rel=1e-5)


def test_rbf_head_auto_temperature_is_two_sigma_squared() -> None:
    f, y = _head_data()
    head = build_head("rbf", f, y, 3, temperature=None)
    assert isinstance(head, RBFHead)
    with torch.no_grad():
        d = squared_distances(f, head.prototypes).gather(1, y[:, None]).mean()  # own-class distance
    assert head.temperature == pytest.approx(2.0 * float(d) / f.shape[1], rel=1e-4)
    with pytest.raises(ConfigError, match="temperature"):
        build_head("rbf", f, y, 3, temperature=-1.0)
