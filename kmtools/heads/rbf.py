"""RBF responsibilities, differentiable k-means and the RBF prototype head.

This module also holds what every prototype head shares: exact-enough squared distances
(``squared_distances``), prototype initialisation (``init_prototypes``) and the
:class:`PrototypeHead` base class that :mod:`kmtools.heads.lvq` builds on.

The maths ("K-Means as a Radial Basis function Network", Arredondo, Ucan-Puc and Astengo
Noguez; we only have the abstract, so the formulas below are our reading of it):

* responsibilities ``r_k(x) = normalise(-‖x - μ_k‖² / T)_k`` with temperature ``T > 0``
  and ``normalise`` = softmax or Entmax-1.5;
* the smooth loss ``L_T(μ) = Σ_x Σ_k r_k(x) ‖x - μ_k‖²``, which tends to the k-means
  objective ``J(μ) = Σ_x min_k ‖x - μ_k‖²`` as ``T → 0`` (Entmax-1.5 reaches it at a
  *finite* ``T``: once ``T`` is below the gap between the nearest and second-nearest
  centroid, the responsibilities are exactly one-hot);
* with the responsibilities held fixed (stop-gradient), ``∂L/∂μ_k = -2 Σ_x r_k(x)(x - μ_k)``,
  so a gradient step with step size ``η_k = 1 / (2 Σ_x r_k(x))`` lands exactly on the
  responsibility-weighted mean ``Σ_x r_k(x) x / Σ_x r_k(x)``: the soft centroid update,
  which is Lloyd's update when ``r`` is hard (``T → 0``).

Numerics (what the tests in ``tests/test_heads_rbf.py`` show, stated plainly): the naive
form ``exp(z) / Σ exp(z)`` of the softmax underflows to ``0/0 = NaN`` at low ``T`` in
float32 and bfloat16 (both have an exponent range ending near ``e^-104``), while
Entmax-1.5 involves no exponential and stays finite. ``torch.softmax`` subtracts the row
maximum first, so it does *not* produce NaN: at low ``T`` it returns exact one-hots whose
gradient with respect to the non-winning centroids is exactly zero (Entmax-1.5 does the
same, by design). In bfloat16, logits ``-d/T`` of large magnitude are rounded onto a coarse
grid and near-ties collapse into exact ties for *any* normaliser; this module therefore
computes distances in float32 (never under autocast) and shifts them by the row minimum
before dividing by ``T``, which keeps the Voronoi argmax for both normalisers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from kmtools.centroids import (  # the soft k-means maths lives with the other k-means
    NORMALISERS,
    check_normaliser,
    kmeans_objective,
    kmeans_plusplus,
    normalise,
    rbf_kmeans,
    rbf_loss,
    responsibilities,
    soft_centroid_step,
    squared_distances,
)
from kmtools.errors import CheckpointError, ConfigError, DataError

# k-means++ under its former name here
kmeans_plus_plus = kmeans_plusplus
__all__ = [
    "NORMALISERS", "PrototypeHead", "RBFHead", "check_normaliser", "init_prototypes", "kmeans_objective",
    "kmeans_plus_plus", "normalise", "rbf_kmeans", "rbf_loss", "responsibilities", "soft_centroid_step",
    "squared_distances",
]

def _entmax15_loss() -> Callable[..., torch.Tensor]:
    try:
        from entmax import entmax15_loss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "normaliser 'entmax15' needs the entmax package: pip install 'kmtools[heads]'"
        ) from exc
    return entmax15_loss  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- prototypes


def init_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    per_class: int = 1,
    method: str = "means",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial prototypes ``(P, d)`` and their labels ``(P,)``, class-major order
    (class 0's ``per_class`` prototypes first).

    ``method="means"``: class means (the k-means centroids ``C = f(X) Y (YᵀY)⁻¹`` of the
    Gauss-network paper); only for ``per_class == 1``, since M copies of one mean could
    never separate. ``method="kmeans"``: per-class k-means (:func:`kmtools.centroids.kmeans`,
    Lloyd from k-means++ seeds, best of 10 restarts, seeded by ``seed``), the
    initialisation recommended in Sec. 8 of the prototype-layers paper. With
    ``per_class == 1`` both give the class means.
    """
    if features.dim() != 2:
        raise DataError(f"features must be (N, d), got shape {tuple(features.shape)}")
    labels = labels.reshape(-1).long()
    if labels.numel() != features.shape[0]:
        raise DataError(f"{features.shape[0]} feature rows but {labels.numel()} labels")
    if per_class < 1:
        raise ConfigError(f"prototypes per class must be >= 1, got {per_class}")
    if method not in ("means", "kmeans"):
        raise ConfigError(f"unknown prototype init {method!r}: use means or kmeans")
    if method == "means" and per_class > 1:
        raise ConfigError(
            "init 'means' would put all prototypes of a class on its mean: use init 'kmeans' "
            "with more than one prototype per class"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes - 1}]")
    f = features.detach().double().cpu()
    y = labels.cpu()
    protos: list[torch.Tensor] = []
    for c in range(num_classes):
        fc = f[y == c]
        if fc.shape[0] == 0:
            raise DataError(f"class {c} has no training features: cannot place its prototype(s)")
        if per_class == 1:
            protos.append(fc.mean(dim=0, keepdim=True))
            continue
        if fc.shape[0] < per_class:
            raise DataError(
                f"class {c} has {fc.shape[0]} training features, fewer than the {per_class} "
                "prototypes asked for: lower --prototypes-per-class"
            )
        from kmtools.centroids import kmeans

        protos.append(kmeans(fc, per_class, n_init=10, seed=seed).centroids.double())
    w = torch.cat(protos).float().to(features.device)
    w_labels = torch.arange(num_classes).repeat_interleave(per_class).to(features.device)
    return w, w_labels


