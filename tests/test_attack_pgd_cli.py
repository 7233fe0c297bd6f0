"""``kmtools attack pgd`` and the evidence options of ``attack onepixel`` / ``attack external``
end to end on digits with tiny budgets: intervals in the JSON match the records, --compare's
McNemar matches the paired outcomes, gates on the bounds, --plot, --resume, bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kmtools.stats import mcnemar, wilson
from kmtools_cli.main import app
from tests.helpers import digits_gauss_pair

runner = CliRunner()
PGD = ["--data", "digits", "-n", "40", "--steps", "3", "--eps", "0,4/255,0.1", "--sanity", "0", "-q"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("models")
    return digits_gauss_pair(tmp)


def _run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_pgd_json_intervals_match_the_records(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = models
    out = tmp_path / "run"
    r = _run("attack", "pgd", model, *PGD, "--format", "json", "--out", out,
             "--gate", "pgd.rate_hi[-1]>=pgd.rate[-1]")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["results"]["pgd"]
    assert d["eps"] == [0.0, 4 / 255, 0.1] and d["norm"] == "linf" and d["steps"] == 3
    recs = _lines(out / "attack-pgd.jsonl")
    assert [x["index"] for x in recs] == list(range(40))
    correct = [x["pred"] == x["label"] for x in recs]
    assert d["n"] == sum(correct) and d["accuracy"][0] == pytest.approx(sum(correct) / 40)
    for i in range(3):
        fooled = sum(ok and x["adv_pred"][i] != x["label"] for ok, x in zip(correct, recs, strict=True))
        w = wilson(fooled, sum(correct))
        assert (d["fooled"][i], d["rate"][i], d["rate_lo"][i], d["rate_hi"][i]) == (fooled, w.rate, w.lo, w.hi)
        robust = sum(x["adv_pred"][i] == x["label"] for x in recs)
        assert d["correct"][i] == robust and d["accuracy_lo"][i] == wilson(robust, 40).lo
        # a softmax top probability is never below 1/c: effective = fooled
        assert d["effective"][i] == fooled
    assert d["fooled"][0] == 0 and d["fooled"][-1] > d["fooled"][0]
    z = np.load(out / "attack-pgd.npz")
    assert z["softmax_preds"].shape == (3, 40)


def test_pgd_compare_mcnemar_plot_and_gate_on_bounds(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, gauss = models
    out, png = tmp_path / "run", tmp_path / "curve.png"
    r = _run("attack", "pgd", model, "--compare", gauss, *PGD, "--adaptive", "--format", "json", "--out", out,
             "--plot", png)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    p = res["paired"]
    assert (p["a"], p["b"]) == ("softmax", "gauss") and p["eps"] == res["gauss"]["pgd"]["eps"]
    assert res["gauss"]["pgd"]["adaptive"] is True
    recs = _lines(out / "attack-pgd.jsonl")
    by = {k: [x for x in recs if x["model"] == k] for k in ("softmax", "gauss")}
    for i in range(3):
        ra = [x["adv_pred"][i] == x["label"] for x in by["softmax"]]
        rb = [x["adv_pred"][i] == x["label"] for x in by["gauss"]]
        t = mcnemar(ra, rb)
        assert (p["only_a"][i], p["only_b"][i], p["p_value"][i]) == (t.b, t.c, t.p_value)
        assert p["diff"][i] == pytest.approx(np.mean(rb) - np.mean(ra))
        assert p["diff_lo"][i] <= p["diff"][i] <= p["diff_hi"][i]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # gates name the bounds: the Gauss network's effective rate upper bound at the largest ε
    g = res["gauss"]["pgd"]["effective_rate_hi"][-1]
    r2 = _run("attack", "pgd", model, "--compare", gauss, *PGD, "--out", out, "--resume",
              "--adaptive", "--gate", f"gauss.pgd.effective_rate_hi[-1]<{g - 1e-9}")
    assert r2.exit_code == 3, r2.output  # same records (resumed), so the same bound fails the gate
    human = _run("attack", "pgd", model, "--compare", gauss, *PGD, "--out", out, "--resume", "--adaptive")
    assert "McNemar p" in human.stdout and "[" in human.stdout


def test_pgd_resume_reuses_records(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = models
    out = tmp_path / "run"
    a = _run("attack", "pgd", model, *PGD, "--format", "json", "--out", out)
    b = _run("attack", "pgd", model, *PGD, "--format", "json", "--out", out, "--resume")
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert db["run"]["records_reused"] == 40 and db["run"]["attacked_this_run"] == {"softmax": 0}
    assert da["results"]["pgd"] == db["results"]["pgd"]


def test_pgd_sanity_checks_reported(models: tuple[Path, Path]) -> None:
    model, _ = models
    args = [a if a != "--sanity" else "--sanity" for a in PGD]
    args[args.index("--sanity") + 1] = "10"
    r = _run("attack", "pgd", model, *args, "--format", "json")
    sc = json.loads(r.stdout)["results"]["pgd"]["sanity"]
    assert sc["inputs"] == 10 and sc["large_eps"] == 1.0 and sc["passed"] is True
    assert sc["accuracy_at_large_eps"] <= 0.05


@pytest.mark.parametrize(("opt", "value", "words"), [
    ("--lp", "l1", "--lp must be l2 or linf"),
    ("--eps", "0,x/255", "--eps"),
    ("--loss", "hinge", "--loss must be margin or ce"),
    ("--step-size", "0", "--step-size must be positive"),
    ("--target", "zebra", "--target"),
])
def test_pgd_bad_options_are_one_line_errors(models: tuple[Path, Path], opt: str, value: str, words: str) -> None:
    model, _ = models
    r = runner.invoke(app, ["attack", "pgd", str(model), "--data", "digits", "-n", "4", opt, value])
    assert r.exit_code == 1, r.output
    msg = r.stderr.strip()
    assert words in msg and len(msg.splitlines()) == 1


OP = ["--data", "digits", "-n", "12", "--popsize", "10", "--steps", "3", "-q"]


def test_onepixel_fitness_both_compare_mcnemar(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, gauss = models
    out = tmp_path / "run"
    r = _run("attack", "onepixel", model, "--compare", gauss, *OP, "--fitness", "both", "--adaptive",
             "--success", "any", "--bounds", "clip", "--format", "json", "--out", out,
             "--gate", "gauss.onepixel.effective.rate_hi<=1")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    g = res["gauss"]["onepixel"]
    assert (g["fitness"], g["success_rule"], g["bounds"], g["adaptive"]) == ("both", "any", "clip", True)
    recs = _lines(out / "attack-onepixel.jsonl")
    by = {k: [x for x in recs if x["model"] == k] for k in ("softmax", "gauss")}
    for key, rs in by.items():
        d = res[key]["onepixel"]
        att = [not x["skipped"] for x in rs]
        conf = [x["success_by"]["confidence"] for x, a in zip(rs, att, strict=True) if a]
        marg = [x["success_by"]["margin"] for x, a in zip(rs, att, strict=True) if a]
        t = mcnemar(conf, marg)
        assert d["by_fitness"]["mcnemar"]["p_value"] == t.p_value
        assert d["by_fitness"]["margin"]["fooled"] == sum(marg)
        # both = union of the two fitnesses
        assert d["fooled"] == sum(c or m for c, m in zip(conf, marg, strict=True))
        w = wilson(d["fooled"], d["attacked"])
        assert (d["rate_lo"], d["rate_hi"]) == (w.lo, w.hi)
    p = res["paired"]
    rob = {k: [x["pred"] == x["label"] and not x["success"] for x in by[k]] for k in by}
    t = mcnemar(rob["softmax"], rob["gauss"])
    assert (p["robust"]["only_a"], p["robust"]["only_b"], p["robust"]["p_value"]) == (t.b, t.c, t.p_value)
    human = _run("attack", "onepixel", model, "--compare", gauss, *OP, "--fitness", "both", "--adaptive",
                 "--success", "any", "--bounds", "clip", "--out", out, "--resume")
    assert "McNemar" in human.stdout and "effective rate" in human.stdout


def test_onepixel_bad_rule_is_a_one_line_error(models: tuple[Path, Path]) -> None:
    model, _ = models
    r = runner.invoke(app, ["attack", "onepixel", str(model), *OP, "--fitness", "loss"])
    assert r.exit_code == 1 and "--fitness must be one of confidence, margin, both" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


class _FakeFGSM:
    """torchattacks-like FGSM: __init__(model, **kw), __call__(x, y) -> x_adv in [0, 1]."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, model: torch.nn.Module, eps: float = 0.1) -> None:
        self.model, self.eps = model, eps
        _FakeFGSM.made.append({"eps": eps})

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.model(xg), y)
        (g,) = torch.autograd.grad(loss, xg)
        return (x + self.eps * g.sign()).clamp(0, 1).detach()


