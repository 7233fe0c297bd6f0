"""The run layer (kmtools.runs): journal, signals, run context and the shared helpers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from kmtools.data import load_dataset, subset
from kmtools.errors import ConfigError, GateError, OutputExistsError
from kmtools.report.schema import validate
from kmtools.runs import (
    Interrupted,
    Journal,
    RunContext,
    catch_signals,
    check_gates,
    finite,
    save_npz,
    tensors,
)
from tests.helpers import tiny_mlp_model

SETTINGS = {"command": "attack fgsm", "eps": [0.1, 0.2], "seed": 0}


def _recs(idx: list[int]) -> list[dict[str, object]]:
    return [{"index": i, "label": i % 3} for i in idx]


# ------------------------------------------------------------------------------ journal
def test_journal_appends_and_resumes(tmp_path: Path) -> None:
    j = Journal(tmp_path, "attack-fgsm", SETTINGS)
    j.add("model", _recs([0, 1]))
    j.add("model", _recs([2]))
    # on disk at once (before close): two batches, three lines, settings beside them
    lines = (tmp_path / "attack-fgsm.jsonl").read_text().splitlines()
    assert [json.loads(s)["index"] for s in lines] == [0, 1, 2]
    assert json.loads((tmp_path / "attack-fgsm.run.json").read_text()) == SETTINGS
    j.close()
    r = Journal(tmp_path, "attack-fgsm", SETTINGS, resume=True)
    assert r.done("model") == {0, 1, 2} and r.reused == 3 and r.done("compare") == set()
    r.add("model", _recs([3]))
    assert r.new == {"model": 1}
    r.finish({"model": [r.records["model"][i] for i in range(4)]})
    assert [json.loads(s)["index"] for s in (tmp_path / "attack-fgsm.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_journal_refuses_other_settings_and_needs_force(tmp_path: Path) -> None:
    Journal(tmp_path, "x", SETTINGS).close()
    with pytest.raises(ConfigError, match=r"eps: \[0.1, 0.2\] there, \[0.3\] now"):
        Journal(tmp_path, "x", {**SETTINGS, "eps": [0.3]}, resume=True)
    with pytest.raises(OutputExistsError, match=r"--resume .* --force"):
        Journal(tmp_path, "x", SETTINGS)
    j = Journal(tmp_path, "x", SETTINGS, force=True)
    assert j.done("model") == set()
    j.close()
    (tmp_path / "x.run.json").unlink()
    (tmp_path / "x.jsonl").write_text(json.dumps({"model": "m", "index": 0}) + "\n")
    with pytest.raises(ConfigError, match=r"x\.run\.json is missing"):
        Journal(tmp_path, "x", SETTINGS, resume=True)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        Journal(None, "x", SETTINGS, resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        Journal(tmp_path / "file", "x", SETTINGS)


def test_journal_skips_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    j = Journal(tmp_path, "x", SETTINGS)
    j.add("m", _recs([0, 1]))
    j.close()
    with open(tmp_path / "x.jsonl", "a") as fh:
        fh.write('{"model": "m", "ind')  # a hard kill in the middle of a write
    warned: list[str] = []
    r = Journal(tmp_path, "x", SETTINGS, resume=True, warn=warned.append)
    assert r.done("m") == {0, 1} and "skipped 1 unreadable line" in warned[0]
    r.add("m", _recs([2]))  # the next record starts on a line of its own
    r.close()
    again = Journal(tmp_path, "x", SETTINGS, resume=True, warn=warned.append)
    assert again.done("m") == {0, 1, 2}


def test_journal_without_folder_keeps_records_in_memory() -> None:
    j = Journal(None, "x", SETTINGS)
    j.add("m", _recs([4, 5]), attacked=1)
    assert j.done("m") == {4, 5} and j.new == {"m": 1}
    assert "not saved" in j.where(10)


# ------------------------------------------------------------------------------ signals
def test_signal_becomes_one_interrupted_error() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with catch_signals() as got:
        got.check("during nothing")  # no signal yet: no error
        os.kill(os.getpid(), signal.SIGTERM)
        assert got.received == [signal.SIGTERM]
        with pytest.raises(Interrupted, match="interrupted by SIGTERM during x: 3 saved") as err:
            got.check(lambda: "during x: 3 saved")
        assert err.value.exit_code == 128 + signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_context_catches_signals_for_its_block(tmp_path: Path) -> None:
    with RunContext("geometry path", out_dir=tmp_path) as ctx:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Interrupted, match="SIGINT during geometry path") as err:
            ctx.check()
        assert err.value.exit_code == 128 + signal.SIGINT


# -------------------------------------------------------------------------- run context
def test_run_context_files_and_document(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"--out .*afile is a file: give a folder"):
        RunContext("geometry distance", out_dir=tmp_path / "afile")
    assert RunContext("geometry distance").paths(json=".json") == {}
    ctx = RunContext("geometry distance", out_dir=tmp_path / "out", seed=3)
    paths = ctx.paths(json=".json", npz=".npz")
    out = tmp_path / "out"
    assert paths == {"json": out / "geometry-distance.json", "npz": out / "geometry-distance.npz"}
    model = tiny_mlp_model()
    mpath = tmp_path / "m.bin"
    mpath.write_bytes(b"weights")
    info = subset(load_dataset("digits", split="test"), 5)
    with ctx.timer("stage"):
        pass
    doc = ctx.doc({"median": float("nan"), "rows": [1.0, float("inf")]}, model=model, model_path=mpath, data=info)
    assert validate(doc) == []
    assert doc["command"] == "geometry distance" and doc["seed"] == 3 and "stage" in doc["timings"]
    assert doc["results"] == {"median": None, "rows": [1.0, None]}
    assert len(doc["model"]["sha256"]) == 64 and doc["data"]["name"] == info.name
    assert ctx.write(doc, paths) == [paths["json"]]
    with pytest.raises(OutputExistsError):
        RunContext("geometry distance", out_dir=tmp_path / "out").paths(json=".json")
    assert RunContext("geometry distance", out_dir=tmp_path / "out", force=True).paths(json=".json")


def test_helpers(tmp_path: Path) -> None:
    arrays = {"a": np.arange(3), "b": torch.ones(2).numpy()}
    p = save_npz(tmp_path / "r.npz", arrays)
    assert p == tmp_path / "r.npz" and not (tmp_path / "r.npz.npz").exists()
    with np.load(p) as z:
        assert z["a"].tolist() == [0, 1, 2]
    with pytest.raises(OutputExistsError):
        save_npz(p, arrays)
    save_npz(p, {"a": np.zeros(1)}, force=True)
    check_gates(["a.b>=1", "x==0"])
    with pytest.raises(GateError):
        check_gates(["a.b >>= 1"])
    assert finite({"a": (float("-inf"), 2)}) == {"a": [None, 2]}
    x, y = tensors(subset(load_dataset("digits", split="test"), 7))
    assert x.shape == (7, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long


def test_a_signal_stops_a_geometry_run_between_batches(tmp_path: Path) -> None:
    """run_distance checks for SIGINT after each batch: the first batch's signal stops it
    before the second batch runs, with one Interrupted error and no result file."""
    from contextlib import contextmanager

    from kmtools.geometry.run import run_distance

    calls: list[int] = []

    @contextmanager
    def progress(_desc: str, _total: int):  # type: ignore[no-untyped-def]
        def update(done: int, _tot: int, _extra: str = "") -> None:
            calls.append(done)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)

        yield update

    x = torch.rand(8, 6)
    with (
        pytest.raises(Interrupted, match="SIGINT during geometry distance") as err,
        RunContext("geometry distance", out_dir=tmp_path, progress=progress) as ctx,
    ):
        run_distance(tiny_mlp_model(), x, ctx, batch_size=4)
    assert err.value.exit_code == 130 and calls == [4]
    assert not (tmp_path / "geometry-distance.json").exists()
