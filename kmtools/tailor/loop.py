"""TailorNetwork ("Softmax is k-means", Sec. 4.1, Algorithm 1): fine-tune a softmax network
into a Gauss network without losing accuracy.

Algorithm 1 alternates the centroid update C = f(X) Y (YᵀY)⁻¹ with minimising the scatter
‖f(X)ᵀ - Y Cᵀ‖² over the layers below the head. kmtools runs it as follows (maths in
:mod:`kmtools.tailor.objective` and ``docs/tailor.md``):

* **Epoch 0.** One clean (eval-mode) pass over the training data. The head starts as the
  exact Theorem-1 copy of the softmax head (``init="equidistant"``, the default), so the
  swap costs nothing; ``means``/``kmeans`` start at class means / matched k-means.
* **Epochs 1..E.** Every backbone module stays in eval mode (BatchNorm statistics, dropout,
  stochastic depth), gradients flow to the trainable parameters; the scale-free loss is
  minimised with the centroids held fixed within the epoch. At the epoch's end a clean pass
  over the training data gives the exact class means of the current network; the centroids
  for the next epoch move from the warm start to those means over ``ramp`` epochs
  (ρ = min(1, t/ramp)), after which they *are* the class means (Algorithm 1, line 2).
* **Validation and selection.** After each epoch the head that would be exported is scored on
  held-out validation data. Among epochs ≥ 1 whose centroids are the class means and whose
  validation accuracy is within ``max_drop`` points of the softmax network's, the one with the
  lowest validation scatter / gap² (Algorithm 1's objective, scale-free) is exported; training
  stops once ``patience`` epochs in a row exceed the drop.
* **γ.** κ = exp(-γ‖f - C‖²) on the raw features; γ is fitted on the validation data so that
  the paper's outlier rule κ < 1/c flags a share ``fpr`` of it (unless ``gamma`` is given).

Under DistributedDataParallel the clean passes are sharded and their sums all-reduced.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from kmtools.centroids import class_means, class_sums, kmeans
from kmtools.device import autocast
from kmtools.errors import ConfigError, KmtoolsError
from kmtools.features import as_tensors, extract
from kmtools.models.core import GaussHead, KmModel
from kmtools.tailor import objective as obj
from kmtools.tailor.config import FLIP_SAFE, EpochStats, TailorConfig, TailorResult

Progress = Callable[[int, int, str], None]
Log = Callable[[str], None]


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


def _match_clusters(centroids: torch.Tensor, labels: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
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
        st.centroids = _match_clusters(km.centroids.float().cpu(), km.labels, labels, c)
    return st, s


@contextmanager
def _eval_mode(module: nn.Module, freeze_bn: bool) -> Iterator[None]:
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


# --------------------------------------------------------------------------- clean passes
class _Run:
    """What the loop carries between epochs (also what a checkpoint restores)."""

    def __init__(self, cfg: TailorConfig, device: torch.device, amp: bool, cl: bool) -> None:
        self.cfg, self.device, self.amp, self.cl = cfg, device, amp, cl
        self.warm: obj.HeadState | None = None
        self.state: obj.HeadState | None = None  # the head the next epoch trains with
        self.scale = 1.0
        self.history: list[EpochStats] = []
        self.best: dict[str, Any] | None = None
        self.stopped = False
        self.below = 0  # epochs in a row below the accuracy floor
        self.base_val: float | None = None  # the softmax network's validation accuracy

    def feats(self, model: KmModel, data: Dataset[Any], shard: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world = _world()
        if shard and world > 1:
            data = Subset(data, list(range(rank, len(data), world)))  # type: ignore[arg-type]
        fe = extract(model, data, batch_size=max(self.cfg.batch_size, 256), device=self.device,
                     workers=self.cfg.workers,
                     amp=self.amp, channels_last=self.cl)
        return fe.features, fe.labels


class _Moments:
    """Class sums and counts, Σ‖f‖² and n of features sharded across ranks (all-reduced)."""

    def __init__(self, f: torch.Tensor, y: torch.Tensor, c: int) -> None:
        f64 = f.double()
        self.sums, self.counts = class_sums(f64, y, c)
        tot = torch.cat([f64.sum(0), f64.pow(2).sum().view(1), torch.tensor([float(len(y))], dtype=torch.float64)])
        for t in (self.sums, self.counts, tot):
            _all_reduce(t)
        self.n = float(tot[-1])
        self.sumsq = float(tot[-2])
        mean = tot[:-2] / self.n
        self.scale = max(self.sumsq / self.n - float(mean.pow(2).sum()), obj.EPS)  # total scatter s

    @property
    def means(self) -> torch.Tensor:
        return self.sums / self.counts.clamp_min(1)[:, None]

    def within(self, centroids: torch.Tensor) -> float:
        """E‖f - C_y‖² from the moments."""
        cen = centroids.double()
        w = self.sumsq - 2 * float((self.sums * cen).sum()) + float((self.counts * cen.pow(2).sum(1)).sum())
        return w / self.n

    def centroid_shift(self, centroids: torch.Tensor) -> float:
        """mean_k ‖C_k - M_k‖² / E‖f - M_y‖²: how far the centroids sit from the class means."""
        return float((centroids.double() - self.means).pow(2).sum(1).mean()) / max(self.within(self.means), obj.EPS)

    def scatter_over_gap2(self, centroids: torch.Tensor) -> float:
        """E‖f - C_y‖² / mean ‖C_k - C_l‖² from the moments (the same on every rank)."""
        return self.within(centroids) / obj.mean_pair_sq(centroids.double())


@torch.no_grad()
def _val_scores(head: GaussHead | nn.Module, fv: torch.Tensor, yv: torch.Tensor) -> tuple[float, float | None, float]:
    """Accuracy, NLL of softmax(log κ) and mean max κ of validation features under ``head``."""
    if isinstance(head, GaussHead):
        lg = head.log_kappa(fv.double())
        nll = float(F.cross_entropy(lg, yv))
        return float((lg.argmax(1) == yv).double().mean()), nll, float(lg.max(1).values.exp().mean())
    sc = head(fv.float())
    return float((sc.argmax(1) == yv).double().mean()), None, float("nan")


# --------------------------------------------------------------------------- main loop
def tailor(
    model: KmModel,
    data: Dataset[Any],
    config: TailorConfig | None = None,
    *,
    val_data: Dataset[Any] | None = None,
    dataset: str | None = None,
    device: torch.device | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
) -> TailorResult:
    """Turn softmax ``model`` into a Gauss network by Algorithm 1 (module docstring).

    ``val_data``: held-out data for selection, early stopping and γ (without it the harm check
    is off and a warning is logged). ``dataset``: the data's name, for ``augment="auto"``.
    ``checkpoint``: written atomically after every epoch; ``resume=True`` continues from it
    and gives the same result as an uninterrupted run with the same seed on the same device.
    """
    cfg = config or TailorConfig()
    cfg.validate()
    device = device or torch.device("cpu")
    rank, world = _world()
    torch.manual_seed(cfg.seed + rank)
    amp = cfg.amp and device.type == "cuda"
    cl = cfg.channels_last and device.type == "cuda"
    run = _Run(cfg, device, amp, cl)
    say = log or (lambda _m: None)
    if val_data is None:
        say("warning: no validation data: the do-no-harm check and the γ fit are off (pass --val-split or --val-data)")

    x0, _ = data[0]
    aug = resolve_augment(cfg.augment, dataset, torch.as_tensor(x0))
    pad = 4 if torch.as_tensor(x0).shape[-1] >= 32 else 2
    flip = aug == "crop-flip"

    softmax = model if isinstance(model.head, nn.Linear) else None
    gm, head_params = _build(model, data, run, say)
    n_train = freeze_until(gm.backbone, cfg.train_from)
    if n_train == 0:
        raise ConfigError("nothing to train: --train-from froze every backbone parameter")
    params = [p for p in gm.backbone.parameters() if p.requires_grad]
    opt, sched, steps = _optimiser(cfg, params, head_params, len(data), world)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Path(checkpoint) if checkpoint else None
    start_epoch = 0
    if resume:
        start_epoch = _restore(ckpt, gm, opt, sched, gen, run, say)
    else:
        run.history.append(_epoch0(model, softmax, gm, data, val_data, run))
        _log_epoch(say, run.history[-1], cfg.epochs)

    tensors = as_tensors(data) if world == 1 else None  # in-memory data: sliced; else per item
    train_mod: nn.Module = gm
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_mod = nn.parallel.DistributedDataParallel(gm, device_ids=ids)
    n = len(data)  # type: ignore[arg-type]
    per_rank = math.ceil(n / world)
    total = steps * cfg.epochs
    with _signals() as got:
        for epoch in range(start_epoch, cfg.epochs):
            if run.stopped:
                break
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=gen)
            if world > 1:
                order = torch.cat([order, order[: per_rank * world - n]])[rank::world]
            acc = torch.zeros(5, dtype=torch.float64, device=device)  # loss, scatter, ce, correct, seen
            st = run.state.to(device) if run.state is not None else None
            with _eval_mode(gm.backbone, cfg.freeze_bn):
                for step in range(steps):
                    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    if len(idx) < 2:
                        continue
                    xb, yb = _batch(data, tensors, idx)
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                    if aug == "crop-flip":
                        xb = crop_flip(xb, gen, pad=pad, flip=flip)
                    if cl and xb.dim() == 4:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp):
                        f = _features(train_mod, xb)
                    loss, scatter, ce, lg = _step_loss(gm.head, st, f.float(), yb, cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip > 0:
                        nn.utils.clip_grad_norm_(params + head_params, cfg.clip)
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        nb = float(len(yb))
                        acc += torch.stack([loss.detach().double() * nb, scatter.double() * nb, ce.double() * nb,
                                            (lg.argmax(1) == yb).sum().double(),
                                            torch.tensor(nb, dtype=torch.float64, device=device)])
                    if progress and (step % 20 == 19 or step == steps - 1):
                        a = acc.tolist()
                        progress(epoch * steps + step + 1, total,
                                 f"ep {epoch + 1} loss {a[0] / max(a[4], 1):.3f} acc {a[3] / max(a[4], 1):.3f}")
                    if got:
                        raise Interrupted(got[0], ckpt if ckpt and ckpt.exists() else None)
            _all_reduce(acc)
            a = acc.tolist()
            m = max(a[4], 1.0)
            if not math.isfinite(a[0]):
                raise KmtoolsError("tailoring diverged (loss is NaN/Inf): lower --lr or disable --amp")
            row = _epoch_end(gm, data, val_data, run, epoch + 1)
            row.loss, row.scatter, row.ce, row.batch_accuracy = a[0] / m, a[1] / m, a[2] / m, a[3] / m
            row.seconds = time.perf_counter() - t0
            run.history.append(row)
            _log_epoch(say, row, cfg.epochs)
            if ckpt is not None and rank == 0:
                _save_checkpoint(ckpt, gm, opt, sched, gen, run, epoch + 1)
            if got:
                raise Interrupted(got[0], ckpt)
    return _finish(model, softmax, gm, val_data, run, world, say)


@torch.no_grad()
def _build(model: KmModel, data: Dataset[Any], run: _Run, say: Log) -> tuple[KmModel, list[nn.Parameter]]:
    """Epoch 0: the clean pass, the initial head and the network that trains."""
    cfg, c = run.cfg, model.num_classes
    f, y = run.feats(model, data, shard=False)
    base_acc = float((model.head(f).argmax(1) == y).double().mean()) if isinstance(model.head, nn.Linear) else 1.0
    if base_acc < 1.5 / c:
        say(f"warning: the network's training accuracy is {base_acc:.1%}: is it trained and normalised right?")
    head_params: list[nn.Parameter] = []
    if cfg.head == "gauss":
        run.warm, run.scale = initial_state(model, f, y, cfg.init, cfg.seed)
        run.state = run.warm
        if cfg.centroids == "fixed":  # the scatter pulls towards the centroids themselves
            run.state = obj.HeadState(run.warm.centroids, run.warm.offsets, run.warm.gamma)
        head: nn.Module = run.warm.raw_head(run.scale)
    else:
        from kmtools.heads import build_head

        head = build_head(cfg.head, f, y, c, seed=cfg.seed, **cfg.head_options)
        head_params = [p for p in head.parameters() if p.requires_grad]
    gm = KmModel(copy.deepcopy(model.backbone), head, copy.deepcopy(model.normalize), arch=model.arch,
                 arch_kwargs=model.arch_kwargs, classes=model.classes, input_shape=model.input_shape,
                 head_path=model.head_path)
    gm.to(run.device)
    if run.cl:
        gm.to(memory_format=torch.channels_last)
    return gm, head_params


def _optimiser(cfg: TailorConfig, params: list[nn.Parameter], head_params: list[nn.Parameter], n: int, world: int
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


def _batch(data: Dataset[Any], tensors: tuple[torch.Tensor, torch.Tensor] | None, idx: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    if tensors is not None:
        return tensors[0][idx], tensors[1][idx].long()
    items = [data[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(it[0]) for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _step_loss(head: nn.Module, st: obj.HeadState | None, f: torch.Tensor, y: torch.Tensor, cfg: TailorConfig
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if st is not None:
        return obj.loss(f, y, st, cfg.ce_weight, cfg.scatter_weight)
    from kmtools.heads import head_loss

    loss = head_loss(head, f, y)
    zero = torch.zeros((), device=f.device)
    return loss, zero, loss.detach(), head(f).detach()


@torch.no_grad()
def _epoch0(model: KmModel, softmax: KmModel | None, gm: KmModel, data: Dataset[Any],
            val: Dataset[Any] | None, run: _Run) -> EpochStats:
    """The softmax network and the initial head, on the training and validation data."""
    t0 = time.perf_counter()
    row = EpochStats(epoch=0, rho=0.0 if run.cfg.ramp > 1 or run.cfg.init == "equidistant" else 1.0)
    f, y = run.feats(model, data, shard=False)
    if softmax is not None:
        row.softmax_train_accuracy = float((softmax.head(f).argmax(1) == y).double().mean())
    row.train_accuracy = float((gm.head.cpu()(f).argmax(1) == y).double().mean())
    gm.head.to(run.device)
    if run.state is not None:
        cen = run.state.raw_head(run.scale)
        g = obj.geometry(f, y, cen.centroids, cen.offsets)
        row.scatter_over_gap2 = g.scatter_over_gap2
        mu = class_means(f.double(), y, model.num_classes)
        within = float((f.double() - mu[y]).pow(2).sum(1).mean())
        row.centroid_shift = float((cen.centroids.double() - mu).pow(2).sum(1).mean()) / max(within, obj.EPS)
    if val is not None:
        fv, yv = run.feats(model, val, shard=False)
        if softmax is not None:
            lg = softmax.head(fv).detach().double()
            row.softmax_val_accuracy = float((lg.argmax(1) == yv).double().mean())
            row.softmax_val_nll = float(F.cross_entropy(lg, yv))
            run.base_val = row.softmax_val_accuracy
        row.val_accuracy, row.val_nll, row.val_mean_kappa = _val_scores(gm.head.cpu(), fv, yv)
        gm.head.to(run.device)
        if isinstance(gm.head, GaussHead):
            g = obj.geometry(fv, yv, gm.head.centroids.cpu(), gm.head.offsets.cpu())
            row.median_margin_gap, row.val_scatter_over_gap2 = g.median_margin_gap, g.scatter_over_gap2
    row.eval_seconds = row.seconds = time.perf_counter() - t0
    return row


@torch.no_grad()
def _epoch_end(gm: KmModel, data: Dataset[Any], val: Dataset[Any] | None, run: _Run, epoch: int) -> EpochStats:
    """Clean pass → exact class means → the head that would be exported now → validation."""
    t0 = time.perf_counter()
    cfg, c = run.cfg, gm.num_classes
    gm.eval()
    f, y = run.feats(gm, data, shard=True)
    row = EpochStats(epoch=epoch, rho=1.0)
    if run.warm is not None:
        mom = _Moments(f, y, c)
        s = mom.scale
        if cfg.centroids == "means":
            target = obj.HeadState((mom.means / s**0.5).float(), torch.zeros(c), run.warm.gamma)
            row.rho = min(1.0, epoch / cfg.ramp)
            run.state = obj.blend(run.warm, target, row.rho)
        else:
            row.rho = 0.0
        run.scale = s
        assert run.state is not None
        gauss = run.state.raw_head(s)
        head: nn.Module = gauss
        gm.head = gauss.to(run.device)
        correct = torch.tensor([float((gauss.log_kappa(f.double()).argmax(1) == y).sum()), float(len(y))],
                               dtype=torch.float64)
        _all_reduce(correct)
        row.train_accuracy = float(correct[0] / correct[1])
        row.scatter_over_gap2 = mom.scatter_over_gap2(gauss.centroids)
        row.centroid_shift = mom.centroid_shift(gauss.centroids)
    else:
        head = gm.head.cpu()
        row.train_accuracy = float((head(f).argmax(1) == y).double().mean())
        gm.head.to(run.device)
    if val is not None:
        fv, yv = run.feats(gm, val, shard=False)
        row.val_accuracy, row.val_nll, row.val_mean_kappa = _val_scores(head.cpu(), fv, yv)
        if isinstance(head, GaussHead):
            g = obj.geometry(fv, yv, head.centroids, head.offsets)
            row.median_margin_gap, row.val_scatter_over_gap2 = g.median_margin_gap, g.scatter_over_gap2
        gm.head.to(run.device)
    _select(gm, run, row)
    row.eval_seconds = time.perf_counter() - t0
    return row


def _select(gm: KmModel, run: _Run, row: EpochStats) -> None:
    """Eligibility, best-epoch bookkeeping and the early stop (module docstring)."""
    cfg = run.cfg
    floor = None if run.base_val is None else run.base_val - cfg.max_drop / 100.0
    within = floor is None or (row.val_accuracy is not None and row.val_accuracy >= floor - 1e-12)
    row.eligible = (cfg.centroids == "fixed" or row.rho >= 1.0) and within
    run.below = 0 if within else run.below + 1
    if run.below >= cfg.patience:
        run.stopped = True
    if not row.eligible:
        return
    if row.val_scatter_over_gap2 is not None:
        key = row.val_scatter_over_gap2  # Algorithm 1's objective, scale-free, on held-out data
    elif row.val_accuracy is not None:
        key = -row.val_accuracy
    else:
        key = -float(row.epoch)  # no validation: the last eligible epoch
    if run.best is None or key < run.best["key"]:
        run.best = {"key": key, "epoch": row.epoch,
                    "backbone": {k: v.detach().cpu().clone() for k, v in gm.backbone.state_dict().items()},
                    "head": copy.deepcopy(gm.head).cpu()}


def _log_epoch(say: Log, h: EpochStats, epochs: int) -> None:
    def f(v: float | None, p: str = ".4f") -> str:
        return "–" if v is None else format(v, p)

    extra = f" (softmax val {f(h.softmax_val_accuracy)})" if h.epoch == 0 else f" loss {f(h.loss)}"
    say(f"epoch {h.epoch}/{epochs}:{extra} train acc {f(h.train_accuracy)} val acc {f(h.val_accuracy)} "
        f"val NLL {f(h.val_nll)} scatter/gap² {f(h.scatter_over_gap2)} margin {f(h.median_margin_gap, '.3f')} "
        f"ρ {h.rho:.2f}{' *' if h.eligible else ''} {h.seconds:.1f}s")


def _finish(model: KmModel, softmax: KmModel | None, gm: KmModel, val: Dataset[Any] | None, run: _Run,
            world: int, say: Log) -> TailorResult:
    """The selected epoch as the exported network, γ fitted on validation, benefit summary."""
    cfg = run.cfg
    last = _freeze(gm)
    res = TailorResult(None, run.history, cfg, world, stopped_early=run.stopped, last_model=last)
    if val is not None:
        res.validation = {"n": len(val)}  # type: ignore[arg-type]
    if run.best is None:
        say(f"no epoch kept validation accuracy within {cfg.max_drop} points of the softmax network: "
            "no Gauss network is exported (lower --lr, or raise --max-drop)")
        return res
    best = copy.deepcopy(last)
    best.backbone.load_state_dict(run.best["backbone"])
    best.head = run.best["head"]
    res.selected_epoch = int(run.best["epoch"])
    if isinstance(best.head, GaussHead) and val is not None:
        res.gamma_fit = _fit_gamma(best, val, cfg, run)
    elif isinstance(best.head, GaussHead) and cfg.gamma is not None:
        best.head.gamma.fill_(cfg.gamma)
    res.model = _freeze(best)
    if val is not None and softmax is not None:
        res.benefit = benefit(softmax, res.model, val, run.device, cfg.seed)
    return res


def _freeze(m: KmModel) -> KmModel:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.contiguous_format).cpu().eval()


@torch.no_grad()
def _fit_gamma(model: KmModel, val: Dataset[Any], cfg: TailorConfig, run: _Run) -> dict[str, Any]:
    """γ so that κ_pred < 1/c flags a share ``fpr`` of the validation inputs (or ``cfg.gamma``)."""
    head = model.head
    assert isinstance(head, GaussHead)
    c = head.num_classes
    trained = float(head.gamma)
    fe = extract(model, val, batch_size=max(cfg.batch_size, 256), device=run.device, amp=run.amp,
                 workers=cfg.workers)
    d = (head.sq_dist(fe.features.double().to(head.centroids.device)) + head.offsets.double()).min(1).values
    q = float(torch.quantile(d, 1 - cfg.fpr))
    fitted = math.log(c) / max(q, obj.EPS)
    gamma = cfg.gamma if cfg.gamma is not None else fitted
    head.gamma.fill_(gamma)
    flagged = float((torch.exp(-gamma * d) < 1.0 / c).double().mean())
    return {"gamma": gamma, "trained_gamma": trained, "fitted": cfg.gamma is None, "fpr_target": cfg.fpr,
            "threshold": 1.0 / c, "val_flagged_at_threshold": flagged,
            "meaning": f"with this γ the paper's rule κ_pred < 1/c = {1.0 / c:.3g} flags {flagged:.1%} of the "
                       f"validation inputs (in-distribution false-positive rate)"}


@torch.no_grad()
def benefit(softmax: KmModel, gauss: KmModel, val: Dataset[Any], device: torch.device, seed: int) -> dict[str, Any]:
    """Validation accuracy, noise-vs-validation AUROC and scale-free separation, before/after."""
    from sklearn.metrics import roc_auc_score

    n_noise = min(1000, len(val))  # type: ignore[arg-type]
    x0 = torch.as_tensor(val[0][0])
    noise = torch.rand((n_noise, *x0.shape), generator=torch.Generator().manual_seed(seed))
    out: dict[str, Any] = {"noise": {"n": n_noise, "kind": "uniform [0, 1] inputs"}}
    for name, m in (("softmax", softmax), ("gauss", gauss)):
        fv = extract(m, val, batch_size=256, device=device)
        fz = extract(m, torch.utils.data.TensorDataset(noise, torch.zeros(n_noise, dtype=torch.long)),
                     batch_size=256, device=device)
        c = m.num_classes
        extra: dict[str, Any] = {}
        if isinstance(m.head, GaussHead):
            sv, sz = (m.head.log_kappa(x.features.double()).max(1).values for x in (fv, fz))
            own = obj.geometry(fv.features, fv.labels, m.head.centroids.cpu(), m.head.offsets.cpu())
            extra = {"centroids_scatter_over_gap2": own.scatter_over_gap2}  # around the exported centroids
        else:
            sv, sz = (torch.log_softmax(x.scores.double(), 1).max(1).values for x in (fv, fz))
        auroc = float(roc_auc_score([1] * len(sv) + [0] * len(sz), torch.cat([sv, sz]).numpy()))
        # the features' own clustering (Algorithm 1's objective), around their validation class means
        g = obj.geometry(fv.features, fv.labels, class_means(fv.features.double(), fv.labels, c))
        out[name] = {"val_accuracy": float((fv.predictions == fv.labels).double().mean()),
                     "noise_auroc": auroc, **g.to_dict(), **extra}
    return out


def _features(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
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


# --------------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, gm: KmModel, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
                     run: _Run, epoch: int) -> None:
    from kmtools.io import write_with

    def hs(s: obj.HeadState | None) -> dict[str, Any] | None:
        return None if s is None else {"centroids": s.centroids, "offsets": s.offsets, "gamma": s.gamma}

    best = None
    if run.best is not None:
        best = {"key": run.best["key"], "epoch": run.best["epoch"], "backbone": run.best["backbone"],
                "head": run.best["head"].state_dict()}
    state = {
        "backbone": gm.backbone.state_dict(), "head": gm.head.state_dict(),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "history": [h.to_dict() for h in run.history], "epoch": epoch, "config": run.cfg.to_dict(),
        "warm": hs(run.warm), "state": hs(run.state), "scale": run.scale, "best": best,
        "stopped": run.stopped, "below": run.below, "base_val": run.base_val,
    }
    write_with(path, lambda tmp: torch.save(state, tmp), force=True)


def _restore(ckpt: Path | None, gm: KmModel, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
             run: _Run, say: Log) -> int:
    if ckpt is None or not ckpt.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}: run without --resume first")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    same = {k: v for k, v in (state.get("config") or {}).items() if k != "workers"}
    if same != {k: v for k, v in run.cfg.to_dict().items() if k != "workers"}:
        raise ConfigError(f"--resume: {ckpt} was written with other options; use the same options or --force")

    def hs(d: dict[str, Any] | None) -> obj.HeadState | None:
        return None if d is None else obj.HeadState(d["centroids"], d["offsets"], float(d["gamma"]))

    run.warm, run.state, run.scale = hs(state["warm"]), hs(state["state"]), float(state["scale"])
    if run.state is not None:
        gm.head = run.state.raw_head(run.scale).to(run.device)
    gm.head.load_state_dict(state["head"])
    gm.backbone.load_state_dict(state["backbone"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    run.history = [EpochStats(**h) for h in state["history"]]
    run.stopped, run.base_val = bool(state["stopped"]), state["base_val"]
    run.below = int(state.get("below", 0))
    if state["best"] is not None:
        b = state["best"]
        head = copy.deepcopy(gm.head).cpu()
        head.load_state_dict(b["head"])
        run.best = {"key": b["key"], "epoch": b["epoch"], "backbone": b["backbone"], "head": head}
    say(f"resumed from {ckpt} after epoch {state['epoch']}")
    return int(state["epoch"])
