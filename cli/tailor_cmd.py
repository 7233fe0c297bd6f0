"""``kmtools tailor``: TailorNetwork (Algorithm 1) -> a Gauss network, exported with a summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from rich.console import Console
from rich.table import Table

from kmtools.errors import ConfigError
from kmtools.io import write_json
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped
from kmtools_cli._output import Output
from kmtools_cli._output import fmt as fmtv

if TYPE_CHECKING:  # the library (and torch) loads when the command runs, so that --help stays light
    import torch

    from kmtools.tailor import TailorConfig


@dataclass
class TailorOptions:
    """Tailor's own options (the default ``Options`` panel of ``kmtools tailor --help``)."""

    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Fine-tuning epochs.")] = 5
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (after a linear warm-up); small, so a converged network is not restarted.")] = 0.002
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adamw.")] = "sgd"
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, onecycle or constant.")] = "cosine"
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = 5e-4
    train_from: Annotated[str | None, typer.Option("--train-from", help="First backbone module to train (earlier ones stay frozen), e.g. layer3.")] = None
    init: Annotated[str, typer.Option("--init", help="Centroid init: equidistant (exact Theorem-1 copy of the softmax head, then a ramp to the class means), means or kmeans.")] = "equidistant"
    centroids: Annotated[str, typer.Option("--centroids", help="fixed: the initial centroids stay and the features move towards them (default; keeps accuracy) | means: Algorithm 1's class-mean update every epoch (costs accuracy on the reference models, docs/tailor.md).")] = "fixed"
    ramp_epochs: Annotated[int, typer.Option("--ramp-epochs", help="With --centroids means: epochs over which the centroids move from the exact warm start to the class means.")] = 1
    scatter_weight: Annotated[float, typer.Option("--scatter-weight", help="Weight of the scatter term (features towards their centroid) against the cross-entropy; higher: tighter clusters, more accuracy at risk.")] = 0.02
    warmup: Annotated[float, typer.Option("--warmup", help="Share of the steps that warm the learning rate up from 0.")] = 0.1
    val_data: Annotated[str | None, typer.Option("--val-data", help="Validation data NAME|PATH for selection, early stopping and γ (default: --val-split of the training data).")] = None
    val_split: Annotated[float, typer.Option("--val-split", help="Hold out this stratified, seeded fraction of the training data (at most 5,000 items) for validation; 0 = none (harm check off).")] = 0.1
    max_drop: Annotated[float, typer.Option("--max-drop", help="Points of validation accuracy an exported epoch may lose against the softmax network.")] = 0.5
    patience: Annotated[int, typer.Option("--patience", help="Stop after this many epochs in a row lose more than --max-drop.")] = 2
    fpr: Annotated[float, typer.Option("--fpr", help="γ is fitted so that the outlier rule κ < 1/c flags this share of the validation data.")] = 0.05
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight λ of the cross-entropy on log κ (collapse/accuracy guard).")] = 1.0
    gamma: Annotated[str, typer.Option("--gamma", help="κ = exp(-γ‖f-C‖²) of the exported model: 'auto' (fitted on validation data, see --fpr) or a number (1 = paper).")] = "auto"
    augment: Annotated[str, typer.Option("--augment", help="none (default: augmentation cost accuracy when fine-tuning the reference models), auto (crop+flip for cifar10, cifar100, fashion-mnist only), crop-flip.")] = "none"
    head_kind: Annotated[str, typer.Option("--head-kind", "--head-type", help="New head: gauss, rbf, rslvq or glvq (`--head glvq` works too).")] = "gauss"
    prototypes_per_class: Annotated[int, typer.Option("--prototypes-per-class", help="Prototypes per class (rslvq/glvq).")] = 1
    temperature: Annotated[str, typer.Option("--temperature", help="Temperature T of the rbf head: 'auto' (T = 2σ², the RSLVQ width) or a number.")] = "auto"
    sigma: Annotated[float | None, typer.Option("--sigma", help="RSLVQ width σ (fitted when omitted).")] = None
    squashing: Annotated[str, typer.Option("--squashing", help="GLVQ loss squashing: identity or sigmoid.")] = "identity"
    slope: Annotated[float, typer.Option("--slope", help="Slope of the GLVQ sigmoid squashing.")] = 1.0
    proto_init: Annotated[str | None, typer.Option("--proto-init", help="Prototype init: means (M = 1) or kmeans (per class); default by M.")] = None
    normaliser: Annotated[str, typer.Option("--normaliser", help="rbf responsibilities: softmax or entmax15.")] = "softmax"
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/tailor-checkpoint.pt.")] = False
    export_formats: Annotated[str, typer.Option("--export", help="Also export: comma list of pt2, onnx ('' or none for none).")] = "pt2,onnx"
    report: Annotated[bool, typer.Option("--report", help="Write OUT/report.html at the end.")] = False

    PANEL: ClassVar[str | None] = None
    FLAT: ClassVar[dict[str, str]] = {}
    OPT_IN: ClassVar[tuple[str, ...]] = ()

    def config(self, kind: str, run: RunOptions, workers: int) -> TailorConfig:
        """The checked :class:`~kmtools.tailor.TailorConfig` of these options (head ``kind``)."""
        from kmtools.tailor import TailorConfig

        if not 0 <= self.val_split < 1:
            raise ConfigError(f"--val-split must be a fraction in [0, 1), got {self.val_split}")
        g_val: float | None = None
        if self.gamma != "auto":
            try:
                g_val = float(self.gamma)
            except ValueError as exc:
                raise ConfigError(f"--gamma must be 'auto' or a number, not {self.gamma!r}") from exc
        cfg = TailorConfig(
            epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, schedule=self.schedule, warmup=self.warmup,
            weight_decay=self.weight_decay, batch_size=run.batch_size, train_from=self.train_from, init=self.init,
            centroids=self.centroids, ramp_epochs=self.ramp_epochs, ce_weight=self.ce_weight,
            scatter_weight=self.scatter_weight, workers=workers, gamma=g_val, fpr=self.fpr, max_drop=self.max_drop,
            patience=self.patience, augment=self.augment, amp=run.amp, channels_last=run.amp, seed=run.seed,
            head=kind, head_options=_head_options(kind, self.prototypes_per_class, self.proto_init, self.temperature,
                                                  self.normaliser, self.sigma, self.squashing, self.slope),
        )
        cfg.validate()
        return cfg

    def exports(self) -> tuple[str, ...]:
        """``--export``: the formats to export after the kmtools file."""
        return tuple(f for f in self.export_formats.replace(" ", "").split(",") if f and f != "none")


