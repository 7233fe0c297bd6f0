"""One versioned result schema for every command's JSON output and result files.

An *envelope* wraps a command's ``results`` with provenance: schema version, command,
kmtools/torch versions, model and data fingerprints (sha256), seed, device and timings.
Timings are the only fields that differ between two identical runs (see docs/schema.md).
"""

from __future__ import annotations

import hashlib
import platform
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


def validate(doc: Any) -> list[str]:
    """Problems with ``doc`` as a kmtools result document (empty list when valid)."""
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        return ["a result document must be a JSON object"]
    for key in REQUIRED:
        if key not in doc:
            problems.append(f"missing field {key!r}")
    if doc.get("schema_version") not in (None, SCHEMA_VERSION) and "schema_version" in doc:
        problems.append(f"schema_version {doc.get('schema_version')!r} is not {SCHEMA_VERSION!r}")
    if "command" in doc and not isinstance(doc["command"], str):
        problems.append("command must be a string")
    if "results" in doc and not isinstance(doc["results"], Mapping):
        problems.append("results must be an object")
    if "timings" in doc and not isinstance(doc["timings"], Mapping):
        problems.append("timings must be an object")
    versions = doc.get("versions")
    if "versions" in doc and not (isinstance(versions, Mapping) and "kmtools" in versions and "torch" in versions):
        problems.append("versions must name kmtools and torch")
    for key in ("model", "data"):
        val = doc.get(key)
        if val is not None and not isinstance(val, Mapping):
            problems.append(f"{key} must be an object or null")
    return problems


def strip_volatile(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` without timings, for byte-for-byte comparison of two runs."""
    return {k: v for k, v in doc.items() if k != "timings"}
