"""The run behind ``kmtools evaluate``: one or two models on the same inputs, side by side.

:func:`run_evaluate` takes loaded models and data, runs :func:`kmtools.evaluate.evaluate` per
model (with the Theorem 2 modulus of ``--lipschitz``), adds the n-ball reject option
(prototype-layers paper, Sec. 7.4), the post-hoc OOD baselines and calibration
(:func:`kmtools.ood.baseline_reports`) and the validation split the recommended threshold
was fitted on, and writes ``evaluate.json`` / ``evaluate.npz`` (names in
:func:`kmtools.runs.arrays.evaluate_arrays`). The terminal tables are in
:mod:`kmtools.report.views.evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kmtools.data import DataInfo, load_dataset, subset
from kmtools.data.registry import check_compatible
from kmtools.errors import ConfigError, DataError
from kmtools.evaluate import NOISE_KINDS, EvalResult, evaluate
from kmtools.models import KmModel
from kmtools.report.layout import model_keys
from kmtools.report.schema import model_info
from kmtools.runs.arrays import evaluate_arrays
from kmtools.runs.context import RunContext, save_npz

FILES = {"json": ".json", "npz": ".npz"}
PROTOTYPE_HEADS = ("rbf", "rslvq", "glvq")
NO_OOD = ("none", "off", "")
HELD_OUT = ("held-out", "heldout", "holdout")


@dataclass(frozen=True)
class DataSpec:
    """Where ``--data`` came from, to load its train split or other sets the same way."""

    name: str
    root: Path | None = None
    split: str = "test"
    download: bool = False
    image_size: str | None = None

    def load(self, name: str | None = None, split: str = "train") -> DataInfo:
        return load_dataset(name or self.name, root=self.root, split=split, download=self.download,
                            image_size=self.image_size)


@dataclass
class EvaluateRun:
    """What ``kmtools evaluate`` computed: the JSON document and the parts its tables show."""

    doc: dict[str, Any]
    per_model: dict[str, dict[str, Any]]
    baselines: dict[str, Any] | None
    evals: dict[str, EvalResult]
    info: DataInfo

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``evaluate.json``)."""
        return self.doc


