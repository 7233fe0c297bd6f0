"""``kmtools evaluate``: accuracy, confidence, outliers, OOD detection and Theorem 2, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kmtools_cli._common import device_of, fit_model
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import grid_table

if TYPE_CHECKING:
    from rich.console import Console

JSON_NAME = "evaluate.json"
NPZ_NAME = "evaluate.npz"
_LIP_HELP = (
    "Lipschitz modulus L_p of x -> f_p(x) for the Theorem 2 input-space bound: a number, or 'auto' (a layer-wise "
    "upper bound from kmtools.geometry). Without it only the feature-space margin is reported."
)

CompareOpt = Annotated[Path | None, typer.Option(
    "--compare", show_default=False,
    help="A second checkpoint (typically the Gauss network of MODEL), loaded with the same options "
    "and evaluated side by side on the same inputs.")]
OodOpt = Annotated[list[str] | None, typer.Option(
    "--ood", show_default=False,
    help="Out-of-distribution inputs: uniform or gaussian noise images (paper Fig. 3), a dataset "
    "(name or path; loaded with --image-size as --data is, then converted to the model's input shape), "
    "or none. Repeatable; default uniform.")]
NNoiseOpt = Annotated[int, typer.Option(
    "--n-noise", help="Number of noise images, and at most this many inputs of an OOD dataset.")]
LipschitzOpt = Annotated[str | None, typer.Option("--lipschitz", help=_LIP_HELP, show_default=False)]
PerClassOpt = Annotated[int, typer.Option(
    "--per-class", help=f"Prototypes and outliers kept per class (paper Fig. 3) in {NPZ_NAME}.")]
PROTOTYPE_HEADS = ("rbf", "rslvq", "glvq")  # as kmtools.runs.evaluate (not imported here: fast --help)
NBallOpt = Annotated[bool | None, typer.Option(
    "--nball/--no-nball", show_default=False,
    help="Also fit the n-ball reject option (prototype-layers paper, Sec. 7.4) on the train split of "
    "--data and report it as reject.nball: one ball per prototype (class means for a softmax head), "
    "radius covering 95% of its correctly classified training points. Default: on for prototype heads "
    f"({', '.join(PROTOTYPE_HEADS)}), off otherwise (it costs a pass over the training set).")]
ValDataOpt = Annotated[str | None, typer.Option(
    "--val-data", show_default=False,
    help="Validation data the recommended threshold is fitted on (it is then reported on --data, never "
    "on the set it was fitted on): NAME|PATH (its train split, as tailor's --val-data), or 'held-out' for "
    "tailor's hold-out of --data's train split (10%, at most 5,000, seed 0; the reference models never "
    "saw it). Default: a seeded half of --data, reported on the other half.")]
BaselinesOpt = Annotated[bool, typer.Option(
    "--baselines/--no-baselines",
    help="Score every --ood source with the softmax network's post-hoc baselines (MSP, max-logit, energy, "
    "Mahalanobis with tied covariance, k-NN on normalised features; fitted on --data's train split) beside "
    "the Gauss network's κ (--compare), with AUROC/AUPR bootstrap intervals and FPR@95, plus calibration "
    "(ECE with interval, NLL, Brier) of both.")]
FitNOpt = Annotated[int, typer.Option(
    "--fit-n", min=0, help="Training inputs (a seeded stratified-by-shuffle sample) the baselines are fitted "
    "on; 0 = all.")]
KnnOpt = Annotated[int, typer.Option("--knn-k", min=1, help="k of the k-NN baseline (Sun et al. 2022: 50).")]
OutDirOpt = out_dir(f"Folder for {JSON_NAME} (the result document) and {NPZ_NAME} (per-input arrays), "
                    "which `kmtools report` reads.")


@grouped
def evaluate(
    *,
    mo: Annotated[ModelOptions, Use(add=("compare",), options={"compare": CompareOpt})],
    ds: Annotated[DataOptions, Use(add=("download", "workers"))],
    ood: OodOpt = None,
    n_noise: NNoiseOpt = 1000,
    lipschitz: LipschitzOpt = None,
    per_class: PerClassOpt = 2,
    nball: NBallOpt = None,
    val_data: ValDataOpt = None,
    baselines: BaselinesOpt = False,
    fit_n: FitNOpt = 5000,
    knn_k: KnnOpt = 50,
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"amp": False})],
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Accuracy, mean confidence, outliers, OOD detection and the Theorem 2 margin of MODEL.

    Confidence is the softmax probability of the predicted class for a softmax network and
    the Gauss confidence κ for a Gauss network. An input is an outlier when that confidence
    is below the model's threshold (1/c unless the checkpoint sets one); the recommended
    threshold keeps 95% of the correctly classified inputs above it. OOD detection scores
    noise images (uniform in [0,1], or N(0.5, 0.25²) clipped) or a second dataset against
    the test inputs by the same confidence (AUROC, FPR at 95% TPR). With --compare, both
    models are evaluated on the same inputs and reported side by side under their head
    kinds, so gates like 'gauss.accuracy>=softmax.accuracy-0.003' work.

    Example: kmtools evaluate model.pt --arch resnet18 --data cifar10 --compare gauss.safetensors --out runs/
    """
    from kmtools.runs import RunContext, check_gates
    from kmtools.runs.evaluate import DataSpec, run_evaluate

    out = output.output()
    check_gates(output.gate)  # a malformed gate fails before any work (exit 2)
    with RunContext("evaluate", out_dir=output.out, force=output.force, seed=run.seed, device=device_of(run.device),
                    progress=out.progress, info=out.info, warn=out.warn) as ctx:
        ctx.paths(json=".json", npz=".npz")  # --out and --force checked before any work
        with ctx.timer("load"):
            model = mo.load()
            other = mo.load(mo.compare) if mo.compare is not None else None
            info = ds.load(model)
            if other is not None:
                fit_model(info, other)
        res = run_evaluate(
            ctx, model, info, DataSpec(str(ds.name), ds.data_root, ds.split, ds.download, ds.image_size),
            compare=other, model_path=mo.path, compare_path=mo.compare, ood=ood, n_noise=n_noise,
            lipschitz=lipschitz, per_class=per_class, nball=nball, val_data=val_data, baselines=baselines,
            fit_n=fit_n, knn_k=knn_k, batch_size=run.batch_size, amp=run.amp, workers=ds.workers,
        )

    def human(con: Console) -> None:
        from kmtools.report.views.evaluate import terminal_grids

        for grid in terminal_grids(res.per_model, res.baselines, f"{info.name} ({info.split}, {len(info)} inputs)"):
            con.print(grid_table(grid))

    out.emit(res.doc, human)
    out.gate(output.gate, res.doc)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
