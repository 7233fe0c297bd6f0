"""``kmtools tailor``: TailorNetwork (Algorithm 1) -> a Gauss network, exported with a summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from kmtools.errors import ConfigError
from kmtools.features import extract
from kmtools.io import write_json
from kmtools.models import KmModel, require_split, save_model
from kmtools.report.schema import envelope
from kmtools.tailor import HEADS as HEAD_KINDS
from kmtools.tailor import TailorConfig, check_train_from, init_distributed, tailor
from kmtools_cli._common import Timer, describe_model, device_of, open_model
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped
from kmtools_cli._output import fmt as fmtv


def _accuracy(model: KmModel, data: Any, batch: int, dev: torch.device, amp: bool) -> tuple[float, float]:
    from kmtools.models import head_confidences

    f = extract(model, data, batch_size=batch, device=dev, amp=amp)
    conf = head_confidences(model.head, f.scores).max(1).values
    return float((f.predictions == f.labels).double().mean()), float(conf.mean())


@grouped
def tailor_cmd(
    *,
    mo: ModelOptions,
    data: Annotated[DataOptions, Use(skip=("split",))],
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Fine-tuning epochs.")] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 0.01,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adamw.")] = "sgd",
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, onecycle or constant.")] = "cosine",
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = 5e-4,
    train_from: Annotated[str | None, typer.Option("--train-from", help="First backbone module to train (earlier ones stay frozen), e.g. layer3.")] = None,
    init: Annotated[str, typer.Option("--init", help="Centroid init: means, equidistant (Theorem 1) or kmeans.")] = "means",
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight λ of the cross-entropy on log κ (collapse/accuracy guard).")] = 1.0,
    gamma: Annotated[str, typer.Option("--gamma", help="κ = exp(-γ‖f-C‖²): 'auto' (1/mean within-class sq. distance) or a number (1 = paper).")] = "auto",
    centroid_update: Annotated[str, typer.Option("--centroid-update", help="epoch (class means of each epoch's features) or ema (also per batch).")] = "epoch",
    augment: Annotated[str, typer.Option("--augment", help="auto (crop+flip on images >= 28 px), none, crop-flip.")] = "auto",
    head_kind: Annotated[str, typer.Option("--head-kind", "--head-type", help="New head: gauss, rbf, rslvq or glvq (`--head glvq` works too).")] = "gauss",
    prototypes_per_class: Annotated[int, typer.Option("--prototypes-per-class", help="Prototypes per class (rslvq/glvq).")] = 1,
    temperature: Annotated[str, typer.Option("--temperature", help="Temperature T of the rbf head: 'auto' (T = 2σ², the RSLVQ width) or a number.")] = "auto",
    sigma: Annotated[float | None, typer.Option("--sigma", help="RSLVQ width σ (fitted when omitted).")] = None,
    squashing: Annotated[str, typer.Option("--squashing", help="GLVQ loss squashing: identity or sigmoid.")] = "identity",
    slope: Annotated[float, typer.Option("--slope", help="Slope of the GLVQ sigmoid squashing.")] = 1.0,
    proto_init: Annotated[str | None, typer.Option("--proto-init", help="Prototype init: means (M = 1) or kmeans (per class); default by M.")] = None,
    normaliser: Annotated[str, typer.Option("--normaliser", help="rbf responsibilities: softmax or entmax15.")] = "softmax",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/tailor-checkpoint.pt.")] = False,
    export_formats: Annotated[str, typer.Option("--export", help="Also export: comma list of pt2, onnx ('' for none).")] = "pt2,onnx",
    report: Annotated[bool, typer.Option("--report", help="Write OUT/report.html at the end.")] = False,
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"batch_size": 128})],
    output: OutputOptions,
) -> None:
    """Fine-tune a trained softmax network into a Gauss network (Algorithm 1, TailorNetwork).

    Features move onto their class centroid C = f(X)Y(YᵀY)⁻¹ (re-estimated every epoch) while
    a cross-entropy on the nearest-centroid logits keeps accuracy. Writes OUT/gauss.safetensors
    (kmtools format; OUT/KIND.safetensors for --head rbf/rslvq/glvq), OUT/gauss.pt2 and OUT/gauss.onnx, OUT/tailor.json and a per-epoch
    checkpoint for --resume. Runs under torchrun (DDP) with statistics summed across ranks.

    Example: kmtools tailor model.pt --arch resnet18 --norm cifar10 --data cifar10 --epochs 5 --out runs/r18
    """
    out = output.output()
    timer = Timer()
    dev = device_of(run.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    distributed = init_distributed(dev)
    rank = torch.distributed.get_rank() if distributed else 0
    out_dir = output.out or Path(f"{mo.path.stem}-gauss")
    head = mo.head
    if head in HEAD_KINDS:
        head_kind = head
    target = out_dir / f"{head_kind}.safetensors"
    if target.exists() and not (output.force or resume):
        raise ConfigError(f"{target} already exists: pass --force to overwrite it (or --resume)")
    g_val: float | None = None
    if gamma != "auto":
        try:
            g_val = float(gamma)
        except ValueError as exc:
            raise ConfigError(f"--gamma must be 'auto' or a number, not {gamma!r}") from exc
    if head in HEAD_KINDS:  # `--head glvq` (issue 7's spelling) names the new head's kind
        head_kind, head = head, None
    opts: dict[str, Any] = {}
    if head_kind in ("rslvq", "glvq", "rbf"):
        opts.update(prototypes_per_class=prototypes_per_class, init=proto_init)
    if head_kind == "rbf":
        t_val: float | None = None
        if temperature != "auto":
            try:
                t_val = float(temperature)
            except ValueError as exc:
                raise ConfigError(f"--temperature must be 'auto' or a number, not {temperature!r}") from exc
        opts.update(temperature=t_val, normaliser=normaliser)
    if head_kind == "rslvq":
        opts["sigma"] = sigma
    if head_kind == "glvq":
        opts.update(squashing=squashing, slope=slope)
    cfg = TailorConfig(
        epochs=epochs, lr=lr, optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
        batch_size=run.batch_size, train_from=train_from, init=init, ce_weight=ce_weight, gamma=g_val,
        centroid_update=centroid_update, augment=augment, amp=run.amp, channels_last=run.amp, seed=run.seed,
        head=head_kind, head_options=opts,
    )
    cfg.validate()
    with timer("load"):
        model = open_model(mo.path, **(mo.load_kwargs() | {"head": head}))
    require_split(model, "kmtools tailor")
    check_train_from(model.backbone, train_from)
    if model.head_kind != "softmax":
        raise ConfigError(f"{mo.path} already has a {model.head_kind} head: tailor starts from a softmax network")
    train = data.load(model, split="train")
    test = data.load(model, split="test", n=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with timer("evaluate_before"):
        acc0, conf0 = _accuracy(model, test.dataset, max(run.batch_size, 256), dev, run.amp)
    out.info(f"original: test accuracy {acc0:.4f}, mean softmax confidence {conf0:.3f}")
    with timer("tailor"), out.progress("tailor", epochs) as prog:
        res = tailor(model, train.dataset, cfg, device=dev, checkpoint=out_dir / "tailor-checkpoint.pt",
                     resume=resume, progress=prog,
                     log=out.info)
    gm = res.model
    with timer("evaluate_after"):
        acc1, conf1 = _accuracy(gm, test.dataset, max(run.batch_size, 256), dev, run.amp)
    results: dict[str, Any] = {
        "softmax": {"accuracy": acc0, "mean_confidence": conf0},
        "gauss" if head_kind == "gauss" else head_kind: {"accuracy": acc1, "mean_confidence": conf1,
                                                         "threshold": gm.threshold},
        "accuracy_change": acc1 - acc0,
        "gamma": float(getattr(gm.head, "gamma", float("nan"))),
        **res.to_dict(),
        "files": {},
    }
    if rank == 0:
        with timer("save"):
            save_model(gm, target, force=True)
            results["files"]["kmtools"] = str(target)
            formats = [f for f in export_formats.replace(" ", "").split(",") if f]
            if formats:
                from kmtools.export import export

                ex = export(gm, target, formats=tuple(formats), force=True)
                results["export"] = ex.to_dict()
        doc = envelope("tailor", results, model=describe_model(mo.path, model), data=train.to_dict(),
                       seed=run.seed, device=dev, timings=timer.timings)
        write_json(out_dir / "tailor.json", doc, force=True)
        if report:
            from kmtools.report.collect import load_run
            from kmtools.report.render import write_report

            write_report(load_run([out_dir]), out_dir / "report.html", force=True)
            results["files"]["report"] = str(out_dir / "report.html")

        def human(con: Console) -> None:
            t = Table(title=f"tailor: {mo.path} -> {target}", title_justify="left")
            t.add_column("")
            t.add_column("softmax (original)")
            t.add_column(f"{head_kind} network")
            t.add_row("test accuracy", fmtv(acc0), fmtv(acc1))
            t.add_row("mean confidence", fmtv(conf0), fmtv(conf1))
            t.add_row("epochs", "", str(len(res.history)))
            con.print(t)

        out.emit(doc, human)
        out.gate(output.gate, doc)
    if distributed:
        torch.distributed.destroy_process_group()


def register(app: typer.Typer) -> None:
    app.command("tailor")(tailor_cmd)
