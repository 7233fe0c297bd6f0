"""The scale-free objective, the exact warm start and the do-no-harm selection of TailorNetwork
(issue 14), on tiny synthetic data and the bundled digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kmtools.features import extract
from kmtools.models import GaussHead, KmModel
from kmtools.tailor import TailorConfig, initial_state, resolve_augment, tailor
from kmtools.tailor import objective as obj
from kmtools.train import train_classifier


def _state(c: int = 4, d: int = 5, seed: int = 0) -> obj.HeadState:
    g = torch.Generator().manual_seed(seed)
    return obj.HeadState(torch.randn(c, d, generator=g), torch.rand(c, generator=g), 1.7)


@pytest.mark.parametrize("alpha", [0.3, 0.9, 4.0])
def test_loss_cannot_be_lowered_by_rescaling_the_features(alpha: float) -> None:
    """f → αf (with the centroids, which live in units of the features' own scatter) leaves the
    loss unchanged; without the normalisation, α < 1 would lower the scatter term."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(64, 5, generator=g) * 7 + 3
    y = torch.arange(64) % 4
    st = _state()
    base = obj.loss(f, y, st, 1.0)[0]
    scaled = obj.loss(alpha * f, y, st, 1.0)[0]
    torch.testing.assert_close(scaled, base, rtol=1e-5, atol=1e-6)


def test_gradient_has_no_component_along_the_features() -> None:
    """Euler: a loss invariant under f → αf has ⟨f, ∇_f L⟩ = 0, so no step shrinks f."""
    f = (torch.randn(32, 5, generator=torch.Generator().manual_seed(2)) * 5).requires_grad_()
    y = torch.arange(32) % 4
    obj.loss(f, y, _state(), 1.0)[0].backward()
    assert f.grad is not None
    radial = float((f.detach() * f.grad).sum())
    assert abs(radial) < 1e-5 * float(f.detach().norm() * f.grad.norm())


def _linear_model(bias_scale: float, seed: int = 0) -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
    head = nn.Linear(12, 5)
    with torch.no_grad():
        head.bias.copy_(torch.randn(5, generator=g) * bias_scale)
    model = KmModel(backbone, head, input_shape=(6,)).eval()
    x = torch.randn(400, 6, generator=g)
    with torch.no_grad():
        f = model.features(x)
    return model, f, torch.arange(400) % 5  # labels only place the class means


@pytest.mark.parametrize("bias_scale", [0.0, 1.0, 20.0])
def test_equidistant_warm_start_is_the_softmax_on_every_input(bias_scale: float) -> None:
    """Theorem 1 on [f, 1]: predictions and softmax(log κ) equal the softmax network's.
    Large biases would break it if the bias coordinate (the offsets) were dropped."""
    model, f, y = _linear_model(bias_scale)
    st, s = initial_state(model, f, y, "equidistant", 0)
    head = st.raw_head(s)
    lk = head.log_kappa(f.double())
    logits = model.head(f).double()
    assert torch.equal(lk.argmax(1), logits.argmax(1))
    torch.testing.assert_close(torch.softmax(lk, 1), torch.softmax(logits, 1), rtol=0, atol=1e-5)
    assert bool((head.offsets >= 0).all())


def test_warm_start_is_centred_and_spread_like_the_class_means() -> None:
    model, f, y = _linear_model(1.0)
    st, _s = initial_state(model, f, y, "equidistant", 0)
    means, _ = obj.means_state(f, y, 5)
    torch.testing.assert_close(st.centroids.mean(0), means.centroids.mean(0), rtol=1e-4, atol=1e-5)
    assert obj.mean_pair_sq(st.centroids) == pytest.approx(obj.mean_pair_sq(means.centroids), rel=1e-4)


def test_geometry_margin_is_the_distance_to_the_bisector() -> None:
    cen = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    f = torch.tensor([[1.0, 3.0], [3.0, -1.0]])
    y = torch.tensor([0, 0])
    g = obj.geometry(f, y, cen)
    # bisector x = 2: margins +1 (class 0 side) and -1 (wrong side); median 0, gap 4
    assert g.median_margin_gap == pytest.approx(0.0)
    g1 = obj.geometry(f[:1], y[:1], cen)
    assert g1.median_margin_gap == pytest.approx(1.0 / 4.0)
    assert g1.scatter_over_gap2 == pytest.approx(10.0 / 16.0)


def test_gauss_head_files_without_offsets_load_with_zero_offsets() -> None:
    h = GaussHead(torch.randn(3, 4), gamma=0.5)
    sd = {k: v for k, v in h.state_dict().items() if k != "offsets"}
    new = GaussHead(torch.zeros(3, 4))
    new.load_state_dict(sd, strict=True)
    assert torch.equal(new.offsets, torch.zeros(3))
    off = GaussHead(torch.zeros(2, 1), gamma=1.0, offsets=torch.tensor([0.0, 2.0]))
    assert torch.allclose(off.log_kappa(torch.zeros(1, 1)), torch.tensor([[0.0, -2.0]]))


def test_augment_auto_flips_only_flip_safe_datasets() -> None:
    img = torch.zeros(1, 28, 28)
    assert resolve_augment("auto", "fashion-mnist", img) == "crop-flip"
    assert resolve_augment("auto", "cifar10", torch.zeros(3, 32, 32)) == "crop-flip"
    assert resolve_augment("auto", "mnist", img) == "none"
    assert resolve_augment("auto", "digits", torch.zeros(1, 8, 8)) == "none"
    assert resolve_augment("crop-flip", "svhn", img) == "crop-flip"
    assert resolve_augment("auto", "wine", torch.zeros(13)) == "none"


def _blobs(n: int, seed: int) -> TensorDataset:
    centers = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 2.5
    y = torch.arange(n) % 4
    return TensorDataset(centers[y] + torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)), y)


