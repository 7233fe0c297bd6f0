"""Candidate scoring backends against eager torch, and the one-pixel attack with them, in one process.

Part 1: throughput (images/s) of ``kmtools.scoring_backends.build_scorer`` for each backend on
the same batches (one-pixel candidate batch sizes), timed round robin with a fixed thread
count, and the set-up cost (export / compile) beside it. Part 2: ``onepixel`` end to end,
eager against ``--backend`` (default onnxruntime), same images, seed and budget, wall time
including the set-up, and whether the fooled sets agree.

    python benchmarks/scoring_backends.py                     # SmallCNN 1x28x28 and digits 1x8x8, 1 thread
    python benchmarks/scoring_backends.py --compile           # also torch.compile (slow cold start)
    python benchmarks/scoring_backends.py --model benchmarks/reference/fmnist.safetensors --data fashion-mnist
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmtools.attacks.onepixel import onepixel
from kmtools.data import load_dataset
from kmtools.features import as_tensors
from kmtools.models import KmModel, load_model, wrap, zoo
from kmtools.scoring_backends import build_scorer


def _random_model(shape: tuple[int, int, int], pool: int) -> KmModel:
    torch.manual_seed(0)
    kw = {"num_classes": 10, "in_channels": shape[0], "pool": pool}
    return wrap(zoo.create("smallcnn", **kw), arch="smallcnn", arch_kwargs=kw, input_shape=shape).eval()


def throughput(model: KmModel, shape: tuple[int, ...], batches: list[int], backends: list[str],
               reps: int) -> list[str]:
    x_all = torch.rand(max(batches), *shape)
    scorers = {}
    for b in backends:
        t = time.perf_counter()
        sc = build_scorer(model, b, example=x_all[:2])
        sc(x_all[: batches[0]])  # compile pays at the first call
        scorers[b] = (sc, time.perf_counter() - t)
    lines = [f"| batch | {' | '.join(backends)} |", "|---|" + "---|" * len(backends)]
    for n in batches:
        x = x_all[:n]
        for sc, _ in scorers.values():
            sc(x)  # warm-up at this size
        times: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(reps):
            for b, (sc, _) in scorers.items():
                t = time.perf_counter()
                sc(x)
                times[b].append(time.perf_counter() - t)
        med = {b: statistics.median(v) for b, v in times.items()}
        cells = [f"{n / med[b]:,.0f} img/s ({med['eager'] / med[b]:.2f}×)" for b in backends]
        lines.append(f"| {n} | {' | '.join(cells)} |")
    lines.append("")
    lines.append("set-up (export / compile incl. first call): "
                 + ", ".join(f"{b} {s:.2f} s" for b, (_, s) in scorers.items()))
    return lines


def attack(model: KmModel, x: torch.Tensor, y: torch.Tensor, backend: str, popsize: int, steps: int) -> list[str]:
    kw = dict(popsize=popsize, maxiter=steps, seed=0)
    t = time.perf_counter()
    e = onepixel(model, x, y, backend="eager", **kw)  # type: ignore[arg-type]
    te = time.perf_counter() - t
    t = time.perf_counter()
    o = onepixel(model, x, y, backend=backend, **kw)  # type: ignore[arg-type]
    to = time.perf_counter() - t
    same = bool(torch.equal(e.success, o.success))
    return [f"one-pixel, {len(y)} images, pop {popsize}, {steps} generations: eager {te:.2f} s "
            f"({e.fooled}/{e.attacked} fooled), {backend} {to:.2f} s incl. set-up ({o.fooled}/{o.attacked}); "
            f"ratio {te / to:.2f}×; fooled sets {'identical' if same else 'DIFFER'}; "
            f"candidates {int(e.evaluations.sum())} / {int(o.evaluations.sum())}."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a checkpoint (default: random SmallCNNs at 1x28x28 and 1x8x8)")
    ap.add_argument("--data", default="digits", help="images for the attack (default digits; --model's data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", default="200,1980")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (tens of seconds cold start)")
    ap.add_argument("--backend", default="onnxruntime", help="backend of the attack comparison")
    ap.add_argument("-n", type=int, default=16, help="images attacked")
    ap.add_argument("--popsize", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backends = ["eager", "channels-last", "onnxruntime"] + (["compile"] if args.compile else [])
    batches = [int(b) for b in args.batches.split(",")]
    print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, median of {args.reps} rounds\n")
    if args.model:
        model = load_model(args.model).eval()
        settings = [(f"{args.model} {tuple(model.input_shape or ())}", model)]
    else:
        settings = [("SmallCNN 1x28x28 (pool 7, the Fashion-MNIST layout)", _random_model((1, 28, 28), 7)),
                    ("SmallCNN 1x8x8 (digits)", _random_model((1, 8, 8), 2))]
    for name, model in settings:
        shape = tuple(model.input_shape or (1, 8, 8))
        print(f"**{name}**\n")
        print("\n".join(throughput(model, shape, batches, backends, args.reps)) + "\n")
    data = load_dataset(args.data, split="test")
    pair = as_tensors(data.dataset)
    assert pair is not None
    x, y = pair[0].float(), pair[1].long()
    if args.model:
        model = settings[0][1]
    else:  # a trained digits model, so some images are fooled
        from kmtools.train import train_classifier

        model = _random_model((1, 8, 8), 2).train()
        train_classifier(model, load_dataset("digits", split="train").dataset, epochs=4, lr=1e-2, batch_size=64)
        model.eval()
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().flatten()[: args.n]
    print("\n".join(attack(model, x[ok], y[ok], args.backend, args.popsize, args.steps)))


if __name__ == "__main__":
    main()