class PrototypeHead(nn.Module):
    """Base of the prototype heads: labelled prototypes and class-wise reductions.

    ``prototypes`` (P, d) is an ``nn.Parameter``; ``prototype_labels`` (P,) a persistent
    buffer (both are in the state dict, which is all :meth:`from_config` needs besides
    :meth:`config`). Hyperparameters are plain Python numbers, so ONNX export bakes them
    in as constants.
    """

    kind: ClassVar[str] = "prototype"
    _config_keys: ClassVar[tuple[str, ...]] = ()
    prototype_labels: torch.Tensor
    class_mask: torch.Tensor

    def __init__(
        self, prototypes: torch.Tensor, prototype_labels: torch.Tensor, num_classes: int | None = None
    ) -> None:
        super().__init__()
        if prototypes.dim() != 2:
            raise ConfigError(f"prototypes must be (P, d), got shape {tuple(prototypes.shape)}")
        labels = prototype_labels.detach().reshape(-1).long().to(prototypes.device)
        if labels.numel() != prototypes.shape[0]:
            raise ConfigError(f"{prototypes.shape[0]} prototypes but {labels.numel()} prototype labels")
        c = int(num_classes) if num_classes is not None else int(labels.max()) + 1
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= c:
            raise ConfigError(f"prototype labels must lie in [0, {c - 1}]")
        missing = sorted(set(range(c)) - set(labels.tolist()))
        if missing:
            raise ConfigError(f"classes without a prototype: {missing[:10]}")
        self.prototypes = nn.Parameter(prototypes.detach().clone().float())
        self.register_buffer("prototype_labels", labels.clone())
        self.register_buffer("class_mask", F.one_hot(labels, c).T.bool(), persistent=False)
        self._num_classes = c

    # -- contract ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def prototypes_per_class(self) -> list[int]:
        return [int(v) for v in self.class_mask.sum(dim=1).tolist()]

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"num_classes": self.num_classes}
        for key in self._config_keys:
            cfg[key] = getattr(self, key)
        return cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> PrototypeHead:
        """Rebuild a head from :meth:`config` and its state dict (keys ``prototypes``,
        ``prototype_labels``; a ``head.`` prefix, as in a whole-model state dict, is
        stripped). Shapes come from the state dict."""
        sd = {k: v for k, v in state_dict.items()}
        if "prototypes" not in sd and "head.prototypes" in sd:
            sd = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
        for key in ("prototypes", "prototype_labels"):
            if key not in sd:
                raise CheckpointError(f"{cls.kind} head: the state dict has no {key!r} entry")
        unknown = sorted(set(config) - {"num_classes", "kind", *cls._config_keys})
        if unknown:
            raise CheckpointError(f"{cls.kind} head: unknown config keys {unknown}")
        kwargs = {k: config[k] for k in cls._config_keys if k in config}
        protos = sd["prototypes"]
        head = cls(
            torch.zeros(protos.shape, dtype=torch.float32),
            sd["prototype_labels"],
            config.get("num_classes"),
            **kwargs,
        )
        try:
            head.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{cls.kind} head: state dict does not fit: {exc}") from exc
        return head

    # -- shared maths -----------------------------------------------------------------
    def sq_dist(self, f: torch.Tensor) -> torch.Tensor:
        """Squared distances to every prototype, (N, P), float32 or better."""
        return squared_distances(f, self.prototypes)

    def class_min(self, d: torch.Tensor) -> torch.Tensor:
        """``min_{k: c_k = c} d_k`` for every class: (N, P) -> (N, c)."""
        inf = torch.full((), float("inf"), dtype=d.dtype, device=d.device)
        return torch.where(self.class_mask.unsqueeze(0), d.unsqueeze(1), inf).amin(dim=-1)

    def class_logsumexp(self, z: torch.Tensor) -> torch.Tensor:
        """``log Σ_{k: c_k = c} exp z_k`` for every class: (N, P) -> (N, c)."""
        ninf = torch.full((), float("-inf"), dtype=z.dtype, device=z.device)
        return torch.where(self.class_mask.unsqueeze(0), z.unsqueeze(1), ninf).logsumexp(dim=-1)

    def class_sum(self, r: torch.Tensor) -> torch.Tensor:
        """``Σ_{k: c_k = c} r_k``: (N, P) -> (N, c), as a matrix product."""
        return r @ self.class_mask.T.to(r.dtype)

    def nearest_prototype(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Winner prototype index (N,) and its squared distance (N,): the WTA rule, Eq. (3)."""
        d, idx = self.sq_dist(f).min(dim=-1)
        return idx, d

    def correct_target(self, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Index of the nearest prototype of each sample's own class, (N,)."""
        own = self.prototype_labels.unsqueeze(0) == y.reshape(-1, 1)
        inf = torch.full((), float("inf"), dtype=d.dtype, device=d.device)
        return torch.where(own, d, inf).argmin(dim=-1)

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self(f)
        return out.argmax(dim=-1)


class RBFHead(PrototypeHead):
    """RBF head: class scores are summed responsibilities ``Σ_{k: c_k = c} r_k(f)`` with
    ``r = normalise(-‖f - μ_k‖² / T)``, softmax or Entmax-1.5 (module docstring).

    With ``normaliser="softmax"`` this is the RSLVQ class posterior with ``T = 2σ²``
    (prototype paper Sec. 6.1, Eq. 19); Entmax-1.5 gives sparse posteriors that are
    exactly one-hot deep inside a Voronoi cell. Scores are probabilities, so
    ``confidences(scores) = scores``.

    Training loss (:meth:`loss`): softmax -> negative log class posterior (cross entropy
    on the class marginal); entmax15 -> the Entmax-1.5 Fenchel-Young loss with the
    nearest prototype of the true class as target (log of an exact zero would be
    infinite). :meth:`distortion` is the paper's unsupervised ``Σ r ‖f - μ‖²``.
    """

    kind: ClassVar[str] = "rbf"
    _config_keys: ClassVar[tuple[str, ...]] = ("temperature", "normaliser")

    def __init__(
        self,
        prototypes: torch.Tensor,
        prototype_labels: torch.Tensor,
        num_classes: int | None = None,
        *,
        temperature: float = 1.0,
        normaliser: str = "softmax",
    ) -> None:
        super().__init__(prototypes, prototype_labels, num_classes)
        if not temperature > 0 or not math.isfinite(temperature):
            raise ConfigError(f"temperature must be a positive number, got {temperature}")
        self.temperature = float(temperature)
        self.normaliser = check_normaliser(normaliser)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """``-(d - min d) / T`` per prototype, (N, P)."""
        d = self.sq_dist(f)
        return -(d - d.min(dim=-1, keepdim=True).values) / self.temperature

    def responsibilities(self, f: torch.Tensor) -> torch.Tensor:
        return normalise(self.logits(f), self.normaliser)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.class_sum(self.responsibilities(f))

    def confidences(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.clamp(0.0, 1.0)

    def decision_scores(self, f: torch.Tensor) -> torch.Tensor:
        """Smooth class scores ``log Σ_{k∈c} exp(-d_k / T)``; with softmax their argmax is
        the prediction exactly, with Entmax-1.5 too for one prototype per class."""
        return self.class_logsumexp(-self.sq_dist(f) / self.temperature)

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.logits(f)
        y = y.reshape(-1).long()
        if self.normaliser == "softmax":
            return (z.logsumexp(dim=-1) - self.class_logsumexp(z).gather(1, y[:, None]).squeeze(1)).mean()
        d = -z  # shifted distances / T; same argmin
        target = self.correct_target(d, y)
        return _entmax15_loss()(z, target).mean()

    def distortion(self, f: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``Σ_k r_k(f) ‖f - μ_k‖²`` (the RBF k-means loss)."""
        d = self.sq_dist(f)
        r = normalise(-(d - d.min(dim=-1, keepdim=True).values) / self.temperature, self.normaliser)
        return (r * d).sum(dim=-1).mean()
