"""The result schema: envelope() output validates; broken documents are rejected."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import kmtools
from kmtools.report import schema


def _doc(**kw: Any) -> dict[str, Any]:
    return schema.envelope(
        "evaluate",
        {"accuracy": 0.9, "gauss": {"accuracy": 0.91}},
        model={"path": "m.pt", "sha256": "0" * 64},
        data={"name": "digits", "n": 10},
        seed=0,
        device="cpu",
        timings={"features": 1.234567, "total": 2},
        **kw,
    )


def test_envelope_validates_and_survives_json() -> None:
    doc = _doc()
    assert schema.validate(doc) == []
    assert schema.validate(json.loads(json.dumps(doc))) == []
    assert doc["schema_version"] == schema.SCHEMA_VERSION
    assert doc["versions"]["kmtools"] == kmtools.__version__
    assert doc["timings"] == {"features": 1.2346, "total": 2.0}
    assert all(key in doc for key in schema.REQUIRED)


def test_minor_versions_are_compatible() -> None:
    doc = _doc()
    doc["schema_version"] = "1.7"  # a newer minor version only adds fields
    assert schema.validate(doc) == []


def test_json_schema_states_the_same_envelope() -> None:
    js = schema.JSON_SCHEMA
    assert js["required"] == list(schema.REQUIRED)
    assert set(schema.REQUIRED) <= set(js["properties"])
    assert re.match(js["properties"]["schema_version"]["pattern"], schema.SCHEMA_VERSION)
    assert not re.match(js["properties"]["schema_version"]["pattern"], "2.0")
    assert re.match(js["properties"]["model"]["properties"]["sha256"]["pattern"], "ab" * 32)
    json.dumps(js)  # serialisable, as docs/schema.md prints it


def test_envelope_minimal_and_extra_fields() -> None:
    doc = schema.envelope("check", {})
    assert schema.validate(doc) == []
    assert doc["model"] is None and doc["data"] is None and doc["timings"] == {}
    assert _doc(note="x")["note"] == "x"  # extra top-level fields are allowed


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("results"), "missing field 'results'"),
        (lambda d: d.pop("command"), "missing field 'command'"),
        (lambda d: d.pop("versions"), "missing field 'versions'"),
        (lambda d: d.update(schema_version="0.9"), "schema_version '0.9' is not"),
        (lambda d: d.update(schema_version="2.0"), "this kmtools reads 1.x"),
        (lambda d: d.update(schema_version=None), "schema_version None is not supported"),
        (lambda d: d.update(command=3), "command must be a non-empty string"),
        (lambda d: d.update(command=" "), "command must be a non-empty string"),
        (lambda d: d.update(timings={"total": "1s"}), "timings must be an object of numbers"),
        (lambda d: d.update(seed=1.5), "seed must be an integer or null"),
        (lambda d: d.update(seed=True), "seed must be an integer or null"),
        (lambda d: d.update(device=0), "device must be a string or null"),
        (lambda d: d["model"].update(sha256="abc"), "model.sha256 must be 64 hex digits"),
        (lambda d: d.update(data={"sha256": "A" * 64}), "data.sha256 must be 64 hex digits"),
        (lambda d: d.update(compare_model=[]), "compare_model must be an object or null"),
        (lambda d: d.update(results=[1, 2]), "results must be an object"),
        (lambda d: d.update(timings=1.0), "timings must be an object of numbers"),
        (lambda d: d.update(versions={"kmtools": "0.1"}), "versions must name kmtools and torch"),
        (lambda d: d.update(model="m.pt"), "model must be an object or null"),
        (lambda d: d.update(data=[1]), "data must be an object or null"),
    ],
)
def test_validate_rejects_broken_documents(change: Any, problem: str) -> None:
    doc = _doc()
    change(doc)
    problems = schema.validate(doc)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("doc", [None, [], "evaluate", 1.0])
def test_validate_rejects_non_objects(doc: Any) -> None:
    assert schema.validate(doc) == ["a result document must be a JSON object"]


def test_validate_lists_every_problem() -> None:
    assert len(schema.validate({})) == len(schema.REQUIRED)


def test_strip_volatile_removes_only_timings() -> None:
    a, b = _doc(), _doc()
    b["timings"] = {"total": 99.0}
    assert a != b
    assert schema.strip_volatile(a) == schema.strip_volatile(b)
    assert set(schema.strip_volatile(a)) == set(a) - {"timings"}


def test_model_info_fingerprints_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.pt"
    f.write_bytes(b"abc")
    info = schema.model_info(f)
    assert info == {
        "path": str(f),
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    assert schema.model_info(None) is None


# ------------------------------------------------------------------ every command's real documents

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run the commands on the digits model; ``{name: document}`` for stdout and written files.

    Names: ``<command>`` (stdout of ``--format json``) and ``<command>:file`` (the JSON file).
    Commands that are not registered (yet) are left out; one that fails is an error.
    """
    tmp = tmp_path_factory.mktemp("schema")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and far faster on a busy machine
    try:
        return _run_commands(tmp)
    finally:
        torch.set_num_threads(threads)


