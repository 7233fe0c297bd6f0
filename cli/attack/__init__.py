"""``kmtools attack onepixel|fgsm|pgd|deepfool|torchattacks:NAME``: attack rates and confidences,
side by side with ``--compare``.

Each command checks its options, opens the run with the models and inputs
(:func:`~kmtools_cli.attack._shared.attack_run`), calls one library run
(:mod:`kmtools.runs.attacks`) and shows the document through its view
(:mod:`kmtools.report.views`).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from kmtools_cli.attack.deepfool import attack_deepfool
from kmtools_cli.attack.external import attack_external
from kmtools_cli.attack.fgsm import attack_fgsm
from kmtools_cli.attack.onepixel import attack_onepixel
from kmtools_cli.attack.pgd import attack_pgd


class _AttackGroup(TyperGroup):
    """``kmtools attack torchattacks:NAME ...`` is ``kmtools attack external torchattacks:NAME ...``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0].lower().startswith("torchattacks:"):
            cmd = self.get_command(ctx, "external")
            return "external", cmd, args
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_AttackGroup,
    name="attack",
    help="Adversarial attacks: one-pixel (Su et al., batched differential evolution), FGSM and PGD against ε, "
    "DeepFool (minimal perturbation), torchattacks:NAME (any torchattacks attack). --compare attacks a "
    "second model on the same inputs.",
    no_args_is_help=True,
)
for _name, _command in (("onepixel", attack_onepixel), ("fgsm", attack_fgsm), ("deepfool", attack_deepfool),
                        ("pgd", attack_pgd), ("external", attack_external)):
    app.command(_name)(_command)


def register(root: typer.Typer) -> None:
    """Add the ``attack`` group to the root app: ``kmtools attack onepixel|fgsm|pgd|deepfool|external``."""
    root.add_typer(app, name="attack")