@grouped
def tailor_cmd(
    *,
    mo: ModelOptions,
    data: Annotated[DataOptions, Use(skip=("split",), add=("workers",))],
    opts: TailorOptions,
    run: Annotated[RunOptions, Use(add=("amp",), defaults={"batch_size": 128})],
    output: OutputOptions,
) -> None:
    """Fine-tune a trained softmax network into a Gauss network (Algorithm 1, TailorNetwork).

    The head starts as an exact copy of the softmax head (Theorem 1 on [f, 1]); the centroids then
    move to the class means C = f(X)Y(YᵀY)⁻¹ while a scale-free loss pulls features onto them. Each
    epoch is scored on held-out validation data; the best epoch within --max-drop points of the
    original accuracy is exported (none: exit 1, checkpoint and tailor.json kept). Writes
    OUT/gauss.safetensors (kmtools format; OUT/KIND.safetensors for --head rbf/rslvq/glvq),
    OUT/tailor.json, then OUT/gauss.pt2 and OUT/gauss.onnx, and a per-epoch checkpoint for --resume.
    Runs under torchrun (DDP) with statistics summed across ranks.

    Example: kmtools tailor model.pt --arch resnet18 --norm cifar10 --data cifar10 --epochs 5 --out runs/r18
    """
    # imported when the command runs, so that --help does not load torch
    from kmtools.models import require_split
    from kmtools.report.schema import envelope
    from kmtools.runs import Timer
    from kmtools.tailor import check_train_from
    from kmtools.tailor.run import run_tailor
    from kmtools_cli._common import describe_model, open_data, open_model

    out = output.output()
    timer = Timer()
    dev, distributed = _device(run.device)
    out_dir = output.out or Path(f"{mo.path.stem}-gauss")
    head, kind = (None, mo.head) if mo.head in _head_kinds() else (mo.head, opts.head_kind)  # `--head glvq` too
    target = out_dir / f"{kind}.safetensors"
    if target.exists() and not (output.force or opts.resume):
        raise ConfigError(f"{target} already exists: pass --force to overwrite it (or --resume)")
    cfg = opts.config(kind, run, data.workers)
    with timer("load"):
        model = open_model(mo.path, **(mo.load_kwargs() | {"head": head}))
    require_split(model, "kmtools tailor")
    check_train_from(model.backbone, opts.train_from)
    if model.head_kind != "softmax":
        raise ConfigError(f"{mo.path} already has a {model.head_kind} head: tailor starts from a softmax network")
    train = data.load(model, split="train")
    test = _test_split(data, model, out.info)
    val = (open_data(opts.val_data, root=data.data_root, split="train", model=model, image_size=data.image_size)
           if opts.val_data else None)
    out_dir.mkdir(parents=True, exist_ok=True)

    def document(results: dict[str, Any]) -> dict[str, Any]:
        return envelope("tailor", results, model=describe_model(mo.path, model), data=train.to_dict(),
                        seed=run.seed, device=dev, timings=timer.timings)

    def record(results: dict[str, Any]) -> None:  # OUT/tailor.json, also after every epoch
        write_json(out_dir / "tailor.json", document(results), force=True)

    with timer("tailor"), out.progress("tailor", opts.epochs) as prog:
        done = run_tailor(model, train, test, cfg, out_dir=out_dir, val=val, val_split=opts.val_split, device=dev,
                          resume=opts.resume, export_formats=opts.exports(), write_record=record, progress=prog,
                          log=out.info)
    if not distributed or _rank() == 0:
        _finish(done, out, output, opts, document, out_dir, target=target, kind=kind, model_path=mo.path)
    if distributed:
        import torch

        torch.distributed.destroy_process_group()


