"""The per-input resumable journal of a run (attacks today; any per-input command).

Records (one JSON object per input and model key) are appended to ``OUT/<stem>.jsonl`` as
batches finish: one ``write`` per batch, flushed and fsynced, so a kill loses at most the
batch in flight and never corrupts earlier lines (a line cut by a hard kill is skipped on
reading and redone). ``OUT/<stem>.run.json`` holds the settings; ``resume=True`` reads the
records back and refuses settings that differ. Under ``torchrun`` every rank appends to
``<stem>.rank<R>.jsonl``; :meth:`Journal.finish` merges them into one file in input order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from kmtools.errors import ConfigError, OutputExistsError
from kmtools.io import write_json, write_text
from kmtools.runs.context import check_out_dir


def jsonl(records: Sequence[dict[str, Any]]) -> str:
    """Records as JSON lines (one per record, each ending in a newline)."""
    return "".join(json.dumps(r) + "\n" for r in records)


def _is_rank_file(p: Path, world: int) -> bool:
    """``<stem>.rank<R>.jsonl`` with R < world: a live rank's own file (it removes it itself)."""
    tag = p.name.rsplit(".rank", 1)[-1].removesuffix(".jsonl")
    return tag.isdigit() and int(tag) < world


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two settings dictionaries (sorted)."""
    return [k for k in sorted(set(new) | set(old)) if old.get(k) != new.get(k)]


class Journal:
    """Per-input records of one run, kept in memory and, with ``out_dir``, appended to
    ``<stem>.jsonl``. ``settings`` (JSON-able) is what a resumed run must repeat."""

    def __init__(
        self,
        out_dir: Path | None,
        stem: str,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        force: bool = False,
        rank: int = 0,
        world: int = 1,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.dir, self.stem, self.rank, self.world = out_dir, stem, rank, world
        self.warn = warn or (lambda _msg: None)
        self.records: dict[str, dict[int, dict[str, Any]]] = {}
        self.new: dict[str, int] = {}
        self.reused = 0
        self.fh: IO[str] | None = None
        self.part: Path | None = None
        if out_dir is None:
            if resume:
                raise ConfigError("--resume needs --out DIR: the folder of the interrupted run")
            return
        check_out_dir(out_dir)
        self.final = out_dir / f"{stem}.jsonl"
        self.run_file = out_dir / f"{stem}.run.json"
        self.part = self.final if world == 1 else out_dir / f"{stem}.rank{rank}.jsonl"
        parts = [self.final, *sorted(out_dir.glob(f"{stem}.rank*.jsonl"))]
        settings = json.loads(json.dumps(settings))
        if resume:
            self._check_resume(out_dir, settings, parts)
            for p in parts:
                self._read(p)
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
        if self.part.stat().st_size:
            with open(self.part, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a line cut by a hard kill: end it (the reader skips it)
                    self.fh.write("\n")

    def _check_resume(self, out_dir: Path, settings: dict[str, Any], parts: list[Path]) -> None:
        if self.run_file.exists():
            old = json.loads(self.run_file.read_text(encoding="utf-8"))
            diff = settings_diff(old, settings)
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

    def _read(self, path: Path) -> None:
        if not path.exists():
            return
        bad = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key, idx = str(rec.pop("model")), int(rec["index"])
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
                continue
            self.records.setdefault(key, {}).setdefault(idx, rec)
        if bad:
            self.warn(f"{path}: skipped {bad} unreadable line(s) (cut by a hard kill); they are redone")

    @property
    def count(self) -> int:
        """Records held (all keys)."""
        return sum(len(v) for v in self.records.values())

    def done(self, key: str) -> set[int]:
        """Input indices already recorded for ``key``."""
        return set(self.records.get(key, {}))

    def add(self, key: str, records: Sequence[dict[str, Any]], attacked: int | None = None) -> None:
        """Keep ``records`` (each with an ``index``) and append them to the rank's file in one
        write, flushed and synced at once; ``attacked`` (default all) of them count as inputs
        processed in this run."""
        store = self.records.setdefault(key, {})
        for r in records:
            store[int(r["index"])] = r
        self.new[key] = self.new.get(key, 0) + (len(records) if attacked is None else attacked)
        if self.fh is not None and records:
            self.fh.write(jsonl([{"model": key, **r} for r in records]))
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def gather(self) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, int]]:
        """All ranks' records and counts of newly processed inputs (every rank gets them)."""
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
        """Rank 0: rewrite ``<stem>.jsonl`` in key and input order (one canonical file,
        whatever the ranks and interruptions) and remove the rank files."""
        self.close()
        if self.dir is None:
            return
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if self.rank != 0:
            return
        lines = [{"model": k, **r} for k, recs in ordered.items() for r in recs]
        write_text(self.final, jsonl(lines), force=True)
        for p in self.dir.glob(f"{self.stem}.rank*.jsonl"):
            p.unlink(missing_ok=True)

    def where(self, total: int) -> str:
        """Where the partial results are, for an :class:`~kmtools.runs.Interrupted` message."""
        if self.part is not None:
            return f"{self.count} of {total} records are in {self.part}"
        return (f"{self.count} of {total} inputs were done but not saved: use --out DIR to keep "
                "partial results (and --resume to continue)")
