"""Table 1 of *Softmax is k-means* (Sec. 5) on a trained network: accuracy, confidence, one-pixel
attack rate and confidence in fooled predictions, softmax network beside its Gauss network.

    # the committed reference models (benchmarks/reference/, trained on the CPU)
    python benchmarks/table1.py --reference fmnist                      # Su et al.'s budget, 200 images
    python benchmarks/table1.py --reference cifar10 --popsize 100 --maxiter 30
    # any checkpoint (e.g. the GPU ResNet18 of benchmarks/train_cifar.py)
    python benchmarks/table1.py --checkpoint r18.safetensors --data cifar10 --out runs/table1-r18

Steps (each resumable: run the same command again after an interruption):

1. ``kmtools tailor`` with its default settings (``--tailor-epochs``) → ``OUT/gauss/``.
2. Test accuracy and mean confidence of both networks on the whole test set (95% Wilson
   intervals; paired change with Newcombe's interval and McNemar's test).
3. ``-n`` test images that *both* networks classify correctly (a seeded permutation of the test
   set), the same images and seeds for both, attacked with the one-pixel attack
   (``kmtools.attacks.onepixel``: DE/rand/1, F = 0.5, resampling like scipy, success judged on
   the best member) under two fitnesses at once: the paper's (true-class p_y / κ_y) and the
   margin (log-confidence of the true class minus the best other), and their union. Per-image
   records go to ``OUT/onepixel-<net>.jsonl`` as images finish.
4. Effective rate: fooled *and* not flagged as an outlier, at a threshold fitted on validation
   data (the held-out part of the training data, ``kmtools.data.split``): the Gauss network's
   own (κ_pred < 1/c with γ fitted by tailor) and, for the softmax network, the max-probability
   threshold that flags the same share (5%) of validation inputs.

The table goes to stdout, ``OUT/table1.md`` and ``OUT/table1.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from kmtools.attacks.onepixel import OnePixelResult, onepixel
from kmtools.data import load_dataset
from kmtools.data.split import holdout_split, labels_of
from kmtools.features import as_tensors, extract
from kmtools.models import head_confidences, load_model
from kmtools.stats import mcnemar, paired_diff, ratio_interval, wilson

REFERENCE = Path(__file__).parent / "reference"
FITS = ("confidence", "margin")
#: the paper's Table 1 (ResNet18 runs): acc, conf, attack rate, conf in fooled; softmax | Gauss
PAPER_R18 = [(0.944, 0.98, 0.34, 0.77, 0.942, 0.74, 0.05, 0.61), (0.948, 0.98, 0.33, 0.76, 0.948, 0.76, 0.07, 0.49),
             (0.950, 0.98, 0.34, 0.79, 0.948, 0.76, 0.07, 0.63)]


def tailored(checkpoint: Path, data: str, out: Path, epochs: int, seed: int, data_root: str | None) -> Path:
    """``kmtools tailor`` with its default settings, through the library (:func:`run_tailor`):
    ``OUT/gauss/gauss.safetensors`` and ``tailor.json`` (the record, without the CLI's envelope)."""
    from kmtools.device import resolve
    from kmtools.io import write_json
    from kmtools.tailor import TailorConfig
    from kmtools.tailor.run import run_tailor

    g = out / "gauss" / "gauss.safetensors"
    if g.is_file():
        return g
    print(f"$ kmtools tailor {checkpoint} --data {data} --epochs {epochs} --seed {seed} --export '' "
          "(run through kmtools.tailor.run.run_tailor)", flush=True)
    model = load_model(checkpoint)
    train = load_dataset(data, root=data_root, split="train")
    test = load_dataset(data, root=data_root, split="test")
    cfg = TailorConfig(epochs=epochs, seed=seed)
    cfg.validate()
    done = run_tailor(model, train, test, cfg, out_dir=out / "gauss", device=resolve("auto"), export_formats=(),
                      write_record=lambda r: write_json(out / "gauss" / "tailor.json", r, force=True))
    if not done.ok:
        raise SystemExit(f"tailoring kept no epoch: see {out / 'gauss' / 'tailor.json'}")
    return g


def confidences(model: Any, data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fe = extract(model, data, batch_size=500)
    conf = head_confidences(model.head, fe.scores).max(1).values
    return fe.predictions, fe.labels, conf


def attack(model: Any, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, path: Path, args: argparse.Namespace,
           threshold: float) -> OnePixelResult:
    """One-pixel on every image, appending finished images to ``path`` (resumes from it)."""
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[int(r["index"])] = r
    todo = [i for i in range(len(idx)) if int(idx[i]) not in done]
    t0 = time.perf_counter()
    if todo:
        with path.open("a") as fh:
            def keep(part: OnePixelResult) -> None:
                for rec in part.records():
                    fh.write(json.dumps(rec) + "\n")
                fh.flush()

            onepixel(model, x[todo], y[todo], popsize=args.popsize, maxiter=args.maxiter, seed=args.seed,
                     index=idx[todo], fitness="both", success="best", threshold=threshold, callback=keep,
                     batch_size=args.attack_batch, amp=False, backend=args.backend)
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[int(r["index"])] = r
    recs = [done[int(i)] for i in idx]
    res = OnePixelResult.from_records(recs, x, pixels=1, popsize=args.popsize, maxiter=args.maxiter,
                                      threshold=threshold, seed=args.seed)
    res.seconds = time.perf_counter() - t0
    return res


def summary(res: OnePixelResult) -> dict[str, Any]:
    o = res.outcomes()
    out: dict[str, Any] = {}
    for key in ("fooled_confidence", "fooled_margin", "fooled", "effective"):
        out[key] = wilson(int(o[key].sum()), len(o[key])).to_dict(count="fooled")
    fooled = torch.as_tensor(o["fooled"])
    out["conf_fooled"] = float(res.conf_adv[fooled].mean()) if bool(fooled.any()) else None
    out["evaluations"] = int(res.evaluations.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", choices=("fmnist", "cifar10"), default=None)
    ap.add_argument("--checkpoint", type=Path, default=None, help="a softmax network (kmtools format)")
    ap.add_argument("--data", default=None, help="its dataset (with --checkpoint)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("-n", type=int, default=200, help="test images attacked (both networks right on them)")
    ap.add_argument("--popsize", type=int, default=400)
    ap.add_argument("--maxiter", type=int, default=100)
    ap.add_argument("--tailor-epochs", type=int, default=5)
    ap.add_argument("--attack-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto", help="candidate scoring (kmtools.scoring_backends; verdicts "
                    "are eager float32 whatever it is)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        ckpt, data = REFERENCE / f"{args.reference}.safetensors", {"fmnist": "fashion-mnist"}.get(args.reference,
                                                                                               args.reference)
    elif args.checkpoint and args.data:
        ckpt, data = args.checkpoint, args.data
    else:
        ap.error("pass --reference NAME or --checkpoint PATH --data D")
    out: Path = args.out or Path("runs") / f"table1-{args.reference or ckpt.stem}"
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    g_path = tailored(ckpt, data, out, args.tailor_epochs, args.seed, args.data_root)
    soft, gauss = load_model(ckpt), load_model(g_path)
    record = json.loads((out / "gauss" / "tailor.json").read_text())
    tailor_doc = record.get("results", record)  # the CLI's envelope, or run_tailor's bare record

    test = load_dataset(data, root=args.data_root, split="test")
    p_s, y_t, c_s = confidences(soft, test.dataset)
    p_g, _, c_g = confidences(gauss, test.dataset)
    ok_s, ok_g = (p_s == y_t).numpy(), (p_g == y_t).numpy()
    train = load_dataset(data, root=args.data_root, split="train")
    _, val_idx = holdout_split(labels_of(train.dataset))
    _, _, c_val = confidences(soft, Subset(train.dataset, val_idx.tolist()))
    soft_thr = float(torch.quantile(c_val.double(), 0.05))

    both = np.nonzero(ok_s & ok_g)[0]
    perm = torch.randperm(len(both), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    idx = torch.as_tensor(np.sort(both[perm.numpy()]))
    tensors = as_tensors(Subset(test.dataset, idx.tolist()))
    assert tensors is not None
    x, y = tensors
    res, info = {}, {}
    for name, model, thr in (("softmax", soft, soft_thr), ("gauss", gauss, gauss.threshold)):
        t0 = time.perf_counter()
        res[name] = attack(model, x, y, idx, out / f"onepixel-{name}.jsonl", args, thr)
        info[name] = {"seconds": time.perf_counter() - t0, "threshold": thr}
        print(f"{name}: {res[name].fooled}/{res[name].attacked} fooled ({info[name]['seconds']:.0f} s)", flush=True)

    rows: dict[str, Any] = {}
    for name, ok, conf in (("softmax", ok_s, c_s), ("gauss", ok_g, c_g)):
        acc = wilson(int(ok.sum()), len(ok))
        rows[name] = {"accuracy": acc.to_dict(count="correct"), "mean_confidence": float(conf.mean()),
                      "onepixel": summary(res[name]), **info[name]}
    o_s, o_g = res["softmax"].outcomes(), res["gauss"].outcomes()
    paired = {k: mcnemar(o_s[k], o_g[k]).to_dict() for k in ("fooled_confidence", "fooled_margin", "fooled",
                                                              "effective")}
    factors = {}
    for k in ("fooled_confidence", "fooled_margin", "fooled", "effective"):
        r, lo, hi = ratio_interval(wilson(int(o_s[k].sum()), len(o_s[k])), wilson(int(o_g[k].sum()), len(o_g[k])))
        factors[k] = {"factor": r, "lo": lo, "hi": hi}
    doc = {
        "checkpoint": str(ckpt), "data": data, "n_attacked": len(idx), "popsize": args.popsize,
        "maxiter": args.maxiter, "seed": args.seed, "backend": args.backend, "tailor": {
            "epochs": args.tailor_epochs, "selected_epoch": tailor_doc.get("selected_epoch"),
            "accuracy_drop_val_points": tailor_doc.get("accuracy_drop"), "gamma": tailor_doc.get("gamma")},
        "test_accuracy_change": paired_diff(ok_s, ok_g).to_dict(), "rows": rows, "paired": paired,
        "factor_softmax_over_gauss": factors,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "seconds": time.perf_counter() - t_all,
    }
    (out / "table1.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    text = render(doc)
    (out / "table1.md").write_text(text)
    print(text)


def _pct(d: dict[str, Any]) -> str:
    if d.get("rate") is None:
        return "–"
    return f"{100 * d['rate']:.1f}% ({100 * d['rate_lo']:.1f}–{100 * d['rate_hi']:.1f}, {d['fooled']}/{d['n']})"


def _f(v: float | None, p: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, p)


def render(doc: dict[str, Any]) -> str:
    r = doc["rows"]
    acc = {k: r[k]["accuracy"] for k in r}
    lines = [
        f"Table 1 layout: {doc['checkpoint']} on {doc['data']}, {doc['n_attacked']} test images both networks "
        f"classify correctly, one-pixel DE population {doc['popsize']}, {doc['maxiter']} generations, seed "
        f"{doc['seed']}; tailor epochs {doc['tailor']['epochs']} (selected {doc['tailor']['selected_epoch']}).",
        "",
        "| network | test accuracy | mean conf | one-pixel rate (paper's fitness) | conf in fooled |",
        "|---|---|---|---|---|",
    ]
    for k, label in (("softmax", "softmax"), ("gauss", "Gauss")):
        op = r[k]["onepixel"]
        lines.append(f"| {label} | {100 * acc[k]['rate']:.2f}% ({100 * acc[k]['rate_lo']:.2f}–"
                     f"{100 * acc[k]['rate_hi']:.2f}) | {_f(r[k]['mean_confidence'], '.2f')} | "
                     f"{_pct(op['fooled_confidence'])} | {_f(op['conf_fooled'], '.2f')} |")
    ch = doc["test_accuracy_change"]
    lines += ["", f"Paired test-accuracy change Gauss − softmax: {100 * ch['diff']:+.2f} points "
              f"(95% CI {100 * ch['diff_lo']:+.2f} to {100 * ch['diff_hi']:+.2f}; McNemar p = {ch['p_value']:.3g}).",
              "",
              "| rate | softmax | Gauss | factor softmax/Gauss (95% CI) | McNemar p |", "|---|---|---|---|---|"]
    names = {"fooled_confidence": "paper's fitness (p_y, κ_y)", "fooled_margin": "margin fitness",
             "fooled": "either fitness (union)", "effective": "union, fooled and not flagged"}
    for k, label in names.items():
        f = doc["factor_softmax_over_gauss"][k]
        fac = "–" if f["factor"] is None else f"{f['factor']:.2f} ({f['lo']:.2f}–{f['hi']:.2f})"
        lines.append(f"| {label} | {_pct(r['softmax']['onepixel'][k])} | {_pct(r['gauss']['onepixel'][k])} | {fac} | "
                     f"{doc['paired'][k]['p_value']:.3g} |")
    lines += ["", f"Thresholds (fitted on validation data, 5% of it flagged): softmax max-probability "
              f"{r['softmax']['threshold']:.3f}, Gauss κ {r['gauss']['threshold']:.3f}. Attack time: softmax "
              f"{r['softmax']['seconds']:.0f} s, Gauss {r['gauss']['seconds']:.0f} s; {doc['machine']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
