"""The result of a one-pixel attack (:func:`kmtools.attacks.onepixel.onepixel`): per-image
tensors, the JSON summary with Wilson intervals, JSON-lines records (resume) and the paired
comparison of two models attacked on the same images (Newcombe interval, McNemar test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from kmtools.attacks.onepixel_candidates import _build
from kmtools.errors import ConfigError
from kmtools.stats import mcnemar, paired_diff, wilson


@dataclass
class OnePixelResult:
    """One-pixel attack result for N images (per-image tensors on the CPU).

    Attributes:
        index: (N,) position of each image in the input batch.
        labels: (N,) true labels.
        skipped: (N,) True for images the model already got wrong (or, targeted, that are
            already predicted as the target): counted, not attacked.
        success: (N,) True where ``x_adv`` fools the model (prediction != label, or ==
            target), judged in float32.
        adv_labels: (N,) prediction at ``x_adv`` (the clean prediction when skipped).
        preds: (N,) clean predictions; conf_clean: (N,) their confidence.
        conf_before: (N,) confidence of the true class on the clean image.
        conf_adv: (N,) confidence of the predicted class at ``x_adv``.
        outlier: (N,) predicted-class confidence at ``x_adv`` below ``threshold``
            (meaningful for Gauss nets; a softmax's top probability is never below 1/c).
        pixel: (N, pixels, 2 + C) the best candidate: row (y), column (x), colour
            (NaN when skipped).
        generations: (N,) DE generations run (0: the initial population decided).
        evaluations: (N,) candidate images evaluated.
        x_adv: (N, C, H, W) adversarial images (the best candidate applied; equal to the
            input when skipped), on the input's device.
    """

    index: torch.Tensor
    labels: torch.Tensor
    skipped: torch.Tensor
    success: torch.Tensor
    adv_labels: torch.Tensor
    preds: torch.Tensor
    conf_clean: torch.Tensor
    conf_before: torch.Tensor
    conf_adv: torch.Tensor
    outlier: torch.Tensor
    pixel: torch.Tensor
    generations: torch.Tensor
    evaluations: torch.Tensor
    x_adv: torch.Tensor
    pixels: int = 1
    popsize: int = 400
    maxiter: int = 100
    target: list[int] | None = None
    threshold: float = 0.1
    head_kind: str = "softmax"
    seed: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    success_by: dict[str, torch.Tensor] = field(default_factory=dict)
    effective_by: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def effective(self) -> torch.Tensor:
        """(N,) fooled *and* not flagged as an outlier (confidence of the wrong prediction at
        or above ``threshold``): the attacks a detector-equipped model does not catch."""
        return self.success & ~self.skipped & ~self.outlier

    @property
    def robust(self) -> torch.Tensor:
        """(N,) correctly classified and not fooled (robust accuracy's per-image outcome)."""
        return (self.preds == self.labels) & ~(self.success & ~self.skipped)

    def outcomes(self) -> dict[str, np.ndarray]:
        """Per-image boolean outcomes aligned with ``index``, for paired tests (McNemar):
        ``attacked``, ``fooled``, ``effective``, ``robust`` and, for ``fitness="both"``,
        ``fooled_<fitness>`` / ``effective_<fitness>``."""
        out = {
            "attacked": (~self.skipped).numpy(),
            "fooled": (self.success & ~self.skipped).numpy(),
            "effective": self.effective.numpy(),
            "robust": self.robust.numpy(),
        }
        for k, v in self.success_by.items():
            out[f"fooled_{k}"] = (v & ~self.skipped).numpy()
        for k, v in self.effective_by.items():
            out[f"effective_{k}"] = (v & ~self.skipped).numpy()
        return out

    @property
    def attacked(self) -> int:
        return int((~self.skipped).sum())

    @property
    def fooled(self) -> int:
        return int((self.success & ~self.skipped).sum())

    @property
    def rate(self) -> float:
        """Attack rate: fooled / attacked (0 when nothing was attacked)."""
        return self.fooled / self.attacked if self.attacked else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Summary: counts, attack rate, mean confidence of fooled predictions, outlier share.

        Keys: ``accuracy`` and ``mean_confidence`` (predicted class, clean images) over all
        N images; ``attacked``, ``skipped``, ``fooled``, ``rate`` = fooled / attacked with
        its 95% Wilson interval ``rate_lo``/``rate_hi`` and ``n`` = attacked; ``effective``
        (fooled and not flagged as an outlier, same keys); ``robust_accuracy`` (correct and
        not fooled, over all N images); ``fitness``, ``success_rule``, ``bounds``,
        ``adaptive``; ``by_fitness`` (each fitness's rate and their McNemar test) for
        ``fitness="both"``;
        ``mean_conf_fooled`` (confidence of the fooled predictions); ``outlier_share``
        (share of fooled predictions below ``threshold``). Wall time is kept out of the
        summary (same seed, same summary): see :meth:`throughput`.
        """
        fooled = self.success & ~self.skipped
        att = ~self.skipped
        n = len(self)
        evals = int(self.evaluations.sum())
        st = self.settings
        by: dict[str, Any] = {}
        for k, v in self.success_by.items():
            by[k] = wilson(int((v & att).sum()), self.attacked).to_dict(count="fooled")
            if k in self.effective_by:
                by[k]["effective"] = wilson(int((self.effective_by[k] & att).sum()), self.attacked).to_dict(
                    count="fooled")
        if {"confidence", "margin"} <= set(self.success_by):
            by["mcnemar"] = mcnemar(self.success_by["confidence"][att].numpy(),
                                    self.success_by["margin"][att].numpy()).to_dict()
        return {
            "attack": "onepixel",
            "head_kind": self.head_kind,
            "pixels": self.pixels,
            "popsize": self.popsize,
            "maxiter": self.maxiter,
            "targeted": self.target is not None,
            "seed": self.seed,
            "images": n,
            "accuracy": int((self.preds == self.labels).sum()) / n if n else None,
            "mean_confidence": float(self.conf_clean.mean()) if n else None,
            "attacked": self.attacked,
            "skipped": int(self.skipped.sum()),
            **wilson(self.fooled, self.attacked).to_dict(count="fooled"),
            "effective": wilson(int(self.effective.sum()), self.attacked).to_dict(count="fooled"),
            "robust_accuracy": wilson(int(self.robust.sum()), n).to_dict(count="correct"),
            "fitness": st.get("fitness", "confidence"),
            "success_rule": st.get("success", "any"),
            "bounds": st.get("bounds", "clip"),
            "adaptive": bool(st.get("adaptive", False)),
            **({"by_fitness": by} if by else {}),
            "mean_conf_fooled": float(self.conf_adv[fooled].mean()) if fooled.any() else None,
            "outlier_share": float(self.outlier[fooled].float().mean()) if fooled.any() else None,
            "outlier_threshold": self.threshold,
            "generations_mean": float(self.generations[att].float().mean()) if att.any() else None,
            "evaluations": evals,
            **({"settings": self.settings} if self.settings else {}),
        }

    def throughput(self) -> dict[str, float | None]:
        """Wall time, attacked images per second and candidate images scored per second."""
        evals = int(self.evaluations.sum())
        sec = self.seconds
        return {
            "seconds": sec,
            "images_per_s": self.attacked / sec if sec > 0 else None,
            "candidates_per_s": evals / sec if sec > 0 else None,
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per image, for JSON lines (:meth:`from_records` reads them back exactly).

        Keys: ``index``, ``label``, ``skipped``, ``success``, ``pred`` (clean prediction),
        ``conf_clean`` (its confidence), ``conf_before`` (true class, clean), ``adv_label``,
        ``conf_adv`` (predicted class at x̃), ``outlier``, ``pixels`` (``[{"x", "y",
        "value"}]``, ``None`` when skipped), ``generations``, ``evaluations`` and, when
        targeted, ``target``. Floats are the exact float32 values.
        """
        out = []
        for i in range(len(self)):
            skipped = bool(self.skipped[i])
            px = None
            if not skipped:
                px = [
                    {"x": int(p[1]), "y": int(p[0]), "value": [float(v) for v in p[2:]]}
                    for p in self.pixel[i]
                ]
            rec: dict[str, Any] = {
                "index": int(self.index[i]),
                "label": int(self.labels[i]),
                "skipped": skipped,
                "success": bool(self.success[i]) and not skipped,
                "pred": int(self.preds[i]),
                "conf_clean": float(self.conf_clean[i]),
                "conf_before": float(self.conf_before[i]),
                "adv_label": int(self.adv_labels[i]),
                "conf_adv": float(self.conf_adv[i]),
                "outlier": bool(self.outlier[i]),
                "pixels": px,
                "generations": int(self.generations[i]),
                "evaluations": int(self.evaluations[i]),
            }
            if self.target is not None:
                rec["target"] = int(self.target[i])
            if self.success_by:
                rec["success_by"] = {k: bool(v[i]) for k, v in self.success_by.items()}
                rec["effective_by"] = {k: bool(v[i]) for k, v in self.effective_by.items()}
            out.append(rec)
        return out

    def take(self, idx: torch.Tensor | Sequence[int]) -> OnePixelResult:
        """The result for the images at positions ``idx`` (same settings)."""
        i = torch.as_tensor(idx, dtype=torch.long).cpu()
        per_image = {
            name: getattr(self, name)[i.to(getattr(self, name).device)]
            for name in (
                "index", "labels", "skipped", "success", "adv_labels", "preds", "conf_clean",
                "conf_before", "conf_adv", "outlier", "pixel", "generations", "evaluations", "x_adv",
            )
        }
        tgt = None if self.target is None else [self.target[int(j)] for j in i]
        return replace(self, **per_image, target=tgt, success_by={k: v[i] for k, v in self.success_by.items()},
                       effective_by={k: v[i] for k, v in self.effective_by.items()})

    @classmethod
    def from_records(
        cls,
        records: Sequence[dict[str, Any]],
        x: torch.Tensor,
        *,
        pixels: int,
        popsize: int,
        maxiter: int,
        threshold: float,
        head_kind: str = "softmax",
        seed: int = 0,
        settings: dict[str, Any] | None = None,
    ) -> OnePixelResult:
        """Rebuild a result from :meth:`records` (``x[i]`` is the image of ``records[i]``).

        ``x_adv`` is ``x`` with each record's pixels applied, bit for bit the image the
        attack judged. ``seconds`` is 0 (wall time is not part of the records).
        """
        n = len(records)
        if x.shape[0] != n:
            raise ConfigError(f"{n} records for {x.shape[0]} images")
        ch = x.shape[1] if x.dim() == 4 else 1
        d = pixels * (2 + ch)

        def col(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([r[key] for r in records], dtype=dtype)

        pix = torch.full((n, d), float("nan"))
        for i, r in enumerate(records):
            if r.get("pixels"):
                pix[i] = torch.tensor([[p["y"], p["x"], *p["value"]] for p in r["pixels"]]).flatten()
        skipped = col("skipped", torch.bool) if n else torch.zeros(0, dtype=torch.bool)
        x_adv = x.clone()
        att = (~skipped).nonzero().flatten()
        if att.numel():
            imgs = _build(x[att].float(), torch.arange(att.numel()), pix[att], pixels, False)
            x_adv[att] = imgs.to(x.dtype)
        targets = [r.get("target") for r in records]
        by_keys = list(records[0].get("success_by", {})) if n else []
        eff_keys = list(records[0].get("effective_by", {})) if n else []
        return cls(
            success_by={k: torch.tensor([bool(r["success_by"][k]) for r in records]) for k in by_keys},
            effective_by={k: torch.tensor([bool(r["effective_by"][k]) for r in records]) for k in eff_keys},
            index=col("index", torch.long),
            labels=col("label", torch.long),
            skipped=skipped,
            success=col("success", torch.bool) if n else torch.zeros(0, dtype=torch.bool),
            adv_labels=col("adv_label", torch.long),
            preds=col("pred", torch.long),
            conf_clean=col("conf_clean", torch.float32),
            conf_before=col("conf_before", torch.float32),
            conf_adv=col("conf_adv", torch.float32),
            outlier=col("outlier", torch.bool) if n else torch.zeros(0, dtype=torch.bool),
            pixel=pix.view(n, pixels, 2 + ch),
            generations=col("generations", torch.long),
            evaluations=col("evaluations", torch.long),
            x_adv=x_adv,
            pixels=pixels,
            popsize=popsize,
            maxiter=maxiter,
            target=[int(t) for t in targets if t is not None] if n and None not in targets else None,
            threshold=threshold,
            head_kind=head_kind,
            seed=seed,
            settings=dict(settings or {}),
        )


def paired(a: OnePixelResult, b: OnePixelResult) -> dict[str, Any]:
    """Paired comparison of two models attacked on the same images (matched by ``index``).

    ``robust``: robust accuracy (correct and not fooled) of ``b`` minus ``a`` over all
    shared images, with Newcombe's interval and McNemar's exact test; ``fooled`` and
    ``effective``: the same for the attack rates, over the images both models attacked
    (both classified correctly), so no image enters one rate and not the other.
    """
    ia = {int(v): i for i, v in enumerate(a.index.tolist())}
    common = [(ia[int(v)], j) for j, v in enumerate(b.index.tolist()) if int(v) in ia]
    if not common:
        raise ConfigError("the two results share no images (compare runs on the same inputs)")
    pa = torch.tensor([c[0] for c in common])
    pb = torch.tensor([c[1] for c in common])
    oa, ob = a.outcomes(), b.outcomes()
    both = oa["attacked"][pa.numpy()] & ob["attacked"][pb.numpy()]
    out: dict[str, Any] = {"images": len(common), "attacked_by_both": int(both.sum())}
    out["robust"] = paired_diff(oa["robust"][pa.numpy()], ob["robust"][pb.numpy()]).to_dict()
    for key in ("fooled", "effective"):
        out[key] = paired_diff(oa[key][pa.numpy()][both], ob[key][pb.numpy()][both]).to_dict()
    return out
