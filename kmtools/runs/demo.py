"""``kmtools demo`` as one library call: the whole pipeline on scikit-learn's digits, on the CPU.

It trains a small CNN (softmax), tailors it into a Gauss network (:func:`kmtools.tailor.run.
run_tailor`), exports both (:func:`kmtools.export.export`), evaluates both on the same inputs
(:func:`kmtools.evaluate.evaluate`), attacks both with one-pixel and FGSM (the runs of
``kmtools attack``: :func:`kmtools.runs.attacks.run_onepixel`, :func:`~kmtools.runs.attacks.
run_fgsm`) and writes the report (:mod:`kmtools.report`). Each step writes the same files as the
command it stands for, and that command line is logged (``demo.log``) so a user can repeat it.
Returns the paper's Table 1 layout (plus noise rows) for both models.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kmtools.data import DataInfo, load_dataset
from kmtools.errors import ConfigError, OutputExistsError
from kmtools.io import write_json, write_text
from kmtools.models import KmModel, load_model, save_model, wrap, zoo
from kmtools.report.layout import compare_results, model_keys
from kmtools.runs.arrays import evaluate_arrays
from kmtools.runs.attacks import Attacked, AttackRun, run_fgsm, run_onepixel
from kmtools.runs.context import RunContext, save_npz, tensors
from kmtools.train import train_classifier

FGSM_EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
TABLE1_ROWS = (  # (row, command, path below results.<key>, paired test below results)
    ("test accuracy", "tailor", ("accuracy",), ("test", "accuracy_change")),
    ("mean confidence (test)", "evaluate", ("mean_confidence",), None),
    ("mean confidence (uniform noise)", "evaluate", ("ood", "mean_ood_confidence"), None),
    ("noise flagged as outlier", "evaluate", ("ood", "ood_outlier_rate"), None),
    ("noise AUROC", "evaluate", ("ood", "auroc"), None),
    ("one-pixel attack rate", "onepixel", ("onepixel", "rate"), ("paired", "fooled")),
    ("confidence in fooled", "onepixel", ("onepixel", "mean_conf_fooled"), None),
    ("fooled flagged as outlier", "onepixel", ("onepixel", "outlier_share"), None),
)


class _Steps:
    """Runs the steps, logging each as the command line it stands for and its time."""

    def __init__(self, out_dir: Path, seed: int, info: Callable[[str], None]) -> None:
        self.dir, self.seed, self.info = out_dir, seed, info
        self.log = out_dir / "demo.log"
        self.lines: list[str] = []
        self.docs: dict[str, dict[str, Any]] = {}

    def ctx(self, command: str, args: list[str], sub: str) -> RunContext:
        line = f"$ kmtools {command} {shlex.join(args)}"
        self.info(line)
        self.lines.append(line)
        self.t0 = time.perf_counter()
        (self.dir / sub).mkdir(parents=True, exist_ok=True)
        return RunContext(command, out_dir=self.dir / sub, force=True, seed=self.seed, device="cpu")

    def done(self, name: str, doc: dict[str, Any]) -> None:
        self.docs[name] = doc
        self.info(f"  ({time.perf_counter() - self.t0:.1f} s)")
        write_text(self.log, "\n".join(self.lines) + "\n", force=True)


def _check_out(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: give a folder for the demo's outputs")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"{out_dir} is not empty: pass --force to overwrite it, or --out another folder")


def _train(out_dir: Path, epochs: int, seed: int) -> tuple[Path, DataInfo]:
    torch.manual_seed(seed)
    train = load_dataset("digits", split="train")
    net = zoo.create("smallcnn", width=8)
    train_classifier(net, train.dataset, epochs=epochs, lr=1e-2, batch_size=64, seed=seed)
    softmax = out_dir / "softmax.safetensors"
    save_model(wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                    input_shape=(1, 8, 8), classes=train.classes), softmax, force=True)
    return softmax, train


def _tailor(steps: _Steps, softmax: Path, train: DataInfo, test: DataInfo) -> Path:
    from kmtools.tailor import TailorConfig
    from kmtools.tailor.run import run_tailor

    gauss_dir = steps.dir / "gauss"
    ctx = steps.ctx("tailor", [str(softmax), "--data", "digits", "--seed", str(steps.seed), "--epochs", "4",
                               "--out", str(gauss_dir), "--export", "", "--force"], "gauss")
    model = load_model(softmax)
    cfg = TailorConfig(epochs=4, seed=steps.seed, amp=False, channels_last=False)
    cfg.validate()

    def record(results: dict[str, Any]) -> None:
        write_json(gauss_dir / "tailor.json", ctx.doc(results, model=model, model_path=softmax, data=train), force=True)

    with ctx.timer("tailor"):
        done = run_tailor(model, train, test, cfg, out_dir=gauss_dir, device=ctx.device, export_formats=(),
                          write_record=record)
    if not done.ok:
        raise ConfigError("demo: tailoring kept no epoch (see gauss/tailor.json)")
    done.results["files"]["tailor"] = str(gauss_dir / "tailor.json")
    steps.done("tailor", ctx.doc(done.results, model=model, model_path=softmax, data=train))
    return gauss_dir / "gauss.safetensors"


def _export(steps: _Steps, path: Path, folder: Path) -> None:
    from kmtools.export import export

    ctx = steps.ctx("export", [str(path), "--formats", "pt2,onnx", "--out", str(folder), "--force"],
                    str(folder.relative_to(steps.dir)))
    model = load_model(path)
    with ctx.timer("export"):
        res = export(model, folder, formats=("pt2", "onnx"), force=True, seed=steps.seed)
    steps.done(f"export_{path.stem}", ctx.doc(res.to_dict(), model=model, model_path=path))


def _evaluate(steps: _Steps, paths: list[Path], models: list[KmModel], test: DataInfo) -> None:
    from kmtools.evaluate import evaluate

    ctx = steps.ctx("evaluate", [str(paths[0]), "--compare", str(paths[1]), "--data", "digits", "--seed",
                                 str(steps.seed), "--out", str(steps.dir / "evaluate"), "--force"], "evaluate")
    keys = model_keys([m.head_kind for m in models])
    evals = {}
    for key, m in zip(keys, models, strict=True):
        with ctx.timer(f"evaluate_{key}"):
            evals[key] = evaluate(m, test.dataset, ood=["uniform"], n_noise=1000, batch_size=128, device=ctx.device,
                                  seed=steps.seed, per_class=2)
    results = compare_results({k: r.to_dict() for k, r in evals.items()}, paths=paths)
    doc = ctx.doc(results, model=models[0], model_path=paths[0], data={**test.to_dict(), "classes": test.classes},
                  compare_model=ctx.doc({}, model=models[1], model_path=paths[1])["model"])
    save_npz(ctx.out_dir / "evaluate.npz", evaluate_arrays(evals), force=True)  # type: ignore[operator]
    write_json(ctx.out_dir / "evaluate.json", doc, force=True)  # type: ignore[operator]
    steps.done("evaluate", doc)


def _attack(steps: _Steps, name: str, extra: list[str], paths: list[Path]) -> AttackRun:
    """Log ``kmtools attack NAME`` (both models, ``extra`` options) and open its run folder."""
    steps.ctx(f"attack {name}", [str(paths[0]), "--compare", str(paths[1]), "--data", "digits", "--seed",
                                 str(steps.seed), *extra, "--out", str(steps.dir / name), "--force"], name)
    return AttackRun(name, out_dir=steps.dir / name, force=True, seed=steps.seed, device="cpu")


def _onepixel(steps: _Steps, paths: list[Path], models: list[KmModel], test: DataInfo) -> None:
    x, y = tensors(test)
    with _attack(steps, "onepixel", ["-n", str(len(test)), "--popsize", "80", "--steps", "15"], paths) as run:
        res = run_onepixel(Attacked(models, x, y, test, list(paths)), run, popsize=80, steps=15)
    steps.done("onepixel", res.doc)


def _fgsm(steps: _Steps, paths: list[Path], models: list[KmModel], test: DataInfo) -> None:
    x, y = tensors(test)
    eps = ",".join(f"{e:g}" for e in FGSM_EPS)
    with _attack(steps, "fgsm", ["--eps", eps, "-b", "128"], paths) as run:
        res = run_fgsm(Attacked(models, x, y, test, list(paths)), run, eps=FGSM_EPS, batch_size=128)
    steps.done("fgsm", res.doc)


def _get(cur: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    return cur


def table1_rows(docs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's Table 1 layout (plus noise rows) from the steps' documents.

    Each row: ``metric``, ``softmax`` and ``gauss`` (the figures), ``softmax_ci``/``gauss_ci``
    (95% interval ``[lo, hi]`` where the figure is a rate or an AUROC) and ``paired`` (the
    paired difference Gauss − softmax with its interval and McNemar's p, where one was run)."""
    rows = []
    for metric, cmd, path, pair in TABLE1_ROWS:
        res = (docs.get(cmd) or {}).get("results", {})
        if cmd == "tailor":  # test accuracy: the tailor step scores both networks on the same test set
            res = {k: res.get("test", {}).get(k) for k in ("softmax", "gauss")} | {"test": res.get("test")}
        row: dict[str, Any] = {"metric": metric}
        for key in ("softmax", "gauss"):
            row[key] = _get(res.get(key), path)
            parent, name = _get(res.get(key), path[:-1]), path[-1]
            lo, hi = (parent or {}).get(f"{name}_lo"), (parent or {}).get(f"{name}_hi")
            row[f"{key}_ci"] = [lo, hi] if lo is not None and hi is not None else None
        row["paired"] = _get(res, pair) if pair else None
        rows.append(row)
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence on the one-pixel rates that says whether their difference is noise."""
    r = next(r for r in rows if r["metric"] == "one-pixel attack rate")
    p = (r["paired"] or {}).get("p_value")
    if p is None:
        return "The one-pixel rates were not compared."
    if p >= 0.05:
        return (f"On 8x8 digits the one-pixel rates do not differ significantly (McNemar p = {p:.2f}): the demo "
                "cannot show the paper's effect; the reference models' results are in docs/results.md.")
    word = "lower" if r["gauss"] < r["softmax"] else "higher"
    return f"The Gauss network's one-pixel rate is {word} than the softmax network's (McNemar p = {p:.3f})."


def run_demo(
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 8,
    attack_n: int = 60,
    force: bool = False,
    info: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Run the pipeline into ``out_dir``; return the ``demo`` document (rows, files, seconds)."""
    from kmtools.data import subset
    from kmtools.report.collect import load_run
    from kmtools.report.render import write_report

    t0 = time.perf_counter()
    _check_out(out_dir, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out_dir, seed, info)
    write_text(steps.log, "", force=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's models are tiny: more threads only add contention
    try:
        info(f"training a small CNN on scikit-learn digits ({epochs} epochs)...")
        softmax, train = _train(out_dir, epochs, seed)
        test = load_dataset("digits", split="test")
        gauss = _tailor(steps, softmax, train, test)
        _export(steps, softmax, out_dir / "softmax")
        _export(steps, gauss, out_dir / "gauss" / "gauss")
        paths = [softmax, gauss]
        models = [load_model(p).eval() for p in paths]
        _evaluate(steps, paths, models, test)
        _onepixel(steps, paths, models, subset(test, attack_n))
        _fgsm(steps, paths, models, test)
        runs = [out_dir / d for d in ("gauss", "evaluate", "onepixel", "fgsm")]
        for name in ("report.html", "report.md"):
            steps.ctx("report", [*map(str, runs), "--out", str(out_dir / name), "--force"], ".")
            write_report(load_run(runs), out_dir / name, force=True)
            steps.done(name, {})
    finally:
        torch.set_num_threads(threads)
    rows = table1_rows(steps.docs)
    seconds = time.perf_counter() - t0
    md = ["# kmtools demo: softmax vs Gauss network on digits", "",
          "| | softmax | Gauss | Gauss − softmax (paired) |", "|---|---|---|---|"]
    md += [f"| {r['metric']} | {cell(r, 'softmax')} | {cell(r, 'gauss')} | {paired_cell(r)} |" for r in rows]
    md += ["", "Brackets: 95% intervals (Wilson for rates, bootstrap for AUROC); paired: Newcombe's interval and "
           "McNemar's exact test on the same images.", "", verdict(rows), "",
           f"Total time: {seconds:.1f} s on the CPU. Commands run: see `demo.log`; the full report is "
           "`report.html` / `report.md`.", ""]
    write_text(out_dir / "summary.md", "\n".join(md), force=True)
    ctx = RunContext("demo", seed=seed, device="cpu")
    return ctx.doc({"rows": rows, "verdict": verdict(rows),
                    "files": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()),
                    "seconds": seconds})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def cell(row: dict[str, Any], key: str) -> str:
    """``0.283 [0.185, 0.408]`` (the figure and its 95% interval, where it has one)."""
    ci = row.get(f"{key}_ci")
    return _fmt(row[key]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def paired_cell(row: dict[str, Any]) -> str:
    """``+0.000 [-0.094, 0.094], p = 1.00 (not significant)`` or ``""``."""
    d = row.get("paired")
    if not d:
        return ""
    sig = "significant" if d["p_value"] < 0.05 else "not significant"
    return f"{d['diff']:+.3f} [{d['diff_lo']:+.3f}, {d['diff_hi']:+.3f}], p = {d['p_value']:.2f} ({sig})"
