"""``kmtools attack onepixel`` as one library call: :func:`run_onepixel` (Su et al. 2019 by
batched differential evolution, :func:`kmtools.attacks.onepixel`), Table 1 of the
Gauss-network paper per model, the paired comparison with ``--compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kmtools.attacks import OnePixelResult, onepixel
from kmtools.attacks.onepixel import BOUNDS, FITNESSES, SUCCESS_RULES
from kmtools.attacks.onepixel import paired as paired_onepixel
from kmtools.errors import ConfigError
from kmtools.models import KmModel
from kmtools.runs.arrays import onepixel_arrays
from kmtools.runs.attacks.base import Attacked, AttackRun, AttackRunResult, Step, parse_target
from kmtools.runs.attacks.figures import image_grid


def onepixel_rules(fitness: str = "confidence", success: str = "best", bounds: str = "resample",
                   adaptive: bool = False) -> dict[str, Any]:
    """The checked ``--fitness``/``--success``/``--bounds``/``--adaptive`` choices."""
    for name, val, allowed in (("--fitness", fitness, FITNESSES), ("--success", success, SUCCESS_RULES),
                               ("--bounds", bounds, BOUNDS)):
        if val not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {val!r}")
    return {"fitness": fitness, "success": success, "bounds": bounds, "adaptive": adaptive}


def run_onepixel(
    a: Attacked,
    run: AttackRun,
    *,
    pixels: int = 1,
    popsize: int = 400,
    steps: int = 100,
    target: str | int | None = None,
    tol: float | None = None,
    rules: dict[str, Any] | None = None,
    batch_size: int | None = None,
    chunk: int | None = None,
    amp: bool = True,
    backend: str = "auto",
) -> AttackRunResult:
    """Attack every input of ``a`` with every model (``rules``: :func:`onepixel_rules`);
    writes ``attack-onepixel.{jsonl,run.json,json,npz}`` and ``figures/attack-onepixel_<key>.png``
    (the fooled inputs, most confident first) when ``run`` has an out folder."""
    if a.x.dim() != 4:
        raise ConfigError(
            f"the one-pixel attack needs images (C, H, W); {a.info.name} has inputs of shape {tuple(a.x.shape[1:])}"
        )
    rules = onepixel_rules(**(rules or {}))
    tgt = parse_target(target, a.classes)
    seed = run.seed
    settings = run.settings(a, pixels=pixels, popsize=popsize, steps=steps, target=tgt, tol=tol, seed=seed, **rules)
    paths = run.begin(a, settings)
    if run.device.type == "cuda":  # candidate images are built channels-last on CUDA
        for m in a.models:
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    used: dict[str, dict[str, Any]] = {}

    def each(key: str, m: KmModel, todo: list[int], step: Step) -> None:
        idx = torch.tensor(todo, dtype=torch.long)
        r = onepixel(m, a.x[idx], a.y[idx], pixels=pixels, popsize=popsize, maxiter=steps, target=tgt, tol=tol,
                     seed=seed, index=idx, batch_size=batch_size, chunk=chunk, amp=amp, device=run.device,
                     progress=step, callback=lambda part: run.journal.add(  # type: ignore[union-attr]
                         key, part.records(), attacked=part.attacked), **rules, backend=backend)
        used[key] = r.settings

    ordered, new = run.run(a, "one-pixel", each)
    res = {key: OnePixelResult.from_records(
        ordered[key], a.x, pixels=pixels, popsize=popsize, maxiter=steps, threshold=m.threshold,
        head_kind=m.head_kind, seed=seed, settings={"F": 0.5, "tol": tol, **used.get(key, {}), **rules},
    ) for key, m in a.pairs()}
    more: dict[str, Any] = {}
    if len(res) == 2:
        k1, k2 = a.keys
        more["paired"] = {"a": k1, "b": k2, **paired_onepixel(res[k1], res[k2])}
    doc = run.doc(a, "onepixel", {k: r.to_dict() for k, r in res.items()}, new, **more)
    files = _write(run, a, doc, paths, res) if run.rank == 0 else []
    return AttackRunResult(doc, dict(res), settings, files, run.rank)


def _write(run: AttackRun, a: Attacked, doc: dict[str, Any], paths: dict[str, Path],
           res: dict[str, OnePixelResult]) -> list[Path]:
    if not paths:
        return []
    for key, r in res.items():
        hit = (r.success & ~r.skipped).nonzero().flatten()
        ok = hit[torch.argsort(-r.conf_adv[hit], stable=True)].tolist()
        image_grid(a.x, r.x_adv.cpu(), r.labels, r.adv_labels, r.conf_before, r.conf_adv, ok, a.classes,
                   f"{key}: fooled one-pixel attacks, label conf(x) → prediction conf(x̃)", paths[f"png_{key}"], True)
    return run.write(doc, paths, onepixel_arrays(a.x, a.y, res), figures=True)
