"""``kmtools inspect``: what a checkpoint is, and Theorem 1 checked on data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kmtools_cli._common import describe_model, device_of, open_data
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped
from kmtools_cli._output import kv_table

if TYPE_CHECKING:
    from rich.console import Console


@grouped
def inspect(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("workers",))],
    run: Annotated[RunOptions, Use(skip=("seed",))],
    output: Annotated[OutputOptions, Use(skip=("out", "force", "gate"))],
) -> None:
    """Show a checkpoint's architecture, feature dim, classes, head, normalisation and size.

    With --data, check Theorem 1 on those inputs: the nearest equidistant centroid must
    equal the network's argmax on every input (agreement 100%).

    Example: kmtools inspect model.pt --arch resnet18 --data cifar10 -n 500
    """
    from kmtools.centroids import theorem1_agreement
    from kmtools.data import subset
    from kmtools.features import extract
    from kmtools.models.checkpoint import norm_source
    from kmtools.report.schema import envelope
    from kmtools.runs import Timer

    out = output.output()
    timer = Timer()
    with timer("load"):
        model = mo.load()
    meta = model.meta()
    results: dict[str, object] = {
        "arch": meta["arch"],
        "head_kind": meta["head_kind"],
        "head_path": meta["head_path"],
        "num_classes": model.num_classes,
        "classes": model.classes,
        "feature_dim": meta["feature_dim"],
        "input_shape": meta["input_shape"],
        "mean": meta["mean"],
        "std": meta["std"],
        "normalisation": norm_source(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "outlier_threshold": model.threshold,
    }
    data_doc = None
    dev = device_of(run.device)
    if ds.name:
        info = open_data(ds.name, root=ds.data_root, split=ds.split, model=model, image_size=ds.image_size)
        info = subset(info, ds.n if ds.n is not None else min(len(info), 1000))
        data_doc = info.to_dict()
        with timer("features"), out.progress("features", len(info)) as prog:
            feats = extract(model, info.dataset, batch_size=run.batch_size, device=dev, workers=ds.workers,
                            progress=prog)
        acc = float((feats.predictions == feats.labels).double().mean())
        results["accuracy"] = acc
        results["n"] = len(feats)
        if model.head_kind == "softmax" and meta["head_path"] is not None:
            results["theorem1_agreement"] = theorem1_agreement(feats.features, feats.scores, model.head)  # type: ignore[arg-type]
    doc = envelope("inspect", results, model=describe_model(mo.path, model), data=data_doc,
                   device=dev, timings=timer.timings)

    def human(con: Console) -> None:
        rows = [(k, v) for k, v in results.items() if k != "classes"]
        rows.insert(4, ("classes", ", ".join(model.classes[:12]) + (" …" if len(model.classes) > 12 else "")))
        con.print(kv_table(f"{mo.path}", rows))

    out.emit(doc, human)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
