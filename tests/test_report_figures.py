"""Figures: valid, non-blank 600×400 PNGs plus SVGs; selection logic of the paper's Figure 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from kmtools.errors import OutputExistsError
from kmtools.report import figures

RNG = np.random.default_rng(0)


def assert_figure(png: Path) -> np.ndarray:
    """``png`` is a 600×400 RGB(A) image with real content, and its SVG twin exists."""
    assert png.suffix == ".png" and png.is_file()
    img = imread(png)
    assert img.shape[:2] == (400, 600), img.shape
    rgb = img[..., :3]
    assert rgb.var() > 1e-4, "figure is blank"
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.01, f"figure is almost all white ({non_white:.3%} drawn)"
    svg = png.with_suffix(".svg")
    text = svg.read_text(encoding="utf-8")
    assert "<svg" in text and "</svg>" in text
    assert "<dc:date>" not in text  # reproducible: no timestamp
    return rgb


def test_confidence_histograms(tmp_path: Path) -> None:
    test = {"softmax": RNG.uniform(0.6, 1, 300), "gauss": RNG.beta(3, 1.5, 300)}
    noise = {"softmax": RNG.uniform(0.5, 1, 50), "gauss": RNG.beta(0.5, 10, 50)}
    png = figures.confidence_histograms(test, tmp_path / "conf.png", noise=noise, threshold=0.1)
    assert png == tmp_path / "conf.png"
    assert_figure(png)


def test_confidence_histograms_accepts_torch_and_drops_nan(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    vals = torch.tensor([0.2, float("nan"), 0.9, 0.95])
    assert_figure(figures.confidence_histograms({"gauss": vals}, tmp_path / "c.png"))


def test_fgsm_curves(tmp_path: Path) -> None:
    eps = [0.0, 0.1, 0.2, 0.3]
    curves = {
        "gauss": {"eps": eps, "accuracy": [0.99, 0.8, 0.5, 0.3], "confidence": [0.56, 0.3, 0.35, 0.4]},
        "softmax": {"eps": eps, "accuracy": [0.99, 0.6, 0.2, 0.05], "confidence": [0.98, 0.85, 0.9, 0.95]},
    }
    assert_figure(figures.fgsm_curves(curves, tmp_path / "fgsm.png"))


def test_select_prototypes_orders_by_confidence() -> None:
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    kappa = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.6])
    picks = figures.select_prototypes(labels, kappa, per_class=2)
    assert picks[0] == ([1, 3], [4, 2])  # highest first; lowest last (drawn at the bottom)
    # class 1 has three inputs: two prototypes, the remaining one is the only outlier
    assert picks[1] == ([6, 7], [5])


def test_prototypes_outliers_grey_and_colour(tmp_path: Path) -> None:
    grey = RNG.random((20, 1, 8, 8))
    labels = np.arange(20) % 5
    kappa = RNG.random(20)
    assert_figure(figures.prototypes_outliers(grey, labels, kappa, tmp_path / "p.png", threshold=0.1))
    colour = RNG.normal(size=(12, 3, 16, 16))  # normalised inputs: stretched per image
    assert_figure(
        figures.prototypes_outliers(
            colour, np.arange(12) % 3, RNG.random(12), tmp_path / "q.png", classes=["a", "b", "c"]
        )
    )


def test_prototypes_outliers_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        figures.prototypes_outliers(np.zeros((3, 1, 4, 4)), [0, 1], [0.1, 0.2, 0.3], tmp_path / "p.png")


def test_changed_pixels_finds_the_attacked_pixel() -> None:
    x = RNG.random((3, 8, 8))
    xa = x.copy()
    xa[:, 5, 2] = [1.0, 0.0, 0.5]
    assert figures._changed_pixels(x, xa).tolist() == [[5, 2]]


def test_onepixel_examples_circles_the_changed_pixel(tmp_path: Path) -> None:
    n = 6
    x = np.full((n, 3, 16, 16), 0.5)
    xa = x.copy()
    xa[:, :, 8, 8] = 0.0  # a black pixel in the middle of each grey image
    png = figures.onepixel_examples(
        x,
        xa,
        RNG.random(n),
        RNG.random(n),
        tmp_path / "op.png",
        success=np.array([1, 1, 0, 1, 0, 1], bool),
        labels=np.arange(n) % 3,
        pred_adv=(np.arange(n) + 1) % 3,
        classes=["cat", "dog", "ship"],
    )
    rgb = assert_figure(png)
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 50, "no red circle drawn around the changed pixels"


def test_onepixel_examples_without_success(tmp_path: Path) -> None:
    x = RNG.random((2, 3, 8, 8))
    png = figures.onepixel_examples(x, x, [0.9, 0.8], [0.5, 0.4], tmp_path / "none.png", success=[False, False])
    assert_figure(png)


def test_onepixel_scatter(tmp_path: Path) -> None:
    n = 80
    before = {"softmax": RNG.uniform(0.6, 1, n), "gauss": RNG.random(n)}
    after = {"softmax": RNG.uniform(0.5, 1, n), "gauss": RNG.random(n)}
    success = {"softmax": RNG.random(n) < 0.4, "gauss": np.zeros(n, bool)}  # no Gauss successes
    assert_figure(figures.onepixel_scatter(before, after, tmp_path / "sc.png", success=success))


def test_training_curves(tmp_path: Path) -> None:
    hist = [
        {
            "epoch": e,
            "loss": 1 / e,
            "accuracy": 0.9 + e / 100,
            "val_accuracy": 0.88 + e / 100,
            "centroid_shift": 0.5 / e**2,
        }
        for e in range(1, 8)
    ]
    assert_figure(figures.training_curves(hist, tmp_path / "t.png"))
    # missing keys: only the panels that have data
    assert_figure(figures.training_curves([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}], tmp_path / "t2.png"))
    assert_figure(figures.training_curves([], tmp_path / "t3.png"))


def test_existing_figure_needs_force(tmp_path: Path) -> None:
    hist = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    png = figures.training_curves(hist, tmp_path / "t.png")
    before = png.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        figures.training_curves([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 9.0}], png)
    assert png.read_bytes() == before
    figures.training_curves([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 9.0}], png, force=True)
    assert png.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png", "t.svg"]  # no temp files left


def test_model_order_and_colours() -> None:
    assert figures.model_order(["rslvq", "gauss", "softmax", "glvq"]) == ["softmax", "gauss", "glvq", "rslvq"]
    assert figures.colour("softmax") != figures.colour("gauss")
    kinds = ["softmax", "gauss", "glvq", "rslvq"]
    assert figures.colour("glvq", kinds) != figures.colour("rslvq", kinds)


def test_relevance_heatmaps_red_for_blue_against(tmp_path: Path) -> None:
    x = np.full((3, 1, 8, 8), 0.5)
    rel = np.zeros((3, 1, 8, 8))
    rel[:, 0, :4] = 1.0  # top half: evidence for the cluster (red)
    rel[:, 0, 4:] = -1.0  # bottom half: against (blue)
    rgb = assert_figure(
        figures.relevance_heatmaps(x, rel, tmp_path / "neon.png", titles=["cluster 0", "cluster 1", "cluster 2"])
    )
    red = (rgb[..., 0] > 0.6) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)
    assert red.sum() > 300 and blue.sum() > 300
    assert_figure(figures.relevance_heatmaps(x[:0], rel[:0], tmp_path / "none.png"))


def test_curvature_profiles(tmp_path: Path) -> None:
    profiles = {
        "softmax": {"top_mean_profile": [0.9, 0.5, 0.3], "bottom_mean_profile": [-0.8, -0.4, -0.2], "dim": 64},
        "gauss": {"top_mean_profile": [0.2, 0.1, 0.05], "bottom_mean_profile": [-0.1, -0.05, None], "dim": 64},
    }
    assert_figure(figures.curvature_profiles(profiles, tmp_path / "curv.png"))
    assert_figure(figures.curvature_profiles({"x": {"top_mean_profile": []}}, tmp_path / "empty.png"))


def test_roc_curves(tmp_path: Path) -> None:
    fp = np.linspace(0, 1, 30)
    curves = {
        "softmax": {
            "false_positive": fp.tolist(),
            "true_positive": np.sqrt(fp).tolist(),
            "auc": 0.67,
            "point": (0.2, 0.6),
        },
        "gauss": {"false_positive": fp.tolist(), "true_positive": (fp**0.2).tolist(), "auc": 0.83},
        "broken": {"false_positive": [0.1], "true_positive": []},  # skipped
    }
    assert_figure(figures.roc_curves(curves, tmp_path / "roc.png"))


def test_svg_can_be_left_out(tmp_path: Path) -> None:
    png = figures.roc_curves({}, tmp_path / "r.png", svg=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png"]
    assert imread(png).shape[:2] == (400, 600)
