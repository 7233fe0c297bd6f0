"""Every command's options (names, default, help, flags) against a committed snapshot.

The redesign (issue 15) moved the shared options into groups; the command lines must not
change. Regenerate the snapshot only when a change adds or alters an option on purpose:

    KMTOOLS_UPDATE_SNAPSHOT=1 pytest tests/test_cli_options.py
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
import typer
from typer.testing import CliRunner

from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped
from kmtools_cli.main import all_commands, app

SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_options.json"


def _default(value: Any) -> Any:
    if callable(value):
        return f"<callable {getattr(value, '__name__', '?')}>"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_default(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _param(p: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": type(p).__name__,
        "opts": list(p.opts),
        "secondary": list(getattr(p, "secondary_opts", [])),
        "default": _default(p.default),
        "required": bool(p.required),
        "help": getattr(p, "help", None),
        "envvar": p.envvar,
        "multiple": bool(getattr(p, "multiple", False)),
        "is_flag": bool(getattr(p, "is_flag", False)),
        "type": repr(p.type_descriptor.annotation).replace("typing.", ""),
        "min": getattr(p, "min", None),
        "max": getattr(p, "max", None),
        "show_default": getattr(p, "show_default", None),
        "hidden": bool(getattr(p, "hidden", False)),
    }
    return d


def snapshot() -> dict[str, Any]:
    """``{"attack onepixel": {"--data": {...}, ...}, ...}`` for every command (sorted by option)."""
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, c in sorted(sub.items()):
                walk(c, f"{path} {name}".strip())
            return
        # keyed by what the user types (the Python parameter name is not part of the command line)
        params = {(p.opts[0] if type(p).__name__.endswith("Option") else p.name): _param(p) for p in cmd.params}
        out[path] = {"help": (cmd.help or "").strip(), "params": dict(sorted(params.items()))}

    for name, cmd in all_commands().items():  # the root group imports its commands lazily
        walk(cmd, name)
    return out


def test_options_match_snapshot() -> None:
    now = snapshot()
    if os.environ.get("KMTOOLS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    want = json.loads(SNAPSHOT.read_text())
    assert sorted(now) == sorted(want), "commands added or removed"
    for cmd, spec in want.items():
        got = json.loads(json.dumps(now[cmd]))
        assert sorted(got["params"]) == sorted(spec["params"]), f"{cmd}: options added or removed"
        for name, p in spec["params"].items():
            assert got["params"][name] == p, f"{cmd} {name}: option changed"
        assert got["help"] == spec["help"], f"{cmd}: help text changed"


def test_debug_and_format_are_everywhere_the_same() -> None:
    """``--debug`` and ``--format`` mean one thing on every command that has them."""
    snap = snapshot()
    seen: dict[str, list[dict[str, Any]]] = {"--debug": [], "--format": []}
    for spec in snap.values():
        for p in spec["params"].values():
            for flag in seen:
                if flag in p["opts"]:
                    seen[flag].append({k: v for k, v in p.items() if k != "default"})
    for flag, specs in seen.items():
        assert specs, flag
        assert all(s == specs[0] for s in specs), f"{flag} differs between commands"


def test_group_options_reach_the_command_packed() -> None:
    """``@grouped`` expands a group into its options and hands the command the dataclass."""
    got: dict[str, Any] = {}
    app_ = typer.Typer()

    @app_.command()
    @grouped
    def probe(
        *,
        mo: ModelOptions,
        ds: Annotated[DataOptions, Use(add=("download",), skip=("split",))],
        k: Annotated[int, typer.Option("-k")] = 3,
        run: Annotated[RunOptions, Use(defaults={"batch_size": 7})],
        output: OutputOptions,
    ) -> None:
        got.update(mo=mo, ds=ds, k=k, run=run, output=output)

    res = CliRunner().invoke(app_, ["m.pt", "--arch", "mlp", "-d", "wine", "--download", "-k", "5",
                                    "--format", "json", "--gate", "a>1", "--gate", "b<2"])
    assert res.exit_code == 0, res.output
    assert got["mo"] == ModelOptions(path=Path("m.pt"), arch="mlp")
    assert got["ds"] == DataOptions(name="wine", download=True)
    assert got["k"] == 5 and got["run"] == RunOptions(batch_size=7)
    assert got["output"].format == "json" and got["output"].gate == ["a>1", "b<2"]
    assert CliRunner().invoke(app_, ["m.pt", "--split", "train"]).exit_code == 2  # skipped: not an option


@dataclass
class _Bundle:
    """A command family's own group: its option stays in the Options panel, its groups nest."""

    ds: Annotated[DataOptions, Use(defaults={"split": "train"})]
    resume: Annotated[bool, typer.Option("--resume")] = False
    run: RunOptions = field(default_factory=RunOptions)

    PANEL: ClassVar[str | None] = None
    FLAT: ClassVar[dict[str, str]] = {}
    OPT_IN: ClassVar[tuple[str, ...]] = ()


def test_a_bundle_of_groups_expands_and_packs() -> None:
    got: dict[str, Any] = {}
    app_ = typer.Typer(rich_markup_mode="markdown")

    @app_.command()
    @grouped
    def probe(*, k: Annotated[int, typer.Option("-k")] = 3, b: Annotated[_Bundle, Use(skip=("run",))]) -> None:
        got.update(k=k, b=b)

    res = CliRunner().invoke(app_, ["-d", "wine", "--resume", "-k", "5"])
    assert res.exit_code == 0, res.output
    assert got == {"k": 5, "b": _Bundle(ds=DataOptions(name="wine", split="train"), resume=True)}
    assert CliRunner().invoke(app_, ["--device", "cpu"]).exit_code == 2  # run skipped: not an option
    shown = CliRunner().invoke(app_, ["--help"], env={"COLUMNS": "120"}).output
    options_panel = shown.split("╭─ Options")[1].split("╰")[0]
    assert "--resume" in options_panel and "--data" not in options_panel and "╭─ Data" in shown


def test_grouped_refuses_a_name_used_twice() -> None:
    def clash(*, ds: DataOptions, data: str = "") -> None: ...

    with pytest.raises(TypeError, match="used twice"):
        grouped(clash)


def test_debug_flag_shows_the_traceback(monkeypatch: Any) -> None:
    """``--debug`` (read by its option callback, not from ``sys.argv``) turns on tracebacks."""
    import kmtools_cli.inspect_cmd as mod

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.delenv("KMTOOLS_DEBUG", raising=False)
    monkeypatch.setattr(mod, "describe_model", boom)
    model = Path(__file__).parent / "does-not-matter.safetensors"
    monkeypatch.setattr("kmtools_cli._options.ModelOptions.load", lambda self, path=None: _Tiny())
    plain = CliRunner().invoke(app, ["inspect", str(model)])
    debug = CliRunner().invoke(app, ["inspect", str(model), "--debug"])
    assert plain.exit_code == debug.exit_code == 1
    assert "internal error (RuntimeError: boom)" in plain.output and "Traceback" not in plain.output
    assert "Traceback" in debug.output


class _Tiny:
    """The least a model needs for ``inspect`` to reach ``describe_model``."""

    num_classes = 2
    classes = ("a", "b")
    head_kind = "softmax"
    threshold = 0.5

    def meta(self) -> dict[str, Any]:
        return {k: None for k in ("arch", "head_kind", "head_path", "feature_dim", "input_shape", "mean", "std")}

    def parameters(self) -> list[Any]:
        return []
