"""The streaming passes of :func:`kmtools.evaluate.evaluate`: noise images, the
in-distribution pass (per-input scalars, Theorem 2 margins, prototypes/outliers of Fig. 3),
the OOD pass and the validation pass the recommended threshold is fitted on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kmtools.device import autocast
from kmtools.errors import ConfigError, DataError
from kmtools.evaluate_margins import _log_confidence, boundary_distance, theorem2_margin
from kmtools.evaluate_result import GAUSSIAN_MEAN, GAUSSIAN_STD, NOISE_KINDS, Progress, _empty
from kmtools.features import loader
from kmtools.models.core import KmModel, head_confidences

# --------------------------------------------------------------------------- noise


def noise_batches(
    kind: str, n: int, shape: Sequence[int], *, seed: int = 0, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """``n`` seeded noise images of ``shape`` in batches (CPU, float32, values in [0, 1]).

    ``uniform``: every value from U[0, 1]; ``gaussian``: from N(0.5, 0.25²), clipped to
    [0, 1]. The same seed gives the same images whatever the batch size.
    """
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise must be one of {', '.join(NOISE_KINDS)}, not {kind!r}")
    if n < 0:
        raise ConfigError(f"the number of noise images must be non-negative, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    shape = tuple(int(s) for s in shape)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        if kind == "uniform":
            yield torch.rand((m, *shape), generator=g)
        else:
            yield (torch.randn((m, *shape), generator=g) * GAUSSIAN_STD + GAUSSIAN_MEAN).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- streaming


class _Extremes:
    """Running top-k (prototypes) and bottom-k (outliers) per class, with their images.

    Holds at most 2·k images per class; every stored image is a copy, never a view of a
    batch (which would keep the whole batch alive). Each batch is merged with a handful of
    whole-batch tensor operations (no loop over classes). Ties keep the earlier input."""

    def __init__(self, k: int) -> None:
        self.k = k
        # (confidence, dataset index, label, image) of the kept inputs, grouped by label
        self.top: tuple[torch.Tensor, ...] | None = None
        self.bottom: tuple[torch.Tensor, ...] | None = None

    def _keep(self, conf: torch.Tensor, labels: torch.Tensor, descending: bool) -> torch.Tensor:
        """Row indices of the first k per label by ``conf`` (stable), grouped by ascending label."""
        order = torch.sort(conf, descending=descending, stable=True).indices
        order = order[torch.sort(labels[order], stable=True).indices]
        lab = labels[order]
        pos = torch.arange(len(lab))
        first = torch.ones(len(lab), dtype=torch.bool)
        first[1:] = lab[1:] != lab[:-1]
        group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
        return order[pos - group_start < self.k]

    def _merge(self, store: tuple[torch.Tensor, ...] | None, conf: torch.Tensor, labels: torch.Tensor,
               idx: torch.Tensor, x: torch.Tensor, descending: bool) -> tuple[torch.Tensor, ...]:
        rows = self._keep(conf, labels, descending)
        imgs = x[rows.to(x.device)].detach().float().cpu().clone()
        cand = (conf[rows], idx[rows], labels[rows], imgs)
        if store is None:
            return cand
        both = tuple(torch.cat([a, b]) for a, b in zip(store, cand, strict=True))
        keep = self._keep(both[0], both[2], descending)
        return tuple(t[keep] for t in both)

    def update(self, conf: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> None:
        """``conf``, ``labels``, ``idx``: (B,) on the CPU; ``x``: the batch (any device)."""
        if self.k <= 0 or len(labels) == 0:
            return
        conf, labels, idx = conf.float(), labels.long(), idx.long()
        self.top = self._merge(self.top, conf, labels, idx, x, True)
        self.bottom = self._merge(self.bottom, conf, labels, idx, x, False)

    @staticmethod
    def arrays(store: tuple[torch.Tensor, ...] | None, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
        """``(index, confidence, label, image)`` arrays, classes ascending."""
        if store is None:
            return (_empty(np.int64), _empty(np.float32), _empty(np.int64),
                    np.zeros((0, *shape), dtype=np.float32))
        conf, idx, labels, imgs = store
        return idx.numpy(), conf.numpy(), labels.numpy(), imgs.numpy()


def _as_dataset(data: Any) -> tuple[Dataset[Any], str | None, tuple[int, ...] | None]:
    """``(dataset, name, input_shape)`` of a Dataset or a kmtools DataInfo."""
    inner = getattr(data, "dataset", None)
    if inner is not None and hasattr(data, "input_shape"):
        return inner, str(getattr(data, "name", "dataset")), tuple(data.input_shape)
    return data, None, None


def _ood_sources(ood: Any, n_noise: int) -> list[tuple[str, Any, int]]:
    """``[(name, "uniform"|"gaussian"|Dataset, number of inputs)]`` from ``evaluate``'s ``ood``.

    Names are the noise kind, the DataInfo's name, or ``dataset`` for a bare Dataset;
    a repeated name gets a suffix (``dataset-2``)."""
    items = list(ood) if isinstance(ood, (list, tuple)) else ([] if ood is None else [ood])
    out: list[tuple[str, Any, int]] = []
    for item in items:
        src: Any
        if isinstance(item, str):
            key = item.strip().lower()
            if key not in NOISE_KINDS:
                raise ConfigError(
                    f"ood must be {' or '.join(NOISE_KINDS)}, a Dataset, or None; got {item!r}"
                )
            if n_noise < 0:
                raise ConfigError(f"n_noise must be non-negative, got {n_noise}")
            name, src, n = key, key, int(n_noise)
        else:
            src, ds_name, _ = _as_dataset(item)
            name, n = ds_name or "dataset", len(src)
        taken = {o[0] for o in out}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        out.append((name, src, n))
    return out


def _predict(head: nn.Module, f: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The predicted class: argmax of the head's smooth decision scores where it has them
    (``decision_scores``, else ``log_kappa`` for a Gauss head: the nearest centroid even when
    every κ underflows to 0), else argmax of the scores."""
    for name in ("decision_scores", "log_kappa"):
        fn = getattr(head, name, None)
        if callable(fn):
            out: torch.Tensor = fn(f)
            return out.argmax(1)
    return scores.argmax(1)


