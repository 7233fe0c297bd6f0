"""Distance-based heads for penultimate features: a registry, builders and losses.

Every head follows one contract (see ``docs/heads.md``) so the rest of kmtools treats
them alike: ``kind`` (class attribute), ``forward(f) -> scores (N, c)`` with
``argmax(scores)`` the prediction, ``confidences(scores) -> (N, c)`` in [0, 1],
``num_classes``, ``config() -> dict`` (JSON), ``decision_scores(f)`` (smooth class scores
for DeepFool/curvature) and, for prototype heads, ``prototypes`` (P, d) and
``prototype_labels`` (P,).

Rebuilding from metadata: ``rebuild_head(kind, config, state_dict)``; for the prototype
heads this is ``HEADS[kind].from_config(config, state_dict)``.

>>> head = build_head("glvq", feats, labels, 10)            # doctest: +SKIP
>>> head2 = rebuild_head("glvq", head.config(), head.state_dict())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from kmtools.errors import CheckpointError, ConfigError, DataError
from kmtools.heads.lvq import GLVQHead, RSLVQHead, glvq_mu, squash
from kmtools.heads.rbf import (
    NORMALISERS,
    PrototypeHead,
    RBFHead,
    init_prototypes,
    kmeans_objective,
    normalise,
    rbf_kmeans,
    rbf_loss,
    responsibilities,
    soft_centroid_step,
    squared_distances,
)
from kmtools.models.checkpoint import register_head
from kmtools.models.core import GaussHead


class HeadClass(Protocol):
    """What :data:`HEADS` maps a kind to: a class that rebuilds a head from its
    ``config()`` and its (head-local or ``head.``-prefixed) state dict."""

    def from_config(self, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module: ...


class GaussHeadType(GaussHead):
    """:class:`kmtools.models.GaussHead` plus ``from_config`` (the registry entry for
    ``gauss``); :meth:`from_config` returns a plain ``GaussHead``."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        sd = _strip(dict(state_dict), "centroids")
        if "centroids" not in sd:
            raise CheckpointError("gauss head: the state dict has no 'centroids'")
        gamma = float(config.get("gamma", float(sd["gamma"]) if "gamma" in sd else 1.0))
        g = GaussHead(sd["centroids"], gamma=gamma)
        try:
            g.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"gauss head: state dict does not fit: {exc}") from exc
        return g


#: Head kinds -> classes with ``from_config`` (the CLI lists ``--head-kind`` choices from it).
HEADS: dict[str, HeadClass] = {
    "gauss": GaussHeadType,
    "rbf": RBFHead,
    "rslvq": RSLVQHead,
    "glvq": GLVQHead,
}
for _kind, _cls in HEADS.items():  # checkpoints name their head kind: make these loadable
    register_head(_kind, _cls)

__all__ = [
    "HEADS",
    "NORMALISERS",
    "GLVQHead",
    "GaussHead",
    "HeadClass",
    "PrototypeHead",
    "RBFHead",
    "RSLVQHead",
    "build_head",
    "decision_scores",
    "estimate_sigma",
    "fit_head",
    "glvq_mu",
    "head_loss",
    "head_prototypes",
    "init_prototypes",
    "kmeans_objective",
    "normalise",
    "onnx_to_opset17",
    "rbf_kmeans",
    "rbf_loss",
    "rebuild_head",
    "responsibilities",
    "soft_centroid_step",
    "squared_distances",
    "squash",
]


def _check_kind(kind: str) -> str:
    if kind not in HEADS:
        raise ConfigError(f"unknown head {kind!r}: use one of {', '.join(HEADS)}")
    return kind


def estimate_sigma(
    features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, prototype_labels: torch.Tensor
) -> float:
    """Width σ of the RSLVQ Gaussians, fitted as the maximum-likelihood isotropic variance
    of the features around the nearest prototype of their own class:
    ``σ² = mean_x min_{k: c_k = y(x)} ‖f(x) - w_k‖² / d``."""
    d = squared_distances(features, prototypes)
    own = prototype_labels.reshape(1, -1).to(d.device) == labels.reshape(-1, 1).to(d.device)
    dmin = torch.where(own, d, torch.full_like(d, float("inf"))).amin(dim=-1)
    var = float(dmin.mean()) / max(features.shape[1], 1)
    if not math.isfinite(var) or var <= 0:
        return 1.0
    return math.sqrt(var)


