"""The four geometry runs behind ``kmtools geometry distance|curvature|detect|path``.

Each ``run_*`` takes a loaded model, its inputs and a :class:`~kmtools.runs.RunContext`,
runs the maths of :mod:`kmtools.geometry` stage by stage (timed, with progress and
SIGINT/SIGTERM checks), writes ``OUT/geometry-<command>.{json,npz,png}`` when the context
has an out folder, and returns the JSON document (``results`` as documented in
docs/geometry.md). The terminal and report views of these documents are in
:mod:`kmtools.report.views.geometry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmtools.errors import ConfigError, DataError
from kmtools.geometry.curvature import boundary_curvature, default_fd_step
from kmtools.geometry.detect import (
    AdversarialSet,
    boundary_asymmetry,
    detect,
    evaluate_detection,
    save_adversarial_set,
)
from kmtools.geometry.distance import LipschitzEstimate, boundary_distance
from kmtools.geometry.path import find_path, path_profile, same_class_pairs
from kmtools.io import check_writable
from kmtools.models import KmModel
from kmtools.models.scoring import decision_scores
from kmtools.runs import RunContext, save_npz
from kmtools.runs import to_numpy as _np

FILES = {"json": ".json", "npz": ".npz", "png": ".png"}


def lipschitz_option(value: str | float | LipschitzEstimate | None) -> str | float | LipschitzEstimate | None:
    """``--lipschitz``: ``product``, ``local``, a positive number (as text or float) or an estimate."""
    if not isinstance(value, str) or value in ("product", "local"):
        return value
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"--lipschitz must be product, local or a positive number, got {value!r}") from exc
    if not number > 0:
        raise ConfigError("--lipschitz must be positive")
    return number


def _finish(ctx: RunContext, results: dict[str, Any], paths: dict[str, Path], model: KmModel,
            model_path: Path | str | None, data: Any) -> dict[str, Any]:
    doc = ctx.doc(results, model=model, model_path=model_path, data=data)
    ctx.write(doc, paths)
    return doc


def run_distance(
    model: KmModel,
    x: torch.Tensor,
    ctx: RunContext,
    *,
    model_path: Path | str | None = None,
    data: Any = None,
    lipschitz: str | float | LipschitzEstimate | None = "product",
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = 10,
    bisection_steps: int = 30,
    clip: bool = False,
    batch_size: int = 128,
) -> dict[str, Any]:
    """r(x) and z = x + r(x) on the boundary, with Theorem 2's bounds for a Gauss network
    (Fawzi et al. Sec. II; Gauss-network paper Theorem 2). ``candidates`` 0/None = all classes."""
    from kmtools.geometry.plots import plot_distance

    lipschitz = lipschitz_option(lipschitz)
    paths = ctx.paths(**FILES)
    with ctx.stage("distance", "DeepFool", len(x)) as prog:
        res = boundary_distance(
            model, x, lipschitz=lipschitz, overshoot=overshoot, max_iter=max_iter, candidates=candidates or None,
            bisection_steps=bisection_steps, clip=(0.0, 1.0) if clip else None, batch_size=batch_size,
            device=ctx.device, progress=prog,
        )
    results: dict[str, Any] = {"head_kind": model.head_kind, **res.to_dict()}
    if paths:
        arrays = {
            "distance": _np(res.distance), "deepfool_norm": _np(res.deepfool_norm), "labels": _np(res.labels),
            "adv_labels": _np(res.adv_labels), "converged": _np(res.converged), "on_boundary": _np(res.on_boundary),
            "r": _np(res.r).astype(np.float32),
        }
        bounds = {k: v for k in ("bound_at_adv", "bound_any", "bound_margin") if (v := getattr(res, k)) is not None}
        arrays |= {k: _np(v) for k, v in bounds.items()}
        save_npz(paths["npz"], arrays, ctx.force)
        plot_distance(res.distance.cpu(), paths["png"], bounds=bounds or None, force=ctx.force)
    return _finish(ctx, results, paths, model, model_path, data)


def run_curvature(
    model: KmModel,
    x: torch.Tensor,
    ctx: RunContext,
    *,
    model_path: Path | str | None = None,
    data: Any = None,
    top: int = 10,
    bottom: int = 10,
    steps: int | None = None,
    samples: int = 20,
    hvp: str = "auto",
    fd_step: float | None = None,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = 10,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Principal curvatures at z = x + r(x) (Fawzi et al. Eq. 1, Fig. 4b) and their average."""
    from kmtools.geometry.plots import plot_curvature_profile

    paths = ctx.paths(**FILES)
    with ctx.stage("curvature", "Lanczos", len(x)) as prog:
        res = boundary_curvature(
            model, x, top=top, bottom=bottom, steps=steps, samples=samples, method=hvp, fd_step=fd_step,
            seed=ctx.seed or 0, overshoot=overshoot, max_iter=max_iter, candidates=candidates or None,
            batch_size=batch_size, device=ctx.device, progress=prog,
        )
    results: dict[str, Any] = {"head_kind": model.head_kind, **res.to_dict()}
    if paths:
        save_npz(paths["npz"], {
            "top": _np(res.top), "bottom": _np(res.bottom), "mean": _np(res.mean), "grad_norm": _np(res.grad_norm),
            "labels": _np(res.labels), "others": _np(res.others), "distance": _np(res.distance),
            "valid": _np(res.valid),
        }, ctx.force)
        plot_curvature_profile(res, paths["png"], force=ctx.force)
    return _finish(ctx, results, paths, model, model_path, data)


