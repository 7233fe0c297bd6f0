"""``kmtools``: wires the command groups (imported when they run, so ``--help`` stays light);
maps library errors to one-line messages."""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException  # typer vendors click
from typer.core import TyperCommand, TyperGroup

import kmtools
from kmtools.errors import KmtoolsError

#: Every command: its module in ``cli/`` (with ``register(app)``) and its line in ``kmtools
#: --help``, so that the top-level help lists the commands without importing them (and torch).
#: The order is the order in ``--help``; tests/test_cli_help.py checks the lines against the
#: commands' own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect_cmd", "Show a checkpoint's architecture, feature dim, classes, head, normalisation and size."),
    "centroids": ("centroids_cmd", "Compute centroids in the penultimate feature space and write them with a summary."),
    "tailor": ("tailor_cmd", "Fine-tune a trained softmax network into a Gauss network (Algorithm 1, TailorNetwork)."),
    "evaluate": ("evaluate_cmd", "Accuracy, mean confidence, outliers, OOD detection and the Theorem 2 margin of MODEL."),
    "export": ("export_cmd", "Export a model as self-contained files that run without kmtools."),
    "explain": ("explain_cmd", "Explain cluster assignments with NEON: which input features put each input in its cluster."),
    "report": ("report", "Write one report of the given runs: the softmax-vs-Gauss table in the layout of the paper's "
               "Table 1, outlier thresholds, OOD detection, attacks, training curves and figures."),
    "check": ("report", "Check --gate conditions on existing results; exit 3 when any fails."),
    "demo": ("demo_cmd", "Run the whole pipeline on bundled digits on the CPU (< 1 minute) and write a report."),
    "attack": ("attack", "Adversarial attacks: one-pixel (Su et al., batched differential evolution), FGSM and PGD "
               "against ε, DeepFool (minimal perturbation), torchattacks:NAME (any torchattacks attack). "
               "--compare attacks a second model on the same inputs."),
    "geometry": ("geometry_cmd", "Decision-boundary geometry (Fawzi et al.): distance r(x) to the boundary with "
                 "Theorem 2 beside it, principal curvatures (Eq. 1), curvature-sign detection of adversarial inputs "
                 "with label recovery (Algorithm 2), paths inside a class region (Algorithm 1)."),
}

def load_module_commands(module: str) -> dict[str, Any]:
    """Import ``kmtools_cli.<module>`` and build its click commands (``register`` on a scratch
    app with the root's settings), with help that shows ``<placeholders>`` as written."""
    import importlib

    scratch = typer.Typer(rich_markup_mode="markdown", add_completion=False, pretty_exceptions_enable=False)
    importlib.import_module(f"kmtools_cli.{module}").register(scratch)
    group = typer.main.get_group(scratch)
    for cmd in group.commands.values():
        _show_placeholders(cmd)
    return dict(group.commands)


_PLACEHOLDER = re.compile(r"<(?=[A-Za-z_/])")


def escape_markdown(text: str) -> str:
    """``<name>`` would be dropped as inline HTML by the markdown help renderer: escape the
    ``<`` outside code spans (inside backticks it is shown as written)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else _PLACEHOLDER.sub(r"\\<", p) for i, p in enumerate(parts))


def _show_placeholders(cmd: Any) -> None:
    """Render ``cmd``'s help (and its subcommands') with ``<placeholders>`` escaped. Only the
    rendering sees the escaped text; the command's own help strings stay as written."""
    original = cmd.format_help

    def format_help(ctx: Any, formatter: Any) -> None:
        saved: list[tuple[Any, str, Any]] = []
        for obj in _help_objects(cmd):
            for attr in ("help", "short_help"):
                val = getattr(obj, attr, None)
                if isinstance(val, str):
                    saved.append((obj, attr, val))
                    setattr(obj, attr, escape_markdown(val))
        try:
            original(ctx, formatter)
        finally:
            for obj, attr, val in saved:
                setattr(obj, attr, val)

    cmd.format_help = format_help
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _show_placeholders(sub)


def _help_objects(cmd: Any) -> list[Any]:
    subs = list((getattr(cmd, "commands", None) or {}).values())
    return [cmd, *cmd.params, *subs]


class _Group(TyperGroup):
    """Root group: commands are imported when they run (``--help`` lists them from
    :data:`COMMANDS`); a KmtoolsError becomes ``error: <message>`` on stderr and its exit code."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing and cmd_name not in self.commands:  # `kmtools --help`: the line only
            return _Stub(name=cmd_name, help=COMMANDS[cmd_name][1])
        if cmd_name not in self.commands:
            self.commands.update(load_module_commands(COMMANDS[cmd_name][0]))
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except ClickException as exc:  # unknown command: suggest from the table (nothing imported)
            from difflib import get_close_matches

            close = get_close_matches(args[0], list(COMMANDS)) if args else []
            if close and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(repr(c) for c in close)}?"
            raise

    def invoke(self, ctx: Any) -> Any:  # typer.Context; typer vendors its own click
        try:
            return super().invoke(ctx)
        except KmtoolsError as exc:
            if _debug(ctx):
                traceback.print_exc()
            msg = " ".join(str(exc).split())
            typer.echo(f"error: {msg}", err=True)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise SystemExit(130) from None
        except MemoryError:
            typer.echo("error: out of memory: try a smaller --batch-size or -n", err=True)
            raise SystemExit(1) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except BrokenPipeError:  # `kmtools ... | head`: the reader left; not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(0) from None
        except Exception as exc:  # a bug in kmtools, not the user's mistake: a failed run, exit 1
            from kmtools.device import is_oom  # torch: imported only on this path

            if is_oom(exc):
                typer.echo("error: the device ran out of memory: pass a smaller --batch-size", err=True)
                raise SystemExit(1) from None
            if _debug(ctx):
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            typer.echo(f"error: internal error ({type(exc).__name__}: {first}); rerun with --debug "
                       "for the traceback and report it", err=True)
            raise SystemExit(1) from None


class _Stub(TyperCommand):
    """A command's line in ``kmtools --help`` (its module is not imported to show it)."""


def _debug(ctx: Any) -> bool:
    """Tracebacks on: ``--debug`` (its callback in ``cli._options`` marks the context) or ``KMTOOLS_DEBUG``."""
    return bool(os.environ.get("KMTOOLS_DEBUG")) or bool(ctx.meta.get("kmtools.debug"))


app = typer.Typer(
    name="kmtools",
    cls=_Group,
    help="Post-hoc surgery of trained PyTorch classifiers: a softmax network is a k-means model "
    "over its own features (Theorem 1). Load a checkpoint, compute centroids, tailor it into a "
    "Gauss network, attack, explain and gate on the results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kmtools {kmtools.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """kmtools: Gauss networks, attacks, NEON explanations and boundary geometry for your checkpoint."""


def all_commands() -> dict[str, Any]:
    """Every command's click object (imports every command module: for tests and tools)."""
    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in COMMANDS}  # type: ignore[attr-defined]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
