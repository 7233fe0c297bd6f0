"""``kmtools geometry distance|curvature|detect|path``: end to end on digits, tiny budgets
(JSON envelope, files, gates, adversarial sets from `kmtools attack`, errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kmtools.report.schema import validate
from kmtools_cli.main import app
from tests.helpers import digits_gauss_pair

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits SmallCNN (softmax) and its Gauss network (class-mean centroids)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("geometry")
    return digits_gauss_pair(tmp, reduce="mean")


def _run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _json(*args: Any) -> dict[str, Any]:
    r = _run(*args, "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    doc: dict[str, Any] = json.loads(r.stdout)
    assert validate(doc) == []
    return doc


def test_distance_gauss_theorem2_files_and_gate(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, gauss = models
    out = tmp_path / "d"
    doc = _json("geometry", "distance", gauss, "--data", "digits", "-n", "12", "--out", out,
                "--gate", "theorem2.violations==0", "--gate", "converged>=10")
    res = doc["results"]
    assert doc["command"] == "geometry distance" and res["head_kind"] == "gauss"
    assert res["inputs"] == 12 and res["converged"] >= 10 and res["on_boundary"] == res["converged"]
    t2 = res["theorem2"]
    # smallcnn has convolutions: their norms are power-iterated, so the product is an estimate
    assert t2["violations"] == 0 and t2["lipschitz"]["guaranteed"] is False
    assert json.loads((out / "geometry-distance.json").read_text())["results"] == res
    z = np.load(out / "geometry-distance.npz")
    assert z["distance"].shape == (12,) and z["bound_margin"].shape == (12,)
    ok = z["converged"]
    assert (z["bound_margin"][ok] <= z["distance"][ok] + 1e-6).all()
    assert (out / "geometry-distance.png").stat().st_size > 1000
    again = _run("geometry", "distance", gauss, "--data", "digits", "-n", "12", "--out", out)
    assert again.exit_code == 1 and "--force" in again.output


def test_curvature_profile_png(models: tuple[Path, Path], tmp_path: Path) -> None:
    soft, _ = models
    out = tmp_path / "c"
    doc = _json("geometry", "curvature", soft, "--data", "digits", "-n", "3", "--top", "3", "--bottom", "2",
                "--steps", "12", "--samples", "4", "--out", out)
    res = doc["results"]
    assert res["hvp"] == "fd" and res["lanczos_steps"] == 12 and res["dim"] == 64
    assert len(res["top_mean_profile"]) == 3 and len(res["bottom_mean_profile"]) == 2
    assert res["top_mean_profile"] == sorted(res["top_mean_profile"], reverse=True)
    assert res["top_mean_profile"][0] >= res["bottom_mean_profile"][0]
    assert (out / "geometry-curvature.png").stat().st_size > 1000
    z = np.load(out / "geometry-curvature.npz")
    assert z["top"].shape == (3, 3) and z["mean"].shape == (3,)


def test_detect_deepfool_saved_set_round_trip_and_gate(models: tuple[Path, Path], tmp_path: Path) -> None:
    soft, _ = models
    out, saved = tmp_path / "det", tmp_path / "set.npz"
    args = ["--samples", "4", "--seed", "1"]
    doc = _json("geometry", "detect", soft, "--data", "digits", "-n", "10", *args, "--out", out,
                "--save-adversarial", saved)
    res = doc["results"]
    assert res["perturbed_source"]["kind"] == "deepfool" and res["clean"] == 10
    assert res["perturbed"] == res["perturbed_source"]["flipped"] >= 8
    roc = res["roc"]
    assert roc["true_positive"][0] == 0 and roc["true_positive"][-1] == 1 and roc["false_positive"][-1] == 1
    assert 0 <= res["auc"] <= 1 and res["chance_recovery"] == pytest.approx(1 / 9)
    assert (out / "geometry-detect.png").stat().st_size > 1000
    # the saved set carries its clean inputs: the same detection without --data
    again = _json("geometry", "detect", soft, "--adversarial", saved, *args)["results"]
    assert again["perturbed_source"]["kind"] == "file"
    if res["perturbed"] == 10:
        assert again["auc"] == pytest.approx(res["auc"])
        assert again["recovery_all"] == pytest.approx(res["recovery_all"])
    failed = _run("geometry", "detect", soft, "--adversarial", saved, *args, "--gate", "auc>1.5")
    assert failed.exit_code == 3 and "auc" in failed.output


def test_detect_reads_an_attack_file(models: tuple[Path, Path], tmp_path: Path) -> None:
    """`kmtools attack onepixel --out DIR` writes x and <model>_x_adv: detect reads the fooled rows."""
    soft, _ = models
    out = tmp_path / "att"
    r = _run("attack", "onepixel", soft, "--data", "digits", "-n", "16", "--popsize", "20", "--steps", "5",
             "--out", out, "-q")
    assert r.exit_code == 0, r.output
    npz = out / "attack-onepixel.npz"
    z = np.load(npz)
    fooled = int((z["softmax_success"] & ~z["softmax_skipped"]).sum())
    res = _run("geometry", "detect", soft, "--adversarial", npz, "--data", "digits", "-n", "16",
               "--samples", "3", "--format", "json", "-q")
    if fooled == 0:
        assert res.exit_code == 1 and "no successful" in res.output
        return
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)["results"]
    assert doc["perturbed"] == fooled and doc["perturbed_source"]["key"] == "softmax"
    assert doc["perturbed_source"]["labels"] == "dataset labels"


def test_path_pairs_and_plot(models: tuple[Path, Path], tmp_path: Path) -> None:
    _, gauss = models
    out = tmp_path / "p"
    doc = _json("geometry", "path", gauss, "--data", "digits", "-n", "40", "--pairs", "3", "--out", out)
    res = doc["results"]
    assert res["head_kind"] == "gauss" and res["pairs"] == 3 and len(res["paths"]) == 3
    assert res["success_rate"] == 1.0
    for rec in res["paths"]:
        assert rec["success"] and rec["anchors"] >= 2
    assert (out / "geometry-path.png").stat().st_size > 1000
    z = np.load(out / "geometry-path.npz")
    assert z["anchors"].shape[1:] == (1, 8, 8) and list(z["pair"]) == res["plotted_pair"]


def test_errors_are_one_line(models: tuple[Path, Path], tmp_path: Path) -> None:
    soft, _ = models
    r = _run("geometry", "distance", soft)
    assert r.exit_code == 1 and "--data" in r.output
    r = _run("geometry", "distance", soft, "--data", "digits", "-n", "2", "--lipschitz", "big")
    assert r.exit_code == 1 and "--lipschitz" in r.output
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, x=np.zeros((2, 1, 5, 5), np.float32), labels=np.zeros(2, np.int64))
    r = _run("geometry", "detect", soft, "--data", "digits", "-n", "2", "--adversarial", bad)
    assert r.exit_code == 1 and "shape" in r.output
    r = _run("geometry", "path", soft, "--data", "digits", "-n", "5", "--pair", "0,9")
    assert r.exit_code == 1 and "--pair" in r.output
    r = _run("geometry", "detect", soft, "--data", "digits", "--gate", "auc>>1")
    assert r.exit_code == 2
