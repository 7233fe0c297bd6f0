"""``kmtools attack pgd``: robust accuracy against ε with intervals (:func:`kmtools.runs.attacks.run_pgd`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kmtools_cli._options import grouped
from kmtools_cli.attack._shared import Attack500, TargetOpt, attack_run, show, start

EpsOpt = Annotated[str, typer.Option("--eps", help="Comma-separated radii in input units; fractions allowed: 0,2/255,4/255,8/255.")]
LpOpt = Annotated[str, typer.Option("--lp", help="Threat model: linf or l2. (--norm is the input normalisation preset.)")]
StepsOpt = Annotated[int, typer.Option("--steps", min=0, help="Gradient steps per restart.")]
StepSizeOpt = Annotated[str | None, typer.Option("--step-size", help="Step α (a number or a fraction such as 1/255). Default 2.5·ε/steps per ε.", show_default=False)]
RestartsOpt = Annotated[int, typer.Option("--restarts", min=1, help="Random starts in the ε-ball per input (the best is kept).")]
LossOpt = Annotated[str, typer.Option("--loss", help="margin (on the head's own scores: logits, log κ, ...) or ce.")]
AdaptiveOpt = Annotated[bool, typer.Option("--adaptive/--no-adaptive", help="Detector-aware objective: fool while staying above the outlier threshold (for heads that flag outliers, e.g. Gauss).")]
SanityOpt = Annotated[int, typer.Option("--sanity", min=0, help="Gradient-masking checks on the first N inputs (accuracy at a huge ε must be ≈ 0; more steps and restarts must not raise accuracy). 0 = off.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write the robustness curve (accuracy and effective success against ε, 95% Wilson bands, one line per model) to this PNG.", show_default=False)]


@grouped
def attack_pgd(
    *, eps: EpsOpt = "0,1/255,2/255,4/255,8/255", lp: LpOpt = "linf", steps: StepsOpt = 10,
    step_size: StepSizeOpt = None, restarts: RestartsOpt = 1, target: TargetOpt = None, loss: LossOpt = "margin",
    adaptive: AdaptiveOpt = False, sanity: SanityOpt = 100, plot: PlotOpt = None, a: Attack500,
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
    from kmtools.attacks import parse_eps
    from kmtools.io import check_writable
    from kmtools.runs.attacks import parse_lp, pgd_options, run_pgd

    out = start(a.output)
    eps_l = parse_eps(eps)
    alpha = parse_eps(step_size)[0] if step_size is not None else None
    opts = pgd_options(parse_lp(lp), steps, alpha, restarts, loss, adaptive)
    if plot is not None:
        check_writable(plot, a.output.force)
    with attack_run("pgd", out, a, n=500) as (ar, attacked):
        res = run_pgd(attacked, ar, eps=eps_l, opts=opts, target=target, sanity=sanity, plot=plot,
                      batch_size=a.run.batch_size)
    show(out, res, a.output)
