"""`kmtools demo`: the whole pipeline writes both models in every format, JSON results, a
summary and a report, and the Gauss network doubts noise more than the softmax network."""

from __future__ import annotations

import json
import shlex
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
    op = rows["one-pixel attack rate"]
    for key in ("softmax", "gauss"):  # every rate carries its 95% interval
        lo, hi = op[f"{key}_ci"]
        assert 0.0 <= lo <= op[key] <= hi <= 1.0
        lo, hi = rows["test accuracy"][f"{key}_ci"]
        assert lo <= rows["test accuracy"][key] <= hi
    d = op["paired"]  # the paired difference is the Gauss rate minus the softmax rate on the same images
    assert d["diff_lo"] <= d["diff"] <= d["diff_hi"] and 0.0 <= d["p_value"] <= 1.0
    assert ("do not differ significantly" in doc["results"]["verdict"]) == (d["p_value"] >= 0.05)
    for f in ("softmax.safetensors", "softmax/model.pt2", "softmax/model.onnx", "gauss/gauss.safetensors",
              "gauss/gauss/model.pt2", "gauss/gauss/model.onnx", "gauss/tailor.json", "evaluate/evaluate.json",
              "onepixel/attack-onepixel.json", "fgsm/attack-fgsm.json", "summary.md", "report.html", "report.md"):
        assert (out / f).is_file(), f
    assert "| test accuracy |" in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html
    # `kmtools report DIR` on the demo's folder collects its subfolders' results
    rep = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "all.md")])
    assert rep.exit_code == 0, rep.output
    text = (tmp_path / "all.md").read_text()
    assert "tailor" in text.lower() and "one-pixel" in text.lower()
    # the logged `kmtools attack onepixel` line repeats the demo's attack: the same records, byte for byte
    line = next(ln for ln in (out / "demo.log").read_text().splitlines() if " attack onepixel " in ln)
    argv = shlex.split(line)[2:]  # without "$ kmtools"
    argv[argv.index("--out") + 1] = str(tmp_path / "rerun")
    rerun = CliRunner().invoke(app, [*argv, "-q"])
    assert rerun.exit_code == 0, rerun.output
    assert (tmp_path / "rerun" / "attack-onepixel.jsonl").read_bytes() == \
        (out / "onepixel" / "attack-onepixel.jsonl").read_bytes()
    # a second run into the same folder needs --force
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr
    res = CliRunner().invoke(app, ["demo", "--out", str(out / "summary.md")])
    assert res.exit_code == 1 and "is a file" in res.stderr



def test_the_verdict_never_reads_noise_as_an_effect() -> None:
    from kmtools.runs.demo import paired_cell, verdict

    def rows(p: float, soft: float, gauss: float) -> list[dict]:
        pair = {"diff": gauss - soft, "diff_lo": -0.1, "diff_hi": 0.1, "p_value": p}
        return [{"metric": "one-pixel attack rate", "softmax": soft, "gauss": gauss, "paired": pair}]

    assert "do not differ significantly" in verdict(rows(0.62, 0.30, 0.25))
    assert "lower" in verdict(rows(0.001, 0.30, 0.05)) and "higher" in verdict(rows(0.01, 0.05, 0.30))
    assert "(not significant)" in paired_cell(rows(0.62, 0.3, 0.25)[0])
    assert "(significant)" in paired_cell(rows(0.01, 0.3, 0.05)[0])
