"""``kmtools explain`` end to end (CliRunner): wine without a model, digits through a network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools.features import as_tensors
from kmtools.models import GaussHead, KmModel, save_model, wrap, zoo
from kmtools.report.schema import validate

pytest.importorskip("zennit")


def _app():  # type: ignore[no-untyped-def]
    from kmtools_cli import explain_cmd
    from kmtools_cli.main import app

    if not any(c.name == "explain" for c in app.registered_commands):
        explain_cmd.register(app)
    return app


def _run(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(_app(), [str(a) for a in args], env={"COLUMNS": "200"})
    return r.exit_code, r.stdout, r.stderr


def _digits_models(tmp: Path) -> tuple[Path, Path]:
    """An untrained SmallCNN for digits, and the same backbone with a Gauss head (class means)."""
    torch.manual_seed(0)
    net = zoo.create("smallcnn", num_classes=10, in_channels=1, width=4)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 4},
                 input_shape=(1, 8, 8))
    x, y = as_tensors(load_dataset("digits", split="train").dataset)  # type: ignore[misc]
    with torch.no_grad():
        f = model.features(x[:300])
    mu = torch.stack([f[y[:300] == c].mean(0) for c in range(10)])
    gauss: KmModel = model.with_head(GaussHead(mu))
    return save_model(model, tmp / "softmax.safetensors"), save_model(gauss, tmp / "gauss.safetensors")


def test_wine_without_model_json_files_and_gates(tmp_path: Path) -> None:
    out = tmp_path / "wine"
    code, stdout, _ = _run("explain", "--neon", "--data", "wine", "-n", "80", "-k", "3", "--evaluate",
                           "--repeats", "1", "--methods", "random,x2,neon", "--out", out, "--format", "json",
                           "--quiet", "--gate", "auc.neon>auc.random")
    assert code == 0, stdout
    doc = json.loads(stdout)
    assert validate(doc) == [] and doc["command"] == "explain"
    res = doc["results"]
    assert res["mode"] == "data" and res["clusters"] == "kmeans" and res["k"] == 3 and res["n"] == 80
    assert res["standardized"] is True and doc["data"]["split"] == "all"
    assert not any(key.startswith("_") for key in res)  # arrays stay in relevance.npz
    assert res["assigned_fraction"] == 1.0  # k-means on the data: every f_c > 0 (Prop. 1)
    assert res["conservation"]["max_abs_error"] < 1e-8  # Σ_i R_i = f_c (Sec. II-B)
    assert set(res["auc"]) == {"random", "x2", "neon"} and all(0 <= v <= 100 for v in res["auc"].values())
    assert "reference" not in res  # not Table I's protocol (n = 80, K = 3)
    # the files: JSON on disk = stdout; arrays conserve; one bar chart per cluster
    assert json.loads((out / "explain.json").read_text())["results"] == res
    with np.load(out / "relevance.npz") as z:
        assert z["relevance"].shape == (80, 13) and z["centroids"].shape == (3, 13)
        np.testing.assert_allclose(z["relevance"].sum(1), z["score"], rtol=1e-4, atol=1e-4)
        assert np.allclose(z["inputs"].mean(0), 0, atol=1e-5)  # standardised features
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"cluster_{k}.png" for k, count in enumerate(res["cluster_counts"]) if count > 0}
    # again without --force: refused before any work, files untouched
    before = (out / "explain.json").read_bytes()
    code, _, err = _run("explain", "--data", "wine", "-k", "3", "--out", out)
    assert code == 1 and "already exists: pass --force" in err
    assert (out / "explain.json").read_bytes() == before
    # a failing gate exits 3, a malformed one 2 (before any work)
    code, _, err = _run("explain", "--data", "wine", "-n", "60", "-k", "2", "--gate", "neon_score>=1")
    assert code == 2
    code, _, err = _run("explain", "--data", "wine", "-n", "60", "-k", "2", "--gate", "k>=3")
    assert code == 3 and "gate failed" in err


def test_wine_human_table_and_elbow(tmp_path: Path) -> None:
    code, stdout, _ = _run("explain", "--data", "wine", "-n", "90", "--evaluate", "--repeats", "1",
                           "--methods", "NEON,IG-10")
    assert code == 0, stdout
    assert "elbow" in stdout and "NEON" in stdout and "IG-10" in stdout and "feature-adding AUC" in stdout
    code, stdout, _ = _run("explain", "--data", "wine", "-n", "90", "--format", "json")
    res = json.loads(stdout)["results"]
    assert res["k_choice"] == "elbow" and len(res["inertias"]) == 10 and res["k"] >= 2
    assert "auc" not in res


def test_kernel_kmeans_without_model() -> None:
    code, stdout, _ = _run("explain", "--data", "wine", "-n", "60", "-k", "2", "--kernel", "2",
                           "--format", "json")
    assert code == 0, stdout
    res = json.loads(stdout)["results"]
    assert res["clusters"] == "kernel-kmeans" and res["support_vectors"] == 2
    assert res["assigned_fraction"] == 1.0
    # the pooling layers and Eq. 10 conserve only approximately: Σ R ≈ f_c (exact for M = 1)
    assert 0.5 < res["conservation"]["ratio_median"] < 1.5


def test_network_gauss_centroids_and_kmeans_layer(tmp_path: Path) -> None:
    softmax, gauss = _digits_models(tmp_path)
    out = tmp_path / "gauss"
    code, stdout, _ = _run("explain", gauss, "--neon", "--data", "digits", "-n", "6", "--fit-n", "60",
                           "--out", out, "--format", "json", "--device", "cpu")
    assert code == 0, stdout
    doc = json.loads(stdout)
    res = doc["results"]
    assert res["mode"] == "network" and res["clusters"] == "gauss-centroids" and res["k"] == 10
    assert res["layer"] == "penultimate" and res["n"] == 6 and doc["model"]["head_kind"] == "gauss"
    assert res["assigned_fraction"] == 1.0  # the Gauss network's class = the nearest class centroid
    with np.load(out / "relevance.npz") as z:
        assert z["relevance"].shape == (6, 1, 8, 8) and z["feature_relevance"].shape == (6, res["feature_dim"])
        # NEON conserves at the cluster layer (LRP below it need not: biases absorb relevance)
        np.testing.assert_allclose(z["feature_relevance"].sum(1), z["score"], rtol=1e-3, atol=1e-4)
    assert (out / "heatmaps.png").read_bytes()[:4] == b"\x89PNG"
    assert any(out.glob("cluster_*.png"))
    assert res["lrp_engine"] == "fast"  # auto: the SmallCNN is covered by the fast engine
    ref = tmp_path / "gauss-zennit"
    code, stdout, _ = _run("explain", gauss, "--data", "digits", "-n", "6", "--fit-n", "60", "--out", ref,
                           "--format", "json", "--device", "cpu", "--lrp-engine", "zennit")
    assert code == 0 and json.loads(stdout)["results"]["lrp_engine"] == "zennit"
    with np.load(out / "relevance.npz") as a, np.load(ref / "relevance.npz") as b:
        scale = np.abs(b["relevance"]).max()
        np.testing.assert_allclose(a["relevance"], b["relevance"], atol=1e-4 * scale)
    # softmax network: k-means with -k on an intermediate layer, evaluated there (zero imputation)
    code, stdout, _ = _run("explain", softmax, "--data", "digits", "-n", "4", "--fit-n", "50", "-k", "3",
                           "--layer", "features.5", "--evaluate", "--repeats", "1", "--steps", "8",
                           "--methods", "random,neon", "--format", "json", "--device", "cpu")
    assert code == 0, stdout
    res = json.loads(stdout)["results"]
    assert res["clusters"] == "kmeans" and res["k"] == 3 and res["layer"] == "features.5"
    assert res["evaluation"]["imputation"] == "zero" and res["evaluation"]["n"] == 50
    assert set(res["auc"]) == {"random", "neon"}


def test_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _run("explain", "--data", "wine", "--layer", "features.3")
    assert code == 1 and "--layer needs a MODEL" in err
    code, _, err = _run("explain", "--neon")
    assert code == 1 and "needs --data" in err
    code, _, err = _run("explain", "--data", "wine", "-k", "1")
    assert code == 1 and "-k must be between 2" in err
    code, _, err = _run("explain", "--data", "wine", "--methods", "shap", "--evaluate")
    assert code == 1 and "unknown method" in err
    monkeypatch.setitem(sys.modules, "zennit", None)  # as if the extra were not installed
    code, _, err = _run("explain", tmp_path / "missing.safetensors", "--data", "digits", "--lrp-engine", "zennit")
    assert code == 1 and "pip install 'kmtools[explain]'" in err and err.count("\n") == 1
    code, _, err = _run("explain", "--data", "wine", "--lrp-engine", "turbo")
    assert code == 1 and "--lrp-engine must be one of auto, fast, zennit" in err


def test_help_has_examples() -> None:
    code, stdout, _ = _run("explain", "--help")
    assert code == 0 and "Example: kmtools explain --neon --data wine -k 6 --evaluate" in stdout


def test_wine_table_i_setting_reports_the_paper_row() -> None:
    """All 178 wine inputs, K = 6, standardised: the paper's Table I row (winer) is attached and
    shown beside kmtools' AUC, the best method marked; other settings get no reference."""
    args = ("explain", "--data", "wine", "-k", "6", "--evaluate", "--repeats", "1", "--methods", "NEON,x2")
    code, stdout, _ = _run(*args, "--format", "json")
    assert code == 0, stdout
    res = json.loads(stdout)["results"]
    assert res["n"] == 178 and res["reference"]["source"] == "paper Table I, row winer"
    assert res["reference"]["auc"]["neon"] == 87.23 and set(res["auc"]) == {"neon", "x2"}
    code, stdout, _ = _run(*args)
    best = res["best_method"]
    row = next(line for line in stdout.splitlines() if f"({best})" in line)
    assert "paper (Table I, winer)" in stdout and "◀ best" in row
    code, stdout, _ = _run("explain", "--data", "wine", "-k", "5", "--evaluate", "--repeats", "1",
                           "--methods", "NEON", "--format", "json")
    assert code == 0 and "reference" not in json.loads(stdout)["results"]
