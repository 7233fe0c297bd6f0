"""Adversarial attacks: one-pixel (batched differential evolution), FGSM, DeepFool.

All attacks work in the model's input space (pixel space in [0, 1] for a
:class:`~kmtools.models.core.KmModel`, which normalises inside) and return result
dataclasses with ``to_dict()``. ``ATTACKS`` names them for the CLI.
"""

from kmtools.attacks.deepfool import DeepFoolResult, decision_scores, deepfool
from kmtools.attacks.fgsm import DEFAULT_EPS, FGSMResult, fgsm, fgsm_sweep, parse_eps
from kmtools.attacks.onepixel import OnePixelResult, class_confidences, onepixel

ATTACKS = {"onepixel": onepixel, "fgsm": fgsm_sweep, "deepfool": deepfool}

__all__ = [
    "ATTACKS",
    "DEFAULT_EPS",
    "DeepFoolResult",
    "FGSMResult",
    "OnePixelResult",
    "class_confidences",
    "decision_scores",
    "deepfool",
    "fgsm",
    "fgsm_sweep",
    "onepixel",
    "parse_eps",
]
