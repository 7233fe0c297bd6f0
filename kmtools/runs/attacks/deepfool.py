"""``kmtools attack deepfool`` as one library call: :func:`run_deepfool`, the minimal
perturbation r(x) that changes the prediction (Moosavi-Dezfooli et al. 2016,
:func:`kmtools.attacks.deepfool`), with the clean accuracy per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmtools.attacks import DeepFoolResult, deepfool
from kmtools.models import KmModel
from kmtools.models.scoring import class_confidences
from kmtools.runs.attacks.base import Attacked, AttackRun, AttackRunResult, Records, blocks
from kmtools.runs.attacks.figures import image_grid


def summarize(records: Records, y: torch.Tensor, lp: str, overshoot: float, threshold: float) -> dict[str, Any]:
    """:meth:`DeepFoolResult.summarize` of one model's records plus ``accuracy``, the share of
    inputs whose clean prediction (the record's ``label``) is the true label ``y``."""
    d = DeepFoolResult.summarize(records, lp, overshoot, threshold)
    pred = torch.tensor([r["label"] for r in records])
    d["accuracy"] = int((pred == y).sum()) / len(y) if len(y) else None
    return d


def run_deepfool(a: Attacked, run: AttackRun, *, lp: str = "l2", overshoot: float = 0.02, max_iter: int = 50,
                 candidates: int = 10, clip: bool = True, batch_size: int = 128) -> AttackRunResult:
    """DeepFool (``lp`` = l2 or linf; ``candidates`` 0 = all classes) on every input of ``a``
    with every model; writes ``attack-deepfool.{jsonl,run.json,json,npz}`` (with x + r(x) for
    ``kmtools geometry detect --adversarial``) and, for images, the figures of the 8 smallest
    perturbations when ``run`` has an out folder."""
    settings = run.settings(a, lp=lp, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip)
    paths = run.begin(a, settings)
    kw: dict[str, Any] = dict(candidates=candidates or None, overshoot=overshoot, max_iter=max_iter, norm=lp,
                              clip=(0.0, 1.0) if clip else None, device=run.device)
    ordered, new = run.run_blocks(a, "DeepFool", batch_size, lambda _k, m, idx: deepfool(m, a.x[idx], **kw).records())
    summaries = {key: summarize(ordered[key], a.y, lp, overshoot, m.threshold) for key, m in a.pairs()}
    doc = run.doc(a, "deepfool", summaries, new)
    files: list[Path] = []
    if run.rank == 0 and paths:
        arrays = _arrays(a, ordered, kw, batch_size)
        if a.x.dim() == 4:
            for key, m in a.pairs():
                _figure(a, m, ordered[key], kw, f"{key}: DeepFool ({lp}), smallest r(x); prediction conf → new "
                        "prediction conf", paths[f"png_{key}"])
        files = run.write(doc, paths, arrays, figures=a.x.dim() == 4)
    return AttackRunResult(doc, summaries, settings, files, run.rank)


def _arrays(a: Attacked, ordered: dict[str, Records], kw: dict[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """``attack-deepfool.npz``: inputs, labels and per model x + r(x) (recomputed: DeepFool is
    deterministic and the records hold only its summary), norms, predictions, steps."""
    arrays: dict[str, np.ndarray] = {"x": a.x.numpy().astype(np.float32), "labels": a.y.numpy()}
    for key, m in a.pairs():
        recs = ordered[key]
        adv = [deepfool(m, a.x[idx], **kw).x_adv.cpu() for idx in blocks(list(range(len(a.y))), batch_size)]
        if adv:
            arrays[f"{key}_x_adv"] = torch.cat(adv).numpy().astype(np.float32)
        arrays |= {
            f"{key}_norms": np.asarray([r["norm"] for r in recs], dtype=np.float32),
            f"{key}_pred": np.asarray([r["label"] for r in recs]),
            f"{key}_pred_adv": np.asarray([r["adv_label"] for r in recs]),
            f"{key}_iterations": np.asarray([r["iterations"] for r in recs]),
            f"{key}_converged": np.asarray([r["converged"] for r in recs], dtype=bool),
            f"{key}_conf_adv": np.asarray([r["conf_adv"] for r in recs], dtype=np.float32),
        }
    return arrays


def _figure(a: Attacked, m: KmModel, recs: Records, kw: dict[str, Any], title: str, path: Path) -> None:
    """The 8 flipped inputs with the smallest ‖r(x)‖ (recomputed: DeepFool is deterministic)."""
    flip = [i for i, r in enumerate(recs) if r["converged"] and r["iterations"] > 0]
    idx = sorted(flip, key=lambda i: (recs[i]["norm"], i))[:8]
    xs = a.x[idx]
    xa, cb, ca = xs, torch.zeros(0), torch.zeros(0)
    lab = adv = torch.zeros(0, dtype=torch.long)
    if idx:
        r8 = deepfool(m, xs, **kw)
        xa, ca = r8.x_adv.cpu(), r8.conf_adv.cpu()
        cb = class_confidences(m, xs.to(kw["device"])).amax(1).cpu()
        lab, adv = r8.labels.cpu(), r8.adv_labels.cpu()
    image_grid(xs, xa, lab, adv, cb, ca, list(range(len(idx))), a.classes, title, path, True, diff=True)
