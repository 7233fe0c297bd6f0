"""``kmtools attack pgd`` as one library call: :func:`run_pgd`, robust accuracy and attack
success against ε with 95% intervals (Madry et al. 2018, :func:`kmtools.attacks.pgd`), the
gradient-masking checks of Carlini et al. 2019 and, with ``--compare``, the paired difference
per ε."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.attacks.pgd import PGDResult, paired_pgd, pgd, sanity_checks
from kmtools.errors import ConfigError
from kmtools.models.scoring import outlier_threshold
from kmtools.runs.attacks.base import Attacked, AttackRun, AttackRunResult, Records, parse_target

_SETTINGS = ("norm", "steps", "step_size", "restarts", "loss", "adaptive", "threshold", "head_kind", "seed")


def pgd_options(norm: str = "linf", steps: int = 10, step_size: float | None = None, restarts: int = 1,
                loss: str = "margin", adaptive: bool = False) -> dict[str, Any]:
    """The checked PGD options (``norm`` from :func:`~kmtools.runs.attacks.base.parse_lp`)."""
    if loss not in ("margin", "ce"):
        raise ConfigError(f"--loss must be margin or ce, got {loss!r}")
    if step_size is not None and not step_size > 0:
        raise ConfigError("--step-size must be positive, e.g. --step-size 1/255")
    return {"norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts, "loss": loss,
            "adaptive": adaptive}


def paired_lists(rows: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Per-ε paired statistics as gate-friendly lists (``paired.diff_lo[-1]>0``)."""
    out: dict[str, Any] = {"a": a, "b": b, "what": "robust accuracy of b minus a (Newcombe 95% interval, "
                           "McNemar exact test on the discordant inputs)"}
    for k in ("eps", "diff", "diff_lo", "diff_hi", "p_value", "only_a", "only_b", "n"):
        out[k] = [r[k] for r in rows]
    for k in ("diff", "diff_lo", "diff_hi", "p_value", "only_a", "only_b", "n"):
        out[f"effective_{k}"] = [r["effective"][k] for r in rows]
    return out


def run_pgd(a: Attacked, run: AttackRun, *, eps: Sequence[float], opts: dict[str, Any] | None = None,
            target: str | int | None = None, sanity: int = 100, plot: Path | None = None,
            batch_size: int = 128) -> AttackRunResult:
    """PGD at every ε (``opts``: :func:`pgd_options`) on every input of ``a`` with every model;
    ``sanity`` > 0 runs the gradient-masking checks on the first ``sanity`` inputs; ``plot``
    gets the robustness curve; writes ``attack-pgd.{jsonl,run.json,json,npz}`` when ``run`` has
    an out folder."""
    eps_l, opts, seed = list(eps), pgd_options(**(opts or {})), run.seed
    tgt = parse_target(target, a.classes)
    settings = run.settings(a, eps=eps_l, target=tgt, batch_size=batch_size, seed=seed, **opts)
    paths = run.begin(a, settings, figures=False)

    def attack(_key: str, m: Any, idx: Any) -> Records:
        # the random starts are keyed by (seed, first input of the block): a resumed run
        # attacks the remaining blocks as the interrupted one would have
        return pgd(m, a.x[idx], a.y[idx], eps_l, target=tgt, seed=(seed * 1_000_003 + int(idx[0])) % 2**62,
                   keep_adv=False, device=run.device, **opts).records()

    ordered, new = run.run_blocks(a, "PGD", batch_size, attack)
    st = opts["step_size"]
    res = {key: PGDResult.from_records(
        ordered[key], eps=eps_l, norm=opts["norm"], steps=opts["steps"],
        step_size=[st if st is not None else 2.5 * e / max(opts["steps"], 1) for e in eps_l],
        restarts=opts["restarts"], loss=opts["loss"], adaptive=opts["adaptive"],
        threshold=outlier_threshold(m, m.num_classes), head_kind=m.head_kind, seed=seed,
    ) for key, m in a.pairs()}
    if sanity and run.rank == 0:
        _sanity(a, run, ordered, res, eps_l, sanity, tgt, batch_size)
    summaries = {k: r.to_dict() for k, r in res.items()}
    more = {"paired": paired_lists(paired_pgd(*res.values()), *a.keys)} if len(res) == 2 else {}
    doc = run.doc(a, "pgd", summaries, new, **more)
    files: list[Path] = []
    if run.rank == 0:
        files = _write(run, a, doc, paths, res, summaries, eps_l, opts, plot)
    return AttackRunResult(doc, dict(res), settings, files, run.rank)


def _sanity(a: Attacked, run: AttackRun, ordered: dict[str, Records], res: dict[str, PGDResult], eps: list[float],
            sanity: int, tgt: int | None, batch_size: int) -> None:
    k = min(sanity, len(a.y))
    for key, m in a.pairs():
        with run.timer(f"sanity_{key}"):
            sub = PGDResult.from_records(ordered[key][:k], eps=eps,
                                         **{f: getattr(res[key], f) for f in _SETTINGS})
            res[key].sanity = {"inputs": k, **sanity_checks(m, a.x[:k], a.y[:k], sub, target=tgt,
                                                             batch_size=batch_size, device=run.device)}


def _write(run: AttackRun, a: Attacked, doc: dict[str, Any], paths: dict[str, Path], res: dict[str, PGDResult],
           summaries: dict[str, Any], eps: list[float], opts: dict[str, Any], plot: Path | None) -> list[Path]:
    files: list[Path] = []
    if plot is not None:
        from kmtools.report.curves import robustness_curve

        robustness_curve(summaries, plot, title=f"PGD ({opts['norm']}, {opts['steps']} steps × "
                         f"{opts['restarts']}) on {len(a.y)} {a.info.name} {a.info.split} inputs",
                         norm=opts["norm"], force=True)
        run.ctx.info(f"wrote {plot}")
        files.append(plot)
    if paths:
        arrays: dict[str, np.ndarray] = {"labels": a.y.numpy(), "eps": np.asarray(eps)}
        for key, r in res.items():
            arrays |= {f"{key}_preds": r.preds.numpy(), f"{key}_confs": r.conf.numpy(),
                       f"{key}_clean_preds": r.clean_preds.numpy()}
        files += run.write(doc, paths, arrays)
    return files
