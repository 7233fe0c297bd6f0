"""``kmtools``: wires the command groups; maps library errors to one-line messages."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException  # typer vendors click
from typer.core import TyperGroup

import kmtools
from kmtools.errors import KmtoolsError


class _Group(TyperGroup):
    """Root group: a KmtoolsError becomes ``error: <message>`` on stderr and its exit code."""

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


#: Command modules in ``cli/``, each with ``register(app)``; the order is the order in ``--help``.
COMMAND_MODULES = (
    "inspect_cmd", "centroids_cmd", "tailor_cmd", "evaluate_cmd", "export_cmd", "attack", "explain_cmd",
    "geometry_cmd", "report", "demo_cmd",
)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"kmtools_cli.{name}").register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
