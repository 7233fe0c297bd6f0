"""``kmtools attack onepixel|fgsm|deepfool``: attack rates and confidences, side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from kmtools_cli._common import Timer, describe_model, device_of, open_data, open_model
from kmtools_cli._options import (
    ArchOpt,
    BatchOpt,
    DataOpt,
    DataRootOpt,
    DebugOpt,
    DeviceOpt,
    DownloadOpt,
    ForceOpt,
    FormatOpt,
    GateOpt,
    HeadPathOpt,
    MeanOpt,
    ModelArg,
    NOpt,
    NormOpt,
    NumClassesOpt,
    QuietOpt,
    SeedOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
)
from kmtools_cli._output import Output, fmt
from rich.console import Console
from rich.table import Table

from kmtools.attacks import (
    DeepFoolResult,
    FGSMResult,
    OnePixelResult,
    deepfool,
    fgsm_sweep,
    onepixel,
    parse_eps,
)
from kmtools.data import DataInfo
from kmtools.data.registry import check_compatible
from kmtools.errors import ConfigError
from kmtools.features import as_tensors
from kmtools.io import check_writable, write_json, write_text, write_with
from kmtools.models import KmModel
from kmtools.report import gates
from kmtools.report.schema import envelope

app = typer.Typer(
    name="attack",
    help="Adversarial attacks: one-pixel (Su et al., batched differential evolution), FGSM against ε, "
    "DeepFool (minimal perturbation). --compare attacks a second model on the same inputs.",
    no_args_is_help=True,
)

CompareOpt = Annotated[
    Path | None,
    typer.Option(
        "--compare",
        help="A second checkpoint (typically the Gauss network of MODEL), loaded with the same options "
        "and attacked on the same inputs with the same seed, reported side by side.",
        show_default=False,
    ),
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Folder for attack-<name>.json (result document), .jsonl (one record per input), "
        ".npz (arrays) and figures/attack-<name>_<model>.png.",
        show_default=False,
    ),
]
AmpFlag = Annotated[
    bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA (successes are confirmed in float32).")
]


# ------------------------------------------------------------------------------------ helpers
def _keys(primary: KmModel, other: KmModel | None) -> list[str]:
    """Result keys: the head kinds, or ``model``/``compare`` when both have the same kind."""
    if other is None:
        return [primary.head_kind]
    if primary.head_kind == other.head_kind:
        return ["model", "compare"]
    return [primary.head_kind, other.head_kind]


def _tensors(info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    t = as_tensors(info.dataset)
    if t is not None:
        return t[0].float(), torch.as_tensor(t[1]).long()
    xs, ys = [], []
    for i in range(len(info)):
        xi, yi = info.dataset[i]
        xs.append(torch.as_tensor(xi).float())
        ys.append(int(yi))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _paths(out_dir: Path | None, name: str, keys: Sequence[str], force: bool) -> dict[str, Path]:
    if out_dir is None:
        return {}
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder")
    stem = f"attack-{name}"
    paths = {
        "json": out_dir / f"{stem}.json",
        "jsonl": out_dir / f"{stem}.jsonl",
        "npz": out_dir / f"{stem}.npz",
    }
    for k in keys:
        paths[f"png_{k}"] = out_dir / "figures" / f"{stem}_{k}.png"
    for p in paths.values():
        check_writable(p, force)
    return paths


def _save_npz(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz'
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    write_with(path, writer, force)


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class _Setup:
    """What every attack command loads: models, keys, inputs, device, timer, output."""

    def __init__(
        self,
        out: Output,
        model_path: Path,
        compare: Path | None,
        opts: dict[str, Any],
        data: str | None,
        data_root: Path | None,
        split: str,
        n: int | None,
        download: bool,
        device: str,
    ) -> None:
        self.timer = Timer()
        self.out = out
        self.dev = device_of(device)
        with self.timer("load"):
            self.model = open_model(model_path, **opts)
            self.other = open_model(compare, **opts) if compare is not None else None
        self.info = open_data(data, root=data_root, split=split, n=n, download=download, model=self.model)
        if self.other is not None:
            check_compatible(self.info, self.other.num_classes, self.other.input_shape)
        with self.timer("load"):
            self.x, self.y = _tensors(self.info)
        self.keys = _keys(self.model, self.other)
        self.models = [self.model] + ([self.other] if self.other is not None else [])
        self.paths = [model_path] + ([compare] if compare is not None else [])
        self.model_path, self.compare = model_path, compare

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes or self.model.classes)

    def results(self, name: str, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        first = self.keys[0]
        res: dict[str, Any] = {"head_kind": self.model.head_kind, name: summaries[first]}
        if self.other is not None:
            for key in self.keys:
                res[key] = {name: summaries[key]}
            res["models"] = {key: str(p) for key, p in zip(self.keys, self.paths, strict=False)}
        return res

    def doc(self, command: str, results: dict[str, Any], seed: int | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.other is not None and self.compare is not None:
            extra["compare_model"] = describe_model(self.compare, self.other)
        data_doc = {**self.info.to_dict(), "classes": self.info.classes}
        return envelope(
            command,
            results,
            model=describe_model(self.model_path, self.model),
            data=data_doc,
            seed=seed,
            device=self.dev,
            timings=self.timer.timings,
            **extra,
        )


def _image_grid(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    adv: torch.Tensor,
    conf_before: torch.Tensor,
    conf_adv: torch.Tensor,
    chosen: Sequence[int],
    classes: Sequence[str],
    title: str,
    out: Path,
    force: bool,
    diff: bool = False,
) -> Path:
    """Up to 8 inputs: the clean image (label, confidence) above the adversarial one
    (prediction, confidence, changed pixels circled), or with ``diff`` the magnified
    perturbation below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    def show(ax: Any, img: torch.Tensor) -> None:
        a = img.detach().float().cpu()
        if a.dim() == 3:
            a = a.permute(1, 2, 0)
            if a.shape[-1] == 1:
                a = a[..., 0]
        elif a.dim() == 1:
            a = a[None, :]
        ax.imshow(
            a.clamp(0, 1).numpy(),
            cmap="gray" if a.dim() == 2 else None,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])

    idx = list(chosen)[:8]
    rows = 3 if diff else 2
    fig = Figure(figsize=(1.5 * max(len(idx), 1) + 0.4, 1.6 * rows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    if not idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no successful attacks", ha="center", va="center")
        ax.axis("off")
    else:
        axes = fig.subplots(rows, len(idx), squeeze=False)
        for j, i in enumerate(idx):
            show(axes[0, j], x[i])
            axes[0, j].set_title(f"{name(int(labels[i]))} {float(conf_before[i]):.2f}", fontsize=7)
            show(axes[1, j], x_adv[i])
            if not diff and x[i].dim() == 3:
                changed = (x_adv[i] != x[i]).any(0).nonzero().tolist()
                rad = max(0.9, 0.06 * max(x[i].shape[-2:]))
                for r0, c0 in changed[:10]:
                    axes[1, j].add_patch(
                        Circle((c0, r0), rad, fill=False, edgecolor="#ff1f1f", linewidth=1.2)
                    )
            axes[1, j].set_title(f"→ {name(int(adv[i]))} {float(conf_adv[i]):.2f}", fontsize=7)
            if diff:
                r = (x_adv[i] - x[i]).float()
                m = float(r.abs().max())
                show(axes[2, j], 0.5 + 0.5 * r / m if m > 0 else r + 0.5)
                axes[2, j].set_title(f"r ×{0.5 / m:.0f}" if m > 0 else "r = 0", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")

    return write_with(out, writer, force)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for r in rows:
        t.add_row(*(fmt(v) if not isinstance(v, str) else v for v in r))
    return t


def _metric_table(title: str, models: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> Table:
    """Rows = metrics, one column per model (narrow enough for side-by-side comparisons)."""
    t = Table(title=title, title_justify="left")
    t.add_column("metric", style="bold")
    for m in models:
        t.add_column(m, justify="right")
    for label, vals in rows:
        t.add_row(label, *(v if isinstance(v, str) else fmt(v) for v in vals))
    return t


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _check_gates(gate: list[str] | None) -> None:
    for g in gate or []:
        gates.parse(g)  # a malformed gate fails before any work (exit 2)


# ---------------------------------------------------------------------------------- onepixel
@app.command("onepixel")
def attack_onepixel(
    model_path: ModelArg,
    data: DataOpt = None,
    pixels: Annotated[
        int, typer.Option("--pixels", help="Pixels changed per candidate (Su et al.: 1, 3, 5).")
    ] = 1,
    popsize: Annotated[int, typer.Option("--popsize", help="Candidates per image (Su et al.: 400).")] = 400,
    steps: Annotated[int, typer.Option("--steps", help="Maximum DE generations (Su et al.: 100).")] = 100,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Targeted attack: class index or name to reach (default untargeted).",
            show_default=False,
        ),
    ] = None,
    tol: Annotated[
        float | None,
        typer.Option(
            "--tol",
            help="Also stop an image when its population's fitness converged: std <= tol*|mean| "
            "(scipy's rule, 0.01 there). Default: off, as Su et al. and torchattacks.",
            show_default=False,
        ),
    ] = None,
    compare: CompareOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    gate: GateOpt = None,
    arch: ArchOpt = None,
    head: HeadPathOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    norm: NormOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_root: DataRootOpt = None,
    split: SplitOpt = "test",
    n: Annotated[
        int | None,
        typer.Option(
            "-n",
            "--num",
            help="Attack the first N inputs (default 100; the paper used 500 CIFAR-10 test images).",
        ),
    ] = None,
    download: DownloadOpt = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            help="Images evolved together (default 8192/popsize on CUDA, 2048/popsize on the CPU).",
            show_default=False,
        ),
    ] = None,
    chunk: Annotated[
        int | None,
        typer.Option(
            "--chunk",
            help="At most this many candidate images per forward pass (default batch-size × popsize).",
            show_default=False,
        ),
    ] = None,
    amp: AmpFlag = True,
    seed: SeedOpt = 0,
    fmt_: FormatOpt = "human",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """One-pixel attack (Su, Vargas & Sakurai 2019) by batched differential evolution.

    Each image gets a population of candidates (x, y, colour) per changed pixel; DE/rand/1
    with F = 0.5 evolves them for at most --steps generations, stopping an image as soon as
    one candidate fools the model. Fitness is the confidence of the true class: softmax
    probability for a softmax network, Gauss-confidence κ for a Gauss network. Images the
    model already gets wrong are skipped and counted. Reported per model (Table 1 of the
    Gauss-network paper): accuracy, mean confidence, attack rate = fooled / attacked, mean
    confidence of the fooled predictions and the share of them flagged as outliers.

    Example: kmtools attack onepixel model.pt --arch resnet18 --data cifar10 -n 500
    --compare gauss.safetensors --out runs/ --gate "onepixel.rate<=0.2"
    """
    out = Output(fmt_, quiet)
    _check_gates(gate)
    if n is None:
        n = 100
        out.info("attacking the first 100 inputs (-n to change)")
    opts: dict[str, Any] = dict(
        arch=arch, head=head, num_classes=num_classes, trust=trust_checkpoint, norm=norm, mean=mean, std=std
    )
    s = _Setup(out, model_path, compare, opts, data, data_root, split, n, download, device)
    if s.x.dim() != 4:
        raise ConfigError(
            f"the one-pixel attack needs images (C, H, W); {s.info.name} has inputs of shape "
            f"{tuple(s.x.shape[1:])}"
        )
    tgt: int | None = None
    if target is not None:
        if target in s.classes:
            tgt = s.classes.index(target)
        else:
            try:
                tgt = int(target)
            except ValueError as exc:
                raise ConfigError(
                    f"--target {target!r} is neither a class index nor a class name "
                    f"({', '.join(s.classes[:12])})"
                ) from exc
    paths = _paths(out_dir, "onepixel", s.keys, force)

    res: dict[str, OnePixelResult] = {}
    for key, m in zip(s.keys, s.models, strict=False):
        with s.timer(f"attack_{key}"), out.progress(f"one-pixel {key}", len(s.y)) as prog:
            res[key] = onepixel(
                m,
                s.x,
                s.y,
                pixels=pixels,
                popsize=popsize,
                maxiter=steps,
                target=tgt,
                tol=tol,
                seed=seed,
                batch_size=batch_size,
                chunk=chunk,
                amp=amp,
                device=s.dev,
                progress=prog,
            )
    summaries = {k: r.to_dict() for k, r in res.items()}
    results = s.results("onepixel", summaries)
    doc = s.doc("attack onepixel", results, seed)

    if paths:
        arrays: dict[str, np.ndarray] = {"x": s.x.numpy().astype(np.float32), "labels": s.y.numpy()}
        recs: list[dict[str, Any]] = []
        for key, r in res.items():
            arrays |= {
                f"{key}_x_adv": r.x_adv.cpu().numpy().astype(np.float32),
                f"{key}_pixel": r.pixel.numpy().astype(np.float32),
                f"{key}_conf_before": r.conf_before.numpy(),
                f"{key}_conf_adv": r.conf_adv.numpy(),
                f"{key}_success": r.success.numpy(),
                f"{key}_skipped": r.skipped.numpy(),
                f"{key}_pred_adv": r.adv_labels.numpy(),
                f"{key}_outlier": r.outlier.numpy(),
            }
            recs += [{"model": key, **rec} for rec in r.records()]
        _save_npz(paths["npz"], arrays, force)
        write_text(paths["jsonl"], _jsonl(recs), force)
        for key, r in res.items():
            hit = (r.success & ~r.skipped).nonzero().flatten()
            ok = hit[torch.argsort(-r.conf_adv[hit], stable=True)].tolist()
            _image_grid(
                s.x,
                r.x_adv.cpu(),
                r.labels,
                r.adv_labels,
                r.conf_before,
                r.conf_adv,
                ok,
                s.classes,
                f"{key}: fooled one-pixel attacks, label conf(x) → prediction conf(x̃)",
                paths[f"png_{key}"],
                force,
            )
        write_json(paths["json"], doc, force)
        out.info(f"wrote {paths['json']}, {paths['jsonl'].name}, {paths['npz'].name} and figures/")

    def human(con: Console) -> None:
        d = summaries
        tp = {k: r.throughput() for k, r in res.items()}
        rows: list[tuple[str, list[Any]]] = [
            ("head", [d[k]["head_kind"] for k in res]),
            ("accuracy (clean)", [_pct(d[k]["accuracy"]) for k in res]),
            ("mean confidence (clean)", [d[k]["mean_confidence"] for k in res]),
            ("attacked", [d[k]["attacked"] for k in res]),
            ("skipped (misclassified)", [d[k]["skipped"] for k in res]),
            ("fooled", [d[k]["fooled"] for k in res]),
            ("attack rate", [_pct(d[k]["rate"]) for k in res]),
            ("mean confidence of fooled", [d[k]["mean_conf_fooled"] for k in res]),
            ("fooled flagged as outliers", [_pct(d[k]["outlier_share"]) for k in res]),
            ("mean generations", [d[k]["generations_mean"] for k in res]),
            ("seconds per image", [(tp[k]["seconds"] or 0.0) / max(d[k]["attacked"], 1) for k in res]),
        ]
        how = f"{pixels} pixel{'s' if pixels > 1 else ''}, population {popsize}, "
        how += f"≤{steps} generations, seed {seed}"
        if tgt is not None:
            how += f", target {s.classes[tgt] if tgt < len(s.classes) else tgt}"
        con.print(
            _metric_table(
                f"one-pixel attack on {len(s.y)} {s.info.name} {s.info.split} inputs ({how})", list(res), rows
            )
        )

    out.emit(doc, human)
    out.gate(gate, doc)


# -------------------------------------------------------------------------------------- fgsm
@app.command("fgsm")
def attack_fgsm(
    model_path: ModelArg,
    data: DataOpt = None,
    eps: Annotated[
        str, typer.Option("--eps", help="Comma-separated ε in input units (pixel range [0, 1]).")
    ] = "0,0.01,0.02,0.05,0.1,0.2,0.3",
    clip: Annotated[
        bool, typer.Option("--clip/--no-clip", help="Clip perturbed inputs to [0, 1] (images).")
    ] = True,
    compare: CompareOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    gate: GateOpt = None,
    arch: ArchOpt = None,
    head: HeadPathOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    norm: NormOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_root: DataRootOpt = None,
    split: SplitOpt = "test",
    n: NOpt = None,
    download: DownloadOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    seed: SeedOpt = 0,
    fmt_: FormatOpt = "human",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """FGSM: accuracy and mean confidence against ε (the Gauss-network paper's Figure 2).

    x̃ = clip(x + ε·sign(∇ₓ CE)) in pixel space, before the model's normalisation. The loss is
    the cross-entropy of the logits (softmax network) or of log κ (Gauss network). Reported
    per ε: accuracy, mean confidence of the predicted class, mean confidence of the wrong
    predictions, share of correct inputs fooled, share below the outlier threshold.

    Example: kmtools attack fgsm model.pt --arch smallcnn --data mnist --eps 0,0.05,0.1,0.2
    --compare gauss.safetensors --gate "fgsm.min_accuracy>=0.3"
    """
    out = Output(fmt_, quiet)
    _check_gates(gate)
    eps_l = parse_eps(eps)
    opts: dict[str, Any] = dict(
        arch=arch, head=head, num_classes=num_classes, trust=trust_checkpoint, norm=norm, mean=mean, std=std
    )
    s = _Setup(out, model_path, compare, opts, data, data_root, split, n, download, device)
    paths = _paths(out_dir, "fgsm", s.keys, force)
    rng = (0.0, 1.0) if clip else None
    res: dict[str, FGSMResult] = {}
    for key, m in zip(s.keys, s.models, strict=False):
        with s.timer(f"attack_{key}"), out.progress(f"FGSM {key}", len(s.y)) as prog:
            res[key] = fgsm_sweep(
                m, s.x, s.y, eps_l, clip=rng, batch_size=batch_size, device=s.dev, progress=prog
            )
    summaries = {k: r.to_dict() for k, r in res.items()}
    results = s.results("fgsm", summaries)
    doc = s.doc("attack fgsm", results, seed)

    if paths:
        from kmtools.attacks import fgsm as fgsm_one

        arrays: dict[str, np.ndarray] = {"labels": s.y.numpy(), "eps": np.asarray(eps_l)}
        recs: list[dict[str, Any]] = []
        e_max = max(eps_l)
        for key, r in res.items():
            arrays |= {f"{key}_preds": r.preds.numpy(), f"{key}_confs": r.confs.numpy()}
            recs += [{"model": key, **rec} for rec in r.records()]
        _save_npz(paths["npz"], arrays, force)
        write_text(paths["jsonl"], _jsonl(recs), force)
        for key, m in zip(s.keys, s.models, strict=False):
            r = res[key]
            k = min(8, len(s.y))
            i_max = eps_l.index(e_max)
            fooled = ((r.preds[0] == s.y) & (r.preds[i_max] != s.y)).nonzero().flatten().tolist()[:k]
            if fooled:
                xs = s.x[fooled].to(s.dev)
                xa = fgsm_one(m, xs, s.y[fooled].to(s.dev), e_max, clip=rng).cpu()
            else:
                xs, xa = s.x[:0], s.x[:0]
            _image_grid(
                xs.cpu(),
                xa,
                s.y[fooled],
                r.preds[i_max][fooled],
                r.confs[0][fooled],
                r.confs[i_max][fooled],
                list(range(len(fooled))),
                s.classes,
                f"{key}: FGSM ε = {e_max:g}, label conf → prediction conf",
                paths[f"png_{key}"],
                force,
                diff=True,
            )
        write_json(paths["json"], doc, force)
        out.info(f"wrote {paths['json']}, {paths['jsonl'].name}, {paths['npz'].name} and figures/")

    def human(con: Console) -> None:
        cols = ["ε"]
        for key in res:
            cols += [f"{key} accuracy", f"{key} conf", f"{key} conf wrong"]
        rows = []
        for i, e in enumerate(eps_l):
            row: list[Any] = [f"{e:g}"]
            for r in res.values():
                row += [_pct(r.accuracy[i]), r.conf_mean[i], r.conf_wrong_mean[i]]
            rows.append(row)
        con.print(
            _table(
                f"FGSM on {len(s.y)} {s.info.name} {s.info.split} inputs"
                f"{' (clipped to [0, 1])' if clip else ''}",
                cols,
                rows,
            )
        )

    out.emit(doc, human)
    out.gate(gate, doc)


# ---------------------------------------------------------------------------------- deepfool
@app.command("deepfool")
def attack_deepfool(
    model_path: ModelArg,
    data: DataOpt = None,
    lp: Annotated[
        str,
        typer.Option(
            "--lp", help="Norm of the perturbation: l2 or linf. (--norm is the input normalisation preset.)"
        ),
    ] = "l2",
    overshoot: Annotated[
        float, typer.Option("--overshoot", help="The iterate is x + (1 + overshoot)·Σ r_i.")
    ] = 0.02,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Maximum DeepFool steps per input.")] = 50,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates", help="Classes considered per step (the prediction plus the top others); 0 = all."
        ),
    ] = 10,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clamp iterates to [0, 1] (images).")] = True,
    compare: CompareOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    gate: GateOpt = None,
    arch: ArchOpt = None,
    head: HeadPathOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    norm: NormOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_root: DataRootOpt = None,
    split: SplitOpt = "test",
    n: NOpt = None,
    download: DownloadOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    seed: SeedOpt = 0,
    fmt_: FormatOpt = "human",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """DeepFool (Moosavi-Dezfooli et al. 2016): the minimal perturbation r(x) changing the prediction.

    Batched over inputs, L2 or L∞, in pixel space. Reports per model the norms of r(x)
    (mean, median, min, max) of the inputs whose label flipped, and the mean number of
    steps. For a Gauss network DeepFool works on log κ (the nearest-centroid logits).

    Example: kmtools attack deepfool model.pt --arch resnet18 --data cifar10 -n 500 --lp l2
    --compare gauss.safetensors
    """
    out = Output(fmt_, quiet)
    _check_gates(gate)
    opts: dict[str, Any] = dict(
        arch=arch, head=head, num_classes=num_classes, trust=trust_checkpoint, norm=norm, mean=mean, std=std
    )
    s = _Setup(out, model_path, compare, opts, data, data_root, split, n, download, device)
    paths = _paths(out_dir, "deepfool", s.keys, force)
    rng = (0.0, 1.0) if clip else None
    res: dict[str, DeepFoolResult] = {}
    for key, m in zip(s.keys, s.models, strict=False):
        with s.timer(f"attack_{key}"), out.progress(f"DeepFool {key}", len(s.y)) as prog:
            res[key] = deepfool(
                m,
                s.x,
                candidates=candidates or None,
                overshoot=overshoot,
                max_iter=max_iter,
                norm=lp,
                clip=rng,
                batch_size=batch_size,
                device=s.dev,
                progress=prog,
            )
    summaries: dict[str, dict[str, Any]] = {}
    for key, r in res.items():
        d = r.to_dict()
        d["accuracy"] = float((r.labels.cpu() == s.y).float().mean()) if len(s.y) else None
        summaries[key] = d
    results = s.results("deepfool", summaries)
    doc = s.doc("attack deepfool", results, seed)

    if paths:
        arrays: dict[str, np.ndarray] = {"x": s.x.numpy().astype(np.float32), "labels": s.y.numpy()}
        recs: list[dict[str, Any]] = []
        for key, r in res.items():
            arrays |= {
                f"{key}_x_adv": r.x_adv.cpu().numpy().astype(np.float32),
                f"{key}_norms": r.norms.cpu().numpy(),
                f"{key}_pred": r.labels.cpu().numpy(),
                f"{key}_pred_adv": r.adv_labels.cpu().numpy(),
                f"{key}_iterations": r.iterations.cpu().numpy(),
                f"{key}_converged": r.converged.cpu().numpy(),
            }
            recs += [{"model": key, **rec} for rec in r.records()]
        _save_npz(paths["npz"], arrays, force)
        write_text(paths["jsonl"], _jsonl(recs), force)
        if s.x.dim() == 4:
            from kmtools.attacks import class_confidences

            for key, m in zip(s.keys, s.models, strict=False):
                r = res[key]
                conv = (r.converged & (r.iterations > 0)).cpu()
                flip = conv.nonzero().flatten()
                idx = flip[torch.argsort(r.norms.cpu()[flip], stable=True)].tolist()[:8]
                xs, xa = s.x[idx], r.x_adv.cpu()[idx]
                cb = class_confidences(m, xs.to(s.dev)).cpu() if idx else torch.zeros(0, 1)
                ca = class_confidences(m, xa.to(s.dev)).cpu() if idx else torch.zeros(0, 1)
                _image_grid(
                    xs,
                    xa,
                    r.labels.cpu()[idx],
                    r.adv_labels.cpu()[idx],
                    cb.amax(1),
                    ca.amax(1),
                    list(range(len(idx))),
                    s.classes,
                    f"{key}: DeepFool ({lp}), smallest r(x); prediction conf → new prediction conf",
                    paths[f"png_{key}"],
                    force,
                    diff=True,
                )
        write_json(paths["json"], doc, force)
        out.info(
            f"wrote {paths['json']}, {paths['jsonl'].name}, {paths['npz'].name}"
            f"{' and figures/' if s.x.dim() == 4 else ''}"
        )

    def human(con: Console) -> None:
        d = summaries
        rows: list[tuple[str, list[Any]]] = [
            ("head", [s.models[s.keys.index(k)].head_kind for k in res]),
            ("inputs", [d[k]["images"] for k in res]),
            ("prediction flipped", [d[k]["converged"] for k in res]),
            (f"‖r‖ mean ({lp})", [d[k]["norm_mean"] for k in res]),
            ("‖r‖ median", [d[k]["norm_median"] for k in res]),
            ("‖r‖ min", [d[k]["norm_min"] for k in res]),
            ("‖r‖ max", [d[k]["norm_max"] for k in res]),
            ("mean steps", [d[k]["iterations_mean"] for k in res]),
        ]
        con.print(
            _metric_table(
                f"DeepFool on {len(s.y)} {s.info.name} {s.info.split} inputs (overshoot {overshoot:g})",
                list(res),
                rows,
            )
        )

    out.emit(doc, human)
    out.gate(gate, doc)


def register(root: typer.Typer) -> None:
    """Add the ``attack`` group to the root app: ``kmtools attack onepixel|fgsm|deepfool``."""
    root.add_typer(app, name="attack")
