"""``kmtools evaluate``: accuracy, confidence, outliers, OOD detection and Theorem 2, side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from kmtools.data import DataInfo, load_dataset, subset
from kmtools.data.registry import check_compatible
from kmtools.errors import ConfigError, DataError, OutputExistsError
from kmtools.evaluate import NOISE_KINDS, EvalResult
from kmtools.evaluate import evaluate as run_evaluate
from kmtools.io import write_json, write_with
from kmtools.models import KmModel
from kmtools.report import gates
from kmtools.report.schema import envelope
from kmtools_cli._common import Timer, describe_model, device_of, fit_model, open_model
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import Output, fmt

JSON_NAME = "evaluate.json"
NPZ_NAME = "evaluate.npz"
_NO_OOD = ("none", "off", "")


def _lipschitz_auto_available() -> bool:
    try:
        from kmtools.geometry.distance import lipschitz_upper_bound  # noqa: F401
    except ImportError:
        return False
    return True


_LIP_HELP = (
    "Lipschitz modulus L_p of x -> f_p(x) for the Theorem 2 input-space bound: a number"
    + (", or 'auto' (a layer-wise upper bound from kmtools.geometry)" if _lipschitz_auto_available() else "")
    + ". Without it only the feature-space margin is reported."
)

CompareOpt = Annotated[Path | None, typer.Option(
    "--compare", show_default=False,
    help="A second checkpoint (typically the Gauss network of MODEL), loaded with the same options "
    "and evaluated side by side on the same inputs.")]
OodOpt = Annotated[list[str] | None, typer.Option(
    "--ood", show_default=False,
    help="Out-of-distribution inputs: uniform or gaussian noise images (paper Fig. 3), a dataset "
    "(name or path, same input shape), or none. Repeatable; default uniform.")]
NNoiseOpt = Annotated[int, typer.Option(
    "--n-noise", help="Number of noise images, and at most this many inputs of an OOD dataset.")]
LipschitzOpt = Annotated[str | None, typer.Option("--lipschitz", help=_LIP_HELP, show_default=False)]
PerClassOpt = Annotated[int, typer.Option(
    "--per-class", help=f"Prototypes and outliers kept per class (paper Fig. 3) in {NPZ_NAME}.")]
PROTOTYPE_HEADS = ("rbf", "rslvq", "glvq")
NBallOpt = Annotated[bool | None, typer.Option(
    "--nball/--no-nball", show_default=False,
    help="Also fit the n-ball reject option (prototype-layers paper, Sec. 7.4) on the train split of "
    "--data and report it as reject.nball: one ball per prototype (class means for a softmax head), "
    "radius covering 95% of its correctly classified training points. Default: on for prototype heads "
    f"({', '.join(PROTOTYPE_HEADS)}), off otherwise (it costs a pass over the training set).")]
ValDataOpt = Annotated[str | None, typer.Option(
    "--val-data", show_default=False,
    help="Validation data the recommended threshold is fitted on (it is then reported on --data, never "
    "on the set it was fitted on): NAME|PATH (its train split, as tailor's --val-data), or 'held-out' for "
    "tailor's hold-out of --data's train split (10%, at most 5,000, seed 0; the reference models never "
    "saw it). Default: a seeded half of --data, reported on the other half.")]
BaselinesOpt = Annotated[bool, typer.Option(
    "--baselines/--no-baselines",
    help="Score every --ood source with the softmax network's post-hoc baselines (MSP, max-logit, energy, "
    "Mahalanobis with tied covariance, k-NN on normalised features; fitted on --data's train split) beside "
    "the Gauss network's κ (--compare), with AUROC/AUPR bootstrap intervals and FPR@95, plus calibration "
    "(ECE with interval, NLL, Brier) of both.")]
FitNOpt = Annotated[int, typer.Option(
    "--fit-n", min=0, help="Training inputs (a seeded stratified-by-shuffle sample) the baselines are fitted "
    "on; 0 = all.")]
KnnOpt = Annotated[int, typer.Option("--knn-k", min=1, help="k of the k-NN baseline (Sun et al. 2022: 50).")]
OutDirOpt = out_dir(f"Folder for {JSON_NAME} (the result document) and {NPZ_NAME} (per-input arrays), "
                    "which `kmtools report` reads.")


def _lipschitz(spec: str | None, model: KmModel) -> tuple[float | None, dict[str, Any] | None]:
    """``(L_p, how)`` from ``--lipschitz``: None, a positive number, or ``auto``."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None, None
    key = spec.strip().lower()
    if key == "auto":
        try:
            from kmtools.geometry.distance import lipschitz_upper_bound
        except ImportError as exc:
            raise ConfigError("--lipschitz auto needs kmtools.geometry: give a number instead") from exc
        if model.input_shape is None:
            raise ConfigError("--lipschitz auto needs the model's input shape: give a number instead")
        example = torch.rand((1, *model.input_shape), generator=torch.Generator().manual_seed(0))
        est = lipschitz_upper_bound(model.cpu(), example)
        value = float(est.value) if not isinstance(est.value, torch.Tensor) else float(est.value.max())
        return value, {"method": est.method, "guaranteed": bool(est.guaranteed)}
    try:
        value = float(key)
    except ValueError as exc:
        auto = " or auto" if _lipschitz_auto_available() else ""
        raise ConfigError(f"--lipschitz must be a positive number{auto}, not {spec!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--lipschitz must be a positive number, not {spec!r}")
    return value, {"method": "given", "guaranteed": None}


