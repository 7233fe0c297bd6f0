"""TailorNetwork ("Softmax is k-means", Sec. 4.1, Algorithm 1): fine-tune a softmax network
into a Gauss network.

Algorithm 1 alternates the centroid update C = f(X) Y (YᵀY)⁻¹ with minimising
‖f(X)ᵀ - Y Cᵀ‖² over the layers below the head. kmtools minimises, per batch,

    L = mean_i γ‖f(x_i) - C_{y_i}‖²  +  λ · CE(-γ‖f(x_i) - C_k‖², y_i)

The first term is Algorithm 1's objective (for γ = 1 literally; for another γ, on the
features rescaled by √γ, see :func:`auto_gamma`), i.e. the mean of -log κ_y. The second, cross-entropy over the
nearest-centroid logits log κ, is the collapse and accuracy guard: the first term alone is
minimised by mapping every input to one point (all centroids coincide), which the CE term
forbids because it needs the true centroid to be the nearest by a margin.

Centroid re-estimation (documented choice): C is held fixed within an epoch; the detached
features of that epoch's training batches are summed per class and, at the epoch's end,
C is replaced by their class means (``centroid_update="epoch"``). With
``centroid_update="ema"`` C also follows an exponential moving average of the batch class
means (momentum ``ema``) between epochs. After the last epoch, C is recomputed exactly from
a full pass over the training data in eval mode, so the exported Gauss head holds the
exact class means of the final network (Algorithm 1, line 2). Under DistributedDataParallel
the class sums and counts are all-reduced across ranks before dividing.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kmtools.centroids import class_means, class_sums, equidistant, kmeans
from kmtools.device import autocast
from kmtools.errors import ConfigError, KmtoolsError
from kmtools.features import as_tensors, extract
from kmtools.models.core import GaussHead, KmModel

INITS = ("means", "equidistant", "kmeans")
HEADS = ("gauss", "rbf", "rslvq", "glvq")


@dataclass
class TailorConfig:
    """Options of :func:`tailor` (see the CLI's ``kmtools tailor --help``)."""

    epochs: int = 5
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    schedule: str = "cosine"  # cosine | onecycle | constant
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    train_from: str | None = None  # first backbone module that trains; earlier ones are frozen
    init: str = "means"  # means | equidistant | kmeans
    ce_weight: float = 1.0  # λ
    gamma: float | None = None  # κ = exp(-γ‖f - C‖²); None = auto, 1.0 = the paper's literal κ
    centroid_update: str = "epoch"  # epoch | ema
    clip: float = 5.0  # gradient-norm clipping (0 = off): the scatter term is quadratic in scale
    ema: float = 0.05
    freeze_bn: bool = True  # keep BatchNorm statistics of the trained network
    augment: str = "auto"  # auto | none | crop-flip
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    head: str = "gauss"
    head_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError("--lr must be a positive number")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError("--optimizer must be sgd or adamw")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ConfigError("--schedule must be cosine, onecycle or constant")
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}")
        if self.centroid_update not in ("epoch", "ema"):
            raise ConfigError("--centroid-update must be epoch or ema")
        if self.ce_weight < 0:
            raise ConfigError("--ce-weight must be >= 0")
        if self.gamma is not None and (self.gamma <= 0 or not math.isfinite(self.gamma)):
            raise ConfigError("--gamma must be positive")
        if self.augment not in ("auto", "none", "crop-flip"):
            raise ConfigError("--augment must be auto, none or crop-flip")
        if self.head not in HEADS:
            raise ConfigError(f"--head must be one of {', '.join(HEADS)}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    scatter: float
    ce: float
    accuracy: float
    centroid_shift: float
    min_centroid_distance: float
    mean_kappa: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TailorResult:
    model: KmModel
    history: list[EpochStats]
    config: TailorConfig
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"history": [h.to_dict() for h in self.history], "config": self.config.to_dict(),
                "world_size": self.world_size, "head_kind": self.model.head_kind}


Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- helpers
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
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


def crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and horizontal flip, batched."""
    n, _, h, w = x.shape
    dev = x.device
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=g).to(dev)
    flips = (torch.rand(n, generator=g) < 0.5).to(dev)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=dev)[None, :] + pad + shifts[:, :1]).clamp(0, h + 2 * pad - 1)
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + pad + shifts[:, 1:]
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, idx_c)


def _match_clusters(centroids: torch.Tensor, labels: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    """Order k-means centroids by class (Hungarian matching on the contingency table)."""
    from scipy.optimize import linear_sum_assignment

    table = torch.zeros(c, c, dtype=torch.float64)
    table.index_put_((y.cpu(), labels.cpu()), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    rows, cols = linear_sum_assignment(-table.numpy())
    order = torch.empty(c, dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return centroids[order]


def initial_centroids(model: KmModel, feats: torch.Tensor, labels: torch.Tensor, init: str, seed: int) -> torch.Tensor:
    """C₀ from class means, Theorem-1 equidistant centroids, or k-means matched to classes."""
    c = model.num_classes
    if init == "means":
        return class_means(feats, labels, c).float()
    if init == "equidistant":
        if not isinstance(model.head, nn.Linear):
            raise ConfigError("--init equidistant needs a softmax model (nn.Linear head)")
        # Theorem 1's centroids live in [f, 1]; the Gauss head uses their feature coordinates.
        return equidistant(model.head).centroids[:, :-1].float()
    km = kmeans(feats, c, seed=seed, n_init=3)
    return _match_clusters(km.centroids.float().cpu(), km.labels, labels, c)


def auto_gamma(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    """γ = 1 / E‖f(x) - C_y‖² over the training data before tailoring.

    κ = exp(-γ‖f - C‖²) is then the paper's Gauss-confidence (Eq. 4) of the rescaled
    features √γ·f (a fixed scale on the penultimate layer), so an average training point
    starts at κ ≈ e⁻¹ instead of underflowing to 0 when feature norms are large, and the
    scatter term of the loss starts near 1 whatever the network's feature scale.
    """
    d2 = (features.double() - centroids.double()[labels]).pow(2).sum(1).mean()
    return float(1.0 / d2.clamp_min(1e-12))


@contextmanager
def _bn_eval(module: nn.Module, freeze: bool) -> Iterator[None]:
    """Keep BatchNorm layers in eval mode (frozen statistics) while the rest trains."""
    module.train()
    if freeze:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    try:
        yield
    finally:
        module.eval()


class Interrupted(KmtoolsError):
    """SIGINT/SIGTERM during tailoring: the last epoch checkpoint is kept."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        hint = f"; resume with --resume (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"interrupted by {name}{hint}")
        self.exit_code = 128 + int(signum)


