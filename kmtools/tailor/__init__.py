"""TailorNetwork ("Softmax is k-means", Sec. 4.1, Algorithm 1): a softmax network fine-tuned
into a Gauss network. :func:`tailor` runs it (:mod:`kmtools.tailor.loop`); the scale-free
objective, the exact warm start and the geometry figures are in :mod:`kmtools.tailor.objective`.
"""

from kmtools.tailor.config import FLIP_SAFE, HEADS, INITS, EpochStats, TailorConfig, TailorResult
from kmtools.tailor.loop import (
    Interrupted,
    auto_gamma,
    benefit,
    check_train_from,
    crop_flip,
    freeze_until,
    init_distributed,
    initial_state,
    resolve_augment,
    tailor,
)

__all__ = [
    "FLIP_SAFE", "HEADS", "INITS", "EpochStats", "Interrupted", "TailorConfig", "TailorResult", "auto_gamma",
    "benefit", "check_train_from", "crop_flip", "freeze_until", "init_distributed", "initial_state",
    "resolve_augment", "tailor",
]