def _keys(primary: KmModel, other: KmModel | None) -> list[str]:
    """Result keys of the models: their head kinds, or ``model``/``compare`` when equal."""
    if other is None:
        return [primary.head_kind]
    if primary.head_kind == other.head_kind:
        return ["model", "compare"]
    return [primary.head_kind, other.head_kind]


def _figure_key(keys: list[str]) -> str:
    """Whose prototypes/outliers go to ``images``: the Gauss network when there is one (Fig. 3)."""
    return "gauss" if "gauss" in keys else keys[0]


_PER_MODEL_ARRAYS = ("confidence", "label_confidence", "correct", "prediction", "margin", "input_bound",
                     "noise_confidence", "noise_prediction", "reject_rate", "reject_accuracy",
                     "reject_threshold")


def _arrays(evals: dict[str, EvalResult], fig_key: str) -> dict[str, np.ndarray]:
    """The arrays of ``evaluate.npz``: ``label``; ``<key>_<name>`` per model (``key`` its head
    kind, or model/compare); ``<key>_ood_<source>_confidence`` per OOD source; the Fig. 3
    prototypes/outliers of ``fig_key``'s model (``images``, ``labels``, ``images_confidence``)."""
    out: dict[str, np.ndarray] = {}
    first = next(iter(evals.values()))
    out["label"] = first.label
    for key, res in evals.items():
        arr = res.arrays()
        for name, value in arr.items():
            if name in _PER_MODEL_ARRAYS or name.startswith("ood_"):
                out[f"{key}_{name}"] = value
    fig = evals[fig_key]
    for part in ("proto", "outlier"):
        for what in ("index", "conf", "labels", "images"):
            out[f"{part}_{what}"] = getattr(fig, f"{part}_{what}")
    out["images"] = np.concatenate([fig.proto_images, fig.outlier_images])
    out["labels"] = np.concatenate([fig.proto_labels, fig.outlier_labels])
    out["images_confidence"] = np.concatenate([fig.proto_conf, fig.outlier_conf])
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    named: dict[str, Any] = dict(arrays)

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz' to the temp name
            np.savez(fh, **named)

    write_with(path, writer, force)