def _head_kinds() -> tuple[str, ...]:
    from kmtools.tailor import HEADS

    return tuple(HEADS)


def _device(spec: str) -> tuple[torch.device, bool]:
    """The device of this process (under torchrun: cuda:LOCAL_RANK) and whether DDP started."""
    import torch

    from kmtools.tailor import init_distributed
    from kmtools_cli._common import device_of

    dev = device_of(spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dev, init_distributed(dev)


def _rank() -> int:
    import torch

    return torch.distributed.get_rank()


def _finish(done: Any, out: Output, output: OutputOptions, opts: TailorOptions,
            document: Callable[[dict[str, Any]], dict[str, Any]], out_dir: Path, *,
            target: Path, kind: str, model_path: Path) -> None:
    """Rank 0: the report (``--report``), the final tailor.json (the file says what stdout says),
    stdout, the exit 1 when no epoch was kept, ``--gate``."""
    from kmtools.errors import KmtoolsError

    results = done.results
    results["files"]["tailor"] = str(out_dir / "tailor.json")
    if opts.report and done.ok:
        from kmtools.report.collect import load_run
        from kmtools.report.render import write_report

        write_report(load_run([out_dir]), out_dir / "report.html", force=True)
        results["files"]["report"] = str(out_dir / "report.html")
    doc = document(results)
    write_json(out_dir / "tailor.json", doc, force=True)  # the file says what stdout says
    out.emit(doc, lambda con: _human(con, model_path, target, kind, results))
    if not done.ok:
        raise KmtoolsError(
            f"no epoch kept validation accuracy within --max-drop {opts.max_drop} points: no {kind} model "
            f"written ({out_dir / 'tailor.json'} and the checkpoint are kept); try a lower --lr"
        )
    out.gate(output.gate, doc)


def _test_split(data: DataOptions, model: Any, say: Any) -> Any:
    """The test split; an ImageFolder tree in the ImageNet layout (``train/`` and ``val/``, no
    ``test/``) is tested on ``val/``, which tailoring never trains on."""
    root = Path(str(data.name)).expanduser()
    if root.is_dir() and (root / "train").is_dir() and (root / "val").is_dir() and not (root / "test").is_dir():
        say(f"{root} has train/ and val/ but no test/: the test figures use val/")
        return data.load(model, split="val", n=None)
    return data.load(model, split="test", n=None)


def _head_options(kind: str, m: int, proto_init: str | None, temperature: str, normaliser: str,
                  sigma: float | None, squashing: str, slope: float) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if kind in ("rslvq", "glvq", "rbf"):
        opts.update(prototypes_per_class=m, init=proto_init)
    if kind == "rbf":
        t_val: float | None = None
        if temperature != "auto":
            try:
                t_val = float(temperature)
            except ValueError as exc:
                raise ConfigError(f"--temperature must be 'auto' or a number, not {temperature!r}") from exc
        opts.update(temperature=t_val, normaliser=normaliser)
    if kind == "rslvq":
        opts["sigma"] = sigma
    if kind == "glvq":
        opts.update(squashing=squashing, slope=slope)
    return opts


def _human(con: Console, model_path: Path, target: Path, kind: str, r: dict[str, Any]) -> None:
    t = Table(title=f"tailor: {model_path} -> {target if r.get('selected_epoch') else '(nothing exported)'}",
              title_justify="left")
    t.add_column("")
    t.add_column("softmax (original)")
    t.add_column(f"{kind} network (epoch {r.get('selected_epoch') or '–'})")
    test = r.get("test")
    if test:
        def acc(d: dict[str, Any]) -> str:
            return f"{fmtv(d['accuracy'])} ({fmtv(d['accuracy_lo'])}–{fmtv(d['accuracy_hi'])})"

        t.add_row("test accuracy (95% CI)", acc(test["softmax"]), acc(test["gauss"]))
        ch = test["accuracy_change"]
        t.add_row("paired change (95% CI)", "", f"{100 * ch['diff']:+.2f} pts ({100 * ch['diff_lo']:+.2f} to "
                  f"{100 * ch['diff_hi']:+.2f}), McNemar p={ch['p_value']:.3g}")
        t.add_row("mean confidence", fmtv(test["softmax"]["mean_confidence"]), fmtv(test["gauss"]["mean_confidence"]))
    h0 = r["history"][0] if r.get("history") else {}
    sel = next((h for h in r.get("history", []) if h["epoch"] == r.get("selected_epoch")), None)
    if h0.get("softmax_val_accuracy") is not None:
        t.add_row("validation accuracy", fmtv(h0["softmax_val_accuracy"]), fmtv(sel["val_accuracy"]) if sel else "–")
    b = r.get("benefit") or {}
    if b:
        t.add_row("noise AUROC (validation)", fmtv(b["softmax"]["noise_auroc"]), fmtv(b["gauss"]["noise_auroc"]))
        t.add_row("scatter / gap² (validation)", fmtv(b["softmax"]["scatter_over_gap2"]),
                  fmtv(b["gauss"]["scatter_over_gap2"]))
    g = r.get("gamma_fit") or {}
    if g:
        t.add_row("γ, outliers at κ < 1/c", "", f"{g['gamma']:.4g}: flags {g['val_flagged_at_threshold']:.1%} of validation")
    t.add_row("epochs run", "", f"{len(r.get('history', [])) - 1}{' (stopped early)' if r.get('stopped_early') else ''}")
    con.print(t)


def register(app: typer.Typer) -> None:
    app.command("tailor")(tailor_cmd)