def build_head(
    kind: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    prototypes_per_class: int = 1,
    init: str | None = None,
    temperature: float | None = 1.0,
    normaliser: str = "softmax",
    sigma: float | None = None,
    squashing: str = "identity",
    slope: float = 1.0,
    seed: int = 0,
) -> nn.Module:
    """A head of ``kind`` placed on training ``features`` (N, d) with ``labels`` (N,).

    Parameters
    ----------
    kind : ``gauss``, ``rbf``, ``rslvq`` or ``glvq`` (keys of :data:`HEADS`).
    prototypes_per_class : M; ``gauss`` supports only 1.
    init : ``"means"`` (class means, M = 1 only) or ``"kmeans"`` (per-class k-means);
        ``None`` picks means for M = 1 and kmeans otherwise.
    temperature : ``rbf``: T of ``normalise(-d/T)``, ``None`` for ``T = 2σ²`` with σ from
        :func:`estimate_sigma` (the RSLVQ width: the softmax RBF head is then the RSLVQ
        posterior). ``gauss``: γ = 1/T of ``exp(-γ d)`` (1.0 is the paper's head), ``None``
        for ``T = E‖f - C_y‖² = d·σ²``, the γ that ``kmtools tailor`` starts from
        (:func:`kmtools.tailor.auto_gamma`: an average training point has κ_y = e⁻¹).
    normaliser : ``rbf`` only: ``softmax`` or ``entmax15``.
    sigma : ``rslvq`` only; ``None`` fits it with :func:`estimate_sigma`.
    squashing, slope : ``glvq`` only: loss squashing ``identity`` or ``sigmoid(slope·μ)``.
    seed : seeds the per-class k-means.

    The head lives on ``features.device``; its prototypes are trainable parameters (fit
    them further with :func:`fit_head`).
    """
    _check_kind(kind)
    if features.dim() != 2:
        raise DataError(f"features must be (N, d), got shape {tuple(features.shape)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    method = init if init is not None else ("means" if prototypes_per_class == 1 else "kmeans")
    if kind == "gauss" and prototypes_per_class != 1:
        raise ConfigError("the gauss head has one centroid per class: drop --prototypes-per-class")
    w, w_labels = init_prototypes(
        features, labels, num_classes, per_class=prototypes_per_class, method=method, seed=seed
    )
    auto_sigma: Callable[[], float] = lambda: estimate_sigma(features.float(), labels, w, w_labels)  # noqa: E731
    if kind == "gauss":
        t = temperature if temperature is not None else features.shape[1] * auto_sigma() ** 2
        return GaussHead(w, gamma=1.0 / t)
    if kind == "rbf":
        t = temperature if temperature is not None else 2.0 * auto_sigma() ** 2
        return RBFHead(w, w_labels, num_classes, temperature=t, normaliser=normaliser)
    if kind == "rslvq":
        s = sigma if sigma is not None else auto_sigma()
        return RSLVQHead(w, w_labels, num_classes, sigma=s)
    return GLVQHead(w, w_labels, num_classes, squashing=squashing, slope=slope)


def head_loss(head: nn.Module, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each head's own training loss, a scalar (mean over the batch).

    ``rbf``/``rslvq``/``glvq``: ``head.loss`` (see their classes); ``gauss``: the
    TailorNetwork objective ``mean ‖f - C_y‖²`` (Gauss paper, Algorithm 1, line 3); an
    ``nn.Linear`` softmax head: cross entropy.
    """
    y = y.reshape(-1).long()
    fn = getattr(head, "loss", None)
    if callable(fn):
        out: torch.Tensor = fn(f, y)
        return out
    if isinstance(head, GaussHead):
        c = head.centroids.to(f.dtype)[y]
        return (f - c).pow(2).sum(dim=-1).mean()
    if isinstance(head, nn.Linear):
        return F.cross_entropy(head(f), y)
    raise ConfigError(f"no training loss known for a {type(head).__name__} head")


def decision_scores(head: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """Smooth, differentiable class scores whose argmax is the prediction (for DeepFool and
    curvature): ``head.decision_scores`` if defined, else ``log κ`` for a Gauss head, else
    the head's output (logits of a linear head)."""
    fn = getattr(head, "decision_scores", None)
    if callable(fn):
        out: torch.Tensor = fn(f)
        return out
    fn = getattr(head, "log_kappa", None)
    if callable(fn):
        out = fn(f)
        return out
    out = head(f)
    return out


def head_prototypes(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prototypes (P, d), prototype_labels (P,))`` of a prototype or Gauss head."""
    if isinstance(head, PrototypeHead):
        return head.prototypes.detach(), head.prototype_labels
    c = getattr(head, "centroids", None)
    if isinstance(c, torch.Tensor):
        return c.detach(), torch.arange(c.shape[0], device=c.device)
    raise ConfigError(f"a {type(head).__name__} head has no prototypes")


def rebuild_head(kind: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild a head from the metadata kmtools stores (``head_kind`` and ``head.config()``)
    plus its state dict (head-local keys, or a whole-model state dict with ``head.``
    prefixes). Prototype heads: ``HEADS[kind].from_config(config, state_dict)``. Also
    handles ``gauss`` (centroids + gamma) and ``softmax`` (an ``nn.Linear``)."""
    sd = dict(state_dict)
    if kind == "softmax":
        sd = _strip(sd, "weight")
        if "weight" not in sd:
            raise CheckpointError("softmax head: the state dict has no 'weight'")
        out_f, in_f = sd["weight"].shape
        lin = nn.Linear(int(in_f), int(out_f), bias="bias" in sd)
        lin.load_state_dict(sd)
        return lin
    _check_kind(kind)
    return HEADS[kind].from_config(config, sd)


def _strip(sd: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    if key not in sd and f"head.{key}" in sd:
        return {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
    return sd


def fit_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 30,
    lr: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Train a head's own parameters (the prototypes) on frozen ``features`` with
    :func:`head_loss`, Adam, mini-batches. In place; returns ``head``.

    ``lr`` defaults to ``0.01 ·`` the features' standard deviation (Adam moves each
    parameter by about ``lr`` per step, so the step follows the feature scale).
    ``progress(epoch, epochs, loss)`` is called after every epoch. A head without
    trainable parameters (the Gauss head's centroids are frozen) is returned unchanged.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    if not params or epochs <= 0:
        return head
    f = features.detach().float()
    y = labels.reshape(-1).long().to(f.device)
    if lr is None:
        lr = 0.01 * float(f.std()) if f.numel() > 1 else 0.01
        lr = lr if lr > 0 else 0.01
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = head.training
    head.train()
    n = f.shape[0]
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(f.device)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = head_loss(head, f[idx], y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if progress is not None:
            progress(epoch + 1, epochs, total / n)
    head.train(was_training)
    return head


def onnx_to_opset17(model: Any) -> Any:
    """Convert an ONNX ``ModelProto`` exported at opset 18 (the dynamo exporter's lowest in
    current torch) to opset 17.

    ``torch.onnx.export(..., dynamo=True, opset_version=17)`` converts *before* it
    optimises the graph; for heads whose reductions take their axes from computed tensors
    (the prototype heads) that conversion fails and the exporter keeps opset 18 (it logs a
    warning; the model is still valid). Exporting at 18 and converting the *optimised*
    graph works, except that ``onnx.version_converter`` leaves the opset-18 attribute
    ``noop_with_empty_axes`` on ReduceMin/ReduceMax; it is dropped here (its value 0 is
    the opset-17 behaviour).
    """
    import onnx
    from onnx import version_converter

    out = version_converter.convert_version(model, 17)
    for node in out.graph.node:
        if node.op_type in ("ReduceMin", "ReduceMax", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2"):
            if any(a.name == "noop_with_empty_axes" and a.i != 0 for a in node.attribute):
                raise ConfigError(f"cannot express {node.op_type} with noop_with_empty_axes=1 in opset 17")
            attrs = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(attrs)
    onnx.checker.check_model(out)
    return out
