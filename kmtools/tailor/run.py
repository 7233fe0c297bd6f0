"""``kmtools tailor`` as one library call: validation data, TailorNetwork, paired test figures,
files written in a safe order (the model and ``tailor.json`` before optional exports)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from kmtools.data import DataInfo
from kmtools.data.split import DEFAULT_MAX_ITEMS, DEFAULT_SEED, holdout_split, indices_digest, labels_of
from kmtools.export import ExportError
from kmtools.features import extract
from kmtools.models import KmModel, head_confidences
from kmtools.stats import paired_diff, wilson
from kmtools.tailor.config import TailorConfig, TailorResult
from kmtools.tailor.loop import Log, Progress, tailor

#: export format -> the module it needs, and the extra that brings it
_BACKENDS = {"onnx": ("onnxruntime", "onnx"), "pt2": ("torch", "")}


@dataclass
class Validation:
    """Where the validation data came from (``source``: val-data, split or none)."""

    data: Dataset[Any] | None
    info: dict[str, Any] = field(default_factory=dict)


def validation(train: DataInfo, val: DataInfo | None, fraction: float, seed: int = DEFAULT_SEED
               ) -> tuple[Dataset[Any], Validation]:
    """The training data to tailor on and the validation data (see ``docs/tailor.md``).

    ``val`` (``--val-data``) wins; else a stratified, seeded ``fraction`` of the training data
    (at most 5,000 items) is held out; ``fraction == 0`` means no validation."""
    if val is not None:
        return train.dataset, Validation(val.dataset, {"source": "val-data", "n": len(val), "data": val.to_dict()})
    if fraction <= 0:
        return train.dataset, Validation(None, {"source": "none", "n": 0})
    tr, va = holdout_split(labels_of(train.dataset), fraction, DEFAULT_MAX_ITEMS, seed)
    info = {"source": "split", "fraction": fraction, "max_items": DEFAULT_MAX_ITEMS, "seed": seed,
            "n": len(va), "n_train": len(tr), "indices_sha256": indices_digest(va),
            "note": "held out of the training data: it measures generalisation only if the network "
                    "was not trained on it (the reference models were not)"}
    return Subset(train.dataset, tr.tolist()), Validation(Subset(train.dataset, va.tolist()), info)


def test_figures(softmax: KmModel, gauss: KmModel, test: Dataset[Any], device: torch.device,
                 batch_size: int = 256) -> dict[str, Any]:
    """Accuracy (Wilson), mean confidence and the paired accuracy change (Newcombe, McNemar)."""
    out: dict[str, Any] = {}
    correct = []
    for name, m in (("softmax", softmax), ("gauss", gauss)):
        fe = extract(m, test, batch_size=batch_size, device=device)
        ok = (fe.predictions == fe.labels).numpy()
        conf = head_confidences(m.head, fe.scores).max(1).values
        r = wilson(int(ok.sum()), len(ok))
        out[name] = {"accuracy": r.rate, "accuracy_lo": r.lo, "accuracy_hi": r.hi, "correct": r.k, "n": r.n,
                     "mean_confidence": float(conf.mean())}
        correct.append(ok)
    out["accuracy_change"] = paired_diff(correct[0], correct[1]).to_dict()
    return out


@dataclass
class TailorRun:
    """The record ``tailor.json`` holds, and whether a Gauss network was exported."""

    result: TailorResult
    results: dict[str, Any]
    files: dict[str, str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return self.result.model is not None


def run_tailor(
    model: KmModel,
    train: DataInfo,
    test: DataInfo | None,
    cfg: TailorConfig,
    *,
    out_dir: Path,
    val: DataInfo | None = None,
    val_split: float = 0.1,
    device: torch.device | None = None,
    resume: bool = False,
    export_formats: tuple[str, ...] = ("pt2", "onnx"),
    write_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
) -> TailorRun:
    """Tailor ``model`` and write ``OUT/<head>.safetensors`` and exports (rank 0 only).

    ``write_record(results)`` writes ``tailor.json`` (the CLI wraps it in the JSON envelope);
    it runs after the model is saved and before the exports, and also when no epoch qualified."""
    from kmtools.models import save_model

    device = device or torch.device("cpu")
    say = log or (lambda _m: None)
    data, v = validation(train, val, val_split)
    res = tailor(model, data, cfg, val_data=v.data, dataset=train.name, device=device,
                 checkpoint=out_dir / "tailor-checkpoint.pt", resume=resume, progress=progress, log=say)
    res.validation.update(v.info)
    results: dict[str, Any] = {**res.to_dict()}
    files: dict[str, str] = {}
    warnings: list[str] = []
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if res.model is not None and test is not None:
        results["test"] = test_figures(model, res.model, test.dataset, device)
        results["softmax"] = results["test"]["softmax"]
        results[cfg.head] = {**results["test"]["gauss"], "threshold": res.model.threshold}
        results["accuracy_change"] = results["test"]["accuracy_change"]["diff"]
    results["gamma"] = float(getattr(res.model.head, "gamma", float("nan"))) if res.model is not None else None
    results["files"] = files
    if rank != 0:
        return TailorRun(res, results, files, warnings)
    target = out_dir / f"{cfg.head}.safetensors"
    if res.model is not None:
        save_model(res.model, target, force=True)
        files["kmtools"] = str(target)
    if write_record is not None:
        write_record(results)
    if res.model is not None and export_formats:
        try:
            results["export"] = _exports(res.model, target, export_formats, warnings, say)
        except ExportError as exc:  # the model and the record are kept; the command still fails
            results["export"] = {"error": str(exc)}
            raise
        finally:
            if write_record is not None:
                write_record(results)
    return TailorRun(res, results, files, warnings)


def _exports(model: KmModel, target: Path, formats: tuple[str, ...], warnings: list[str], say: Log) -> dict[str, Any]:
    """Optional exports; a missing backend is a one-line warning naming the extra, not a failure."""
    from kmtools.export import export

    ok = []
    for fmt in formats:
        mod, extra = _BACKENDS.get(fmt, ("", ""))
        if mod and importlib.util.find_spec(mod) is None:
            msg = f"skipped the {fmt} export: it needs {mod} (pip install 'kmtools[{extra}]')"
            warnings.append(msg)
            say(f"warning: {msg}")
        else:
            ok.append(fmt)
    if not ok:
        return {"skipped": list(formats)}
    out = export(model, target, formats=tuple(ok), force=True).to_dict()
    return {**out, "skipped": [f for f in formats if f not in ok]}
