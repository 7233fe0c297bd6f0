"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kmtools.data import load_dataset
from kmtools.models import KmModel, save_model, wrap, zoo
from kmtools.train import train_classifier


def digits_model(tmp: Path | None = None, epochs: int = 6, seed: int = 0) -> KmModel:
    """SmallCNN (width 8) trained briefly on scikit-learn digits (~99% train accuracy)."""
    torch.manual_seed(seed)
    tr = load_dataset("digits", split="train")
    net = zoo.create("smallcnn", width=8)
    train_classifier(net, tr.dataset, epochs=epochs, lr=1e-2, batch_size=64, seed=seed)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                 input_shape=(1, 8, 8))
    if tmp is not None:
        save_model(model, tmp / "digits.safetensors")
    return model


def digits_gauss_pair(tmp: Path, reduce: str = "median") -> tuple[Path, Path]:
    """``digits_model`` (4 epochs) and its Gauss network (class-mean centroids of the training
    features, γ = 1 / the median (or mean) squared distance to the own centroid), saved in
    ``tmp`` as digits.safetensors and gauss.safetensors."""
    from kmtools.centroids import class_means
    from kmtools.features import as_tensors
    from kmtools.models.core import GaussHead

    model = digits_model(tmp, epochs=4)
    t = as_tensors(load_dataset("digits", split="train").dataset)
    assert t is not None
    x, y = t[0].float(), torch.as_tensor(t[1]).long()
    with torch.no_grad():
        f = model.eval().features(x)
    c = class_means(f, y, 10)
    d2 = ((f - c[y]) ** 2).sum(1)
    gamma = float(1.0 / (d2.median() if reduce == "median" else d2.mean()))
    save_model(model.with_head(GaussHead(c, gamma=gamma)), tmp / "gauss.safetensors")
    return tmp / "digits.safetensors", tmp / "gauss.safetensors"


def tiny_mlp_model(d_in: int = 6, d_feat: int = 5, c: int = 4, seed: int = 0) -> KmModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, d_feat))
    return KmModel(backbone, nn.Linear(d_feat, c), input_shape=(d_in,)).eval()
