"""``kmtools attack onepixel``: the one-pixel attack (:func:`kmtools.runs.attacks.run_onepixel`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import typer

from kmtools_cli._options import DataOptions, RunOptions, Use, grouped
from kmtools_cli.attack._shared import Attack, ResumeOpt, TargetOpt, attack_run, show, start

NumOpt = Annotated[int | None, typer.Option("-n", "--num", help="Attack the first N inputs (default 100; the paper used 500 CIFAR-10 test images).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1, show_default=False, help="Images evolved together (default 8192/popsize on CUDA, 2048/popsize on the CPU).")]
AmpFlag = Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (successes are confirmed in float32).")]
PixelsOpt = Annotated[int, typer.Option("--pixels", help="Pixels changed per candidate (Su et al.: 1, 3, 5).")]
PopsizeOpt = Annotated[int, typer.Option("--popsize", help="Candidates per image (Su et al.: 400).")]
StepsOpt = Annotated[int, typer.Option("--steps", "--max-iter", help="Maximum DE generations (Su et al.: 100).")]
TolOpt = Annotated[float | None, typer.Option("--tol", show_default=False, help="Also stop an image when its population's fitness converged: std <= tol*|mean| (scipy's rule, 0.01 there). Default: off, as Su et al. and torchattacks.")]
FitnessOpt = Annotated[str, typer.Option("--fitness", help="confidence (Su et al.: the true class's confidence), margin (its log-confidence minus the best other class's) or both (an image is fooled when either fools it; each fitness's rate and their McNemar test are reported).")]
SuccessOpt = Annotated[str, typer.Option("--success", help="best (scipy/torchattacks: stop when the population's best member fools; that member is reported) or any (stop at the first fooling child).")]
BoundsOpt = Annotated[str, typer.Option("--bounds", help="Out-of-range children: resample (scipy's rule, uniform inside the box) or clip (clamp to the border).")]
AdaptiveOpt = Annotated[bool, typer.Option("--adaptive/--no-adaptive", help="Detector-aware: a candidate fools only when its prediction is not flagged as an outlier (for heads that flag outliers, e.g. Gauss).")]
ChunkOpt = Annotated[int | None, typer.Option("--chunk", show_default=False, help="At most this many candidate images per forward pass (default batch-size × popsize).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="Scoring of candidate batches: auto (CPU: onnxruntime when installed and the budget is >= 50,000 candidates, else channels-last; CUDA: eager), eager, channels-last, compile or onnxruntime. Verdicts stay eager float32.")]



@dataclass
class OnePixelAttack(Attack):
    """:class:`Attack` with one-pixel's -n (default 100), --batch-size and --amp."""

    ds: Annotated[DataOptions, Use(add=("download", "workers"), options={"n": NumOpt})]
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"batch_size": None},
                                   options={"batch_size": BatchOpt, "amp": AmpFlag})] = field(default_factory=RunOptions)


@grouped
def attack_onepixel(
    *,
    pixels: PixelsOpt = 1,
    popsize: PopsizeOpt = 400,
    steps: StepsOpt = 100,
    target: TargetOpt = None,
    tol: TolOpt = None,
    fitness: FitnessOpt = "confidence",
    success: SuccessOpt = "best",
    bounds: BoundsOpt = "resample",
    adaptive: AdaptiveOpt = False,
    resume: ResumeOpt = False,  # declared here: its place in --help (before --chunk) predates Attack
    chunk: ChunkOpt = None,
    backend: BackendOpt = "auto",
    a: Annotated[OnePixelAttack, Use(skip=("resume",))],
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
    from kmtools.runs.attacks import onepixel_rules, run_onepixel

    a.resume = resume
    out = start(a.output)
    rules = onepixel_rules(fitness, success, bounds, adaptive)
    with attack_run("onepixel", out, a, n=100) as (ar, attacked):
        res = run_onepixel(attacked, ar, pixels=pixels, popsize=popsize, steps=steps, target=target, tol=tol,
                           rules=rules, batch_size=a.run.batch_size, chunk=chunk, amp=a.run.amp, backend=backend)
    show(out, res, a.output)
