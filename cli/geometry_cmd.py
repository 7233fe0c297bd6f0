"""``kmtools geometry distance|curvature|detect|path``: decision-boundary geometry.

Fawzi et al., "Classification regions of deep neural networks" (Sec. III-V, Eq. 1,
Algorithms 1-2) and Theorem 2 of "Gauss networks / softmax is k-means". The maths lives in
:mod:`kmtools.geometry`; this module parses options, calls it and renders the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console

from kmtools.data import DataInfo
from kmtools.errors import ConfigError, DataError
from kmtools.features import as_tensors
from kmtools.io import check_writable, write_json, write_with
from kmtools.models import KmModel
from kmtools.report import gates
from kmtools.report.schema import envelope
from kmtools_cli._common import Timer, describe_model, device_of
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import kv_table

app = typer.Typer(
    name="geometry",
    help="Decision-boundary geometry (Fawzi et al.): distance r(x) to the boundary with Theorem 2 "
    "beside it, principal curvatures (Eq. 1), curvature-sign detection of adversarial inputs with "
    "label recovery (Algorithm 2), paths inside a class region (Algorithm 1).",
    no_args_is_help=True,
)

OutDirOpt = out_dir("Folder for geometry-<command>.json (result document), .npz (per-input arrays) and .png (figure).")
OvershootOpt = Annotated[float, typer.Option("--overshoot", help="DeepFool overshoot: x + (1 + overshoot)·Σ r_i.")]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", min=1, help="Maximum DeepFool steps per input.")]
CandidatesOpt = Annotated[
    int, typer.Option("--candidates", min=0, help="Classes DeepFool linearises per step (top scores); 0 = all.")
]
HvpOpt = Annotated[
    str,
    typer.Option(
        "--hvp",
        help="Hessian-vector products: exact (double backward; smooth networks), fd (central differences of "
        "gradients; needed for ReLU/max-pool networks, whose exact Hessian is 0), auto (exact unless it is "
        "identically 0).",
    ),
]
FdStepOpt = Annotated[
    float | None,
    typer.Option("--fd-step", help="Finite-difference step h (default √d·range/512·10, the authors' choice)."),
]
SamplesOpt = Annotated[int, typer.Option("--samples", "-T", min=1, help="Random directions v_j per input (T).")]


# ------------------------------------------------------------------------------ helpers
def _check_gates(gate: list[str] | None) -> None:
    for g in gate or []:
        gates.parse(g)


def _tensors(info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    t = as_tensors(info.dataset)
    if t is not None:
        return t[0].float(), torch.as_tensor(t[1]).long()
    xs, ys = [], []
    for i in range(len(info)):
        xi, yi = info.dataset[i]
        xs.append(torch.as_tensor(xi).float())
        ys.append(int(yi))
    if not xs:
        raise DataError(f"{info.name} ({info.split}) has no inputs")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _finite(obj: Any) -> Any:
    """The result tree with NaN/±inf floats as null (strict JSON for CI tools)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class _Run:
    """Model, data and bookkeeping shared by the four commands."""

    def __init__(self, command: str, mo: ModelOptions, run: RunOptions, output: OutputOptions) -> None:
        self.command = command
        self.output = output
        self.out = output.output()
        _check_gates(output.gate)
        self.gate = output.gate
        self.timer = Timer()
        self.model_path = mo.path
        self.seed = run.seed
        torch.manual_seed(run.seed)
        with self.timer("load"):
            self.model: KmModel = mo.load()
        self.dev = device_of(run.device)
        self.model.to(self.dev).eval()
        self.info: DataInfo | None = None

    def data(self, ds: DataOptions, default_n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = ds.n
        if n is not None and n < 1:
            raise ConfigError("-n must be at least 1")
        self.info = ds.load(self.model, n=n or default_n)
        if n is None:
            self.out.info(f"using the first {len(self.info)} inputs (-n to change)")
        return _tensors(self.info)

    def paths(self, **files: str) -> dict[str, Path]:
        out_dir, force = self.output.out, self.output.force
        if out_dir is None:
            return {}
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--out {out_dir} is a file: give a folder")
        stem = f"geometry-{self.command}"
        paths = {k: out_dir / f"{stem}{suffix}" for k, suffix in files.items()}
        for p in paths.values():
            check_writable(p, force)
        return paths

    def doc(self, results: dict[str, Any]) -> dict[str, Any]:
        return envelope(
            f"geometry {self.command}", _finite(results), model=describe_model(self.model_path, self.model),
            data=self.info.to_dict() if self.info is not None else None, seed=self.seed, device=self.dev,
            timings=self.timer.timings,
        )

    def finish(self, doc: dict[str, Any], human: Callable[[Console], None], paths: dict[str, Path]) -> None:
        if "json" in paths:
            write_json(paths["json"], doc, self.output.force)
            self.out.info("wrote " + ", ".join(str(p) for p in paths.values() if p.exists()))
        self.out.emit(doc, human)
        self.out.gate(self.gate, doc)


def _save_npz(path: Path, arrays: dict[str, Any], force: bool) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append '.npz'
            np.savez(fh, **arrays)

    write_with(path, writer, force)


def _np(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0) if t is None else t.detach().cpu().numpy()


def _lipschitz(text: str) -> str | float:
    if text in ("product", "local"):
        return text
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"--lipschitz must be product, local or a positive number, got {text!r}") from exc
    if not value > 0:
        raise ConfigError("--lipschitz must be positive")
    return value


