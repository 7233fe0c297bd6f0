"""NEON with the fast LRP engine against zennit and the plain forward pass, in one process.

For one batch: the forward ``model(x)`` under ``torch.no_grad``, then NEON's explanation
(forward to the cluster layer + NEON head + LRP backward) with ``engine="fast"``
(kmtools.explain.fastlrp) and with ``engine="zennit"``, explainers built once beforehand.
The three are timed interleaved (round robin, ``--reps`` rounds) with a fixed thread count,
so machine load hits them alike; the table gives medians and the ratios NEON/forward (issue
18's targets: ≤ 3.2 SmallCNN 1×28×28 batch 32, ≤ 4.5 ResNet18 3×32×32 batch 16) and
zennit/fast. Weights are random with trained-looking BatchNorm statistics (speed does not
depend on them); the relevances of the two engines are compared too.

    python benchmarks/neon_engines.py                         # both settings of the issue, 1 thread
    python benchmarks/neon_engines.py --arch resnet18 --batch 16 --threads 2
    python benchmarks/neon_engines.py --device cuda --reps 20
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

from kmtools.device import resolve, synchronize
from kmtools.explain.deep import DeepNeonExplainer
from kmtools.models import zoo
from kmtools.models.core import KmModel, Normalize, split

SETTINGS = {"smallcnn": ((1, 28, 28), 32), "resnet18": ((3, 32, 32), 16)}


def build(arch: str, shape: tuple[int, ...], batch: int, dev: torch.device) -> tuple[KmModel, torch.Tensor]:
    torch.manual_seed(0)
    kw = {"pool": 7} if arch == "smallcnn" and shape[-1] == 28 else {}  # the Fashion-MNIST reference layout
    net = zoo.create(arch, in_channels=shape[0], **kw)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.rand(batch, *shape)
    backbone, head, _ = split(net, x[:2])
    model = KmModel(backbone, head, Normalize([0.5] * shape[0], [0.25] * shape[0])).to(dev).eval()
    return model, x.to(dev)


def race(fns: dict[str, Callable[[], object]], dev: torch.device, reps: int) -> dict[str, float]:
    """Median seconds per function, timed round robin after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            synchronize(dev)
            t = time.perf_counter()
            fn()
            synchronize(dev)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run(arch: str, shape: tuple[int, ...], batch: int, dev: torch.device, reps: int, k: int) -> list[str]:
    model, x = build(arch, shape, batch, dev)
    with torch.no_grad():
        mu = model.features(x)[:k].clone() + 0.01
    ex = {e: DeepNeonExplainer(model, mu, engine=e, device=dev) for e in ("fast", "zennit")}
    rel = {}
    for e, explainer in ex.items():
        rel[e] = explainer.explain(x, beta=1.0, batch_size=batch).relevance
        assert explainer.engine_used == e

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    t = race({"forward": forward,
              "fast": lambda: ex["fast"].explain(x, beta=1.0, batch_size=batch),
              "zennit": lambda: ex["zennit"].explain(x, beta=1.0, batch_size=batch)}, dev, reps)
    err = float((rel["fast"] - rel["zennit"]).abs().max() / rel["zennit"].abs().max())
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    return [
        f"**{arch} {shape}, batch {batch}, K = {k}** ({where}, torch {torch.__version__}, median of {reps} "
        "interleaved rounds)", "",
        "| step | seconds | × forward |", "|---|---|---|",
        f"| forward `model(x)` | {t['forward']:.4f} | 1.00 |",
        f"| NEON, fast engine | {t['fast']:.4f} | {t['fast'] / t['forward']:.2f} |",
        f"| NEON, zennit | {t['zennit']:.4f} | {t['zennit'] / t['forward']:.2f} |", "",
        f"zennit / fast = {t['zennit'] / t['fast']:.2f}; max |R_fast − R_zennit| / max |R| = {err:.1e}.", "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=None, help="smallcnn or resnet18 (default: both, the issue's settings)")
    ap.add_argument("--shape", default=None, help="C,H,W (default: the issue's)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed: ratios depend on it)")
    args = ap.parse_args()
    dev = resolve(args.device)
    torch.set_num_threads(args.threads)
    archs = [args.arch] if args.arch else list(SETTINGS)
    for arch in archs:
        shape, batch = SETTINGS.get(arch, ((3, 32, 32), 16))
        if args.shape:
            shape = tuple(int(s) for s in args.shape.split(","))
        print("\n".join(run(arch, shape, args.batch or batch, dev, args.reps, args.k)), flush=True)


if __name__ == "__main__":
    main()
