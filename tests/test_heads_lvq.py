"""RSLVQ and GLVQ heads (prototype-based-nn-layers, Sec. 6.1, Eq. 19-20), their builders,
and the save/load round trip of every head kind through kmtools' checkpoint format."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError, DataError
from kmtools.heads import (
    HEADS,
    GLVQHead,
    RSLVQHead,
    build_head,
    decision_scores,
    estimate_sigma,
    fit_head,
    glvq_mu,
    head_loss,
    head_prototypes,
    rebuild_head,
    squash,
)
from kmtools.heads.rbf import init_prototypes, squared_distances
from kmtools.models import GaussHead, load_model, save_model, wrap, zoo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _xor(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of two blobs each at the corners of a square: class means coincide."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0]])
    which = torch.arange(4).repeat_interleave(n)
    x = corners[which] + 0.7 * torch.randn(4 * n, 2, generator=g)
    return x, (which >= 2).long()


# --------------------------------------------------------------------------- RSLVQ


def test_rslvq_class_probability_and_loss_exact() -> None:
    """Prototypes 0 (class 0), 2 and 3 (class 1) on a line, σ = 1, input x = 1: d = (1, 1, 4),
    p(k|x) = softmax(-d / 2σ²), p̂_c = Σ_{k: c_k = c} p(k|x), loss = -log p̂_y (the negative
    log-likelihood ratio)."""
    w = torch.tensor([[0.0], [2.0], [3.0]])
    head = RSLVQHead(w, torch.tensor([0, 1, 1]), 2, sigma=1.0)
    x = torch.tensor([[1.0]])
    z = math.exp(-0.5) + math.exp(-0.5) + math.exp(-2.0)
    p0, p1 = math.exp(-0.5) / z, (math.exp(-0.5) + math.exp(-2.0)) / z
    with torch.no_grad():
        s = head(x)
        assert s.tolist()[0] == pytest.approx([p0, p1], rel=1e-6)
        assert torch.equal(head.confidences(s), s)
        # decision scores: log Σ_{k∈c} exp(-d_k/2σ²), the log posterior up to a constant
        ds = decision_scores(head, x)
        assert ds.tolist()[0] == pytest.approx([-0.5, math.log(math.exp(-0.5) + math.exp(-2.0))], rel=1e-6)
    for y, p in ((0, p0), (1, p1)):
        loss = head_loss(head, x, torch.tensor([y]))
        assert float(loss.detach()) == pytest.approx(-math.log(p), rel=1e-6)
    # σ scales the Gaussians: σ = 2 gives softmax(-d / 8)
    wide = RSLVQHead(w, torch.tensor([0, 1, 1]), 2, sigma=2.0)
    with torch.no_grad():
        q = torch.softmax(-torch.tensor([1.0, 1.0, 4.0]) / 8.0, 0)
        assert wide(x).tolist()[0] == pytest.approx([float(q[0]), float(q[1] + q[2])], rel=1e-6)


def test_rslvq_gradient_attracts_correct_and_repels_wrong_prototypes() -> None:
    """One gradient step of the RSLVQ loss moves the correct class's prototype towards the
    input and the wrong class's prototype away (the RSLVQ learning rule)."""
    w = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    head = RSLVQHead(w, torch.tensor([0, 1]), 2, sigma=1.0)
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([0])
    before = squared_distances(x, head.prototypes.detach())[0]
    head_loss(head, x, y).backward()
    grad = head.prototypes.grad
    assert grad is not None
    with torch.no_grad():
        head.prototypes.sub_(0.1 * grad)
    after = squared_distances(x, head.prototypes.detach())[0]
    assert after[0] < before[0] and after[1] > before[1]


def test_rslvq_auto_sigma_is_the_ml_width() -> None:
    x, y = _xor()
    w, wl = init_prototypes(x, y, 2, per_class=2, method="kmeans")
    head = build_head("rslvq", x, y, 2, prototypes_per_class=2)
    assert isinstance(head, RSLVQHead)
    own = torch.where(wl[None] == y[:, None], squared_distances(x, w), torch.tensor(float("inf")))
    expected = math.sqrt(float(own.min(1).values.mean()) / 2)
    assert head.sigma == pytest.approx(expected, rel=1e-5)
    assert estimate_sigma(x, y, w, wl) == pytest.approx(expected, rel=1e-5)
    assert build_head("rslvq", x, y, 2, prototypes_per_class=2, sigma=0.3).sigma == 0.3  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- GLVQ