def _deepfool_set(
    model: KmModel, x: torch.Tensor, ctx: RunContext, overshoot: float, max_iter: int, batch_size: int,
    save: Path | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """DeepFool's perturbed inputs (those whose prediction flipped), their labels and source."""
    from kmtools.attacks import deepfool

    with ctx.stage("deepfool", "DeepFool", len(x)) as prog:
        df = deepfool(model, x, overshoot=overshoot, max_iter=max_iter, batch_size=batch_size, device=ctx.device,
                      progress=prog)
    ok = (df.converged & (df.iterations > 0)).cpu()
    x_pert, orig = df.x_adv.cpu()[ok], df.labels.cpu()[ok]
    source = {"kind": "deepfool", "overshoot": overshoot, "flipped": int(ok.sum()), "inputs": len(x),
              "norm_median": float(df.norms.cpu()[ok].median()) if bool(ok.any()) else None}
    if save is not None:
        save_adversarial_set(save, AdversarialSet(
            x_adv=x_pert, labels=orig, x=x[ok], adv_labels=df.adv_labels.cpu()[ok],
            meta={"source": "kmtools geometry detect (DeepFool)", "overshoot": overshoot},
        ), ctx.force)
    return x_pert, orig, source


def run_detect(
    model: KmModel,
    x: torch.Tensor,
    ctx: RunContext,
    *,
    model_path: Path | str | None = None,
    data: Any = None,
    adversarial: AdversarialSet | None = None,
    adversarial_path: Path | None = None,
    limit: int | None = None,
    threshold: float = 0.0,
    samples: int = 10,
    hvp: str = "auto",
    fd_step: float | None = None,
    overshoot: float = 0.02,
    max_iter: int = 50,
    asymmetry: bool = False,
    save_adversarial: Path | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Algorithm 2 of Fawzi et al.: clean inputs ``x`` against perturbed ones (DeepFool's, or
    the first ``limit`` of ``adversarial``); TP/FP over t (Fig. 8), label recovery, and with
    ``asymmetry`` Table II."""
    from kmtools.geometry.plots import plot_detection_roc

    if adversarial is not None and save_adversarial is not None:
        raise ConfigError("--save-adversarial saves the DeepFool set: it cannot be combined with --adversarial")
    if save_adversarial is not None:
        check_writable(save_adversarial, ctx.force)
    paths = ctx.paths(**FILES)
    want = tuple(model.input_shape or x.shape[1:])
    if adversarial is not None:
        x_pert, orig = adversarial.x_adv[: limit or len(adversarial)], adversarial.labels[: limit or len(adversarial)]
        if tuple(x_pert.shape[1:]) != tuple(x.shape[1:]) or tuple(x.shape[1:]) != want:
            raise DataError(f"{adversarial_path}: inputs of shape {tuple(x_pert.shape[1:])}, the model takes {want}")
        source: dict[str, Any] = {"kind": "file", "path": str(adversarial_path), **adversarial.meta}
    else:
        x_pert, orig, source = _deepfool_set(model, x, ctx, overshoot, max_iter, batch_size, save_adversarial)
    if not len(x_pert):
        raise DataError("no perturbed input to detect: DeepFool changed no prediction (try a larger -n)")
    h = fd_step if fd_step is not None else default_fd_step(x)
    common: dict[str, Any] = dict(threshold=threshold, samples=samples, fd_step=h, seed=ctx.seed or 0,
                                  batch_size=batch_size, device=ctx.device)
    with ctx.stage("detect_clean", "Algorithm 2 (clean)", len(x)) as prog:
        dc = detect(model, x, method=hvp, progress=prog, **common)
    with ctx.stage("detect_perturbed", "Algorithm 2 (perturbed)", len(x_pert)) as prog:
        dp = detect(model, x_pert, method=dc.method, progress=prog, **common)
    ev = evaluate_detection(dc, dp, orig)
    L = model.num_classes
    results: dict[str, Any] = {
        "head_kind": model.head_kind,
        "perturbed_source": source,
        "threshold": threshold,
        "samples": samples,
        "hvp": dc.method,
        "fd_step": dc.fd_step,
        "sign_convention": "F_i = s_i - s_pred; perturbed when rho >= t (clean expected rho < 0)",
        **ev.to_dict(),
        "at_threshold": {
            "clean_flagged": float(dc.perturbed.float().mean()),
            "perturbed_flagged": float(dp.perturbed.float().mean()),
            "recovery_flagged": float((dp.recovered[dp.perturbed] == orig[dp.perturbed]).float().mean())
            if bool(dp.perturbed.any()) else None,
        },
        "chance_recovery": 1.0 / (L - 1) if L > 1 else None,
        "clean_rho": dc.to_dict(),
        "perturbed_rho": dp.to_dict(),
    }
    if asymmetry:
        with ctx.timer("asymmetry"):
            asym = boundary_asymmetry(model, x, x_pert=x_pert, samples=samples, method=dc.method, fd_step=h,
                                      seed=ctx.seed or 0, overshoot=overshoot, max_iter=max_iter,
                                      batch_size=batch_size, device=ctx.device)
        results["table2"] = asym.to_dict()
    if paths:
        save_npz(paths["npz"], {
            "rho_clean": _np(dc.rho), "rho_perturbed": _np(dp.rho), "curv_clean": _np(dc.curvatures),
            "curv_perturbed": _np(dp.curvatures), "pred_clean": _np(dc.predictions),
            "pred_perturbed": _np(dp.predictions), "recovered": _np(dp.candidates), "original_labels": _np(orig),
        }, ctx.force)
        plot_detection_roc(ev, paths["png"], force=ctx.force)
    return _finish(ctx, results, paths, model, model_path, data)


def _predictions(model: KmModel, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([decision_scores(model, x[i : i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(x), batch_size)])


def run_path(
    model: KmModel,
    x: torch.Tensor,
    ctx: RunContext,
    *,
    model_path: Path | str | None = None,
    data: Any = None,
    pair: tuple[int, int] | None = None,
    pairs: int = 10,
    samples: int = 16,
    max_depth: int = 10,
    max_anchors: int = 256,
    min_push: float = 0.1,
    overshoot: float = 0.02,
    max_iter: int = 50,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Algorithm 1 of Fawzi et al.: paths inside a class region between ``pair`` or
    ``pairs`` random inputs of the same predicted class."""
    from kmtools.geometry.plots import plot_path_profile

    paths = ctx.paths(**FILES)
    pred = _predictions(model, x, batch_size, ctx.device)
    if pair is not None:
        i, j = pair
        if not (0 <= i < len(x) and 0 <= j < len(x)) or i == j:
            raise ConfigError(f"--pair {i},{j}: need two different indices below {len(x)} (the -n inputs)")
        todo = [(i, j)]
    else:
        todo = same_class_pairs(pred, pairs, ctx.seed or 0)
        if not todo:
            raise DataError("no two inputs share a predicted class: use a larger -n")
    recs = []
    found = []
    with ctx.stage("paths", "Algorithm 1", len(todo)) as prog:
        for done, (i, j) in enumerate(todo, 1):
            res = find_path(model, x[i], x[j], samples=samples, max_depth=max_depth, max_anchors=max_anchors,
                            overshoot=overshoot, max_iter=max_iter, min_push=min_push, device=ctx.device)
            found.append(res)
            recs.append({"pair": [i, j], **res.to_dict()})
            prog(done, len(todo))
    ok = [r for r in found if r.success]
    results: dict[str, Any] = {
        "head_kind": model.head_kind,
        "pairs": len(found),
        "success": len(ok),
        "success_rate": len(ok) / len(found),
        "straight_rate": sum(r.straight for r in found) / len(found),
        "anchors_mean": float(np.mean([r.anchors.shape[0] for r in found])),
        "projections_mean": float(np.mean([r.projections for r in found])),
        "length_ratio_mean": float(np.mean([r.length / r.straight_length for r in ok if r.straight_length > 0]))
        if ok else None,
        "paths": recs,
    }
    if paths:
        shown = next((k for k, r in enumerate(found) if not r.straight), 0)
        res = found[shown]
        s, scores, anchors_s = path_profile(model, res.anchors, device=ctx.device)
        i, j = todo[shown]
        classes = model.classes
        plot_path_profile(s, scores, anchors_s, paths["png"], label=res.label, class_names=classes, force=ctx.force,
                          title=f"Algorithm 1: inputs {i} → {j}, class {classes[res.label]}, "
                          f"{'found' if res.success else 'not found'}, {res.anchors.shape[0]} anchors")
        save_npz(paths["npz"], {"anchors": _np(res.anchors).astype(np.float32), "pair": np.asarray(todo[shown]),
                                "positions": _np(s), "scores": _np(scores)}, ctx.force)
        results["plotted_pair"] = list(todo[shown])
    return _finish(ctx, results, paths, model, model_path, data)
