"""``kmtools attack torchattacks:NAME`` as one library call: :func:`run_external`, any
torchattacks attack around the model's decision scores (:mod:`kmtools.attacks.external`),
robust accuracy, attack and effective rates with 95% intervals, paired with ``--compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kmtools.attacks.external import ExternalResult, torchattacks_attack
from kmtools.attacks.external import paired as paired_external
from kmtools.models.scoring import outlier_threshold
from kmtools.runs.attacks.base import Attacked, AttackRun, AttackRunResult, Records


def run_external(a: Attacked, run: AttackRun, *, name: str, kwargs: dict[str, Any] | None = None,
                 batch_size: int = 128) -> AttackRunResult:
    """``torchattacks.NAME(**kwargs)`` on every input of ``a`` with every model (``run`` =
    ``AttackRun(f"torchattacks-{name}", command=f"attack torchattacks:{name}", ...)``; torch's
    seed is set per block for the attacks' random starts);
    writes ``attack-torchattacks-NAME.{jsonl,run.json,json}`` when ``run`` has an out folder."""
    kw, seed = dict(kwargs or {}), run.seed
    settings = run.settings(a, kw={k: repr(v) for k, v in kw.items()}, batch_size=batch_size, seed=seed)
    paths = run.begin(a, settings, figures=False)

    def attack(_key: str, m: Any, idx: torch.Tensor) -> Records:
        torch.manual_seed(seed * 1_000_003 + int(idx[0]))  # torchattacks' random starts
        return torchattacks_attack(name, m, a.x[idx], a.y[idx], kw=kw, device=run.device).records()

    ordered, new = run.run_blocks(a, name, batch_size, attack)
    res = {key: ExternalResult.from_records(ordered[key], name=name, threshold=outlier_threshold(m, m.num_classes),
                                            head_kind=m.head_kind, kwargs=kw) for key, m in a.pairs()}
    more: dict[str, Any] = {}
    if len(res) == 2:
        k1, k2 = a.keys
        more["paired"] = {"a": k1, "b": k2, **paired_external(res[k1], res[k2])}
    doc = run.doc(a, "external", {k: r.to_dict() for k, r in res.items()}, new, **more)
    files: list[Path] = []
    if run.rank == 0 and paths:
        paths.pop("npz")
        files = run.write(doc, paths)
    return AttackRunResult(doc, dict(res), settings, files, run.rank)
