"""Train the CIFAR-10 ResNet18 (kuangliu layout, as in the Gauss paper) that the Table 1
reproduction starts from, and time a plain fine-tuning epoch against a TailorNetwork epoch.

Data: ``--data`` is the folder of ``../shared/data/cifar10-jpeg.tar.xz`` unpacked (ImageFolder
``train/`` and ``test/``), or anything ``kmtools.data.load_dataset`` reads. The training set is
held on the GPU; augmentation (random crop with 4-pixel padding, horizontal flip) runs there.
bf16 autocast and channels_last on CUDA; SGD (Nesterov, momentum 0.9, weight decay 5e-4),
one-cycle learning rate with peak ``--lr``, batch 512.

    python benchmarks/train_cifar.py --data /tmp/cifar10 --epochs 25 --out r18.safetensors

``--time-epochs`` also measures, on the trained model, one epoch of plain cross-entropy
fine-tuning and one epoch of ``kmtools.tailor`` with the same batch size, data path,
optimiser and precision (issue 4's target: tailor epoch ≤ 1.2× the fine-tuning epoch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kmtools.data import load_dataset
from kmtools.device import synchronize
from kmtools.features import as_tensors, extract
from kmtools.models import KmModel, save_model, wrap, zoo
from kmtools.models.checkpoint import NORM_PRESETS
from kmtools.tailor import crop_flip

sys.path.insert(0, str(Path(__file__).parent))
from tailor_epoch import time_epochs


def train(model: KmModel, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, bs: int,
          dev: torch.device, seed: int) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = len(y) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.25)
    hist = []
    for ep in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(y), generator=g).to(dev)
        correct = torch.zeros((), device=dev)
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs]
            xb = crop_flip(x[idx], g).contiguous(memory_format=torch.channels_last)
            yb = y[idx]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += (out.argmax(1) == yb).sum()
        synchronize(dev)
        secs = time.perf_counter() - t0
        hist.append({"epoch": ep + 1, "train_acc": float(correct) / (steps * bs), "seconds": secs})
        print(json.dumps(hist[-1]), flush=True)
    model.eval()
    return hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 folder (ImageFolder train/ test/)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("r18-cifar10.safetensors"))
    ap.add_argument("--time-epochs", action="store_true", help="also time a fine-tune epoch vs a tailor epoch")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    tr = load_dataset(args.data, split="train")
    te = load_dataset(args.data, split="test")
    print(f"data loaded in {time.perf_counter() - t0:.1f}s: {len(tr.dataset)} train, {len(te.dataset)} test",
          flush=True)
    x, y = as_tensors(tr.dataset)  # type: ignore[misc]
    x, y = x.to(dev), y.to(dev)
    mean, std = NORM_PRESETS["cifar10"]
    model = wrap(zoo.create("resnet18"), arch="resnet18", arch_kwargs={"num_classes": 10, "in_channels": 3},
                 input_shape=(3, 32, 32), mean=mean, std=std, classes=tr.classes)
    t1 = time.perf_counter()
    hist = train(model, x, y, args.epochs, args.lr, args.batch_size, dev, args.seed)
    train_s = time.perf_counter() - t1
    del x, y
    f = extract(model, te.dataset, batch_size=1024, device=dev, amp=True, channels_last=True)
    acc = float((f.predictions == f.labels).double().mean())
    model = model.cpu().to(memory_format=torch.contiguous_format)
    save_model(model, args.out, force=True)
    res: dict[str, object] = {"test_accuracy": acc, "train_seconds": train_s, "epochs": args.epochs,
                              "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                              "history": hist}
    print(f"test accuracy {acc:.4f} after {args.epochs} epochs ({train_s:.0f}s); saved {args.out}", flush=True)
    if args.time_epochs:
        res["epoch_seconds"] = time_epochs(model, tr.dataset, batch_size=128, device=dev, repeat=2)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