def test_external_torchattacks_from_the_cli(models: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, gauss = models
    fake = types.ModuleType("torchattacks")
    fake.FGSM = _FakeFGSM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchattacks", fake)
    _FakeFGSM.made.clear()
    out = tmp_path / "run"
    r = _run("attack", "torchattacks:FGSM", model, "--compare", gauss, "--data", "digits", "-n", "30",
             "--kw", "eps=20/255", "--format", "json", "-q", "--out", out,
             "--gate", "gauss.external.effective.rate_hi<=1")
    assert r.exit_code == 0, r.output
    assert _FakeFGSM.made[0] == {"eps": 20 / 255}
    doc = json.loads(r.stdout)
    assert doc["command"] == "attack torchattacks:FGSM"
    res = doc["results"]
    recs = _lines(out / "attack-torchattacks-FGSM.jsonl")
    by = {k: [x for x in recs if x["model"] == k] for k in ("softmax", "gauss")}
    for key, rs in by.items():
        d = res[key]["external"]
        fooled = sum(x["pred"] == x["label"] != x["adv_pred"] for x in rs)
        w = wilson(fooled, sum(x["pred"] == x["label"] for x in rs))
        assert (d["fooled"], d["rate_lo"], d["rate_hi"]) == (fooled, w.lo, w.hi)
    rob = {k: [x["adv_pred"] == x["label"] for x in by[k]] for k in by}
    t = mcnemar(rob["softmax"], rob["gauss"])
    assert (res["paired"]["robust"]["only_a"], res["paired"]["robust"]["p_value"]) == (t.b, t.p_value)
    # `attack external torchattacks:NAME` is the same command
    r2 = _run("attack", "external", "torchattacks:FGSM", model, "--data", "digits", "-n", "4", "-q")
    assert r2.exit_code == 0 and "robust accuracy" in r2.stdout


def test_external_without_torchattacks_is_the_install_hint(models: tuple[Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = models
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import raises ImportError
    r = runner.invoke(app, ["attack", "torchattacks:PGD", str(model), "--data", "digits", "--kw", "eps=8/255"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "error: torchattacks is not installed: pip install --no-deps torchattacks (it pins an old requests)"]
    bad = runner.invoke(app, ["attack", "external", "foolbox:PGD", str(model), "--data", "digits"])
    assert bad.exit_code == 1 and "torchattacks:NAME" in bad.stderr


def test_robustness_curve_plots_sorted_eps_with_wilson_bands() -> None:
    from kmtools.report.curves import curve_figure, eps_label

    d = {"eps": [0.0, 0.1, 2 / 255], "accuracy": [0.9, 0.1, 0.6], "accuracy_lo": [0.8, 0.05, 0.5],
         "accuracy_hi": [0.95, 0.2, 0.7], "effective_rate": [0.0, 0.8, 0.3], "effective_rate_lo": [0.0, 0.7, 0.2],
         "effective_rate_hi": [0.05, 0.9, 0.4]}
    fig = curve_figure({"softmax": d}, norm="linf")
    acc_ax, eff_ax = fig.axes
    line = acc_ax.lines[0]
    assert list(line.get_xdata()) == [0.0, 2 / 255, 0.1] and list(line.get_ydata()) == [0.9, 0.6, 0.1]
    band = acc_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.05) and band.max() == pytest.approx(0.95)
    assert list(eff_ax.lines[0].get_ydata()) == [0.0, 0.3, 0.8]
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["0", "2/255", "0.1"]
    assert eps_label(8 / 255) == "8/255" and eps_label(0.2) == "0.2" and eps_label(8 / 255, "l2") == "0.0313725"


def test_report_shows_pgd_and_onepixel_intervals(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, gauss = models
    out = tmp_path / "run"
    assert _run("attack", "pgd", model, "--compare", gauss, *PGD, "--out", out).exit_code == 0
    assert _run("attack", "onepixel", model, "--compare", gauss, *OP, "--out", out).exit_code == 0
    r = _run("report", out, "--out", tmp_path / "report.html", "-q")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "report.html").read_text()
    assert "PGD: robustness against ε" in html and "One-pixel attack: intervals" in html
    assert "McNemar" in html and "Paired, gauss − softmax" in html
    doc = json.loads((out / "attack-pgd.json").read_text())["results"]
    g = doc["gauss"]["pgd"]
    want = f"{100 * g['accuracy'][-1]:.1f}% [{100 * g['accuracy_lo'][-1]:.1f}, {100 * g['accuracy_hi'][-1]:.1f}]"
    assert want in html
    assert "pgd_robustness_curve" in html