_ROWS: list[tuple[str, str]] = [
    ("head", "head_kind"),
    ("inputs", "n"),
    ("accuracy [95% CI]", "ci%:accuracy"),
    ("mean confidence", "mean_confidence"),
    ("mean confidence, correct", "mean_confidence_correct"),
    ("mean confidence, wrong", "mean_confidence_wrong"),
    ("outlier threshold", "threshold"),
    ("outlier rate", "ci%:outlier_rate"),
    ("recommended threshold (95% of correct above)", "recommended_threshold"),
    ("  fitted on", "threshold_fit"),
    ("  reported on held-out inputs: correct kept", "rate:threshold_heldout.correct_kept"),
    ("  reported on held-out inputs: flagged", "rate:threshold_heldout.flagged"),
    ("OOD:", ""),
    ("boundary distance, exact (feature space): mean", "boundary.mean"),
    ("boundary distance, exact: median", "boundary.median"),
    ("boundary distance, exact: p05", "boundary.p05"),
    ("boundary distance, exact: min", "boundary.min"),
    ("boundary distance / L_p (input space, estimate): median", "est:boundary.input.median"),
    ("Thm 2 centroids (corollary, loose)", "theorem2.centroids"),
    ("Thm 2 feature margin: mean", "theorem2.feature_margin.mean"),
    ("Thm 2 feature margin: median", "theorem2.feature_margin.median"),
    ("Thm 2 feature margin: p05", "theorem2.feature_margin.p05"),
    ("Thm 2 feature margin: min", "theorem2.feature_margin.min"),
    ("Thm 2 vacuous share", "theorem2.vacuous_share"),
    ("Lipschitz modulus L_p", "theorem2.lipschitz"),
    ("Thm 2 bound ‖Δ‖: mean", "theorem2.input_bound.mean"),
    ("Thm 2 bound ‖Δ‖: median", "theorem2.input_bound.median"),
    ("Thm 2 bound ‖Δ‖: p05", "theorem2.input_bound.p05"),
    ("Thm 2 bound ‖Δ‖: min", "theorem2.input_bound.min"),
    ("accuracy-reject AUC", "reject.auc"),
    ("accuracy rejecting 10%", "reject.acc_at_reject_10"),
    ("min-cost reject (λ_r=0.25): reject rate", "reject.operating_point.reject_rate"),
    ("min-cost reject (λ_r=0.25): accuracy", "reject.operating_point.accuracy"),
    ("n-ball reject: reject rate", "reject.nball.operating_point.reject_rate"),
    ("n-ball reject: accuracy on accepted", "reject.nball.operating_point.accuracy"),
]
_OOD_ROWS: list[tuple[str, str]] = [
    ("inputs", "n"),
    ("mean confidence", "mean_ood_confidence"),
    ("flagged as outliers", "ood_outlier_rate"),
    ("flagged at the recommended threshold", "rate:flagged_at_recommended"),
    ("AUROC", "ci:auroc"),
    ("FPR at 95% TPR", "fpr95"),
]


def _cell(m: dict[str, Any], path: str) -> tuple[Any, str]:
    """(raw value, text) of one table cell; ``ci:``/``ci%:`` add ``path_lo``/``path_hi``,
    ``rate:`` formats a Wilson rate dict, ``est:`` marks an estimate unless L_p is a bound."""
    kind, _, rest = path.rpartition(":")
    if not kind:
        v = _get(m, path)
        return v, fmt(v)
    if kind == "rate":
        d = _get(m, rest)
        if not isinstance(d, dict) or d.get("rate") is None:
            return None, "-"
        k = next((d[c] for c in ("kept", "flagged", "correct", "k") if c in d), None)
        return d, (f"{100 * d['rate']:.1f}% [{100 * d['rate_lo']:.1f}, {100 * d['rate_hi']:.1f}]"
                   + (f" {k}/{d['n']}" if k is not None else ""))
    if kind == "est":
        v = _get(m, rest)
        if v is None:
            return None, "-"
        bound = _get(m, "boundary.input_is_bound")
        return v, fmt(v) + ("" if bound else " (estimate)")
    head, _, leaf = rest.rpartition(".")
    pre = f"{head}." if head else ""
    v, lo, hi = _get(m, rest), _get(m, f"{pre}{leaf}_lo"), _get(m, f"{pre}{leaf}_hi")
    if v is None:
        return None, "-"
    if kind == "ci%":
        txt = f"{100 * v:.1f}%" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else "")
    else:
        txt = f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")
    return v, txt


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def human_table(per_model: dict[str, dict[str, Any]], title: str) -> Table:
    """Rows = metrics, columns = models; rows where every model has no value are dropped.
    OOD rows come once per source (``OOD uniform: AUROC`` …); rates carry their intervals."""
    t = Table(title=title, title_justify="left")
    t.add_column("metric", style="bold")
    for key in per_model:
        t.add_column(key, justify="right")
    sources: list[str] = []
    for m in per_model.values():
        sources += [s for s in (m.get("ood_by_source") or {}) if s not in sources]
    for label, path in _ROWS:
        if label == "OOD:":
            for src in sources:
                for sub, key in _OOD_ROWS:
                    kind, _, rest = key.rpartition(":")
                    cells = [_cell(m, f"{kind + ':' if kind else ''}ood_by_source.{src}.{rest}")
                             if src in (m.get("ood_by_source") or {}) else (None, "-") for m in per_model.values()]
                    if all(v is None for v, _ in cells):
                        continue
                    t.add_row(f"OOD {src}: {sub}", *(c for _, c in cells))
            continue
        cells = [_cell(m, path) for m in per_model.values()]
        if all(v is None for v, _ in cells):
            continue
        t.add_row(label, *(c for _, c in cells))
    return t


