"""One versioned result schema for every command's JSON output and result files.

An *envelope* wraps a command's ``results`` with provenance: schema version, command,
kmtools/torch versions, model and data fingerprints (sha256), seed, device and timings.
Timings are the only fields that differ between two identical runs (see docs/schema.md).
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import kmtools

SCHEMA_VERSION = "1.0"
REQUIRED = ("schema_version", "command", "versions", "seed", "device", "timings", "results")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_info(path: str | Path | None, model: Any = None) -> dict[str, Any] | None:
    """Fingerprint of a model file (sha256) plus what the loaded model says about itself."""
    if path is None and model is None:
        return None
    info: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        info["path"] = str(p)
        if p.is_file():
            info["sha256"] = sha256_file(p)
    if model is not None:
        info["arch"] = getattr(model, "arch", None)
        info["head_kind"] = getattr(model, "head_kind", None)
        info["num_classes"] = getattr(model, "num_classes", None)
    return info


def envelope(
    command: str,
    results: Mapping[str, Any],
    *,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    timings: Mapping[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the schema document for ``command`` around ``results``."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "versions": {
            "kmtools": kmtools.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": dict(model) if model is not None else None,
        "data": dict(data) if data is not None else None,
        "seed": seed,
        "device": str(device) if device is not None else None,
        "timings": {k: round(float(v), 4) for k, v in (timings or {}).items()},
        "results": dict(results),
    }
    doc.update(extra)
    return doc


def _compatible(version: Any) -> bool:
    """Same major version: a reader of 1.0 reads 1.x (minor versions only add fields)."""
    if not isinstance(version, str):
        return False
    major, _, minor = version.partition(".")
    return major == SCHEMA_VERSION.split(".")[0] and minor.isdigit()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(doc: Any) -> list[str]:
    """Problems with ``doc`` as a kmtools result document (empty list when valid).

    Checks what :data:`JSON_SCHEMA` says: the required fields and their types, a compatible
    ``schema_version`` (same major version), sha256 fingerprints of 64 hex digits in ``model``,
    ``data`` and ``compare_model``. ``results`` is free-form per command (docs/schema.md).
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        return ["a result document must be a JSON object"]
    for key in REQUIRED:
        if key not in doc:
            problems.append(f"missing field {key!r}")
    if "schema_version" in doc and not _compatible(doc["schema_version"]):
        problems.append(
            f"schema_version {doc['schema_version']!r} is not supported (this kmtools reads "
            f"{SCHEMA_VERSION.split('.')[0]}.x)"
        )
    if "command" in doc and not (isinstance(doc["command"], str) and doc["command"].strip()):
        problems.append("command must be a non-empty string")
    if "results" in doc and not isinstance(doc["results"], Mapping):
        problems.append("results must be an object")
    timings = doc.get("timings")
    if "timings" in doc and not (isinstance(timings, Mapping) and all(_is_number(v) for v in timings.values())):
        problems.append("timings must be an object of numbers (seconds)")
    versions = doc.get("versions")
    if "versions" in doc and not (
        isinstance(versions, Mapping) and isinstance(versions.get("kmtools"), str) and "torch" in versions
    ):
        problems.append("versions must name kmtools and torch")
    seed = doc.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        problems.append("seed must be an integer or null")
    if doc.get("device") is not None and not isinstance(doc["device"], str):
        problems.append("device must be a string or null")
    for key in ("model", "data", "compare_model"):
        val = doc.get(key)
        if val is None:
            continue
        if not isinstance(val, Mapping):
            problems.append(f"{key} must be an object or null")
        elif "sha256" in val and not (isinstance(val["sha256"], str) and _HEX64.match(val["sha256"])):
            problems.append(f"{key}.sha256 must be 64 hex digits")
    return problems


_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_FINGERPRINT = {
    "type": ["object", "null"],
    "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
}
#: The envelope as a JSON Schema (draft 2020-12), for tools outside kmtools; :func:`validate`
#: checks the same constraints without needing a JSON Schema library.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "kmtools-result-1",
    "title": "kmtools result document",
    "type": "object",
    "required": list(REQUIRED),
    "properties": {
        "schema_version": {"type": "string", "pattern": "^1\\.[0-9]+$"},
        "command": {"type": "string", "minLength": 1},
        "versions": {
            "type": "object",
            "required": ["kmtools", "torch"],
            "properties": {"kmtools": {"type": "string"}, "torch": {"type": "string"}, "python": {"type": "string"}},
        },
        "model": _FINGERPRINT,
        "compare_model": _FINGERPRINT,
        "data": _FINGERPRINT,
        "seed": {"type": ["integer", "null"]},
        "device": {"type": ["string", "null"]},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "results": {"type": "object"},
    },
    "additionalProperties": True,
}


def strip_volatile(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` without timings and wall-clock ``seconds``, for byte-for-byte comparison of two runs."""
    return _drop_seconds({k: v for k, v in doc.items() if k != "timings"})


def _drop_seconds(obj: Any) -> Any:
    """Remove wall-clock ``seconds`` fields (e.g. tailor's per-epoch history) at any depth."""
    if isinstance(obj, Mapping):
        return {k: _drop_seconds(v) for k, v in obj.items() if k not in ("seconds", "train_seconds", "eval_seconds")}
    if isinstance(obj, list):
        return [_drop_seconds(v) for v in obj]
    return obj
