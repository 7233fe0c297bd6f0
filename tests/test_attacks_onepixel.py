"""One-pixel attack: finds a known vulnerable pixel, changes at most `pixels` pixels, stays
in [0, 1], is independent of batching and chunking, stops early, skips misclassified
images, and is reproducible with its seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.attacks.onepixel import (
    OnePixelResult,
    _distinct_parents,
    _image_keys,
    class_confidences,
    onepixel,
)
from kmtools.errors import ConfigError
from kmtools.models.core import GaussHead, KmModel


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny models: one thread is faster, and robust when other jobs load the machine."""
    torch.set_num_threads(1)


class RedSpot(nn.Module):
    """Two classes; class 1's logit is -b + Σ K(i, j) · red(i, j).

    K is 1 at (row, col) = (5, 2) and at most 0.3 elsewhere (a bump around it), so with
    b = 0.6 and a black image, setting the red channel of pixel (5, 2) above 0.6 is the
    only single-pixel change that flips the class; the bump guides the search towards it.
    """

    def __init__(self, size: int = 12, row: int = 5, col: int = 2, scale: float = 20.0) -> None:
        super().__init__()
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        k = 0.3 * torch.exp(-((ii - row) ** 2 + (jj - col) ** 2).float() / 18.0)
        k[row, col] = 1.0
        self.k: torch.Tensor
        self.register_buffer("k", k)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, 0] * self.k).flatten(1).sum(1) - 0.6
        return torch.stack([torch.zeros_like(z), self.scale * z], 1)


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of pixel positions (any channel) where a and b differ, per image."""
    return (a != b).any(1).flatten(1).sum(1)


def _small_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, classes),
    )


def test_finds_the_single_vulnerable_pixel() -> None:
    model = RedSpot()
    x = torch.zeros(3, 3, 12, 12)
    x[:, 1:] = torch.rand(3, 2, 12, 12)  # green/blue do not matter
    y = torch.zeros(3, dtype=torch.long)
    res = onepixel(model, x, y, popsize=40, maxiter=60, seed=1)
    assert not res.skipped.any()
    assert res.success.all()
    assert (res.adv_labels == 1).all()
    assert (res.pixel[:, 0, 0] == 5).all() and (res.pixel[:, 0, 1] == 2).all()
    assert (res.pixel[:, 0, 2] > 0.6).all()
    assert (res.x_adv[:, 0, 5, 2] > 0.6).all()
    assert (_changed(res.x_adv, x) == 1).all()
    rec = res.records()[0]
    assert rec["pixels"][0]["x"] == 2 and rec["pixels"][0]["y"] == 5 and rec["success"]
    assert res.to_dict()["rate"] == 1.0


@pytest.mark.parametrize("pixels", [1, 3])
def test_changes_at_most_pixels_and_stays_in_range(pixels: int) -> None:
    model = _small_cnn()
    x = torch.rand(6, 3, 10, 10)
    y = class_confidences(model, x).argmax(1)
    res = onepixel(model, x, y, pixels=pixels, popsize=16, maxiter=8, seed=3)
    assert (_changed(res.x_adv, x) <= pixels).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.x_adv.shape == x.shape
    # the reported pixels are where the image changed
    for i in range(6):
        for p in res.pixel[i]:
            r, c = int(p[0]), int(p[1])
            assert torch.allclose(res.x_adv[i, :, r, c], p[2:].to(res.x_adv.dtype))
    # reported success is the model's verdict on x_adv
    assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


def test_chunked_and_batched_equal_unchunked() -> None:
    model = _small_cnn(1)
    x = torch.rand(5, 3, 8, 8)
    y = class_confidences(model, x).argmax(1)
    a = onepixel(model, x, y, popsize=12, maxiter=6, seed=7)
    b = onepixel(model, x, y, popsize=12, maxiter=6, seed=7, chunk=5)
    c = onepixel(model, x, y, popsize=12, maxiter=6, seed=7, batch_size=2, chunk=7)
    for other in (b, c):
        assert torch.equal(a.x_adv, other.x_adv)
        assert torch.equal(a.generations, other.generations)
        assert torch.equal(a.success, other.success)
        assert torch.equal(a.pixel, other.pixel)


def test_seed_reproducible_and_seed_matters() -> None:
    model = _small_cnn(2)
    x = torch.rand(4, 3, 8, 8)
    y = class_confidences(model, x).argmax(1)
    a = onepixel(model, x, y, popsize=10, maxiter=3, seed=11)
    b = onepixel(model, x, y, popsize=10, maxiter=3, seed=11)
    c = onepixel(model, x, y, popsize=10, maxiter=3, seed=12)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.pixel, b.pixel)
    assert not torch.equal(a.pixel, c.pixel)


def test_early_stop_on_success() -> None:
    # every pixel's red channel above 0.9 flips: any decent population fools at once
    class Easy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x[:, 0].flatten(1).amax(1) - 0.9
            return torch.stack([torch.zeros_like(z), 50 * z], 1)

    x = torch.full((4, 3, 6, 6), 0.2)
    y = torch.zeros(4, dtype=torch.long)
    res = onepixel(Easy(), x, y, popsize=30, maxiter=50)
    assert res.success.all()
    assert (res.generations == 0).all()
    assert (res.evaluations == 30).all()
    # the spot model needs some generations but far fewer than the budget
    spot = onepixel(
        RedSpot(), torch.zeros(2, 3, 12, 12), torch.zeros(2, dtype=torch.long), popsize=40, maxiter=200
    )
    assert spot.success.all() and (spot.generations < 200).all()
    assert torch.equal(spot.evaluations, 40 * (spot.generations + 1))


def test_misclassified_images_are_skipped_and_counted() -> None:
    model = _small_cnn(4)
    x = torch.rand(6, 3, 8, 8)
    pred = class_confidences(model, x).argmax(1)
    y = pred.clone()
    y[[1, 4]] = (pred[[1, 4]] + 1) % 4
    res = onepixel(model, x, y, popsize=8, maxiter=2)
    assert res.skipped.tolist() == [False, True, False, False, True, False]
    assert res.attacked == 4 and res.to_dict()["skipped"] == 2
    assert not res.success[[1, 4]].any()
    assert torch.equal(res.x_adv[[1, 4]], x[[1, 4]])
    assert (res.evaluations[[1, 4]] == 0).all()
    assert res.rate == res.fooled / 4
    assert res.records()[1]["skipped"] and res.records()[1]["pixels"] is None


def test_targeted_attack_reaches_target() -> None:
    class Three(nn.Module):
        # class 2 only by making pixel (1, 1) bright in the blue channel
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            z2 = 30 * (x[:, 2, 1, 1] - 0.7)
            z1 = 30 * (x[:, 0].flatten(1).amax(1) - 0.7)
            return torch.stack([torch.zeros(n), z1, z2], 1)

    x = torch.full((3, 3, 4, 4), 0.1)
    y = torch.zeros(3, dtype=torch.long)
    res = onepixel(Three(), x, y, popsize=40, maxiter=40, target=2)
    assert res.success.all() and (res.adv_labels == 2).all()
    assert (res.pixel[:, 0, 0] == 1).all() and (res.pixel[:, 0, 1] == 1).all()
    assert res.to_dict()["targeted"] and res.records()[0]["target"] == 2
    # images already of the target class are skipped
    skip = onepixel(Three(), x, torch.full((3,), 2), popsize=8, maxiter=1, target=2)
    assert skip.skipped.all()


def test_tol_stops_converged_populations() -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[2.0, 0.0]]).expand(x.shape[0], 2) + 0 * x.sum()

    x = torch.rand(2, 3, 5, 5)
    y = torch.zeros(2, dtype=torch.long)
    with_tol = onepixel(Flat(), x, y, popsize=8, maxiter=30, tol=0.01)
    without = onepixel(Flat(), x, y, popsize=8, maxiter=30)
    assert (with_tol.generations == 0).all()
    assert (without.generations == 30).all()
    assert not with_tol.success.any() and not without.success.any()


def test_gauss_fitness_is_kappa_of_true_class() -> None:
    torch.manual_seed(5)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    model = KmModel(backbone, GaussHead(torch.randn(3, 4) * 0.3))
    x = torch.rand(5, 3, 6, 6)
    kappa = model(x)
    y = kappa.argmax(1)
    res = onepixel(model, x, y, popsize=12, maxiter=3)
    assert torch.allclose(res.conf_before, kappa.gather(1, y[:, None])[:, 0], atol=1e-6)
    assert res.head_kind == "gauss"
    assert res.threshold == pytest.approx(1 / 3)
    assert torch.equal(res.outlier, res.conf_adv < 1 / 3)
    assert torch.allclose(res.conf_adv, model(res.x_adv).amax(1), atol=1e-6)


def test_parents_are_distinct_and_not_self() -> None:
    keys = _image_keys(0, torch.arange(7))
    for p in (4, 5, 33):
        a, b, c = _distinct_parents(keys, torch.arange(7), p)
        own = torch.arange(p).expand(7, p)
        for u, v in ((a, b), (a, c), (b, c), (a, own), (b, own), (c, own)):
            assert (u != v).all()
        for t in (a, b, c):
            assert t.min() >= 0 and t.max() < p


def test_bad_options() -> None:
    model = _small_cnn()
    x = torch.rand(2, 3, 6, 6)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError):
        onepixel(model, x * 255, y)
    with pytest.raises(ConfigError):
        onepixel(model, x, y, popsize=3)
    with pytest.raises(ConfigError):
        onepixel(model, x[0], y)
    with pytest.raises(ConfigError):
        onepixel(model, x, y, target=9)


def test_cuda_code_paths_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The channels-last image build and the float32 confirmation of bf16 successes (CUDA
    paths) give the same result as the plain path when autocast is a no-op (CPU)."""
    import importlib

    # (``kmtools.attacks.onepixel`` as an attribute is the function; get the module)
    op = importlib.import_module("kmtools.attacks.onepixel")

    model = _small_cnn(6)
    x = torch.rand(5, 3, 7, 9)
    y = class_confidences(model, x).argmax(1)
    plain = onepixel(model, x, y, popsize=12, maxiter=5, seed=3, pixels=2)
    monkeypatch.setattr(op, "_use_amp", lambda dev, amp: True)
    monkeypatch.setattr(op, "_use_nhwc", lambda dev: True)
    cuda_like = onepixel(model, x, y, popsize=12, maxiter=5, seed=3, pixels=2, chunk=13)
    assert torch.equal(plain.x_adv, cuda_like.x_adv)
    assert torch.equal(plain.generations, cuda_like.generations)
    assert torch.equal(plain.success, cuda_like.success)


