"""kmtools: post-hoc surgery of trained PyTorch classifiers seen as k-means models.

A softmax classifier assigns each input to the nearest of c equidistant centroids in its
penultimate feature space (Theorem 1 of "Softmax is k-means"); kmtools builds on that fact.

The main entry points are importable from here for notebooks (``kmtools.load_model``,
``kmtools.run_tailor``, ``kmtools.fgsm_sweep``, ...). They load on first use (module
``__getattr__``, PEP 562), so ``import kmtools`` does not import torch. Names equal to a
submodule (``kmtools.tailor``, ``kmtools.evaluate``, ``kmtools.explain``) stay the submodule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kmtools.errors import KmtoolsError

__version__ = "0.1.0"

#: Public name -> module that defines it (imported on first access).
_LAZY: dict[str, str] = {
    # models
    "KmModel": "kmtools.models.core",
    "GaussHead": "kmtools.models.core",
    "load_model": "kmtools.models.checkpoint",
    "save_model": "kmtools.models.checkpoint",
    "wrap": "kmtools.models.checkpoint",
    # data
    "DataInfo": "kmtools.data.registry",
    "load_dataset": "kmtools.data.registry",
    # features, centroids
    "Features": "kmtools.features",
    "extract": "kmtools.features",
    # tailoring (TailorNetwork, Sec. 4.1)
    "TailorConfig": "kmtools.tailor.config",
    "TailorResult": "kmtools.tailor.config",
    "TailorRun": "kmtools.tailor.run",
    "run_tailor": "kmtools.tailor.run",
    # evaluation
    "EvalResult": "kmtools.evaluate",
    # attacks
    "fgsm_sweep": "kmtools.attacks.fgsm",
    "FGSMResult": "kmtools.attacks.fgsm",
    "pgd": "kmtools.attacks.pgd",
    "PGDResult": "kmtools.attacks.pgd",
    "deepfool": "kmtools.attacks.deepfool",
    "DeepFoolResult": "kmtools.attacks.deepfool",
    "onepixel": "kmtools.attacks.onepixel",
    "OnePixelResult": "kmtools.attacks.onepixel",
    # explanations (NEON)
    "explain_data": "kmtools.explain.api",
    "explain_network": "kmtools.explain.api",
    "explain_deep": "kmtools.explain.deep",
    # export
    "export_model": "kmtools.export",
}

#: Static list (for linters and ``from kmtools import *``); tests check it equals the lazy table.
__all__ = [
    "DataInfo",
    "DeepFoolResult",
    "EvalResult",
    "FGSMResult",
    "Features",
    "GaussHead",
    "KmModel",
    "KmtoolsError",
    "OnePixelResult",
    "PGDResult",
    "TailorConfig",
    "TailorResult",
    "TailorRun",
    "__version__",
    "deepfool",
    "explain_data",
    "explain_deep",
    "explain_network",
    "export_model",
    "extract",
    "fgsm_sweep",
    "load_dataset",
    "load_model",
    "onepixel",
    "pgd",
    "run_tailor",
    "save_model",
    "wrap",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kmtools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name if name != "export_model" else "export")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # static checkers see the real objects
    from kmtools.attacks.deepfool import DeepFoolResult, deepfool
    from kmtools.attacks.fgsm import FGSMResult, fgsm_sweep
    from kmtools.attacks.onepixel import OnePixelResult, onepixel
    from kmtools.attacks.pgd import PGDResult, pgd
    from kmtools.data.registry import DataInfo, load_dataset
    from kmtools.evaluate import EvalResult
    from kmtools.explain.api import explain_data, explain_network
    from kmtools.explain.deep import explain_deep
    from kmtools.export import export as export_model
    from kmtools.features import Features, extract
    from kmtools.models.checkpoint import load_model, save_model, wrap
    from kmtools.models.core import GaussHead, KmModel
    from kmtools.tailor.config import TailorConfig, TailorResult
    from kmtools.tailor.run import TailorRun, run_tailor
