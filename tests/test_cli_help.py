"""``--help`` (issue 17): placeholders shown as written, a light top-level help, and one-line
errors for missing paths."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kmtools_cli.main import COMMANDS, all_commands, app, escape_markdown

ROOT = Path(__file__).resolve().parents[1]
#: a word with a <placeholder> or a [PLACEHOLDER] in it, as written in help text
TOKEN = re.compile(r"[\w./:-]*(?:<\w+>|\[[A-Z_]+\])[\w./:<>-]*")


def _paths() -> list[tuple[list[str], Any]]:
    out: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        out.append((path, cmd))
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, [*path, name])

    for name, cmd in all_commands().items():
        walk(cmd, [name])
    return out


def _help(args: list[str]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, (args, res.output)
    return res.output


def _raw_texts(cmd: Any) -> list[str]:
    texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    return [t for t in texts if t]


def test_every_placeholder_in_help_text_is_shown_as_written() -> None:
    """Every ``<name>`` or ``[NAME]`` word in a command's help strings appears verbatim in its
    rendered ``--help`` (the markdown renderer drops ``<name>`` as HTML unless it is escaped)."""
    checked = 0
    for path, cmd in _paths():
        shown = _help(path)
        for text in _raw_texts(cmd):
            for token in TOKEN.findall(" ".join(text.replace("`", " ").split())):
                token = token.rstrip(".,;:)")
                assert token in shown, f"kmtools {' '.join(path)} --help: {token!r} is not shown as written"
                checked += 1
    assert checked >= 10  # the attack, report and explain placeholders at least


@pytest.mark.parametrize(("args", "want", "eaten"), [
    (["attack", "onepixel"], ["attack-<name>.jsonl", "figures/attack-<name>_<model>.png"], "attack-.jsonl"),
    (["attack", "fgsm"], ["attack-<name>.jsonl"], "attack-.jsonl"),
    (["report"], ["<name>_files/"], " _files/"),
    (["explain"], ["cluster_<k>.png"], "cluster_.png"),
    (["inspect"], ["torchvision:NAME", "timm:NAME", "path/to/file.py:Class", '{"num_classes": 10}'], "torchvision:."),
])
def test_documented_placeholders(args: list[str], want: list[str], eaten: str) -> None:
    shown = _help(args)
    for w in want:
        assert w in shown, (args, w)
    assert eaten not in shown


def test_escape_markdown_leaves_code_spans() -> None:
    assert escape_markdown("a <b> `c <d>` e<f>") == r"a \<b> `c <d>` e\<f>"
    assert escape_markdown("x < 1 and y<=2") == "x < 1 and y<=2"  # comparisons are not HTML


def test_top_level_lines_are_the_commands_own() -> None:
    """``kmtools --help`` lists the commands from a table in main.py (so it imports none of
    them); each line must be the first paragraph of the command's own help."""
    cmds = all_commands()
    assert list(cmds) == list(COMMANDS)
    for name, cmd in cmds.items():
        own = " ".join(inspect.cleandoc(cmd.short_help or cmd.help or "").split("\n\n")[0].split())
        assert COMMANDS[name][1] == own, f"main.COMMANDS[{name!r}] differs from the command's help"


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom kmtools_cli.main import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "COLUMNS": "120", "PATH": "/usr/bin:/bin"}, check=True)
    return set(res.stdout.split("\n")[-2].split())


@pytest.mark.parametrize("argv", [["--help"], [], ["--version"]])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    mods = _modules_after(argv)
    assert "kmtools_cli.main" in mods and "torch" not in mods, argv


def test_no_command_help_imports_torch() -> None:
    """``kmtools CMD [SUB] --help`` for every command and subcommand imports neither torch nor
    the torch-heavy library: command modules import it inside their bodies. One process runs
    them all in turn and names the first whose help imported torch."""
    paths = [p for p, _ in _paths()]
    assert len(paths) >= 20 and ["attack", "onepixel"] in paths and ["geometry", "path"] in paths
    code = ("import sys, json\nfrom kmtools_cli.main import app\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try:\n        app([*argv, '--help'])\n    except SystemExit:\n        pass\n"
            "    if 'torch' in sys.modules:\n        print('TORCH', ' '.join(argv))\n        break\n"
            "else:\n    print('LIGHT')\n")
    import json

    res = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "COLUMNS": "120", "PATH": "/usr/bin:/bin"}, check=True)
    last = res.stdout.strip().splitlines()[-1]
    assert last == "LIGHT", f"kmtools {last.removeprefix('TORCH ')} --help imports torch"


def test_a_command_still_imports_what_it_needs(tmp_path: Path) -> None:
    """The control of the test above: running a command (not its help) loads the library."""
    assert "torch" in _modules_after(["inspect", str(tmp_path / "no-such-model.pt")])


def test_unknown_command_is_suggested_without_importing() -> None:
    res = CliRunner().invoke(app, ["tailr"])
    assert res.exit_code == 2 and "Did you mean 'tailor'" in res.output


@pytest.mark.parametrize("cmd", [["report", "/no/such/dir"], ["report", "/no/such/dir", "-o", "r.html"],
                                 ["check", "/no/such/dir", "--gate", "accuracy>0"]])
def test_missing_path_is_a_one_line_error(cmd: list[str]) -> None:
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "/no/such/dir: no such file or directory" in lines[0] and "--out DIR" in lines[0]
    assert "Usage" not in res.output


def test_report_without_out_names_the_option(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.strip() == (
        "error: kmtools report needs --out FILE (.html or .md), e.g. --out report.html")


def test_names_stated_for_a_light_help_are_the_librarys() -> None:
    """Commands state a few library names in their help without importing the library."""
    from kmtools.explain import METHODS
    from kmtools.export import FORMATS
    from kmtools.runs import evaluate as run_evaluate
    from kmtools.runs import explain as run_explain
    from kmtools_cli import evaluate_cmd, explain_cmd, export_cmd

    assert export_cmd.FORMATS == FORMATS
    assert tuple(METHODS) == explain_cmd.METHODS
    assert evaluate_cmd.PROTOTYPE_HEADS == run_evaluate.PROTOTYPE_HEADS
    assert (evaluate_cmd.JSON_NAME, evaluate_cmd.NPZ_NAME) == ("evaluate.json", "evaluate.npz")
    assert (explain_cmd.JSON_NAME, explain_cmd.NPZ_NAME, explain_cmd.GRID_NAME) == (
        run_explain.JSON_NAME, run_explain.NPZ_NAME, run_explain.GRID_NAME)
