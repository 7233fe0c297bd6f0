"""Determinism (issue 10, item 4): the same command with the same --seed on the same device
gives the same bytes.

Each command runs twice in this process (CliRunner) with the global RNGs of torch, numpy and
random scrambled in between, so a command that leans on global random state instead of its
--seed fails here. JSON documents are compared after :func:`strip_volatile` (timings) and
written files byte for byte. A different --seed must change what randomness feeds, so the
comparison cannot pass by ignoring the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kmtools.report.schema import sha256_file, strip_volatile
from kmtools_cli.main import app
from tests.helpers import digits_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("determinism")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        digits_model(d, epochs=3)
    finally:
        torch.set_num_threads(threads)
    return d / "digits.safetensors"


@pytest.fixture()
def scramble() -> Iterator[Any]:
    """Call between two runs: moves every global RNG somewhere else."""
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()

    def go(seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        torch.rand(7)

    yield go
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def run(*args: Any) -> dict[str, Any]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert res.exit_code == 0, (res.output, res.exception)
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def canonical(doc: dict[str, Any], *folders: Path) -> str:
    """The document without timings, with run folders replaced by a placeholder."""
    text = json.dumps(strip_volatile(doc), sort_keys=True)
    for f in folders:
        text = text.replace(str(f), "<RUN>")
    return text


def test_inspect_is_reproducible_and_records_provenance(model_path: Path, scramble: Any) -> None:
    args = ["inspect", model_path, "--data", "digits", "-n", "200", "--device", "cpu", "-f", "json"]
    a = run(*args)
    scramble(1)
    b = run(*args)
    assert canonical(a) == canonical(b)
    assert a["versions"]["kmtools"] and a["versions"]["torch"] == torch.__version__
    assert a["model"]["sha256"] == sha256_file(model_path)
    assert len(a["data"]["sha256"]) == 64 and a["device"] == "cpu"


def test_centroids_kmeans_is_reproducible(model_path: Path, tmp_path: Path, scramble: Any) -> None:
    def go(seed: int, name: str) -> tuple[dict[str, Any], bytes]:
        out = tmp_path / name
        doc = run("centroids", model_path, "--data", "digits", "-n", "400", "-m", "kmeans", "-k", "6",
                  "--n-init", "1", "--seed", seed, "--device", "cpu", "-f", "json", "--out", out)
        return doc, out.read_bytes()

    a, fa = go(5, "a.safetensors")
    scramble(2)
    b, fb = go(5, "b.safetensors")
    assert fa == fb
    assert canonical(a, tmp_path / "a.safetensors") == canonical(b, tmp_path / "b.safetensors")
    assert a["seed"] == 5
    c, fc = go(6, "c.safetensors")  # another k-means++ seeding: another local optimum here
    assert fc != fa and c["seed"] == 6


def test_evaluate_is_reproducible(model_path: Path, tmp_path: Path, scramble: Any) -> None:
    def go(seed: int, name: str) -> dict[str, Any]:
        return run("evaluate", model_path, "--data", "digits", "-n", "150", "--n-noise", "64", "--seed", seed,
                   "--device", "cpu", "-f", "json", "--out", tmp_path / name)

    a = go(7, "a")
    scramble(3)
    b = go(7, "b")
    assert canonical(a, tmp_path / "a") == canonical(b, tmp_path / "b")
    ja, jb = (json.loads((tmp_path / n / "evaluate.json").read_text()) for n in "ab")
    assert canonical(ja, tmp_path / "a") == canonical(jb, tmp_path / "b")
    with np.load(tmp_path / "a" / "evaluate.npz") as za, np.load(tmp_path / "b" / "evaluate.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert za[k].tobytes() == zb[k].tobytes(), k
    c = go(8, "c")  # other noise images: the OOD scores move
    assert canonical(c, tmp_path / "c") != canonical(a, tmp_path / "a")


def test_tailor_is_reproducible(model_path: Path, tmp_path: Path, scramble: Any) -> None:
    def go(seed: int, name: str) -> dict[str, Any]:
        return run("tailor", model_path, "--data", "digits", "-n", "200", "--epochs", "2", "--batch-size", "32",
                   "--seed", seed, "--device", "cpu", "--export", "", "-f", "json", "-q", "--out", tmp_path / name)

    a = go(11, "a")
    scramble(4)
    b = go(11, "b")
    for f in ("gauss.safetensors", "tailor-checkpoint.pt"):
        if f.endswith(".pt"):  # torch.save zips carry no timestamps, but compare the states
            sa = torch.load(tmp_path / "a" / f, weights_only=True)
            sb = torch.load(tmp_path / "b" / f, weights_only=True)
            assert all(torch.equal(sa["backbone"][k], sb["backbone"][k]) for k in sa["backbone"])
            continue
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for doc in (a, b):
        for h in doc["results"]["history"]:
            h.pop("seconds")  # per-epoch wall time inside results (reported: not under timings)
    assert canonical(a, tmp_path / "a") == canonical(b, tmp_path / "b")
    assert a["seed"] == 11
    c = go(12, "c")  # another shuffle order: other weights
    assert (tmp_path / "c" / "gauss.safetensors").read_bytes() != (tmp_path / "a" / "gauss.safetensors").read_bytes()
    assert c["seed"] == 12
