"""The ``--compare`` layout of a result document: written by :func:`compare_results`, read by
:func:`per_kind`, side by side so the two cannot drift apart.

One model: ``results`` holds its metrics (``nest=None``, as ``evaluate`` writes) or
``{"head_kind": kind, name: metrics}`` (``nest=name``, as the attacks write). Two models
(``--compare``): the same, for the first model, plus one entry per model under its key (its
head kind, or ``model``/``compare`` when both have the same kind: :func:`model_keys`) and
``models`` (key -> file). Gates such as ``gauss.accuracy>=softmax.accuracy-0.003`` read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_METRIC_KEYS = ("accuracy", "mean_confidence", "outlier_rate", "onepixel", "fgsm", "threshold")
# result keys that are never a head kind
_NOT_KINDS = {
    "ood", "theorem2", "reject", "history", "onepixel", "fgsm", "deepfool", "config", "options", "settings", "models",
}


def model_keys(kinds: Sequence[str]) -> list[str]:
    """Result keys of one or two models: their head kinds, or ``model``/``compare`` when equal."""
    if len(kinds) == 2 and kinds[0] == kinds[1]:
        return ["model", "compare"]
    return list(kinds)


def compare_results(
    per_model: Mapping[str, Mapping[str, Any]],
    *,
    paths: Sequence[str | Path] | None = None,
    nest: str | None = None,
    head_kind: str | None = None,
) -> dict[str, Any]:
    """``results`` of one command for the models in ``per_model`` (keys from :func:`model_keys`,
    the primary model first); ``nest`` puts each model's metrics under that name."""
    keys = list(per_model)
    first = per_model[keys[0]]
    res: dict[str, Any] = dict(first) if nest is None else {"head_kind": head_kind, nest: dict(first)}
    if len(keys) > 1:
        for key in keys:
            res[key] = dict(per_model[key]) if nest is None else {nest: dict(per_model[key])}
        if paths is not None:
            res["models"] = {key: str(p) for key, p in zip(keys, paths, strict=False)}
    return res


def primary_kind(doc: Mapping[str, Any]) -> str:
    """The head kind of the document's (first) model, or ``model``."""
    res = doc.get("results") or {}
    model = doc.get("model") or {}
    kind = res.get("head_kind") or (model.get("head_kind") if isinstance(model, Mapping) else None)
    return str(kind) if kind else "model"


def _looks_like_metrics(d: Any) -> bool:
    return isinstance(d, Mapping) and any(k in d for k in _METRIC_KEYS)


def per_kind(doc: Mapping[str, Any] | None, key: str | None = None) -> dict[str, dict[str, Any]]:
    """``{head_kind: metrics}`` from one command's document (the reader of :func:`compare_results`).

    With ``key`` (``"onepixel"``, ``"fgsm"``): ``results[key]`` is the primary model's and
    ``results[kind][key]`` each compared model's. Without: the top-level metrics of ``results``
    are the primary model's and every ``results[kind]`` sub-object holding metrics is a
    compared model's. When compared models are present the top level (a copy of the first
    model, as the commands write it) only fills gaps of the sub-object of the same kind.
    """
    if not doc:
        return {}
    res = doc.get("results") or {}
    primary = primary_kind(doc)
    top = res.get(key) if key else res
    top_metrics: dict[str, Any] | None = None
    if isinstance(top, Mapping) and (key is not None or _looks_like_metrics(top)):
        top_metrics = {k: v for k, v in top.items() if key is not None or not _looks_like_metrics(v)}
    subs: dict[str, dict[str, Any]] = {}
    for kind, sub in res.items():
        if kind in _NOT_KINDS or not isinstance(sub, Mapping):
            continue
        part = sub.get(key) if key else sub
        if isinstance(part, Mapping) and (key is not None or _looks_like_metrics(part)):
            subs[kind] = dict(part)
    if not subs:
        return {primary: top_metrics} if top_metrics is not None else {}
    if top_metrics is not None and primary in subs:
        subs[primary] = {**top_metrics, **subs[primary]}
    return subs
