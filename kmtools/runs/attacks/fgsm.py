"""``kmtools attack fgsm`` as one library call: :func:`run_fgsm`, accuracy and confidence
against ε (the Gauss-network paper's Figure 2; Goodfellow et al. 2015,
:func:`kmtools.attacks.fgsm_sweep`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmtools.attacks import FGSMResult, fgsm, fgsm_sweep
from kmtools.runs.arrays import fgsm_arrays
from kmtools.runs.attacks.base import Attacked, AttackRun, AttackRunResult
from kmtools.runs.attacks.figures import image_grid


def run_fgsm(a: Attacked, run: AttackRun, *, eps: Sequence[float], clip: bool = True,
             batch_size: int = 128) -> AttackRunResult:
    """FGSM at every ε on every input of ``a`` with every model (one backward pass per block
    serves all ε); writes ``attack-fgsm.{jsonl,run.json,json,npz}`` and the figures of up to 8
    inputs fooled at the largest ε when ``run`` has an out folder."""
    eps_l = list(eps)
    settings = run.settings(a, eps=eps_l, clip=clip)
    paths = run.begin(a, settings)
    rng = (0.0, 1.0) if clip else None
    ordered, new = run.run_blocks(a, "FGSM", batch_size, lambda _k, m, idx: fgsm_sweep(
        m, a.x[idx], a.y[idx], eps_l, clip=rng, batch_size=batch_size, device=run.device).records())
    res = {key: FGSMResult.from_records(ordered[key], threshold=m.threshold, head_kind=m.head_kind, clip=rng,
                                        settings={"batch_size": batch_size, "device": str(run.device)})
           for key, m in a.pairs()}
    doc = run.doc(a, "fgsm", {k: r.to_dict() for k, r in res.items()}, new)
    files = _write(run, a, doc, paths, res, eps_l, rng) if run.rank == 0 else []
    return AttackRunResult(doc, dict(res), settings, files, run.rank)


def _write(run: AttackRun, a: Attacked, doc: dict[str, Any], paths: dict[str, Path], res: dict[str, FGSMResult],
           eps: list[float], rng: tuple[float, float] | None) -> list[Path]:
    if not paths:
        return []
    e_max = max(eps)
    i_max = eps.index(e_max)
    for key, m in a.pairs():
        r = res[key]
        fooled = ((r.clean_preds == a.y) & (r.preds[i_max] != a.y)).nonzero().flatten().tolist()[:8]
        xs, xa = a.x[:0], a.x[:0]
        if fooled:  # the shown attacks are recomputed (FGSM is deterministic)
            xs = a.x[fooled].to(run.device)
            xa = fgsm(m, xs, a.y[fooled].to(run.device), e_max, clip=rng).detach().cpu()
        image_grid(xs.cpu(), xa, a.y[fooled], r.preds[i_max][fooled], r.clean_confs[fooled], r.confs[i_max][fooled],
                   list(range(len(fooled))), a.classes, f"{key}: FGSM ε = {e_max:g}, clean prediction conf → "
                   "prediction conf", paths[f"png_{key}"], True, diff=True)
    return run.write(doc, paths, fgsm_arrays(a.y, eps, res), figures=True)
