"""Evaluate a classifier the way "Softmax is k-means" does (Sec. 4-5, Theorem 2, Figs. 1-3).

:func:`evaluate` streams a dataset through a :class:`~kmtools.models.KmModel` once (plus
once through each OOD source: noise images or another dataset) and keeps only a few scalars
per input, so it runs in bounded memory on any number of inputs. It reports:

* **accuracy** and **mean confidence** of the predicted class: the softmax probability for a
  softmax network, the Gauss confidence κ_k(x) = exp(-γ‖f_p(x) - C_k‖²) (Definition 1,
  Eq. 4) for a Gauss network; any other head's own ``confidences`` rule (Table 1 columns
  "accuracy" and "conf").
* **outlier rate** at the model's threshold (``model.threshold``, 1/c by default): the share
  of inputs whose predicted-class confidence is below it (Sec. 5: "a point is considered as
  an outlier if the Gauss confidence of the predicted class is smaller than 1/c"). A
  softmax confidence is never below 1/c, so a softmax network has outlier rate 0 there.
* **recommended threshold**: the 5th percentile of the predicted-class confidence over the
  correctly classified inputs, so that 95% of them stay above it.
* **OOD detection** (Sec. 5.2 / Fig. 3: "traditional networks generally classify a noise
  image with confidence higher than 0.9 ... a Gauss network reflects the outlier with
  confidences close to zero"): in-distribution inputs are the positives, noise images (or a
  second dataset) the negatives, the predicted-class confidence the score; AUROC and the
  false-positive rate at 95% true-positive rate. Noise images have the model's input shape:
  ``uniform`` draws every pixel from U[0, 1]; ``gaussian`` from N(0.5, 0.25²) clipped to
  [0, 1]. Both are in pixel space (before the model's normalisation), seeded.
* **Theorem 2 margin** per input (see :func:`theorem2_margin`), summarised by mean, median,
  min and 5th percentile; divided by a Lipschitz modulus L_p it is a certified lower bound
  on the size of an input perturbation that can change the prediction.
* the **most prototypical and most outlying** input of each class (Fig. 3).
* **reject options** on the confidence (prototype-layers paper, Sec. 7.4): the
  accuracy-reject curve, the cost-optimal threshold and Chow's rule, through
  :func:`kmtools.heads.reject.reject_curve`.

Per-sample arrays are kept in the :class:`EvalResult` for figures and reports.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kmtools.device import resolve as resolve_device
from kmtools.errors import ConfigError, DataError

# the stages live in three modules; their public names (and the helpers tests use) stay importable here
from kmtools.evaluate_margins import _log_confidence, _theorem2_space, boundary_distance, theorem2_margin  # noqa: F401
from kmtools.evaluate_result import (  # noqa: F401
    GAUSSIAN_MEAN,
    GAUSSIAN_STD,
    NOISE_KINDS,
    RECOMMENDED_PERCENTILE,
    REJECT_CURVE_POINTS,
    REJECT_RATES,
    TPR_LEVEL,
    EvalResult,
    Progress,
    recommended_threshold,
    summary,
)
from kmtools.evaluate_stream import (  # noqa: F401
    _as_dataset,
    _Extremes,
    _forward,
    _in_distribution,
    _ood_pass,
    _ood_sources,
    _threshold_fit,
    noise_batches,
)
from kmtools.models.core import KmModel
from kmtools.stats import auroc, fpr_at_tpr  # ranking metrics (ood.py uses them too)


def evaluate(
    model: KmModel,
    data: Dataset[Any] | Any,
    *,
    ood: Dataset[Any] | Any | str | Sequence[Any] | None = None,
    n_noise: int = 1000,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool = False,
    progress: Progress | None = None,
    lipschitz: float | None = None,
    per_class: int = 1,
    workers: int = 0,
    val_data: Dataset[Any] | Any | None = None,
    val_seed: int = 0,
    lipschitz_is_bound: bool = False,
    n_boot: int = 200,
) -> EvalResult:
    """Evaluate ``model`` on ``data`` (and OOD inputs) in one streaming pass.

    Args:
        model: any KmModel (softmax, Gauss or another head with a ``confidences`` rule).
        data: a Dataset of ``(x, y)`` in pixel space, or a kmtools ``DataInfo``.
        ood: ``"uniform"`` / ``"gaussian"`` for ``n_noise`` noise images of the model's input
            shape (see :func:`noise_batches`), a second Dataset/DataInfo (all its inputs are
            used; labels ignored), a list or tuple of several of these (each scored against
            ``data`` on its own), or None for no OOD evaluation.
        n_noise: number of noise images.
        batch_size, device, amp, workers: as for :func:`kmtools.features.extract`.
        seed: seed of the noise images.
        progress: ``progress(done, total)`` over in-distribution plus OOD inputs.
        lipschitz: a Lipschitz modulus L_p of x ↦ f_p(x) (pixel space, normalisation
            included); with it the Theorem 2 margin is also reported as an input-space bound.
        per_class: prototypes and outliers kept per class (paper Fig. 3).
        val_data: validation inputs the recommended threshold is fitted on; without them it
            is fitted on a seeded half of ``data`` (``val_seed``) and reported on the other.
        lipschitz_is_bound: ``lipschitz`` is a true upper bound (input-space distances are
            then bounds; otherwise they are labelled estimates).
        n_boot: bootstrap resamples for the OOD metrics' intervals (0: none).

    Theorem 2 is evaluated with the Gauss head's centroids C for a Gauss network, and with
    the equidistant centroids Z of Theorem 1 (bias-augmented features [f(x), 1], which have
    the same Lipschitz modulus as f) for a softmax network; other heads get no margin.

    Only per-input scalars and at most 2·``per_class`` images per class are kept; inputs
    are never accumulated.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if lipschitz is not None and not (math.isfinite(float(lipschitz)) and float(lipschitz) > 0):
        raise ConfigError(f"the Lipschitz modulus must be a positive number, got {lipschitz}")
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    dataset, _, data_shape = _as_dataset(data)
    total_in = len(dataset)  # type: ignore[arg-type]
    if total_in == 0:
        raise DataError("the dataset is empty: nothing to evaluate")
    sources = _ood_sources(ood, n_noise)
    model = model.to(dev).eval()
    c = model.num_classes
    space = _theorem2_space(model) if c >= 2 else None
    total = total_in + sum(n for _, _, n in sources)
    head64 = copy.deepcopy(model.head).double()
    extremes = _Extremes(per_class)
    ins = _in_distribution(model, dataset, head64, space, extremes, model.input_shape or data_shape,
                           batch_size=batch_size, dev=dev, amp=amp, workers=workers, progress=progress, total=total)
    ood_conf, ood_pred, ood_log = _ood_pass(
        model, sources, head64, ins.shape, seed=seed, batch_size=batch_size, dev=dev, amp=amp, workers=workers,
        progress=progress, done=ins.done, total=total,
    )
    fit = _threshold_fit(model, val_data, total_in, ins.done, val_seed, batch_size=batch_size, dev=dev, amp=amp,
                         workers=workers)
    img_shape = tuple(ins.shape or ())
    p_idx, p_conf, p_lab, p_img = extremes.arrays(extremes.top, img_shape)
    o_idx, o_conf, o_lab, o_img = extremes.arrays(extremes.bottom, img_shape)
    return EvalResult(
        head_kind=model.head_kind,
        num_classes=c,
        threshold=float(model.threshold),
        confidence=np.concatenate(ins.confs).astype(np.float32),
        label_confidence=np.concatenate(ins.lconfs).astype(np.float32),
        prediction=np.concatenate(ins.preds).astype(np.int64),
        label=np.concatenate(ins.labels).astype(np.int64),
        margin=np.concatenate(ins.margins).astype(np.float64) if ins.margins else None,
        theorem2_centroids=space[0] if space is not None else None,
        lipschitz=float(lipschitz) if lipschitz is not None else None,
        ood_confidence=ood_conf,
        ood_prediction=ood_pred,
        log_confidence=np.concatenate(ins.logs).astype(np.float64),
        ood_log_confidence=ood_log,
        boundary=np.concatenate(ins.bounds).astype(np.float64) if ins.bounds else None,
        lipschitz_is_bound=bool(lipschitz_is_bound),
        n_boot=n_boot,
        proto_index=p_idx, proto_conf=p_conf, proto_labels=p_lab, proto_images=p_img,
        outlier_index=o_idx, outlier_conf=o_conf, outlier_labels=o_lab, outlier_images=o_img,
        **fit,
    )


__all__ = [
    "GAUSSIAN_MEAN",
    "GAUSSIAN_STD",
    "NOISE_KINDS",
    "EvalResult",
    "auroc",
    "boundary_distance",
    "evaluate",
    "fpr_at_tpr",
    "noise_batches",
    "recommended_threshold",
    "summary",
    "theorem2_margin",
]
