"""The result schema: envelope() output validates; broken documents are rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
        (lambda d: d.update(command=3), "command must be a string"),
        (lambda d: d.update(results=[1, 2]), "results must be an object"),
        (lambda d: d.update(timings=1.0), "timings must be an object"),
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
