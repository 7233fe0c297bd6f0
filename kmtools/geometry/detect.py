"""Detecting small adversarial perturbations from the sign of the curvature (Sec. V, Alg. 2).

Algorithm 2 (Fawzi et al.), for an input x with prediction k̂ and L classes:

1. F_i = s_i - s_k̂ for every class i ≠ k̂ (line 3; s are decision scores);
2. v_1, …, v_T iid uniform on the unit sphere S^{d-1} (line 4), shared by all i;
3. ρ = 1/(L T) Σ_{i≠k̂} Σ_j v_jᵀ G_{F_i}(x) v_j (line 5), with G as in
   :mod:`kmtools.geometry.curvature` evaluated at x itself (the paper's approximation
   G(z) ≈ G(x), "assuming x is sufficiently close to the decision boundary");
4. ρ < t: not perturbed; otherwise perturbed, and the recovered label is
   argmax_{i≠k̂} Σ_j v_jᵀ G_{F_i} v_j, the class with the highest positive curvature
   (line 7; the paper's listing sets ``perturbed ← false`` in both branches, a typo).

Sign convention (see :mod:`kmtools.geometry.curvature`): F_i = s_i - s_k̂, so clean
inputs are expected to have ρ < 0 and perturbed inputs ρ > 0 (Sec. V text, Alg. 2).
Table II states the same finding with the opposite sign (F = s_k̂ - s_i).

Fig. 8 plots, over the threshold t, "true positives" = the fraction of *clean* inputs
declared clean (ρ < t) against "false positives" = the fraction of *perturbed* inputs
declared clean (ρ < t). :func:`evaluate_detection` computes that curve, its area, the
operating point t = 0, and the label-recovery accuracy (paper: 92%, 88% and 74% for
GoogLeNet, CaffeNet and VGG-19 at t = 0).

Adversarial sets on disk (:func:`save_adversarial_set`, :func:`load_adversarial_set`)
are ``.npz`` or ``.safetensors`` files with tensors ``x_adv`` (N, ...) float in the
model's input space and ``labels`` (N,) int — the labels the attack moved the inputs
away from (what recovery should return) — and optionally ``x`` (N, ...) the clean inputs
and ``adv_labels`` (N,) the predictions at ``x_adv``; see docs/geometry.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kmtools.attacks.deepfool import deepfool
from kmtools.errors import ConfigError, DataError
from kmtools.geometry.curvature import (
    BoundaryOperator,
    HvpMethod,
    default_fd_step,
    mean_curvature,
    resolve_method,
)
from kmtools.geometry.distance import boundary_points
from kmtools.models.scoring import decision_scores, eval_mode, model_device

Progress = Callable[[int, int], None]

__all__ = [
    "AdversarialSet",
    "AsymmetryResult",
    "DetectionEvaluation",
    "DetectionResult",
    "average_curvatures",
    "boundary_asymmetry",
    "detect",
    "evaluate_detection",
    "load_adversarial_set",
    "save_adversarial_set",
]


# --------------------------------------------------------------------------- Algorithm 2


def average_curvatures(
    model: nn.Module,
    x: torch.Tensor,
    *,
    samples: int = 10,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """(1/T) Σ_j v_jᵀ G_{F_i}(x) v_j for every class i ≠ k̂(x) (Algorithm 2, line 5).

    Returns ``(curv (N, L) with NaN at the predicted class, predictions (N,), method used,
    fd step)``. v_j are uniform on S^{d-1} as in the paper (expectation tr(G)/d).
    All L - 1 class pairs of a batch are evaluated as one batch of B (L - 1) rows.
    """
    dev = model_device(model, device)
    if not x.is_floating_point():
        x = x.float()
    x = x.to(dev)
    n = x.shape[0]
    h = float(fd_step) if fd_step is not None else default_fd_step(x)
    gen = torch.Generator().manual_seed(seed)
    bs = n if not batch_size else max(1, int(batch_size))
    curvs, preds = [], []
    used = str(method)
    with eval_mode(model):
        for start in range(0, n, bs):
            xb = x[start : start + bs]
            b = xb.shape[0]
            with torch.no_grad():
                s = decision_scores(model, xb)
            L = s.shape[1]
            if L < 2:
                raise ConfigError("detection needs at least 2 classes")
            k = s.argmax(1)
            ar = torch.arange(L, device=dev).expand(b, L)
            others = ar[ar != k[:, None]].view(b, L - 1)  # (b, L-1), the classes i != k̂
            rows_x = xb.repeat_interleave(L - 1, dim=0)
            rows_i = others.flatten()
            rows_k = k.repeat_interleave(L - 1)
            if start == 0:
                used = resolve_method(model, rows_x, rows_i, rows_k, used)
            op = BoundaryOperator(model, rows_x, rows_i, rows_k, used, h)
            d = op.dim
            acc = torch.zeros(b, L - 1, dtype=op.grad.dtype, device=dev)
            for _ in range(samples):
                v = torch.randn(b, d, generator=gen, dtype=op.grad.dtype).to(dev)
                v = v / v.norm(dim=1, keepdim=True)
                acc += op.quad(v.repeat_interleave(L - 1, dim=0)).view(b, L - 1)
            acc /= max(samples, 1)
            full = torch.full((b, L), math.nan, dtype=acc.dtype, device=dev)
            full.scatter_(1, others, acc)
            curvs.append(full.cpu())
            preds.append(k.cpu())
            if progress is not None:
                progress(min(start + bs, n), n)
    if not curvs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), used, h
    return torch.cat(curvs), torch.cat(preds), used, h


@dataclass
class DetectionResult:
    """Algorithm 2 on N inputs.

    Attributes:
        rho: (N,) ρ = 1/(L T) Σ_{i≠k̂} Σ_j v_jᵀ G_{F_i} v_j.
        curvatures: (N, L) per-class averages (1/T) Σ_j v_jᵀ G_{F_i} v_j, NaN at k̂.
        predictions: (N,) k̂(x).
        perturbed: (N,) ρ ≥ threshold.
        candidates: (N,) argmax_{i≠k̂} of ``curvatures`` (the label Algorithm 2 would return).
        recovered: (N,) ``candidates`` where perturbed, else the prediction.
    """

    rho: torch.Tensor
    curvatures: torch.Tensor
    predictions: torch.Tensor
    perturbed: torch.Tensor
    candidates: torch.Tensor
    recovered: torch.Tensor
    threshold: float
    method: str
    fd_step: float | None
    samples: int

    def __len__(self) -> int:
        return int(self.rho.shape[0])

    def to_dict(self) -> dict[str, Any]:
        n = len(self)
        return {
            "inputs": n,
            "threshold": self.threshold,
            "flagged": int(self.perturbed.sum()),
            "flagged_rate": float(self.perturbed.float().mean()) if n else None,
            "rho_mean": float(self.rho.mean()) if n else None,
            "rho_median": float(self.rho.median()) if n else None,
            "hvp": self.method,
            "fd_step": self.fd_step,
            "samples": self.samples,
            "sign_convention": "F_i = s_i - s_pred; clean expected rho < 0, perturbed rho > 0",
        }

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "index": n,
                "prediction": int(self.predictions[n]),
                "rho": float(self.rho[n]),
                "perturbed": bool(self.perturbed[n]),
                "recovered": int(self.recovered[n]),
            }
            for n in range(len(self))
        ]


def _from_curvatures(curv: torch.Tensor, pred: torch.Tensor, threshold: float) -> tuple[torch.Tensor, ...]:
    L = curv.shape[1]
    rho = torch.nan_to_num(curv, nan=0.0).sum(1) / L
    cand = torch.nan_to_num(curv, nan=-math.inf).argmax(1)
    pert = rho >= threshold
    return rho, pert, cand, torch.where(pert, cand, pred)


def detect(
    model: nn.Module,
    x: torch.Tensor,
    *,
    threshold: float = 0.0,
    samples: int = 10,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> DetectionResult:
    """Algorithm 2: flag inputs whose average boundary curvature ρ is ≥ ``threshold``.

    Args:
        threshold: t of Algorithm 2 (0 in the paper's sign analysis).
        samples: T, random directions per input (shared by the L - 1 boundaries).
        method, fd_step: Hessian-vector products, see :mod:`kmtools.geometry.curvature`.
            Pass the same ``fd_step`` for inputs you want to compare (the default depends
            on the batch's value range).
    """
    curv, pred, used, h = average_curvatures(
        model, x, samples=samples, method=method, fd_step=fd_step, seed=seed,
        batch_size=batch_size, device=device, progress=progress,
    )
    rho, pert, cand, rec = _from_curvatures(curv, pred, threshold)
    return DetectionResult(
        rho, curv, pred, pert, cand, rec, float(threshold), used, h if used == "fd" else None, samples
    )


@dataclass
class DetectionEvaluation:
    """Fig. 8 and the label-recovery figure for a clean and a perturbed set.

    ``tp`` (clean declared clean) and ``fp`` (perturbed declared clean) per threshold,
    ascending thresholds; ``auc`` the area under tp(fp); at t = 0: ``tp0``, ``fp0``;
    ``recovery_all``: argmax-curvature label = original label over all perturbed inputs;
    ``recovery_detected``: the same over perturbed inputs flagged at t = 0.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    auc: float
    tp0: float
    fp0: float
    best_threshold: float
    best_balanced_accuracy: float
    recovery_all: float | None
    recovery_detected: float | None
    clean: int
    perturbed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self, max_points: int = 200) -> dict[str, Any]:
        m = len(self.thresholds)
        idx = np.unique(np.linspace(0, m - 1, min(max_points, m)).astype(int))
        return {
            "clean": self.clean,
            "perturbed": self.perturbed,
            "auc": self.auc,
            "t0": {"true_positive": self.tp0, "false_positive": self.fp0,
                   "clean_negative": self.tp0, "perturbed_positive": 1.0 - self.fp0},
            "best_threshold": self.best_threshold,
            "best_balanced_accuracy": self.best_balanced_accuracy,
            "recovery_all": self.recovery_all,
            "recovery_detected": self.recovery_detected,
            "roc": {
                "threshold": [float(v) for v in self.thresholds[idx]],
                "true_positive": [float(v) for v in self.tp[idx]],
                "false_positive": [float(v) for v in self.fp[idx]],
            },
            "notes": list(self.notes),
        }


def evaluate_detection(
    clean: DetectionResult, perturbed: DetectionResult, original_labels: torch.Tensor | None = None
) -> DetectionEvaluation:
    """TP/FP curve over t (Fig. 8) and label recovery (Sec. V) from two Algorithm 2 runs.

    ``original_labels`` (one per perturbed input) are the labels recovery should return;
    without them recovery is not reported.
    """
    rc = clean.rho.double().numpy()
    rp = perturbed.rho.double().numpy()
    if not len(rc) or not len(rp):
        raise DataError("detection evaluation needs at least one clean and one perturbed input")
    ts = np.unique(np.concatenate([rc, rp]))
    ts = np.concatenate([[-np.inf], ts, [np.inf]])
    # declared clean when rho < t
    tp = np.searchsorted(np.sort(rc), ts, side="left") / len(rc)
    fp = np.searchsorted(np.sort(rp), ts, side="left") / len(rp)
    auc = float(np.trapezoid(tp, fp))
    tp0 = float((rc < 0).mean())
    fp0 = float((rp < 0).mean())
    bal = (tp + (1 - fp)) / 2
    j = int(np.argmax(bal))
    rec_all = rec_det = None
    if original_labels is not None:
        ol = original_labels.cpu().long()
        if ol.shape[0] != len(rp):
            raise DataError(f"{ol.shape[0]} original labels for {len(rp)} perturbed inputs")
        hit = perturbed.candidates.cpu() == ol
        rec_all = float(hit.float().mean())
        det = torch.from_numpy(rp >= 0)
        rec_det = float(hit[det].float().mean()) if bool(det.any()) else None
    return DetectionEvaluation(
        thresholds=ts, tp=tp, fp=fp, auc=auc, tp0=tp0, fp0=fp0, best_threshold=float(ts[j]),
        best_balanced_accuracy=float(bal[j]), recovery_all=rec_all, recovery_detected=rec_det,
        clean=len(rc), perturbed=len(rp),
    )


# --------------------------------------------------------------------------- Table II


@dataclass
class AsymmetryResult:
    """Table II: the sign of κ̄ at the nearest boundary point of clean and perturbed inputs.

    ``clean``: (N,) κ̄(z), z = x + r(x); ``perturbed``: (M,) κ̄(z'), z' = x_pert + r(x_pert);
    both with F = s_other - s_own. The paper's finding reads, in this convention,
    clean κ̄ < 0 and perturbed κ̄ > 0.
    """

    clean: torch.Tensor
    perturbed: torch.Tensor
    method: str
    fd_step: float | None
    samples: int

    def to_dict(self) -> dict[str, Any]:
        c = self.clean[~self.clean.isnan()]
        p = self.perturbed[~self.perturbed.isnan()]
        return {
            "clean": int(c.numel()),
            "perturbed": int(p.numel()),
            "clean_negative": float((c < 0).float().mean()) if c.numel() else None,
            "perturbed_positive": float((p > 0).float().mean()) if p.numel() else None,
            "clean_mean": float(c.mean()) if c.numel() else None,
            "perturbed_mean": float(p.mean()) if p.numel() else None,
            "hvp": self.method,
            "fd_step": self.fd_step,
            "samples": self.samples,
            "sign_convention": "F = s_other - s_own (Table II prints the opposite sign)",
        }


def _kappa_at_boundary(
    model: nn.Module, x: torch.Tensor, samples: int, method: str, h: float, seed: int,
    batch_size: int | None, dev: torch.device, overshoot: float, max_iter: int,
) -> tuple[torch.Tensor, str]:
    bp = boundary_points(model, x, overshoot=overshoot, max_iter=max_iter, batch_size=batch_size, device=dev)
    out = torch.full((x.shape[0],), math.nan)
    idx = bp.converged.nonzero().flatten()
    used = method
    if idx.numel():
        kap, used, _ = mean_curvature(
            model, bp.z[idx], bp.adv_labels[idx], bp.labels[idx], samples=samples, method=method,
            fd_step=h, seed=seed, batch_size=batch_size, device=dev,
        )
        out[idx.cpu()] = kap.float()
    return out, used


def boundary_asymmetry(
    model: nn.Module,
    x: torch.Tensor,
    *,
    x_pert: torch.Tensor | None = None,
    samples: int = 20,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    overshoot: float = 0.02,
    max_iter: int = 50,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> AsymmetryResult:
    """Table II: fractions of clean / perturbed inputs whose nearest boundary has κ̄ < 0 / > 0.

    ``x_pert`` defaults to the DeepFool-perturbed inputs x + r(x) (with ``overshoot``), as
    in the paper. The same finite-difference step (from ``x``) is used for both sets.
    """
    dev = model_device(model, device)
    x = (x if x.is_floating_point() else x.float()).to(dev)
    h = float(fd_step) if fd_step is not None else default_fd_step(x)
    if x_pert is None:
        with eval_mode(model):
            df = deepfool(model, x, overshoot=overshoot, max_iter=max_iter, batch_size=batch_size, device=dev)
            x_pert = df.x_adv
    args = (batch_size, dev, overshoot, max_iter)
    kc, used = _kappa_at_boundary(model, x, samples, str(method), h, seed, *args)
    kp, _ = _kappa_at_boundary(model, x_pert.to(dev), samples, used, h, seed + 1, *args)
    return AsymmetryResult(kc, kp, used, h if used == "fd" else None, samples)


# --------------------------------------------------------------------------- adversarial sets


@dataclass
class AdversarialSet:
    """Perturbed inputs to test a detector on; see the module docstring for the formats.

    ``labels`` are what label recovery should return (the predictions before the attack
    when the file has them, else the dataset labels); ``x`` the clean inputs the rows came
    from, when known; ``meta`` says where the set came from (``source``, ``key``, ``dropped``).
    """

    x_adv: torch.Tensor
    labels: torch.Tensor
    x: torch.Tensor | None = None
    adv_labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x_adv.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "x_adv": self.x_adv.detach().float().cpu().contiguous(),
            "labels": self.labels.long().cpu().contiguous(),
        }
        if self.x is not None:
            out["x"] = self.x.detach().float().cpu().contiguous()
        if self.adv_labels is not None:
            out["adv_labels"] = self.adv_labels.long().cpu().contiguous()
        return out


def save_adversarial_set(path: str | Path, aset: AdversarialSet, force: bool = False) -> Path:
    """Write ``aset`` as ``.npz`` or ``.safetensors`` (by suffix), atomically."""
    from kmtools.io import write_with

    p = Path(path)
    tens = aset.tensors()
    meta = json.dumps({"format": "kmtools.adversarial-set/1", **aset.meta})
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_with(p, lambda tmp: save_file(tens, str(tmp), metadata={"kmtools": meta}), force)
    if p.suffix == ".npz":
        arrays: dict[str, Any] = {"meta": np.array(meta), **{k: v.numpy() for k, v in tens.items()}}

        def _w(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz'
                np.savez(fh, **arrays)

        return write_with(p, _w, force)
    raise ConfigError(f"adversarial set {p}: use a .npz or .safetensors file name")


def _read_arrays(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                tens = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
                md = fh.metadata() or {}
            meta = json.loads(md.get("kmtools", "{}"))
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                tens = {k: torch.from_numpy(np.array(z[k])) for k in z.files if k != "meta"}
                if "meta" in z.files:
                    meta = json.loads(str(z["meta"]))
        else:
            raise DataError(f"adversarial set {p}: expected a .npz or .safetensors file")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read adversarial set {p}: {exc}") from exc
    return tens, meta


def _from_attack_file(
    p: Path, tens: dict[str, torch.Tensor], key: str | None, prefer: str | None
) -> AdversarialSet:
    """Rows of a ``kmtools attack onepixel|deepfool --out DIR`` file that fooled the model."""
    keys = sorted(k[: -len("_x_adv")] for k in tens if k.endswith("_x_adv"))
    if key is None:
        if len(keys) == 1:
            key = keys[0]
        elif prefer in keys:
            key = prefer
        elif "model" in keys:
            key = "model"
        else:
            raise ConfigError(
                f"{p} holds attacks on several models ({', '.join(keys)}): choose one with --adv-key"
            )
    if key not in keys:
        raise ConfigError(f"{p} has no attack on {key!r}; it has {', '.join(keys)}")
    x_adv = tens[f"{key}_x_adv"].float()
    n = x_adv.shape[0]
    if f"{key}_converged" in tens:  # DeepFool: flipped within max_iter and not already wrong
        ok = tens[f"{key}_converged"].bool().flatten()
        if f"{key}_iterations" in tens:
            ok &= tens[f"{key}_iterations"].flatten() > 0
    elif f"{key}_success" in tens:  # one-pixel: fooled and attacked
        ok = tens[f"{key}_success"].bool().flatten()
        if f"{key}_skipped" in tens:
            ok &= ~tens[f"{key}_skipped"].bool().flatten()
    else:
        ok = torch.ones(n, dtype=torch.bool)
    if f"{key}_pred" in tens:
        labels, source = tens[f"{key}_pred"].long().flatten(), "prediction before the attack"
    elif "labels" in tens:
        labels, source = tens["labels"].long().flatten(), "dataset labels"
    else:
        raise DataError(f"adversarial set {p} has neither {key}_pred nor labels: nothing to recover")
    if ok.shape[0] != n or labels.shape[0] != n:
        raise DataError(f"adversarial set {p}: {n} inputs but {labels.shape[0]} labels / {ok.shape[0]} flags")
    x = tens.get("x")
    adv = tens.get(f"{key}_pred_adv")
    idx = ok.nonzero().flatten()
    return AdversarialSet(
        x_adv=x_adv[idx],
        labels=labels[idx],
        x=x.float()[idx] if x is not None and tuple(x.shape) == tuple(x_adv.shape) else None,
        adv_labels=adv.long().flatten()[idx] if adv is not None else None,
        meta={"source": "kmtools attack", "key": key, "labels": source, "rows": n, "dropped": n - len(idx)},
    )


def load_adversarial_set(
    path: str | Path, *, key: str | None = None, prefer: str | None = None
) -> AdversarialSet:
    """Read perturbed inputs and the labels recovery should return, from one of:

    * kmtools' own format (:func:`save_adversarial_set`): ``x_adv``, ``labels``, optionally
      ``x`` and ``adv_labels`` (``.npz`` or ``.safetensors``);
    * the ``.npz`` of ``kmtools attack deepfool|onepixel --out DIR``: ``x``, ``labels`` and
      per attacked model ``<key>_x_adv``, ``<key>_pred`` (DeepFool), ``<key>_pred_adv``,
      ``<key>_converged`` / ``<key>_success``; only rows whose prediction the attack changed
      are kept, with ``<key>_pred`` (else ``labels``) as the labels to recover. ``key``
      chooses the model (``softmax``, ``gauss``, ``model``, ``compare``); by default the only
      one, else ``prefer`` (the head kind of the model being tested), else ``model``;
    * any ``.npz`` with inputs ``x`` (or ``inputs``) and ``labels`` (or ``y``): ``x`` are
      taken as the perturbed inputs and ``labels`` as their original labels.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"adversarial set {p} does not exist")
    tens, meta = _read_arrays(p)
    if "x_adv" not in tens and any(k.endswith("_x_adv") for k in tens):
        return _from_attack_file(p, tens, key, prefer)
    if "x_adv" in tens:
        x_adv, lab_key = tens["x_adv"], "labels" if "labels" in tens else "y"
        x = tens.get("x")
    else:
        xk = next((k for k in ("x", "inputs") if k in tens), None)
        if xk is None:
            names = ", ".join(sorted(tens)) or "none"
            attack = any(k.endswith(("_preds", "_pred", "_norms", "_pred_adv")) for k in tens)
            hint = (
                ": a `kmtools attack fgsm|deepfool` file holds predictions only, no perturbed inputs; run "
                "`kmtools geometry detect` without --adversarial (it runs DeepFool itself) or save a set "
                "with --save-adversarial" if attack else ""
            )
            raise DataError(
                f"adversarial set {p} has no x_adv, <model>_x_adv or x array (keys: {names}){hint}"
            )
        x_adv, x, lab_key = tens[xk], None, "labels" if "labels" in tens else "y"
        meta = {"source": "inputs + labels", **meta}
    if lab_key not in tens:
        raise DataError(f"adversarial set {p} has no 'labels' (or 'y') array: the labels to recover")
    x_adv, labels = x_adv.float(), tens[lab_key].long().flatten()
    if labels.shape[0] != x_adv.shape[0]:
        raise DataError(f"adversarial set {p}: {x_adv.shape[0]} inputs but {labels.shape[0]} labels")
    if x is not None and tuple(x.shape) != tuple(x_adv.shape):
        raise DataError(f"adversarial set {p}: x has shape {tuple(x.shape)}, x_adv {tuple(x_adv.shape)}")
    adv = tens.get("adv_labels")
    return AdversarialSet(
        x_adv=x_adv, labels=labels, x=x.float() if x is not None else None,
        adv_labels=adv.long().flatten() if adv is not None else None, meta=meta,
    )