def test_build_nhwc_equals_nchw() -> None:
    from kmtools.attacks.onepixel import _build

    torch.manual_seed(0)
    base = torch.rand(3, 2, 5, 6)
    cand = torch.rand(7, 2 * (2 + 2)) * torch.tensor([5, 6, 1, 1, 5, 6, 1, 1])
    cand[0, 4:6] = cand[0, 0:2]  # two pixels at one position: the later one wins
    slot = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    a = _build(base, slot, cand, 2, nhwc=False)
    b = _build(base.permute(0, 2, 3, 1).contiguous(), slot, cand, 2, nhwc=True)
    assert torch.equal(a, b.contiguous())
    r, c = int(cand[0, 0]), int(cand[0, 1])
    assert torch.equal(a[0, :, r, c], cand[0, 6:8])
    assert (_changed(a, base[slot]) <= 2).all()


def test_index_keys_the_search_and_callback_streams_final_results() -> None:
    """Image i is attacked the same way alone, in a shard or among all (its id keys the
    random numbers); the callback's parts are the final per-image results."""
    model = _small_cnn(7)
    x = torch.rand(6, 3, 7, 7)
    y = class_confidences(model, x).argmax(1)
    y[2] = (y[2] + 1) % 4  # one misclassified image: skipped, reported first
    parts: list[OnePixelResult] = []
    full = onepixel(model, x, y, popsize=10, maxiter=4, seed=5, batch_size=2, callback=parts.append)
    assert parts[0].index.tolist() == [2] and parts[0].skipped.all()
    got = sorted(i for p in parts for i in p.index.tolist())
    assert got == list(range(6))
    for p in parts:
        ref = full.take(p.index)
        assert p.records() == ref.records()
        assert torch.equal(p.x_adv, ref.x_adv)
    shard = torch.tensor([5, 1, 3])
    part = onepixel(model, x[shard], y[shard], popsize=10, maxiter=4, seed=5, index=shard, batch_size=1)
    assert part.records() == full.take(shard).records()
    assert torch.equal(part.x_adv, full.x_adv[shard])


def test_records_round_trip_exactly() -> None:
    model = _small_cnn(8)
    x = torch.rand(5, 3, 6, 6)
    y = class_confidences(model, x).argmax(1)
    y[0] = (y[0] + 1) % 4
    for pixels, target in ((1, None), (3, None), (1, 2)):
        res = onepixel(model, x, y, pixels=pixels, popsize=10, maxiter=3, seed=2, target=target)
        back = OnePixelResult.from_records(
            res.records(), x, pixels=pixels, popsize=10, maxiter=3, threshold=res.threshold,
            head_kind=res.head_kind, seed=2, settings=res.settings,
        )
        assert torch.equal(back.x_adv, res.x_adv)
        assert back.to_dict() == res.to_dict()
        assert back.records() == res.records()