@torch.no_grad()
def _forward(
    model: KmModel, x: torch.Tensor, device: torch.device, amp: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features float32, confidences (n, c) float32, predictions) for one batch. The backbone
    may run under bf16 autocast; the head always runs in float32."""
    with autocast(device, amp):
        f = model.features(x)
    f = f.float()
    scores = model.head(f).float()
    conf = head_confidences(model.head, scores).float()
    return f, conf, _predict(model.head, f, scores)


def _confidence_correct(model: KmModel, data: Any, batch_size: int, dev: torch.device, amp: bool,
                        workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted-class confidence and correctness on validation data (for the threshold)."""
    dataset, _, _ = _as_dataset(data)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the validation data is empty")
    confs, oks = [], []
    for x, y in loader(dataset, batch_size, dev, workers):
        _, conf, pred = _forward(model, x.to(dev), dev, amp)
        confs.append(conf.gather(1, pred[:, None])[:, 0].cpu().numpy())
        oks.append((pred.cpu() == torch.as_tensor(y).long()).numpy())
    return np.concatenate(confs).astype(np.float32), np.concatenate(oks)


@dataclass
class _Scalars:
    """What the in-distribution pass keeps per input (lists of per-batch arrays)."""

    logs: list[np.ndarray] = field(default_factory=list)
    bounds: list[np.ndarray] = field(default_factory=list)
    confs: list[np.ndarray] = field(default_factory=list)
    lconfs: list[np.ndarray] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    margins: list[np.ndarray] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    done: int = 0