def lipschitz_modulus(spec: str | None, model: KmModel) -> tuple[float | None, dict[str, Any] | None]:
    """``(L_p, how)`` from ``--lipschitz``: None, a positive number, or ``auto`` (the layer-wise
    product bound of :func:`kmtools.geometry.distance.lipschitz_upper_bound`, a proof only
    where its ``guaranteed`` flag says so)."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None, None
    key = spec.strip().lower()
    if key == "auto":
        from kmtools.geometry.distance import lipschitz_upper_bound

        if model.input_shape is None:
            raise ConfigError("--lipschitz auto needs the model's input shape: give a number instead")
        example = torch.rand((1, *model.input_shape), generator=torch.Generator().manual_seed(0))
        est = lipschitz_upper_bound(model.cpu(), example)
        value = float(est.value) if not isinstance(est.value, torch.Tensor) else float(est.value.max())
        return value, {"method": est.method, "guaranteed": bool(est.guaranteed)}
    try:
        value = float(key)
    except ValueError as exc:
        raise ConfigError(f"--lipschitz must be a positive number or auto, not {spec!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--lipschitz must be a positive number, not {spec!r}")
    return value, {"method": "given", "guaranteed": None}


def ood_sources(specs: list[str] | None, data: DataSpec, *, n_noise: int, model: KmModel,
                info: DataInfo, log: Any = None) -> list[Any]:
    """``--ood`` values -> what :func:`kmtools.evaluate.evaluate` takes: noise kinds as
    strings, datasets as DataInfo (the first ``n_noise`` inputs). A dataset is loaded as
    ``--data`` is: with ``--image-size`` (shorter side, centre crop), so that a folder of
    mixed-size images loads; then converted to the model's input shape (grey<->RGB, bilinear
    resize) where it still differs."""
    from kmtools.ood import MatchShape

    values = [s.strip() for s in (specs if specs else ["uniform"])]
    if any(v.lower() in NO_OOD for v in values):
        if len(values) > 1:
            raise ConfigError("--ood none cannot be combined with other --ood values")
        return []
    out: list[Any] = []
    want = tuple(model.input_shape or info.input_shape)
    for v in values:
        if v.lower() in NOISE_KINDS:
            out.append(v.lower())
            continue
        ood_info = load_dataset(v, root=data.root, split=data.split, download=data.download,
                                image_size=data.image_size)
        have = tuple(ood_info.input_shape)
        if have != want and not (len(have) == len(want) == 3 and have[0] in (1, 3) and want[0] in (1, 3)):
            raise DataError(
                f"OOD dataset {ood_info.name} has inputs of shape {have} but the model expects {want}: "
                "give a dataset of the same shape (images are converted grey<->RGB and resized), or noise"
            )
        part = subset(ood_info, min(n_noise, len(ood_info)))
        if have != want:
            part = replace(part, dataset=MatchShape(part.dataset, want), input_shape=want)
            if log is not None:
                log(f"OOD {ood_info.name} {have} -> {want} (grey<->RGB, bilinear resize)")
        out.append(part)
    return out


def validation_data(spec: str | None, model: KmModel, data: DataSpec) -> tuple[Any, dict[str, Any]] | None:
    """``--val-data``: (dataset, description) or None; ``held-out`` is tailor's hold-out of
    the train split (:func:`kmtools.data.split.holdout_split`)."""
    if spec is None or not spec.strip():
        return None
    if spec.strip().lower() in HELD_OUT:
        from torch.utils.data import Subset

        from kmtools.data.split import (
            DEFAULT_FRACTION,
            DEFAULT_MAX_ITEMS,
            DEFAULT_SEED,
            holdout_split,
            indices_digest,
            labels_of,
        )

        train = data.load()
        check_compatible(train, model.num_classes, model.input_shape)
        _, va = holdout_split(labels_of(train.dataset))
        return Subset(train.dataset, va.tolist()), {
            "source": "held-out", "data": train.name, "split": "train", "n": len(va),
            "fraction": DEFAULT_FRACTION, "max_items": DEFAULT_MAX_ITEMS, "seed": DEFAULT_SEED,
            "indices_sha256": indices_digest(va)}
    info = data.load(spec)
    check_compatible(info, model.num_classes, model.input_shape)
    return info.dataset, {"source": "val-data", "data": info.name, "split": info.split, "n": len(info)}


def baseline_roles(model: KmModel, other: KmModel | None) -> tuple[KmModel, KmModel | None]:
    """(softmax network, Gauss network or None) among MODEL and --compare."""
    pair = [m for m in (model, other) if m is not None]
    soft = [m for m in pair if m.head_kind == "softmax"]
    gauss = [m for m in pair if m.head_kind == "gauss"]
    if not soft:
        raise ConfigError("--baselines needs the original softmax network as MODEL or --compare "
                          "(the post-hoc scores use its linear head)")
    return soft[0], gauss[0] if gauss else None


def _nball(ctx: RunContext, model: KmModel, info: DataInfo, data: DataSpec, *, explicit: bool,
           batch_size: int) -> dict[str, Any] | None:
    """The n-ball section of :func:`kmtools.heads.reject.reject_curve`, fitted on the train
    split; None (with a warning) when it cannot be computed and was not asked for."""
    from kmtools.heads.reject import reject_curve

    try:
        train = load_dataset(data.name, root=data.root, split="train", download=data.download,
                             image_size=info.image_size)
        check_compatible(train, model.num_classes, model.input_shape)
        doc = reject_curve(model, info, train=train, batch_size=batch_size, device=ctx.device)
    except (DataError, ConfigError) as exc:
        if explicit:
            raise
        ctx.warn(f"n-ball reject option skipped: {exc}")
        return None
    section: dict[str, Any] | None = doc.get("nball")
    return section


def _baselines(ctx: RunContext, soft: KmModel, gauss: KmModel | None, info: DataInfo, ood: list[Any],
               data: DataSpec, *, n_noise: int, fit_n: int, knn_k: int, batch_size: int) -> dict[str, Any]:
    """The OOD-baseline and calibration sections (:func:`kmtools.ood.baseline_reports`)."""
    from torch.utils.data import TensorDataset

    from kmtools.evaluate import noise_batches
    from kmtools.ood import baseline_reports

    seed = int(ctx.seed or 0)
    shape = tuple(soft.input_shape or info.input_shape)
    train = load_dataset(data.name, root=data.root, split="train", download=data.download, image_size=info.image_size)
    check_compatible(train, soft.num_classes, soft.input_shape)
    if fit_n and fit_n < len(train):
        train = subset(train, fit_n, seed=seed, shuffle=True)
    sources: dict[str, Any] = {}
    for a in ood:
        if isinstance(a, str):
            x = torch.cat(list(noise_batches(a, n_noise, shape, seed=seed, batch_size=max(n_noise, 1))))
            sources[a] = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
        else:
            sources[a.name] = a.dataset
    reps = baseline_reports(soft, train.dataset, info.dataset, sources, gauss=gauss, k=knn_k,
                            batch_size=batch_size, device=ctx.device, seed=seed)
    by_src = {}
    cal: dict[str, Any] = {}
    for src, rep in reps.items():
        d = rep.to_dict()
        cal = d.pop("calibration")
        by_src[src] = d
    return {"ood_baselines": by_src, "calibration": cal}


def run_evaluate(
    ctx: RunContext,
    model: KmModel,
    info: DataInfo,
    data: DataSpec,
    *,
    compare: KmModel | None = None,
    model_path: Path | None = None,
    compare_path: Path | None = None,
    ood: list[str] | None = None,
    n_noise: int = 1000,
    lipschitz: str | None = None,
    per_class: int = 2,
    nball: bool | None = None,
    val_data: str | None = None,
    baselines: bool = False,
    fit_n: int = 5000,
    knn_k: int = 50,
    batch_size: int = 256,
    amp: bool = False,
    workers: int = 0,
) -> EvaluateRun:
    """``kmtools evaluate`` as a library call; ``info`` is ``--data`` (``split`` its split).
    Results are keyed by head kind, or ``model``/``compare`` when both heads are alike
    (:func:`kmtools.report.layout.model_keys`); with one model they are the top level."""
    if n_noise < 0:
        raise ConfigError(f"--n-noise must be non-negative, got {n_noise}")
    if per_class < 0:
        raise ConfigError(f"--per-class must be non-negative, got {per_class}")
    paths = ctx.paths(**FILES)
    with ctx.timer("load"):
        ood_args = ood_sources(ood, data, n_noise=n_noise, model=model, info=info, log=ctx.info)
        val = validation_data(val_data, model, data)
        roles = baseline_roles(model, compare) if baselines else None
    if roles is not None and not ood_args:
        raise ConfigError("--baselines needs OOD inputs: --ood uniform, gaussian or a dataset")
    models = [model] + ([compare] if compare is not None else [])
    keys = model_keys([m.head_kind for m in models])
    evals: dict[str, EvalResult] = {}
    per_model: dict[str, dict[str, Any]] = {}
    total = len(info) + sum(len(a) if not isinstance(a, str) else n_noise for a in ood_args)
    for key, m in zip(keys, models, strict=True):
        with ctx.timer("lipschitz"):
            lp, how = lipschitz_modulus(lipschitz, m)
        with ctx.stage(f"evaluate_{key}", f"evaluate {key}", total) as prog:
            evals[key] = evaluate(
                m, info.dataset, ood=ood_args, n_noise=n_noise, batch_size=batch_size, device=ctx.device,
                seed=ctx.seed or 0, amp=amp, progress=prog, lipschitz=lp, per_class=per_class, workers=workers,
                val_data=val[0] if val is not None else None, lipschitz_is_bound=bool(how and how["guaranteed"]),
            )
        d = evals[key].to_dict()
        if (nball if nball is not None else m.head_kind in PROTOTYPE_HEADS) and d.get("reject") is not None:
            with ctx.timer(f"nball_{key}"):
                d["reject"]["nball"] = _nball(ctx, m, info, data, explicit=nball is True, batch_size=batch_size)
        if d.get("theorem2") is not None and how:
            d["theorem2"]["lipschitz_method"] = how["method"]
            d["theorem2"]["lipschitz_guaranteed"] = how["guaranteed"]
        if val is not None:
            d["validation"] = val[1]
        per_model[key] = d
    results: dict[str, Any] = dict(per_model[keys[0]])
    base: dict[str, Any] | None = None
    if roles is not None:
        with ctx.timer("baselines"):
            base = _baselines(ctx, roles[0], roles[1], info, ood_args, data, n_noise=n_noise, fit_n=fit_n,
                              knn_k=knn_k, batch_size=batch_size)
        results |= base
    extra: dict[str, Any] = {}
    if compare is not None:
        results |= dict(per_model) | {"models": {k: str(p) for k, p in zip(keys, (model_path, compare_path),
                                                                              strict=True)}}
        extra["compare_model"] = model_info(compare_path, compare)
    doc = ctx.doc(results, model=model, model_path=model_path, data={**info.to_dict(), "classes": info.classes},
                  **extra)
    if paths:
        save_npz(paths["npz"], evaluate_arrays(evals), ctx.force)
    ctx.write(doc, paths)
    return EvaluateRun(doc, per_model, base, evals, info)
