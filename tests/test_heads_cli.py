"""End to end: ``kmtools tailor MODEL --data digits --head-kind glvq`` puts a GLVQ head on a
trained digits CNN, keeps its accuracy, and the saved model loads and evaluates as a GLVQ
model (with an accuracy-reject curve)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools.features import extract
from kmtools.heads import GLVQHead, decision_scores
from kmtools.models import load_model
from kmtools_cli.main import app
from tests.helpers import digits_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("heads_cli")
    torch.set_num_threads(1)
    digits_model(tmp)
    return tmp / "digits.safetensors"


def _tailor(model_path: Path, out: Path, *head_args: str) -> dict[str, object]:
    r = CliRunner().invoke(app, [
        "tailor", str(model_path), "--data", "digits", *head_args, "--epochs", "1", "--out", str(out),
        "--export", "", "--format", "json", "--quiet", "--device", "cpu",
    ])
    assert r.exit_code == 0, r.output
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def test_tailor_glvq_head_end_to_end(model_path: Path, tmp_path: Path) -> None:
    doc = _tailor(model_path, tmp_path / "run", "--head-kind", "glvq", "--prototypes-per-class", "2")
    res = doc["results"]
    assert isinstance(res, dict)
    assert res["head_kind"] == "glvq" and res["config"]["head"] == "glvq"
    before, after = res["softmax"]["accuracy"], res["glvq"]["accuracy"]
    assert before >= 0.95  # the digits CNN is trained
    assert after >= before - 0.02  # one epoch of GLVQ tailoring keeps it (the issue's bar: 1 point)
    assert 0.5 <= res["glvq"]["mean_confidence"] <= 1.0  # (1 - μ)/2 of the predicted class
    saved = Path(res["files"]["kmtools"])
    model = load_model(saved)
    assert model.head_kind == "glvq" and isinstance(model.head, GLVQHead)
    assert model.head.prototypes_per_class == [2] * 10
    # the saved model reproduces the reported accuracy, predicting by the nearest prototype
    test = load_dataset("digits", split="test")
    f = extract(model, test.dataset, batch_size=512)
    with torch.no_grad():
        pred = decision_scores(model.head, f.features).argmax(1)
        wta = model.head.prototype_labels[torch.cdist(f.features, model.head.prototypes).argmin(1)]
    assert torch.equal(pred, wta)
    assert float((pred == f.labels).double().mean()) == pytest.approx(after, abs=1e-9)
    # kmtools evaluate accepts the GLVQ model and reports its accuracy-reject curve
    args = ["evaluate", str(saved), "--data", "digits", "--ood", "none", "--format", "json", "--quiet",
            "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)["results"]
    assert ev["head_kind"] == "glvq" and ev["accuracy"] == pytest.approx(after, abs=1e-9)
    assert ev["reject"]["auc"] >= ev["accuracy"]  # rejecting the least confident helps


def test_tailor_head_option_spelled_as_in_issue_7(model_path: Path, tmp_path: Path) -> None:
    doc = _tailor(model_path, tmp_path / "run", "--head", "glvq")
    res = doc["results"]
    assert isinstance(res, dict) and res["head_kind"] == "glvq"
