"""Prototype heads on scikit-learn digits: accuracy, confidence, rejection and one-pixel attacks
against the softmax network they replace (issue 7; docs/heads.md records the figures).

Trains kmtools' small CNN (``smallcnn``, width 8) on the digits training split, freezes it
and, for every head kind, builds the head on the penultimate training features (class means,
or per-class k-means for M > 1 prototypes per class), fits the prototypes with the head's own
loss on the frozen features (``kmtools.heads.fit_head``) and evaluates the network with that
head on the test split with the library calls behind ``kmtools evaluate``:

* ``acc`` test accuracy (%), ``Δ`` its change against the softmax network (points);
* ``conf`` mean confidence of the predicted class (the head's own ``confidences``);
* ``out`` share of test inputs below the outlier threshold 1/c;
* ``AR-AUC`` area under the accuracy-reject curve of that confidence (mean accuracy over all
  reject rates, ties broken in expectation; ``kmtools.heads.reject``);
* ``acc@10%`` accuracy when the 10% least confident inputs are rejected;
* ``cost op`` the operating point minimising λ_e·errors + λ_r·rejects (λ_e = 1, λ_r = 0.25):
  reject rate / accuracy on the accepted inputs;
* ``nb rej``/``nb acc`` n-balls around the prototypes (class means for softmax) fitted so 95%
  of the correct training points lie inside: test reject rate and accuracy on the accepted;
* ``noise nb`` share of 500 uniform-noise images the n-balls reject; ``noise AUROC`` how well
  the head's confidence separates test digits from those noise images;
* ``1px`` one-pixel attack rate (Su et al. differential evolution, ``kmtools.attacks``) on the
  first ``--onepixel`` correctly classified test images (population 100, 30 generations).

Run: ``python benchmarks/heads_digits.py`` (CPU, about a minute on 2 cores);
``--json`` prints the rows as JSON instead of a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from kmtools.attacks.onepixel import onepixel
from kmtools.data import load_dataset
from kmtools.evaluate import evaluate
from kmtools.features import as_tensors, extract
from kmtools.heads import build_head, fit_head
from kmtools.heads.reject import reject_curve
from kmtools.models import KmModel, wrap, zoo
from kmtools.train import train_classifier

SPECS: list[tuple[str, str, dict[str, Any]]] = [
    ("gauss γ=auto", "gauss", {"temperature": None}),
    ("rbf softmax T=2σ²", "rbf", {"temperature": None}),
    ("rbf entmax15 T=2σ²", "rbf", {"temperature": None, "normaliser": "entmax15"}),
    ("rslvq M=1", "rslvq", {}),
    ("rslvq M=3", "rslvq", {"prototypes_per_class": 3}),
    ("glvq M=1", "glvq", {}),
    ("glvq M=3 sigmoid", "glvq", {"prototypes_per_class": 3, "squashing": "sigmoid", "slope": 4.0}),
]


def train_softmax(epochs: int, seed: int) -> KmModel:
    torch.manual_seed(seed)
    tr = load_dataset("digits", split="train")
    net = zoo.create("smallcnn", width=8)
    train_classifier(net, tr.dataset, epochs=epochs, lr=1e-2, batch_size=64, seed=seed)
    return wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                input_shape=(1, 8, 8)).eval()


def measure(name: str, model: KmModel, train: Any, test: Any, noise: TensorDataset,
            x_attack: torch.Tensor, y_attack: torch.Tensor, seed: int) -> dict[str, Any]:
    ev = evaluate(model, test, ood="uniform", n_noise=len(noise), seed=seed + 1).to_dict()
    rc = reject_curve(model, test, train=train, coverage=0.95, cost_error=1.0, cost_reject=0.25)
    rc_noise = reject_curve(model, noise, train=train, coverage=0.95)
    op = rc["confidence"]["operating_point"]
    nb = rc["nball"]["operating_point"]
    row: dict[str, Any] = {
        "head": name,
        "acc": round(100 * ev["accuracy"], 2),
        "Δ": 0.0,
        "conf": round(ev["mean_confidence"], 3),
        "out": round(ev["outlier_rate"], 3),
        "AR-AUC": round(rc["confidence"]["auc"], 4),
        "acc@10%": round(100 * rc["confidence"]["at_reject_rate"]["0.1"]["accuracy"], 2),
        "cost op": f"{op['reject_rate']:.3f} / {100 * op['accuracy']:.2f}",
        "nb rej": round(nb["reject_rate"], 3),
        "nb acc": round(100 * nb["accuracy"], 2),
        "noise nb": round(rc_noise["nball"]["operating_point"]["reject_rate"], 3),
        "noise AUROC": round((ev.get("ood") or {}).get("auroc", float("nan")), 3),
    }
    if len(y_attack):
        res = onepixel(model, x_attack, y_attack, popsize=100, maxiter=30, seed=seed, amp=False, device="cpu")
        row["1px"] = round(res.rate, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6, help="softmax CNN training epochs")
    ap.add_argument("--head-epochs", type=int, default=20, help="prototype fitting epochs (0: init only)")
    ap.add_argument("--onepixel", type=int, default=40, help="test images to attack per head (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wall0, cpu0 = time.perf_counter(), time.process_time()

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = train_softmax(args.epochs, args.seed)
    t_train = time.perf_counter() - wall0
    ftr = extract(model, train.dataset, batch_size=512)
    noise = TensorDataset(torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 1)),
                          torch.zeros(500, dtype=torch.long))
    tensors = as_tensors(test.dataset)
    assert tensors is not None
    xt, yt = tensors
    with torch.no_grad():
        right = model(xt).argmax(1) == yt
    x_attack, y_attack = xt[right][: args.onepixel], yt[right][: args.onepixel]

    rows = [measure("softmax (original)", model, train, test, noise, x_attack, y_attack, args.seed)]
    fit_s: dict[str, float] = {}
    for name, kind, kw in SPECS:
        t0 = time.perf_counter()
        head = build_head(kind, ftr.features, ftr.labels, 10, seed=args.seed, **kw)
        fit_head(head, ftr.features, ftr.labels, epochs=args.head_epochs, seed=args.seed)
        fit_s[name] = time.perf_counter() - t0
        row = measure(name, model.with_head(head.eval()).eval(), train, test, noise, x_attack, y_attack,
                      args.seed)
        row["Δ"] = round(row["acc"] - rows[0]["acc"], 2)
        rows.append(row)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    if args.json:
        print(json.dumps({"rows": rows, "softmax_train_s": t_train, "head_fit_s": fit_s, "wall_s": wall,
                          "cpu_s": cpu, "args": vars(args)}, indent=2))
        return
    cols = list(rows[0])
    print(f"digits: {len(train)} train / {len(test)} test; softmax CNN trained in {t_train:.1f} s; "
          f"head fits {sum(fit_s.values()):.1f} s; total {wall:.1f} s wall, {cpu:.1f} s CPU; "
          f"{args.threads} thread(s); seed {args.seed}; one-pixel on {len(y_attack)} images")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in cols) + " |")


if __name__ == "__main__":
    main()
