"""Reports: HTML is self-contained and shows the numbers; Markdown tables round-trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kmtools import io
from kmtools.errors import ConfigError, DataError, OutputExistsError
from kmtools.report import collect, figures, render
from kmtools.report.gates import check
from kmtools.report.schema import envelope

CLASSES = ["c0", "c1", "c2"]

EVALUATE = {
    "accuracy": 0.9342,
    "mean_confidence": 0.7071,
    "outlier_rate": 0.0431,
    "threshold": 1 / 3,
    "recommended_threshold": 0.2172,
    "ood": {"source": "uniform noise", "auroc": 0.9913, "fpr95": 0.0412},
    "theorem2": {"mean": 0.0123, "median": 0.0111, "min": 0.0004, "p05": 0.0021},
    "head_kind": "gauss",
    "softmax": {"accuracy": 0.9351, "mean_confidence": 0.9712, "outlier_rate": 0.0, "threshold": 1 / 3,
                "ood": {"source": "uniform noise", "auroc": 0.6123, "fpr95": 0.8812}},
    "gauss": {"accuracy": 0.9342, "mean_confidence": 0.7071, "outlier_rate": 0.0431, "threshold": 1 / 3,
              "recommended_threshold": 0.2172,
              "ood": {"source": "uniform noise", "auroc": 0.9913, "fpr95": 0.0412},
              "theorem2": {"mean": 0.0123, "median": 0.0111, "min": 0.0004, "p05": 0.0021}},
}
ONEPIXEL = {
    "head_kind": "gauss",
    "onepixel": {"rate": 0.0625, "attacked": 32, "skipped": 3, "fooled": 2, "mean_conf_fooled": 0.5912, "outlier_share": 0.5},
    "softmax": {"onepixel": {"rate": 0.34375, "attacked": 32, "skipped": 3, "fooled": 11, "mean_conf_fooled": 0.7733,
                             "outlier_share": 0.0}},
    "gauss": {"onepixel": {"rate": 0.0625, "attacked": 32, "skipped": 3, "fooled": 2, "mean_conf_fooled": 0.5912,
                           "outlier_share": 0.5}},
}
FGSM = {
    "softmax": {"fgsm": {"eps": [0.0, 0.1, 0.2], "accuracy": [0.99, 0.61, 0.12], "confidence": [0.98, 0.85, 0.9]}},
    "gauss": {"fgsm": {"eps": [0.0, 0.1, 0.2], "accuracy": [0.99, 0.8, 0.41], "confidence": [0.56, 0.3, 0.4]}},
}
TAILOR = {
    "accuracy_before": 0.9351,
    "accuracy_after": 0.9342,
    "epochs": 3,
    "history": [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.9 + 0.01 * e, "centroid_shift": 0.1 / e} for e in (1, 2, 3)],
}


def _doc(command: str, results: dict) -> dict:
    return envelope(command, results, model={"path": "net.pt", "arch": "cifar_resnet18", "sha256": "ab" * 32},
                    data={"name": "synthetic", "classes": CLASSES}, seed=0, device="cpu", timings={"total": 1.25})


def make_run_dir(root: Path) -> Path:
    """A run directory as the commands write it: <command>.json, <command>.npz, figures/."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for cmd, res in (("evaluate", EVALUATE), ("attack-onepixel", ONEPIXEL), ("attack-fgsm", FGSM),
                     ("tailor", TAILOR), ("explain", {"auc": {"neon": 0.81, "random": 0.5}, "method": "neon"})):
        io.write_json(root / f"{cmd}.json", _doc(cmd, res))
    n, k = 200, 12
    np.savez(
        root / "evaluate.npz",
        softmax_confidence=rng.uniform(0.6, 1.0, n), gauss_confidence=rng.beta(3, 1.5, n),
        softmax_correct=rng.random(n) < 0.9, gauss_correct=rng.random(n) < 0.9,
        softmax_noise_confidence=rng.uniform(0.5, 1.0, 50), gauss_noise_confidence=rng.beta(0.5, 10, 50),
        images=rng.random((k, 1, 8, 8)), labels=np.arange(k) % 3, images_confidence=rng.random(k),
    )
    m = 16
    x = rng.random((m, 3, 8, 8)).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"x": x}
    for kind in ("softmax", "gauss"):
        xa = x.copy()
        pix = np.zeros((m, 1, 5), np.float32)
        for i in range(m):
            r, c = rng.integers(0, 8, 2)
            xa[i, :, r, c] = [1.0, 0.0, 0.0]
            pix[i, 0] = [r, c, 1.0, 0.0, 0.0]
        arrays |= {f"{kind}_x_adv": xa, f"{kind}_pixel": pix, f"{kind}_conf_before": rng.random(m),
                   f"{kind}_conf_adv": rng.random(m), f"{kind}_success": rng.random(m) < 0.5}
    np.savez(root / "attack-onepixel.npz", **arrays)
    (root / "figures").mkdir(exist_ok=True)
    figures.training_curves(TAILOR["history"], root / "figures" / "neon_heatmap.png")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")
