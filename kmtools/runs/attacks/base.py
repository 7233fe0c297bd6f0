"""The engine every attack run shares (``kmtools attack onepixel|fgsm|deepfool|pgd|torchattacks:NAME``).

One flow: the models (one, or two with ``--compare``) and the first ``-n`` inputs
(:class:`Attacked`); this rank's shard of them (``torchrun``); attack what is not yet in the run
folder's per-input records (:class:`~kmtools.runs.Journal`, ``OUT/attack-<name>.jsonl``, appended
batch by batch); SIGINT/SIGTERM between batches become :class:`~kmtools.runs.Interrupted` naming
the partial records; the summary, arrays and figures are then built from *all* records, so a run
resumed with ``--resume`` reports exactly what one run would (:class:`AttackRun`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from kmtools.data import DataInfo
from kmtools.errors import ConfigError, DataError
from kmtools.io import check_writable, write_json
from kmtools.models import KmModel
from kmtools.report.layout import compare_results, model_keys
from kmtools.report.schema import model_info
from kmtools.runs.context import ProgressFactory, RunContext, Timer, no_progress, save_npz
from kmtools.runs.journal import Journal
from kmtools.runs.signals import catch_signals

RESUME_HINT = "resume with the same command plus --resume"
Records = list[dict[str, Any]]
Step = Callable[[int, int], None]
"""``step(done, total)``: progress of one model's inputs; checks for SIGINT/SIGTERM."""


def _quiet(_msg: str) -> None:
    return None


@dataclass
class Attacked:
    """What a run attacks: the model (and the ``--compare`` model) with their files, and the
    inputs ``x`` (pixel space, [0, 1]) with labels ``y`` of the dataset ``info``."""

    models: list[KmModel]
    x: torch.Tensor
    y: torch.Tensor
    info: DataInfo
    paths: list[Path | str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """Result keys: the head kinds, or ``model``/``compare`` when both are of one kind."""
        return model_keys([m.head_kind for m in self.models])

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes or self.models[0].classes)

    def pairs(self) -> Iterator[tuple[str, KmModel]]:
        return zip(self.keys, self.models, strict=True)


@dataclass
class AttackRunResult:
    """One attack run: ``doc`` is the JSON document (``to_dict()``, written to
    ``attack-<name>.json``); ``per_model`` the attack's result per key; ``settings`` what a
    resumed run must repeat (``attack-<name>.run.json``); ``rank`` > 0 under torchrun on the
    ranks that write and show nothing."""

    doc: dict[str, Any]
    per_model: dict[str, Any]
    settings: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parse_lp(text: str) -> str:
    """``--lp``: ``l2`` or ``linf`` (``inf``, ``∞``, ``l_inf`` accepted)."""
    lp = text.lower().replace("∞", "inf")
    lp = "linf" if lp in ("inf", "l_inf", "linfinity") else lp
    if lp not in ("l2", "linf"):
        raise ConfigError(f"--lp must be l2 or linf, got {text!r}")
    return lp


def parse_target(target: str | int | None, classes: Sequence[str]) -> int | None:
    """``--target``: a class name or index (None: untargeted)."""
    if target is None or isinstance(target, int):
        return target
    if target in classes:
        return list(classes).index(target)
    try:
        return int(target)
    except ValueError as exc:
        raise ConfigError(
            f"--target {target!r} is neither a class index nor a class name ({', '.join(list(classes)[:12])})"
        ) from exc


def blocks(todo: Sequence[int], size: int) -> Iterator[torch.Tensor]:
    """``todo`` in index tensors of at most ``size``."""
    size = max(1, int(size))
    for s in range(0, len(todo), size):
        yield torch.tensor(todo[s : s + size], dtype=torch.long)


def reindex(records: Records, idx: torch.Tensor) -> Records:
    """Records of a block: their ``index`` becomes the input's position in the data."""
    return [{**r, "index": int(idx[int(r["index"])])} for r in records]


