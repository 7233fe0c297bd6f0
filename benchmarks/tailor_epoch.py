"""Time one TailorNetwork epoch against one plain fine-tuning epoch of the same model, in the
same process (issue 4's target: ratio ≤ 1.2).

Both epochs use the same data path (batches sliced from in-memory tensors), batch size,
SGD optimiser, gradient clipping, frozen BatchNorm statistics, crop+flip augmentation (on
images ≥ 28 px), and on CUDA bf16 autocast with channels_last. The tailor epoch adds what
Algorithm 1 costs: the distance to every centroid, the scatter + CE loss and the per-class
feature sums for the centroid update. The one-off passes before and after (initial and
final exact centroids) are reported separately.

    python benchmarks/tailor_epoch.py --arch smallcnn --data digits
    python benchmarks/tailor_epoch.py --arch resnet18 --data /path/to/cifar10 -n 10000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kmtools.data import load_dataset, subset
from kmtools.device import autocast, resolve, synchronize
from kmtools.features import as_tensors
from kmtools.models import KmModel, wrap, zoo
from kmtools.tailor import TailorConfig, _bn_eval, crop_flip, tailor


def finetune_epoch_seconds(model: KmModel, data: Dataset[Any], bs: int, dev: torch.device) -> float:
    """One epoch of plain cross-entropy fine-tuning on tailor's data path."""
    tensors = as_tensors(data)
    if tensors is None:
        raise SystemExit("this benchmark needs an in-memory dataset")
    x_all, y_all = tensors
    amp = cl = dev.type == "cuda"
    aug = x_all.dim() == 4 and x_all.shape[-1] >= 28
    g = torch.Generator().manual_seed(0)
    model = model.to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=True)
    n = len(y_all)
    order = torch.randperm(n, generator=g)
    synchronize(dev)
    t0 = time.perf_counter()
    with _bn_eval(model.backbone, True):
        for s in range((n + bs - 1) // bs):
            idx = order[s * bs:(s + 1) * bs]
            xb, yb = x_all[idx].to(dev, non_blocking=True), y_all[idx].long().to(dev, non_blocking=True)
            if aug:
                xb = crop_flip(xb, g)
            if cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(dev, amp):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
    synchronize(dev)
    model.eval()
    return time.perf_counter() - t0


def time_epochs(model: KmModel, data: Dataset[Any], *, batch_size: int, device: torch.device,
                repeat: int = 2) -> dict[str, Any]:
    """Best-of-``repeat`` seconds for a fine-tuning epoch and a tailor epoch, and their ratio."""
    ft = [finetune_epoch_seconds(model, data, batch_size, device) for _ in range(repeat)]
    t0 = time.perf_counter()
    res = tailor(model.cpu(), data, TailorConfig(epochs=repeat, batch_size=batch_size), device=device)
    total = time.perf_counter() - t0
    tl = [h.seconds for h in res.history]
    out = {"finetune_s": ft, "tailor_s": tl, "ratio": min(tl) / min(ft), "batch_size": batch_size,
           "tailor_overhead_s": total - sum(tl), "device": str(device), "n": len(data)}  # type: ignore[arg-type]
    print(f"epoch seconds (batch {batch_size}, n {out['n']}, {device}): fine-tune {min(ft):.3f}, "
          f"tailor {min(tl):.3f}, ratio {out['ratio']:.2f} (target <= 1.2); "
          f"one-off centroid passes {out['tailor_overhead_s']:.2f}s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="smallcnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("-n", type=int, default=None, help="use the first N training inputs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    dev = resolve(args.device)
    tr = subset(load_dataset(args.data, split="train"), args.n)
    shape = tr.input_shape or (1, 8, 8)
    kw: dict[str, Any] = {"num_classes": tr.num_classes, "in_channels": shape[0]}
    model = wrap(zoo.create(args.arch, **kw), arch=args.arch, arch_kwargs=kw, input_shape=shape)
    res = time_epochs(model, tr.dataset, batch_size=args.batch_size, device=dev, repeat=args.repeat)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