def _ood_args(specs: list[str] | None, *, n_noise: int, model: KmModel, info: DataInfo,
              root: Path | None, split: str, download: bool, log: Any = None) -> list[Any]:
    """``--ood`` values -> what :func:`kmtools.evaluate.evaluate` takes: noise kinds as
    strings, datasets as DataInfo (the first ``n_noise`` inputs, same input shape)."""
    values = [s.strip() for s in (specs if specs else ["uniform"])]
    if any(v.lower() in _NO_OOD for v in values):
        if len(values) > 1:
            raise ConfigError("--ood none cannot be combined with other --ood values")
        return []
    out: list[Any] = []
    want = tuple(model.input_shape or info.input_shape)
    for v in values:
        if v.lower() in NOISE_KINDS:
            out.append(v.lower())
            continue
        ood_info = load_dataset(v, root=root, split=split, download=download)
        have = tuple(ood_info.input_shape)
        if have != want and not (len(have) == len(want) == 3 and have[0] in (1, 3) and want[0] in (1, 3)):
            raise DataError(
                f"OOD dataset {ood_info.name} has inputs of shape {have} but the model expects {want}: "
                "give a dataset of the same shape (images are converted grey<->RGB and resized), or noise"
            )
        part = subset(ood_info, min(n_noise, len(ood_info)))
        if have != want:
            from dataclasses import replace

            from kmtools.ood import MatchShape

            note = f"{ood_info.name} {have} -> {want} (grey<->RGB, bilinear resize)"
            part = replace(part, dataset=MatchShape(part.dataset, want), input_shape=want)
            if log is not None:
                log(f"OOD {note}")
        out.append(part)
    return out


def _nball(model: KmModel, info: DataInfo, data: str, *, explicit: bool, root: Path | None, download: bool,
           batch_size: int, device: torch.device, out: Output) -> dict[str, Any] | None:
    """The n-ball section of :func:`kmtools.heads.reject.reject_curve`, fitted on the train
    split; None (with a warning) when it cannot be computed and was not asked for."""
    try:
        from kmtools.heads.reject import reject_curve
    except ImportError as exc:  # pragma: no cover - depends on the heads module
        if explicit:
            raise ConfigError("--nball needs kmtools.heads.reject") from exc
        return None
    try:
        train = load_dataset(data, root=root, split="train", download=download, image_size=info.image_size)
        check_compatible(train, model.num_classes, model.input_shape)
        doc = reject_curve(model, info, train=train, batch_size=batch_size, device=device)
    except (DataError, ConfigError) as exc:
        if explicit:
            raise
        out.warn(f"n-ball reject option skipped: {exc}")
        return None
    section: dict[str, Any] | None = doc.get("nball")
    return section


