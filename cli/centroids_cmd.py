"""``kmtools centroids``: equidistant (Theorem 1), class-mean or k-means centroids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from kmtools.errors import ConfigError
from kmtools_cli._common import describe_model, device_of
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped
from kmtools_cli._output import Output, kv_table

if TYPE_CHECKING:  # the library (and torch) loads when the command runs, so that --help stays light
    import torch
    from rich.console import Console

    from kmtools.features import Features
    from kmtools.models import KmModel

METHODS = ("equidistant", "means", "kmeans")


@grouped
def centroids(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("workers",), defaults={"split": "train"})],
    method: Annotated[str, typer.Option("--method", "-m", help="equidistant (Theorem 1), means (class means) or kmeans.")] = "means",
    k: Annotated[int | None, typer.Option("-k", help="Clusters for --method kmeans (default: number of classes).")] = None,
    n_init: Annotated[int, typer.Option("--n-init", help="k-means restarts.")] = 3,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(skip=("gate",))],
) -> None:
    """Compute centroids in the penultimate feature space and write them with a summary.

    equidistant: Z = W + v from the head (Theorem 1, bias folded in as an extra dimension);
    means: C = f(X) Y (YᵀY)⁻¹; kmeans: k-means++ and batched Lloyd with restarts.
    The file (.safetensors) holds 'centroids' and, for kmeans, 'labels'.

    Example: kmtools centroids model.pt --arch resnet18 --data cifar10 --method means --out c.safetensors
    """
    from kmtools.features import extract
    from kmtools.io import write_with
    from kmtools.models import require_split
    from kmtools.report.schema import envelope
    from kmtools.runs import Timer

    out = output.output()
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if output.out is not None and output.out.exists() and not output.force:
        raise ConfigError(f"{output.out} already exists: pass --force to overwrite it")
    timer = Timer()
    dev = device_of(run.device)
    with timer("load"):
        model = mo.load()
    require_split(model, "kmtools centroids")
    info = ds.load(model)
    with timer("features"), out.progress("features", len(info)) as prog:
        feats = extract(model, info.dataset, batch_size=run.batch_size, device=dev, workers=ds.workers, progress=prog)
    with timer("centroids"):
        results, tensors = _compute(method, model, feats, k=k, n_init=n_init, seed=run.seed, device=dev, out=out)
    if output.out is not None:
        from safetensors.torch import save_file

        write_with(output.out, lambda tmp: save_file(tensors, str(tmp), metadata={"method": method}), output.force)
        results["out"] = str(output.out)
    doc = envelope("centroids", results, model=describe_model(mo.path, model), data=info.to_dict(),
                   seed=run.seed, device=dev, timings=timer.timings)

    def human(con: Console) -> None:
        rows = [(k2, v) for k2, v in results.items() if k2 != "per_class_spread"]
        spreads = results.get("per_class_spread")
        if isinstance(spreads, list):
            rows.append(("per-class spread", [round(s, 3) if s is not None else None for s in spreads]))
        con.print(kv_table(f"centroids ({method})", rows))

    out.emit(doc, human)


def _compute(method: str, model: KmModel, feats: Features, *, k: int | None, n_init: int, seed: int,
             device: torch.device, out: Output) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The centroids of ``method`` on the features, with the summary of the document and the
    tensors of the file (``centroids``; ``labels`` for kmeans)."""
    from kmtools.centroids import augment, class_means, equidistant, kmeans, nearest, spread, theorem1_agreement

    results: dict[str, Any] = {"method": method, "n": len(feats), "feature_dim": feats.features.shape[1]}
    tensors: dict[str, torch.Tensor] = {}
    if method == "equidistant":
        if model.head_kind != "softmax":
            raise ConfigError("--method equidistant needs a softmax model (a final nn.Linear head)")
        eq = equidistant(model.head)  # type: ignore[arg-type]
        c = eq.centroids.float()
        f_space = augment(feats.features)
        results["theorem1_agreement"] = theorem1_agreement(feats.features, feats.scores, model.head)  # type: ignore[arg-type]
        results["norm_spread"] = eq.norm_spread
        results["note"] = "centroids live in the bias-augmented space [f(x), 1] (Theorem 1 proof)"
        assign = nearest(f_space.double(), eq.centroids).long()
    elif method == "means":
        c = class_means(feats.features, feats.labels, model.num_classes).float()
        f_space = feats.features
        assign = nearest(f_space, c)
        results["nearest_mean_accuracy"] = float((assign == feats.labels).double().mean())
    else:
        if k is not None and k < 1:
            raise ConfigError("-k must be at least 1 (or leave it out for one cluster per class)")
        kk = k or model.num_classes
        with out.progress("k-means restarts", n_init) as prog:
            km = kmeans(feats.features, kk, n_init=n_init, seed=seed, device=device, progress=prog)
        c = km.centroids.float().cpu()
        f_space = feats.features
        assign = km.labels.cpu()
        results["k"] = kk
        results["inertia"] = km.inertia
        results["n_iter"] = km.n_iter
        tensors["labels"] = assign.clone()
    results["network_accuracy"] = float((feats.predictions == feats.labels).double().mean())
    labels = feats.labels if method != "kmeans" else assign
    results.update(spread(f_space.float(), labels, c.float()))
    tensors["centroids"] = c.contiguous()
    return results, tensors


def register(app: typer.Typer) -> None:
    app.command("centroids")(centroids)
