"""``kmtools evaluate --val-data / --baselines / --ood <other shape>`` end to end on digits:
the threshold is fitted on validation data and reported on the evaluated set, the baselines
table agrees with the library and with evaluate's own OOD numbers, OOD images of another
shape are converted, and misuse is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools.data.split import holdout_split, labels_of
from kmtools.evaluate import noise_batches, recommended_threshold
from kmtools.models import load_model
from kmtools.ood import ood_baselines
from kmtools_cli.main import app
from tests.helpers import digits_gauss_pair


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("models")
    return digits_gauss_pair(tmp)


def _cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_threshold_fitted_on_held_out_validation_reported_on_test(pair: tuple[Path, Path]) -> None:
    soft, _ = pair
    r = _cli("evaluate", soft, "--data", "digits", "-n", "120", "--ood", "none", "--val-data", "held-out",
             "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    train = load_dataset("digits", split="train").dataset
    _, va = holdout_split(labels_of(train))
    assert res["validation"]["source"] == "held-out" and res["validation"]["n"] == len(va)
    assert res["threshold_fit"] == "validation data"
    # the threshold is the validation set's 5th percentile of correct confidences ...
    model = load_model(soft).eval()
    xs = torch.stack([Subset(train, va.tolist())[i][0] for i in range(len(va))]).float()
    ys = labels_of(train)[va]
    with torch.no_grad():
        p = torch.softmax(model(xs), 1)
    conf, pred = p.max(1)
    want = recommended_threshold(conf.numpy(), (pred == ys).numpy())
    assert res["recommended_threshold"] == pytest.approx(want, rel=1e-6)
    # ... and reported on all 120 evaluated inputs (none of them was used to fit it)
    held = res["threshold_heldout"]
    assert held["flagged"]["n"] == 120 and held["correct_kept"]["n"] == res["correct"]
    assert held["fit_on"] == "validation data"


def test_baselines_agree_with_library_and_evaluate(pair: tuple[Path, Path]) -> None:
    soft, gauss = pair
    r = _cli("evaluate", soft, "--compare", gauss, "--data", "digits", "-n", "150", "--ood", "uniform",
             "--n-noise", "80", "--baselines", "--knn-k", "10", "--format", "json", "-q",
             "--gate", "ood_baselines.uniform.scores.kappa.auroc_lo>=0")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    base = res["ood_baselines"]["uniform"]
    assert list(base["scores"]) == ["msp", "max_logit", "energy", "mahalanobis", "knn", "kappa"]
    for m in base["scores"].values():
        assert m["n_in"] == 150 and m["n_out"] == 80 and m["auroc_lo"] <= m["auroc"] <= m["auroc_hi"]
    # MSP and κ are evaluate's own float64 log-confidences: the same AUROC as the per-model rows
    assert base["scores"]["msp"]["auroc"] == pytest.approx(res["softmax"]["ood"]["auroc"], abs=1e-12)
    assert base["scores"]["kappa"]["auroc"] == pytest.approx(res["gauss"]["ood"]["auroc"], abs=1e-12)
    # the library on the same inputs gives the same table
    te = load_dataset("digits", split="test").dataset
    tr = load_dataset("digits", split="train").dataset
    noise = torch.cat(list(noise_batches("uniform", 80, (1, 8, 8), seed=0, batch_size=80)))
    lib = ood_baselines(load_model(soft), tr, Subset(te, range(150)),
                        TensorDataset(noise, torch.zeros(80, dtype=torch.long)),
                        gauss=load_model(gauss), k=10).to_dict()
    for name in ("mahalanobis", "knn", "energy"):
        assert base["scores"][name]["auroc"] == pytest.approx(lib["scores"][name]["auroc"], abs=1e-12)
    vs = base["kappa_vs_best"]
    best = base["best_baseline"]
    assert vs["baseline"] == best != "kappa"
    assert vs["diff"] == pytest.approx(base["scores"]["kappa"]["auroc"] - base["scores"][best]["auroc"])
    assert vs["diff_lo"] <= vs["diff"] <= vs["diff_hi"]
    assert set(res["calibration"]) == {"softmax", "gauss"}
    human = _cli("evaluate", soft, "--compare", gauss, "--data", "digits", "-n", "150", "--ood", "uniform",
                 "--n-noise", "80", "--baselines", "--knn-k", "10", "-q")
    for row in ("Mahalanobis", "κ (Gauss network)", "ΔAUROC", "ECE", "accuracy [95% CI]"):
        assert row in human.stdout, row


def test_ood_images_of_another_shape_are_converted(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, gauss = pair
    big = np.random.default_rng(0).random((30, 3, 16, 16)).astype(np.float32)  # RGB 16×16 vs grey 8×8
    np.savez(tmp_path / "big.npz", x=big, y=np.zeros(30, dtype=np.int64))
    r = _cli("evaluate", gauss, "--data", "digits", "-n", "60", "--ood", tmp_path / "big.npz", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"]["ood"]["n"] == 30
    assert "(3, 16, 16) -> (1, 8, 8)" in r.stderr


def test_misuse_is_a_one_line_error(pair: tuple[Path, Path]) -> None:
    soft, gauss = pair
    cases = [
        (["evaluate", gauss, "--data", "digits", "--baselines"], "softmax network"),
        (["evaluate", soft, "--data", "digits", "--baselines", "--ood", "none"], "--baselines needs OOD inputs"),
        (["evaluate", soft, "--data", "digits", "--val-data", "wine"], "wine"),
    ]
    for args, words in cases:
        r = _cli(*args)
        assert r.exit_code == 1, r.output
        msg = r.stderr.strip().splitlines()
        assert len(msg) == 1 and words in msg[0], msg