def _val_data(spec: str | None, model: KmModel, data: str, root: Path | None,
              download: bool, image_size: str | None = None) -> tuple[Any, dict[str, Any]] | None:
    """``--val-data``: (dataset, description) or None."""
    if spec is None or not spec.strip():
        return None
    if spec.strip().lower() in ("held-out", "heldout", "holdout"):
        from torch.utils.data import Subset

        from kmtools.data.split import (
            DEFAULT_FRACTION,
            DEFAULT_MAX_ITEMS,
            DEFAULT_SEED,
            holdout_split,
            indices_digest,
            labels_of,
        )

        train = load_dataset(data, root=root, split="train", download=download, image_size=image_size)
        check_compatible(train, model.num_classes, model.input_shape)
        _, va = holdout_split(labels_of(train.dataset))
        return Subset(train.dataset, va.tolist()), {
            "source": "held-out", "data": train.name, "split": "train", "n": len(va),
            "fraction": DEFAULT_FRACTION, "max_items": DEFAULT_MAX_ITEMS, "seed": DEFAULT_SEED,
            "indices_sha256": indices_digest(va)}
    info = load_dataset(spec, root=root, split="train", download=download, image_size=image_size)
    check_compatible(info, model.num_classes, model.input_shape)
    return info.dataset, {"source": "val-data", "data": info.name, "split": info.split, "n": len(info)}


def _baseline_roles(model: KmModel, other: KmModel | None) -> tuple[KmModel, KmModel | None]:
    """(softmax network, Gauss network or None) among MODEL and --compare."""
    pair = [m for m in (model, other) if m is not None]
    soft = [m for m in pair if m.head_kind == "softmax"]
    gauss = [m for m in pair if m.head_kind == "gauss"]
    if not soft:
        raise ConfigError("--baselines needs the original softmax network as MODEL or --compare "
                          "(the post-hoc scores use its linear head)")
    return soft[0], gauss[0] if gauss else None


