"""``kmtools export``: write a model as kmtools safetensors, a torch.export program (.pt2)
and ONNX, each checked against the eager model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kmtools.errors import ConfigError
from kmtools_cli._common import describe_model, ints, open_data
from kmtools_cli._options import DataOptions, ModelOptions, OutputOptions, RunOptions, Use, grouped, out_dir
from kmtools_cli._output import fmt, kv_table

if TYPE_CHECKING:
    from rich.console import Console

#: kmtools.export.FORMATS, stated here so that --help does not import torch (a test keeps them equal)
FORMATS = ("kmtools", "pt2", "onnx")

OutDirOpt = out_dir("Output folder (files model.safetensors, model.pt2, model.onnx), or a "
                    "NAME.onnx/.pt2/.safetensors path whose stem names every file.", str)
FormatsOpt = Annotated[str, typer.Option(
    "--formats", help=f"Comma-separated formats to write: {', '.join(FORMATS)} (torchscript = pt2).")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (17 or higher).")]
CheckOpt = Annotated[bool, typer.Option(
    "--check/--no-check", help="Reload every written file and compare it with the eager model "
    "on random batches of 1 and 7 inputs (needs onnxruntime for ONNX).")]
AtolOpt = Annotated[float, typer.Option("--atol", help="Largest absolute difference accepted by the check.")]
CHECK_DATA_INPUTS = 8
DataExampleOpt = Annotated[str | None, typer.Option(
    "--data", "-d", show_default=False,
    help=f"Trace and check on the first {CHECK_DATA_INPUTS} inputs of this dataset (and random inputs in "
    "their value range) instead of random inputs alone: a Gauss network's κ is ~0 on many random "
    "inputs, which makes a check on them alone weak.")]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@grouped
def export_model(
    *,
    mo: Annotated[ModelOptions, Use(add=("input_shape",))],
    ds: Annotated[DataOptions, Use(skip=("n",), options={"name": DataExampleOpt})],
    formats: FormatsOpt = ",".join(FORMATS),
    opset: OpsetOpt = 18,
    check: CheckOpt = True,
    atol: AtolOpt = 1e-4,
    run: Annotated[RunOptions, Use(skip=("device", "batch_size"))],
    output: Annotated[OutputOptions, Use(skip=("gate",), options={"out": OutDirOpt})],
) -> None:
    """Export a model as self-contained files that run without kmtools.

    kmtools: .safetensors with kmtools metadata (input of every other command);
    pt2: a torch.export program, kmtools' TorchScript successor (torch.export.load(p).module());
    onnx: an ONNX model (opset >= 17) for onnxruntime. 'torchscript' is accepted as a name for
    pt2. The programs take pixel-space inputs named 'input' with a dynamic batch dimension and
    return 'scores' (logits, or κ for a Gauss head) and 'confidences' (softmax, or κ). Each
    file is reloaded and compared with the eager model (max abs diff in the results) before it
    is moved into place; a failed check writes nothing.

    Example: kmtools export gauss.safetensors --out exported/ --formats kmtools,torchscript,onnx --data digits
    """
    import torch

    from kmtools.export import export, parse_formats
    from kmtools.report.schema import envelope
    from kmtools.runs import Timer

    out = output.output()
    if output.out is None:
        raise ConfigError("kmtools export needs --out DIR (or --out NAME.onnx)")
    fmts = parse_formats(formats)
    timer = Timer()
    with timer("load"):
        model = mo.load()
    if model.input_shape is None and mo.input_shape is not None:
        model.input_shape = tuple(ints(mo.input_shape, "--input-shape") or ())
    example = None
    data_doc = None
    if ds.name is not None:
        with timer("load"):
            info = open_data(ds.name, root=ds.data_root, split=ds.split, n=CHECK_DATA_INPUTS, model=model,
                             image_size=ds.image_size)
            example = torch.stack([torch.as_tensor(info.dataset[i][0]) for i in range(len(info))])
        data_doc = info.to_dict()
    with timer("export"):
        result = export(model, output.out, formats=fmts, opset=opset, example=example, check=check, atol=atol,
                        force=output.force, seed=run.seed, progress=out.info)
    results = result.to_dict()
    doc = envelope("export", results, model=describe_model(mo.path, model), data=data_doc, seed=run.seed,
                   device="cpu", timings=timer.timings)

    def human(con: Console) -> None:
        t = Table(title=f"export of {mo.path}", title_justify="left")
        for col in ("format", "file", "size", "export s", "max |Δ| vs eager"):
            t.add_column(col, justify="left" if col in ("format", "file") else "right",
                         overflow="fold" if col == "file" else "ellipsis")
        for name, f in result.files.items():
            diff = "not checked" if f.max_abs_diff is None else f"{f.max_abs_diff:.2g}"
            t.add_row(name, f.path, _size(f.bytes), f"{f.seconds:.2f}", diff)
        con.print(t)
        rows: list[tuple[str, object]] = [
            ("head", result.head_kind),
            ("classes", result.num_classes),
            ("input", f"{result.input_name} (batch, {', '.join(map(str, result.input_shape))}), pixel space"),
            ("outputs", ", ".join(result.output_names) + f" (batch, {result.num_classes})"),
            ("outlier threshold", result.outlier_threshold),
        ]
        if result.opset is not None:
            rows.append(("ONNX opset", result.opset))
        if result.checked:
            batches = ", ".join(map(str, result.check_batches))
            rows.append(("check", f"batches {batches}; atol {fmt(result.atol)}; passed"))
        con.print(kv_table("exported program", rows))

    out.emit(doc, human)


def register(app: typer.Typer) -> None:
    app.command("export")(export_model)
