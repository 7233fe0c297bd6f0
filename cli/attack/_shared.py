"""What every ``kmtools attack`` command shares: its option declarations, loading the models
and inputs into an :class:`~kmtools.runs.attacks.AttackRun`, and showing the result through
the result kind's view (:mod:`kmtools.report.views`)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer

from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, out_dir
from kmtools_cli._output import Output, print_tables

if TYPE_CHECKING:
    from kmtools.runs.attacks import Attacked, AttackRun, AttackRunResult

OutDirOpt = out_dir(
    "Folder for attack-<name>.jsonl (one record per input, appended as inputs finish), "
    "attack-<name>.json (result document), .npz (arrays), .run.json (settings, for --resume) "
    "and figures/attack-<name>_<model>.png."
)
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out: inputs already in attack-<name>.jsonl are not attacked again (the options must be the same).")]
NumOpt = Annotated[int | None, typer.Option("-n", "--num", help="Attack the first N inputs (default 500).", show_default=False)]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Targeted attack: class index or name to reach (default untargeted).", show_default=False)]
# the option groups as every attack takes them: --compare, --download/--workers, --out for the run folder
ModelsOpts = Annotated[ModelOptions, Use(add=("compare",))]
DataOpts = Annotated[DataOptions, Use(add=("download", "workers"))]
DataOpts500 = Annotated[DataOptions, Use(add=("download", "workers"), options={"n": NumOpt})]  # -n default 500
OutOpts = Annotated[OutputOptions, Use(options={"out": OutDirOpt})]


@dataclass
class Attack:
    """What every attack command takes besides its own options, declared once: MODEL (and
    --compare), --data, --resume, the run and --out (the run folder). A command takes it after
    its own options (``a: Attack``), so --resume ends the Options panel of its --help."""

    mo: ModelsOpts
    ds: DataOpts
    resume: ResumeOpt = False
    run: RunOptions = field(default_factory=RunOptions)
    output: OutOpts = field(default_factory=OutputOptions)

    PANEL: ClassVar[str | None] = None
    FLAT: ClassVar[dict[str, str]] = {}
    OPT_IN: ClassVar[tuple[str, ...]] = ()


@dataclass
class Attack500(Attack):
    """:class:`Attack` whose ``-n`` defaults to 500 inputs (PGD, torchattacks)."""

    ds: DataOpts500


def start(output: OutputOptions) -> Output:
    """The command's output; every ``--gate`` is parsed before any work (exit 2 if malformed)."""
    from kmtools.runs import check_gates

    check_gates(output.gate)
    return output.output()


def resume_hint() -> str:
    """How to continue an interrupted run: this command line plus ``--resume``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "resume by re-running the same torchrun command with --resume"
    argv = list(sys.argv[1:])
    if "attack" in argv and Path(sys.argv[0]).name in ("kmtools", "__main__.py", "main.py"):
        if "--resume" not in argv:
            argv.append("--resume")
        return "resume with: " + shlex.join(["kmtools", *argv])
    return "resume with the same command plus --resume"


@contextmanager
def attack_run(name: str, out: Output, a: Attack, command: str | None = None, n: int | None = None
               ) -> Iterator[tuple[AttackRun, Attacked]]:
    """The run (device, torchrun rank, ``--out``) with the model, the ``--compare`` model and
    the inputs loaded into it (``-n`` not given: the first ``n``, said on stderr); closed
    (records, process group) when the block ends."""
    from kmtools.data import to_tensors
    from kmtools.runs.attacks import Attacked, AttackRun
    from kmtools_cli._common import device_of, fit_model

    mo, ds, run, output = a.mo, a.ds, a.run, a.output
    if n is not None and ds.n is None:
        ds.n = n
        out.info(f"attacking the first {n} inputs (-n to change)")
    with AttackRun(name, out_dir=output.out, force=output.force, resume=a.resume, seed=run.seed,
                   device=device_of(run.device), command=command, progress=out.progress, info=out.info,
                   warn=out.warn, resume_hint=resume_hint()) as ar:
        if ar.rank:
            out.quiet = True
        paths: list[Path | str] = [p for p in (mo.path, mo.compare) if p is not None]
        with ar.timer("load"):
            models = [mo.load(Path(p)) for p in paths]
        info = ds.load(models[0])
        for m in models[1:]:
            fit_model(info, m)
        with ar.timer("load"):
            x, y = to_tensors(info.dataset, workers=ds.workers)
        yield ar, Attacked(models, x, y, info, paths)


def show(out: Output, res: AttackRunResult, output: OutputOptions) -> None:
    """Rank 0: the document (``--format json``) or its view's tables; then ``--gate``."""
    if res.rank:
        return
    from kmtools.report.views import view_for

    view = view_for(res.doc["command"])
    tables: Any = view.tables if view is not None else None
    out.emit(res.doc, None if tables is None else lambda con: print_tables(con, tables(res.doc, res.settings)))
    out.gate(output.gate, res.doc)
