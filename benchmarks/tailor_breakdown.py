"""Where a tailoring epoch spends its time: ``kmtools.tailor`` against a plain fine-tuning epoch
of the same model, in one process (issue 18 target: training-epoch ratio ≤ 1.2 on the CPU).

The plain epoch uses tailor's own data path and settings (in-memory tensors, the same batch
size, shuffling, augmentation by ``kmtools.tailor.crop_flip``, BatchNorm statistics frozen,
SGD with Nesterov momentum, gradient clipping) and cross-entropy on the softmax logits.
``tailor`` runs ``--epochs`` epochs with held-out validation data; each history row gives the
epoch's seconds and, of them, the clean passes over the training and validation data
(``eval_seconds``), reported separately. Plain and tailor epochs alternate (``--rounds``), so
machine load hits both alike. A second, profiled tailor run (cProfile, which slows Python a
little) splits the time by function.

    python benchmarks/tailor_breakdown.py                                   # digits SmallCNN, 1 thread
    python benchmarks/tailor_breakdown.py --model benchmarks/reference/cifar10.safetensors \\
        --data cifar10 --data-root /work/data -n 2000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmtools.data import load_dataset, subset
from kmtools.features import as_tensors
from kmtools.models import KmModel, load_model, wrap, zoo
from kmtools.tailor import TailorConfig, crop_flip, tailor
from kmtools.tailor.loop import _eval_mode, resolve_augment

PARTS = {  # function name (pstats) -> what it is
    "_features": "backbone forward (training batches)",
    "backward": "backward pass",
    "_step_loss": "Gauss objective (distances, scatter, CE)",
    "clip_grad_norm_": "gradient clipping",
    "step": "optimizer + scheduler steps",
    "crop_flip": "augmentation",
    "_batch": "batch slicing",
    "_epoch_end": "per-epoch clean passes (train + validation)",
    "_epoch0": "epoch 0: softmax + initial head figures",
    "_build": "initial centroids (one pass)",
    "_finish": "selection, γ fit, export",
}


def plain_epoch(model: KmModel, x: torch.Tensor, y: torch.Tensor, cfg: TailorConfig, aug: str, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    pad = 4 if x.shape[-1] >= 32 else 2
    n = len(y)
    order = torch.randperm(n, generator=g)
    t0 = time.perf_counter()
    with _eval_mode(model.backbone, cfg.freeze_bn):
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            if len(idx) < 2:
                continue
            xb, yb = x[idx], y[idx].long()
            if aug == "crop-flip":
                xb = crop_flip(xb, g, pad=pad)
            loss = F.cross_entropy(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
    model.eval()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a softmax checkpoint (default: a digits SmallCNN, width 16)")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("-n", type=int, default=None, help="training inputs used (default all)")
    ap.add_argument("--val-n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="tailor epochs per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_root) if args.data_root else None
    tr = subset(load_dataset(args.data, root=root, split="train"), args.n)
    te = subset(load_dataset(args.data, root=root, split="test"), args.val_n)
    pair = as_tensors(tr.dataset)
    assert pair is not None
    x, y = pair[0].float(), pair[1].long()
    if args.model:
        base = load_model(args.model).eval()
    else:
        torch.manual_seed(0)
        shape = tr.input_shape or (1, 8, 8)
        kw: dict[str, Any] = {"num_classes": tr.num_classes, "in_channels": shape[0]}
        base = wrap(zoo.create("smallcnn", **kw), arch="smallcnn", arch_kwargs=kw, input_shape=shape).eval()
    cfg = TailorConfig(epochs=args.epochs, batch_size=args.batch_size, amp=False, channels_last=False)
    aug = resolve_augment(cfg.augment, tr.name, x[0])
    import copy

    plain, train_part, evals, oneoff = [], [], [], []
    for r in range(args.rounds):
        plain.append(plain_epoch(copy.deepcopy(base), x, y, cfg, aug, seed=r))
        t = time.perf_counter()
        res = tailor(copy.deepcopy(base), tr.dataset, cfg, val_data=te.dataset, dataset=tr.name)
        total = time.perf_counter() - t
        rows = [h for h in res.history if h.epoch >= 1]
        train_part += [h.seconds - h.eval_seconds for h in rows]
        evals += [h.eval_seconds for h in rows]
        oneoff.append(total - sum(h.seconds for h in rows))
    p, tp, ev = statistics.median(plain), statistics.median(train_part), statistics.median(evals)
    print(f"{args.model or 'SmallCNN (random init)'} on {tr.name}: {len(y)} training inputs, {len(te)} validation, "
          f"batch {args.batch_size}, augmentation {aug}, CPU {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}; medians over {args.rounds} rounds\n")
    print("| epoch | seconds | × plain epoch |\n|---|---|---|")
    print(f"| plain fine-tuning epoch | {p:.3f} | 1.00 |")
    print(f"| tailor epoch, training steps | {tp:.3f} | {tp / p:.2f} |")
    print(f"| tailor epoch, clean train + validation passes | {ev:.3f} | {ev / p:.2f} |")
    print(f"| tailor epoch, total | {tp + ev:.3f} | {(tp + ev) / p:.2f} |")
    print(f"| one-off per run (initial centroids, epoch 0, selection, export) | {statistics.median(oneoff):.3f} | "
          f"{statistics.median(oneoff) / p:.2f} |\n")

    prof = cProfile.Profile()
    prof.enable()
    tailor(copy.deepcopy(base), tr.dataset, cfg, val_data=te.dataset, dataset=tr.name)
    prof.disable()
    st = pstats.Stats(prof)
    total = max(v[3] for v in st.stats.values())  # type: ignore[attr-defined]
    print(f"profiled tailor run ({args.epochs} epochs, {total:.2f} s under cProfile):\n")
    print("| function | what | cumulative s | share |\n|---|---|---|---|")
    for fname, what in PARTS.items():
        cum = sum(v[3] for k, v in st.stats.items() if k[2] == fname  # type: ignore[attr-defined]
                  and ("kmtools" in k[0] or fname in ("backward", "step", "clip_grad_norm_")))
        if fname == "step":  # Optimizer.step and LRScheduler.step only
            cum = sum(v[3] for k, v in st.stats.items() if k[2] == "step"  # type: ignore[attr-defined]
                      and ("optim" in k[0]))
        if cum > 0:
            print(f"| `{fname}` | {what} | {cum:.3f} | {100 * cum / total:.0f}% |")


if __name__ == "__main__":
    main()
