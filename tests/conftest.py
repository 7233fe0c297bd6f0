"""Shared fixtures: tiny models and synthetic data; GPU tests skip without CUDA."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from typer.testing import CliRunner


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give on CI's 2 cores


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259): emit null for an uncomputable value")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def _wants_json(args: Any) -> bool:
    argv = [str(a) for a in (args or [])]
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return any(a in ("--format", "-f") and b == "json" for a, b in pairs) or "--format=json" in argv


@pytest.fixture(autouse=True)
def _strict_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every JSON document a CLI test prints (``--format json``) must be strict JSON: the
    check wraps ``CliRunner.invoke`` and parses stdout with :func:`strict_loads`."""
    original = CliRunner.invoke

    def invoke(self: CliRunner, cli: Any, args: Any = None, *rest: Any, **kw: Any) -> Any:
        res = original(self, cli, args, *rest, **kw)
        out = getattr(res, "stdout", "") or ""
        if _wants_json(args) and out.strip():
            try:
                strict_loads(out)
            except ValueError as exc:
                raise AssertionError(f"`kmtools {' '.join(map(str, args))}` printed non-strict JSON: {exc}") from exc
        return res

    monkeypatch.setattr(CliRunner, "invoke", invoke)
