"""``kmtools attack``: end to end on digits with tiny budgets (JSON keys, gates, files,
reproducibility, interruption and --resume, --compare). Sharding across ranks:
test_attacks_distributed.py."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kmtools.data import load_dataset
from kmtools_cli.main import app
from tests.helpers import digits_gauss_pair

runner = CliRunner()
OP = ["--popsize", "12", "--steps", "3", "-n", "8", "--data", "digits"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits SmallCNN and its Gauss network (class-mean centroids, γ = 1/median d²)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("models")
    return digits_gauss_pair(tmp)


def _run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_onepixel_json_files_and_keys(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = models
    out = tmp_path / "run"
    r = _run("attack", "onepixel", model, *OP, "--format", "json", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    op = doc["results"]["onepixel"]
    assert doc["command"] == "attack onepixel" and doc["results"]["head_kind"] == "softmax"
    recs = _lines(out / "attack-onepixel.jsonl")
    assert [x["index"] for x in recs] == list(range(8)) and {x["model"] for x in recs} == {"softmax"}
    assert op["images"] == 8 and op["attacked"] + op["skipped"] == 8
    assert op["skipped"] == sum(x["skipped"] for x in recs)
    assert op["fooled"] == sum(x["success"] for x in recs)
    assert op["rate"] == pytest.approx(op["fooled"] / op["attacked"])
    assert op["popsize"] == 12 and op["maxiter"] == 3 and op["pixels"] == 1
    for x in recs:  # budget: initial population + at most 3 generations
        assert x["evaluations"] == 12 * (x["generations"] + 1) <= 48
    assert doc["run"] == {"world_size": 1, "resumed": False, "records_reused": 0,
                          "attacked_this_run": {"softmax": op["attacked"]}}
    z = np.load(out / "attack-onepixel.npz")
    assert z["x"].shape == (8, 1, 8, 8) and z["softmax_x_adv"].shape == (8, 1, 8, 8)
    changed = (z["x"] != z["softmax_x_adv"]).reshape(8, -1).sum(1)
    assert (changed <= 1).all()
    for x, ch in zip(recs, changed, strict=True):  # the recorded pixel is the changed one
        if ch:
            p = x["pixels"][0]
            assert z["softmax_x_adv"][x["index"], 0, p["y"], p["x"]] == np.float32(p["value"][0])
    assert (out / "figures" / "attack-onepixel_softmax.png").stat().st_size > 1000
    assert json.loads((out / "attack-onepixel.json").read_text())["results"] == doc["results"]
    assert json.loads((out / "attack-onepixel.run.json").read_text())["popsize"] == 12
    # an existing run is not overwritten: --resume or --force
    again = runner.invoke(app, ["attack", "onepixel", str(model), *OP, "--out", str(out)])
    assert again.exit_code == 1 and "--resume" in again.output and "--force" in again.output


def test_same_seed_same_bytes_other_seed_differs(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = models
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = _run("attack", "onepixel", model, *OP, "--seed", seed, "--out", tmp_path / name, "-q")
        assert r.exit_code == 0, r.output
    a, b, c = ((tmp_path / d / "attack-onepixel.jsonl").read_bytes() for d in "abc")
    assert a == b
    assert a != c


def test_compare_table1_and_gates(models: tuple[Path, Path]) -> None:
    model, gauss = models
    args = ["attack", "onepixel", model, *OP, "--compare", gauss]
    r = _run(*args, "--format", "json", "--gate", "gauss.onepixel.rate<=1", "-q")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert set(res) >= {"onepixel", "softmax", "gauss", "models", "head_kind"}
    assert res["onepixel"] == res["softmax"]["onepixel"]  # the top level is MODEL's
    g = res["gauss"]["onepixel"]
    assert g["head_kind"] == "gauss" and g["outlier_threshold"] == pytest.approx(0.1)
    # a Gauss net's confidences are κ, not probabilities: below softmax's on the same inputs
    assert g["mean_confidence"] < res["softmax"]["onepixel"]["mean_confidence"]
    human = _run(*args, "--gate", "softmax.onepixel.rate>1", "--gate", "onepixel.attacked>=1")
    assert human.exit_code == 3
    assert "Table 1 layout" in human.stdout and "attack rate" in human.stdout
    assert "FAIL softmax.onepixel.rate>1" in human.stderr and "ok   onepixel.attacked>=1" in human.stderr
    bad = runner.invoke(app, [str(a) for a in [*args, "--gate", "onepixel.rates<1"]])
    assert bad.exit_code == 2 and "unknown path" in bad.output


def _interrupt_after_first_batch(
    monkeypatch: pytest.MonkeyPatch, name: str, signum: int
) -> None:
    """Patch the ``name`` attack the library run calls so the process signals itself after the
    first batch of records (the handler the run installs must be in place)."""
    import importlib

    where = {"onepixel": "onepixel", "deepfool": "deepfool", "fgsm_sweep": "fgsm"}[name]
    runs = importlib.import_module(f"kmtools.runs.attacks.{where}")
    real = getattr(runs, name)
    calls = {"n": 0}

    def kill() -> None:
        assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler)
        os.kill(os.getpid(), signum)

    def patched(*args: Any, **kwargs: Any) -> Any:
        if name == "onepixel":
            cb: Callable[[Any], None] = kwargs["callback"]

            def callback(part: Any) -> None:
                cb(part)
                if part.attacked and calls["n"] == 0:
                    calls["n"] += 1
                    kill()

            kwargs["callback"] = callback
            return real(*args, **kwargs)
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            kill()
        return out

    monkeypatch.setattr(runs, name, patched)


def test_sigterm_keeps_records_and_resume_matches_one_run(
    models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = models
    args = ["attack", "onepixel", model, *OP, "-b", "2", "--format", "json", "-q"]
    full = _run(*args, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    out = tmp_path / "cut"
    with monkeypatch.context() as mp:
        _interrupt_after_first_batch(mp, "onepixel", signal.SIGTERM)
        cut = _run(*args, "--out", out)
    assert cut.exit_code == 143
    assert "interrupted by SIGTERM" in cut.stderr and "--resume" in cut.stderr
    partial = _lines(out / "attack-onepixel.jsonl")
    assert 0 < len(partial) < 8
    assert not (out / "attack-onepixel.json").exists()
    # other options are refused
    other = runner.invoke(app, [str(a) for a in [*args, "--steps", "4", "--out", out, "--resume"]])
    assert other.exit_code == 1 and "other settings" in other.output
    resumed = _run(*args, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    doc, ref = json.loads(resumed.stdout), json.loads(full.stdout)
    assert doc["run"]["records_reused"] == len(partial)
    assert doc["results"]["onepixel"] == ref["results"]["onepixel"]
    assert (out / "attack-onepixel.jsonl").read_bytes() == (tmp_path / "full" / "attack-onepixel.jsonl").read_bytes()


def test_sigint_during_deepfool_then_resume(
    models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, gauss = models
    args = ["attack", "deepfool", model, "--data", "digits", "-n", "12", "-b", "4", "--compare", gauss,
            "--format", "json", "-q"]
    full = _run(*args, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    out = tmp_path / "cut"
    with monkeypatch.context() as mp:
        _interrupt_after_first_batch(mp, "deepfool", signal.SIGINT)
        cut = _run(*args, "--out", out)
    assert cut.exit_code == 130 and "interrupted by SIGINT" in cut.stderr
    assert len(_lines(out / "attack-deepfool.jsonl")) == 4
    resumed = _run(*args, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    ref = json.loads(full.stdout)["results"]
    got = json.loads(resumed.stdout)["results"]
    assert got == ref
    d = got["softmax"]["deepfool"]
    assert d["images"] == 12 and d["norm"] == "l2" and d["converged"] <= 12
    assert got["gauss"]["deepfool"]["outlier_threshold"] == pytest.approx(0.1)
    recs = _lines(out / "attack-deepfool.jsonl")
    assert [(x["model"], x["index"]) for x in recs] == [(k, i) for k in ("softmax", "gauss") for i in range(12)]


def test_interrupt_without_out_says_nothing_was_saved(
    models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = models
    _interrupt_after_first_batch(monkeypatch, "fgsm_sweep", signal.SIGINT)
    r = runner.invoke(app, ["attack", "fgsm", str(model), "--data", "digits", "-n", "8", "-b", "4"])
    assert r.exit_code == 130 and "not saved" in r.stderr and "--out" in r.stderr


def test_fgsm_eps_zero_is_clean_accuracy(models: tuple[Path, Path], tmp_path: Path) -> None:
    model, gauss = models
    r = _run("attack", "fgsm", model, "--data", "digits", "-n", "64", "--eps", "0,0.1,0.3", "-b", "16",
             "--compare", gauss, "--format", "json", "--out", tmp_path, "--gate", "fgsm.min_accuracy<=1", "-q")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    for key in ("softmax", "gauss"):
        f = res[key]["fgsm"]
        assert f["eps"] == [0.0, 0.1, 0.3]
        assert f["accuracy"][0] == pytest.approx(f["clean_accuracy"])
        assert f["accuracy"][2] < f["accuracy"][0]
        assert f["outlier_share_fooled"][0] is None  # nothing is fooled at ε = 0
    recs = _lines(tmp_path / "attack-fgsm.jsonl")
    assert len(recs) == 128 and recs[0]["eps"] == [0.0, 0.1, 0.3]
    acc = np.mean([x["preds"][1] == x["label"] for x in recs if x["model"] == "gauss"])
    assert res["gauss"]["fgsm"]["accuracy"][1] == pytest.approx(acc)


def test_targeted_and_bad_target(models: tuple[Path, Path]) -> None:
    model, _ = models
    r = _run("attack", "onepixel", model, *OP, "--target", "3", "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    op = json.loads(r.stdout)["results"]["onepixel"]
    assert op["targeted"] is True
    bad = runner.invoke(app, ["attack", "onepixel", str(model), *OP, "--target", "zebra"])
    assert bad.exit_code == 1 and "--target" in bad.output
    table = runner.invoke(app, ["attack", "onepixel", str(model), "--data", "wine", "-n", "4"])
    assert table.exit_code == 1


def test_the_library_run_is_the_command(models: tuple[Path, Path], tmp_path: Path) -> None:
    """``run_fgsm`` called from Python (a notebook) writes and returns what ``kmtools attack
    fgsm`` does: the same document (``to_dict()``), records and arrays; its terminal view is
    built from the document alone."""
    from kmtools.data import subset
    from kmtools.models import load_model
    from kmtools.report.schema import strip_volatile
    from kmtools.report.views import view_for
    from kmtools.runs import tensors
    from kmtools.runs.attacks import Attacked, AttackRun, run_fgsm

    model, gauss = models
    info = subset(load_dataset("digits", split="test"), 20)
    x, y = tensors(info)
    with AttackRun("fgsm", out_dir=tmp_path / "lib", device="cpu") as run:
        res = run_fgsm(Attacked([load_model(model), load_model(gauss)], x, y, info, [model, gauss]), run,
                       eps=[0.0, 0.1], batch_size=8)
    cli = _run("attack", "fgsm", model, "--compare", gauss, "--data", "digits", "-n", "20", "--eps", "0,0.1",
               "-b", "8", "--device", "cpu", "--out", tmp_path / "cli", "--format", "json", "-q")
    assert cli.exit_code == 0, cli.output
    assert strip_volatile(res.to_dict()) == strip_volatile(json.loads(cli.stdout))
    for name in ("attack-fgsm.jsonl", "attack-fgsm.run.json"):
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    lib, ref = np.load(tmp_path / "lib" / "attack-fgsm.npz"), np.load(tmp_path / "cli" / "attack-fgsm.npz")
    assert sorted(lib.files) == sorted(ref.files) and all((lib[k] == ref[k]).all() for k in ref.files)
    assert {p.name for p in res.files} >= {"attack-fgsm.json", "attack-fgsm.npz", "attack-fgsm_gauss.png"}
    view = view_for(res.doc["command"])
    assert view is not None and view.tables is not None
    (table,) = view.tables(json.loads(cli.stdout), None)
    assert not isinstance(table, str)
    assert table.columns[:4] == ["ε", "softmax\naccuracy", "softmax\nconf wrong", "softmax\noutliers"]
    assert [r[0] for r in table.rows] == ["0", "0.1"] and table.rows[0][1] == "100.0%"
