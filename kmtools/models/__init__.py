"""Models: loading/saving checkpoints, the architecture zoo, head split, Gauss head."""

from kmtools.models.checkpoint import load_model, require_split, save_model, wrap
from kmtools.models.core import GaussHead, KmModel, Normalize, find_head, head_confidences, split
from kmtools.models.zoo import create

__all__ = [
    "GaussHead",
    "KmModel",
    "Normalize",
    "create",
    "find_head",
    "head_confidences",
    "load_model",
    "require_split",
    "save_model",
    "split",
    "wrap",
]
