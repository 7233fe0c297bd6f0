"""Options, per-epoch records and the result of :func:`kmtools.tailor.tailor`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kmtools.errors import ConfigError
from kmtools.models.core import KmModel

Log = Callable[[str], None]

INITS = ("equidistant", "means", "kmeans")
HEADS = ("gauss", "rbf", "rslvq", "glvq")
#: datasets whose classes survive a horizontal flip (``augment="auto"`` flips only these)
FLIP_SAFE = ("cifar10", "cifar100", "fashion-mnist")


@dataclass
class TailorConfig:
    """Options of :func:`kmtools.tailor.tailor` (the CLI's ``kmtools tailor --help``).

    Defaults were chosen by measurement on the reference models (``docs/tailor.md``).
    """

    epochs: int = 5
    lr: float = 0.002
    optimizer: str = "sgd"  # sgd | adamw
    schedule: str = "cosine"  # cosine | onecycle | constant (cosine/constant after a linear warm-up)
    warmup: float = 0.1  # share of all steps spent warming the learning rate up from 0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    train_from: str | None = None  # first backbone module that trains; earlier ones are frozen
    init: str = "equidistant"  # equidistant (exact Theorem-1 warm start) | means | kmeans
    centroids: str = "fixed"  # fixed: the initial centroids stay, the features move to them | means: Algorithm 1
    ramp_epochs: int = 1  # centroids="means": epochs over which the centroids move to the class means
    ce_weight: float = 1.0  # λ
    scatter_weight: float = 0.02  # weight of the scatter term γ̂‖f̂ - Ĉ_y‖² against the cross-entropy
    gamma: float | None = None  # exported γ; None = fitted on validation data (1/c flags `fpr`)
    fpr: float = 0.05  # share of validation inputs the 1/c rule flags when γ is fitted
    max_drop: float = 0.5  # points of validation accuracy an exported epoch may lose
    patience: int = 2  # stop after this many epochs in a row lose more than max_drop
    clip: float = 5.0  # gradient-norm clipping (0 = off)
    freeze_bn: bool = True  # keep BatchNorm statistics of the trained network
    augment: str = "none"  # none | auto (crop-flip for FLIP_SAFE data) | crop-flip
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    workers: int = 0  # DataLoader processes for the clean passes and loading (results do not depend on it)
    head: str = "gauss"
    head_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError("--lr must be a positive number")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError("--optimizer must be sgd or adamw")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ConfigError("--schedule must be cosine, onecycle or constant")
        if not 0 <= self.warmup < 1:
            raise ConfigError("--warmup must be a fraction in [0, 1)")
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}")
        if self.ramp_epochs < 1:
            raise ConfigError("--ramp-epochs must be at least 1")
        if self.centroids not in ("fixed", "means"):
            raise ConfigError("--centroids must be fixed or means")
        if self.scatter_weight < 0 or not math.isfinite(self.scatter_weight):
            raise ConfigError("--scatter-weight must be >= 0")
        if self.ce_weight < 0:
            raise ConfigError("--ce-weight must be >= 0")
        if self.gamma is not None and (self.gamma <= 0 or not math.isfinite(self.gamma)):
            raise ConfigError("--gamma must be positive")
        if not 0 < self.fpr < 1:
            raise ConfigError("--fpr must be a fraction between 0 and 1")
        if self.max_drop < 0 or not math.isfinite(self.max_drop):
            raise ConfigError("--max-drop must be a non-negative number of points")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0")
        if self.patience < 1:
            raise ConfigError("--patience must be at least 1")
        if self.augment not in ("auto", "none", "crop-flip"):
            raise ConfigError("--augment must be auto, none or crop-flip")
        if self.head not in HEADS:
            raise ConfigError(f"--head must be one of {', '.join(HEADS)}")
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be at least 2 (the objective normalises by the batch's scatter)")

    @property
    def ramp(self) -> int:
        """Epochs until the centroids are the class means (1 for inits that start there)."""
        if self.init != "equidistant" or self.head != "gauss":
            return 1
        return self.ramp_epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    """One row of ``tailor.json``'s history. Epoch 0 is the network before any step: the
    softmax network's figures sit in ``softmax_*``, the initial head's in the others.

    Validation figures are clean (eval mode, no augmentation) and use the head that would be
    exported at that point (centroids from a clean pass over the training data)."""

    epoch: int
    loss: float | None = None  # training-batch figures (augmented), None at epoch 0
    scatter: float | None = None
    ce: float | None = None
    batch_accuracy: float | None = None
    train_accuracy: float | None = None  # clean pass over the training data
    val_accuracy: float | None = None
    val_nll: float | None = None  # of softmax(log κ) at the training γ
    val_mean_kappa: float | None = None
    scatter_over_gap2: float | None = None  # scale-free separation (training data)
    val_scatter_over_gap2: float | None = None  # the same on validation data (the selection criterion)
    median_margin_gap: float | None = None  # validation data, in units of the rms centroid gap
    rho: float = 0.0  # centroids="means": 0 = warm start centroids, 1 = class means
    centroid_shift: float | None = None  # mean_k ‖C_k - M_k‖² / E‖f - M_y‖² (training data): 0 = class means
    eligible: bool = False  # may be exported (epoch ≥ 1, within --max-drop; "means": ρ = 1)
    softmax_train_accuracy: float | None = None
    softmax_val_accuracy: float | None = None
    softmax_val_nll: float | None = None
    seconds: float = 0.0
    eval_seconds: float = 0.0  # of which: the clean training and validation passes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TailorResult:
    """The selected Gauss network (``model`` is None when no epoch qualified) and the record."""

    model: KmModel | None
    history: list[EpochStats]
    config: TailorConfig
    world_size: int = 1
    selected_epoch: int | None = None
    stopped_early: bool = False
    validation: dict[str, Any] = field(default_factory=dict)
    benefit: dict[str, Any] = field(default_factory=dict)
    gamma_fit: dict[str, Any] = field(default_factory=dict)
    last_model: KmModel | None = None  # the network after the last epoch, for the checkpoint

    @property
    def accuracy_drop(self) -> float | None:
        """Validation points lost by the exported epoch against the softmax network."""
        h0 = self.history[0] if self.history else None
        sel = next((h for h in self.history if h.epoch == self.selected_epoch), None)
        if h0 is None or sel is None or h0.softmax_val_accuracy is None or sel.val_accuracy is None:
            return None
        return 100.0 * (h0.softmax_val_accuracy - sel.val_accuracy)

    def to_dict(self) -> dict[str, Any]:
        drop = self.accuracy_drop
        return {
            "history": [h.to_dict() for h in self.history], "config": self.config.to_dict(),
            "world_size": self.world_size, "head_kind": self.config.head,
            "selected_epoch": self.selected_epoch, "stopped_early": self.stopped_early,
            "accuracy_drop": drop, "max_drop": self.config.max_drop,
            "max_drop_ok": int(self.model is not None and (drop is None or drop <= self.config.max_drop + 1e-9)),
            "validation": self.validation, "benefit": self.benefit, "gamma_fit": self.gamma_fit,
        }