def test_glvq_mu_and_squashing_exact() -> None:
    """Prototypes (0,0) of class 0, (4,0) and (1,3) of class 1, input (1,0): d⁺ = 1,
    d⁻ = min(9, 9) = 9, so μ = (1 - 9)/(1 + 9) = -0.8 for label 0 and +0.8 for label 1."""
    w = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.0, 3.0]])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])
    head = GLVQHead(w, torch.tensor([0, 1, 1]), 2)
    mu = head.mu(x, y)
    assert mu.tolist() == pytest.approx([-0.8, 0.8], abs=1e-6)
    assert float(head_loss(head, x, y).detach()) == pytest.approx(0.0, abs=1e-6)  # identity: mean μ
    sig = GLVQHead(w, torch.tensor([0, 1, 1]), 2, squashing="sigmoid", slope=2.0)
    s = 1.0 / (1.0 + math.exp(1.6))
    assert float(head_loss(sig, x[:1], y[:1]).detach()) == pytest.approx(s, rel=1e-6)
    assert squash(torch.tensor([-0.8, 0.8]), "sigmoid", 2.0).tolist() == pytest.approx([s, 1 - s], rel=1e-6)
    with pytest.raises(ConfigError, match="squashing"):
        squash(mu, "tanh")
    # glvq_mu from class-wise minimum distances: more classes, d⁻ over all wrong ones
    cd = torch.tensor([[1.0, 4.0, 2.0], [5.0, 5.0, 3.0]])
    assert glvq_mu(cd, torch.tensor([0, 2])).tolist() == pytest.approx([(1 - 2) / 3, (3 - 5) / 8])
    # scores, prediction and confidences
    with torch.no_grad():
        scores = head(x[:1])
        assert scores.tolist()[0] == pytest.approx([-1.0, -9.0])
        assert head.predict(x[:1]).tolist() == [0]
        assert head.confidences(scores).tolist()[0] == pytest.approx([0.9, 0.1])  # (1 - μ)/2


def test_glvq_predicts_nearest_prototype_and_learns() -> None:
    """M = 2 prototypes per class (per-class k-means) solve the XOR blobs that class means
    cannot; GLVQ training lowers the loss and prediction is always the WTA class."""
    x, y = _xor()
    means = build_head("glvq", x, y, 2)
    assert isinstance(means, GLVQHead)
    with torch.no_grad():
        acc_means = float((means(x).argmax(1) == y).double().mean())
    assert acc_means < 0.8  # the two class means nearly coincide
    head = build_head("glvq", x, y, 2, prototypes_per_class=2, squashing="sigmoid", slope=4.0, seed=0)
    assert isinstance(head, GLVQHead) and head.prototypes_per_class == [2, 2]
    loss0 = float(head_loss(head, x, y).detach())
    fit_head(head, x, y, epochs=20, seed=0)
    loss1 = float(head_loss(head, x, y).detach())
    assert loss1 < loss0
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        probe = torch.randn(500, 2, generator=g) * 5
        wta = head.prototype_labels[squared_distances(probe, head.prototypes).argmin(1)]
        assert torch.equal(head(probe).argmax(1), wta)
        assert torch.equal(decision_scores(head, probe).argmax(1), wta)
        assert float((head(x).argmax(1) == y).double().mean()) >= 0.97


def test_init_prototypes_per_class_kmeans() -> None:
    x, y = _xor()
    w, wl = init_prototypes(x, y, 2, per_class=2, method="kmeans", seed=0)
    assert wl.tolist() == [0, 0, 1, 1]
    # each class's prototypes sit on its two blobs
    for c, corners in ((0, [[3.0, 3.0], [-3.0, -3.0]]), (1, [[3.0, -3.0], [-3.0, 3.0]])):
        got = torch.tensor(sorted(w[wl == c].tolist()))
        assert torch.allclose(got, torch.tensor(sorted(corners)), atol=0.4)
    w1, _ = init_prototypes(x, y, 2)
    assert torch.allclose(w1, torch.stack([x[y == 0].mean(0), x[y == 1].mean(0)]), atol=1e-5)
    with pytest.raises(ConfigError, match="kmeans"):
        init_prototypes(x, y, 2, per_class=2, method="means")
    with pytest.raises(DataError, match="class 2"):
        init_prototypes(x, y, 3)
    with pytest.raises(ConfigError, match="gauss"):
        build_head("gauss", x, y, 2, prototypes_per_class=2)
    with pytest.raises(ConfigError, match="unknown head"):
        build_head("lvq1", x, y, 2)


