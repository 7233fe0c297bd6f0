"""Shared options, declared once as four groups (model, data, run, output) and attached to a
command by :func:`grouped` (DESIGN.md, "CLI conventions").

A command names a group by a parameter typed with the group's dataclass; ``grouped`` expands
it into the group's options (in that group's ``--help`` panel) and hands the command the
packed dataclass::

    @app.command("fgsm")
    @grouped
    def attack_fgsm(
        *,  # keyword-only: groups need no default and may follow options that have one
        model: ModelOptions,
        data: Annotated[DataOptions, Use(add=("download",))],
        eps: Annotated[str, typer.Option("--eps", help="...")] = "0,0.1",
        run: Annotated[RunOptions, Use(defaults={"batch_size": 128})],
        out: OutputOptions,
    ) -> None: ...

``Use`` tailors a group to one command: ``add`` opt-in fields (``OPT_IN``), ``skip`` fields
the command does not take (they keep the dataclass default), ``defaults`` per-command default
values, ``options`` a whole per-command declaration (other help text, another type).
A new shared option is one field in its dataclass (docs/architecture.md).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import operator
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import typer

if TYPE_CHECKING:  # keep `kmtools --help` light: the library loads when a command runs
    from kmtools.data import DataInfo
    from kmtools.models import KmModel
    from kmtools_cli._output import Output

# ------------------------------------------------------------------ single option declarations
ModelArg = Annotated[Path, typer.Argument(help="Checkpoint: kmtools .safetensors, state dict (.pt/.pth/.safetensors) with --arch, or TorchScript.", show_default=False)]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture of a plain state dict: resnet18, vgg16, smallcnn, mlp, torchvision:NAME, timm:NAME (the timm extra), or your own class as path/to/file.py:Class or package.module:Class (imports that code).")]
ArchKwargsOpt = Annotated[str | None, typer.Option("--arch-kwargs", help="JSON object of constructor arguments for --arch, e.g. '{\"num_classes\": 10}'.")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-code", help="Allow importing the model class a kmtools file's metadata names (runs that code!); or give the same --arch FILE.py:Class again.")]
HeadPathOpt = Annotated[str | None, typer.Option("--head", help="Module path of the final nn.Linear (found automatically when omitted).")]
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", help="Number of classes (inferred from the checkpoint when omitted).")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow unpickling Python objects from the checkpoint (runs code from the file!).")]
NormOpt = Annotated[str | None, typer.Option("--norm", help="Input normalisation preset: cifar10, cifar100, imagenet, mnist, fashion-mnist, svhn, none.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean, comma-separated (overrides the checkpoint's).")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, comma-separated.")]
InputShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="Input shape without the batch, e.g. 3,32,32 (for models that do not know it).")]
CompareOpt = Annotated[Path | None, typer.Option("--compare", help="A second checkpoint (typically the Gauss network of MODEL), loaded with the same options and attacked on the same inputs with the same seed, reported side by side.", show_default=False)]

DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Dataset: digits, wine, cifar10, cifar100, mnist, fashion-mnist, svhn, an ImageFolder path or an .npz file.")]
DataRootOpt = Annotated[Path | None, typer.Option("--data-root", envvar="KMTOOLS_DATA", help="Folder holding datasets (env KMTOOLS_DATA).")]
SplitOpt = Annotated[str, typer.Option("--split", help="train or test (val too for ImageFolder trees with a val/ folder).")]
NOpt = Annotated[int | None, typer.Option("-n", "--num", help="Use only the first N samples.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download the dataset if it is missing (never done otherwise).")]
ImageSizeOpt = Annotated[str | None, typer.Option("--image-size", help="Resize images as they load (bilinear, antialiased): N scales the shorter side to N and crops the centre N×N (torchvision's Resize + CenterCrop); HxW (e.g. 224x224) scales to exactly H×W. Lets ImageFolders of mixed sizes load.", show_default=False)]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto falls back to the CPU).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same device, same result).")]
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast and channels_last on CUDA.")]

OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output file or folder.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="human or json (one JSON document on stdout).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages on stderr.")]
GateOpt = Annotated[list[str] | None, typer.Option("--gate", help="Condition on the results, e.g. 'accuracy>=0.9'; exit 3 when it fails. Repeatable.")]


def _debug_seen(ctx: typer.Context, value: bool) -> bool:
    """The one place ``--debug`` (or ``KMTOOLS_DEBUG``) is read: ``cli.main`` looks here."""
    if value:
        ctx.meta["kmtools.debug"] = True
    return value


DebugOpt = Annotated[bool, typer.Option("--debug", envvar="KMTOOLS_DEBUG", callback=_debug_seen, help="Show tracebacks on errors.")]


def out_dir(help: str, type_: Any = Path) -> Any:
    """A command's own ``--out`` declaration: the shared flags with the command's help text."""
    return Annotated[type_ | None, typer.Option("--out", "-o", help=help, show_default=False)]


# ---------------------------------------------------------------------------------- the groups
@dataclass
class ModelOptions:
    """MODEL and how to load it."""

    path: ModelArg
    arch: ArchOpt = None
    head: HeadPathOpt = None
    num_classes: NumClassesOpt = None
    trust_checkpoint: TrustOpt = False
    norm: NormOpt = None
    mean: MeanOpt = None
    std: StdOpt = None
    input_shape: InputShapeOpt = None
    compare: CompareOpt = None
    arch_kwargs: ArchKwargsOpt = None
    trust_code: TrustCodeOpt = False

    PANEL: ClassVar[str] = "Model"
    FLAT: ClassVar[dict[str, str]] = {"path": "model_path"}
    OPT_IN: ClassVar[tuple[str, ...]] = ("input_shape", "compare")

    def load_kwargs(self) -> dict[str, Any]:
        """The options of ``open_model`` (also used for ``--compare``)."""
        return dict(arch=self.arch, head=self.head, num_classes=self.num_classes, trust=self.trust_checkpoint,
                    norm=self.norm, mean=self.mean, std=self.std, input_shape=self.input_shape,
                    arch_kwargs=self.arch_kwargs, trust_code=self.trust_code)

    def load(self, path: Path | None = None) -> KmModel:
        """Load MODEL (or ``path``, e.g. ``--compare``) with these options."""
        from kmtools_cli._common import open_model

        target = self.path if path is None else path
        if target is None:
            raise ValueError("no model path")
        return open_model(target, **self.load_kwargs())


@dataclass
class DataOptions:
    """``--data`` and which part of it."""

    name: DataOpt = None
    data_root: DataRootOpt = None
    split: SplitOpt = "test"
    n: NOpt = None
    download: DownloadOpt = False
    workers: WorkersOpt = 0
    image_size: ImageSizeOpt = None

    PANEL: ClassVar[str] = "Data"
    FLAT: ClassVar[dict[str, str]] = {"name": "data"}
    OPT_IN: ClassVar[tuple[str, ...]] = ("download", "workers")

    def load(self, model: KmModel | None = None, **overrides: Any) -> DataInfo:
        """``--data`` checked against ``model``; ``overrides`` replace ``open_data`` arguments
        (``split``, ``n``, ``seed``, ``shuffle``, ``download``, ``image_size``)."""
        from kmtools_cli._common import open_data

        kw: dict[str, Any] = dict(root=self.data_root, split=self.split, n=self.n, download=self.download,
                                  image_size=self.image_size)
        return open_data(self.name, model=model, **(kw | overrides))


@dataclass
class RunOptions:
    """Where and how the work runs."""

    device: DeviceOpt = "auto"
    batch_size: BatchOpt = 256
    seed: SeedOpt = 0
    amp: AmpOpt = True

    PANEL: ClassVar[str] = "Run"
    FLAT: ClassVar[dict[str, str]] = {}
    OPT_IN: ClassVar[tuple[str, ...]] = ("amp",)


@dataclass
class OutputOptions:
    """Where results go and how they are shown."""

    out: OutOpt = None
    force: ForceOpt = False
    gate: GateOpt = None
    format: FormatOpt = "human"
    quiet: QuietOpt = False
    debug: DebugOpt = False

    PANEL: ClassVar[str] = "Output"
    FLAT: ClassVar[dict[str, str]] = {}
    OPT_IN: ClassVar[tuple[str, ...]] = ()

    def output(self) -> Output:
        """The single output object of the command (stdout result, stderr progress)."""
        from kmtools_cli._output import Output

        return Output(self.format, self.quiet)


GROUPS: tuple[type, ...] = (ModelOptions, DataOptions, RunOptions, OutputOptions)


def is_group(cls: Any) -> bool:
    """A group: one of :data:`GROUPS`, or a command's own dataclass of options with the same
    class attributes (``PANEL`` None keeps its options in the default ``Options`` panel)."""
    return cls in GROUPS or (isinstance(cls, type) and dataclasses.is_dataclass(cls)
                             and all(hasattr(cls, a) for a in ("PANEL", "FLAT", "OPT_IN")))
REQUIRED: Any = inspect.Parameter.empty


@dataclass(frozen=True)
class Use:
    """How one command takes a group: see the module docstring."""

    add: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


F = TypeVar("F", bound=Callable[..., Any])


def _group_of(annotation: Any) -> tuple[type | None, Use]:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        if is_group(base):
            uses = [m for m in meta if isinstance(m, Use)]
            return base, uses[0] if uses else Use()
    if is_group(annotation):
        return annotation, Use()
    return None, Use()


def _expand(cls: type, use: Use) -> tuple[list[inspect.Parameter], Callable[[dict[str, Any]], Any]]:
    """The group's attached options as parameters, and how to pack their values into ``cls``.
    A field typed with a group (e.g. ``mo: Annotated[ModelOptions, Use(...)]`` in a command
    family's bundle) expands in place into that group's options."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = (set(use.add) | set(use.skip) | set(use.defaults) | set(use.options)) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no option(s) {sorted(unknown)}")
    params: list[inspect.Parameter] = []
    packers: dict[str, Callable[[dict[str, Any]], Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in use.skip or (f.name in cls.OPT_IN and f.name not in use.add):  # type: ignore[attr-defined]
            continue
        ann = use.options.get(f.name, hints[f.name])
        sub, sub_use = _group_of(ann)
        if sub is not None:
            sub_params, packers[f.name] = _expand(sub, sub_use)
            params += sub_params
            continue
        base, *meta = typing.get_args(ann)
        info = [copy.copy(m) for m in meta]
        for m in info:
            if isinstance(m, typer.models.OptionInfo) and m.rich_help_panel is None:
                m.rich_help_panel = cls.PANEL  # type: ignore[attr-defined]
        default = use.defaults.get(f.name, f.default)
        if default is dataclasses.MISSING:
            default = REQUIRED
        flat = cls.FLAT.get(f.name, f.name)  # type: ignore[attr-defined]
        params.append(inspect.Parameter(flat, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[(base, *info)]))
        packers[f.name] = operator.itemgetter(flat)
    return params, lambda kw: cls(**{name: pack(kw) for name, pack in packers.items()})


def grouped(fn: F) -> F:
    """Expand the group parameters of ``fn`` into their options; call ``fn`` with them packed."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    plan: dict[str, Callable[[dict[str, Any]], Any]] = {}
    for p in inspect.signature(fn).parameters.values():
        cls, use = _group_of(hints.get(p.name, p.annotation))
        if cls is None:
            params.append(p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY))
            plan[p.name] = operator.itemgetter(p.name)
            continue
        group_params, plan[p.name] = _expand(cls, use)
        params += group_params
    seen = [p.name for p in params]
    clash = {n for n in seen if seen.count(n) > 1}
    if clash:
        raise TypeError(f"{fn.__name__}: option name(s) {sorted(clash)} used twice")

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> Any:
        return fn(**{name: pack(kw) for name, pack in plan.items()})

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return typing.cast(F, wrapper)
