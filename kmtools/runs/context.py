"""The run context: what every command that writes results shares.

One :class:`RunContext` per command run, used as a ``with`` block: it checks ``--out`` (a
folder, not a file), names and checks the output files (``--force``), seeds torch, times the
stages, catches SIGINT/SIGTERM for the block (:mod:`kmtools.runs.signals`) and assembles the
JSON document (:func:`kmtools.report.schema.envelope`: schema version, versions, model and
data fingerprints, seed, device, timings). Helpers the commands used to copy live here too:
:func:`tensors`, :func:`save_npz`, :func:`check_gates`, :func:`finite`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from kmtools.data import DataInfo
from kmtools.errors import ConfigError, DataError
from kmtools.features import as_tensors
from kmtools.io import check_writable, write_json, write_with
from kmtools.report import gates
from kmtools.report.schema import envelope, model_info
from kmtools.runs.signals import Signals, catch_signals

ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[..., None]]]
"""``progress(description, total)`` → a context yielding ``update(done, total, extra="")``
(``kmtools_cli._output.Output.progress`` draws a bar; :func:`no_progress` draws nothing)."""


@contextmanager
def no_progress(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A progress factory that shows nothing."""
    yield lambda *_a, **_k: None


def _quiet(_msg: str) -> None:
    return None


class Timer:
    """Seconds per named stage: ``with timer("load"): ...`` (repeated names add up)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def check_out_dir(out_dir: Path | None, what: str = "") -> None:
    """``--out`` names a folder (existing or not), never a file."""
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder{what}")


def check_gates(exprs: Iterable[str] | None) -> None:
    """Parse every ``--gate`` before any work, so a malformed one fails at once (exit 2)."""
    for g in exprs or ():
        gates.parse(g)


def save_npz(path: Path, arrays: Mapping[str, Any], force: bool = False) -> Path:
    """Write ``arrays`` to ``path`` (.npz, uncompressed) atomically; ``force`` replaces a file."""

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz'
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]

    return write_with(path, writer, force)


def to_numpy(t: torch.Tensor | None) -> np.ndarray:
    """A tensor as a CPU array (``None`` as an empty one)."""
    return np.zeros(0) if t is None else t.detach().cpu().numpy()


def tensors(info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs (float) and labels (long) of a loaded dataset, stacked."""
    t = as_tensors(info.dataset)
    if t is not None:
        return t[0].float(), torch.as_tensor(t[1]).long()
    xs, ys = [], []
    for i in range(len(info)):
        xi, yi = info.dataset[i]
        xs.append(torch.as_tensor(xi).float())
        ys.append(int(yi))
    if not xs:
        raise DataError(f"{info.name} ({info.split}) has no inputs")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def finite(obj: Any) -> Any:
    """The result tree with NaN/±inf floats as null (strict JSON for CI tools)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class RunContext:
    """One command run. ``command`` is the document's ``command`` (e.g. ``"geometry distance"``);
    files are ``OUT/<stem><suffix>`` with ``stem`` defaulting to the command with dashes
    (``geometry-distance``).

    Example::

        with RunContext("geometry distance", out_dir=out, force=force, seed=0, device=dev) as ctx:
            paths = ctx.paths(json=".json", npz=".npz")   # {} without --out
            with ctx.timer("distance"):
                ...
            doc = ctx.doc(results, model=model, model_path=path, data=info)
            ctx.write(doc, paths)
    """

    def __init__(
        self,
        command: str,
        *,
        out_dir: Path | None = None,
        force: bool = False,
        seed: int | None = 0,
        device: torch.device | str = "cpu",
        stem: str | None = None,
        progress: ProgressFactory = no_progress,
        info: Callable[[str], None] = _quiet,
        warn: Callable[[str], None] = _quiet,
    ) -> None:
        check_out_dir(out_dir)
        self.progress, self.info, self.warn = progress, info, warn
        self.command = command
        self.out_dir = out_dir
        self.force = force
        self.seed = seed
        self.device = torch.device(device)
        self.stem = stem or command.replace(" ", "-")
        self.timer = Timer()
        self.signals = Signals()
        self._catch: Any = None
        if seed is not None:
            torch.manual_seed(seed)

    def __enter__(self) -> RunContext:
        self._catch = catch_signals()
        self.signals = self._catch.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._catch is not None:
            self._catch.__exit__(kind, err, tb)
            self._catch = None

    def check(self) -> None:
        """Call between batches: a caught SIGINT/SIGTERM becomes :class:`Interrupted`."""
        self.signals.check(f"during {self.command}")

    @contextmanager
    def stage(self, name: str, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A timed stage with a progress callback that also checks for SIGINT/SIGTERM."""
        with self.timer(name), self.progress(description, total) as prog:

            def update(done: int, tot: int, extra: str = "") -> None:
                prog(done, tot, extra)
                self.check()

            yield update
        self.check()

    def paths(self, **suffixes: str) -> dict[str, Path]:
        """``{name: OUT/<stem><suffix>}`` for each ``name=suffix``, each checked against
        ``--force`` before any work; ``{}`` without ``--out``."""
        if self.out_dir is None:
            return {}
        paths = {k: self.out_dir / f"{self.stem}{s}" for k, s in suffixes.items()}
        for p in paths.values():
            check_writable(p, self.force)
        return paths

    def doc(
        self,
        results: Mapping[str, Any],
        *,
        model: Any = None,
        model_path: Path | str | None = None,
        data: DataInfo | Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The JSON document: ``results`` (non-finite floats as null) in the envelope."""
        data_doc = data.to_dict() if isinstance(data, DataInfo) else data
        return envelope(
            self.command, finite(dict(results)), model=model_info(model_path, model), data=data_doc,
            seed=self.seed, device=self.device, timings=self.timer.timings, **extra,
        )

    def write(self, doc: Mapping[str, Any], paths: Mapping[str, Path]) -> list[Path]:
        """Write ``doc`` to ``paths["json"]`` (when there is one) and say which files exist."""
        if "json" in paths:
            write_json(paths["json"], doc, self.force)
        written = [p for p in paths.values() if p.exists()]
        if written:
            self.info("wrote " + ", ".join(str(p) for p in written))
        return written