def _baselines(soft: KmModel, gauss: KmModel | None, info: DataInfo, ood_args: list[Any], data: str,
               root: Path | None, download: bool, *, n_noise: int, fit_n: int, knn_k: int, batch_size: int,
               device: torch.device, seed: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """The OOD-baseline and calibration sections of the results (:func:`kmtools.ood.baseline_reports`)."""
    from torch.utils.data import TensorDataset

    from kmtools.evaluate import noise_batches
    from kmtools.ood import baseline_reports

    if not ood_args:
        raise ConfigError("--baselines needs OOD inputs: --ood uniform, gaussian or a dataset")
    train = load_dataset(data, root=root, split="train", download=download, image_size=info.image_size)
    check_compatible(train, soft.num_classes, soft.input_shape)
    if fit_n and fit_n < len(train):
        train = subset(train, fit_n, seed=seed, shuffle=True)
    sources: dict[str, Any] = {}
    for a in ood_args:
        if isinstance(a, str):
            x = torch.cat(list(noise_batches(a, n_noise, shape, seed=seed, batch_size=max(n_noise, 1))))
            sources[a] = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
        else:
            sources[a.name] = a.dataset
    reps = baseline_reports(soft, train.dataset, info.dataset, sources, gauss=gauss, k=knn_k,
                            batch_size=batch_size, device=device, seed=seed)
    by_src = {}
    cal: dict[str, Any] = {}
    for src, rep in reps.items():
        d = rep.to_dict()
        cal = d.pop("calibration")
        by_src[src] = d
    return {"ood_baselines": by_src, "calibration": cal}


def _ci(v: Any, lo: Any, hi: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    f = (lambda x: f"{100 * float(x):.1f}") if pct else (lambda x: f"{float(x):.3f}")
    tail = f" [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else ""
    return f(v) + ("%" if pct else "") + tail


_SCORE_NAMES = {"msp": "MSP (softmax)", "max_logit": "max-logit (softmax)", "energy": "energy (softmax)",
                "mahalanobis": "Mahalanobis (softmax features)", "knn": "k-NN (softmax features)",
                "kappa": "κ (Gauss network)"}


def baselines_table(src: str, rep: dict[str, Any], n_in: int) -> Table:
    """One OOD source: a row per score with AUROC, AUPR-in, AUPR-out [bootstrap 95%] and FPR@95."""
    first = next(iter(rep["scores"].values()))
    t = Table(title=f"OOD {src}: {first['n_in']} in vs {first['n_out']} OOD inputs; baselines fitted on "
              f"{rep['n_train']} train inputs, k-NN k = {rep['knn_k']}; (bootstrap 95% intervals)",
              title_justify="left")
    for i, c in enumerate(("score", "AUROC", "AUPR-in", "AUPR-out", "FPR@95")):
        t.add_column(c, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
    for name, m in rep["scores"].items():
        label = _SCORE_NAMES.get(name, name) + (" ← best baseline" if name == rep.get("best_baseline") else "")
        t.add_row(label, _ci(m["auroc"], m["auroc_lo"], m["auroc_hi"]),
                  _ci(m["aupr_in"], m["aupr_in_lo"], m["aupr_in_hi"]),
                  _ci(m["aupr_out"], m["aupr_out_lo"], m["aupr_out_hi"]), _ci(m["fpr95"], None, None, pct=True))
    vs = rep.get("kappa_vs_best")
    if vs:
        t.caption = (f"κ − {vs['baseline']}: ΔAUROC {vs['diff']:+.3f} "
                     + (f"[{vs['diff_lo']:+.3f}, {vs['diff_hi']:+.3f}] (paired bootstrap)"
                        if vs["diff_lo"] is not None else ""))
        t.caption_justify = "left"
    return t


def calibration_table(cal: dict[str, Any]) -> Table:
    """ECE [bootstrap 95%], NLL and Brier per model (in-distribution inputs)."""
    t = Table(title="calibration on the in-distribution inputs (15 equal-width bins; κ normalised by "
              "softmax of log κ)", title_justify="left")
    for i, c in enumerate(("model", "ECE", "NLL", "Brier")):
        t.add_column(c, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
    for k, c in cal.items():
        t.add_row(k, _ci(c["ece"], c["ece_lo"], c["ece_hi"]), f"{c['nll']:.4f}", f"{c['brier']:.4f}")
    return t


@grouped
def evaluate(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",), options={"compare": CompareOpt})],
    ds: Annotated[DataOptions, Use(add=("download", "workers"))],
    ood: OodOpt = None,
    n_noise: NNoiseOpt = 1000,
    lipschitz: LipschitzOpt = None,
    per_class: PerClassOpt = 2,
    nball: NBallOpt = None,
    val_data: ValDataOpt = None,
    baselines: BaselinesOpt = False,
    fit_n: FitNOpt = 5000,
    knn_k: KnnOpt = 50,
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"amp": False})],
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Accuracy, mean confidence, outliers, OOD detection and the Theorem 2 margin of MODEL.

    Confidence is the softmax probability of the predicted class for a softmax network and
    the Gauss confidence κ for a Gauss network. An input is an outlier when that confidence
    is below the model's threshold (1/c unless the checkpoint sets one); the recommended
    threshold keeps 95% of the correctly classified inputs above it. OOD detection scores
    noise images (uniform in [0,1], or N(0.5, 0.25²) clipped) or a second dataset against
    the test inputs by the same confidence (AUROC, FPR at 95% TPR). With --compare, both
    models are evaluated on the same inputs and reported side by side under their head
    kinds, so gates like 'gauss.accuracy>=softmax.accuracy-0.003' work.

    Example: kmtools evaluate model.pt --arch resnet18 --data cifar10 --compare gauss.safetensors --out runs/
    """
    out = output.output()
    for g in output.gate or []:
        gates.parse(g)  # a malformed gate fails before any work (exit 2)
    if n_noise < 0:
        raise ConfigError(f"--n-noise must be non-negative, got {n_noise}")
    if per_class < 0:
        raise ConfigError(f"--per-class must be non-negative, got {per_class}")
    json_path = npz_path = None
    if output.out is not None:
        if output.out.exists() and not output.out.is_dir():
            raise ConfigError(f"--out {output.out} is a file: give a folder")
        json_path, npz_path = output.out / JSON_NAME, output.out / NPZ_NAME
        existing = [str(p) for p in (json_path, npz_path) if p.exists()]
        if existing and not output.force:
            raise OutputExistsError(f"{', '.join(existing)} already exist(s): pass --force to overwrite")
    timer = Timer()
    dev = device_of(run.device)
    opts = mo.load_kwargs()
    with timer("load"):
        model = open_model(mo.path, **opts)
        other = open_model(mo.compare, **opts) if mo.compare is not None else None
        info = ds.load(model)
        if other is not None:
            fit_model(info, other)
        ood_args = _ood_args(ood, n_noise=n_noise, model=model, info=info, root=ds.data_root, split=ds.split,
                             download=ds.download, log=out.info)
        val = _val_data(val_data, model, str(ds.name), ds.data_root, ds.download, ds.image_size)
        if baselines:
            soft_m, gauss_m = _baseline_roles(model, other)

    models = [model] + ([other] if other is not None else [])
    paths = [mo.path] + ([mo.compare] if mo.compare is not None else [])
    keys = _keys(model, other)
    evals: dict[str, EvalResult] = {}
    lip_info: dict[str, dict[str, Any] | None] = {}
    for key, m in zip(keys, models, strict=True):
        with timer("lipschitz"):
            lp, how = _lipschitz(lipschitz, m)
        lip_info[key] = how
        total = len(info) + sum(len(a) if not isinstance(a, str) else n_noise for a in ood_args)
        with timer(f"evaluate_{key}"), out.progress(f"evaluate {key}", total) as prog:
            evals[key] = run_evaluate(
                m, info.dataset, ood=ood_args, n_noise=n_noise, batch_size=run.batch_size, device=dev,
                seed=run.seed, amp=run.amp, progress=prog, lipschitz=lp, per_class=per_class, workers=ds.workers,
                val_data=val[0] if val is not None else None, lipschitz_is_bound=bool(how and how["guaranteed"]),
            )

    per_model: dict[str, dict[str, Any]] = {}
    for key, res in evals.items():
        d = res.to_dict()
        m = models[keys.index(key)]
        if (nball if nball is not None else m.head_kind in PROTOTYPE_HEADS) and d.get("reject") is not None:
            with timer(f"nball_{key}"):
                d["reject"]["nball"] = _nball(m, info, str(ds.name), explicit=nball is True, root=ds.data_root,
                                              download=ds.download, batch_size=run.batch_size, device=dev, out=out)
        how = lip_info.get(key)
        if d.get("theorem2") is not None and how:
            d["theorem2"]["lipschitz_method"] = how["method"]
            d["theorem2"]["lipschitz_guaranteed"] = how["guaranteed"]
        per_model[key] = d
        if val is not None:
            d["validation"] = val[1]
    results: dict[str, Any] = dict(per_model[keys[0]])
    base_doc: dict[str, Any] | None = None
    if baselines:
        with timer("baselines"):
            base_doc = _baselines(soft_m, gauss_m, info, ood_args, str(ds.name), ds.data_root, ds.download,
                                  n_noise=n_noise, fit_n=fit_n, knn_k=knn_k, batch_size=run.batch_size,
                                  device=dev, seed=run.seed, shape=tuple(model.input_shape or info.input_shape))
        results["ood_baselines"] = base_doc["ood_baselines"]
        results["calibration"] = base_doc["calibration"]
    if other is not None:
        for key in keys:
            results[key] = per_model[key]
        results["models"] = {key: str(p) for key, p in zip(keys, paths, strict=True)}

    data_doc = {**info.to_dict(), "classes": info.classes}
    extra: dict[str, Any] = {}
    if other is not None and mo.compare is not None:
        extra["compare_model"] = describe_model(mo.compare, other)
    doc = envelope("evaluate", results, model=describe_model(mo.path, model), data=data_doc,
                   seed=run.seed, device=dev, timings=timer.timings, **extra)

    if json_path is not None and npz_path is not None:
        _save_npz(npz_path, _arrays(evals, _figure_key(keys)), output.force)
        write_json(json_path, doc, output.force)
        out.info(f"wrote {json_path} and {npz_path}")

    def human(con: Console) -> None:
        con.print(human_table(per_model, f"evaluate on {info.name} ({info.split}, {len(info)} inputs); "
                              "[95% interval: Wilson for rates, bootstrap for AUROC]"))
        if base_doc is not None:
            for src, rep in base_doc["ood_baselines"].items():
                con.print(baselines_table(src, rep, len(info)))
            con.print(calibration_table(base_doc["calibration"]))

    out.emit(doc, human)
    out.gate(output.gate, doc)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