def _in_distribution(
    model: KmModel, dataset: Any, head64: nn.Module, space: tuple[str, torch.Tensor, bool] | None,
    extremes: _Extremes, shape: tuple[int, ...] | None, *, batch_size: int, dev: torch.device, amp: bool,
    workers: int, progress: Progress | None, total: int,
) -> _Scalars:
    """One pass over ``dataset``: per-input confidences, predictions, log-confidences, exact
    boundary distances and Theorem 2 margins; prototypes and outliers into ``extremes``."""
    c = model.num_classes
    cents = space[1].to(dev) if space is not None else None
    out = _Scalars(shape=shape)
    for x, y in loader(dataset, batch_size, dev, workers):
        x = x.to(dev, non_blocking=True)
        y = torch.as_tensor(y).long()
        if out.shape is None:
            out.shape = tuple(x.shape[1:])
        f, conf, pred = _forward(model, x, dev, amp)
        if not bool(torch.isfinite(f).all()):
            raise DataError("features contain NaN/Inf: check the input data and normalisation (--mean/--std)")
        yd = y.to(dev)
        if int(y.min()) < 0 or int(y.max()) >= conf.shape[1]:
            raise DataError(
                f"labels must lie in 0..{conf.shape[1] - 1}, found {int(y.min())}..{int(y.max())}"
            )
        pc = conf.gather(1, pred[:, None]).squeeze(1)
        lc = conf.gather(1, yd[:, None]).squeeze(1)
        with torch.no_grad():
            f64 = f.double()
            out.logs.append(_log_confidence(head64, f64, pred).cpu().numpy())
            bd = boundary_distance(f64, head64, pred) if c >= 2 else None
        if bd is not None:
            out.bounds.append(bd.cpu().numpy())
        out.confs.append(pc.cpu().numpy())
        out.lconfs.append(lc.cpu().numpy())
        out.preds.append(pred.cpu().numpy())
        out.labels.append(y.numpy())
        if space is not None and cents is not None:
            fs = torch.cat([f, torch.ones(len(f), 1, device=f.device)], 1) if space[2] else f
            out.margins.append(theorem2_margin(fs, cents, pred).cpu().numpy())
        idx = torch.arange(out.done, out.done + len(y))
        extremes.update(lc.cpu(), y, idx, x)
        out.done += len(y)
        if progress:
            progress(out.done, total)
    return out


def _ood_pass(
    model: KmModel, sources: list[tuple[str, Any, int]], head64: nn.Module, shape: tuple[int, ...] | None, *,
    seed: int, batch_size: int, dev: torch.device, amp: bool, workers: int, progress: Progress | None,
    done: int, total: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predicted-class confidence, prediction and log-confidence on each OOD source."""
    ood_conf: dict[str, np.ndarray] = {}
    ood_pred: dict[str, np.ndarray] = {}
    ood_log: dict[str, np.ndarray] = {}
    for name, src, n_src in sources:
        batches: Any
        if isinstance(src, str):
            if shape is None:  # pragma: no cover - shape is known after one batch
                raise ConfigError("cannot make noise images: the model's input shape is unknown")
            batches = noise_batches(src, n_src, shape, seed=seed, batch_size=batch_size)
        else:
            batches = (b[0] for b in loader(src, batch_size, dev, workers))
        nc, npd, nlog = [], [], []
        for xb in batches:
            xb = xb.to(dev, non_blocking=True)
            if shape is not None and tuple(xb.shape[1:]) != tuple(shape):
                raise DataError(
                    f"OOD inputs ({name}) have shape {tuple(xb.shape[1:])} but the model expects {tuple(shape)}"
                )
            fo, conf, pred = _forward(model, xb, dev, amp)
            nc.append(conf.gather(1, pred[:, None]).squeeze(1).cpu().numpy())
            with torch.no_grad():
                nlog.append(_log_confidence(head64, fo.double(), pred).cpu().numpy())
            npd.append(pred.cpu().numpy())
            done += len(xb)
            if progress:
                progress(done, total)
        ood_conf[name] = np.concatenate(nc).astype(np.float32) if nc else _empty(np.float32)
        ood_pred[name] = np.concatenate(npd).astype(np.int64) if npd else _empty(np.int64)
        ood_log[name] = np.concatenate(nlog).astype(np.float64) if nlog else _empty(np.float64)
    return ood_conf, ood_pred, ood_log


def _threshold_fit(
    model: KmModel, val_data: Any, total_in: int, done: int, val_seed: int, *, batch_size: int,
    dev: torch.device, amp: bool, workers: int,
) -> dict[str, Any]:
    """Where the recommended threshold is fitted: ``val_data``, else a seeded half of the
    evaluated inputs (reported on the other half), else all of them."""
    val_conf = val_ok = fit_mask = None
    fit = "evaluated set (too few inputs to split)"
    if val_data is not None:
        val_conf, val_ok = _confidence_correct(model, val_data, batch_size, dev, amp, workers)
        fit = "validation data"
    elif done >= 2:
        fit_mask = np.zeros(total_in, dtype=bool)
        fit_mask[np.random.default_rng(val_seed).permutation(total_in)[: total_in // 2]] = True
        fit = f"seeded half of the evaluated set (seed {val_seed}); reported on the other half"
    return {"val_confidence": val_conf, "val_correct": val_ok, "fit_mask": fit_mask, "threshold_fit": fit}