class AttackRun:
    """One attack command run (``with`` block: closes the records and the process group it
    started). ``name`` gives the files ``OUT/attack-<name>.*`` and the command ``attack <name>``
    (``command`` overrides it, e.g. ``attack torchattacks:PGD``). Under ``torchrun``
    (``WORLD_SIZE`` > 1) it joins the process group, takes ``cuda:LOCAL_RANK`` and attacks every
    ``world``-th input; rank 0 merges the records and writes the files.

    Example::

        with AttackRun("fgsm", out_dir=Path("runs"), device="cpu") as run:
            res = run_fgsm(Attacked([model], x, y, info, ["model.pt"]), run, eps=[0.0, 0.1])
        res.to_dict()  # the document of `kmtools attack fgsm`
    """

    def __init__(
        self,
        name: str,
        *,
        out_dir: Path | None = None,
        force: bool = False,
        resume: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        command: str | None = None,
        progress: ProgressFactory = no_progress,
        info: Callable[[str], None] = _quiet,
        warn: Callable[[str], None] = _quiet,
        resume_hint: str = RESUME_HINT,
    ) -> None:
        from kmtools.tailor.loop import init_distributed

        dev = torch.device(device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        self.name, self.resume, self.seed, self.resume_hint = name, resume, seed, resume_hint
        self.ctx = RunContext(command or f"attack {name}", out_dir=out_dir, force=force, seed=seed, device=dev,
                              stem=f"attack-{name}", progress=progress, info=info, warn=warn)
        import torch.distributed as dist

        self.started_dist = not (dist.is_available() and dist.is_initialized()) and init_distributed(dev)
        self.rank, self.world = world()
        self.journal: Journal | None = None

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def timer(self) -> Timer:
        return self.ctx.timer

    def __enter__(self) -> AttackRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()

    def settings(self, a: Attacked, **opts: Any) -> dict[str, Any]:
        """What a resumed run must repeat: the command, models (sha256), data, attack options."""
        models = {key: (model_info(path, m) or {}).get("sha256") or str(path)
                  for key, path, m in zip(a.keys, a.paths, a.models, strict=True)}
        data = {"name": a.info.name, "split": a.info.split, "n": len(a.y)}
        return {"command": self.ctx.command, "models": models, "data": data, **opts}

    def begin(self, a: Attacked, settings: dict[str, Any], figures: bool = True) -> dict[str, Path]:
        """Open the records (``--resume`` reads them back, refusing other settings) and name
        the result files (``json``, ``npz``, ``png_<key>`` with ``figures``), each checked
        against ``--force`` (or ``--resume``) before any work; ``{}`` without an out folder."""
        ctx = self.ctx
        self.journal = Journal(ctx.out_dir, ctx.stem, settings, resume=self.resume, force=ctx.force,
                               rank=self.rank, world=self.world, warn=ctx.warn)
        if ctx.out_dir is None:
            return {}
        paths = {"json": ctx.out_dir / f"{ctx.stem}.json", "npz": ctx.out_dir / f"{ctx.stem}.npz"}
        for k in a.keys if figures else []:
            paths[f"png_{k}"] = ctx.out_dir / "figures" / f"{ctx.stem}_{k}.png"
        for p in paths.values():
            check_writable(p, ctx.force or self.resume)
        return paths

    def run(self, a: Attacked, label: str, each: Callable[[str, KmModel, list[int], Step], None]
            ) -> tuple[dict[str, Records], dict[str, int]]:
        """``each(key, model, todo, step)`` for every model on this rank's inputs not yet
        recorded (``step(done, total)`` after each batch: progress ``"<label> <key>"`` and the
        signal check); then every model's records (all ranks) in input order and the counts
        of inputs attacked in this run."""
        j = self.journal
        assert j is not None, "call begin() first"
        shard = list(range(len(a.y)))[self.rank :: self.world]
        with catch_signals() as got:

            def check() -> None:
                if got:
                    j.close()
                    where = j.where(len(shard) * len(a.models))
                    got.check(f"during attack {self.name}: {where}" + (f"; {self.resume_hint}" if j.part else ""))

            for key, m in a.pairs():
                seen = j.done(key)
                todo = [i for i in shard if i not in seen]
                if todo:
                    with self.timer(f"attack_{key}"), self.ctx.progress(f"{label} {key}", len(todo)) as prog:

                        def step(done: int, total: int) -> None:
                            prog(done, total)
                            check()

                        each(key, m, todo, step)
                check()
        return self._collect(a)

    def run_blocks(
        self, a: Attacked, label: str, batch_size: int, attack: Callable[[str, KmModel, torch.Tensor], Records]
    ) -> tuple[dict[str, Records], dict[str, int]]:
        """:meth:`run` for attacks done in blocks of ``batch_size`` inputs: ``attack(key, model,
        idx)`` returns the records of inputs ``idx`` (their ``index`` counted within the block)."""

        def each(key: str, m: KmModel, todo: list[int], step: Step) -> None:
            done = 0
            for idx in blocks(todo, batch_size):
                self.journal.add(key, reindex(attack(key, m, idx), idx))  # type: ignore[union-attr]
                done += len(idx)
                step(done, len(todo))

        return self.run(a, label, each)

    def _collect(self, a: Attacked) -> tuple[dict[str, Records], dict[str, int]]:
        assert self.journal is not None
        recs, new = self.journal.gather()
        ordered: dict[str, Records] = {}
        for key in a.keys:
            got = recs.get(key, {})
            missing = [i for i in range(len(a.y)) if i not in got]
            if missing:
                raise DataError(f"attack records for {key} miss inputs {missing[:5]}: re-run with --resume")
            ordered[key] = [got[i] for i in range(len(a.y))]
        self.journal.finish(ordered)
        return ordered, new

    def doc(self, a: Attacked, nest: str, summaries: Mapping[str, dict[str, Any]], new: Mapping[str, int],
            **more: Any) -> dict[str, Any]:
        """The document: ``results`` in the ``--compare`` layout (:func:`compare_results`, each
        model's summary under ``nest``) plus ``more`` (e.g. ``paired``), the second model's
        description and ``run`` (world size, resumed records, inputs attacked in this run)."""
        results = compare_results(summaries, paths=a.paths, nest=nest, head_kind=a.models[0].head_kind) | more
        extra: dict[str, Any] = {}
        if len(a.models) > 1:
            extra["compare_model"] = model_info(a.paths[1], a.models[1])
        j = self.journal
        extra["run"] = {
            "world_size": self.world,
            "resumed": bool(j is not None and j.reused),
            "records_reused": j.reused if j is not None else 0,
            "attacked_this_run": {k: new.get(k, 0) for k in a.keys},
        }
        data = {**a.info.to_dict(), "classes": a.info.classes}
        return self.ctx.doc(results, model=a.models[0], model_path=a.paths[0], data=data, **extra)

    def write(self, doc: Mapping[str, Any], paths: Mapping[str, Path], arrays: Mapping[str, Any] | None = None,
              figures: bool = False) -> list[Path]:
        """Rank 0: the arrays and the document (replacing old ones: ``begin`` checked them);
        says which files were written."""
        if not paths:
            return []
        assert self.journal is not None
        if arrays is not None:
            save_npz(paths["npz"], arrays, True)
        write_json(paths["json"], doc, True)
        names = [str(paths["json"]), self.journal.final.name]
        names += [paths["npz"].name] if arrays is not None else []
        names += ["figures/"] if figures else []
        self.ctx.info("wrote " + ", ".join(names[:-1]) + " and " + names[-1])
        return [p for p in [*paths.values(), self.journal.final] if p.exists()]