@contextmanager
def _signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps (main thread only)."""
    got: list[int] = []
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- main loop
def tailor(
    model: KmModel,
    data: Dataset[Any],
    config: TailorConfig | None = None,
    *,
    device: torch.device | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TailorResult:
    """Turn softmax ``model`` into a Gauss network by Algorithm 1 (see module docstring).

    ``checkpoint``: file written atomically after every epoch (weights, centroids,
    optimiser, scheduler and RNG states); ``resume=True`` continues from it and gives the
    same result as an uninterrupted run with the same seed on the same device.
    """
    cfg = config or TailorConfig()
    cfg.validate()
    device = device or torch.device("cpu")
    rank, world = _world()
    torch.manual_seed(cfg.seed + rank)
    c = model.num_classes
    model = model.with_head(model.head) if isinstance(model.head, nn.Linear) else model
    amp = cfg.amp and device.type == "cuda"
    cl = cfg.channels_last and device.type == "cuda"

    x0, _ = data[0]
    images = torch.as_tensor(x0).dim() == 3
    use_aug = cfg.augment == "crop-flip" or (cfg.augment == "auto" and images and torch.as_tensor(x0).shape[-1] >= 28)

    # initial centroids from a full pass (eval mode) over the training data
    feats = extract(model, data, batch_size=max(cfg.batch_size, 256), device=device, amp=amp, channels_last=cl)
    base_acc = float((feats.predictions == feats.labels).double().mean())
    if base_acc < 1.5 / c and log:
        log(f"warning: the network's training accuracy is {base_acc:.1%}: is it trained and normalised right?")
    centroids = initial_centroids(model, feats.features, feats.labels, cfg.init, cfg.seed).to(device)
    gamma = cfg.gamma if cfg.gamma is not None else auto_gamma(feats.features, feats.labels, centroids.cpu())
    if log and cfg.gamma is None:
        log(f"gamma (auto) = {gamma:.4g}: 1 / mean within-class squared distance at the start")
    if cfg.head == "gauss":
        head: nn.Module = GaussHead(centroids, gamma=gamma)
    else:
        from kmtools.heads import build_head

        head = build_head(cfg.head, feats.features, feats.labels, c, seed=cfg.seed, **cfg.head_options)
    del feats
    gm = KmModel(model.backbone, head, model.normalize, arch=model.arch, arch_kwargs=model.arch_kwargs,
                 classes=model.classes, input_shape=model.input_shape, head_path=model.head_path)
    gm.to(device)
    if cl:
        gm.to(memory_format=torch.channels_last)
    n_train = freeze_until(gm.backbone, cfg.train_from)
    if n_train == 0:
        raise ConfigError("nothing to train: --train-from froze every backbone parameter")
    params = [p for p in gm.backbone.parameters() if p.requires_grad]
    head_params = [p for p in gm.head.parameters() if p.requires_grad]  # prototype heads learn
    groups = [{"params": params}] + ([{"params": head_params}] if head_params else [])
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    tensors = as_tensors(data)
    xs_all: torch.Tensor | None = None
    ys_all: torch.Tensor | None = None
    if tensors is not None and world == 1:
        xs_all, ys_all = tensors
    n = len(data)  # type: ignore[arg-type]
    per_rank = math.ceil(n / world)
    steps = math.ceil(per_rank / cfg.batch_size)
    total = steps * cfg.epochs
    if cfg.schedule == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)

    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[EpochStats] = []
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise ConfigError(f"--resume: no checkpoint at {ckpt}: run without --resume first")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("config") != _ckpt_config(cfg):
            raise ConfigError(f"--resume: {ckpt} was written with other options; use the same options or --force")
        gm.backbone.load_state_dict(state["backbone"])
        gm.head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochStats(**h) for h in state["history"]]
        start_epoch = int(state["epoch"])
        if log:
            log(f"resumed from {ckpt} after epoch {start_epoch}")

    train_mod: nn.Module = gm
    if world > 1:
        train_mod = nn.parallel.DistributedDataParallel(
            gm, device_ids=[device.index] if device.type == "cuda" else None,
        )

    import time

    with _signals() as got:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            dim = gm.head.centroids.shape[1] if isinstance(gm.head, GaussHead) else 1
            sums = torch.zeros(c, dim, dtype=torch.float64, device=device)
            counts = torch.zeros(c, dtype=torch.float64, device=device)
            # loss, scatter, ce, correct, seen, Σκ: summed on the device (no per-step host sync)
            acc = torch.zeros(6, dtype=torch.float64, device=device)
            order = torch.randperm(n, generator=gen)
            if world > 1:
                order = torch.cat([order, order[: per_rank * world - n]])[rank::world]
            with _bn_eval(gm.backbone, cfg.freeze_bn):
                for step in range(steps):
                    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    if len(idx) == 0:
                        continue
                    if xs_all is not None and ys_all is not None:
                        xb, yb = xs_all[idx], ys_all[idx].long()
                    else:
                        items = [data[int(i)] for i in idx]
                        xb = torch.stack([torch.as_tensor(it[0]) for it in items])
                        yb = torch.as_tensor([int(it[1]) for it in items])
                    xb = xb.to(device, non_blocking=True)
                    yb = yb.to(device, non_blocking=True)
                    if use_aug:
                        xb = crop_flip(xb, gen)
                    if cl and xb.dim() == 4:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp):
                        f = _features(train_mod, xb)
                    f = f.float()
                    loss, scatter, ce, logits = _loss(gm.head, f, yb, cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip > 0:
                        nn.utils.clip_grad_norm_(params + head_params, cfg.clip)
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        fd = f.detach()
                        s_b, c_b = class_sums(fd, yb, c)
                        if sums.shape[1] == s_b.shape[1]:
                            sums += s_b
                            counts += c_b
                            if cfg.centroid_update == "ema" and isinstance(gm.head, GaussHead):
                                present = c_b > 0
                                bm = (s_b[present] / c_b[present, None]).float()
                                cen = gm.head.centroids.data
                                cen[present] = (1 - cfg.ema) * cen[present] + cfg.ema * bm
                        nb = float(len(yb))
                        kappa = logits.max(1).values.exp().sum() if isinstance(gm.head, GaussHead) else 0.0
                        acc += torch.stack([
                            loss.detach().double() * nb, scatter.double() * nb, ce.double() * nb,
                            (logits.argmax(1) == yb).sum().double(), torch.tensor(nb, device=device).double(),
                            torch.as_tensor(kappa, device=device).double(),
                        ])
                    if progress and (step % 20 == 19 or step == steps - 1):
                        a = acc.tolist()
                        progress(epoch * steps + step + 1, total,
                                 f"ep {epoch + 1} loss {a[0] / max(a[4], 1):.3f} acc {a[3] / max(a[4], 1):.3f}")
                    if got:
                        raise Interrupted(got[0], ckpt if ckpt and ckpt.exists() else None)
            # epoch-end centroid re-estimation from this epoch's (detached) training features
            stats = acc
            _all_reduce(sums)
            _all_reduce(counts)
            _all_reduce(stats)
            shift = 0.0
            if isinstance(gm.head, GaussHead) and bool((counts > 0).all()):
                new = (sums / counts[:, None]).float()
                shift = float((new - gm.head.centroids.data).norm(dim=1).max())
                gm.head.centroids.data.copy_(new)
            st = stats.tolist()
            m = max(st[4], 1.0)
            history.append(EpochStats(
                epoch=epoch + 1, loss=st[0] / m, scatter=st[1] / m, ce=st[2] / m, accuracy=st[3] / m,
                centroid_shift=shift, min_centroid_distance=_min_dist(gm.head), mean_kappa=st[5] / m,
                seconds=time.perf_counter() - t0,
            ))
            if log:
                h = history[-1]
                log(f"epoch {h.epoch}/{cfg.epochs}: loss {h.loss:.4f} (scatter {h.scatter:.4f}, ce {h.ce:.4f}) "
                    f"acc {h.accuracy:.4f} κ̄ {h.mean_kappa:.3f} shift {h.centroid_shift:.3g} {h.seconds:.1f}s")
            if not math.isfinite(history[-1].loss):
                raise KmtoolsError("tailoring diverged (loss is NaN/Inf): lower --lr or disable --amp")
            if ckpt is not None and rank == 0:
                _save_checkpoint(ckpt, gm, opt, sched, gen, history, epoch + 1, cfg)
            if got:
                raise Interrupted(got[0], ckpt)

    # final exact centroids: a full eval-mode pass (Algorithm 1, line 2)
    gm.eval()
    if isinstance(gm.head, GaussHead):
        feats = extract(gm, data, batch_size=max(cfg.batch_size, 256), device=device, amp=amp, channels_last=cl)
        s_all, c_all = class_sums(feats.features.to(device), feats.labels.to(device), c)
        if bool((c_all > 0).all()):
            gm.head.centroids.data.copy_((s_all / c_all[:, None]).float())
    for p in gm.parameters():
        p.requires_grad_(False)
    gm = gm.to(memory_format=torch.contiguous_format).cpu().eval()
    return TailorResult(gm, history, cfg, world)


def _features(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.parallel.DistributedDataParallel):
        return _ddp_features(mod, x)
    f: torch.Tensor = mod.features(x)  # type: ignore[operator]
    return f


def _ddp_features(mod: nn.parallel.DistributedDataParallel, x: torch.Tensor) -> torch.Tensor:
    inner: KmModel = mod.module
    head = inner.head
    inner.head = nn.Identity()  # forward returns features; DDP hooks fire on the backbone
    try:
        out: torch.Tensor = mod(x)
    finally:
        inner.head = head
    return out


def _loss(head: nn.Module, f: torch.Tensor, y: torch.Tensor, cfg: TailorConfig
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm-1 scatter ‖f - C_y‖² plus λ·CE on log κ (or a prototype head's own loss)."""
    if isinstance(head, GaussHead):
        d2 = -head.log_kappa(f)  # γ‖f - C‖²
        scatter = d2.gather(1, y[:, None]).mean()
        logits = -d2
        ce = F.cross_entropy(logits, y)
        return scatter + cfg.ce_weight * ce, scatter.detach(), ce.detach(), logits.detach()
    from kmtools.heads import head_loss

    loss = head_loss(head, f, y)
    scores = head(f)
    zero = torch.zeros((), device=f.device)
    return loss, zero, loss.detach(), scores.detach()


def _min_dist(head: nn.Module) -> float:
    c = getattr(head, "centroids", None)
    if c is None:
        c = getattr(head, "prototypes", None)
    if c is None or len(c) < 2:
        return float("nan")
    d = torch.cdist(c.detach().double(), c.detach().double())
    d.fill_diagonal_(float("inf"))
    return float(d.min())


def _ckpt_config(cfg: TailorConfig) -> dict[str, Any]:
    return cfg.to_dict()


def _save_checkpoint(path: Path, gm: KmModel, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
                     history: list[EpochStats], epoch: int, cfg: TailorConfig) -> None:
    from kmtools.io import write_with

    state = {
        "backbone": gm.backbone.state_dict(),
        "head": gm.head.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [h.to_dict() for h in history],
        "epoch": epoch,
        "config": _ckpt_config(cfg),
    }
    write_with(path, lambda tmp: torch.save(state, tmp), force=True)
