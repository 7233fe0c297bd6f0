"""TailorNetwork (Gauss paper Sec. 4.1, Algorithm 1): accuracy kept, centroids are the class
means of the final network, collapse guard, resume bit-for-bit, --train-from, DDP (2 gloo ranks)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from kmtools.centroids import class_means
from kmtools.errors import ConfigError
from kmtools.features import extract
from kmtools.models import GaussHead, KmModel
from kmtools.tailor import TailorConfig, auto_gamma, crop_flip, freeze_until, tailor
from kmtools.train import train_classifier


def blobs(n: int = 400, d: int = 6, c: int = 4, seed: int = 0, noise_seed: int = 1) -> TensorDataset:
    """c Gaussian blobs in R^d (centres from ``seed``, samples from ``noise_seed``)."""
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(seed)) * 2.5
    y = torch.arange(n) % c
    x = centers[y] + torch.randn(n, d, generator=torch.Generator().manual_seed(noise_seed))
    return TensorDataset(x, y)


def blob_model(data: TensorDataset, seed: int = 0) -> KmModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU())
    model = KmModel(backbone, nn.Linear(8, 4), input_shape=(6,))
    train_classifier(model, data, epochs=15, lr=1e-2, batch_size=32, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[KmModel, TensorDataset, TensorDataset]:
    train, test = blobs(400), blobs(200, noise_seed=2)
    return blob_model(train), train, test


def _acc(model: KmModel, data: TensorDataset) -> float:
    f = extract(model, data)
    return float((f.predictions == f.labels).double().mean())


def test_gauss_network_keeps_accuracy_and_doubts_noise(trained: tuple[KmModel, TensorDataset, TensorDataset]) -> None:
    model, train, test = trained
    acc0 = _acc(model, test)
    assert acc0 > 0.85
    res = tailor(model, train, TailorConfig(epochs=6, lr=0.02, batch_size=32, amp=False, centroids="means",
                                                  scatter_weight=1.0), val_data=test)
    gm = res.model
    assert gm is not None and gm.head_kind == "gauss" and isinstance(gm.head, GaussHead)
    assert _acc(gm, test) >= acc0 - 0.03
    # Algorithm 1's objective, measured scale-free: scatter relative to the centroid gap falls
    assert res.benefit["gauss"]["scatter_over_gap2"] < 0.95 * res.benefit["softmax"]["scatter_over_gap2"]
    assert res.history[-1].scatter_over_gap2 < 0.8 * res.history[0].scatter_over_gap2
    # confidence of the prediction on far-away noise: softmax stays sure, κ says "outlier"
    noise = torch.randn(300, 6) * 12
    with torch.no_grad():
        soft = torch.softmax(model(noise), 1).max(1).values.mean()
        kappa = gm.confidences(noise).max(1).values
    assert float(soft) > 0.8
    assert float((kappa < gm.threshold).double().mean()) > 0.5


Trained = tuple[KmModel, TensorDataset, TensorDataset]


def test_final_centroids_are_class_means_of_final_network(trained: Trained) -> None:
    model, train, _ = trained
    gm = tailor(model, train, TailorConfig(epochs=2, lr=0.01, batch_size=64, amp=False, centroids="means")).model
    f = extract(gm, train)
    expected = class_means(f.features, f.labels, 4).float()
    assert isinstance(gm.head, GaussHead)
    torch.testing.assert_close(gm.head.centroids, expected, rtol=1e-5, atol=1e-5)
    # and the prediction is the nearest centroid (argmax κ)
    d = torch.cdist(f.features.double(), expected.double())
    assert torch.equal(d.argmin(1), f.predictions)


def test_zero_lr_keeps_the_network_and_centroids_are_the_initial_means(
    trained: tuple[KmModel, TensorDataset, TensorDataset],
) -> None:
    model, train, _ = trained
    cfg = TailorConfig(epochs=1, lr=1e-12, batch_size=64, amp=False, weight_decay=0.0, centroids="means")
    gm = tailor(model, train, cfg).model
    f0 = extract(model, train)
    torch.testing.assert_close(gm.head.centroids, class_means(f0.features, f0.labels, 4).float(),
                               rtol=1e-4, atol=1e-4)


def test_classes_separate_relative_to_their_scatter(trained: tuple[KmModel, TensorDataset, TensorDataset]) -> None:
    """Scale-free check of what Algorithm 1 is for: within-class scatter shrinks relative to the
    distance between centroids (a collapse to one point would drive this ratio to 0)."""
    model, train, _ = trained

    def separation(m: KmModel) -> float:
        f = extract(m, train)
        c = class_means(f.features, f.labels, 4)
        d = torch.cdist(c, c)
        d.fill_diagonal_(float("inf"))
        scatter = (f.features.double() - c[f.labels]).pow(2).sum(1).mean()
        return float(d.min() ** 2 / scatter)

    cfg = TailorConfig(epochs=5, lr=0.05, batch_size=32, amp=False, centroids="means", scatter_weight=1.0)
    res = tailor(model, train, cfg)
    assert separation(res.model) > 1.25 * separation(model)
    assert res.history[-1].train_accuracy >= 0.95


def test_auto_gamma_is_inverse_mean_within_class_scatter() -> None:
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    y = torch.tensor([0, 0, 1, 1])
    c = class_means(f, y, 2).float()
    assert auto_gamma(f, y, c) == pytest.approx(1.0)


def test_resume_continues_bit_for_bit(tmp_path: Path, trained: tuple[KmModel, TensorDataset, TensorDataset]) -> None:
    model, train, _ = trained
    cfg = TailorConfig(epochs=3, lr=0.02, batch_size=32, amp=False, seed=3)
    full = tailor(model, train, cfg, checkpoint=tmp_path / "a.pt").model

    steps = -(-len(train) // cfg.batch_size)

    class Stop(Exception):
        pass

    def boom(done: int, total: int, extra: str = "") -> None:
        if done == steps * 2:  # end of epoch 2, before its checkpoint: epoch 1's exists
            raise Stop

    ck = tmp_path / "b.pt"
    with pytest.raises(Stop):
        tailor(model, train, cfg, checkpoint=ck, progress=boom)
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    resumed = tailor(model, train, cfg, checkpoint=ck, resume=True).model
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="other options"):
        tailor(model, train, TailorConfig(epochs=3, lr=0.5, batch_size=32, amp=False, seed=3),
               checkpoint=ck, resume=True)


def test_train_from_freezes_earlier_layers(trained: tuple[KmModel, TensorDataset, TensorDataset]) -> None:
    model, train, _ = trained
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    gm = tailor(model, train, TailorConfig(epochs=1, lr=0.05, batch_size=32, amp=False, train_from="2")).model
    after = gm.backbone.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])
    assert not torch.equal(after["2.weight"], before["2.weight"])
    with pytest.raises(ConfigError, match="not a backbone module"):
        freeze_until(model.backbone, "nope")


def test_inits_and_bad_options(trained: tuple[KmModel, TensorDataset, TensorDataset]) -> None:
    model, train, _ = trained
    for init in ("equidistant", "kmeans"):
        gm = tailor(model, train, TailorConfig(epochs=1, batch_size=64, amp=False, init=init)).model
        assert _acc(gm, train) > 0.8, init
    for bad in (dict(epochs=0), dict(lr=-1.0), dict(init="x"), dict(optimizer="x"), dict(gamma=0.0),
                dict(max_drop=-1.0), dict(fpr=1.5), dict(batch_size=1), dict(ramp_epochs=0)):
        with pytest.raises(ConfigError):
            TailorConfig(**bad).validate()  # type: ignore[arg-type]


def test_crop_flip_moves_pixels_but_keeps_content() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = crop_flip(x, g, pad=0)  # no translation: identity or a horizontal flip
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    assert z.shape == x.shape and not torch.equal(z, x)


# --------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train = blobs(400, seed=0)
        model = blob_model(train)
        res = tailor(model, train, TailorConfig(epochs=2, lr=0.02, batch_size=32, amp=False, centroids="means"))
        torch.save({"state": res.model.state_dict(), "world": res.world_size,
                    "hist": [h.to_dict() for h in res.history]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_agree_and_sum_centroid_statistics(tmp_path: Path) -> None:
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], msg=k)
    # epoch statistics were all-reduced: both ranks saw all 400 inputs' accuracy the same
    timing = ("seconds", "eval_seconds")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in r0["hist"]]
    assert strip == [{k: v for k, v in h.items() if k not in timing} for h in r1["hist"]]
    # final centroids are the class means over the whole training set (both shards)
    train = blobs(400, seed=0)
    m = blob_model(train)
    gm = KmModel(m.backbone, GaussHead(r0["state"]["head.centroids"]), input_shape=(6,))
    gm.backbone.load_state_dict({k[len("backbone."):]: v for k, v in r0["state"].items() if k.startswith("backbone.")})
    f = extract(gm, train)
    torch.testing.assert_close(r0["state"]["head.centroids"], class_means(f.features, f.labels, 4).float(),
                               rtol=1e-4, atol=1e-4)
