"""``kmtools explain``: NEON explanations of cluster and Gauss-class assignments, with Table I's AUC.

Paper: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). Without MODEL, k-means runs on the data itself
(Sec. II; kernel k-means with --kernel, Sec. III); with MODEL, on a layer's activations or
the class centroids of a Gauss network (Sec. IV). The work is done by
:func:`kmtools.explain.explain_data` / :func:`kmtools.explain.explain_network`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from torch.utils.data import ConcatDataset

from kmtools.data import DataInfo, load_dataset, subset
from kmtools.data.registry import check_compatible
from kmtools.errors import ConfigError, OutputExistsError
from kmtools.explain import METHODS, TABLE_I_WINER, NeonRun, auc_key, explain_data, explain_network
from kmtools.explain.deep import require_zennit
from kmtools.explain.fastlrp import ENGINES
from kmtools.explain.plots import feature_bars, heatmap_grid
from kmtools.features import as_tensors, loader
from kmtools.io import write_json, write_with
from kmtools.report import gates
from kmtools.report.schema import envelope
from kmtools_cli._common import Timer, describe_model, device_of
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import kv_table

JSON_NAME = "explain.json"
NPZ_NAME = "relevance.npz"
GRID_NAME = "heatmaps.png"
GRID_MAX = 32  # inputs shown in heatmaps.png
CLUSTER_MAX = 16  # members shown per cluster_<k>.png
LABELS = {"x2": "x²", "grad2": "(∇f)²", "gradxinput": "∇f⊙x"}

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


def _load(name: str | None, root: Path | None, split: str, image_size: str | None = None) -> DataInfo:
    """``--data`` for one split, or both concatenated for ``--split all``."""
    if not name:
        raise ConfigError("this command needs --data NAME|PATH (e.g. --data wine)")
    if split != "all":
        return load_dataset(name, root=root, split=split, image_size=image_size)
    tr = load_dataset(name, root=root, split="train", image_size=image_size)
    te = load_dataset(name, root=root, split="test", image_size=image_size)
    if tr.source == te.source and len(tr) == len(te) and tr.fingerprint() == te.fingerprint():
        return tr  # a source without splits (e.g. an .npz with plain x, y)
    return DataInfo(ConcatDataset([tr.dataset, te.dataset]), tr.name, "all", tr.classes, tr.input_shape,
                    tr.source, tr.mean, tr.std, tr.image_size)


def _tensors(info: DataInfo, limit: int | None = None) -> torch.Tensor:
    """The inputs of ``info`` (the first ``limit``) as one float tensor."""
    if limit is not None and limit < len(info):
        info = subset(info, limit)
    pair = as_tensors(info.dataset)
    if pair is not None:
        return pair[0].float()
    xs = [x for x, _ in loader(info.dataset, 256, torch.device("cpu"))]
    return torch.cat(xs).float()


def _feature_names(info: DataInfo, d: int) -> list[str]:
    if info.name == "wine" and d == 13:
        from sklearn.datasets import load_wine

        return list(load_wine().feature_names)
    return [f"x{i}" for i in range(d)]


def _methods(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    by_key = {auc_key(m): m for m in METHODS} | {m.lower(): m for m in METHODS}
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.lower() not in by_key:
            raise ConfigError(f"unknown method {part!r} in --methods: choose from {', '.join(METHODS)}")
        out.append(by_key[part.lower()])
    if not out:
        raise ConfigError("--methods is empty")
    return out


def _check_outputs(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder")
    if force or not out_dir.is_dir():
        return
    clash = [p for p in (out_dir / JSON_NAME, out_dir / NPZ_NAME, out_dir / GRID_NAME) if p.exists()]
    clash += sorted(out_dir.glob("cluster_*.png"))
    if clash:
        raise OutputExistsError(f"{clash[0]} already exists: pass --force to overwrite it (or another --out)")


def _write_files(run: NeonRun, out_dir: Path, names: list[str], force: bool) -> dict[str, Any]:
    """relevance.npz and the PNGs; returns their paths for the JSON document."""
    files: dict[str, Any] = {}
    arrays = run.arrays()

    def save_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz' to the temp name
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool

    files["npz"] = str(write_with(out_dir / NPZ_NAME, save_npz, force))
    pngs: list[str] = []
    c = run.assignments
    image = run.inputs.dim() == 4
    if image:
        shown = min(GRID_MAX, len(c))
        titles = [f"#{i} c={int(c[i])}" for i in range(shown)]
        pngs.append(str(heatmap_grid(out_dir / GRID_NAME, run.inputs[:shown], run.relevance[:shown],
                                     titles=titles, force=force)))
    for k in range(run.num_clusters):
        members = torch.nonzero(c == k).view(-1)
        if members.numel() == 0:
            continue
        path = out_dir / f"cluster_{k}.png"
        if image:
            sel = members[:CLUSTER_MAX]
            pngs.append(str(heatmap_grid(path, run.inputs[sel], run.relevance[sel],
                                         titles=[f"#{int(i)}" for i in sel], force=force)))
        else:
            rel = run.relevance[members].reshape(members.numel(), -1)
            title = f"cluster {k} ({members.numel()} inputs): mean relevance"
            pngs.append(str(feature_bars(path, rel, names, title=title, force=force)))
    files["png"] = pngs
    return files


def _auc_table(run: NeonRun, reference: dict[str, float] | None) -> Table:
    """Table I as rows per method (narrow terminals): kmtools' AUC, and the paper's where it applies."""
    assert run.auc is not None
    where = f" at layer {run.layer}" if run.layer != "input" else ""
    t = Table(title=f"feature-adding AUC{where} (Algorithm 1, {run.evaluation.get('imputation')} imputation, "
              f"{run.evaluation.get('repeats')} repeats; higher is better)", title_justify="left")
    t.add_column("method", style="bold")
    t.add_column("kmtools", justify="right")
    if reference is not None:
        t.add_column("paper (Table I, winer)", justify="right")
    best = max(run.auc, key=run.auc.__getitem__)
    for m, v in run.auc.items():
        cells = [f"{v:.2f}" + (" ◀ best" if m == best else "")]
        if reference is not None:
            cells.append(f"{reference[m]:.2f}" if m in reference else "—")
        t.add_row(f"{LABELS.get(m, m)}  [dim]({auc_key(m)})[/dim]", *cells)
    return t


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
    out = output.output()
    for g in output.gate or []:
        gates.parse(g)  # a malformed gate fails before any work (exit 2)
    del neon  # NEON is the explainer; the flag keeps the documented shape `kmtools explain --neon`
    if repeats < 1:
        raise ConfigError(f"--repeats must be ≥ 1, got {repeats}")
    if fit_n < 2:
        raise ConfigError(f"--fit-n must be ≥ 2, got {fit_n}")
    if kernel < 0:
        raise ConfigError(f"--kernel must be ≥ 0 (support vectors per cluster), got {kernel}")
    if beta is not None and not beta >= 0:
        raise ConfigError(f"--beta must be ≥ 0, got {beta}")
    if mo.path is None and layer is not None:
        raise ConfigError("--layer needs a MODEL: without one, k-means runs on the data itself")
    if mo.path is not None and (kernel or standardize is not None):
        raise ConfigError("--kernel and --standardize apply without MODEL (k-means on the data itself)")
    chosen = _methods(methods)
    if chosen is not None and not evaluate:
        raise ConfigError("--methods selects what --evaluate scores: add --evaluate")
    if output.out is not None:
        _check_outputs(output.out, output.force)
    if lrp_engine not in ENGINES:
        raise ConfigError(f"--lrp-engine must be one of {', '.join(ENGINES)}, got {lrp_engine!r}")
    if mo.path is not None and lrp_engine == "zennit":
        require_zennit()  # a clear message naming `pip install kmtools[explain]` before any work
    timer = Timer()
    split_name = ds.split or ("all" if mo.path is None else "test")
    if split_name not in ("train", "test", "all"):
        raise ConfigError(f"--split must be train, test or all, not {split_name!r}")

    with out.progress("explain", None) as bar:
        def progress(stage: str, done: int, total: int) -> None:
            bar(done, total, stage)

        model = None
        if mo.path is None:
            with timer("load"):
                info = subset(_load(ds.name, ds.data_root, split_name, ds.image_size), ds.n)
                x = _tensors(info)
            std_on = standardize if standardize is not None else len(info.input_shape) == 1
            dev = torch.device("cpu")
            with timer("explain"):
                neon_run = explain_data(
                    x, k, standardize_features=std_on, kernel=kernel, beta=beta, seed=run.seed, evaluate=evaluate,
                    methods=chosen, repeats=repeats, steps=steps, progress=progress,
                )
        else:
            dev = device_of(run.device)
            with timer("load"):
                model = mo.load()
                info = _load(ds.name, ds.data_root, split_name, ds.image_size)
                check_compatible(info, model.num_classes, model.input_shape)
                n_explain = len(subset(info, ds.n)) if ds.n is not None else min(64, len(info))
                fit = _tensors(info, min(max(fit_n, n_explain), len(info)))
                x = fit[:n_explain]
            with timer("explain"):
                neon_run = explain_network(
                    model, x, fit, k=k, layer=layer, gamma=gamma, beta=beta, seed=run.seed, evaluate=evaluate,
                    methods=chosen, repeats=repeats, steps=steps, batch_size=run.batch_size, device=dev,
                    progress=progress, engine=lrp_engine,
                )

    results = neon_run.to_dict()
    results["mode"] = "data" if mo.path is None else "network"
    reference = None
    if (mo.path is None and info.name == "wine" and neon_run.num_clusters == 6 and neon_run.clusters == "kmeans"
            and results["n"] == 178 and results.get("standardized")):
        reference = TABLE_I_WINER
        results["reference"] = {"source": "paper Table I, row winer",
                                "auc": {auc_key(m): v for m, v in TABLE_I_WINER.items()}}
    if output.out is not None:
        with timer("write"):
            names = _feature_names(info, int(neon_run.inputs[0].numel()))
            results["files"] = _write_files(neon_run, output.out, names, output.force)
            results["files"]["json"] = str(output.out / JSON_NAME)
    data_doc = info.to_dict()
    model_doc = describe_model(mo.path, model) if mo.path is not None and model is not None else None
    doc = envelope("explain", results, model=model_doc,
                   data=data_doc, seed=run.seed, device=dev, timings=timer.timings)
    if output.out is not None:
        write_json(output.out / JSON_NAME, doc, output.force)
        out.info(f"wrote {output.out / JSON_NAME}, {output.out / NPZ_NAME} and {len(results['files']['png'])} PNGs")

    def human(con: Console) -> None:
        cons = results["conservation"]
        rows: list[tuple[str, Any]] = [
            ("clusters", f"{results['clusters']} (K = {results['k']}, {results['k_choice']})"),
            ("layer", results["layer"]),
            ("inputs explained", results["n"]),
            ("features", results.get("feature_dim", results["d"])),
            ("stiffness β", results["beta"]),
            ("mean f_c", results["mean_score"]),
            ("assigned (f_c > 0)", f"{100 * results['assigned_fraction']:.1f}%"),
            ("Σ R / f_c (median)", cons["ratio_median"]),
            ("cluster sizes", results["cluster_counts"]),
        ]
        if mo.path is not None:
            rows.insert(2, ("LRP", f"γ = {gamma} in convolutions, first layer {results.get('first_rule')}, "
                                   f"engine {results.get('lrp_engine')}"))
        else:
            rows.insert(2, ("standardised", results.get("standardized")))
        con.print(kv_table(f"NEON on {info.name} ({info.split})", rows))
        if neon_run.auc is not None:
            con.print(_auc_table(neon_run, reference))

    out.emit(doc, human)
    out.gate(output.gate, doc)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
