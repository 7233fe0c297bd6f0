"""``kmtools attack onepixel|fgsm|deepfool``: attack rates and confidences, side by side.

Every command follows one flow: load the model (and ``--compare``), the first ``-n`` inputs
of ``--data``, take this rank's shard of them (``torchrun``), attack what is not yet in
the run folder's per-image records, append each finished batch of records to
``OUT/attack-<name>.jsonl`` at once, and build the summary, arrays and figures from the
records (so a run resumed with ``--resume`` reports exactly what one run would).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from kmtools.attacks import FGSMResult, OnePixelResult, deepfool, fgsm, fgsm_sweep, onepixel, parse_eps
from kmtools.attacks.deepfool import DeepFoolResult
from kmtools.attacks.onepixel import BOUNDS, FITNESSES, SUCCESS_RULES, class_confidences
from kmtools.attacks.onepixel import paired as paired_onepixel
from kmtools.attacks.pgd import PGDResult, paired_pgd, pgd, sanity_checks
from kmtools.data import DataInfo, to_tensors
from kmtools.errors import ConfigError, DataError, KmtoolsError, OutputExistsError
from kmtools.io import check_writable, write_json, write_text, write_with
from kmtools.models import KmModel
from kmtools.models.scoring import outlier_threshold
from kmtools.report import gates
from kmtools.report.curves import eps_label, robustness_curve
from kmtools.report.schema import envelope
from kmtools_cli._common import Timer, describe_model, device_of, fit_model
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import Output, fmt


class _AttackGroup(TyperGroup):
    """``kmtools attack torchattacks:NAME ...`` is ``kmtools attack external torchattacks:NAME ...``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0].lower().startswith("torchattacks:"):
            cmd = self.get_command(ctx, "external")
            return "external", cmd, args
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_AttackGroup,
    name="attack",
    help="Adversarial attacks: one-pixel (Su et al., batched differential evolution), FGSM and PGD against ε, "
    "DeepFool (minimal perturbation), torchattacks:NAME (any torchattacks attack). --compare attacks a "
    "second model on the same inputs.",
    no_args_is_help=True,
)

OutDirOpt = out_dir(
    "Folder for attack-<name>.jsonl (one record per input, appended as inputs finish), "
    "attack-<name>.json (result document), .npz (arrays), .run.json (settings, for --resume) "
    "and figures/attack-<name>_<model>.png."
)
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run in --out: inputs already in attack-<name>.jsonl are not "
        "attacked again (the options must be the same).",
    ),
]
AmpFlag = Annotated[
    bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (successes are confirmed in float32).")
]
OnePixelNOpt = Annotated[
    int | None,
    typer.Option("-n", "--num", help="Attack the first N inputs (default 100; the paper used 500 CIFAR-10 test images)."),
]
OnePixelBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Images evolved together (default 8192/popsize on CUDA, 2048/popsize on the CPU).",
        show_default=False,
    ),
]


# ------------------------------------------------------------------------------------ helpers
def _keys(primary: KmModel, other: KmModel | None) -> list[str]:
    """Result keys: the head kinds, or ``model``/``compare`` when both have the same kind."""
    if other is None:
        return [primary.head_kind]
    if primary.head_kind == other.head_kind:
        return ["model", "compare"]
    return [primary.head_kind, other.head_kind]


def _save_npz(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz'
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    write_with(path, writer, force)


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ------------------------------------------------------------------------- interruption
class Interrupted(KmtoolsError):
    """SIGINT/SIGTERM during an attack: the records so far are on disk; exit 128 + signal."""

    def __init__(self, signum: int, msg: str) -> None:
        super().__init__(msg)
        self.signum = signum
        self.exit_code = 128 + int(signum)


@contextmanager
def _signals() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in a list checked between batches (main thread only); a second
    signal stops at once (KeyboardInterrupt)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, _frame: Any) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _resume_hint() -> str:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "resume by re-running the same torchrun command with --resume"
    argv = list(sys.argv[1:])
    if "attack" in argv and Path(sys.argv[0]).name in ("kmtools", "__main__.py", "main.py"):
        if "--resume" not in argv:
            argv.append("--resume")
        return "resume with: " + shlex.join(["kmtools", *argv])
    return "resume with the same command plus --resume"


