"""``kmtools demo``: the whole pipeline on bundled data, on the CPU, in under a minute.

The pipeline is one library call, :func:`kmtools.runs.demo.run_demo`: it trains the small CNN
on scikit-learn's ``digits``, then does what ``tailor``, ``export``, ``evaluate --compare``,
``attack onepixel --compare``, ``attack fgsm --compare`` and ``report`` do, printing each as
the command a user would type (so they can be copied).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmtools_cli._options import OutputOptions, RunOptions, Use, grouped

DemoOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")]


@grouped
def demo(
    *,
    run: Annotated[RunOptions, Use(skip=("device", "batch_size"))],
    output: Annotated[OutputOptions, Use(skip=("gate",), defaults={"out": Path("demo-out")}, options={"out": DemoOutOpt})],
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of plain training (tailoring uses 4).")] = 8,
    attack_n: Annotated[int, typer.Option("--attack-n", help="Test images for the one-pixel attack.")] = 60,
) -> None:
    """Run the whole pipeline on bundled digits on the CPU (< 1 minute) and write a report.

    Trains a small CNN (softmax), tailors it into a Gauss network, evaluates both side by
    side (accuracy, confidence, outliers, noise AUROC), attacks both with one-pixel and FGSM,
    exports both (kmtools .safetensors, .pt2, ONNX) and writes OUT/summary.md and
    OUT/report.html. Each step is printed as the command you would type.

    Example: kmtools demo --out demo-out --force
    """
    from kmtools.runs.demo import cell, paired_cell, run_demo

    out = output.output()
    out_dir = output.out or Path("demo-out")
    doc = run_demo(out_dir, seed=run.seed, epochs=epochs, attack_n=attack_n, force=output.force, info=out.info)
    res = doc["results"]

    def human(con: Console) -> None:
        t = Table(title=f"kmtools demo ({res['seconds']:.0f} s): {out_dir}", title_justify="left")
        for col in ("", "softmax [95% CI]", "Gauss network [95% CI]", "Gauss − softmax (paired)"):
            t.add_column(col)
        for r in res["rows"]:
            t.add_row(r["metric"], cell(r, "softmax"), cell(r, "gauss"), paired_cell(r))
        con.print(t)
        con.print(res["verdict"])
        con.print(f"open {out_dir / 'report.html'} (or summary.md); models in {out_dir}")

    out.emit(doc, human)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