def _run_commands(tmp: Path) -> dict[str, dict[str, Any]]:
    from typer.testing import CliRunner

    from kmtools_cli.main import app
    from tests.helpers import digits_model

    digits_model(tmp, epochs=1)
    model = tmp / "digits.safetensors"
    run = tmp / "run"
    runner = CliRunner()
    common = ["--data", "digits", "--device", "cpu", "--format", "json", "--quiet"]
    calls: list[tuple[str, list[str], Path | None]] = [
        ("inspect", ["inspect", str(model), "--data", "digits", "-n", "60", "--device", "cpu", "-f", "json"], None),
        ("centroids", ["centroids", str(model), *common, "-n", "120", "--out", str(tmp / "c.safetensors")], None),
        (
            "evaluate",
            ["evaluate", str(model), *common, "-n", "120", "--n-noise", "20", "--out", str(run)],
            run / "evaluate.json",
        ),
        (
            "tailor",
            ["tailor", str(model), *common, "-n", "120", "--epochs", "1", "--export", "", "--out", str(tmp / "t")],
            tmp / "t" / "tailor.json",
        ),
        (
            "attack fgsm",
            ["attack", "fgsm", str(model), *common, "-n", "10", "--eps", "0,0.1", "--out", str(run)],
            run / "attack-fgsm.json",
        ),
        (
            "attack onepixel",
            ["attack", "onepixel", str(model), *common, "-n", "3", "--popsize", "8", "--steps", "2", "--out", str(run)],
            run / "attack-onepixel.json",
        ),
        (
            "attack deepfool",
            # no --out: its figure grid is slow to draw on a loaded CPU; the stdout document suffices
            ["attack", "deepfool", str(model), *common, "-n", "4", "--max-iter", "3", "--candidates", "3"],
            None,
        ),
        (
            "explain",
            ["explain", "--neon", "--data", "wine", "-k", "3", "--out", str(tmp / "x"), "-f", "json", "-q"],
            tmp / "x" / "explain.json",
        ),
        (
            "geometry distance",
            ["geometry", "distance", str(model), *common, "-n", "4", "--out", str(run)],
            run / "geometry-distance.json",
        ),
        ("report", ["report", str(run), "--out", str(tmp / "r.html"), "-f", "json", "-q"], None),
        ("check", ["check", str(run), "--gate", "evaluate.accuracy>=0", "-f", "json"], None),
    ]
    from kmtools_cli.main import COMMANDS

    known = set(COMMANDS)  # every command (the root group imports them when they run)
    docs: dict[str, dict[str, Any]] = {}
    for name, args, written in calls:
        if args[0] not in known:
            continue
        res = runner.invoke(app, args)
        assert res.exit_code == 0, f"{name}: {res.output}"
        docs[name] = json.loads(res.stdout)
        if written is not None:
            docs[f"{name}:file"] = json.loads(written.read_text(encoding="utf-8"))
    docs["_model_sha256"] = {"sha256": schema.sha256_file(model)}
    return docs


def _named(documents: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, v) for k, v in documents.items() if not k.startswith("_")]


def test_every_command_writes_a_valid_envelope(documents: dict[str, dict[str, Any]]) -> None:
    names = [k for k, _ in _named(documents)]
    for must in ("inspect", "centroids", "evaluate", "evaluate:file", "tailor:file", "report", "check"):
        assert must in names, names
    for name, doc in _named(documents):
        assert schema.validate(doc) == [], name
        assert doc["command"] == name.split(":")[0], name
        assert doc["schema_version"] == schema.SCHEMA_VERSION
        assert doc["versions"]["kmtools"] == kmtools.__version__
        assert all(isinstance(v, float) for v in doc["timings"].values()), name


def test_documents_fingerprint_model_and_data(documents: dict[str, dict[str, Any]]) -> None:
    sha = documents["_model_sha256"]["sha256"]
    for name, doc in _named(documents):
        if name.startswith(("report", "check")):
            assert doc["model"] is None and doc["data"] is None  # about other documents
            continue
        if name.startswith("explain"):  # k-means on the wine data itself: no model
            assert doc["model"] is None and doc["data"]["name"] == "wine" and HEX64.match(doc["data"]["sha256"])
            continue
        assert doc["model"]["sha256"] == sha, name
        assert doc["device"] == "cpu", name
        if name.startswith("inspect"):
            continue  # inspect --data fingerprints its subset as well, checked below
        assert HEX64.match(doc["data"]["sha256"]), name
        assert doc["data"]["name"] == "digits", name
    assert HEX64.match(documents["inspect"]["data"]["sha256"])


def test_file_and_stdout_documents_agree(documents: dict[str, dict[str, Any]]) -> None:
    """What a command prints with --format json is what it writes, up to the timings."""
    pairs = [(k.split(":")[0], k) for k in documents if k.endswith(":file")]
    assert pairs
    for out, written in pairs:
        assert schema.strip_volatile(documents[out]) == schema.strip_volatile(documents[written]), out


def test_seeded_commands_record_their_seed(documents: dict[str, dict[str, Any]]) -> None:
    for name in ("evaluate", "tailor", "attack fgsm", "attack onepixel"):
        if name in documents:
            assert documents[name]["seed"] == 0, name


def test_report_reads_what_the_commands_wrote(documents: dict[str, dict[str, Any]]) -> None:
    """The report of the run directory names every command that wrote into it."""
    res = documents["report"]["results"]
    wrote = {k.split(":")[0].replace(" ", "-") for k in documents if k.endswith(":file")}
    in_run = wrote - {"tailor", "explain"}  # those wrote to folders of their own
    assert in_run <= set(res["commands"]), (in_run, res["commands"])
    assert "softmax" in res["summary"] and res["summary"]["softmax"]["accuracy"] is not None
    gate = documents["check"]["results"]["gates"][0]
    assert gate["passed"] and gate["value"] == documents["evaluate"]["results"]["accuracy"]