def _dropout_model(train: TensorDataset, epochs: int) -> KmModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.9), nn.Linear(32, 8),
                             nn.ReLU())
    model = KmModel(backbone, nn.Linear(8, 4), input_shape=(6,))
    train_classifier(model, train, epochs=epochs, lr=1e-2, batch_size=32, seed=0)
    return model.eval()


def test_dropout_and_batchnorm_stay_in_eval_mode_while_tailoring() -> None:
    """With p = 0.9 dropout active, the training batches would be scored on 10% of the
    features; in eval mode a near-zero step scores them as the clean pass does."""
    train, val = _blobs(400, 1), _blobs(200, 2)
    model = _dropout_model(train, 10)
    bn = model.backbone[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    cfg = TailorConfig(epochs=1, lr=1e-12, batch_size=100, amp=False, init="means", weight_decay=0.0, max_drop=100.0)
    res = tailor(model, train, cfg, val_data=val)
    h = res.history
    assert h[1].batch_accuracy == pytest.approx(h[1].train_accuracy, abs=0.03)
    assert res.model is not None
    tuned_bn = res.model.backbone[1]
    assert torch.equal(tuned_bn.running_mean, stats[0]) and torch.equal(tuned_bn.running_var, stats[1])


@pytest.mark.parametrize("centroids", ["fixed", "means"])
def test_epoch_zero_is_recorded_and_selection_guards_accuracy(centroids: str) -> None:
    train, val = _blobs(400, 1), _blobs(200, 2)
    model = _dropout_model(train, 10)
    cfg = TailorConfig(epochs=4, lr=0.01, batch_size=32, amp=False, centroids=centroids)
    res = tailor(model, train, cfg, val_data=val)
    h0 = res.history[0]
    assert h0.epoch == 0 and h0.val_accuracy == h0.softmax_val_accuracy and not h0.eligible
    assert res.selected_epoch is not None and res.selected_epoch >= 1
    sel = res.history[res.selected_epoch]
    assert sel.eligible and (sel.rho == 1.0 or centroids == "fixed")
    if centroids == "means":  # Algorithm 1: the exported centroids are the class means
        assert sel.centroid_shift == pytest.approx(0.0, abs=1e-9)
    assert res.accuracy_drop is not None and res.accuracy_drop <= 0.5 + 1e-9
    # γ is fitted so that the 1/c rule flags ≈ fpr of the validation data
    assert res.gamma_fit["val_flagged_at_threshold"] == pytest.approx(0.05, abs=0.02)
    # a learning rate that wrecks the network: nothing qualifies, training stops, no model
    bad = tailor(model, train, TailorConfig(epochs=4, lr=50.0, batch_size=32, amp=False, clip=0.0), val_data=val)
    assert bad.model is None and bad.stopped_early and len(bad.history) < 5
    assert bad.to_dict()["max_drop_ok"] == 0


def test_under_trained_network_is_not_harmed() -> None:
    train, val, test = _blobs(400, 1), _blobs(200, 2), _blobs(400, 3)
    model = _dropout_model(train, 1)
    res = tailor(model, train, TailorConfig(epochs=3, batch_size=32, amp=False), val_data=val)
    assert res.model is not None

    def acc(m: KmModel) -> float:
        fe = extract(m, test)
        return float((fe.predictions == fe.labels).double().mean())

    assert acc(res.model) >= acc(model) - 0.02


def test_fixed_centroids_pull_the_features_onto_the_warm_start() -> None:
    """centroids="fixed": the exact Theorem-1 head stays and the scatter term moves the
    features towards its centroids, so the centroids end up nearer the class means and the
    scale-free scatter around them falls; the scatter weight is what does it."""
    train, val = _blobs(400, 1), _blobs(200, 2)
    model = _dropout_model(train, 10)

    def run(weight: float) -> list:
        cfg = TailorConfig(epochs=3, lr=0.01, batch_size=32, amp=False, scatter_weight=weight, max_drop=100.0)
        return tailor(model, train, cfg, val_data=val).history

    pulled, free = run(1.0), run(0.0)
    assert pulled[-1].centroid_shift < 0.7 * free[-1].centroid_shift
    assert pulled[-1].centroid_shift < pulled[0].centroid_shift
    assert pulled[-1].val_scatter_over_gap2 < 0.7 * pulled[0].val_scatter_over_gap2
    assert pulled[-1].val_scatter_over_gap2 < 0.85 * free[-1].val_scatter_over_gap2