# ----------------------------------------------------------------------------- distance
@grouped
def geometry_distance(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("download",))],
    lipschitz: Annotated[
        str,
        typer.Option(
            "--lipschitz",
            help="Gauss networks, Theorem 2: L_p of the feature map. product (an upper bound composed over "
            "the layers), local (the Jacobian norm along x → x_adv: an estimate, not a guarantee) or a number.",
        ),
    ] = "product",
    overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50,
    candidates: CandidatesOpt = 10,
    bisection_steps: Annotated[
        int, typer.Option("--bisection-steps", min=0, help="Halvings of x → x_adv that put z on F = 0.")
    ] = 30,
    clip: Annotated[
        bool, typer.Option("--clip/--no-clip", help="Clamp DeepFool's iterates to [0, 1] (images).")
    ] = False,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Distance to the decision boundary: r(x) and z = x + r(x) on it, batched (Sec. II).

    DeepFool gives x_adv just past the boundary; a bisection along x → x_adv puts z on the
    pairwise boundary F = s_adv - s_label = 0, so ‖r(x)‖ = ‖z - x‖. For a Gauss network
    Theorem 2's lower bound is reported beside it (three forms; with --lipschitz product the
    bound can never exceed the DeepFool distance: `theorem2.violations` counts inputs where
    it does).

    Example: kmtools geometry distance gauss.safetensors --data cifar10 -n 500 --gate "theorem2.violations==0"
    """
    from kmtools.geometry import boundary_distance
    from kmtools.geometry.plots import plot_distance

    geo = _Run("distance", mo, run, output)
    x, _ = geo.data(ds, 100)
    paths = geo.paths(json=".json", npz=".npz", png=".png")
    lip = _lipschitz(lipschitz)
    with geo.timer("distance"), geo.out.progress("DeepFool", len(x)) as prog:
        res = boundary_distance(
            geo.model, x, lipschitz=lip, overshoot=overshoot, max_iter=max_iter, candidates=candidates or None,
            bisection_steps=bisection_steps, clip=(0.0, 1.0) if clip else None, batch_size=run.batch_size,
            device=geo.dev, progress=prog,
        )
    results: dict[str, Any] = {"head_kind": geo.model.head_kind, **res.to_dict()}
    if paths:
        arrays = {
            "distance": _np(res.distance), "deepfool_norm": _np(res.deepfool_norm), "labels": _np(res.labels),
            "adv_labels": _np(res.adv_labels), "converged": _np(res.converged), "on_boundary": _np(res.on_boundary),
            "r": _np(res.r).astype(np.float32),
        }
        bounds = {k: getattr(res, k) for k in ("bound_at_adv", "bound_any", "bound_margin") if getattr(res, k) is not None}
        arrays |= {k: _np(v) for k, v in bounds.items()}
        _save_npz(paths["npz"], arrays, output.force)
        plot_distance(res.distance.cpu(), paths["png"], bounds=bounds or None, force=output.force)
    doc = geo.doc(results)

    def human(con: Console) -> None:
        d = results.get("distance") or {}
        rows: list[tuple[str, Any]] = [
            ("head", results["head_kind"]),
            ("inputs", results["inputs"]),
            ("DeepFool converged", results["converged"]),
            ("z on the boundary", results["on_boundary"]),
            ("‖r(x)‖ median", d.get("median")),
            ("‖r(x)‖ mean", d.get("mean")),
            ("‖r(x)‖ min / max", [d.get("min"), d.get("max")]),
        ]
        t2 = results.get("theorem2")
        if t2:
            lipv = (t2.get("lipschitz") or {}).get("value")
            rows += [
                ("Theorem 2 L_p", lipv if not isinstance(lipv, dict) else lipv.get("median")),
                ("bound (at x_adv) median", (t2["bound_at_adv"] or {}).get("median")),
                ("bound (any x̃) median", (t2["bound_any"] or {}).get("median")),
                ("bound (bisector) median", (t2["bound_margin"] or {}).get("median")),
                ("non-vacuous (any x̃)", t2["nonvacuous_any"]),
                ("violations (bound > ‖r‖)", t2["violations"]),
            ]
        name = geo.info.name if geo.info else "data"
        con.print(kv_table(f"Boundary distance r(x) on {results['inputs']} {name} inputs", rows))

    geo.finish(doc, human, paths)


# ---------------------------------------------------------------------------- curvature
@grouped
def geometry_curvature(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("download",))],
    top: Annotated[int, typer.Option("--top", min=1, help="Largest principal curvatures to compute.")] = 10,
    bottom: Annotated[int, typer.Option("--bottom", min=1, help="Smallest principal curvatures to compute.")] = 10,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Lanczos steps (default max(40, 3·(top+bottom)), at most d-1)."),
    ] = None,
    samples: SamplesOpt = 20,
    hvp: HvpOpt = "auto",
    fd_step: FdStepOpt = None,
    overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50,
    candidates: CandidatesOpt = 10,
    run: Annotated[RunOptions, Use(defaults={"batch_size": 32})],
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Principal curvatures of the boundary at z = x + r(x) (Eq. 1, Fig. 4b) and their average.

    The eigenvalues of G(z) = ‖∇F‖⁻¹ P H_F P on the tangent space by Lanczos on
    Hessian-vector products (the Hessian is never formed); F = s_other - s_own, so a positive
    curvature means the input's own region is locally convex. The average κ̄ = tr(G)/(d-1) is
    estimated from --samples random tangent directions; the paper finds κ̄ < 0 near natural
    inputs (`fraction_negative`). --out writes the Fig. 4b profile.

    Example: kmtools geometry curvature model.pt --arch resnet18 --data cifar10 -n 50 --out runs/
    """
    from kmtools.geometry import boundary_curvature
    from kmtools.geometry.plots import plot_curvature_profile

    geo = _Run("curvature", mo, run, output)
    x, _ = geo.data(ds, 20)
    paths = geo.paths(json=".json", npz=".npz", png=".png")
    with geo.timer("curvature"), geo.out.progress("Lanczos", len(x)) as prog:
        res = boundary_curvature(
            geo.model, x, top=top, bottom=bottom, steps=steps, samples=samples, method=hvp, fd_step=fd_step,
            seed=run.seed, overshoot=overshoot, max_iter=max_iter, candidates=candidates or None,
            batch_size=run.batch_size, device=geo.dev, progress=prog,
        )
    results: dict[str, Any] = {"head_kind": geo.model.head_kind, **res.to_dict()}
    if paths:
        _save_npz(paths["npz"], {
            "top": _np(res.top), "bottom": _np(res.bottom), "mean": _np(res.mean), "grad_norm": _np(res.grad_norm),
            "labels": _np(res.labels), "others": _np(res.others), "distance": _np(res.distance),
            "valid": _np(res.valid),
        }, output.force)
        plot_curvature_profile(res, paths["png"], force=output.force)
    doc = geo.doc(results)

    def human(con: Console) -> None:
        tp, bp = results["top_mean_profile"], results["bottom_mean_profile"]
        rows: list[tuple[str, Any]] = [
            ("head", results["head_kind"]),
            ("inputs (valid)", f"{results['inputs']} ({results['valid']})"),
            ("input dimension d", results["dim"]),
            ("Hessian-vector products", results["hvp"] + (f" (h = {results['fd_step']:.4g})" if results["fd_step"] else "")),
            ("Lanczos steps", results["lanczos_steps"]),
            ("largest κ (mean over inputs)", [round(v, 4) for v in tp[:5]]),
            ("smallest κ (mean over inputs)", [round(v, 4) for v in bp[:5]]),
            ("average curvature κ̄ (mean)", results["mean_curvature_mean"]),
            ("κ̄ < 0 (paper: natural inputs)", results["fraction_negative"]),
            ("distance median", results.get("distance_median")),
        ]
        con.print(kv_table("Principal curvatures at z = x + r(x) (F = s_other - s_own)", rows))

    geo.finish(doc, human, paths)


