"""``kmtools``: wires the command groups; maps library errors to one-line messages."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

import kmtools
from kmtools.errors import KmtoolsError


class _Group(TyperGroup):
    """Root group: a KmtoolsError becomes ``error: <message>`` on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KmtoolsError as exc:
            if os.environ.get("KMTOOLS_DEBUG") or "--debug" in sys.argv:
                traceback.print_exc()
            msg = " ".join(str(exc).split())
            click.echo(f"error: {msg}", err=True)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            raise SystemExit(130) from None
        except MemoryError:
            click.echo("error: out of memory: try a smaller --batch-size or -n", err=True)
            raise SystemExit(1) from None


app = typer.Typer(
    name="kmtools",
    cls=_Group,
    help="Post-hoc surgery of trained PyTorch classifiers: a softmax network is a k-means model "
    "over its own features (Theorem 1). Load a checkpoint, compute centroids, tailor it into a "
    "Gauss network, attack, explain and gate on the results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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


def _register() -> None:
    from kmtools_cli import centroids_cmd, inspect_cmd, tailor_cmd

    inspect_cmd.register(app)
    centroids_cmd.register(app)
    tailor_cmd.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
