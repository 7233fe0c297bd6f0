"""The attack runs behind ``kmtools attack``: one ``run_*`` per attack, each taking the
attacked models and inputs (:class:`Attacked`) and an :class:`AttackRun` (out folder, records
and ``--resume``, signals, torchrun ranks) and returning an :class:`AttackRunResult` whose
``to_dict()`` is the command's JSON document. Terminal and report views of these documents
are in :mod:`kmtools.report.views` (``attack-onepixel``, ``attack-fgsm``, ...)."""

from kmtools.runs.attacks.base import (
    Attacked,
    AttackRun,
    AttackRunResult,
    parse_lp,
    parse_target,
)
from kmtools.runs.attacks.deepfool import run_deepfool
from kmtools.runs.attacks.external import run_external
from kmtools.runs.attacks.fgsm import run_fgsm
from kmtools.runs.attacks.onepixel import onepixel_rules, run_onepixel
from kmtools.runs.attacks.pgd import pgd_options, run_pgd

__all__ = [
    "AttackRun", "AttackRunResult", "Attacked", "onepixel_rules", "parse_lp", "parse_target",
    "pgd_options", "run_deepfool", "run_external", "run_fgsm", "run_onepixel", "run_pgd",
]
