"""Adversarial attacks: one-pixel (batched differential evolution), FGSM, PGD, DeepFool.

All attacks work in the model's input space (pixel space in [0, 1] for a
:class:`~kmtools.models.core.KmModel`, which normalises inside) and return result
dataclasses with ``to_dict()``. ``ATTACKS`` names them for the CLI.
"""

from kmtools.attacks.deepfool import DeepFoolResult, decision_scores, deepfool
from kmtools.attacks.fgsm import DEFAULT_EPS, FGSMResult, fgsm, fgsm_sweep, parse_eps
from kmtools.attacks.onepixel import OnePixelResult, class_confidences, onepixel
from kmtools.attacks.pgd import PGDResult, paired_pgd, pgd

ATTACKS = {"onepixel": onepixel, "fgsm": fgsm_sweep, "pgd": pgd, "deepfool": deepfool}

__all__ = [
    "ATTACKS",
    "DEFAULT_EPS",
    "DeepFoolResult",
    "FGSMResult",
    "OnePixelResult",
    "PGDResult",
    "class_confidences",
    "decision_scores",
    "deepfool",
    "fgsm",
    "fgsm_sweep",
    "onepixel",
    "paired_pgd",
    "parse_eps",
    "pgd",
]
