"""Pieces of the TailorNetwork loop (:mod:`kmtools.tailor.loop`): the process group, frozen
modules, augmentation, the epoch-0 head, the optimiser and the training batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kmtools.centroids import kmeans
from kmtools.errors import ConfigError
from kmtools.models.core import KmModel
from kmtools.tailor import objective as obj
from kmtools.tailor.config import FLIP_SAFE, TailorConfig


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group when launched with ``WORLD_SIZE > 1``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def check_train_from(backbone: nn.Module, train_from: str | None) -> None:
    """``--train-from`` must name a backbone module that has parameters."""
    names = [n for n, _ in backbone.named_parameters()]
    if train_from is not None and not any(n == train_from or n.startswith(train_from + ".") for n in names):
        mods = [n for n, m in backbone.named_children()]
        raise ConfigError(f"--train-from {train_from!r} is not a backbone module; top-level modules: {', '.join(mods)}")


def freeze_until(backbone: nn.Module, train_from: str | None) -> int:
    """Freeze backbone parameters registered before module ``train_from``; return #trainable."""
    check_train_from(backbone, train_from)
    trainable = train_from is None
    count = 0
    for n, p in backbone.named_parameters():
        if not trainable and (n == train_from or n.startswith(f"{train_from}.")):
            trainable = True
        p.requires_grad_(trainable)
        count += p.numel() if trainable else 0
    return count


def crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and horizontal flip, batched."""
    n, _, h, w = x.shape
    dev = x.device
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=g).to(dev)
    flips = (torch.rand(n, generator=g) < (0.5 if flip else 0.0)).to(dev)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=dev)[None, :] + pad + shifts[:, :1]).clamp(0, h + 2 * pad - 1)
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + pad + shifts[:, 1:]
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, idx_c)


def resolve_augment(augment: str, dataset: str | None, example: torch.Tensor) -> str:
    """``auto`` → crop+flip only for datasets whose labels survive a flip (CIFAR, Fashion-MNIST);
    ``crop-flip`` asks for it on any image data; ``none`` turns it off."""
    if example.dim() != 3:
        return "none"
    if augment == "auto":
        return "crop-flip" if (dataset or "").lower() in FLIP_SAFE else "none"
    return augment


def match_clusters(centroids: torch.Tensor, labels: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    """Order k-means centroids by class (Hungarian matching on the contingency table)."""
    from scipy.optimize import linear_sum_assignment

    table = torch.zeros(c, c, dtype=torch.float64)
    table.index_put_((y.cpu(), labels.cpu()), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    rows, cols = linear_sum_assignment(-table.numpy())
    order = torch.empty(c, dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return centroids[order]


def auto_gamma(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    """γ = 1 / E‖f(x) - C_y‖²: κ of an average training point is e⁻¹."""
    d2 = (features.double() - centroids.double()[labels]).pow(2).sum(1).mean()
    return float(1.0 / d2.clamp_min(1e-12))


def initial_state(model: KmModel, feats: torch.Tensor, labels: torch.Tensor, init: str, seed: int
                  ) -> tuple[obj.HeadState, float]:
    """The head at epoch 0 in normalised units, and the scale s of ``feats``."""
    c = model.num_classes
    if init == "equidistant":
        if not isinstance(model.head, nn.Linear):
            raise ConfigError("--init equidistant needs a softmax model (nn.Linear head)")
        return obj.warm_start(model.head, feats, labels)
    st, s = obj.means_state(feats, labels, c)
    if init == "kmeans":
        km = kmeans(feats.double() / s**0.5, c, seed=seed, n_init=3)
        st.centroids = match_clusters(km.centroids.float().cpu(), km.labels, labels, c)
    return st, s


@contextmanager
def eval_mode(module: nn.Module, freeze_bn: bool) -> Iterator[None]:
    """Every module in eval mode (dropout, stochastic depth, BatchNorm statistics) while its
    parameters train; with ``freeze_bn=False`` BatchNorm layers update their statistics."""
    module.eval()
    if not freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    try:
        yield
    finally:
        module.eval()


def optimiser(cfg: TailorConfig, params: list[nn.Parameter], head_params: list[nn.Parameter], n: int, world: int
               ) -> tuple[torch.optim.Optimizer, Any, int]:
    groups: list[dict[str, Any]] = [{"params": params}] + ([{"params": head_params}] if head_params else [])
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(math.ceil(n / world) / cfg.batch_size)
    total = steps * cfg.epochs
    warm = int(cfg.warmup * total)
    if cfg.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
        return opt, sched, steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), steps



def batches(data: Dataset[Any], tensors: tuple[torch.Tensor, torch.Tensor] | None, order: torch.Tensor,
            batch_size: int, workers: int, device: torch.device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(step, x, y)`` for the batches ``order[step·B : (step+1)·B]`` of one epoch, skipping
    batches of fewer than 2 items. In-memory data is sliced; per-item data (an ImageFolder
    decoded as it is read) goes through a DataLoader with ``workers`` processes (pinned memory on
    CUDA) that reads exactly these batches in this order, so the batches and hence the trained
    network do not depend on ``workers``."""
    steps = [(s, order[s * batch_size : (s + 1) * batch_size]) for s in range(math.ceil(len(order) / batch_size))]
    steps = [(s, idx) for s, idx in steps if len(idx) >= 2]
    if tensors is not None:
        for s, idx in steps:
            yield s, tensors[0][idx], tensors[1][idx].long()
        return
    loaded: Iterable[Any] = DataLoader(data, batch_sampler=[idx.tolist() for _, idx in steps], num_workers=workers,
                                       pin_memory=device.type == "cuda")
    for (s, _), (x, y) in zip(steps, loaded, strict=True):
        yield s, torch.as_tensor(x), torch.as_tensor(y).long()


def features(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.parallel.DistributedDataParallel):
        inner: KmModel = mod.module
        head = inner.head
        inner.head = nn.Identity()  # forward returns features; DDP hooks fire on the backbone
        try:
            out: torch.Tensor = mod(x)
        finally:
            inner.head = head
        return out
    f: torch.Tensor = mod.features(x)  # type: ignore[operator]
    return f

