"""`kmtools demo`: the whole pipeline writes both models in every format, JSON results, a
summary and a report, and the Gauss network doubts noise more than the softmax network."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kmtools.report.schema import validate
from kmtools_cli.main import app


def test_demo_runs_the_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--attack-n", "20", "--format", "json", "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    validate(doc)
    rows = {r["metric"]: r for r in doc["results"]["rows"]}
    assert rows["test accuracy"]["gauss"] >= rows["test accuracy"]["softmax"] - 0.02
    noise = rows["mean confidence (uniform noise)"]
    assert noise["gauss"] < noise["softmax"]
    assert 0.0 <= rows["one-pixel attack rate"]["softmax"] <= 1.0
    for f in ("softmax.safetensors", "softmax/model.pt2", "softmax/model.onnx", "gauss/gauss.safetensors",
              "gauss/gauss/model.pt2", "gauss/gauss/model.onnx", "gauss/tailor.json", "evaluate/evaluate.json",
              "onepixel/attack-onepixel.json", "fgsm/attack-fgsm.json", "summary.md", "report.html", "report.md"):
        assert (out / f).is_file(), f
    assert "| test accuracy |" in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html
    # a second run into the same folder needs --force
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr
    res = CliRunner().invoke(app, ["demo", "--out", str(out / "summary.md")])
    assert res.exit_code == 1 and "is a file" in res.stderr

