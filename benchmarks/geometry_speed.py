"""Speed of the curvature-based detection (decision-boundary geometry paper, Algorithm 2):
inputs per second and cost relative to one forward+backward pass of the same batch, in the same
process (issue 8: HVP curvature costs O(k) forward+backward passes per input).

    python benchmarks/geometry_speed.py                      # digits SmallCNN, CPU
    python benchmarks/geometry_speed.py --model m.safetensors --data cifar10 --device cuda -n 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kmtools.data import load_dataset, subset
from kmtools.device import resolve, synchronize
from kmtools.features import as_tensors
from kmtools.geometry.detect import detect
from kmtools.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="kmtools checkpoint (default: train the digits CNN)")
    ap.add_argument("--data", default="digits")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--samples", type=int, default=10, help="random directions per input (T)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve(args.device)
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers import digits_model

        model = digits_model()
    else:
        model = load_model(args.model)
    model = model.to(dev).eval()
    tensors = as_tensors(subset(load_dataset(args.data), args.n).dataset)
    assert tensors is not None
    x = tensors[0].to(dev)

    def fwd_bwd() -> None:
        xi = x.clone().requires_grad_(True)
        model(xi).max(1).values.sum().backward()

    for _ in range(3):
        fwd_bwd()
    synchronize(dev)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        fwd_bwd()
    synchronize(dev)
    fb = (time.perf_counter() - t0) / reps
    detect(model, x[:4], samples=args.samples, device=dev)  # warm-up
    synchronize(dev)
    t0 = time.perf_counter()
    detect(model, x, samples=args.samples, device=dev)
    synchronize(dev)
    det = time.perf_counter() - t0
    print(f"{len(x)} inputs on {dev}: forward+backward {fb * 1e3:.1f} ms, Algorithm 2 (T={args.samples}) "
          f"{det:.2f} s = {det / fb:.0f}x one forward+backward; {len(x) / det:.1f} inputs/s")


if __name__ == "__main__":
    main()