# ------------------------------------------------------------------------------- detect
@grouped
def geometry_detect(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("download",))],
    adversarial: Annotated[
        Path | None,
        typer.Option(
            "--adversarial",
            help="Perturbed inputs to detect instead of DeepFool's: the .npz of `kmtools attack onepixel --out` "
            "(or any attack file with KEY_x_adv arrays), a set saved by --save-adversarial, or an .npz with x and "
            "labels (the labels before the attack).",
            show_default=False,
        ),
    ] = None,
    adv_key: Annotated[
        str | None,
        typer.Option("--adv-key", help="Which model's attack to read from an attack file (softmax, gauss, model, "
                     "compare); default the one matching MODEL's head."),
    ] = None,
    threshold: Annotated[float, typer.Option("--threshold", "-t", help="t of Algorithm 2: perturbed when ρ ≥ t.")] = 0.0,
    samples: SamplesOpt = 10,
    hvp: HvpOpt = "auto",
    fd_step: FdStepOpt = None,
    overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50,
    asymmetry: Annotated[
        bool,
        typer.Option("--asymmetry/--no-asymmetry", help="Also measure Table II: the sign of κ̄ at the nearest "
                     "boundary point of clean and perturbed inputs (a DeepFool run and a curvature estimate "
                     "per input more)."),
    ] = False,
    save_adversarial: Annotated[
        Path | None,
        typer.Option("--save-adversarial", help="Write the DeepFool-perturbed set (.npz or .safetensors) for "
                     "reuse with --adversarial.", show_default=False),
    ] = None,
    run: Annotated[RunOptions, Use(defaults={"batch_size": 64})],
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Algorithm 2: detect perturbed inputs from the sign of the average curvature, recover labels.

    ρ(x) = 1/(L T) Σ_{i≠k̂} Σ_j v_jᵀ G_{F_i}(x) v_j with F_i = s_i - s_k̂: perturbed when ρ ≥ t,
    and the recovered label is the class of the most positive curvature. Clean inputs come
    from --data; perturbed ones are their DeepFool images (default) or --adversarial. Reports
    the TP/FP curve over t (Fig. 8: TP = clean declared clean, FP = perturbed declared clean),
    its AUC, the t = 0 point and the label-recovery accuracy (paper: 74-92% on ImageNet).

    Example: kmtools geometry detect model.pt --arch resnet18 --data cifar10 -n 200 --out runs/ --gate "auc>=0.8"
    """
    from kmtools.attacks import deepfool
    from kmtools.geometry import (
        AdversarialSet,
        boundary_asymmetry,
        default_fd_step,
        detect,
        evaluate_detection,
        load_adversarial_set,
        save_adversarial_set,
    )
    from kmtools.geometry.plots import plot_detection_roc

    if adversarial is not None and save_adversarial is not None:
        raise ConfigError("--save-adversarial saves the DeepFool set: it cannot be combined with --adversarial")
    geo = _Run("detect", mo, run, output)
    aset = None
    if adversarial is not None:
        aset = load_adversarial_set(adversarial, key=adv_key, prefer=geo.model.head_kind)
        if not len(aset):
            raise DataError(f"{adversarial} holds no successful adversarial input")
    if ds.name is not None or aset is None or aset.x is None:
        x, _ = geo.data(ds, 100)
    else:
        x = aset.x[: ds.n or len(aset.x)]
        geo.out.info(f"clean inputs: the {len(x)} originals stored in {adversarial}")
    if save_adversarial is not None:
        check_writable(save_adversarial, output.force)
    paths = geo.paths(json=".json", npz=".npz", png=".png")
    want = tuple(geo.model.input_shape or x.shape[1:])
    if aset is not None:
        x_pert, orig = aset.x_adv[: ds.n or len(aset)], aset.labels[: ds.n or len(aset)]
        if tuple(x_pert.shape[1:]) != tuple(x.shape[1:]) or tuple(x.shape[1:]) != want:
            raise DataError(f"{adversarial}: inputs of shape {tuple(x_pert.shape[1:])}, the model takes {want}")
        source: dict[str, Any] = {"kind": "file", "path": str(adversarial), **aset.meta}
    else:
        with geo.timer("deepfool"), geo.out.progress("DeepFool", len(x)) as prog:
            df = deepfool(geo.model, x, overshoot=overshoot, max_iter=max_iter, batch_size=run.batch_size,
                          device=geo.dev, progress=prog)
        ok = (df.converged & (df.iterations > 0)).cpu()
        x_pert, orig = df.x_adv.cpu()[ok], df.labels.cpu()[ok]
        source = {"kind": "deepfool", "overshoot": overshoot, "flipped": int(ok.sum()), "inputs": len(x),
                  "norm_median": float(df.norms.cpu()[ok].median()) if bool(ok.any()) else None}
        if save_adversarial is not None:
            save_adversarial_set(save_adversarial, AdversarialSet(
                x_adv=x_pert, labels=orig, x=x[ok], adv_labels=df.adv_labels.cpu()[ok],
                meta={"source": "kmtools geometry detect (DeepFool)", "overshoot": overshoot},
            ), output.force)
    if not len(x_pert):
        raise DataError("no perturbed input to detect: DeepFool changed no prediction (try a larger -n)")
    h = fd_step if fd_step is not None else default_fd_step(x)
    common: dict[str, Any] = dict(threshold=threshold, samples=samples, fd_step=h, seed=run.seed,
                                  batch_size=run.batch_size, device=geo.dev)
    with geo.timer("detect_clean"), geo.out.progress("Algorithm 2 (clean)", len(x)) as prog:
        dc = detect(geo.model, x, method=hvp, progress=prog, **common)
    with geo.timer("detect_perturbed"), geo.out.progress("Algorithm 2 (perturbed)", len(x_pert)) as prog:
        dp = detect(geo.model, x_pert, method=dc.method, progress=prog, **common)
    ev = evaluate_detection(dc, dp, orig)
    L = geo.model.num_classes
    results: dict[str, Any] = {
        "head_kind": geo.model.head_kind,
        "perturbed_source": source,
        "threshold": threshold,
        "samples": samples,
        "hvp": dc.method,
        "fd_step": dc.fd_step,
        "sign_convention": "F_i = s_i - s_pred; perturbed when rho >= t (clean expected rho < 0)",
        **ev.to_dict(),
        "at_threshold": {
            "clean_flagged": float(dc.perturbed.float().mean()),
            "perturbed_flagged": float(dp.perturbed.float().mean()),
            "recovery_flagged": float((dp.recovered[dp.perturbed] == orig[dp.perturbed]).float().mean())
            if bool(dp.perturbed.any()) else None,
        },
        "chance_recovery": 1.0 / (L - 1) if L > 1 else None,
        "clean_rho": dc.to_dict(),
        "perturbed_rho": dp.to_dict(),
    }
    if asymmetry:
        with geo.timer("asymmetry"):
            asym = boundary_asymmetry(geo.model, x, x_pert=x_pert, samples=samples, method=dc.method, fd_step=h,
                                      seed=run.seed, overshoot=overshoot, max_iter=max_iter, batch_size=run.batch_size,
                                      device=geo.dev)
        results["table2"] = asym.to_dict()
    if paths:
        _save_npz(paths["npz"], {
            "rho_clean": _np(dc.rho), "rho_perturbed": _np(dp.rho), "curv_clean": _np(dc.curvatures),
            "curv_perturbed": _np(dp.curvatures), "pred_clean": _np(dc.predictions),
            "pred_perturbed": _np(dp.predictions), "recovered": _np(dp.candidates), "original_labels": _np(orig),
        }, output.force)
        plot_detection_roc(ev, paths["png"], force=output.force)
    doc = geo.doc(results)

    def human(con: Console) -> None:
        rows: list[tuple[str, Any]] = [
            ("head", results["head_kind"]),
            ("clean / perturbed inputs", f"{ev.clean} / {ev.perturbed} ({source['kind']})"),
            ("Hessian-vector products", f"{dc.method}" + (f" (h = {h:.4g})" if dc.method == "fd" else "")),
            ("AUC of TP(FP) (Fig. 8)", ev.auc),
            ("t = 0: clean declared clean (TP)", ev.tp0),
            ("t = 0: perturbed declared clean (FP)", ev.fp0),
            ("best balanced accuracy (t)", f"{ev.best_balanced_accuracy:.3f} (t = {ev.best_threshold:.3g})"),
            ("label recovery, all perturbed", ev.recovery_all),
            ("label recovery, flagged at t = 0", ev.recovery_detected),
            ("chance level of recovery", results["chance_recovery"]),
            ("ρ median clean / perturbed", [float(dc.rho.median()), float(dp.rho.median())]),
        ]
        if "table2" in results:
            t2 = results["table2"]
            rows += [("Table II: clean κ̄ < 0", t2["clean_negative"]), ("Table II: perturbed κ̄ > 0",
                                                                        t2["perturbed_positive"])]
        con.print(kv_table(f"Algorithm 2 at t = {threshold:g} (paper: >95% detection, 74-92% recovery)", rows))

    geo.finish(doc, human, paths)


# --------------------------------------------------------------------------------- path
def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise ConfigError(f"--pair must be two input indices 'I,J', got {text!r}") from exc
    return a, b


@grouped
def geometry_path(
    *,
    mo: ModelOptions,
    ds: Annotated[DataOptions, Use(add=("download",))],
    pair: Annotated[
        str | None,
        typer.Option("--pair", help="Two input indices 'I,J' (of the first -n inputs) to connect.", show_default=False),
    ] = None,
    pairs: Annotated[
        int, typer.Option("--pairs", min=1, help="Random same-class pairs to connect when --pair is not given.")
    ] = 10,
    samples: Annotated[
        int, typer.Option("--samples", min=2, help="Points checked on each segment (ends included), line 10.")
    ] = 16,
    max_depth: Annotated[int, typer.Option("--max-depth", min=1, help="Recursion limit of FINDPATH.")] = 10,
    max_anchors: Annotated[int, typer.Option("--max-anchors", min=3, help="Limit on the anchors of one path.")] = 256,
    min_push: Annotated[
        float,
        typer.Option("--min-push", min=0.0, help="A projected midpoint moves at least this fraction of the segment "
                     "being split into the region (0 = the paper's minimal projection, which can stall at kinks)."),
    ] = 0.1,
    overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50,
    run: RunOptions,
    output: Annotated[OutputOptions, Use(options={"out": OutDirOpt})],
) -> None:
    """Algorithm 1: a piecewise-linear path between two inputs of one class that stays in its region.

    The straight segment is tried first; where it leaves the region the midpoint is
    projected back (a targeted DeepFool step) and both halves are searched recursively.
    Reports per pair whether a path was found, its anchors and length against the straight
    segment (paper: a path always exists, close to straight). --out plots the class scores
    along the first path that needed anchors (or the first path).

    Example: kmtools geometry path model.pt --arch resnet18 --data cifar10 -n 200 --pairs 50 --out runs/
    """
    from kmtools.geometry import find_path, path_profile, same_class_pairs
    from kmtools.geometry.plots import plot_path_profile

    geo = _Run("path", mo, run, output)
    x, _ = geo.data(ds, 200)
    paths = geo.paths(json=".json", npz=".npz", png=".png")
    from kmtools.attacks import decision_scores

    with torch.no_grad():
        pred = torch.cat([decision_scores(geo.model, x[i : i + run.batch_size].to(geo.dev)).argmax(1).cpu()
                          for i in range(0, len(x), run.batch_size)])
    if pair is not None:
        i, j = _pair(pair)
        if not (0 <= i < len(x) and 0 <= j < len(x)) or i == j:
            raise ConfigError(f"--pair {pair}: need two different indices below {len(x)} (the -n inputs)")
        todo = [(i, j)]
    else:
        todo = same_class_pairs(pred, pairs, run.seed)
        if not todo:
            raise DataError("no two inputs share a predicted class: use a larger -n")
    recs = []
    found = []
    with geo.timer("paths"), geo.out.progress("Algorithm 1", len(todo)) as prog:
        for done, (i, j) in enumerate(todo, 1):
            res = find_path(geo.model, x[i], x[j], samples=samples, max_depth=max_depth, max_anchors=max_anchors,
                            overshoot=overshoot, max_iter=max_iter, min_push=min_push, device=geo.dev)
            found.append(res)
            recs.append({"pair": [i, j], **res.to_dict()})
            prog(done, len(todo))
    ok = [r for r in found if r.success]
    results: dict[str, Any] = {
        "head_kind": geo.model.head_kind,
        "pairs": len(found),
        "success": len(ok),
        "success_rate": len(ok) / len(found),
        "straight_rate": sum(r.straight for r in found) / len(found),
        "anchors_mean": float(np.mean([r.anchors.shape[0] for r in found])),
        "projections_mean": float(np.mean([r.projections for r in found])),
        "length_ratio_mean": float(np.mean([r.length / r.straight_length for r in ok if r.straight_length > 0]))
        if ok else None,
        "paths": recs,
    }
    if paths:
        shown = next((k for k, r in enumerate(found) if not r.straight), 0)
        res = found[shown]
        s, scores, anchors_s = path_profile(geo.model, res.anchors, device=geo.dev)
        i, j = todo[shown]
        classes = geo.model.classes
        plot_path_profile(s, scores, anchors_s, paths["png"], label=res.label, class_names=classes, force=output.force,
                          title=f"Algorithm 1: inputs {i} → {j}, class {classes[res.label]}, "
                          f"{'found' if res.success else 'not found'}, {res.anchors.shape[0]} anchors")
        _save_npz(paths["npz"], {"anchors": _np(res.anchors).astype(np.float32), "pair": np.asarray(todo[shown]),
                                 "positions": _np(s), "scores": _np(scores)}, output.force)
        results["plotted_pair"] = list(todo[shown])
    doc = geo.doc(results)

    def human(con: Console) -> None:
        rows: list[tuple[str, Any]] = [
            ("head", results["head_kind"]),
            ("pairs (same predicted class)", results["pairs"]),
            ("path found", f"{results['success']} ({results['success_rate']:.0%})"),
            ("straight segment already inside", results["straight_rate"]),
            ("anchors (mean)", results["anchors_mean"]),
            ("midpoint projections (mean)", results["projections_mean"]),
            ("path length / straight length", results["length_ratio_mean"]),
        ]
        failed = [r for r in recs if not r["success"]]
        if failed:
            rows.append(("failed pairs", ", ".join(f"{r['pair'][0]}-{r['pair'][1]} ({r['reason']})" for r in failed[:5])))
        con.print(kv_table("Algorithm 1: paths inside classification regions (paper: always found)", rows))

    geo.finish(doc, human, paths)


app.command("distance")(geometry_distance)
app.command("curvature")(geometry_curvature)
app.command("detect")(geometry_detect)
app.command("path")(geometry_path)


def register(root: typer.Typer) -> None:
    """Add the ``geometry`` group: ``kmtools geometry distance|curvature|detect|path``."""
    root.add_typer(app, name="geometry")
