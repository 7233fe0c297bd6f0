"""`kmtools tailor` end to end on digits: accuracy kept, κ doubts noise, files, JSON, gates,
--force protection and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kmtools.models import GaussHead, load_model
from kmtools_cli.main import app
from tests.helpers import digits_model

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("digits")
    digits_model(tmp)
    return tmp / "digits.safetensors"


@pytest.fixture(scope="module")
def tailored(digits_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "g"
    res = runner.invoke(app, ["tailor", str(digits_ckpt), "--data", "digits", "--epochs", "3",
                              "--out", str(out), "--export", "", "--format", "json", "--quiet",
                              "--gate", "results.accuracy_change>=-0.01", "--gate", "results.max_drop_ok==1"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_tailor_keeps_accuracy_and_writes_a_gauss_model(tailored: tuple[Path, dict]) -> None:
    out, doc = tailored
    assert doc["command"] == "tailor" and doc["seed"] == 0
    r = doc["results"]
    assert r["gauss"]["accuracy"] >= r["softmax"]["accuracy"] - 0.01  # issue 4: within 1 point on digits
    assert r["gauss"]["mean_confidence"] < r["softmax"]["mean_confidence"]
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2, 3]  # epoch 0 = before any step
    h0 = r["history"][0]
    assert h0["val_accuracy"] == h0["softmax_val_accuracy"]  # the exact warm start changes nothing
    assert r["selected_epoch"] >= 1 and r["max_drop_ok"] == 1 and r["accuracy_drop"] <= 0.5
    assert r["validation"]["source"] == "split" and r["validation"]["n"] == 136  # round(0.1 · 1348), stratified
    b = r["benefit"]
    # the features gather round the exported centroids (scale-free), on validation data
    sel = r["history"][r["selected_epoch"]]
    assert sel["val_scatter_over_gap2"] < r["history"][0]["val_scatter_over_gap2"]
    assert b["gauss"]["centroids_scatter_over_gap2"] == pytest.approx(sel["val_scatter_over_gap2"], rel=1e-4)
    assert b["gauss"]["noise_auroc"] > 0.5 and b["softmax"]["scatter_over_gap2"] > 0
    ch = r["test"]["accuracy_change"]
    assert ch["diff_lo"] <= ch["diff"] <= ch["diff_hi"] and 0 <= ch["p_value"] <= 1
    assert (out / "gauss.safetensors").is_file() and (out / "tailor.json").is_file()
    assert (out / "tailor-checkpoint.pt").is_file()
    gm = load_model(out / "gauss.safetensors")  # no --arch needed
    assert gm.head_kind == "gauss" and isinstance(gm.head, GaussHead)
    assert float(gm.head.gamma) == pytest.approx(r["gamma"])
    # κ by hand: exp(-γ(‖f - C_k‖² + o_k)); the outlier threshold is 1/c
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        f = gm.features(x)
        d2 = torch.cdist(f.double(), gm.head.centroids.double()) ** 2 + gm.head.offsets.double()
        kappa = torch.exp(-gm.head.gamma * d2)  # the offsets carry Theorem 1's bias coordinate
        torch.testing.assert_close(gm.confidences(x).double(), kappa, rtol=1e-4, atol=1e-6)
    assert gm.threshold == pytest.approx(0.1)


def test_existing_output_needs_force_and_failed_gate_exits_3(digits_ckpt: Path, tailored: tuple[Path, dict]) -> None:
    out, _ = tailored
    before = (out / "gauss.safetensors").read_bytes()
    res = runner.invoke(app, ["tailor", str(digits_ckpt), "--data", "digits", "--out", str(out), "--export", ""])
    assert res.exit_code == 1
    assert "--force" in res.stderr and "Traceback" not in res.output
    assert (out / "gauss.safetensors").read_bytes() == before  # nothing lost
    res = runner.invoke(app, ["check", str(out / "tailor.json"), "--gate", "results.gauss.accuracy>=1.01"])
    assert res.exit_code == 3, res.output


def test_bad_options_are_one_line_errors(digits_ckpt: Path, tmp_path: Path) -> None:
    for args, needle in ((["--epochs", "0"], "--epochs"), (["--init", "nope"], "--init"),
                         (["--gamma", "x"], "--gamma"), (["--train-from", "nope", "--epochs", "1"], "--train-from")):
        res = runner.invoke(app, ["tailor", str(digits_ckpt), "--data", "digits", "--out", str(tmp_path / "o"),
                                  "--export", "", "--force", *args])
        assert res.exit_code == 1, (args, res.output)
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output, res.stderr


def test_tailoring_a_gauss_network_again_is_refused(tailored: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tailored
    res = runner.invoke(app, ["tailor", str(out / "gauss.safetensors"), "--data", "digits", "--out",
                              str(tmp_path / "again"), "--export", ""])
    assert res.exit_code == 1 and "softmax" in res.stderr
