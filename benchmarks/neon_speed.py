"""Speed of one NEON explanation of a deep model, against its forward pass and IG-50.

For a batch of inputs: the forward pass of the same batch (``model(x)``, no gradients),
NEON (forward to the cluster layer + NEON head + LRP backward through the backbone with the
zennit composite, the explainer built once beforehand) and integrated gradients of f_c with
50 steps. Weights are random (speed does not depend on them); the clusters are K feature
vectors of the batch. Prints one table with the ratios measured in the same run.

    python benchmarks/neon_speed.py                               # CPU, ResNet18, batch 32
    python benchmarks/neon_speed.py --device cuda --batch 256     # on a GPU
    python benchmarks/neon_speed.py --arch smallcnn --shape 1,28,28
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmtools.device import resolve
from kmtools.explain.deep import DeepNeonExplainer, deep_integrated_gradients
from kmtools.models import zoo
from kmtools.models.core import KmModel, Normalize, split


def timeit(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--shape", default=None, help="C,H,W (default: the architecture's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=50)
    ap.add_argument("--gamma", type=float, default=0.25)
    args = ap.parse_args()

    dev = resolve(args.device)
    torch.manual_seed(0)
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else zoo.default_input_shape(args.arch)
    net = zoo.create(args.arch, in_channels=shape[0]).eval()
    x = torch.rand(args.batch, *shape)
    backbone, head, _ = split(net, x[:2])
    model = KmModel(backbone, head, Normalize([0.5] * shape[0], [0.25] * shape[0])).to(dev).eval()
    x = x.to(dev)
    with torch.no_grad():
        feats = model.features(x)
    mu = feats[: args.k].clone()

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    t_setup = time.perf_counter()
    explainer = DeepNeonExplainer(model, mu, gamma=args.gamma, device=dev)
    explainer._register(x)
    t_setup = time.perf_counter() - t_setup

    def explain() -> object:
        return explainer.explain(x, beta=1.0, batch_size=args.batch)

    def ig() -> object:
        return deep_integrated_gradients(model, x, mu, steps=args.ig_steps, batch_size=args.batch)

    t_fwd = timeit(forward, dev, args.reps)
    t_neon = timeit(explain, dev, args.reps)
    t_ig = timeit(ig, dev, max(1, args.reps // 2))
    explainer.close()
    threads = torch.get_num_threads()
    print(f"{args.arch} {shape}, batch {args.batch}, K = {args.k}, device {dev} "
          f"({threads} CPU threads), median of {args.reps} runs")
    print("| step | seconds | images/s | × forward |")
    print("|---|---|---|---|")
    rows = (("forward (model(x))", t_fwd), ("NEON (LRP-γ, zennit)", t_neon), (f"IG-{args.ig_steps}", t_ig))
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {args.batch / t:,.0f} | {t / t_fwd:.2f} |")
    print(f"\nNEON / forward = {t_neon / t_fwd:.2f} (target ≤ 3); "
          f"IG-{args.ig_steps} / NEON = {t_ig / t_neon:.1f}; "
          f"explainer set-up (copy + canonizers + hooks, once) {t_setup:.3f} s")


if __name__ == "__main__":
    main()
