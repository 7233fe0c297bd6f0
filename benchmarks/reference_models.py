"""Train the reference models of issue 14 on the CPU, seeded and resumable.

    python benchmarks/reference_models.py fmnist            # Fashion-MNIST CNN
    python benchmarks/reference_models.py cifar10 --data-root /path/with/cifar10

Each model is trained on the training split *minus* the held-out part that
``kmtools tailor`` takes as validation data by default (``kmtools.data.split.holdout_split``:
stratified, 10%, at most 5,000 items, seed 0). The tailoring of a reference model therefore
validates on data the network never saw. The split's seed, size and sha256 of its indices are
written to the log.

Writes under ``--out`` (default ``benchmarks/reference/``): ``<name>.safetensors`` (kmtools
format, loads without ``--arch``) and ``<name>.json`` (recipe, per-epoch log, CPU time, test
accuracy). A state file ``<name>.state.pt`` is written after every epoch (git-ignored);
running the command again resumes from it. SGD with Nesterov momentum and a one-cycle
schedule; random crop (4 px for CIFAR, 2 px for Fashion-MNIST) and horizontal flip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kmtools.data import load_dataset
from kmtools.data.split import DEFAULT_FRACTION, DEFAULT_MAX_ITEMS, DEFAULT_SEED, holdout_split, indices_digest
from kmtools.models import save_model, wrap, zoo
from kmtools.models.checkpoint import NORM_PRESETS
from kmtools.tailor import crop_flip

RECIPES: dict[str, dict[str, Any]] = {
    "fmnist": {
        "data": "fashion-mnist", "arch": "smallcnn",
        "arch_kwargs": {"num_classes": 10, "in_channels": 1, "width": 16, "feature_dim": 128, "pool": 7},
        "input_shape": [1, 28, 28], "norm": "fashion-mnist",
        "epochs": 15, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4, "pad": 2,
    },
    "cifar10": {
        "data": "cifar10", "arch": "resnet10",
        "arch_kwargs": {"num_classes": 10, "in_channels": 3, "width": 16},
        "input_shape": [3, 32, 32], "norm": "cifar10",
        "epochs": 20, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "pad": 4,
    },
}


def tensors(info: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ds = info.dataset
    if hasattr(ds, "u8_tensors"):
        x, y = ds.u8_tensors()
        return x, y
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return (torch.stack(xs) * 255).round().to(torch.uint8), torch.tensor(ys)


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             bs: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(y), bs):
        xb = (x[i:i + bs].float() / 255 - mean) / std
        correct += int((net(xb).argmax(1) == y[i:i + bs]).sum())
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "reference")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = dict(RECIPES[args.name])
    if args.epochs:
        r["epochs"] = args.epochs
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / f"{args.name}.state.pt"
    log_path = args.out / f"{args.name}.json"

    train = load_dataset(r["data"], root=args.data_root, split="train")
    test = load_dataset(r["data"], root=args.data_root, split="test")
    x_all, y_all = tensors(train)
    x_te, y_te = tensors(test)
    tr_idx, val_idx = holdout_split(y_all, DEFAULT_FRACTION, DEFAULT_MAX_ITEMS, DEFAULT_SEED)
    x_tr, y_tr = x_all[tr_idx], y_all[tr_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    m, s = NORM_PRESETS[r["norm"]]
    mean = torch.tensor(m).view(1, -1, 1, 1)
    std = torch.tensor(s).view(1, -1, 1, 1)

    torch.manual_seed(args.seed)
    net = zoo.create(r["arch"], **r["arch_kwargs"])
    bs = r["batch_size"]
    steps = len(y_tr) // bs
    opt = torch.optim.SGD(net.parameters(), lr=r["lr"], momentum=0.9, weight_decay=r["weight_decay"], nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["epochs"] * steps, pct_start=0.2)
    g = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, Any]] = []
    start = 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["gen"])
        history, start = st["history"], st["epoch"]
        print(f"resuming {args.name} after epoch {start}", flush=True)

    for ep in range(start, r["epochs"]):
        t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        net.train()
        order = torch.randperm(len(y_tr), generator=g)
        correct, loss_sum = 0, 0.0
        for k in range(steps):
            idx = order[k * bs:(k + 1) * bs]
            xb = crop_flip(x_tr[idx].float() / 255, g, pad=r["pad"])
            xb = (xb - mean) / std
            out = net(xb)
            loss = F.cross_entropy(out, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out.argmax(1) == y_tr[idx]).sum())
            loss_sum += float(loss.detach()) * len(idx)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        row = {
            "epoch": ep + 1, "train_loss": loss_sum / (steps * bs), "train_acc": correct / (steps * bs),
            "val_acc": accuracy(net, x_val, y_val, mean, std), "test_acc": accuracy(net, x_te, y_te, mean, std),
            "wall_s": round(time.time() - t0, 1),
            "cpu_s": round((c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime), 1),
        }
        history.append(row)
        print(json.dumps(row), flush=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": g.get_state(), "history": history, "epoch": ep + 1}, tmp)
        os.replace(tmp, state_path)

    net.eval()
    model = wrap(net, arch=r["arch"], arch_kwargs=r["arch_kwargs"], input_shape=r["input_shape"],
                 mean=m, std=s, classes=train.classes)
    ckpt = save_model(model, args.out / f"{args.name}.safetensors", force=True)
    log = {
        "name": args.name, "recipe": r, "seed": args.seed, "checkpoint": ckpt.name,
        "checkpoint_bytes": ckpt.stat().st_size,
        "params": sum(p.numel() for p in net.parameters()),
        "data": {"train": train.source, "n_train_used": len(y_tr), "n_test": len(y_te)},
        "held_out": {"fraction": DEFAULT_FRACTION, "max_items": DEFAULT_MAX_ITEMS, "seed": DEFAULT_SEED,
                     "n": len(val_idx), "indices_sha256": indices_digest(val_idx)},
        "test_acc": history[-1]["test_acc"], "val_acc": history[-1]["val_acc"],
        "cpu_hours": round(sum(h["cpu_s"] for h in history) / 3600, 2),
        "wall_hours": round(sum(h["wall_s"] for h in history) / 3600, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "history": history,
    }
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {ckpt} and {log_path}: test accuracy {log['test_acc']:.4f}", flush=True)


if __name__ == "__main__":
    main()
