"""``kmtools geometry distance|curvature|detect|path``: decision-boundary geometry.

Fawzi et al., "Classification regions of deep neural networks" (Sec. III-V, Eq. 1,
Algorithms 1-2) and Theorem 2 of "Gauss networks / softmax is k-means". The runs live in
:mod:`kmtools.geometry.run`; this module parses options, calls one and renders its view.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kmtools.errors import ConfigError, DataError
from kmtools_cli._common import device_of
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import kv_table

if TYPE_CHECKING:  # the library (and torch) loads when a command runs, so that --help stays light
    import torch

    from kmtools.data import DataInfo
    from kmtools.models import KmModel

app = typer.Typer(
    name="geometry",
    help="Decision-boundary geometry (Fawzi et al.): distance r(x) to the boundary with Theorem 2 "
    "beside it, principal curvatures (Eq. 1), curvature-sign detection of adversarial inputs with "
    "label recovery (Algorithm 2), paths inside a class region (Algorithm 1).",
    no_args_is_help=True,
)

# options of more than one command
OutDirOpt = out_dir("Folder for geometry-<command>.json (result document), .npz (per-input arrays) and .png (figure).")
Data = Annotated[DataOptions, Use(add=("download",))]
Out = Annotated[OutputOptions, Use(options={"out": OutDirOpt})]
OvershootOpt = Annotated[float, typer.Option("--overshoot", help="DeepFool overshoot: x + (1 + overshoot)·Σ r_i.")]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", min=1, help="Maximum DeepFool steps per input.")]
CandidatesOpt = Annotated[int, typer.Option("--candidates", min=0, help="Classes DeepFool linearises per step (top scores); 0 = all.")]
HvpOpt = Annotated[str, typer.Option("--hvp", help="Hessian-vector products: exact (double backward; smooth networks), fd (central differences of gradients; needed for ReLU/max-pool networks, whose exact Hessian is 0), auto (exact unless it is identically 0).")]
FdStepOpt = Annotated[float | None, typer.Option("--fd-step", help="Finite-difference step h (default √d·range/512·10, the authors' choice).")]
SamplesOpt = Annotated[int, typer.Option("--samples", "-T", min=1, help="Random directions v_j per input (T).")]
# distance
LipschitzOpt = Annotated[str, typer.Option("--lipschitz", help="Gauss networks, Theorem 2: L_p of the feature map. product (an upper bound composed over the layers), local (the Jacobian norm along x → x_adv: an estimate, not a guarantee) or a number.")]
BisectionOpt = Annotated[int, typer.Option("--bisection-steps", min=0, help="Halvings of x → x_adv that put z on F = 0.")]
ClipOpt = Annotated[bool, typer.Option("--clip/--no-clip", help="Clamp DeepFool's iterates to [0, 1] (images).")]
# curvature
TopOpt = Annotated[int, typer.Option("--top", min=1, help="Largest principal curvatures to compute.")]
BottomOpt = Annotated[int, typer.Option("--bottom", min=1, help="Smallest principal curvatures to compute.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", min=1, help="Lanczos steps (default max(40, 3·(top+bottom)), at most d-1).")]
# detect
AdversarialOpt = Annotated[Path | None, typer.Option("--adversarial", help="Perturbed inputs to detect instead of DeepFool's: the .npz of `kmtools attack onepixel --out` (or any attack file with KEY_x_adv arrays), a set saved by --save-adversarial, or an .npz with x and labels (the labels before the attack).", show_default=False)]
AdvKeyOpt = Annotated[str | None, typer.Option("--adv-key", help="Which model's attack to read from an attack file (softmax, gauss, model, compare); default the one matching MODEL's head.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", "-t", help="t of Algorithm 2: perturbed when ρ ≥ t.")]
AsymmetryOpt = Annotated[bool, typer.Option("--asymmetry/--no-asymmetry", help="Also measure Table II: the sign of κ̄ at the nearest boundary point of clean and perturbed inputs (a DeepFool run and a curvature estimate per input more).")]
SaveAdvOpt = Annotated[Path | None, typer.Option("--save-adversarial", help="Write the DeepFool-perturbed set (.npz or .safetensors) for reuse with --adversarial.", show_default=False)]
# path
PairOpt = Annotated[str | None, typer.Option("--pair", help="Two input indices 'I,J' (of the first -n inputs) to connect.", show_default=False)]
PairsOpt = Annotated[int, typer.Option("--pairs", min=1, help="Random same-class pairs to connect when --pair is not given.")]
PathSamplesOpt = Annotated[int, typer.Option("--samples", min=2, help="Points checked on each segment (ends included), line 10.")]
MaxDepthOpt = Annotated[int, typer.Option("--max-depth", min=1, help="Recursion limit of FINDPATH.")]
MaxAnchorsOpt = Annotated[int, typer.Option("--max-anchors", min=3, help="Limit on the anchors of one path.")]
MinPushOpt = Annotated[float, typer.Option("--min-push", min=0.0, help="A projected midpoint moves at least this fraction of the segment being split into the region (0 = the paper's minimal projection, which can stall at kinks).")]


class _Geo:
    """The run context, model and inputs of one geometry command (``with`` block: SIGINT and
    SIGTERM become one ``Interrupted`` error, exit 128 + signal)."""

    def __init__(self, command: str, mo: ModelOptions, run: RunOptions, output: OutputOptions) -> None:
        from kmtools.runs import RunContext, check_gates  # imported when a command runs (fast --help)

        check_gates(output.gate)
        self.out = output.output()
        self.output = output
        self.model_path = mo.path
        self.ctx = RunContext(f"geometry {command}", out_dir=output.out, force=output.force, seed=run.seed,
                              device=device_of(run.device), progress=self.out.progress, info=self.out.info)
        with self.ctx.timer("load"):
            self.model: KmModel = mo.load()
        self.model.to(self.ctx.device).eval()
        self.info: DataInfo | None = None

    def __enter__(self) -> _Geo:
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)

    def data(self, ds: DataOptions, default_n: int) -> torch.Tensor:
        n = ds.n
        if n is not None and n < 1:
            raise ConfigError("-n must be at least 1")
        self.info = ds.load(self.model, n=n or default_n)
        if n is None:
            self.out.info(f"using the first {len(self.info)} inputs (-n to change)")
        from kmtools.runs import tensors

        return tensors(self.info)[0]

    @property
    def where(self) -> dict[str, Any]:
        """What every ``run_*`` takes besides its options: model file and data, for the document."""
        return {"model_path": self.model_path, "data": self.info}

    def show(self, doc: dict[str, Any]) -> None:
        from kmtools.report.views import view_for

        title, rows = view_for(doc["command"]).summary(doc)  # type: ignore[union-attr,misc]
        self.out.emit(doc, lambda con: con.print(kv_table(title, rows)))
        self.out.gate(self.output.gate, doc)


@grouped
def geometry_distance(
    *, mo: ModelOptions, ds: Data, lipschitz: LipschitzOpt = "product", overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50, candidates: CandidatesOpt = 10, bisection_steps: BisectionOpt = 30,
    clip: ClipOpt = False, run: RunOptions, output: Out,
) -> None:
    """Distance to the decision boundary: r(x) and z = x + r(x) on it, batched (Sec. II).

    DeepFool gives x_adv just past the boundary; a bisection along x → x_adv puts z on the
    pairwise boundary F = s_adv - s_label = 0, so ‖r(x)‖ = ‖z - x‖. For a Gauss network
    Theorem 2's lower bound is reported beside it (three forms; with --lipschitz product the
    bound can never exceed the DeepFool distance: `theorem2.violations` counts inputs where
    it does).

    Example: kmtools geometry distance gauss.safetensors --data cifar10 -n 500 --gate "theorem2.violations==0"
    """
    from kmtools.geometry.run import run_distance

    with _Geo("distance", mo, run, output) as geo:
        doc = run_distance(geo.model, geo.data(ds, 100), geo.ctx, **geo.where, lipschitz=lipschitz,
                           overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                           bisection_steps=bisection_steps, clip=clip, batch_size=run.batch_size)
    geo.show(doc)


@grouped
def geometry_curvature(
    *, mo: ModelOptions, ds: Data, top: TopOpt = 10, bottom: BottomOpt = 10, steps: StepsOpt = None,
    samples: SamplesOpt = 20, hvp: HvpOpt = "auto", fd_step: FdStepOpt = None, overshoot: OvershootOpt = 0.02,
    max_iter: MaxIterOpt = 50, candidates: CandidatesOpt = 10,
    run: Annotated[RunOptions, Use(defaults={"batch_size": 32})], output: Out,
) -> None:
    """Principal curvatures of the boundary at z = x + r(x) (Eq. 1, Fig. 4b) and their average.

    The eigenvalues of G(z) = ‖∇F‖⁻¹ P H_F P on the tangent space by Lanczos on
    Hessian-vector products (the Hessian is never formed); F = s_other - s_own, so a positive
    curvature means the input's own region is locally convex. The average κ̄ = tr(G)/(d-1) is
    estimated from --samples random tangent directions; the paper finds κ̄ < 0 near natural
    inputs (`fraction_negative`). --out writes the Fig. 4b profile.

    Example: kmtools geometry curvature model.pt --arch resnet18 --data cifar10 -n 50 --out runs/
    """
    from kmtools.geometry.run import run_curvature

    with _Geo("curvature", mo, run, output) as geo:
        doc = run_curvature(
            geo.model, geo.data(ds, 20), geo.ctx, **geo.where, top=top, bottom=bottom, steps=steps, samples=samples,
            hvp=hvp, fd_step=fd_step, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
            batch_size=run.batch_size,
        )
    geo.show(doc)


@grouped
def geometry_detect(
    *, mo: ModelOptions, ds: Data, adversarial: AdversarialOpt = None, adv_key: AdvKeyOpt = None,
    threshold: ThresholdOpt = 0.0, samples: SamplesOpt = 10, hvp: HvpOpt = "auto", fd_step: FdStepOpt = None,
    overshoot: OvershootOpt = 0.02, max_iter: MaxIterOpt = 50, asymmetry: AsymmetryOpt = False,
    save_adversarial: SaveAdvOpt = None, run: Annotated[RunOptions, Use(defaults={"batch_size": 64})], output: Out,
) -> None:
    """Algorithm 2: detect perturbed inputs from the sign of the average curvature, recover labels.

    ρ(x) = 1/(L T) Σ_{i≠k̂} Σ_j v_jᵀ G_{F_i}(x) v_j with F_i = s_i - s_k̂: perturbed when ρ ≥ t,
    and the recovered label is the class of the most positive curvature. Clean inputs come
    from --data; perturbed ones are their DeepFool images (default) or --adversarial. Reports
    the TP/FP curve over t (Fig. 8: TP = clean declared clean, FP = perturbed declared clean),
    its AUC, the t = 0 point and the label-recovery accuracy (paper: 74-92% on ImageNet).

    Example: kmtools geometry detect model.pt --arch resnet18 --data cifar10 -n 200 --out runs/ --gate "auc>=0.8"
    """
    from kmtools.geometry import load_adversarial_set
    from kmtools.geometry.run import run_detect

    with _Geo("detect", mo, run, output) as geo:
        aset = None
        if adversarial is not None:
            aset = load_adversarial_set(adversarial, key=adv_key, prefer=geo.model.head_kind)
            if not len(aset):
                raise DataError(f"{adversarial} holds no successful adversarial input")
        if ds.name is not None or aset is None or aset.x is None:
            x = geo.data(ds, 100)
        else:
            x = aset.x[: ds.n or len(aset.x)]
            geo.out.info(f"clean inputs: the {len(x)} originals stored in {adversarial}")
        doc = run_detect(
            geo.model, x, geo.ctx, **geo.where, adversarial=aset, adversarial_path=adversarial, limit=ds.n,
            threshold=threshold, samples=samples, hvp=hvp, fd_step=fd_step, overshoot=overshoot, max_iter=max_iter,
            asymmetry=asymmetry, save_adversarial=save_adversarial, batch_size=run.batch_size,
        )
    geo.show(doc)


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise ConfigError(f"--pair must be two input indices 'I,J', got {text!r}") from exc
    return a, b


@grouped
def geometry_path(
    *, mo: ModelOptions, ds: Data, pair: PairOpt = None, pairs: PairsOpt = 10, samples: PathSamplesOpt = 16,
    max_depth: MaxDepthOpt = 10, max_anchors: MaxAnchorsOpt = 256, min_push: MinPushOpt = 0.1,
    overshoot: OvershootOpt = 0.02, max_iter: MaxIterOpt = 50, run: RunOptions, output: Out,
) -> None:
    """Algorithm 1: a piecewise-linear path between two inputs of one class that stays in its region.

    The straight segment is tried first; where it leaves the region the midpoint is
    projected back (a targeted DeepFool step) and both halves are searched recursively.
    Reports per pair whether a path was found, its anchors and length against the straight
    segment (paper: a path always exists, close to straight). --out plots the class scores
    along the first path that needed anchors (or the first path).

    Example: kmtools geometry path model.pt --arch resnet18 --data cifar10 -n 200 --pairs 50 --out runs/
    """
    from kmtools.geometry.run import run_path

    with _Geo("path", mo, run, output) as geo:
        doc = run_path(
            geo.model, geo.data(ds, 200), geo.ctx, **geo.where, pair=_pair(pair) if pair is not None else None,
            pairs=pairs, samples=samples, max_depth=max_depth, max_anchors=max_anchors, min_push=min_push,
            overshoot=overshoot, max_iter=max_iter, batch_size=run.batch_size,
        )
    geo.show(doc)


app.command("distance")(geometry_distance)
app.command("curvature")(geometry_curvature)
app.command("detect")(geometry_detect)
app.command("path")(geometry_path)


def register(root: typer.Typer) -> None:
    """Add the ``geometry`` group: ``kmtools geometry distance|curvature|detect|path``."""
    root.add_typer(app, name="geometry")
