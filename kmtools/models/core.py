"""The kmtools model: ``normalize -> backbone -> head``.

Every command works on a :class:`KmModel`. Its input is in *pixel space* (images in
[0, 1], tabular data as given); normalisation is the first layer, so attacks and
explanations perturb the inputs a user actually sees. ``backbone(x)`` returns the
penultimate features f_p(x) of the paper ("Softmax is k-means", Sec. 3); ``head`` maps
them to scores: logits for a softmax head, Gauss-confidences for a Gauss head (Eq. 4).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kmtools.errors import CheckpointError, ConfigError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; identity when no statistics are given."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        m = torch.tensor(list(mean) if mean else [], dtype=torch.float32)
        s = torch.tensor(list(std) if std else [], dtype=torch.float32)
        if m.numel() != s.numel():
            raise ConfigError("--mean and --std need the same number of values (one per channel)")
        if (s <= 0).any():
            raise ConfigError("--std values must be positive")
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    @property
    def active(self) -> bool:
        return self.mean.numel() > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)


class GaussHead(nn.Module):
    """Gauss-confidence head, Definition 1 / Eq. (4): κ_k(x) = exp(-γ‖f_p(x) - C_k‖²).

    ``centroids`` has shape (c, d). ``gamma`` (default 1, as in the paper) is an optional
    feature scale that spreads κ when feature norms are large; it multiplies the squared
    distance, so γ = 1 is the paper's head. Outputs are *not* normalised: an input far
    from every centroid has κ ≈ 0 for all classes, which is how the head says "outlier".
    """

    kind = "gauss"

    gamma: torch.Tensor

    offsets: torch.Tensor

    def __init__(self, centroids: torch.Tensor, gamma: float = 1.0, offsets: torch.Tensor | None = None) -> None:
        super().__init__()
        if centroids.dim() != 2:
            raise ConfigError(f"centroids must be (classes, features), got shape {tuple(centroids.shape)}")
        self.centroids = nn.Parameter(centroids.detach().clone().float(), requires_grad=False)
        self.register_buffer("gamma", torch.tensor(float(gamma)))
        off = torch.zeros(len(centroids)) if offsets is None else offsets.detach().clone().float().flatten()
        if off.shape != (len(centroids),) or bool((off < 0).any()):
            raise ConfigError("Gauss head offsets must be one non-negative value per class")
        self.register_buffer("offsets", off)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Files written before offsets existed load with zero offsets (the paper's head)."""
        if prefix + "offsets" not in state_dict and prefix + "centroids" in state_dict:
            state_dict[prefix + "offsets"] = torch.zeros(len(state_dict[prefix + "centroids"]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def num_classes(self) -> int:
        return int(self.centroids.shape[0])

    def sq_dist(self, f: torch.Tensor) -> torch.Tensor:
        """‖f - C_k‖² for every row of ``f`` (n, d) and centroid, shape (n, c), exact."""
        c = self.centroids.to(f.dtype)
        return (f.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)

    def log_kappa(self, f: torch.Tensor) -> torch.Tensor:
        """log κ = -γ(‖f - C_k‖² + o_k); the nearest-centroid logits used for training.

        The offsets o_k ≥ 0 are zero for the paper's head. They are the bias coordinate of
        Theorem 1 on [f, 1] (o_k = (1 - a_k)² for a centroid (C_k, a_k)): the exact
        warm start of ``kmtools.tailor`` carries the softmax head's biases in them."""
        return -self.gamma.to(f.dtype) * (self.sq_dist(f) + self.offsets.to(f.dtype))

    @property
    def has_offsets(self) -> bool:
        return bool((self.offsets != 0).any())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_kappa(f))

    def confidences(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def config(self) -> dict[str, Any]:
        return {"gamma": float(self.gamma)}


def head_confidences(head: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """Per-class confidence from head scores: the head's own rule, else softmax of logits."""
    fn = getattr(head, "confidences", None)
    if callable(fn):
        out: torch.Tensor = fn(scores)
        return out
    return torch.softmax(scores.float(), dim=-1)


def head_kind(head: nn.Module) -> str:
    return str(getattr(head, "kind", "softmax"))


class KmModel(nn.Module):
    """``normalize -> backbone -> head`` with the metadata kmtools needs.

    Attributes: ``arch`` (zoo name or None), ``arch_kwargs``, ``classes`` (names),
    ``input_shape`` (C, H, W) or (D,), ``head_path`` (where the head sat in the original
    network), ``outlier_threshold`` (default 1/c, paper Sec. 5), ``any_size``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        normalize: Normalize | None = None,
        *,
        arch: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        input_shape: Sequence[int] | None = None,
        head_path: str | None = None,
        outlier_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else Normalize()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        n = num_outputs(head)
        self.classes = list(classes) if classes else [str(i) for i in range(n)] if n else []
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape else None
        self.head_path = head_path
        self.outlier_threshold = outlier_threshold
        #: True when the backbone takes any spatial size (adaptive pooling): the input
        #: shape then follows the data (see ``kmtools.models.inputs.fit_to_data``).
        self.any_size = False
        #: Where the normalisation statistics came from (set by ``load_model``).
        self.norm_from = "checkpoint"

    @property
    def head_kind(self) -> str:
        return head_kind(self.head)

    @property
    def num_classes(self) -> int:
        return num_outputs(self.head) or len(self.classes)

    @property
    def threshold(self) -> float:
        """Outlier threshold on the predicted class's confidence (default 1/c)."""
        if self.outlier_threshold is not None:
            return float(self.outlier_threshold)
        return 1.0 / max(self.num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.backbone(self.normalize(x))
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out

    def confidences(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class confidences: softmax for softmax nets, κ for Gauss nets."""
        return head_confidences(self.head, self(x))

    def with_head(self, head: nn.Module) -> KmModel:
        """A copy sharing nothing mutable, with ``head`` in place of the current head."""
        new = KmModel(
            copy.deepcopy(self.backbone),
            head,
            copy.deepcopy(self.normalize),
            arch=self.arch,
            arch_kwargs=self.arch_kwargs,
            classes=self.classes,
            input_shape=self.input_shape,
            head_path=self.head_path,
        )
        new.any_size = self.any_size
        new.norm_from = self.norm_from
        return new

    def meta(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "classes": self.classes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "head_path": self.head_path,
            "head_kind": self.head_kind,
            "outlier_threshold": self.outlier_threshold,
            "mean": self.normalize.mean.tolist(),
            "std": self.normalize.std.tolist(),
            "num_classes": self.num_classes,
            "feature_dim": feature_dim(self.head),
        }


def num_outputs(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    n = getattr(head, "num_classes", None)
    return int(n) if n is not None else 0


def feature_dim(head: nn.Module) -> int | None:
    if isinstance(head, nn.Linear):
        return int(head.in_features)
    c = getattr(head, "centroids", None)
    if c is None:
        c = getattr(head, "prototypes", None)
    return int(c.shape[1]) if c is not None else None


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"no module {path!r} in the model; linear layers are: {', '.join(names) or 'none'}") from exc


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def find_head(model: nn.Module, example: torch.Tensor) -> str:
    """Path of the final ``nn.Linear`` whose output *is* the model's output.

    Runs ``example`` through the model, recording every Linear call; the last call whose
    output equals the model output is the head. This handles heads nested in
    ``Sequential`` blocks (torchvision VGG's ``classifier.6``) as well as ``fc``/``linear``.
    """
    calls: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(lambda m, i, o, n=name: calls.append((n, o.detach()))))
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    for name, o in reversed(calls):
        if o.shape == out.shape and torch.allclose(o, out, atol=1e-5, rtol=1e-4):
            return name
    raise CheckpointError(
        "could not find the final nn.Linear producing the logits: pass --head MODULE.PATH "
        "(see `kmtools inspect` for the module names)"
    )


def split(
    model: nn.Module, example: torch.Tensor | None = None, head_path: str | None = None
) -> tuple[nn.Module, nn.Linear, str]:
    """Split a classifier at its head: returns ``(backbone, head, head_path)``.

    ``backbone`` is a deep copy of ``model`` with the head replaced by ``nn.Identity`` so
    it returns the penultimate features with the original forward; ``head`` is the
    original ``nn.Linear`` (copied). ``head(backbone(x)) == model(x)``.
    """
    if head_path is None:
        if example is None:
            raise ConfigError("split() needs an example input or an explicit head path")
        head_path = find_head(model, example)
    head = get_submodule(model, head_path)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"--head {head_path!r} is a {type(head).__name__}, not an nn.Linear")
    backbone = copy.deepcopy(model)
    set_submodule(backbone, head_path, nn.Identity())
    return backbone, copy.deepcopy(head), head_path
