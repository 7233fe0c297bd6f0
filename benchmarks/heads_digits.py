"""Prototype heads on scikit-learn digits: accuracy, confidence and rejection vs softmax.

Trains a small CNN softmax classifier on digits (8x8, scaled to [0, 1]; 75/25 stratified
split), freezes it, and for every head kind builds the head on the penultimate training
features (class means or per-class k-means), fits its prototypes with the head's own loss
(``kmtools.heads.fit_head``, frozen features), and reports on the test split:

* acc        test accuracy (%), and its difference to the softmax network (Δ, points);
* conf       mean confidence of the predicted class (head's own ``confidences``);
* out@1/c    share of test inputs whose predicted-class confidence is below 1/c
             (kmtools' default outlier rule);
* AR-AUC     area under the accuracy-reject curve of that confidence;
* nb-rej     share of test inputs rejected by n-balls fitted at 95% coverage of the
             correctly classified training points (class means for softmax/gauss);
* nb-acc     accuracy on the inputs the n-balls accept (%);
* noise-rej  share of 500 uniform-noise images rejected by the n-balls;
* noise-out  share of those noise images flagged by the confidence rule out@1/c.

Run: ``python benchmarks/heads_digits.py`` (CPU, about half a minute); ``--json`` prints
the rows as JSON instead of a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from kmtools.heads import build_head, fit_head, head_prototypes
from kmtools.heads.reject import accuracy_reject_curve, fit_nball, nball_reject


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, width),
            nn.ReLU(),
        )
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x))
        return out


def train_softmax(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def class_means(f: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    return torch.stack([f[y == k].mean(0) for k in range(c)])


def evaluate(
    name: str,
    head: nn.Module,
    f_tr: torch.Tensor,
    y_tr: torch.Tensor,
    f_te: torch.Tensor,
    y_te: torch.Tensor,
    f_noise: torch.Tensor,
    base_acc: float | None,
) -> dict[str, Any]:
    c = 10
    with torch.no_grad():
        s = head(f_te)
        conf = head.confidences(s) if hasattr(head, "confidences") else torch.softmax(s, -1)
        s_n = head(f_noise)
        conf_n = head.confidences(s_n) if hasattr(head, "confidences") else torch.softmax(s_n, -1)
    pred = s.argmax(-1)
    top = conf.max(-1).values
    correct = pred == y_te
    acc = 100.0 * float(correct.float().mean())
    if isinstance(head, nn.Linear):
        protos, plabels = class_means(f_tr, y_tr, c), torch.arange(c)
    else:
        protos, plabels = head_prototypes(head)
    balls = fit_nball(f_tr, y_tr, protos, plabels, coverage=0.95)
    nb = nball_reject(f_te, protos, balls, prototype_labels=plabels, labels=y_te)
    nb_noise = nball_reject(f_noise, protos, balls)
    curve = accuracy_reject_curve(top, correct)
    return {
        "head": name,
        "acc": round(acc, 2),
        "delta": round(acc - base_acc, 2) if base_acc is not None else 0.0,
        "conf": round(float(top.mean()), 3),
        "out@1/c": round(float((top < 1.0 / c).float().mean()), 3),
        "AR-AUC": round(curve.auc, 4),
        "nb-rej": round(nb.reject_rate, 3),
        "nb-acc": round(100.0 * (nb.accuracy_accepted or 0.0), 2),
        "noise-rej": round(nb_noise.reject_rate, 3),
        "noise-out": round(float((conf_n.max(-1).values < 1.0 / c).float().mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30, help="softmax CNN training epochs")
    ap.add_argument("--head-epochs", type=int, default=30, help="prototype fitting epochs (0: init only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    i_tr, i_te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, stratify=y.numpy(), random_state=args.seed
    )
    x_tr, y_tr, x_te, y_te = x[i_tr], y[i_tr], x[i_te], y[i_te]
    t0 = time.perf_counter()
    model = train_softmax(x_tr, y_tr, args.epochs, args.seed)
    t_train = time.perf_counter() - t0
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        f_tr, f_te, f_n = model.features(x_tr), model.features(x_te), model.features(noise)

    rows = [evaluate("softmax (original)", model.fc, f_tr, y_tr, f_te, y_te, f_n, None)]
    base = rows[0]["acc"]
    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("gauss", "gauss", {}),
        ("rbf softmax T=1", "rbf", {}),
        ("rbf entmax15 T=1", "rbf", {"normaliser": "entmax15"}),
        ("rbf entmax15 T=auto", "rbf", {"normaliser": "entmax15", "temperature": None}),
        ("rslvq M=1", "rslvq", {}),
        ("rslvq M=3 kmeans", "rslvq", {"prototypes_per_class": 3}),
        ("glvq M=1", "glvq", {}),
        ("glvq M=3 kmeans", "glvq", {"prototypes_per_class": 3}),
        ("glvq M=3 sigmoid(μ)", "glvq", {"prototypes_per_class": 3, "squashing": "sigmoid", "slope": 5.0}),
    ]
    timings = {}
    for name, kind, kw in specs:
        t0 = time.perf_counter()
        head = build_head(kind, f_tr, y_tr, 10, seed=args.seed, **kw)
        fit_head(head, f_tr, y_tr, epochs=args.head_epochs, seed=args.seed)
        timings[name] = time.perf_counter() - t0
        rows.append(evaluate(name, head.eval(), f_tr, y_tr, f_te, y_te, f_n, base))

    if args.json:
        print(json.dumps({"rows": rows, "softmax_train_s": t_train, "head_fit_s": timings}, indent=2))
        return
    cols = list(rows[0])
    print(f"digits: {len(y_tr)} train / {len(y_te)} test; softmax CNN trained in {t_train:.1f} s; "
          f"prototype fits {sum(timings.values()):.1f} s in all; seed {args.seed}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in cols) + " |")


if __name__ == "__main__":
    main()
