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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kmtools.centroids import class_means, class_sums
from kmtools.device import autocast
from kmtools.errors import ConfigError, KmtoolsError
from kmtools.features import as_tensors
from kmtools.models.core import GaussHead, KmModel
from kmtools.runs.signals import Interrupted, Signals, catch_signals
from kmtools.tailor import objective as obj
from kmtools.tailor.checkpoint import _Run
from kmtools.tailor.checkpoint import restore as _restore
from kmtools.tailor.checkpoint import save_checkpoint as _save_checkpoint
from kmtools.tailor.config import EpochStats, Log, TailorConfig, TailorResult
from kmtools.tailor.measure import benefit, fit_gamma
from kmtools.tailor.training import (
    all_reduce as _all_reduce,
)
from kmtools.tailor.training import (
    auto_gamma,
    batches,
    check_train_from,
    crop_flip,
    eval_mode,
    features,
    freeze_until,
    init_distributed,
    initial_state,
    optimiser,
    resolve_augment,
)
from kmtools.tailor.training import (
    world as _world,
)

#: the names tests and benchmarks import from here
_eval_mode = eval_mode
__all__ = ["Interrupted", "auto_gamma", "benefit", "check_train_from", "crop_flip", "freeze_until",
           "init_distributed", "initial_state", "resolve_augment", "tailor"]

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- clean passes
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
    Training batches of per-item data are read by ``config.workers`` DataLoader processes.
    """
    cfg = config or TailorConfig()
    cfg.validate()
    device = device or torch.device("cpu")
    rank, world = _world()
    torch.manual_seed(cfg.seed + rank)
    run = _Run(cfg, device, cfg.amp and device.type == "cuda", cfg.channels_last and device.type == "cuda")
    say = log or (lambda _m: None)
    if val_data is None:
        say("warning: no validation data: the do-no-harm check and the γ fit are off (pass --val-split or --val-data)")

    softmax = model if isinstance(model.head, nn.Linear) else None
    gm, head_params = _build(model, data, run, say)
    if freeze_until(gm.backbone, cfg.train_from) == 0:
        raise ConfigError("nothing to train: --train-from froze every backbone parameter")
    params = [p for p in gm.backbone.parameters() if p.requires_grad]
    opt, sched, steps = optimiser(cfg, params, head_params, len(data), world)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Path(checkpoint) if checkpoint else None
    start_epoch = 0
    if resume:
        start_epoch = _restore(ckpt, gm, opt, sched, gen, run, say)
    else:
        run.history.append(_epoch0(model, softmax, gm, data, val_data, run))
        _log_epoch(say, run.history[-1], cfg.epochs)

    train_mod: nn.Module = gm
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_mod = nn.parallel.DistributedDataParallel(gm, device_ids=ids)
    epoch = _Epoch(gm, train_mod, data, params + head_params, opt, sched, gen, run, steps,
                   resolve_augment(cfg.augment, dataset, torch.as_tensor(data[0][0])), progress)
    with catch_signals() as got:
        for e in range(start_epoch, cfg.epochs):
            if run.stopped:
                break
            t0 = time.perf_counter()
            a = epoch.train(e, got, ckpt)
            row = _epoch_end(gm, data, val_data, run, e + 1)
            row.loss, row.scatter, row.ce, row.batch_accuracy = (v / max(a[4], 1.0) for v in a[:4])
            row.seconds = time.perf_counter() - t0
            run.history.append(row)
            _log_epoch(say, row, cfg.epochs)
            if ckpt is not None and rank == 0:
                _save_checkpoint(ckpt, gm, opt, sched, gen, run, e + 1)
            got.check(lambda: _resume_hint(ckpt))
    return _finish(model, softmax, gm, val_data, run, world, say)


def _resume_hint(ckpt: Path | None) -> str:
    has = ckpt is not None and ckpt.exists()
    return f"during tailoring; resume with --resume (checkpoint {ckpt})" if has else "during tailoring"


class _Epoch:
    """One training epoch of :func:`tailor`: the steps over a seeded permutation of the data
    (each rank its strided share under DDP), the scale-free loss with the centroids held fixed."""

    def __init__(self, gm: KmModel, train_mod: nn.Module, data: Dataset[Any], params: list[nn.Parameter],
                 opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, run: _Run, steps: int,
                 aug: str, progress: Progress | None) -> None:
        self.gm, self.train_mod, self.data, self.params = gm, train_mod, data, params
        self.opt, self.sched, self.gen, self.run, self.steps, self.progress = opt, sched, gen, run, steps, progress
        self.n = len(data)  # type: ignore[arg-type]
        self.tensors = as_tensors(data) if _world()[1] == 1 else None  # in-memory data: sliced; else per item
        x0 = torch.as_tensor(data[0][0])
        self.aug, self.pad, self.flip = aug, 4 if x0.shape[-1] >= 32 else 2, aug == "crop-flip"

    def order(self) -> torch.Tensor:
        """This rank's indices for the epoch (the permutation padded to a multiple of the world)."""
        rank, world = _world()
        order = torch.randperm(self.n, generator=self.gen)
        if world > 1:
            per_rank = math.ceil(self.n / world)
            order = torch.cat([order, order[: per_rank * world - self.n]])[rank::world]
        return order

    def train(self, epoch: int, got: Signals, ckpt: Path | None) -> list[float]:
        """Train one epoch; the all-reduced sums of loss, scatter, CE, correct and seen items."""
        cfg, dev, run = self.run.cfg, self.run.device, self.run
        acc = torch.zeros(5, dtype=torch.float64, device=dev)  # loss, scatter, ce, correct, seen
        st = run.state.to(dev) if run.state is not None else None
        with eval_mode(self.gm.backbone, cfg.freeze_bn):
            for step, xb, yb in batches(self.data, self.tensors, self.order(), cfg.batch_size, cfg.workers, dev):
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                if self.aug == "crop-flip":
                    xb = crop_flip(xb, self.gen, pad=self.pad, flip=self.flip)
                if run.cl and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast(dev, run.amp):
                    f = features(self.train_mod, xb)
                loss, scatter, ce, lg = _step_loss(self.gm.head, st, f.float(), yb, cfg)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip > 0:
                    nn.utils.clip_grad_norm_(self.params, cfg.clip)
                self.opt.step()
                self.sched.step()
                with torch.no_grad():
                    nb = float(len(yb))
                    acc += torch.stack([loss.detach().double() * nb, scatter.double() * nb, ce.double() * nb,
                                        (lg.argmax(1) == yb).sum().double(),
                                        torch.tensor(nb, dtype=torch.float64, device=dev)])
                if self.progress and (step % 20 == 19 or step == self.steps - 1):
                    a = acc.tolist()
                    self.progress(epoch * self.steps + step + 1, self.steps * cfg.epochs,
                                  f"ep {epoch + 1} loss {a[0] / max(a[4], 1):.3f} acc {a[3] / max(a[4], 1):.3f}")
                got.check(lambda: _resume_hint(ckpt))
        _all_reduce(acc)
        a = acc.tolist()
        if not math.isfinite(a[0]):
            raise KmtoolsError("tailoring diverged (loss is NaN/Inf): lower --lr or disable --amp")
        return a


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
        res.gamma_fit = fit_gamma(best, val, cfg, run.device, run.amp)
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

