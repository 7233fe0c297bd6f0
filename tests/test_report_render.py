"""Reports: HTML is self-contained and shows the numbers; Markdown tables round-trip."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from kmtools import io
from kmtools.errors import ConfigError, DataError, OutputExistsError
from kmtools.report import collect, figures, render
from kmtools.report.gates import check
from kmtools.report.schema import envelope

CLASSES = ["c0", "c1", "c2"]

# as `kmtools evaluate softmax.pt --compare gauss.safetensors` writes them: the top level is a copy
# of the first model's metrics, each model under its head kind
_SOFTMAX: dict[str, Any] = {
    "head_kind": "softmax",
    "n": 200,
    "accuracy": 0.9351,
    "mean_confidence": 0.9712,
    "outlier_rate": 0.0,
    "threshold": 1 / 3,
    "recommended_threshold": 0.8012,
    "ood": {"source": "uniform", "n": 50, "auroc": 0.6123, "fpr95": 0.8812},
    "theorem2": None,
    "reject": {"auc": 0.97, "acc_at_reject_05": 0.95},
}
_GAUSS: dict[str, Any] = {
    "head_kind": "gauss",
    "n": 200,
    "accuracy": 0.9342,
    "mean_confidence": 0.7071,
    "outlier_rate": 0.0431,
    "threshold": 1 / 3,
    "recommended_threshold": 0.2172,
    "ood": {"source": "uniform", "n": 50, "auroc": 0.9913, "fpr95": 0.0412},
    "theorem2": {"space": "feature", "mean": 0.0123, "median": 0.0111, "min": 0.0004, "p05": 0.0021},
    "reject": {"auc": 0.98, "acc_at_reject_05": 0.96},
}
EVALUATE: dict[str, Any] = {
    **_SOFTMAX,
    "softmax": _SOFTMAX,
    "gauss": _GAUSS,
    "models": {"softmax": "net.pt", "gauss": "g.safetensors"},
}
_OP_SOFTMAX: dict[str, Any] = {
    "rate": 0.34375,
    "attacked": 32,
    "skipped": 3,
    "fooled": 11,
    "mean_conf_fooled": 0.7733,
    "outlier_share": 0.0,
}
_OP_GAUSS: dict[str, Any] = {
    "rate": 0.0625,
    "attacked": 32,
    "skipped": 3,
    "fooled": 2,
    "mean_conf_fooled": 0.5912,
    "outlier_share": 0.5,
}
ONEPIXEL: dict[str, Any] = {
    "head_kind": "softmax",
    "onepixel": _OP_SOFTMAX,
    "softmax": {"onepixel": _OP_SOFTMAX},
    "gauss": {"onepixel": _OP_GAUSS},
}
_EPS = [0.0, 0.1, 0.2]
FGSM: dict[str, Any] = {
    "softmax": {
        "fgsm": {
            "eps": _EPS,
            "accuracy": [0.99, 0.61, 0.12],
            "confidence": [0.98, 0.85, 0.9],
            "confidence_wrong": [0.7, 0.8, 0.88],
        }
    },
    "gauss": {
        "fgsm": {
            "eps": _EPS,
            "accuracy": [0.99, 0.8, 0.41],
            "confidence": [0.56, 0.3, 0.4],
            "confidence_wrong": [0.2, 0.25, 0.3],
        }
    },
}
# as `kmtools tailor` writes it (cli/tailor_cmd.py)
TAILOR: dict[str, Any] = {
    "softmax": {"accuracy": 0.9351, "mean_confidence": 0.9712},
    "gauss": {"accuracy": 0.9342, "mean_confidence": 0.7071, "threshold": 1 / 3},
    "accuracy_change": -0.0009,
    "gamma": 0.05,
    "head_kind": "gauss",
    "world_size": 1,
    "files": {"kmtools": "run/gauss.safetensors"},
    "config": {"epochs": 3, "lr": 0.01},
    "history": [
        {
            "epoch": e,
            "loss": 1.0 / e,
            "scatter": 0.8 / e,
            "ce": 0.2 / e,
            "accuracy": 0.9 + 0.01 * e,
            "centroid_shift": 0.1 / e,
            "min_centroid_distance": 3.0,
            "mean_kappa": 0.5 + 0.05 * e,
            "seconds": 1.0,
        }
        for e in (1, 2, 3)
    ],
}


def _doc(command: str, results: dict) -> dict:
    return envelope(
        command,
        results,
        model={"path": "net.pt", "arch": "cifar_resnet18", "sha256": "ab" * 32},
        data={"name": "synthetic", "classes": CLASSES},
        seed=0,
        device="cpu",
        timings={"total": 1.25},
    )


def make_run_dir(root: Path) -> Path:
    """A run directory as the commands write it: <command>.json, <command>.npz, figures/."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for cmd, res in (
        ("evaluate", EVALUATE),
        ("attack-onepixel", ONEPIXEL),
        ("attack-fgsm", FGSM),
        ("tailor", TAILOR),
        ("explain", {"auc": {"neon": 0.81, "random": 0.5}, "method": "neon"}),
    ):
        io.write_json(root / f"{cmd}.json", _doc(cmd, res))
    n, k = 200, 12
    np.savez(
        root / "evaluate.npz",
        softmax_confidence=rng.uniform(0.6, 1.0, n),
        gauss_confidence=rng.beta(3, 1.5, n),
        softmax_correct=rng.random(n) < 0.9,
        gauss_correct=rng.random(n) < 0.9,
        softmax_label_confidence=rng.random(n),  # not a predicted-class confidence: not drawn
        label=np.arange(n) % 3,
        proto_conf=rng.random(6),
        softmax_noise_confidence=rng.uniform(0.5, 1.0, 50),
        gauss_noise_confidence=rng.beta(0.5, 10, 50),
        images=rng.random((k, 1, 8, 8)),
        labels=np.arange(k) % 3,
        images_confidence=rng.random(k),
    )
    m = 16
    x = rng.random((m, 3, 8, 8)).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"x": x, "labels": rng.integers(0, 3, m)}
    for kind in ("softmax", "gauss"):
        xa = x.copy()
        pix = np.zeros((m, 1, 5), np.float32)
        for i in range(m):
            r, c = rng.integers(0, 8, 2)
            xa[i, :, r, c] = [1.0, 0.0, 0.0]
            pix[i, 0] = [r, c, 1.0, 0.0, 0.0]
        arrays |= {
            f"{kind}_skipped": np.arange(m) < 2,
            f"{kind}_adv_labels": rng.integers(0, 3, m),
            f"{kind}_x_adv": xa,
            f"{kind}_pixel": pix,
            f"{kind}_conf_before": rng.random(m),
            f"{kind}_conf_adv": rng.random(m),
            f"{kind}_success": rng.random(m) < 0.5,
        }
    np.savez(root / "attack-onepixel.npz", **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds as bool
    (root / "figures").mkdir(exist_ok=True)
    figures.training_curves(TAILOR["history"], root / "figures" / "neon_heatmap.png")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")


def _write(folder: Path, command: str, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(folder / f"{command}.json", _doc(command, results), force=True)
    return folder


def json_only(run_dir: Path, dest: Path, *commands: str) -> Path:
    """A copy of some of ``run_dir``'s result files without arrays or figures (fast reports)."""
    dest.mkdir(parents=True, exist_ok=True)
    for cmd in commands:
        (dest / f"{cmd}.json").write_bytes((run_dir / f"{cmd}.json").read_bytes())
    return dest


@pytest.fixture(scope="module")
def html_report(run_dir: Path) -> str:
    out = run_dir.parent / "report.html"
    render.write_report(collect.load_run([run_dir]), out)
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def md_report(run_dir: Path) -> Path:
    out = run_dir.parent / "md" / "report.md"
    render.write_report(collect.load_run([run_dir]), out)
    return out


# ---------------------------------------------------------------------------------- collect


def test_load_run_reads_directory(run_dir: Path) -> None:
    run = collect.load_run([run_dir])
    assert set(run.commands) == {"evaluate", "attack-onepixel", "attack-fgsm", "tailor", "explain"}
    assert run.results("evaluate")["gauss"]["accuracy"] == EVALUATE["gauss"]["accuracy"]
    assert run.results("geometry-path") == {}
    assert run.arrays("evaluate")["images"].shape == (12, 1, 8, 8)
    assert run.arrays("tailor") == {}
    assert [p.name for p in run.figures] == ["neon_heatmap.png"]


def test_load_run_single_file_and_merge(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    newer = dict(EVALUATE, accuracy=0.5)
    io.write_json(other / "evaluate.json", _doc("evaluate", newer))
    run = collect.load_run([run_dir / "attack-onepixel.json", run_dir, other / "evaluate.json"])
    assert run.results("evaluate")["accuracy"] == 0.5  # the later file wins ...
    assert run.sources["evaluate"] == other / "evaluate.json"
    assert run_dir / "evaluate.json" in run.replaced  # ... and the replaced one is recorded
    assert "evaluate" not in run.array_files  # the arrays of the replaced run are not mixed in
    assert run.arrays("attack-onepixel")["gauss_success"].dtype == bool


def test_load_run_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "evaluate.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"evaluate\.json: not valid JSON \(line 1"):
        collect.load_run([bad])
    bad.write_text(json.dumps({"command": "evaluate", "results": {}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"evaluate\.json: not a kmtools result document: missing field"):
        collect.load_run([tmp_path])
    with pytest.raises(DataError, match="no such file"):
        collect.load_run([tmp_path / "missing.json"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.json").write_text("{}", encoding="utf-8")  # not a result file: skipped
    with pytest.raises(DataError, match="no kmtools result file"):
        collect.load_run([empty])
    with pytest.raises(DataError, match="no run directory"):
        collect.load_run([])


def test_corrupt_arrays_are_a_data_error(tmp_path: Path) -> None:
    io.write_json(tmp_path / "evaluate.json", _doc("evaluate", EVALUATE))
    (tmp_path / "evaluate.npz").write_bytes(b"not a zip")
    run = collect.load_run([tmp_path])
    with pytest.raises(DataError, match=r"evaluate\.npz: cannot read the arrays"):
        run.arrays("evaluate")


def test_gate_doc_merges_commands(run_dir: Path) -> None:
    run = collect.load_run([run_dir])
    doc = run.gate_doc()
    res = check(
        [
            "gauss.accuracy>=softmax.accuracy-0.003",  # evaluate
            "gauss.onepixel.rate<=0.1",  # attack-onepixel, merged beside evaluate's gauss
            "attack_onepixel.softmax.onepixel.rate>0.3",  # namespaced by command
            "evaluate.gauss.ood.auroc>0.99",
        ],
        doc,
    )
    assert [r.passed for r in res] == [True, True, True, True]
    assert res[1].value == pytest.approx(0.0625)
    single = collect.load_run([run_dir / "evaluate.json"]).gate_doc()
    assert single["command"] == "evaluate" and check(["accuracy>0.9"], single)[0].passed


def test_directory_tolerates_unknown_files(run_dir: Path, tmp_path: Path) -> None:
    """Checkpoints, metadata JSON, broken files of unknown name and report documents are skipped."""
    d = json_only(run_dir, tmp_path / "mixed", "evaluate", "tailor")
    (d / "gauss.safetensors").write_bytes(b"\0" * 16)
    (d / "attack-onepixel.jsonl").write_text('{"index": 0}\n', encoding="utf-8")
    (d / "metadata.json").write_text('{"arch": "smallcnn"}', encoding="utf-8")
    (d / "attack-onepixel.run.json").write_text('{"command": "attack onepixel"}', encoding="utf-8")
    (d / "zz-old.json").write_text('{"schema_version": "0.1", "command": "x"}', encoding="utf-8")
    (d / "notes.json").write_text('{"schema_version": ', encoding="utf-8")  # truncated
    io.write_json(d / "report.json", envelope("report", {"out": "r.html"}))
    io.write_json(d / "custom-run.json", _doc("explain neon", {"auc": {"neon": 0.8}}))  # found by content
    run = collect.load_run([d])
    assert run.commands == ["explain-neon", "evaluate", "tailor"]
    assert run.sources["explain-neon"].name == "custom-run.json"
    skipped = {p.name: why for p, why in run.skipped}
    assert set(skipped) == {"zz-old.json", "notes.json", "report.json"}  # metadata.json: silently
    assert "not valid JSON" in skipped["notes.json"]
    assert "schema_version '0.1'" in skipped["zz-old.json"] and "report document" in skipped["report.json"]
    text = render.write_report(run, tmp_path / "r.md").read_text(encoding="utf-8")
    assert "Not read: " in text and "zz-old.json" in text and "metadata.json" not in text


def test_figures_belong_to_their_command(run_dir: Path, tmp_path: Path) -> None:
    d = json_only(run_dir, tmp_path / "own", "attack-fgsm", "tailor")
    (d / "figures").mkdir()
    for name in ("attack-fgsm_gauss.png", "tailor_extra.png", "attack-fgsmx.png", "unrelated.png"):
        (d / "figures" / name).write_bytes(b"png")
    run = collect.load_run([d])
    assert [p.name for p in run.figures_of("attack fgsm")] == ["attack-fgsm_gauss.png"]
    assert [p.name for p in run.figures_of("tailor")] == ["tailor_extra.png"]
    assert collect.figure_command(Path("attack-onepixel_gauss.png"), {"attack-onepixel": 1, "attack": 1}) == (
        "attack-onepixel"
    )


def make_explain_geometry_dir(root: Path) -> Path:
    """What the explain and geometry commands may write: results with ROC/curvature, relevance arrays."""
    rng = np.random.default_rng(1)
    fp = np.linspace(0, 1, 25)
    detect = {
        "clean": 40,
        "perturbed": 40,
        "auc": 0.8123,
        "t0": {"true_positive": 0.7, "false_positive": 0.2},
        "roc": {"threshold": fp.tolist(), "true_positive": (fp**0.3).tolist(), "false_positive": fp.tolist()},
    }
    _write(root, "geometry-detect", {"softmax": {"detection": detect}, "gauss": {"detection": {**detect, "auc": 0.9}}})
    curv = {"inputs": 10, "valid": 9, "dim": 64, "top_mean_profile": [0.5, 0.2], "bottom_mean_profile": [-0.6, -0.1]}
    _write(root, "geometry-curvature", {"head_kind": "softmax", **curv})  # as `geometry curvature` writes it
    _write(root, "explain-neon", {"n": 4, "layer": "penultimate", "conservation_mean": 0.998, "auc": {"neon": 0.71}})
    np.savez(
        root / "explain-neon.npz",
        inputs=rng.random((4, 1, 8, 8)),  # the names `kmtools explain` writes (NeonRun.arrays)
        relevance=rng.normal(size=(4, 1, 8, 8)),
        assignments=np.array([0, 1, 2, 1]),
    )
    deepfool = {
        "images": 20,
        "converged": 19,
        "norm": "l2",
        "norm_mean": 0.4321,
        "norm_median": 0.4,
        "norm_min": 0.05,
        "norm_max": 1.2,
        "iterations_mean": 2.5,
    }
    _write(root, "attack-deepfool", {"head_kind": "gauss", "deepfool": deepfool})
    return root


def test_explain_geometry_and_deepfool_sections(tmp_path: Path) -> None:
    d = make_explain_geometry_dir(tmp_path / "geo")
    out = render.write_report(collect.load_run([d]), tmp_path / "g.md")
    text = out.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = sorted(Path(link).name for link in links)
    assert names == [
        "curvature_profile_geometry-curvature.png",
        "detection_roc_geometry-detect.png",
        "neon_heatmaps_explain-neon.png",
    ]
    for link in links:
        img = imread(out.parent / link)
        assert img.shape[:2] == (400, 600) and img[..., :3].var() > 0
        assert (out.parent / link).with_suffix(".svg").is_file()
    tables = render.parse_markdown_tables(text)
    deepfool = next(t for t in tables if "‖r‖ mean" in t[0])
    assert deepfool == [
        {
            "model": "gauss",
            "inputs": "20",
            "flipped": "19",
            "‖r‖ mean": "0.4321",
            "‖r‖ median": "0.4",
            "‖r‖ min": "0.05",
            "‖r‖ max": "1.2",
            "steps": "2.5",
        }
    ]
    assert "| detection.auc | 0.9 |" not in text  # the generic table lists the full paths
    assert "| gauss.detection.auc | 0.9 |" in text and "| softmax.detection.auc | 0.8123 |" in text
    assert "## explain neon" in text and "| conservation_mean | 0.998 |" in text


def test_commands_own_geometry_figure_is_shown_instead(tmp_path: Path) -> None:
    d = make_explain_geometry_dir(tmp_path / "geo")
    figures.roc_curves({}, d / "geometry-detect.png", svg=False)  # what `geometry detect --out` writes
    report = render.build(collect.load_run([d]), tmp_path / "figs", svg=False)
    sec = next(s for s in report.sections if s.title == "geometry detect")
    shown = [b.path.name for b in sec.blocks if isinstance(b, render.FigureRef)]
    assert shown == ["geometry-detect.png"]  # the command's own, not a second drawing


def test_series_names_of_nested_results() -> None:
    doc = _doc("geometry-detect", {})
    assert render._series_name(("gauss", "detection"), "geometry-detect", doc) == "gauss"
    assert render._series_name(("detection",), "geometry-detect", _doc("g", {"head_kind": "softmax"})) == ("softmax")
    found = render.find_objects({"a": {"roc": {}}, "b": [{"roc": {}}], "roc": 1}, lambda m: "roc" in m)
    assert [p for p, _ in found] == [(), ("a",)]  # lists are not searched


# ---------------------------------------------------------------------------------- summary


def test_summary_reads_compare_results(run_dir: Path) -> None:
    s = render.summary(collect.load_run([run_dir]))
    assert list(s) == ["softmax", "gauss"]
    assert s["softmax"] == {
        "accuracy": 0.9351,
        "confidence": 0.9712,
        "attack_rate": 0.34375,
        "attack_confidence": 0.7733,
    }
    assert s["gauss"] == {
        "accuracy": 0.9342,
        "confidence": 0.7071,
        "attack_rate": 0.0625,
        "attack_confidence": 0.5912,
    }


def test_per_kind_with_models_of_the_same_kind() -> None:
    """evaluate --compare of two softmax networks keys them model/compare: no third row."""
    a, b = dict(_SOFTMAX, accuracy=0.9), dict(_SOFTMAX, accuracy=0.8)
    doc = _doc("evaluate", {**a, "model": a, "compare": b})
    per = render.per_kind(doc)
    assert list(per) == ["model", "compare"]
    assert per["compare"]["accuracy"] == 0.8
    single = render.per_kind(_doc("evaluate", _GAUSS))
    assert list(single) == ["gauss"] and "ood" in single["gauss"]
    op = render.per_kind(_doc("attack-onepixel", {"head_kind": "gauss", "onepixel": _OP_GAUSS}), "onepixel")
    assert op == {"gauss": _OP_GAUSS}


def test_summary_single_model_and_tailor_fallback(tmp_path: Path) -> None:
    io.write_json(
        tmp_path / "evaluate.json",
        _doc("evaluate", {"accuracy": 0.8, "mean_confidence": 0.6, "head_kind": "gauss"}),
    )
    tailor = {
        "softmax": {"accuracy": 0.81, "mean_confidence": 0.97},
        "gauss": {"accuracy": 0.79, "mean_confidence": 0.5, "threshold": 0.1},
        "head_kind": "gauss",
        "history": [],
    }
    io.write_json(tmp_path / "tailor.json", _doc("tailor", tailor))
    run = collect.load_run([tmp_path])
    s = render.summary(run)
    assert s["gauss"]["accuracy"] == 0.8  # evaluate wins over tailor's number
    assert s["gauss"]["attack_rate"] is None
    assert s["softmax"] == {"accuracy": 0.81, "confidence": 0.97, "attack_rate": None, "attack_confidence": None}
    src = render.summary_sources(run)
    assert src["gauss"]["accuracy"] == "evaluate" and src["softmax"]["accuracy"] == "tailor"
    assert "accuracy and confidence from evaluate (synthetic" in render.table1_note(run)


def test_summary_from_onepixel_alone(run_dir: Path) -> None:
    """attack onepixel reports the clean accuracy of the attacked images: enough for a Table 1."""
    op = {
        "head_kind": "softmax",
        "onepixel": dict(_OP_SOFTMAX, accuracy=0.9, mean_confidence=0.95, images=35),
    }
    run = collect.load_run([_write(run_dir.parent / "op_only", "attack-onepixel", op)])
    assert render.summary(run) == {
        "softmax": {"accuracy": 0.9, "confidence": 0.95, "attack_rate": 0.34375, "attack_confidence": 0.7733}
    }
    assert "attack columns from attack onepixel (synthetic, 35 inputs)" in render.table1_note(run)


# ---------------------------------------------------------------------------------- HTML


def test_html_is_self_contained(html_report: str) -> None:
    assert html_report.startswith("<!DOCTYPE html>")
    assert "http://" not in html_report and "https://" not in html_report
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html_report)
    assert refs, "no images embedded"
    assert all(r.startswith("data:image/") for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert "<link" not in html_report and "<script" not in html_report and "@import" not in html_report


def test_html_contains_table_values(html_report: str) -> None:
    for text in ("93.51%", "0.971", "34.38%", "0.773", "93.42%", "0.707", "6.25%", "0.591"):  # Table 1
        assert f"<td>{text}</td>" in html_report, text
    for text in ("0.2172", "0.9913", "4.12%", "88.12%", "0.0123"):  # threshold, OOD, Theorem 2
        assert f"<td>{text}</td>" in html_report, text
    assert '<th colspan="4">Gauss network</th>' in html_report


def test_html_embeds_every_figure_as_valid_png(html_report: str) -> None:
    import base64
    import io as pyio

    from matplotlib.image import imread

    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html_report)
    # confidence, prototypes, scatter, 2 one-pixel example grids, fgsm, tailor + the run's own figure
    assert len(uris) == 8
    for u in uris:
        img = imread(pyio.BytesIO(base64.b64decode(u)), format="png")
        assert img.shape[:2] == (400, 600) and img[..., :3].var() > 0
    assert "neon_heatmap.png" in html_report  # the run's figure, captioned by its file name


def test_html_escapes_text(tmp_path: Path) -> None:
    io.write_json(tmp_path / "explain.json", _doc("explain", {"method": "<script>alert(1)</script>"}))
    out = render.write_report(collect.load_run([tmp_path]), tmp_path / "r.html", title="a & <b>")
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text and "a &amp; &lt;b&gt;" in text


# ---------------------------------------------------------------------------------- Markdown


# a number printed as "12.34%" or "0.123" is within half a unit of its last digit (plus float noise)
HALF_PCT = 0.5e-4 + 1e-12
HALF_DEC = 0.5e-3 + 1e-12


def _to_float(cell: str) -> float:
    return float(cell[:-1]) / 100 if cell.endswith("%") else float(cell)


def test_markdown_table1_round_trip(md_report: Path) -> None:
    tables = render.parse_markdown_tables(md_report.read_text(encoding="utf-8"))
    table1 = next(t for t in tables if "gauss attack rate" in t[0])
    (row,) = table1
    for kind, metrics, op in (
        ("softmax", EVALUATE["softmax"], ONEPIXEL["softmax"]["onepixel"]),
        ("gauss", EVALUATE["gauss"], ONEPIXEL["gauss"]["onepixel"]),
    ):
        assert _to_float(row[f"{kind} accuracy"]) == pytest.approx(metrics["accuracy"], abs=HALF_PCT)
        assert _to_float(row[f"{kind} conf"]) == pytest.approx(metrics["mean_confidence"], abs=HALF_DEC)
        assert _to_float(row[f"{kind} attack rate"]) == pytest.approx(op["rate"], abs=HALF_PCT)
        assert _to_float(row[f"{kind} attack conf"]) == pytest.approx(op["mean_conf_fooled"], abs=HALF_DEC)


def test_markdown_fgsm_and_onepixel_round_trip(md_report: Path) -> None:
    tables = render.parse_markdown_tables(md_report.read_text(encoding="utf-8"))
    fgsm = next(t for t in tables if "ε" in t[0])
    for i, row in enumerate(fgsm):
        for kind in ("softmax", "gauss"):
            curve = FGSM[kind]["fgsm"]
            assert float(row["ε"]) == pytest.approx(curve["eps"][i])
            assert _to_float(row[f"{kind} accuracy"]) == pytest.approx(curve["accuracy"][i], abs=HALF_PCT)
            assert _to_float(row[f"{kind} conf"]) == pytest.approx(curve["confidence"][i], abs=HALF_DEC)
    onepixel = next(t for t in tables if "attacked" in t[0])
    assert {r["model"]: int(r["fooled"]) for r in onepixel} == {"softmax": 11, "gauss": 2}


def test_markdown_figures_exist_beside_the_report(md_report: Path) -> None:
    text = md_report.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 8
    for link in links:
        assert not link.startswith(("/", "http")), link  # relative
        assert (md_report.parent / link).is_file(), link
    assert "report_files/neon_heatmap.png" in links


def test_markdown_escapes_pipes() -> None:
    table = render.Table(["a|b", "c"], [["x|y", "1.5"]])
    text = render.to_markdown(render.Report("t", [render.Section("s").add(table)]), {})
    assert render.parse_markdown_tables(text) == [[{"a|b": "x|y", "c": "1.5"}]]


# ---------------------------------------------------------------------------------- writing


def test_report_needs_force_and_a_known_suffix(run_dir: Path, tmp_path: Path) -> None:
    run = collect.load_run([json_only(run_dir, tmp_path / "j", "evaluate")])  # no arrays: no figures
    out = tmp_path / "r.md"
    render.write_report(run, out)
    first = out.read_text(encoding="utf-8")
    with pytest.raises(OutputExistsError, match="--force"):
        render.write_report(run, out)
    render.write_report(run, out, force=True, title="again")
    assert out.read_text(encoding="utf-8") != first
    with pytest.raises(ConfigError, match=r"\.html or \.md"):
        render.write_report(run, tmp_path / "r.pdf")


@pytest.mark.parametrize(
    ("command", "section", "has_table1"),
    [
        ("evaluate", "Confidence and outliers", True),
        ("attack-onepixel", "One-pixel attack", True),
        ("attack-fgsm", "FGSM", False),
        ("tailor", "TailorNetwork fine-tuning", True),
        ("explain", "explain", False),
    ],
)
def test_any_single_command_makes_a_report(
    run_dir: Path, tmp_path: Path, command: str, section: str, has_table1: bool
) -> None:
    """Each result alone (with its arrays) is enough for a report with its own section."""
    d = json_only(run_dir, tmp_path / "one", command)
    if (run_dir / f"{command}.npz").is_file():
        (d / f"{command}.npz").write_bytes((run_dir / f"{command}.npz").read_bytes())
    report = render.build(collect.load_run([d]), tmp_path / "figs", svg=False)
    titles = [sec.title for sec in report.sections]
    assert section in titles and titles[-1] == "Provenance"
    assert ("Softmax network vs Gauss network" in titles) is has_table1
    for sec in report.sections:
        for block in sec.blocks:
            if isinstance(block, render.FigureRef):
                assert block.path.is_file() and imread(block.path).shape[:2] == (400, 600)
    assert not any((tmp_path / "figs").glob("*.svg"))  # svg=False: PNG only


def test_report_of_partial_run(tmp_path: Path) -> None:
    """Only a geometry result: no Table 1, the generic section and provenance still render."""
    io.write_json(tmp_path / "geometry-distance.json", _doc("geometry-distance", {"mean_distance": 0.123, "n": 10}))
    out = render.write_report(collect.load_run([tmp_path]), tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "Softmax network vs Gauss network" not in text
    assert "<td>mean_distance</td><td>0.123</td>" in text and "Provenance" in text


def test_report_shows_gates(run_dir: Path, tmp_path: Path) -> None:
    run = collect.load_run([json_only(run_dir, tmp_path / "j", "evaluate", "attack-onepixel")])
    res = check(["gauss.onepixel.rate<=0.05", "accuracy>0.9"], run.gate_doc())
    text = render.write_report(run, tmp_path / "g.md", gates=res).read_text(encoding="utf-8")
    gates_table = next(t for t in render.parse_markdown_tables(text) if "gate" in t[0])
    assert [r["result"] for r in gates_table] == ["FAIL", "pass"]
    assert "1 of 2 gates passed." in text


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli() -> Any:
    import typer
    from typer.testing import CliRunner

    from kmtools_cli import report as report_cmd
    from kmtools_cli.main import _Group

    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    report_cmd.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_report_and_gate_exit_codes(cli: Any, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    runs = json_only(run_dir, tmp_path / "j", "evaluate")
    ok = cli("report", runs, "--out", out, "--gate", "gauss.accuracy>=softmax.accuracy-0.003")
    assert ok.exit_code == 0, ok.output
    assert out.is_file() and f"wrote {out}" in ok.output
    failed = cli("report", runs, "--out", out, "--force", "--gate", "accuracy>=0.99")
    assert failed.exit_code == 3, failed.output
    assert "FAIL" in out.read_text(encoding="utf-8")  # the report is written before the gate fails
    bad = cli("report", runs, "--out", tmp_path / "x.html", "--gate", "accuracy>>1")
    assert bad.exit_code == 2 and not (tmp_path / "x.html").exists()
    exists = cli("report", runs, "--out", out)
    assert exists.exit_code == 1 and "--force" in exists.output
    missing = cli("report", tmp_path / "nope", "--out", tmp_path / "y.html")
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_cli_report_json(cli: Any, run_dir: Path, tmp_path: Path) -> None:
    runs = json_only(run_dir, tmp_path / "j", "evaluate", "attack-onepixel")
    res = cli("report", runs, "--out", tmp_path / "r.md", "--format", "json", "--quiet")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["command"] == "report" and doc["results"]["summary"]["gauss"]["attack_rate"] == 0.0625


def test_cli_check(cli: Any, run_dir: Path) -> None:
    ok = cli("check", run_dir / "evaluate.json", "--gate", "accuracy>=0.9", "--gate", "gauss.ood.fpr95<0.05")
    assert ok.exit_code == 0, ok.output
    assert "accuracy>=0.9" in ok.output and "0.9351" in ok.output
    fail = cli("check", run_dir, "--gate", "gauss.onepixel.rate<=0.05")
    assert fail.exit_code == 3 and "0.0625" in fail.output
    unknown = cli("check", run_dir / "evaluate.json", "--gate", "gauss.acc>=1")
    assert unknown.exit_code == 2 and "valid paths" in unknown.output and "gauss.accuracy" in unknown.output
    none = cli("check", run_dir / "evaluate.json")
    assert none.exit_code == 2 and "--gate" in none.output
    js = cli("check", run_dir / "evaluate.json", "--gate", "accuracy>=0.99", "-f", "json")
    assert js.exit_code == 3 and json.loads(js.stdout)["results"]["passed"] is False


def test_cli_check_paths_lists_and_elements(cli: Any, run_dir: Path) -> None:
    paths = cli("check", run_dir / "attack-fgsm.json", "--paths")
    assert paths.exit_code == 0, paths.output
    listed = paths.stdout.split()
    assert "gauss.fgsm.accuracy[i<3]" in listed and "softmax.fgsm.eps[i<3]" in listed
    last = cli("check", run_dir / "attack-fgsm.json", "--gate", "gauss.fgsm.accuracy[-1]>softmax.fgsm.accuracy[-1]")
    assert last.exit_code == 0 and "0.41" in last.output
    js = cli("check", run_dir, "--paths", "-f", "json")
    assert "attack_onepixel.gauss.onepixel.rate" in json.loads(js.stdout)["results"]["paths"]


def test_cli_check_refuses_code(cli: Any, run_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    for expr in ("__import__('os').system('touch pwned')", "accuracy>=__import__('os').system('touch pwned')"):
        res = cli("check", run_dir / "evaluate.json", "--gate", expr)
        assert res.exit_code == 2, res.output
        assert "must be one comparison" in res.output or "only numbers" in res.output
    assert not (tmp_path / "pwned").exists()
