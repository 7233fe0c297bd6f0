"""``kmtools attack fgsm``: accuracy and confidence against ε (:func:`kmtools.runs.attacks.run_fgsm`)."""

from __future__ import annotations

from typing import Annotated

import typer

from kmtools_cli._options import grouped
from kmtools_cli.attack._shared import Attack, attack_run, show, start

EpsOpt = Annotated[str, typer.Option("--eps", help="Comma-separated ε in input units (pixel range [0, 1]).")]
ClipOpt = Annotated[bool, typer.Option("--clip/--no-clip", help="Clip perturbed inputs to [0, 1] (images).")]


@grouped
def attack_fgsm(*, eps: EpsOpt = "0,0.01,0.02,0.05,0.1,0.2,0.3", clip: ClipOpt = True, a: Attack) -> None:
    """FGSM: accuracy and mean confidence against ε (the Gauss-network paper's Figure 2).

    x̃ = clip(x + ε·sign(∇ₓ CE)) in pixel space, before the model's normalisation. The loss is
    the cross-entropy of the logits (softmax network) or of log κ (Gauss network). Reported
    per ε: accuracy, mean confidence of the predicted class, mean confidence of the wrong
    predictions, share of correct inputs fooled, share below the outlier threshold (of all
    inputs and of the fooled ones). FGSM is deterministic: --seed is only recorded.

    Example: kmtools attack fgsm model.pt --arch smallcnn --data mnist --eps 0,0.05,0.1,0.2
    --compare gauss.safetensors --gate "fgsm.min_accuracy>=0.3"
    """
    from kmtools.attacks import parse_eps
    from kmtools.runs.attacks import run_fgsm

    out = start(a.output)
    eps_l = parse_eps(eps)
    with attack_run("fgsm", out, a) as (ar, attacked):
        res = run_fgsm(attacked, ar, eps=eps_l, clip=clip, batch_size=a.run.batch_size)
    show(out, res, a.output)
