"""OOD pairs on the reference models: the softmax network's post-hoc scores beside κ.

    python benchmarks/ood_pairs.py                       # both pairs, n = 1000 in / 1000 out
    python benchmarks/ood_pairs.py --pairs fmnist --n-in 2000 --out runs/ood_pairs

Pairs (all offline):

* ``fmnist``: ``benchmarks/reference/fmnist.safetensors`` (smallcnn, 93.6% test) on Fashion-MNIST
  test images against scikit-learn digits (all 1,797, 8×8 upscaled bilinearly to 28×28 and
  scaled to [0, 1]) and against uniform noise images;
* ``cifar10``: ``benchmarks/reference/cifar10.safetensors`` (resnet10-w16, 82.2% test) on
  CIFAR-10 test images against Fashion-MNIST test images (grey → RGB, 28×28 → 32×32) and
  uniform noise.

Scores (:func:`kmtools.ood.baseline_reports`): MSP, max-logit, energy, Mahalanobis (tied
covariance, class means) and k-NN (k = 50, normalised features) of the softmax network, fitted
on ``--fit-n`` training inputs outside tailor's held-out part, and κ of a Gauss network on the same
backbone. The Gauss network here is *not* fine-tuned (tailoring the CIFAR model takes ~5 min an
epoch on this CPU): centroids = class means of the fit inputs' features, γ = 1/E‖f − C_y‖² on the
held-out validation part (``kmtools.data.split``, which the reference models never saw), i.e. the
Gauss head the paper's Theorem 1 gives before any tailoring. AUROC, AUPR-in/out with 200-resample
bootstrap intervals, FPR@95, κ minus the best baseline's AUROC with a paired bootstrap interval,
and calibration (ECE with interval, NLL, Brier) on the in-distribution inputs.

Writes ``OUT/ood_pairs.json`` and ``OUT/ood_pairs.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from kmtools.centroids import class_means
from kmtools.data import load_dataset
from kmtools.data.split import holdout_split, labels_of
from kmtools.evaluate import noise_batches
from kmtools.features import extract
from kmtools.models import GaussHead, KmModel, load_model
from kmtools.ood import MatchShape, baseline_reports
from kmtools.tailor import auto_gamma

REFERENCE = Path(__file__).parent / "reference"
NAMES = {"msp": "MSP", "max_logit": "max-logit", "energy": "energy", "mahalanobis": "Mahalanobis",
         "knn": "k-NN", "kappa": "κ (Gauss)"}


def _seeded(n_total: int, n: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).permutation(n_total)[: min(n, n_total)].tolist())


def gauss_of(soft: KmModel, train: Any, fit_idx: list[int], val_idx: list[int], batch: int) -> tuple[KmModel, float]:
    """Class-mean centroids of the fit inputs, γ = 1/E‖f − C_y‖² on the held-out inputs."""
    fe = extract(soft, Subset(train, fit_idx), batch_size=batch, device=torch.device("cpu"))
    c = class_means(fe.features, fe.labels.long(), soft.num_classes)
    fv = extract(soft, Subset(train, val_idx), batch_size=batch, device=torch.device("cpu"))
    gamma = auto_gamma(fv.features, fv.labels.long(), c)
    return soft.with_head(GaussHead(c, gamma=gamma)).eval(), gamma


def run_pair(name: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    soft = load_model(REFERENCE / f"{name}.safetensors").eval()
    data = {"fmnist": "fashion-mnist", "cifar10": "cifar10"}[name]
    root = args.data_root if name == "cifar10" else None
    train = load_dataset(data, root=root, split="train").dataset
    test = load_dataset(data, root=root, split="test").dataset
    tr_idx, va_idx = holdout_split(labels_of(train))
    fit_idx = [int(tr_idx[i]) for i in _seeded(len(tr_idx), args.fit_n, args.seed)]
    val_idx = [int(va_idx[i]) for i in _seeded(len(va_idx), args.val_n, args.seed)]
    gauss, gamma = gauss_of(soft, train, fit_idx, val_idx, args.batch)
    shape = tuple(soft.input_shape or (1, 28, 28))
    ind = Subset(test, _seeded(len(test), args.n_in, args.seed))
    noise = torch.cat(list(noise_batches("uniform", args.n_out, shape, seed=args.seed, batch_size=args.n_out)))
    sources: dict[str, Any] = {"uniform noise": TensorDataset(noise, torch.zeros(len(noise), dtype=torch.long))}
    if name == "fmnist":
        dg = ConcatDataset([load_dataset("digits", split=s).dataset for s in ("train", "test")])
        sources["sklearn digits 8×8→28×28"] = MatchShape(dg, shape)
    else:
        fm = load_dataset("fashion-mnist", split="test").dataset
        sources["Fashion-MNIST grey→RGB 32×32"] = MatchShape(Subset(fm, _seeded(len(fm), args.n_out, args.seed)),
                                                             shape)
    reps = baseline_reports(soft, Subset(train, fit_idx), ind, sources, gauss=gauss, k=args.knn_k,
                            batch_size=args.batch, device="cpu", n_boot=args.n_boot, seed=args.seed)
    out = {"model": f"benchmarks/reference/{name}.safetensors", "data": data, "n_in": len(ind),
           "fit_n": len(fit_idx), "val_n": len(val_idx), "gamma": gamma,
           "sources": {k: v.to_dict() for k, v in reps.items()}, "seconds": time.perf_counter() - t0}
    return out


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m[key]:.3f}"


def markdown(doc: dict[str, Any]) -> str:
    lines = []
    for name, pair in doc["pairs"].items():
        for src, rep in pair["sources"].items():
            first = next(iter(rep["scores"].values()))
            lines += [f"**{name}** ({pair['data']} test, n = {first['n_in']}) vs **{src}** (n = {first['n_out']}); "
                      f"baselines fitted on {pair['fit_n']} training inputs, γ on {pair['val_n']} held-out:", "",
                      "| score | AUROC [95% CI] | AUPR-in | AUPR-out | FPR@95 |", "|---|---|---|---|---|"]
            for s, m in rep["scores"].items():
                best = " (best baseline)" if s == rep["best_baseline"] else ""
                lines.append(f"| {NAMES.get(s, s)}{best} | {_ci(m, 'auroc')} | {_ci(m, 'aupr_in')} | "
                             f"{_ci(m, 'aupr_out')} | {100 * m['fpr95']:.1f}% |")
            vs = rep.get("kappa_vs_best")
            if vs:
                lines += ["", f"κ − {NAMES.get(vs['baseline'], vs['baseline'])}: ΔAUROC {vs['diff']:+.3f} "
                          f"[{vs['diff_lo']:+.3f}, {vs['diff_hi']:+.3f}] (paired bootstrap, "
                          f"{doc['settings']['n_boot']} resamples)."]
            lines.append("")
        cal = next(iter(pair["sources"].values()))["calibration"]
        lines += [f"Calibration of the {name} pair on the {pair['n_in']} in-distribution inputs:", "",
                  "| network | ECE [95% CI] | NLL | Brier |", "|---|---|---|---|"]
        for k, c in cal.items():
            lines.append(f"| {k} | {_ci(c, 'ece')} | {c['nll']:.4f} | {c['brier']:.4f} |")
        lines += ["", f"({pair['seconds']:.0f} s)", ""]
    lines.append(f"Machine: {doc['machine']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="fmnist,cifar10")
    ap.add_argument("--n-in", type=int, default=1000, help="in-distribution test inputs (seeded sample)")
    ap.add_argument("--n-out", type=int, default=1000, help="noise images / Fashion-MNIST images (seeded sample)")
    ap.add_argument("--fit-n", type=int, default=5000, help="training inputs the baselines and centroids use")
    ap.add_argument("--val-n", type=int, default=2000, help="held-out inputs γ is fitted on")
    ap.add_argument("--knn-k", type=int, default=50)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data-root", default="/work/data", help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/ood_pairs"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads (shared), torch {torch.__version__}, "
               f"seed {args.seed}")
    doc: dict[str, Any] = {"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()}, "pairs": {}}
    for name in [p.strip() for p in args.pairs.split(",") if p.strip()]:
        doc["pairs"][name] = run_pair(name, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood_pairs.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (args.out / "ood_pairs.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
