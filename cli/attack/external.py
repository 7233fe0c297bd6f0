"""``kmtools attack torchattacks:NAME``: any torchattacks attack (:func:`kmtools.runs.attacks.run_external`)."""

from __future__ import annotations

from typing import Annotated

import typer

from kmtools_cli._options import grouped
from kmtools_cli.attack._shared import Attack500, attack_run, show, start

SpecArg = Annotated[str, typer.Argument(help="torchattacks:NAME, e.g. torchattacks:PGD or torchattacks:CW.", show_default=False)]
KwOpt = Annotated[list[str] | None, typer.Option("--kw", help="Keyword argument of the attack, key=value (Python literal or a fraction such as eps=8/255). Repeatable.", show_default=False)]


@grouped
def attack_external(*, spec: SpecArg, kw: KwOpt = None, a: Attack500) -> None:
    """Any torchattacks attack around MODEL: kmtools attack torchattacks:NAME MODEL [--kw key=value].

    The attack sees the model's decision scores (logits for a softmax network, log κ for a
    Gauss network) on inputs in [0, 1]. Reported per model: robust accuracy, attack rate
    (fooled / clean-correct) and effective rate (fooled and not flagged as an outlier), each
    with its 95% Wilson interval; --compare adds paired differences with McNemar's test.
    torchattacks is an optional extra, installed apart: pip install --no-deps torchattacks.

    Example: kmtools attack torchattacks:PGD model.pt --data cifar10 -n 200 --kw eps=8/255
    --kw alpha=2/255 --kw steps=10 --compare gauss.safetensors
    """
    from kmtools.attacks.external import attack_class, parse_kw, split_name
    from kmtools.runs.attacks import run_external

    out = start(a.output)
    name = split_name(spec)
    kwargs = parse_kw(kw)
    attack_class(name)  # a missing torchattacks or an unknown attack fails before any model is loaded
    cmd = f"attack torchattacks:{name}"
    with attack_run(f"torchattacks-{name}", out, a, command=cmd, n=500) as (ar, attacked):
        res = run_external(attacked, ar, name=name, kwargs=kwargs, batch_size=a.run.batch_size)
    show(out, res, a.output)
