"""Nothing lost (issue 10, item 3): atomic writes, --force, and interrupted ``tailor`` runs.

``kmtools tailor`` runs in a subprocess and is sent SIGINT or SIGTERM once its first epoch
checkpoint is on disk. It must exit 130/143 with a message naming ``--resume``, leave the
checkpoint, and ``--resume`` must then finish with a result byte-for-byte equal to an
uninterrupted run (same seed, CPU). To make the timing deterministic the subprocess runs the
real CLI through a two-line wrapper that pauses one second after each checkpoint is written
(``KM_TEST_PAUSE``), so the signal always lands mid-run; nothing else is patched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from kmtools.errors import OutputExistsError
from kmtools.io import check_writable, write_bytes, write_json, write_with
from kmtools.report.schema import strip_volatile
from kmtools_cli.main import app
from tests.helpers import digits_model

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = textwrap.dedent(
    """
    import os, sys, time
    import kmtools.tailor.loop as t

    pause = float(os.environ.get("KM_TEST_PAUSE", "0"))
    if pause:
        save = t._save_checkpoint

        def slow(*args, **kwargs):
            save(*args, **kwargs)
            time.sleep(pause)

        t._save_checkpoint = slow
    from kmtools_cli.main import main

    sys.argv[0] = "kmtools"
    main()
    """
)
EPOCHS = 4


# --------------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"old": True})
    before = target.read_bytes()

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b'{"new": tr')  # half a document...
        raise RuntimeError("disk full")  # ...then the writer dies

    with pytest.raises(RuntimeError, match="disk full"):
        write_with(target, crash, force=True)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_hard_crash_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """A process killed inside the writer (os._exit: no cleanup, no finally) cannot damage the
    target: the new bytes only ever went to a hidden temporary file."""
    target = tmp_path / "model.bin"
    write_bytes(target, b"OLD" * 1000)
    code = textwrap.dedent(
        f"""
        import os
        from kmtools.io import write_with

        def writer(tmp):
            with open(tmp, "wb") as fh:
                fh.write(b"NEW" * 500)
                fh.flush()
                os._exit(9)

        write_with({str(target)!r}, writer, force=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert target.read_bytes() == b"OLD" * 1000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.bin"]
    assert all(n.startswith(".model.bin.") and n.endswith(".tmp") for n in leftovers)


def test_fsync_then_rename_then_fsync_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kmtools.io as kio

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(a: Any, b: Any) -> None:
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(kio.os, "fsync", fsync)
    monkeypatch.setattr(kio.os, "replace", replace)
    write_bytes(tmp_path / "x", b"data")
    assert calls == ["fsync", "replace", "fsync"]


def test_existing_outputs_need_force(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(OutputExistsError, match="--force"):
        write_json(target, {"v": 2})
    with pytest.raises(OutputExistsError):
        check_writable(target)
    assert json.loads(target.read_text()) == {"v": 1}
    write_json(target, {"v": 2}, force=True)
    assert json.loads(target.read_text()) == {"v": 2}
    with pytest.raises(OutputExistsError, match="directory"):
        check_writable(tmp_path, force=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("interrupt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net trains faster on one thread, above all on a busy machine
    try:
        digits_model(d, epochs=3)
    finally:
        torch.set_num_threads(threads)
    return d / "digits.safetensors"


def test_commands_do_not_overwrite_without_force(model_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c.safetensors"
    out.write_bytes(b"precious")
    res = runner.invoke(app, ["centroids", str(model_path), "--data", "digits", "-n", "50", "--device", "cpu",
                              "--out", str(out)])
    assert res.exit_code == 1 and "--force" in res.stderr, res.output
    assert out.read_bytes() == b"precious"
    res = runner.invoke(app, ["centroids", str(model_path), "--data", "digits", "-n", "50", "--device", "cpu",
                              "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != b"precious"
    run = tmp_path / "run"
    run.mkdir()
    (run / "gauss.safetensors").write_bytes(b"precious")
    res = runner.invoke(app, ["tailor", str(model_path), "--data", "digits", "--out", str(run), "--device", "cpu"])
    assert res.exit_code == 1 and "--force" in res.stderr
    assert (run / "gauss.safetensors").read_bytes() == b"precious"


# --------------------------------------------------------------------------- interrupted tailor
def _args(model_path: Path, out: Path, *extra: str) -> list[str]:
    return ["tailor", str(model_path), "--data", "digits", "-n", "256", "--epochs", str(EPOCHS),
            "--batch-size", "32", "--out", str(out), "--device", "cpu", "--export", "", "--seed", "3",
            "-f", "json", *extra]


def _tailor(model_path: Path, out: Path, *extra: str, pause: float = 0.0) -> subprocess.Popen[bytes]:
    script = out.parent / "kmtools_wrapper.py"
    if not script.exists():
        script.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KM_TEST_PAUSE": str(pause),
           "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("KMTOOLS_DEBUG", None)
    return subprocess.Popen([sys.executable, str(script), *_args(model_path, out, *extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def _interrupt(proc: subprocess.Popen[bytes], ckpt: Path, sig: int) -> None:
    """Send ``sig`` once the first checkpoint exists (the run then pauses for a second)."""
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return  # the test on the exit code reports it
        time.sleep(0.02)
    proc.send_signal(sig)


def _comparable(doc: dict[str, Any], out: Path) -> str:
    """The tailor.json document without what may differ: timings, epoch durations, the folder."""
    doc = strip_volatile(doc)
    for h in doc["results"]["history"]:
        h.pop("seconds", None)
    return json.dumps(doc, sort_keys=True).replace(str(out), "<OUT>")


@pytest.fixture(scope="module")
def runs(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two runs interrupted by SIGINT and SIGTERM (subprocesses, signalled from threads) while
    the uninterrupted reference runs in this process on one thread; then both are resumed."""
    import threading

    base = tmp_path_factory.mktemp("runs")
    victims = {name: _tailor(model_path, base / name, pause=1.0) for name in ("SIGINT", "SIGTERM")}
    killers = [threading.Thread(target=_interrupt, args=(proc, base / name / "tailor-checkpoint.pt",
                                                         getattr(signal, name)))
               for name, proc in victims.items()]
    for k in killers:
        k.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = CliRunner().invoke(app, _args(model_path, base / "ref", "-q"))
    finally:
        torch.set_num_threads(threads)
    for k in killers:
        k.join()
    result: dict[str, Any] = {"base": base, "ref": (ref.exit_code, ref.stdout, ref.stderr)}
    for name, proc in victims.items():
        result[name] = _finish(proc)
        ckpt = base / name / "tailor-checkpoint.pt"
        result[f"{name}-checkpoint"] = torch.load(ckpt, weights_only=True)["epoch"] if ckpt.exists() else None
        result[f"{name}-gauss-before-resume"] = (base / name / "gauss.safetensors").exists()
    resumed = {name: _tailor(model_path, base / name, "--resume") for name in victims}
    for name, proc in resumed.items():
        result[f"{name}-resumed"] = _finish(proc)
    return result


def test_uninterrupted_reference_run(runs: dict[str, Any]) -> None:
    code, out, err = runs["ref"]
    assert code == 0, err[-2000:]
    history = json.loads(out)["results"]["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS + 1))  # epoch 0: the warm-started head, no step


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_exits_with_a_resume_hint_and_keeps_the_checkpoint(runs: dict[str, Any], name: str,
                                                                   code: int) -> None:
    rc, out, err = runs[name]
    assert rc == code, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by {name}") and "--resume" in last, last
    assert "Traceback" not in err and out == ""
    assert runs[f"{name}-checkpoint"] == 1  # the epoch that finished before the signal
    assert not runs[f"{name}-gauss-before-resume"]  # no half-finished result was written


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_resume_equals_an_uninterrupted_run_bit_for_bit(runs: dict[str, Any], name: str) -> None:
    rc, _, err = runs[f"{name}-resumed"]
    assert rc == 0, err[-2000:]
    assert "resumed from" in err
    base = runs["base"]
    assert (base / name / "gauss.safetensors").read_bytes() == (base / "ref" / "gauss.safetensors").read_bytes()
    resumed = json.loads((base / name / "tailor.json").read_text())
    reference = json.loads((base / "ref" / "tailor.json").read_text())
    assert _comparable(resumed, base / name) == _comparable(reference, base / "ref")


def test_resume_refuses_other_options(runs: dict[str, Any], model_path: Path) -> None:
    out = runs["base"] / "SIGINT"
    res = CliRunner().invoke(app, ["tailor", str(model_path), "--data", "digits", "-n", "256", "--epochs",
                                   str(EPOCHS), "--batch-size", "32", "--out", str(out), "--device", "cpu",
                                   "--export", "", "--seed", "3", "--lr", "0.5", "--resume"])
    assert res.exit_code == 1 and "other options" in res.stderr, res.output


def test_resume_without_a_checkpoint(model_path: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["tailor", str(model_path), "--data", "digits", "-n", "64", "--epochs", "1",
                                   "--out", str(tmp_path / "fresh"), "--device", "cpu", "--export", "",
                                   "--resume"])
    assert res.exit_code == 1 and "no checkpoint" in res.stderr, res.output
