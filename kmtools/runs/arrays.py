"""The ``.npz`` arrays a run writes beside its JSON document, for the report's figures.

The names are the schema :mod:`kmtools.report.views` reads (``<key>_<name>`` per model,
``key`` from :func:`kmtools.report.layout.model_keys`). The attack runs
(:mod:`kmtools.runs.attacks`) and ``kmtools demo`` write through these functions; ``kmtools
evaluate`` writes the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kmtools.attacks import FGSMResult, OnePixelResult
from kmtools.evaluate import EvalResult


def onepixel_arrays(x: torch.Tensor, y: torch.Tensor, res: Mapping[str, OnePixelResult]) -> dict[str, np.ndarray]:
    """``attack-onepixel.npz``: the inputs, labels and per model the adversarial images, the
    changed pixels, confidences before/after, success, skipped (misclassified), new
    predictions and the outlier flags."""
    arrays: dict[str, np.ndarray] = {"x": x.numpy().astype(np.float32), "labels": y.numpy()}
    for key, r in res.items():
        arrays |= {
            f"{key}_x_adv": r.x_adv.cpu().numpy().astype(np.float32),
            f"{key}_pixel": r.pixel.numpy().astype(np.float32),
            f"{key}_conf_before": r.conf_before.numpy(),
            f"{key}_conf_adv": r.conf_adv.numpy(),
            f"{key}_success": r.success.numpy(),
            f"{key}_skipped": r.skipped.numpy(),
            f"{key}_pred_adv": r.adv_labels.numpy(),
            f"{key}_outlier": r.outlier.numpy(),
        }
    return arrays


def fgsm_arrays(y: torch.Tensor, eps: Sequence[float], res: Mapping[str, FGSMResult]) -> dict[str, np.ndarray]:
    """``attack-fgsm.npz``: labels, ε and per model the predictions and confidences per ε and
    the clean predictions."""
    arrays: dict[str, np.ndarray] = {"labels": y.numpy(), "eps": np.asarray(eps)}
    for key, r in res.items():
        arrays |= {
            f"{key}_preds": r.preds.numpy(),
            f"{key}_confs": r.confs.numpy(),
            f"{key}_clean_preds": r.clean_preds.numpy(),
        }
    return arrays


EVAL_PER_MODEL = ("confidence", "label_confidence", "correct", "prediction", "margin", "input_bound",
                  "noise_confidence", "noise_prediction", "reject_rate", "reject_accuracy", "reject_threshold")


def evaluate_arrays(evals: Mapping[str, EvalResult]) -> dict[str, np.ndarray]:
    """``evaluate.npz``: ``label``; ``<key>_<name>`` per model; ``<key>_ood_<source>_confidence``
    per OOD source; the prototypes/outliers (Fig. 3) of the Gauss network when there is one,
    else of the first model (``images``, ``labels``, ``images_confidence``)."""
    out: dict[str, np.ndarray] = {}
    first = next(iter(evals.values()))
    out["label"] = first.label
    for key, res in evals.items():
        for name, value in res.arrays().items():
            if name in EVAL_PER_MODEL or name.startswith("ood_"):
                out[f"{key}_{name}"] = value
    fig = evals["gauss" if "gauss" in evals else next(iter(evals))]
    for part in ("proto", "outlier"):
        for what in ("index", "conf", "labels", "images"):
            out[f"{part}_{what}"] = getattr(fig, f"{part}_{what}")
    out["images"] = np.concatenate([fig.proto_images, fig.outlier_images])
    out["labels"] = np.concatenate([fig.proto_labels, fig.outlier_labels])
    out["images_confidence"] = np.concatenate([fig.proto_conf, fig.outlier_conf])
    return out
