"""Shared option types, defined once and reused by every command (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelArg = Annotated[Path, typer.Argument(help="Checkpoint: kmtools .safetensors, state dict (.pt/.pth/.safetensors) with --arch, or TorchScript.", show_default=False)]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture of a plain state dict: resnet18, vgg16, smallcnn, mlp, torchvision:<name>.")]
HeadPathOpt = Annotated[str | None, typer.Option("--head", help="Module path of the final nn.Linear (found automatically when omitted).")]
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", help="Number of classes (inferred from the checkpoint when omitted).")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow unpickling Python objects from the checkpoint (runs code from the file!).")]
NormOpt = Annotated[str | None, typer.Option("--norm", help="Input normalisation preset: cifar10, cifar100, imagenet, mnist, fashion-mnist, svhn, none.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean, comma-separated (overrides the checkpoint's).")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, comma-separated.")]

DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Dataset: digits, wine, cifar10, cifar100, mnist, fashion-mnist, svhn, an ImageFolder path or an .npz file.")]
DataRootOpt = Annotated[Path | None, typer.Option("--data-root", envvar="KMTOOLS_DATA", help="Folder holding datasets (env KMTOOLS_DATA).")]
SplitOpt = Annotated[str, typer.Option("--split", help="train or test.")]
NOpt = Annotated[int | None, typer.Option("-n", "--num", help="Use only the first N samples.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download the dataset if it is missing (never done otherwise).")]

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto falls back to the CPU).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same device, same result).")]
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast and channels_last on CUDA.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]

OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output file or folder.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="human or json (one JSON document on stdout).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", envvar="KMTOOLS_DEBUG", help="Show tracebacks on errors.")]
GateOpt = Annotated[list[str] | None, typer.Option("--gate", help="Condition on the results, e.g. 'accuracy>=0.9'; exit 3 when it fails. Repeatable.")]
