"""One view per result kind (kmtools.report.views): found by the document's command, used by
both the terminal (geometry summaries) and the report (sections, figures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmtools.report import collect, render
from kmtools.report.layout import compare_results, model_keys, per_kind
from kmtools.report.schema import envelope
from kmtools.report.views import VIEWS, View, register, summary, view_for


def test_views_are_keyed_by_the_documents_command() -> None:
    assert view_for("attack onepixel") is VIEWS["attack-onepixel"]
    assert view_for("geometry distance") is VIEWS["geometry-distance"]
    assert view_for("no-such-command") is None
    with pytest.raises(ValueError, match="registered twice"):
        register(View("evaluate"))


def test_geometry_summary_reads_the_document_the_command_writes() -> None:
    doc = envelope("geometry detect", {
        "head_kind": "gauss", "clean": 10, "perturbed": 9, "perturbed_source": {"kind": "deepfool"},
        "hvp": "fd", "fd_step": 0.25, "auc": 0.75, "t0": {"true_positive": 0.8, "false_positive": 0.3},
        "best_balanced_accuracy": None, "best_threshold": None, "threshold": 0.0,
        "clean_rho": {"rho_median": -0.1}, "perturbed_rho": {"rho_median": 0.2},
    })
    got = summary(doc)
    assert got is not None
    title, rows = got
    d = dict(rows)
    assert title.startswith("Algorithm 2 at t = 0")
    assert d["clean / perturbed inputs"] == "10 / 9 (deepfool)" and d["Hessian-vector products"] == "fd (h = 0.25)"
    assert d["AUC of TP(FP) (Fig. 8)"] == 0.75 and d["best balanced accuracy (t)"] is None  # null, not a crash
    assert d["ρ median clean / perturbed"] == [-0.1, 0.2]


def test_compare_layout_round_trips_through_its_reader() -> None:
    keys = model_keys(["softmax", "gauss"])
    res = compare_results({"softmax": {"rate": 0.5}, "gauss": {"rate": 0.1}}, paths=["s.pt", "g.pt"],
                          nest="onepixel", head_kind="softmax")
    assert keys == ["softmax", "gauss"] and model_keys(["gauss", "gauss"]) == ["model", "compare"]
    doc = envelope("attack onepixel", res)
    assert per_kind(doc, "onepixel") == {"softmax": {"rate": 0.5}, "gauss": {"rate": 0.1}}
    flat = envelope("evaluate", compare_results({"gauss": {"head_kind": "gauss", "accuracy": 0.9}}))
    assert per_kind(flat) == {"gauss": {"head_kind": "gauss", "accuracy": 0.9}}


def _evaluate_dir(root: Path, **arrays: np.ndarray) -> Path:
    root.mkdir()
    doc = envelope("evaluate", {"head_kind": "gauss", "accuracy": 0.9, "mean_confidence": 0.5, "threshold": 0.1})
    (root / "evaluate.json").write_text(json.dumps(doc))
    np.savez(root / "evaluate.npz", **arrays)  # type: ignore[arg-type]
    return root


def test_prototypes_need_the_array_the_command_writes(tmp_path: Path) -> None:
    """The report draws Figure 3 from `images_confidence` (what evaluate writes), and no longer
    guesses from other names such as a per-model `gauss_confidence` of matching length."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.random((6, 1, 8, 8)), np.arange(6) % 3
    guessed = _evaluate_dir(tmp_path / "a", images=imgs, labels=labels, gauss_confidence=rng.random(6))
    figs = render.draw_figures(collect.load_run([guessed]), tmp_path / "fa", svg=False)
    assert "prototypes" not in figs and "confidence" in figs
    schema = _evaluate_dir(tmp_path / "b", images=imgs, labels=labels, images_confidence=rng.random(6))
    figs = render.draw_figures(collect.load_run([schema]), tmp_path / "fb", svg=False)
    assert [f.path.name for f in figs["prototypes"]] == ["prototypes_outliers.png"]


def test_a_command_without_a_section_gets_the_generic_table(tmp_path: Path) -> None:
    """The registry decides: the deepfool view gives its table; without it the results table."""
    d = tmp_path / "df"
    d.mkdir()
    res = {"head_kind": "gauss", "deepfool": {"images": 3, "converged": 2, "norm_mean": 0.5}}
    (d / "attack-deepfool.json").write_text(json.dumps(envelope("attack deepfool", res)))
    titles = [s.title for s in render.build(collect.load_run([d]), tmp_path / "f1", svg=False).sections]
    assert "DeepFool" in titles and "attack deepfool" not in titles
    view = VIEWS.pop("attack-deepfool")
    try:
        titles = [s.title for s in render.build(collect.load_run([d]), tmp_path / "f2", svg=False).sections]
    finally:
        VIEWS["attack-deepfool"] = view
    assert "DeepFool" not in titles and "attack deepfool" in titles
