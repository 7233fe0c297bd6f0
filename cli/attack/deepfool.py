"""``kmtools attack deepfool``: the minimal perturbation r(x) (:func:`kmtools.runs.attacks.run_deepfool`)."""

from __future__ import annotations

from typing import Annotated

import typer

from kmtools_cli._options import grouped
from kmtools_cli.attack._shared import Attack, attack_run, show, start

LpOpt = Annotated[str, typer.Option("--lp", help="Norm of the perturbation: l2 or linf. (--norm is the input normalisation preset.)")]
OvershootOpt = Annotated[float, typer.Option("--overshoot", help="The iterate is x + (1 + overshoot)·Σ r_i.")]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", help="Maximum DeepFool steps per input.")]
CandidatesOpt = Annotated[int, typer.Option("--candidates", help="Classes considered per step (the prediction plus the top others); 0 = all.")]
ClipOpt = Annotated[bool, typer.Option("--clip/--no-clip", help="Clamp iterates to [0, 1] (images).")]


@grouped
def attack_deepfool(
    *, lp: LpOpt = "l2", overshoot: OvershootOpt = 0.02, max_iter: MaxIterOpt = 50, candidates: CandidatesOpt = 10,
    clip: ClipOpt = True, a: Attack,
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
    from kmtools.runs.attacks import parse_lp, run_deepfool

    out = start(a.output)
    lp_n = parse_lp(lp)
    with attack_run("deepfool", out, a) as (ar, attacked):
        res = run_deepfool(attacked, ar, lp=lp_n, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                           clip=clip, batch_size=a.run.batch_size)
    show(out, res, a.output)