# ---------------------------------------------------------------------------- the journal
class _Journal:
    """Per-input records of one attack command, kept in memory and, with ``--out``, appended
    to ``attack-<name>.jsonl`` batch by batch (one file per rank under ``torchrun``:
    ``attack-<name>.rank<R>.jsonl``, merged at the end). ``--resume`` reads them all back;
    ``attack-<name>.run.json`` holds the settings, which a resumed run must match."""

    def __init__(
        self,
        out_dir: Path | None,
        name: str,
        settings: dict[str, Any],
        *,
        resume: bool,
        force: bool,
        rank: int,
        world: int,
        out: Output,
    ) -> None:
        self.dir, self.name, self.rank, self.world = out_dir, name, rank, world
        self.records: dict[str, dict[int, dict[str, Any]]] = {}
        self.new: dict[str, int] = {}
        self.reused = 0
        self.fh: IO[str] | None = None
        self.part: Path | None = None
        if out_dir is None:
            if resume:
                raise ConfigError("--resume needs --out DIR: the folder of the interrupted run")
            return
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--out {out_dir} is a file: give a folder")
        stem = f"attack-{name}"
        self.final = out_dir / f"{stem}.jsonl"
        self.run_file = out_dir / f"{stem}.run.json"
        self.part = self.final if world == 1 else out_dir / f"{stem}.rank{rank}.jsonl"
        parts = [self.final, *sorted(out_dir.glob(f"{stem}.rank*.jsonl"))]
        settings = json.loads(json.dumps(settings))
        if resume:
            if self.run_file.exists():
                old = json.loads(self.run_file.read_text(encoding="utf-8"))
                diff = [k for k in sorted(set(settings) | set(old)) if old.get(k) != settings.get(k)]
                if diff:
                    shown = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff[:4])
                    raise ConfigError(
                        f"--resume: {out_dir} holds a run with other settings ({shown}): "
                        "repeat the interrupted command's options, or use another --out"
                    )
            elif any(p.exists() for p in parts):
                raise ConfigError(
                    f"--resume: {self.run_file} is missing, so the records in {out_dir} cannot be "
                    "checked against these options: start over with --force"
                )
            for p in parts:
                self._read(p, out)
            self.reused = sum(len(v) for v in self.records.values())
        else:
            existing = [p for p in [*parts, self.run_file] if p.exists()]
            if existing and not force:
                raise OutputExistsError(
                    f"{existing[0]} already exists: pass --resume to continue that run or --force to start over"
                )
            if force:
                stale = [self.part]
                if rank == 0:
                    stale += [p for p in parts if p != self.part and not (world > 1 and _is_rank_file(p, world))]
                for p in stale:
                    p.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        if world > 1:  # every rank has checked the folder before rank 0 writes into it
            import torch.distributed as dist

            dist.barrier()
        if rank == 0:
            write_json(self.run_file, settings, force=True)
        self.fh = open(self.part, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if self.part.exists() and self.part.stat().st_size:
            with open(self.part, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a line cut by a hard kill: end it (the reader skips it)
                    self.fh.write("\n")

    def _read(self, path: Path, out: Output) -> None:
        if not path.exists():
            return
        bad = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key, idx = str(rec.pop("model")), int(rec["index"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            self.records.setdefault(key, {}).setdefault(idx, rec)
        if bad:
            out.warn(f"{path}: skipped {bad} unreadable line(s) (cut by a hard kill); they are redone")

    def done(self, key: str) -> set[int]:
        return set(self.records.get(key, {}))

    def add(self, key: str, records: Sequence[dict[str, Any]], attacked: int | None = None) -> None:
        """Keep ``records`` and append them to the rank's file (flushed and synced at once);
        ``attacked`` (default all) of them count as inputs attacked in this run."""
        store = self.records.setdefault(key, {})
        for r in records:
            store[int(r["index"])] = r
        self.new[key] = self.new.get(key, 0) + (len(records) if attacked is None else attacked)
        if self.fh is not None and records:
            self.fh.write(_jsonl([{"model": key, **r} for r in records]))
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def gather(self) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, int]]:
        """All ranks' records and counts of newly attacked inputs (every rank gets them)."""
        if self.world == 1:
            return self.records, dict(self.new)
        import torch.distributed as dist

        got: list[Any] = [None] * self.world
        dist.all_gather_object(got, (self.records, self.new))
        recs: dict[str, dict[int, dict[str, Any]]] = {}
        new: dict[str, int] = {}
        for r, nw in got:
            for k, v in r.items():
                recs.setdefault(k, {}).update(v)
            for k, c in nw.items():
                new[k] = new.get(k, 0) + c
        return recs, new

    def finish(self, ordered: dict[str, list[dict[str, Any]]]) -> None:
        """Rank 0: rewrite ``attack-<name>.jsonl`` in model and input order (one canonical
        file, whatever the ranks and interruptions) and remove the rank files."""
        self.close()
        if self.dir is None:
            return
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if self.rank != 0:
            return
        lines = [{"model": k, **r} for k, recs in ordered.items() for r in recs]
        write_text(self.final, _jsonl(lines), force=True)
        for p in self.dir.glob(f"attack-{self.name}.rank*.jsonl"):
            p.unlink(missing_ok=True)


def _is_rank_file(p: Path, world: int) -> bool:
    """``attack-x.rank<R>.jsonl`` with R < world: a live rank's own file (it removes it itself)."""
    tag = p.name.rsplit(".rank", 1)[-1].removesuffix(".jsonl")
    return tag.isdigit() and int(tag) < world


# --------------------------------------------------------------------------------- set-up
class _Setup:
    """What every attack command loads: models, keys, inputs, device, shard, timer, journal."""

    def __init__(self, out: Output, mo: ModelOptions, ds: DataOptions, device: str) -> None:
        from kmtools.tailor import init_distributed

        self.timer = Timer()
        self.out = out
        dev = device_of(device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        self.dev = dev
        self.started_dist = False
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            self.started_dist = init_distributed(dev)
        self.rank, self.world = _world()
        if self.rank:
            out.quiet = True
        model_path, compare = mo.path, mo.compare
        with self.timer("load"):
            self.model = mo.load()
            self.other = mo.load(compare) if compare is not None else None
        self.info = ds.load(self.model)
        if self.other is not None:
            fit_model(self.info, self.other)
        with self.timer("load"):
            self.x, self.y = to_tensors(self.info.dataset, workers=ds.workers)
        self.keys = _keys(self.model, self.other)
        self.models = [self.model] + ([self.other] if self.other is not None else [])
        self.paths = [model_path] + ([compare] if compare is not None else [])
        self.model_path, self.compare = model_path, compare
        self.shard = list(range(len(self.y)))[self.rank :: self.world]
        self.journal: _Journal | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes or self.model.classes)

    def settings(self, name: str, **opts: Any) -> dict[str, Any]:
        """What a resumed run must repeat: attack options, models, data, seed."""
        models = {}
        for key, path, m in zip(self.keys, self.paths, self.models, strict=True):
            d = describe_model(path, m) or {}
            models[key] = d.get("sha256") or str(path)
        return {
            "command": f"attack {name}",
            "models": models,
            "data": {"name": self.info.name, "split": self.info.split, "n": len(self.y)},
            **opts,
        }

    def open_journal(
        self, out_dir: Path | None, name: str, settings: dict[str, Any], resume: bool, force: bool
    ) -> _Journal:
        self.journal = _Journal(
            out_dir, name, settings, resume=resume, force=force, rank=self.rank, world=self.world, out=self.out
        )
        return self.journal

    def run(self, name: str, attack: Callable[[str, KmModel, list[int], Callable[[], None]], None]) -> None:
        """``attack(key, model, todo, check)`` for every model on this rank's inputs not yet
        recorded; ``check()`` (call it between batches) turns a SIGINT/SIGTERM into
        :class:`Interrupted` naming the partial results and how to resume."""
        j = self.journal
        assert j is not None
        with _signals() as got:

            def check() -> None:
                if not got:
                    return
                j.close()
                done = sum(len(v) for v in j.records.values())
                total = len(self.shard) * len(self.models)
                sig = "SIGTERM" if got[0] == signal.SIGTERM else "SIGINT"
                where = (
                    f"{done} of {total} records are in {j.part}; {_resume_hint()}"
                    if j.part is not None
                    else f"{done} of {total} inputs were done but not saved: use --out DIR to keep "
                    "partial results (and --resume to continue)"
                )
                raise Interrupted(got[0], f"interrupted by {sig} during attack {name}: {where}")

            for key, m in zip(self.keys, self.models, strict=True):
                seen = j.done(key)
                todo = [i for i in self.shard if i not in seen]
                if todo:
                    with self.timer(f"attack_{key}"):
                        attack(key, m, todo, check)
                check()

    def collect(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
        """Every model's records (all ranks) in input order, and the newly attacked counts."""
        assert self.journal is not None
        recs, new = self.journal.gather()
        ordered: dict[str, list[dict[str, Any]]] = {}
        for key in self.keys:
            got = recs.get(key, {})
            missing = [i for i in range(len(self.y)) if i not in got]
            if missing:
                raise DataError(f"attack records for {key} miss inputs {missing[:5]}: re-run with --resume")
            ordered[key] = [got[i] for i in range(len(self.y))]
        self.journal.finish(ordered)
        return ordered, new

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()

    def results(self, name: str, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        first = self.keys[0]
        res: dict[str, Any] = {"head_kind": self.model.head_kind, name: summaries[first]}
        if self.other is not None:
            for key in self.keys:
                res[key] = {name: summaries[key]}
            res["models"] = {key: str(p) for key, p in zip(self.keys, self.paths, strict=False)}
        return res

    def doc(self, command: str, results: dict[str, Any], seed: int | None, new: dict[str, int]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.other is not None and self.compare is not None:
            extra["compare_model"] = describe_model(self.compare, self.other)
        data_doc = {**self.info.to_dict(), "classes": self.info.classes}
        j = self.journal
        extra["run"] = {
            "world_size": self.world,
            "resumed": bool(j is not None and j.reused),
            "records_reused": j.reused if j is not None else 0,
            "attacked_this_run": {k: new.get(k, 0) for k in self.keys},
        }
        return envelope(
            command,
            results,
            model=describe_model(self.model_path, self.model),
            data=data_doc,
            seed=seed,
            device=self.dev,
            timings=self.timer.timings,
            **extra,
        )


def _out_paths(out_dir: Path | None, name: str, keys: Sequence[str], force: bool) -> dict[str, Path]:
    """The result files besides the records; ``force`` (or --resume) lets them be replaced."""
    if out_dir is None:
        return {}
    stem = f"attack-{name}"
    paths = {"json": out_dir / f"{stem}.json", "npz": out_dir / f"{stem}.npz"}
    for k in keys:
        paths[f"png_{k}"] = out_dir / "figures" / f"{stem}_{k}.png"
    for p in paths.values():
        check_writable(p, force)
    return paths


def _progress_with_check(
    prog: Callable[..., None], check: Callable[[], None], offset: int = 0
) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        prog(done + offset, total + offset)
        check()

    return update
def _image_grid(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    adv: torch.Tensor,
    conf_before: torch.Tensor,
    conf_adv: torch.Tensor,
    chosen: Sequence[int],
    classes: Sequence[str],
    title: str,
    out: Path,
    force: bool,
    diff: bool = False,
) -> Path:
    """Up to 8 inputs: the clean image (label, confidence) above the adversarial one
    (prediction, confidence, changed pixels circled), or with ``diff`` the magnified
    perturbation below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    def show(ax: Any, img: torch.Tensor) -> None:
        a = img.detach().float().cpu()
        if a.dim() == 3:
            a = a.permute(1, 2, 0)
            if a.shape[-1] == 1:
                a = a[..., 0]
        elif a.dim() == 1:
            a = a[None, :]
        ax.imshow(
            a.clamp(0, 1).numpy(),
            cmap="gray" if a.dim() == 2 else None,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])

    idx = list(chosen)[:8]
    rows = 3 if diff else 2
    fig = Figure(figsize=(1.5 * max(len(idx), 1) + 0.4, 1.6 * rows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    if not idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no successful attacks", ha="center", va="center")
        ax.axis("off")
    else:
        axes = fig.subplots(rows, len(idx), squeeze=False)
        for j, i in enumerate(idx):
            show(axes[0, j], x[i])
            axes[0, j].set_title(f"{name(int(labels[i]))} {float(conf_before[i]):.2f}", fontsize=7)
            show(axes[1, j], x_adv[i])
            if not diff and x[i].dim() == 3:
                changed = (x_adv[i] != x[i]).any(0).nonzero().tolist()
                rad = max(0.9, 0.06 * max(x[i].shape[-2:]))
                for r0, c0 in changed[:10]:
                    axes[1, j].add_patch(
                        Circle((c0, r0), rad, fill=False, edgecolor="#ff1f1f", linewidth=1.2)
                    )
            axes[1, j].set_title(f"→ {name(int(adv[i]))} {float(conf_adv[i]):.2f}", fontsize=7)
            if diff:
                r = (x_adv[i] - x[i]).float()
                m = float(r.abs().max())
                show(axes[2, j], 0.5 + 0.5 * r / m if m > 0 else r + 0.5)
                axes[2, j].set_title(f"r ×{0.5 / m:.0f}" if m > 0 else "r = 0", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")

    return write_with(out, writer, force)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for r in rows:
        t.add_row(*(fmt(v) if not isinstance(v, str) else v for v in r))
    return t


def _metric_table(title: str, models: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> Table:
    """Rows = metrics, one column per model (narrow enough for side-by-side comparisons)."""
    t = Table(title=title, title_justify="left")
    t.add_column("metric", style="bold")
    for m in models:
        t.add_column(m, justify="right")
    for label, vals in rows:
        t.add_row(label, *(v if isinstance(v, str) else fmt(v) for v in vals))
    return t


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _check_gates(gate: list[str] | None) -> None:
    for g in gate or []:
        gates.parse(g)  # a malformed gate fails before any work (exit 2)



def _table1(title: str, files: Sequence[str], d: dict[str, dict[str, Any]], keys: Sequence[str]) -> Table:
    """The paper's Table 1 columns, one row per model: prediction (accuracy, mean confidence)
    and one-pixel attack (rate, mean confidence of the fooled predictions), plus the share of
    the fooled predictions flagged as outliers."""
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(("model", "file", "accuracy", "conf", "attack rate", "attack conf", "outliers")):
        t.add_column(col, justify="left" if i < 2 else "right", style="bold" if i == 0 else None)
    for name, k in zip(files, keys, strict=True):
        s = d[k]
        t.add_row(
            k,
            name,
            _pct(s["accuracy"]),
            fmt(s["mean_confidence"]),
            _ci(s["rate"], s.get("rate_lo"), s.get("rate_hi")),
            fmt(s["mean_conf_fooled"]),
            _pct(s["outlier_share"]),
        )
    return t


# ---------------------------------------------------------------------------------- onepixel
@app.command("onepixel")
@grouped
def attack_onepixel(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",))],
    ds: Annotated[DataOptions, Use(add=("download", "workers"), options={"n": OnePixelNOpt})],
    pixels: Annotated[
        int, typer.Option("--pixels", help="Pixels changed per candidate (Su et al.: 1, 3, 5).")
    ] = 1,
    popsize: Annotated[int, typer.Option("--popsize", help="Candidates per image (Su et al.: 400).")] = 400,
    steps: Annotated[
        int, typer.Option("--steps", "--max-iter", help="Maximum DE generations (Su et al.: 100).")
    ] = 100,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Targeted attack: class index or name to reach (default untargeted).",
            show_default=False,
        ),
    ] = None,
    tol: Annotated[
        float | None,
        typer.Option(
            "--tol",
            help="Also stop an image when its population's fitness converged: std <= tol*|mean| "
            "(scipy's rule, 0.01 there). Default: off, as Su et al. and torchattacks.",
            show_default=False,
        ),
    ] = None,
    fitness: Annotated[
        str,
        typer.Option("--fitness", help="confidence (Su et al.: the true class's confidence), margin (its "
                     "log-confidence minus the best other class's) or both (an image is fooled when either "
                     "fools it; each fitness's rate and their McNemar test are reported)."),
    ] = "confidence",
    success: Annotated[
        str,
        typer.Option("--success", help="best (scipy/torchattacks: stop when the population's best member "
                     "fools; that member is reported) or any (stop at the first fooling child)."),
    ] = "best",
    bounds: Annotated[
        str,
        typer.Option("--bounds", help="Out-of-range children: resample (scipy's rule, uniform inside the "
                     "box) or clip (clamp to the border)."),
    ] = "resample",
    adaptive: Annotated[
        bool,
        typer.Option("--adaptive/--no-adaptive", help="Detector-aware: a candidate fools only when its "
                     "prediction is not flagged as an outlier (for heads that flag outliers, e.g. Gauss)."),
    ] = False,
    resume: ResumeOpt = False,
    chunk: Annotated[
        int | None,
        typer.Option(
            "--chunk",
            help="At most this many candidate images per forward pass (default batch-size × popsize).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="Scoring of candidate batches: auto (onnxruntime on the CPU when installed, else eager), eager, channels-last, compile or onnxruntime. Verdicts stay eager float32.")] = "auto",
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"batch_size": None}, options={"batch_size": OnePixelBatchOpt, "amp": AmpFlag})],
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """One-pixel attack (Su, Vargas & Sakurai 2019) by batched differential evolution.

    Each image gets a population of candidates (x, y, colour) per changed pixel; DE/rand/1
    with F = 0.5 evolves them for at most --steps generations, stopping an image as soon as
    one candidate fools the model. Fitness is the confidence of the true class: softmax
    probability for a softmax network, Gauss-confidence κ for a Gauss network. Images the
    model already gets wrong are skipped and counted. Reported per model (Table 1 of the
    Gauss-network paper): accuracy, mean confidence, attack rate = fooled / attacked, mean
    confidence of the fooled predictions and the share of them flagged as outliers.
    Under torchrun the inputs are split across ranks.

    Example: kmtools attack onepixel model.pt --arch resnet18 --data cifar10 -n 500
    --compare gauss.safetensors --out runs/ --gate "onepixel.rate<=0.2"
    """
    out = output.output()
    _check_gates(output.gate)
    for name, val, allowed in (("--fitness", fitness, FITNESSES), ("--success", success, SUCCESS_RULES),
                               ("--bounds", bounds, BOUNDS)):
        if val not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {val!r}")
    if ds.n is None:
        ds.n = 100
        out.info("attacking the first 100 inputs (-n to change)")
    s = _Setup(out, mo, ds, run.device)
    try:
        rules = dict(fitness=fitness, success=success, bounds=bounds, adaptive=adaptive)
        _onepixel(s, out, pixels, popsize, steps, target, tol, output.out, resume, output.force, output.gate,
                  run.batch_size, chunk, run.amp, run.seed, rules, backend=backend)  # fmt: skip
    finally:
        s.close()


def _onepixel(
    s: _Setup,
    out: Output,
    pixels: int,
    popsize: int,
    steps: int,
    target: str | None,
    tol: float | None,
    out_dir: Path | None,
    resume: bool,
    force: bool,
    gate: list[str] | None,
    batch_size: int | None,
    chunk: int | None,
    amp: bool,
    seed: int,
    rules: dict[str, Any],
    backend: str = "auto",
) -> None:
    if s.x.dim() != 4:
        raise ConfigError(
            f"the one-pixel attack needs images (C, H, W); {s.info.name} has inputs of shape "
            f"{tuple(s.x.shape[1:])}"
        )
    tgt = _parse_target(target, s.classes)
    settings = s.settings(
        "onepixel", pixels=pixels, popsize=popsize, steps=steps, target=tgt, tol=tol, seed=seed, **rules
    )
    j = s.open_journal(out_dir, "onepixel", settings, resume, force)
    paths = _out_paths(out_dir, "onepixel", s.keys, force or resume)
    if s.dev.type == "cuda":  # candidate images are built channels-last on CUDA
        for m in s.models:
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    run_settings: dict[str, dict[str, Any]] = {}

    def attack(key: str, m: KmModel, todo: list[int], check: Callable[[], None]) -> None:
        idx = torch.tensor(todo, dtype=torch.long)
        with s.out.progress(f"one-pixel {key}", len(todo)) as prog:
            r = onepixel(
                m,
                s.x[idx],
                s.y[idx],
                pixels=pixels,
                popsize=popsize,
                maxiter=steps,
                target=tgt,
                tol=tol,
                seed=seed,
                index=idx,
                batch_size=batch_size,
                chunk=chunk,
                amp=amp,
                device=s.dev,
                progress=_progress_with_check(prog, check),
                callback=lambda part: j.add(key, part.records(), attacked=part.attacked),
                **rules,
                backend=backend,
            )
        run_settings[key] = r.settings

    s.run("onepixel", attack)
    ordered, new = s.collect()
    res: dict[str, OnePixelResult] = {}
    for key, m in zip(s.keys, s.models, strict=True):
        res[key] = OnePixelResult.from_records(
            ordered[key],
            s.x,
            pixels=pixels,
            popsize=popsize,
            maxiter=steps,
            threshold=m.threshold,
            head_kind=m.head_kind,
            seed=seed,
            settings={"F": 0.5, "tol": tol, **run_settings.get(key, {}), **rules},
        )
    summaries = {k: r.to_dict() for k, r in res.items()}
    results = s.results("onepixel", summaries)
    if s.other is not None:
        a, b = s.keys
        results["paired"] = {"a": a, "b": b, **paired_onepixel(res[a], res[b])}
    doc = s.doc("attack onepixel", results, seed, new)
    if s.rank:
        return

    if paths:
        arrays: dict[str, np.ndarray] = {"x": s.x.numpy().astype(np.float32), "labels": s.y.numpy()}
        for key, r in res.items():
            arrays |= {
                f"{key}_x_adv": r.x_adv.cpu().numpy().astype(np.float32),
                f"{key}_pixel": r.pixel.numpy().astype(np.float32),
                f"{key}_conf_before": r.conf_before.numpy(),
                f"{key}_conf_adv": r.conf_adv.numpy(),
                f"{key}_success": r.success.numpy(),
                f"{key}_skipped": r.skipped.numpy(),
                f"{key}_pred_adv": r.adv_labels.numpy(),
                f"{key}_outlier": r.outlier.numpy(),
            }
        _save_npz(paths["npz"], arrays, True)
        for key, r in res.items():
            hit = (r.success & ~r.skipped).nonzero().flatten()
            ok = hit[torch.argsort(-r.conf_adv[hit], stable=True)].tolist()
            _image_grid(
                s.x,
                r.x_adv.cpu(),
                r.labels,
                r.adv_labels,
                r.conf_before,
                r.conf_adv,
                ok,
                s.classes,
                f"{key}: fooled one-pixel attacks, label conf(x) → prediction conf(x̃)",
                paths[f"png_{key}"],
                True,
            )
        write_json(paths["json"], doc, True)
        out.info(f"wrote {paths['json']}, {j.final.name}, {paths['npz'].name} and figures/")

    def human(con: Console) -> None:
        d = summaries
        wall = {k: s.timer.timings.get(f"attack_{k}", 0.0) for k in res}
        speed = [new.get(k, 0) / wall[k] if wall[k] > 0 and new.get(k) else None for k in res]
        rows: list[tuple[str, list[Any]]] = [
            ("head", [d[k]["head_kind"] for k in res]),
            ("accuracy (clean)", [_pct(d[k]["accuracy"]) for k in res]),
            ("mean confidence (clean)", [d[k]["mean_confidence"] for k in res]),
            ("attacked", [d[k]["attacked"] for k in res]),
            ("skipped (misclassified)", [d[k]["skipped"] for k in res]),
            ("fooled", [d[k]["fooled"] for k in res]),
            ("attack rate [95% CI] fooled/attacked", [_rate_ci(d[k]) for k in res]),
            ("effective rate (fooled, not flagged)", [_rate_ci(d[k]["effective"]) for k in res]),
            ("robust accuracy", [_rate_ci(d[k]["robust_accuracy"]) for k in res]),
            *[(f"  fitness {f}: attack rate", [_rate_ci((d[k].get("by_fitness") or {}).get(f)) for k in res])
              for f in ("confidence", "margin") if any(f in (d[k].get("by_fitness") or {}) for k in res)],
            *[("  confidence vs margin: McNemar p", [_p(d[k]["by_fitness"]["mcnemar"]["p_value"]) for k in res])
              for _ in [0] if all("mcnemar" in (d[k].get("by_fitness") or {}) for k in res)],
            ("mean confidence of fooled", [d[k]["mean_conf_fooled"] for k in res]),
            ("fooled flagged as outliers", [_pct(d[k]["outlier_share"]) for k in res]),
            ("outlier threshold", [d[k]["outlier_threshold"] for k in res]),
            ("mean generations", [d[k]["generations_mean"] for k in res]),
            ("images per second (this run)", speed),
        ]
        how = f"{pixels} pixel{'s' if pixels > 1 else ''}, population {popsize}, "
        how += f"≤{steps} generations, fitness {rules['fitness']}, success {rules['success']}, "
        how += f"bounds {rules['bounds']}{', detector-aware' if rules['adaptive'] else ''}, seed {seed}"
        if tgt is not None:
            how += f", target {s.classes[tgt] if tgt < len(s.classes) else tgt}"
        if j.reused:
            how += f"; {j.reused} records resumed"
        con.print(
            _metric_table(
                f"one-pixel attack on {len(s.y)} {s.info.name} {s.info.split} inputs ({how})", list(res), rows
            )
        )
        if s.other is not None:
            files = [p.stem for p in s.paths]
            con.print(_table1("Table 1 layout (Gauss-network paper)", files, d, list(res)))
            con.print(_paired_onepixel_table(results["paired"]))

    out.emit(doc, human)
    out.gate(gate, doc)


# -------------------------------------------------------------------------------------- fgsm
def _blocks(todo: Sequence[int], size: int) -> Iterator[torch.Tensor]:
    size = max(1, int(size))
    for s in range(0, len(todo), size):
        yield torch.tensor(todo[s : s + size], dtype=torch.long)


def _reindex(records: list[dict[str, Any]], idx: torch.Tensor) -> list[dict[str, Any]]:
    """Records of a block: their ``index`` becomes the input's position in the data."""
    return [{**r, "index": int(idx[int(r["index"])])} for r in records]


@app.command("fgsm")
@grouped
def attack_fgsm(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",))],
    ds: Annotated[DataOptions, Use(add=("download", "workers"))],
    eps: Annotated[
        str, typer.Option("--eps", help="Comma-separated ε in input units (pixel range [0, 1]).")
    ] = "0,0.01,0.02,0.05,0.1,0.2,0.3",
    clip: Annotated[
        bool, typer.Option("--clip/--no-clip", help="Clip perturbed inputs to [0, 1] (images).")
    ] = True,
    resume: ResumeOpt = False,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """FGSM: accuracy and mean confidence against ε (the Gauss-network paper's Figure 2).

    x̃ = clip(x + ε·sign(∇ₓ CE)) in pixel space, before the model's normalisation. The loss is
    the cross-entropy of the logits (softmax network) or of log κ (Gauss network). Reported
    per ε: accuracy, mean confidence of the predicted class, mean confidence of the wrong
    predictions, share of correct inputs fooled, share below the outlier threshold (of all
    inputs and of the fooled ones). FGSM is deterministic: --seed is only recorded.

    Example: kmtools attack fgsm model.pt --arch smallcnn --data mnist --eps 0,0.05,0.1,0.2
    --compare gauss.safetensors --gate "fgsm.min_accuracy>=0.3"
    """
    out = output.output()
    _check_gates(output.gate)
    eps_l = parse_eps(eps)
    s = _Setup(out, mo, ds, run.device)
    try:
        _fgsm(s, out, eps_l, clip, output.out, resume, output.force, output.gate, run.batch_size, run.seed)
    finally:
        s.close()


def _fgsm(
    s: _Setup,
    out: Output,
    eps_l: list[float],
    clip: bool,
    out_dir: Path | None,
    resume: bool,
    force: bool,
    gate: list[str] | None,
    batch_size: int,
    seed: int,
) -> None:
    j = s.open_journal(out_dir, "fgsm", s.settings("fgsm", eps=eps_l, clip=clip), resume, force)
    paths = _out_paths(out_dir, "fgsm", s.keys, force or resume)
    rng = (0.0, 1.0) if clip else None

    def attack(key: str, m: KmModel, todo: list[int], check: Callable[[], None]) -> None:
        with s.out.progress(f"FGSM {key}", len(todo)) as prog:
            done = 0
            for idx in _blocks(todo, batch_size):
                r = fgsm_sweep(m, s.x[idx], s.y[idx], eps_l, clip=rng, batch_size=batch_size, device=s.dev)
                j.add(key, _reindex(r.records(), idx))
                done += len(idx)
                prog(done, len(todo))
                check()

    s.run("fgsm", attack)
    ordered, new = s.collect()
    res = {
        key: FGSMResult.from_records(
            ordered[key],
            threshold=m.threshold,
            head_kind=m.head_kind,
            clip=rng,
            settings={"batch_size": batch_size, "device": str(s.dev)},
        )
        for key, m in zip(s.keys, s.models, strict=True)
    }
    summaries = {k: r.to_dict() for k, r in res.items()}
    results = s.results("fgsm", summaries)
    doc = s.doc("attack fgsm", results, seed, new)
    if s.rank:
        return

    if paths:
        arrays: dict[str, np.ndarray] = {"labels": s.y.numpy(), "eps": np.asarray(eps_l)}
        e_max = max(eps_l)
        i_max = eps_l.index(e_max)
        for key, r in res.items():
            arrays |= {
                f"{key}_preds": r.preds.numpy(),
                f"{key}_confs": r.confs.numpy(),
                f"{key}_clean_preds": r.clean_preds.numpy(),
            }
        _save_npz(paths["npz"], arrays, True)
        for key, m in zip(s.keys, s.models, strict=True):
            r = res[key]
            fooled = ((r.clean_preds == s.y) & (r.preds[i_max] != s.y)).nonzero().flatten().tolist()[:8]
            if fooled:
                xs = s.x[fooled].to(s.dev)
                xa = fgsm(m, xs, s.y[fooled].to(s.dev), e_max, clip=rng).detach().cpu()
            else:
                xs, xa = s.x[:0], s.x[:0]
            _image_grid(
                xs.cpu(),
                xa,
                s.y[fooled],
                r.preds[i_max][fooled],
                r.clean_confs[fooled],
                r.confs[i_max][fooled],
                list(range(len(fooled))),
                s.classes,
                f"{key}: FGSM ε = {e_max:g}, clean prediction conf → prediction conf",
                paths[f"png_{key}"],
                True,
                diff=True,
            )
        write_json(paths["json"], doc, True)
        out.info(f"wrote {paths['json']}, {j.final.name}, {paths['npz'].name} and figures/")

    def human(con: Console) -> None:
        # the paper's Figure 2: accuracy and the confidence of the wrong predictions against ε
        cols = ["ε"]
        for key in res:
            cols += [f"{key}\naccuracy", f"{key}\nconf wrong", f"{key}\noutliers"]
        rows = []
        for i, e in enumerate(eps_l):
            row: list[Any] = [f"{e:g}"]
            for r in res.values():
                row += [_pct(r.accuracy[i]), r.conf_wrong_mean[i], _pct(r.outlier_share_fooled[i])]
            rows.append(row)
        con.print(
            _table(
                f"FGSM on {len(s.y)} {s.info.name} {s.info.split} inputs"
                f"{' (clipped to [0, 1])' if clip else ''}; outliers: share of the fooled inputs "
                "flagged as outliers",
                cols,
                rows,
            )
        )

    out.emit(doc, human)
    out.gate(gate, doc)


# ---------------------------------------------------------------------------------- deepfool
@app.command("deepfool")
@grouped
def attack_deepfool(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",))],
    ds: Annotated[DataOptions, Use(add=("download", "workers"))],
    lp: Annotated[
        str,
        typer.Option(
            "--lp", help="Norm of the perturbation: l2 or linf. (--norm is the input normalisation preset.)"
        ),
    ] = "l2",
    overshoot: Annotated[
        float, typer.Option("--overshoot", help="The iterate is x + (1 + overshoot)·Σ r_i.")
    ] = 0.02,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Maximum DeepFool steps per input.")] = 50,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates", help="Classes considered per step (the prediction plus the top others); 0 = all."
        ),
    ] = 10,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clamp iterates to [0, 1] (images).")] = True,
    resume: ResumeOpt = False,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """DeepFool (Moosavi-Dezfooli et al. 2016): the minimal perturbation r(x) changing the prediction.

    Batched over inputs, L2 or L∞, in pixel space. Reports per model the norms of r(x)
    (mean, median, min, max) of the inputs whose label flipped, the mean number of steps,
    and the confidence of the new predictions with the share of them below the outlier
    threshold. For a Gauss network DeepFool works on log κ (the nearest-centroid logits).
    DeepFool is deterministic: --seed is only recorded.

    Example: kmtools attack deepfool model.pt --arch resnet18 --data cifar10 -n 500 --lp l2
    --compare gauss.safetensors
    """
    out = output.output()
    _check_gates(output.gate)
    lp_n = lp.lower().replace("∞", "inf")
    lp_n = "linf" if lp_n in ("inf", "l_inf", "linfinity") else lp_n
    if lp_n not in ("l2", "linf"):
        raise ConfigError(f"--lp must be l2 or linf, got {lp!r}")
    s = _Setup(out, mo, ds, run.device)
    try:
        _deepfool(s, out, lp_n, overshoot, max_iter, candidates, clip, output.out, resume, output.force, output.gate,
                  run.batch_size, run.seed)  # fmt: skip
    finally:
        s.close()


def _deepfool(
    s: _Setup,
    out: Output,
    lp: str,
    overshoot: float,
    max_iter: int,
    candidates: int,
    clip: bool,
    out_dir: Path | None,
    resume: bool,
    force: bool,
    gate: list[str] | None,
    batch_size: int,
    seed: int,
) -> None:
    settings = s.settings(
        "deepfool", lp=lp, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip
    )
    j = s.open_journal(out_dir, "deepfool", settings, resume, force)
    paths = _out_paths(out_dir, "deepfool", s.keys, force or resume)
    rng = (0.0, 1.0) if clip else None
    kw: dict[str, Any] = dict(
        candidates=candidates or None, overshoot=overshoot, max_iter=max_iter, norm=lp, clip=rng, device=s.dev
    )

    def attack(key: str, m: KmModel, todo: list[int], check: Callable[[], None]) -> None:
        with s.out.progress(f"DeepFool {key}", len(todo)) as prog:
            done = 0
            for idx in _blocks(todo, batch_size):
                r = deepfool(m, s.x[idx], **kw)
                j.add(key, _reindex(r.records(), idx))
                done += len(idx)
                prog(done, len(todo))
                check()

    s.run("deepfool", attack)
    ordered, new = s.collect()
    summaries: dict[str, dict[str, Any]] = {}
    for key, m in zip(s.keys, s.models, strict=True):
        recs = ordered[key]
        d = DeepFoolResult.summarize(recs, lp, overshoot, m.threshold)
        pred = torch.tensor([r["label"] for r in recs])
        d["accuracy"] = int((pred == s.y).sum()) / len(s.y) if len(s.y) else None
        summaries[key] = d
    results = s.results("deepfool", summaries)
    doc = s.doc("attack deepfool", results, seed, new)
    if s.rank:
        return

    if paths:
        arrays: dict[str, np.ndarray] = {"x": s.x.numpy().astype(np.float32), "labels": s.y.numpy()}
        for key, m in zip(s.keys, s.models, strict=True):
            recs = ordered[key]
            # x + r(x) for `kmtools geometry detect --adversarial` (recomputed: DeepFool is deterministic
            # and the per-input records hold only its summary)
            blocks = [deepfool(m, s.x[idx], **kw).x_adv.cpu() for idx in _blocks(list(range(len(s.y))), batch_size)]
            if blocks:
                arrays[f"{key}_x_adv"] = torch.cat(blocks).numpy().astype(np.float32)
            arrays |= {
                f"{key}_norms": np.asarray([r["norm"] for r in recs], dtype=np.float32),
                f"{key}_pred": np.asarray([r["label"] for r in recs]),
                f"{key}_pred_adv": np.asarray([r["adv_label"] for r in recs]),
                f"{key}_iterations": np.asarray([r["iterations"] for r in recs]),
                f"{key}_converged": np.asarray([r["converged"] for r in recs], dtype=bool),
                f"{key}_conf_adv": np.asarray([r["conf_adv"] for r in recs], dtype=np.float32),
            }
        _save_npz(paths["npz"], arrays, True)
        if s.x.dim() == 4:
            for key, m in zip(s.keys, s.models, strict=True):
                recs = ordered[key]
                flip = [i for i, r in enumerate(recs) if r["converged"] and r["iterations"] > 0]
                idx = sorted(flip, key=lambda i: (recs[i]["norm"], i))[:8]
                xs = s.x[idx]
                if idx:  # the shown examples are recomputed (DeepFool is deterministic)
                    r8 = deepfool(m, xs, **kw)
                    xa = r8.x_adv.cpu()
                    cb = class_confidences(m, xs.to(s.dev)).amax(1).cpu()
                    ca = r8.conf_adv.cpu()
                    lab, adv = r8.labels.cpu(), r8.adv_labels.cpu()
                else:
                    xa, cb, ca = xs, torch.zeros(0), torch.zeros(0)
                    lab = adv = torch.zeros(0, dtype=torch.long)
                _image_grid(
                    xs,
                    xa,
                    lab,
                    adv,
                    cb,
                    ca,
                    list(range(len(idx))),
                    s.classes,
                    f"{key}: DeepFool ({lp}), smallest r(x); prediction conf → new prediction conf",
                    paths[f"png_{key}"],
                    True,
                    diff=True,
                )
        write_json(paths["json"], doc, True)
        out.info(
            f"wrote {paths['json']}, {j.final.name}, {paths['npz'].name}"
            f"{' and figures/' if s.x.dim() == 4 else ''}"
        )

    def human(con: Console) -> None:
        d = summaries
        rows: list[tuple[str, list[Any]]] = [
            ("head", [s.models[s.keys.index(k)].head_kind for k in d]),
            ("inputs", [d[k]["images"] for k in d]),
            ("accuracy (clean)", [_pct(d[k]["accuracy"]) for k in d]),
            ("prediction flipped", [d[k]["flipped"] for k in d]),
            (f"‖r‖ mean ({lp})", [d[k]["norm_mean"] for k in d]),
            ("‖r‖ median", [d[k]["norm_median"] for k in d]),
            ("‖r‖ min", [d[k]["norm_min"] for k in d]),
            ("‖r‖ max", [d[k]["norm_max"] for k in d]),
            ("mean steps", [d[k]["iterations_mean"] for k in d]),
            ("mean confidence at x + r", [d[k]["mean_conf_adv"] for k in d]),
            ("flagged as outliers", [_pct(d[k]["outlier_share"]) for k in d]),
        ]
        con.print(
            _metric_table(
                f"DeepFool on {len(s.y)} {s.info.name} {s.info.split} inputs (overshoot {overshoot:g})",
                list(d),
                rows,
            )
        )

    out.emit(doc, human)
    out.gate(gate, doc)


# ------------------------------------------------------------------------------- intervals
def _ci(rate: Any, lo: Any, hi: Any) -> str:
    """``"43.0% [38.7, 47.4]"``: a rate with its 95% interval (``-`` when undefined)."""
    if rate is None:
        return "-"
    if lo is None or hi is None:
        return _pct(rate)
    return f"{100 * float(rate):.1f}% [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def _rate_ci(d: dict[str, Any] | None) -> str:
    """A ``wilson(...).to_dict()`` rate as ``"12.5% [9.0, 17.1] 25/200"``."""
    if not d or d.get("rate") is None:
        return "-"
    k = next((d[c] for c in ("fooled", "correct", "k") if c in d), None)
    return _ci(d["rate"], d.get("rate_lo"), d.get("rate_hi")) + (f" {k}/{d['n']}" if k is not None else "")


def _diff_ci(d: dict[str, Any]) -> str:
    """A paired difference ``{"diff", "diff_lo", "diff_hi"}`` in points: ``"+3.1 [-0.5, +6.8]"``."""
    if d.get("diff") is None:
        return "-"
    return f"{100 * d['diff']:+.1f} [{100 * d['diff_lo']:+.1f}, {100 * d['diff_hi']:+.1f}]"


def _p(v: Any) -> str:
    return "-" if v is None else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def _paired_onepixel_table(p: dict[str, Any]) -> Table:
    """``paired()`` of two one-pixel results as rows: robust accuracy over all shared images,
    attack and effective rates over the images both models attacked."""
    rows = []
    for key, label in (("robust", "robust accuracy"), ("fooled", "attack rate"), ("effective", "effective rate")):
        d = p[key]
        rows.append([label, _diff_ci(d), f"{d['only_a']} / {d['only_b']}", _p(d["p_value"]), d["n"]])
    return _table(
        f"paired: {p['b']} − {p['a']} on the same images ({p['attacked_by_both']} attacked by both); "
        "difference in points [Newcombe 95% CI], McNemar exact test on the discordant images",
        ["", "difference (pts)", f"only {p['a']} / only {p['b']}", "McNemar p", "images"],
        rows,
    )


def _parse_target(target: str | None, classes: Sequence[str]) -> int | None:
    """``--target``: a class name or index (None: untargeted)."""
    if target is None:
        return None
    if target in classes:
        return list(classes).index(target)
    try:
        return int(target)
    except ValueError as exc:
        raise ConfigError(
            f"--target {target!r} is neither a class index nor a class name ({', '.join(list(classes)[:12])})"
        ) from exc


def _paired_lists(rows: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Per-ε paired statistics as gate-friendly lists (``paired.diff_lo[-1]>0``)."""
    keys = ("eps", "diff", "diff_lo", "diff_hi", "p_value", "only_a", "only_b", "n")
    out: dict[str, Any] = {"a": a, "b": b, "what": "robust accuracy of b minus a (Newcombe 95% interval, "
                           "McNemar exact test on the discordant inputs)"}
    for k in keys:
        out[k] = [r[k] for r in rows]
    for k in ("diff", "diff_lo", "diff_hi", "p_value", "only_a", "only_b", "n"):
        out[f"effective_{k}"] = [r["effective"][k] for r in rows]
    return out


# ------------------------------------------------------------------------------------- pgd
PGDNOpt = Annotated[
    int | None,
    typer.Option("-n", "--num", help="Attack the first N inputs (default 500).", show_default=False),
]


@app.command("pgd")
@grouped
def attack_pgd(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",))],
    ds: Annotated[DataOptions, Use(add=("download", "workers"), options={"n": PGDNOpt})],
    eps: Annotated[
        str,
        typer.Option("--eps", help="Comma-separated radii in input units; fractions allowed: 0,2/255,4/255,8/255."),
    ] = "0,1/255,2/255,4/255,8/255",
    lp: Annotated[
        str, typer.Option("--lp", help="Threat model: linf or l2. (--norm is the input normalisation preset.)")
    ] = "linf",
    steps: Annotated[int, typer.Option("--steps", min=0, help="Gradient steps per restart.")] = 10,
    step_size: Annotated[
        str | None,
        typer.Option(
            "--step-size", help="Step α (a number or a fraction such as 1/255). Default 2.5·ε/steps per ε.",
            show_default=False,
        ),
    ] = None,
    restarts: Annotated[
        int, typer.Option("--restarts", min=1, help="Random starts in the ε-ball per input (the best is kept).")
    ] = 1,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Targeted attack: class index or name to reach (default untargeted).",
                     show_default=False),
    ] = None,
    loss: Annotated[
        str, typer.Option("--loss", help="margin (on the head's own scores: logits, log κ, ...) or ce.")
    ] = "margin",
    adaptive: Annotated[
        bool,
        typer.Option("--adaptive/--no-adaptive", help="Detector-aware objective: fool while staying above the "
                     "outlier threshold (for heads that flag outliers, e.g. Gauss)."),
    ] = False,
    sanity: Annotated[
        int,
        typer.Option("--sanity", min=0, help="Gradient-masking checks on the first N inputs (accuracy at a huge "
                     "ε must be ≈ 0; more steps and restarts must not raise accuracy). 0 = off."),
    ] = 100,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write the robustness curve (accuracy and effective success against ε, "
                     "95% Wilson bands, one line per model) to this PNG.", show_default=False),
    ] = None,
    resume: ResumeOpt = False,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """PGD (Madry et al. 2018): robust accuracy and attack success against ε, with 95% intervals.

    Batched projected gradient ascent on a margin of the model's own decision scores (logits
    for a softmax network, log κ for a Gauss network), ℓ∞ or ℓ₂, random starts, in pixel
    space [0, 1]. Per ε: robust accuracy, attack rate (fooled / clean-correct) and effective
    rate (fooled and not flagged as an outlier), each with its 95% Wilson interval. --adaptive
    attacks the detector too. --compare attacks a second model on the same inputs with the same
    random starts and adds, per ε, the paired difference of robust accuracy with McNemar's test.

    Example: kmtools attack pgd model.pt --compare gauss.safetensors --data cifar10
    --eps 0,2/255,4/255,8/255 --adaptive --plot curve.png --gate "gauss.pgd.accuracy_lo[-1]>=0.2"
    """
    out = output.output()
    _check_gates(output.gate)
    eps_l = parse_eps(eps)
    lp_n = lp.lower().replace("∞", "inf")
    lp_n = "linf" if lp_n in ("inf", "l_inf", "linfinity") else lp_n
    if lp_n not in ("l2", "linf"):
        raise ConfigError(f"--lp must be l2 or linf, got {lp!r}")
    if loss not in ("margin", "ce"):
        raise ConfigError(f"--loss must be margin or ce, got {loss!r}")
    alpha = parse_eps(step_size)[0] if step_size is not None else None
    if step_size is not None and not alpha:
        raise ConfigError("--step-size must be positive, e.g. --step-size 1/255")
    if plot is not None:
        check_writable(plot, output.force)
    if ds.n is None:
        ds.n = 500
        out.info("attacking the first 500 inputs (-n to change)")
    s = _Setup(out, mo, ds, run.device)
    try:
        opts = dict(norm=lp_n, steps=steps, step_size=alpha, restarts=restarts, loss=loss, adaptive=adaptive)
        _pgd(s, out, eps_l, opts, target, sanity, plot, output.out, resume, output.force, output.gate,
             run.batch_size, run.seed)
    finally:
        s.close()


def _pgd(
    s: _Setup,
    out: Output,
    eps_l: list[float],
    opts: dict[str, Any],
    target: str | None,
    sanity: int,
    plot: Path | None,
    out_dir: Path | None,
    resume: bool,
    force: bool,
    gate: list[str] | None,
    batch_size: int,
    seed: int,
) -> None:
    tgt = _parse_target(target, s.classes)
    settings = s.settings("pgd", eps=eps_l, target=tgt, batch_size=batch_size, seed=seed, **opts)
    j = s.open_journal(out_dir, "pgd", settings, resume, force)
    paths = _out_paths(out_dir, "pgd", [], force or resume)

    def attack(key: str, m: KmModel, todo: list[int], check: Callable[[], None]) -> None:
        with s.out.progress(f"PGD {key}", len(todo)) as prog:
            done = 0
            for idx in _blocks(todo, batch_size):
                # the random starts are keyed by (seed, first input of the block): a resumed run
                # attacks the remaining blocks as the interrupted one would have
                r = pgd(m, s.x[idx], s.y[idx], eps_l, target=tgt, seed=(seed * 1_000_003 + int(idx[0])) % 2**62,
                        keep_adv=False, device=s.dev, **opts)
                j.add(key, _reindex(r.records(), idx))
                done += len(idx)
                prog(done, len(todo))
                check()

    s.run("pgd", attack)
    ordered, new = s.collect()
    res: dict[str, PGDResult] = {}
    for key, m in zip(s.keys, s.models, strict=True):
        st = opts["step_size"]
        res[key] = PGDResult.from_records(
            ordered[key], eps=eps_l, norm=opts["norm"], steps=opts["steps"],
            step_size=[st if st is not None else 2.5 * e / max(opts["steps"], 1) for e in eps_l],
            restarts=opts["restarts"], loss=opts["loss"], adaptive=opts["adaptive"],
            threshold=outlier_threshold(m, m.num_classes), head_kind=m.head_kind, seed=seed,
        )
    if sanity and not s.rank:
        k = min(sanity, len(s.y))
        for key, m in zip(s.keys, s.models, strict=True):
            with s.timer(f"sanity_{key}"):
                sub = PGDResult.from_records(
                    ordered[key][:k], eps=eps_l, **{f: getattr(res[key], f) for f in (
                        "norm", "steps", "step_size", "restarts", "loss", "adaptive", "threshold", "head_kind",
                        "seed")})
                res[key].sanity = {"inputs": k, **sanity_checks(m, s.x[:k], s.y[:k], sub, target=tgt,
                                                                 batch_size=batch_size, device=s.dev)}
    summaries = {k: r.to_dict() for k, r in res.items()}
    results = s.results("pgd", summaries)
    if s.other is not None:
        a, b = s.keys
        results["paired"] = _paired_lists(paired_pgd(res[a], res[b]), a, b)
    doc = s.doc("attack pgd", results, seed, new)
    if s.rank:
        return

    if plot is not None:
        robustness_curve(summaries, plot, title=f"PGD ({opts['norm']}, {opts['steps']} steps × "
                         f"{opts['restarts']}) on {len(s.y)} {s.info.name} {s.info.split} inputs",
                         norm=opts["norm"], force=True)
        out.info(f"wrote {plot}")
    if paths:
        arrays: dict[str, np.ndarray] = {"labels": s.y.numpy(), "eps": np.asarray(eps_l)}
        for key, r in res.items():
            arrays |= {f"{key}_preds": r.preds.numpy(), f"{key}_confs": r.conf.numpy(),
                       f"{key}_clean_preds": r.clean_preds.numpy()}
        _save_npz(paths["npz"], arrays, True)
        write_json(paths["json"], doc, True)
        out.info(f"wrote {paths['json']}, {j.final.name} and {paths['npz'].name}")

    def human(con: Console) -> None:
        con.print(_pgd_table(summaries, results.get("paired"), opts, tgt, len(s.y), s.info, j.reused))
        for key, d in summaries.items():
            sc = d.get("sanity")
            if sc:
                con.print(_sanity_line(key, sc))

    out.emit(doc, human)
    out.gate(gate, doc)


def _pgd_table(summaries: dict[str, dict[str, Any]], paired: dict[str, Any] | None, opts: dict[str, Any],
               tgt: int | None, n: int, info: DataInfo, reused: int) -> Table:
    """One row per ε and model: robust accuracy, attack rate and effective rate with 95% Wilson
    intervals; with --compare the second model's rows add the paired difference of robust
    accuracy (points, Newcombe interval) and McNemar's p."""
    cols = ["ε", "model", "robust accuracy", "attack rate", "effective rate"]
    if paired:
        cols += [f"Δ accuracy vs {paired['a']}", "McNemar p"]
    rows = []
    first = next(iter(summaries.values()))
    for i, e in enumerate(first["eps"]):
        for j, (key, d) in enumerate(summaries.items()):
            row: list[Any] = [eps_label(e, opts["norm"]) if j == 0 else "", key,
                              _ci(d["accuracy"][i], d["accuracy_lo"][i], d["accuracy_hi"][i]),
                              _ci(d["rate"][i], d["rate_lo"][i], d["rate_hi"][i]),
                              _ci(d["effective_rate"][i], d["effective_rate_lo"][i], d["effective_rate_hi"][i])]
            if paired:
                row += (["", ""] if j == 0 else
                        [_diff_ci({k: paired[k][i] for k in ("diff", "diff_lo", "diff_hi")}),
                         _p(paired["p_value"][i])])
            rows.append(row)
    how = f"{opts['norm']}, {opts['steps']} steps, {opts['restarts']} restart(s), {opts['loss']} loss"
    how += ", detector-aware" if opts["adaptive"] else ""
    how += f", target {tgt}" if tgt is not None else ""
    how += f"; {reused} records resumed" if reused else ""
    att = ", ".join(f"{k} {d['n']}" for k, d in summaries.items())
    return _table(
        f"PGD on {n} {info.name} {info.split} inputs ({how}). Accuracy over all inputs; rates over the "
        f"clean-correct ones ({att}); [95% Wilson interval]; effective = fooled and not flagged as an outlier",
        cols,
        rows,
    )


def _sanity_line(key: str, sc: dict[str, Any]) -> str:
    ok = "passed" if sc.get("passed") else "FAILED (gradient masking?)"
    return (
        f"{key}: gradient-masking checks on {sc['inputs']} inputs {ok}: accuracy at ε = {sc['large_eps']:.3g} is "
        f"{_pct(sc['accuracy_at_large_eps'])} (≤ 5% expected); at ε = {sc['eps_max']:.3g} "
        f"{_pct(sc['accuracy_at_eps_max'])}, with {sc['stronger']['steps']} steps × {sc['stronger']['restarts']} "
        f"restarts {_pct(sc['stronger']['accuracy'])} (must not be higher)"
    )


# -------------------------------------------------------------------------------- external
@app.command("external")
@grouped
def attack_external(
    *,
    spec: Annotated[
        str, typer.Argument(help="torchattacks:NAME, e.g. torchattacks:PGD or torchattacks:CW.", show_default=False)
    ],
    mo: Annotated[ModelOptions, Use(add=("compare",))],
    ds: Annotated[DataOptions, Use(add=("download", "workers"), options={"n": PGDNOpt})],
    kw: Annotated[
        list[str] | None,
        typer.Option("--kw", help="Keyword argument of the attack, key=value (Python literal or a fraction "
                     "such as eps=8/255). Repeatable.", show_default=False),
    ] = None,
    resume: ResumeOpt = False,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Any torchattacks attack around MODEL: kmtools attack torchattacks:NAME MODEL [--kw key=value].

    The attack sees the model's decision scores (logits for a softmax network, log κ for a
    Gauss network) on inputs in [0, 1]. Reported per model: robust accuracy, attack rate
    (fooled / clean-correct) and effective rate (fooled and not flagged as an outlier), each
    with its 95% Wilson interval; --compare adds paired differences with McNemar's test.
    torchattacks is an optional extra, installed apart: pip install --no-deps torchattacks.

    Example: kmtools attack torchattacks:PGD model.pt --data cifar10 -n 200 --kw eps=8/255
    --kw alpha=2/255 --kw steps=10 --compare gauss.safetensors
    """
    from kmtools.attacks.external import ExternalResult, attack_class, parse_kw, split_name, torchattacks_attack
    from kmtools.attacks.external import paired as paired_external

    out = output.output()
    _check_gates(output.gate)
    name = split_name(spec)
    kwargs = parse_kw(kw)
    attack_class(name)  # a missing torchattacks or an unknown attack fails before any model is loaded
    if ds.n is None:
        ds.n = 500
        out.info("attacking the first 500 inputs (-n to change)")
    s = _Setup(out, mo, ds, run.device)
    try:
        settings = s.settings(f"torchattacks:{name}", kw={k: repr(v) for k, v in kwargs.items()},
                              batch_size=run.batch_size, seed=run.seed)
        tag = f"torchattacks-{name}"
        j = s.open_journal(output.out, tag, settings, resume, output.force)
        paths = _out_paths(output.out, tag, [], output.force or resume)

        def attack(key: str, m: KmModel, todo: list[int], check: Callable[[], None]) -> None:
            with s.out.progress(f"{name} {key}", len(todo)) as prog:
                done = 0
                for idx in _blocks(todo, run.batch_size):
                    torch.manual_seed(run.seed * 1_000_003 + int(idx[0]))  # torchattacks' random starts
                    r = torchattacks_attack(name, m, s.x[idx], s.y[idx], kw=kwargs, device=s.dev)
                    j.add(key, _reindex(r.records(), idx))
                    done += len(idx)
                    prog(done, len(todo))
                    check()

        s.run(tag, attack)
        ordered, new = s.collect()
        res = {
            key: ExternalResult.from_records(ordered[key], name=name, threshold=outlier_threshold(m, m.num_classes),
                                             head_kind=m.head_kind, kwargs=kwargs)
            for key, m in zip(s.keys, s.models, strict=True)
        }
        summaries = {k: r.to_dict() for k, r in res.items()}
        results = s.results("external", summaries)
        if s.other is not None:
            a, b = s.keys
            results["paired"] = {"a": a, "b": b, **paired_external(res[a], res[b])}
        doc = s.doc(f"attack torchattacks:{name}", results, run.seed, new)
        if s.rank:
            return
        if paths:
            write_json(paths["json"], doc, True)
            out.info(f"wrote {paths['json']} and {j.final.name}")

        def human(con: Console) -> None:
            d = summaries
            rows: list[tuple[str, list[Any]]] = [
                ("head", [d[k]["head_kind"] for k in d]),
                ("clean accuracy", [_rate_ci(d[k]["clean_accuracy"]) for k in d]),
                ("robust accuracy", [_rate_ci(d[k]["robust_accuracy"]) for k in d]),
                ("attack rate (fooled/attacked)", [_rate_ci(d[k]) for k in d]),
                ("effective rate (fooled, not flagged)", [_rate_ci(d[k]["effective"]) for k in d]),
                ("outlier threshold", [d[k]["outlier_threshold"] for k in d]),
            ]
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "defaults"
            con.print(_metric_table(f"torchattacks.{name}({args}) on {len(s.y)} {s.info.name} {s.info.split} "
                                    "inputs; [95% Wilson interval]", list(d), rows))
            if s.other is not None:
                con.print(_paired_onepixel_table(results["paired"]))

        out.emit(doc, human)
        out.gate(output.gate, doc)
    finally:
        s.close()


def register(root: typer.Typer) -> None:
    """Add the ``attack`` group to the root app: ``kmtools attack onepixel|fgsm|pgd|deepfool|external``."""
    root.add_typer(app, name="attack")
