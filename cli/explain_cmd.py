"""``kmtools explain``: NEON explanations of cluster and Gauss-class assignments, with Table I's AUC.

Paper: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). Without MODEL, k-means runs on the data itself
(Sec. II; kernel k-means with --kernel, Sec. III); with MODEL, on a layer's activations or
the class centroids of a Gauss network (Sec. IV). The work is done by
:func:`kmtools.explain.explain_data` / :func:`kmtools.explain.explain_network`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kmtools.errors import ConfigError
from kmtools_cli._common import device_of
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import grid_table, kv_table

JSON_NAME = "explain.json"  # the names of kmtools.runs.explain (not imported here: fast --help)
NPZ_NAME = "relevance.npz"
GRID_NAME = "heatmaps.png"
#: the names of kmtools.explain.METHODS, stated here for the same reason (a test keeps them equal)
METHODS = ("random", "x2", "PDA0", "PDAcs", "grad2", "gradxinput", "IG-10", "NCA", "NEON")

if TYPE_CHECKING:
    from rich.console import Console

ModelOptArg = Annotated[Path | None, typer.Argument(metavar="MODEL", help="Checkpoint (optional). Without it, k-means runs on the data itself; with it, on a layer's features (or a Gauss network's class centroids).", show_default=False)]
NeonOpt = Annotated[bool, typer.Option("--neon", help="Explain with NEON (the default; the relevance saved and plotted is NEON's, --evaluate scores the baselines too).")]
SplitAllOpt = Annotated[str | None, typer.Option("--split", help="train, test or all (default: all without MODEL, as in the paper's Table I; test with MODEL).", show_default=False)]
KOpt = Annotated[int | None, typer.Option("-k", "--clusters", help="Number of k-means clusters. Default: the elbow method without MODEL; the number of classes with MODEL (a Gauss network uses its class centroids unless -k or --layer is given).", show_default=False)]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="Module of the backbone whose activations are clustered (see `kmtools inspect`); default the penultimate features.", show_default=False)]
KernelOpt = Annotated[int, typer.Option("--kernel", help="Without MODEL: kernel k-means with this many support vectors per cluster (paper Sec. III, App. F); 0 = standard k-means.")]
StandardizeOpt = Annotated[bool | None, typer.Option("--standardize/--no-standardize", help="Without MODEL: scale each feature to mean 0, std 1 first (paper App. H). Default: on for tabular data, off for images.", show_default=False)]
BetaOpt = Annotated[float | None, typer.Option("--beta", help="Stiffness of the min-take-most rule (Eq. 2); default 1/E(f_c) over the clustered data (Eq. 3).", show_default=False)]
GammaOpt = Annotated[float, typer.Option("--gamma", help="LRP-γ of the convolution layers (paper: 0.25 in VGG blocks 1–3, 0.1 beyond).")]
LrpEngineOpt = Annotated[str, typer.Option("--lrp-engine", help="With MODEL: LRP engine, auto (the fast engine when it covers every layer: conv, linear, ReLU, pooling, BatchNorm, skip sums; zennit otherwise), fast or zennit. Same relevance to float rounding.")]
FitNOpt = Annotated[int, typer.Option("--fit-n", help="With MODEL: inputs whose activations are clustered and give β (and the AUC of --evaluate); -n inputs are explained.")]
EvaluateOpt = Annotated[bool, typer.Option("--evaluate", help="Score NEON and every baseline with the paper's Algorithm 1 (feature-adding AUC in [0, 100], Table I).")]
MethodsOpt = Annotated[str | None, typer.Option("--methods", help=f"Comma-separated methods for --evaluate: {', '.join(METHODS)} (default: all that apply).", show_default=False)]
RepeatsOpt = Annotated[int, typer.Option("--repeats", help="Runs of the imputation sampler averaged per AUC (--evaluate).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Evaluate each AUC curve at this many feature counts only (faster for many features).", show_default=False)]
OutDirOpt = out_dir(f"Folder for {JSON_NAME}, {NPZ_NAME} and heatmap PNGs ({GRID_NAME}, cluster_<k>.png).")


@grouped
def explain(
    *,
    mo: Annotated[ModelOptions, Use(options={"path": ModelOptArg}, defaults={"path": None})],
    ds: Annotated[DataOptions, Use(options={"split": SplitAllOpt}, defaults={"split": None})],
    neon: NeonOpt = True,
    k: KOpt = None,
    layer: LayerOpt = None,
    kernel: KernelOpt = 0,
    standardize: StandardizeOpt = None,
    beta: BetaOpt = None,
    gamma: GammaOpt = 0.25,
    lrp_engine: LrpEngineOpt = "auto",
    fit_n: FitNOpt = 1000,
    evaluate: EvaluateOpt = False,
    methods: MethodsOpt = None,
    repeats: RepeatsOpt = 10,
    steps: StepsOpt = None,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Explain cluster assignments with NEON: which input features put each input in its cluster.

    Without MODEL, k-means (K by -k, else the elbow method) runs on the data itself, each
    feature standardised; NEON neuralizes it (f_c = min over k≠c of linear functions,
    Prop. 1) and propagates f_c to the features (min-take-most with β = 1/E(f_c), then the
    midpoint rule; the relevance of an input sums to f_c). With MODEL, the clusters live on
    a layer of the network: k-means on its activations (--layer, -k) or, for a Gauss
    network, its class centroids; relevance reaches the pixels through zennit's LRP rules
    (LRP-γ in convolutions; --lrp-engine auto evaluates them with a faster engine where it can). --evaluate scores NEON and the baselines (random, x², PDA,
    (∇f)², ∇f⊙x, IG-10, NCA) with the paper's feature-adding AUC (Table I): KDE imputation
    for data, zero imputation at a network's cluster layer. Gate on 'auc.neon>=80' etc.

    Example: kmtools explain --neon --data wine -k 6 --evaluate

    Example: kmtools explain gauss.safetensors --neon --data digits -n 16 --out runs/explain
    """
    from kmtools.explain.fastlrp import ENGINES
    from kmtools.runs import RunContext, check_gates
    from kmtools.runs.explain import check_outputs, load_split, parse_methods, run_explain

    out = output.output()
    check_gates(output.gate)  # a malformed gate fails before any work (exit 2)
    del neon  # NEON is the explainer; the flag keeps the documented shape `kmtools explain --neon`
    _check(mo.path, repeats=repeats, fit_n=fit_n, kernel=kernel, beta=beta, layer=layer, standardize=standardize)
    chosen = parse_methods(methods)
    if chosen is not None and not evaluate:
        raise ConfigError("--methods selects what --evaluate scores: add --evaluate")
    if output.out is not None:
        check_outputs(output.out, output.force)
    if lrp_engine not in ENGINES:
        raise ConfigError(f"--lrp-engine must be one of {', '.join(ENGINES)}, got {lrp_engine!r}")
    if mo.path is not None and lrp_engine == "zennit":
        from kmtools.explain.deep import require_zennit

        require_zennit()  # a clear message naming `pip install kmtools[explain]` before any work
    split = ds.split or ("all" if mo.path is None else "test")
    dev = device_of(run.device) if mo.path is not None else "cpu"
    with RunContext("explain", out_dir=output.out, force=output.force, seed=run.seed, device=dev,
                    progress=out.progress, info=out.info, warn=out.warn) as ctx:
        with ctx.timer("load"):
            model = mo.load() if mo.path is not None else None
            info = load_split(ds.name, ds.data_root, split, ds.image_size)
        res = run_explain(
            ctx, info, model=model, model_path=mo.path, n=ds.n, k=k, layer=layer, kernel=kernel,
            standardize=standardize, beta=beta, gamma=gamma, lrp_engine=lrp_engine, fit_n=fit_n, evaluate=evaluate,
            methods=chosen, repeats=repeats, steps=steps, batch_size=run.batch_size,
        )

    def human(con: Console) -> None:
        from kmtools.report.views.explain import auc_grid, summary

        con.print(kv_table(*summary(res.doc)))
        grid = auc_grid(res.doc["results"])
        if grid is not None:
            con.print(grid_table(grid))

    out.emit(res.doc, human)
    out.gate(output.gate, res.doc)


def _check(model: Path | None, *, repeats: int, fit_n: int, kernel: int, beta: float | None, layer: str | None,
           standardize: bool | None) -> None:
    """One-line errors for values and combinations the options cannot express."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be ≥ 1, got {repeats}")
    if fit_n < 2:
        raise ConfigError(f"--fit-n must be ≥ 2, got {fit_n}")
    if kernel < 0:
        raise ConfigError(f"--kernel must be ≥ 0 (support vectors per cluster), got {kernel}")
    if beta is not None and not beta >= 0:
        raise ConfigError(f"--beta must be ≥ 0, got {beta}")
    if model is None and layer is not None:
        raise ConfigError("--layer needs a MODEL: without one, k-means runs on the data itself")
    if model is not None and (kernel or standardize is not None):
        raise ConfigError("--kernel and --standardize apply without MODEL (k-means on the data itself)")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