def test_head_loss_of_gauss_and_linear_heads() -> None:
    x, y = _xor(10)
    g = GaussHead(torch.tensor([[3.0, 3.0], [3.0, -3.0]]))
    scatter = float(((x - g.centroids[y]) ** 2).sum(1).mean())
    assert float(head_loss(g, x, y)) == pytest.approx(scatter, rel=1e-6)
    lin = nn.Linear(2, 2)
    ce = nn.functional.cross_entropy(lin(x), y)
    assert float(head_loss(lin, x, y).detach()) == pytest.approx(float(ce.detach()), rel=1e-6)
    p, pl = head_prototypes(g)
    assert torch.equal(p, g.centroids) and pl.tolist() == [0, 1]


# --------------------------------------------------------------------------- save / load


def _mlp_model() -> tuple[object, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    kw = {"num_classes": 3, "in_features": 5, "hidden": 16, "feature_dim": 6}
    net = zoo.create("mlp", **kw).eval()
    base = wrap(net, arch="mlp", arch_kwargs=kw, input_shape=(5,))
    x = torch.randn(90, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = base.features(x)
    return base, f, torch.arange(90) % 3


CASES = [
    ("gauss", {"temperature": None}),
    ("rbf", {"temperature": 0.5, "normaliser": "softmax"}),
    ("rbf", {"normaliser": "entmax15", "prototypes_per_class": 2}),
    ("rslvq", {"prototypes_per_class": 2}),
    ("glvq", {"prototypes_per_class": 2, "squashing": "sigmoid", "slope": 3.0}),
]


@pytest.mark.parametrize(("kind", "options"), CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_save_load_round_trip(kind: str, options: dict[str, object], tmp_path: Path) -> None:
    """KmModel.with_head(head) -> save_model -> load_model gives the same head kind, config,
    prototypes, scores and confidences; the checkpoint needs no --arch."""
    if options.get("normaliser") == "entmax15":
        pytest.importorskip("entmax")
    base, f, y = _mlp_model()
    head = build_head(kind, f, y, 3, seed=0, **options)  # type: ignore[arg-type]
    if kind != "gauss":
        fit_head(head, f, y, epochs=2)  # move the prototypes off their initial values
    model = base.with_head(head).eval()  # type: ignore[attr-defined]
    path = save_model(model, tmp_path / f"{kind}.safetensors")
    back = load_model(path)
    assert back.head_kind == kind and type(back.head) is type(head)
    assert back.head.config() == head.config()  # type: ignore[operator]
    p0, l0 = head_prototypes(head)
    p1, l1 = head_prototypes(back.head)
    assert torch.equal(p0, p1) and torch.equal(l0, l1)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-6)
        assert torch.allclose(back.confidences(x), model.confidences(x), atol=1e-6)
    # the same head rebuilt from the metadata kmtools stores (head-local and model state dicts)
    again = rebuild_head(kind, head.config(), model.state_dict())  # type: ignore[operator]
    assert torch.equal(head_prototypes(again)[0], p0)
    assert HEADS[kind].from_config(head.config(), head.state_dict()).config() == head.config()  # type: ignore[operator]


def test_rebuild_rejects_broken_metadata() -> None:
    _, f, y = _mlp_model()
    head = build_head("glvq", f, y, 3)
    with pytest.raises(CheckpointError, match="unknown config keys"):
        GLVQHead.from_config({**head.config(), "temperature": 1.0}, head.state_dict())  # type: ignore[operator]
    with pytest.raises(CheckpointError, match="prototypes"):
        GLVQHead.from_config(head.config(), {})  # type: ignore[operator]
    with pytest.raises(ConfigError, match="unknown head"):
        rebuild_head("lvq3", {}, head.state_dict())


def test_gauss_auto_gamma_is_tailors() -> None:
    """``build_head("gauss", temperature=None)`` starts from the γ that ``kmtools tailor``
    uses (1 / mean squared distance to the own class mean: an average point has κ_y = e⁻¹)."""
    from kmtools.tailor import auto_gamma

    x, y = _xor()
    head = build_head("gauss", x, y, 2, temperature=None)
    assert isinstance(head, GaussHead)
    assert float(head.gamma) == pytest.approx(auto_gamma(x, y, head.centroids.detach()), rel=1e-5)
    assert float(build_head("gauss", x, y, 2).gamma) == 1.0  # type: ignore[arg-type]  # the paper's κ
