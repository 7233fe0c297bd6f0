"""Theorem 1, class means and k-means against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from kmtools.centroids import (
    augment,
    class_means,
    equidistant,
    kmeans,
    kmeans_plusplus,
    nearest,
    theorem1_agreement,
)
from kmtools.errors import DataError
from kmtools.features import extract
from tests.helpers import digits_model


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 20), c=st.integers(2, 12), seed=st.integers(0, 10_000), scale=st.floats(0.1, 20))
def test_theorem1_on_random_heads(d: int, c: int, seed: int, scale: float) -> None:
    """Nearest equidistant centroid == argmax of the linear head, on every input."""
    if d + 1 < c - 1:
        return
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(d, c)
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g))
        head.bias.copy_(torch.randn(c, generator=g))
    f = torch.randn(500, d, generator=g, dtype=torch.float64) * scale
    eq = equidistant(head)
    norms = eq.centroids.norm(dim=1)
    assert float(norms.max() - norms.min()) < 1e-8 * float(norms.max())
    scores = f @ head.weight.detach().double().T + head.bias.detach().double()
    pred = nearest(augment(f), eq.centroids)
    margin = scores.topk(2, dim=1).values
    clear = (margin[:, 0] - margin[:, 1]) > 1e-9
    assert bool((pred[clear] == scores.argmax(1)[clear]).all())


def test_theorem1_on_trained_model() -> None:
    model = digits_model(epochs=3)
    from kmtools.data import load_dataset

    info = load_dataset("digits", split="test")
    feats = extract(model, info.dataset, batch_size=128)
    assert theorem1_agreement(feats.features, feats.scores, model.head) == 1.0  # type: ignore[arg-type]


def test_class_means_match_numpy() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(300, 7))
    y = rng.integers(0, 4, size=300)
    ref = np.stack([f[y == k].mean(0) for k in range(4)])
    yy = np.eye(4)[y]
    ref2 = (f.T @ yy @ np.linalg.inv(yy.T @ yy)).T  # C = f(X) Y (YᵀY)⁻¹
    got = class_means(torch.tensor(f), torch.tensor(y), 4).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    np.testing.assert_allclose(got, ref2, atol=1e-10)


def test_class_means_empty_class_is_an_error() -> None:
    with pytest.raises(DataError, match="no samples"):
        class_means(torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 1]), 3)


def test_kmeans_matches_sklearn_with_same_init() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(loc=m, size=(200, 3)) for m in (0.0, 4.0, 8.0)])
    init = x[[0, 250, 450, 10]]
    ours = kmeans(torch.tensor(x), 4, init=torch.tensor(init))
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=1e-4).fit(x)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-6)
    assert ours.inertia == pytest.approx(float(((x - ours.centroids.numpy()[ours.labels.numpy()]) ** 2).sum()))


def test_kmeans_restarts_find_blobs_and_seed_is_reproducible() -> None:
    rng = np.random.default_rng(2)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])
    x = torch.tensor(np.concatenate([rng.normal(loc=c, scale=0.5, size=(100, 2)) for c in centers]))
    a = kmeans(x, 4, seed=3, n_init=4)
    b = kmeans(x, 4, seed=3, n_init=4)
    assert torch.equal(a.labels, b.labels)
    found = np.sort(a.centroids.numpy(), axis=0)
    np.testing.assert_allclose(found, np.sort(centers, axis=0), atol=0.2)


def test_kmeans_plusplus_picks_distinct_points() -> None:
    x = torch.tensor([[0.0, 0.0]] * 50 + [[5.0, 5.0]] * 50, dtype=torch.float64)
    c = kmeans_plusplus(x, 2, torch.Generator().manual_seed(0))
    assert float((c[0] - c[1]).norm()) > 1.0
