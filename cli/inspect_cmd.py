"""``kmtools inspect``: what a checkpoint is, and Theorem 1 checked on data."""

from __future__ import annotations

import typer
from rich.console import Console

from kmtools.centroids import theorem1_agreement
from kmtools.data import subset
from kmtools.features import extract
from kmtools.report.schema import envelope
from kmtools_cli._common import Timer, describe_model, device_of, open_data, open_model
from kmtools_cli._options import (
    ArchOpt,
    BatchOpt,
    DataOpt,
    DataRootOpt,
    DebugOpt,
    DeviceOpt,
    FormatOpt,
    HeadPathOpt,
    MeanOpt,
    ModelArg,
    NOpt,
    NormOpt,
    NumClassesOpt,
    QuietOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
)
from kmtools_cli._output import Output, kv_table


def inspect(
    model_path: ModelArg,
    arch: ArchOpt = None,
    head: HeadPathOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    norm: NormOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    split: SplitOpt = "test",
    n: NOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    fmt: FormatOpt = "human",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a checkpoint's architecture, feature dim, classes, head, normalisation and size.

    With --data, check Theorem 1 on those inputs: the nearest equidistant centroid must
    equal the network's argmax on every input (agreement 100%).

    Example: kmtools inspect model.pt --arch resnet18 --data cifar10 -n 500
    """
    out = Output(fmt, quiet)
    timer = Timer()
    with timer("load"):
        model = open_model(model_path, arch=arch, head=head, num_classes=num_classes,
                           trust=trust_checkpoint, norm=norm, mean=mean, std=std)
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "outlier_threshold": model.threshold,
    }
    data_doc = None
    dev = device_of(device)
    if data:
        info = open_data(data, root=data_root, split=split, model=model)
        info = subset(info, n if n is not None else min(len(info), 1000))
        data_doc = info.to_dict()
        with timer("features"), out.progress("features", len(info)) as prog:
            feats = extract(model, info.dataset, batch_size=batch_size, device=dev, progress=prog)
        acc = float((feats.predictions == feats.labels).double().mean())
        results["accuracy"] = acc
        results["n"] = len(feats)
        if model.head_kind == "softmax" and meta["head_path"] is not None:
            results["theorem1_agreement"] = theorem1_agreement(feats.features, feats.scores, model.head)  # type: ignore[arg-type]
    doc = envelope("inspect", results, model=describe_model(model_path, model), data=data_doc,
                   device=dev, timings=timer.timings)

    def human(con: Console) -> None:
        rows = [(k, v) for k, v in results.items() if k != "classes"]
        rows.insert(4, ("classes", ", ".join(model.classes[:12]) + (" …" if len(model.classes) > 12 else "")))
        con.print(kv_table(f"{model_path}", rows))

    out.emit(doc, human)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
