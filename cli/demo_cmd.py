"""``kmtools demo``: the whole pipeline on bundled data, on the CPU, in under a minute.

It trains the small CNN on scikit-learn's ``digits``, then runs the same commands a user
would type (printed as it goes, so they can be copied): ``tailor``, ``evaluate --compare``,
``attack onepixel --compare``, ``attack fgsm --compare``, ``export`` and ``report``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from kmtools.data import load_dataset
from kmtools.errors import ConfigError, KmtoolsError, OutputExistsError
from kmtools.io import write_text
from kmtools.models import save_model, wrap, zoo
from kmtools.report.schema import envelope
from kmtools.train import train_classifier
from kmtools_cli._options import OutputOptions, RunOptions, Use, grouped
from kmtools_cli._output import Output


def _run(out: Output, args: list[str], log: Path) -> dict[str, Any]:
    """Run ``kmtools ARGS --format json`` in-process; return its JSON document."""
    import typer.main

    from kmtools_cli.main import app

    out.info(f"$ kmtools {shlex.join(args)}")
    t0 = time.perf_counter()
    cmd = typer.main.get_command(app)
    buf, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            cmd.main([*args, "--format", "json", "--quiet"], prog_name="kmtools", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ kmtools {shlex.join(args)}\n{err.getvalue()}\n")
    if code not in (0, None):
        raise KmtoolsError(f"demo step `kmtools {args[0]}` failed (exit {code}): "
                           f"{err.getvalue().strip().splitlines()[-1:] or ''}; see {log}")
    text = buf.getvalue().strip()
    doc: dict[str, Any] = json.loads(text) if text else {}
    out.info(f"  ({time.perf_counter() - t0:.1f} s)")
    return doc


def _get(doc: dict[str, Any], *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


DemoOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")]


@grouped
def demo(
    *,
    run: Annotated[RunOptions, Use(skip=("device", "batch_size"))],
    output: Annotated[OutputOptions, Use(skip=("gate",), defaults={"out": Path("demo-out")}, options={"out": DemoOutOpt})],
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of plain training (tailoring uses 4).")] = 8,
    attack_n: Annotated[int, typer.Option("--attack-n", help="Test images for the one-pixel attack.")] = 60,
) -> None:
    """Run the whole pipeline on bundled digits on the CPU (< 1 minute) and write a report.

    Trains a small CNN (softmax), tailors it into a Gauss network, evaluates both side by
    side (accuracy, confidence, outliers, noise AUROC), attacks both with one-pixel and FGSM,
    exports both (kmtools .safetensors, .pt2, ONNX) and writes OUT/summary.md and
    OUT/report.html. Each step is printed as the command you would type.

    Example: kmtools demo --out demo-out --force
    """
    out = output.output()
    out_dir = output.out or Path("demo-out")
    t0 = time.perf_counter()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder for the demo's outputs")
    if out_dir.exists() and any(out_dir.iterdir()) and not output.force:
        raise OutputExistsError(f"{out_dir} is not empty: pass --force to overwrite it, or --out another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "demo.log"
    log.write_text("", encoding="utf-8")
    torch.set_num_threads(1)  # the demo's models are tiny: more threads only add contention

    out.info(f"training a small CNN on scikit-learn digits ({epochs} epochs)...")
    torch.manual_seed(run.seed)
    train = load_dataset("digits", split="train")
    net = zoo.create("smallcnn", width=8)
    train_classifier(net, train.dataset, epochs=epochs, lr=1e-2, batch_size=64, seed=run.seed)
    softmax = out_dir / "softmax.safetensors"
    save_model(wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                    input_shape=(1, 8, 8), classes=train.classes), softmax, force=True)
    gauss_dir = out_dir / "gauss"
    gauss = gauss_dir / "gauss.safetensors"
    s, g = str(softmax), str(gauss)
    d = ["--data", "digits", "--seed", str(run.seed)]
    docs: dict[str, dict[str, Any]] = {}
    docs["tailor"] = _run(out, ["tailor", s, *d, "--epochs", "4", "--lr", "0.02", "--out", str(gauss_dir),
                                "--export", "", "--force"], log)
    docs["export_softmax"] = _run(out, ["export", s, "--formats", "pt2,onnx", "--out", str(out_dir / "softmax"),
                                        "--force"], log)
    docs["export_gauss"] = _run(out, ["export", g, "--formats", "pt2,onnx", "--out", str(gauss_dir / "gauss"),
                                      "--force"], log)
    docs["evaluate"] = _run(out, ["evaluate", s, "--compare", g, *d, "--out", str(out_dir / "evaluate"),
                                  "--force"], log)
    docs["onepixel"] = _run(out, ["attack", "onepixel", s, "--compare", g, *d, "-n", str(attack_n),
                                  "--popsize", "80", "--steps", "15", "--out", str(out_dir / "onepixel"),
                                  "--force"], log)
    docs["fgsm"] = _run(out, ["attack", "fgsm", s, "--compare", g, *d, "--eps", "0,0.05,0.1,0.2,0.3",
                              "--out", str(out_dir / "fgsm"), "--force"], log)
    runs = [str(out_dir / d) for d in ("gauss", "evaluate", "onepixel", "fgsm")]
    docs["report"] = _run(out, ["report", *runs, "--out", str(out_dir / "report.html"), "--force"], log)
    _run(out, ["report", *runs, "--out", str(out_dir / "report.md"), "--force"], log)

    rows = _summary_rows(docs)
    seconds = time.perf_counter() - t0
    md = ["# kmtools demo: softmax vs Gauss network on digits", "",
          "| | softmax | Gauss |", "|---|---|---|"]
    md += [f"| {name} | {_fmt(a)} | {_fmt(b)} |" for name, a, b in rows]
    md += ["", f"Total time: {seconds:.1f} s on the CPU. Commands run: see `demo.log`; the full report is "
           "`report.html` / `report.md`.", ""]
    write_text(out_dir / "summary.md", "\n".join(md), force=True)
    doc = envelope("demo", {"rows": [{"metric": n, "softmax": a, "gauss": b} for n, a, b in rows],
                            "files": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()),
                            "seconds": seconds}, seed=run.seed, device=torch.device("cpu"))

    def human(con: Console) -> None:
        t = Table(title=f"kmtools demo ({seconds:.0f} s): {out_dir}", title_justify="left")
        t.add_column("")
        t.add_column("softmax")
        t.add_column("Gauss network")
        for name, a, b in rows:
            t.add_row(name, _fmt(a), _fmt(b))
        con.print(t)
        con.print(f"open {out_dir / 'report.html'} (or summary.md); models in {out_dir}")

    out.emit(doc, human)


def _summary_rows(docs: dict[str, dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """The paper's Table 1 layout (plus noise rows), read from the commands' JSON documents."""
    ev = _get(docs["evaluate"], "results") or {}
    op = _get(docs["onepixel"], "results") or {}
    rows = [
        ("test accuracy", ("accuracy",)),
        ("mean confidence (test)", ("mean_confidence",)),
        ("mean confidence (uniform noise)", ("ood", "mean_ood_confidence")),
        ("noise flagged as outlier", ("ood", "ood_outlier_rate")),
        ("noise AUROC", ("ood", "auroc")),
    ]
    out: list[tuple[str, Any, Any]] = [(name, _get(ev, "softmax", *p), _get(ev, "gauss", *p)) for name, p in rows]
    for name, key in (("one-pixel attack rate", "rate"), ("confidence in fooled", "mean_conf_fooled"),
                      ("fooled flagged as outlier", "outlier_share")):
        out.append((name, _get(op, "softmax", "onepixel", key), _get(op, "gauss", "onepixel", key)))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
