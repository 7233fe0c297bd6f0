"""One-pixel attack: kmtools (batched DE) against torchattacks.OnePixel, same model, images, budget.

Prints one table: images/s of both and their ratio, both attack rates, and kmtools'
candidate throughput (perturbed images scored per second) against the plain forward
throughput of the same model (bf16 autocast on CUDA, float32 on the CPU) at the same batch.

Fairness (see docs/attack.md):
- budget: torchattacks passes ``popsize // dims`` to scipy as a *multiplier* of the
  number of parameters dims = pixels·(2 + C), so its population is
  ``max(1, popsize // dims) * dims`` (400 for one RGB pixel; 399 for one grey pixel).
  kmtools is run with exactly that population and the same number of generations.
- stopping: torchattacks passes ``atol=-1`` to its copy of scipy's solver, which switches
  the convergence stop (std ≤ atol + tol·|mean|) off; kmtools runs with ``tol=None`` too.
  Both stop an image on success (torchattacks checks the best member after each
  generation; kmtools every evaluated candidate).
- same images: the first N test images the model classifies correctly.
- DE variants differ: Su et al.'s DE/rand/1 with F = 0.5 (kmtools) against scipy's
  best1bin with dithered F ∈ [0.5, 1) and uniform colour initialisation (torchattacks).

Examples:
    python benchmarks/onepixel.py --quick                  # CPU smoke run: SmallCNN on digits, < 1 min
    python benchmarks/onepixel.py                          # Su et al.'s budget (pop 400, 100 generations)
    python benchmarks/train_cifar.py --data /tmp/cifar10 --epochs 25 --out r18.safetensors
    python benchmarks/onepixel.py --model r18.safetensors --data /tmp/cifar10 -n 40 --device cuda
    python benchmarks/onepixel.py --arch resnet18 --device cuda -n 40   # random weights: speed only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kmtools.attacks import class_confidences, onepixel  # noqa: E402
from kmtools.device import autocast, resolve, synchronize  # noqa: E402
from kmtools.models import KmModel, load_model, wrap, zoo  # noqa: E402
from kmtools.stats import Rate, paired_diff, wilson  # noqa: E402


def _digits_model(size: int, epochs: int, seed: int) -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    from kmtools.data import load_dataset
    from kmtools.features import as_tensors
    from kmtools.train import train_classifier

    def prep(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_tensors(load_dataset("digits", split=split).dataset)
        assert t is not None
        x = nnf.interpolate(t[0], size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        return x, t[1]

    xtr, ytr = prep("train")
    xte, yte = prep("test")
    torch.manual_seed(seed)
    net = zoo.create("smallcnn", num_classes=10, in_channels=1, width=8)
    train_classifier(net, torch.utils.data.TensorDataset(xtr, ytr), epochs=epochs, lr=1e-2, seed=seed)
    model = wrap(net, arch="smallcnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8},
                 input_shape=(1, size, size))
    return model, xte, yte


def _random_model(arch: str, seed: int, n: int) -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    """Random weights, random 3x32x32 images, labels = the model's own predictions."""
    torch.manual_seed(seed)
    net = zoo.create(arch, num_classes=10, in_channels=3)
    model = wrap(net, arch=arch, arch_kwargs={"num_classes": 10, "in_channels": 3}, input_shape=(3, 32, 32))
    x = torch.rand(4 * n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    y = class_confidences(model.eval(), x).argmax(1)
    return model, x, y


def _load(args: argparse.Namespace) -> tuple[KmModel, torch.Tensor, torch.Tensor, str]:
    if args.model:
        from kmtools.data import load_dataset, subset
        from kmtools.features import as_tensors

        model = load_model(args.model, arch=args.arch if args.arch != "smallcnn" else None)
        info = load_dataset(args.data, root=args.data_root, split="test")
        # a seeded random sample (ImageFolder test sets are sorted by class)
        info = subset(info, min(len(info), 10 * args.n), seed=args.seed, shuffle=True)
        t = as_tensors(info.dataset)
        if t is None:
            items = [info.dataset[i] for i in range(len(info))]
            x = torch.stack([torch.as_tensor(it[0]).float() for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
        else:
            x, y = t[0].float(), torch.as_tensor(t[1]).long()
        return model, x, y, f"{args.model} on {args.data} (random test sample, seed {args.seed})"
    if args.arch == "smallcnn":
        m, x, y = _digits_model(args.size, args.epochs, args.seed)
        return m, x, y, f"SmallCNN (width 8) trained {args.epochs} epochs on digits {args.size}x{args.size}"
    m, x, y = _random_model(args.arch, args.seed, args.n)
    return m, x, y, f"{args.arch} with random weights on random images (speed only)"


def _machine(dev: torch.device) -> str:
    import os
    import platform

    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads of {os.cpu_count()} CPUs, torch {torch.__version__}"


def _forward_sweep(model: KmModel, x: torch.Tensor, batches: list[int], dev: torch.device, amp: bool,
                   reps: int = 3) -> dict[int, float]:
    """Plain eager forward throughput (images/s) of the model at each batch size, round robin."""
    xs = {b: x[:1].to(dev).expand(b, *x.shape[1:]).contiguous() for b in batches}
    if dev.type == "cuda":
        xs = {b: v.contiguous(memory_format=torch.channels_last) for b, v in xs.items()}
    took = {b: 0.0 for b in batches}
    with torch.inference_mode(), autocast(dev, amp):
        for b in batches:
            model(xs[b])  # warm-up
        for _ in range(reps):
            for b in batches:
                synchronize(dev)
                t = time.perf_counter()
                model(xs[b])
                synchronize(dev)
                took[b] += time.perf_counter() - t
    return {b: reps * b / took[b] for b in batches}


def _torchattacks(model: KmModel, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, pop: int,
                  dev: torch.device) -> torch.Tensor:
    """Fooled flags (N,) of torchattacks.OnePixel (its verdict: the returned image's prediction)."""
    import torchattacks

    atk = torchattacks.OnePixel(model, pixels=args.pixels, steps=args.steps, popsize=args.popsize, inf_batch=pop)
    adv = atk(x.to(dev), y.to(dev))
    with torch.no_grad():
        return class_confidences(model, adv).argmax(1).cpu() != y


@dataclass
class _Race:
    """Totals of one comparison: seconds, candidates, per-image fooled flags and generations."""

    km_s: float = 0.0
    ta_s: float = 0.0
    evals: int = 0
    km: list[bool] = field(default_factory=list)
    ta: list[bool] = field(default_factory=list)
    gens: list[int] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _race(model: KmModel, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, pop: int,
          dev: torch.device) -> _Race:
    """Both attacks on the same images, block by block in alternation (load hits both alike);
    every kmtools call pays its own set-up (backend export) inside its time."""
    kw = {"pixels": args.pixels, "popsize": pop, "maxiter": args.steps, "tol": None, "seed": args.seed,
          "batch_size": args.batch_size, "chunk": args.chunk, "amp": not args.no_amp, "fitness": "confidence",
          "success": "best", "bounds": "resample", "backend": args.backend}
    n = len(y)
    step = max(1, -(-n // args.blocks))
    out = _Race()
    for s in range(0, n, step):
        xb, yb = x[s : s + step], y[s : s + step]
        synchronize(dev)
        t = time.perf_counter()
        res = onepixel(model, xb, yb, index=torch.arange(s, s + len(yb)), **kw)  # type: ignore[arg-type]
        synchronize(dev)
        out.km_s += time.perf_counter() - t
        out.evals += int(res.evaluations.sum())
        out.km += (res.success & ~res.skipped).tolist()
        out.gens += res.generations.tolist()
        out.settings = res.settings
        if not args.skip_torchattacks:
            t = time.perf_counter()
            fooled = _torchattacks(model, xb, yb, args, pop, dev)
            synchronize(dev)
            out.ta_s += time.perf_counter() - t
            out.ta += fooled.tolist()
        print(f"  images {s}-{s + len(yb) - 1}: kmtools {out.km_s:.1f} s, torchattacks {out.ta_s:.1f} s so far",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small settings for a CPU smoke run (< 1 min): -n 8, --popsize 60, --steps 10, "
                    "--epochs 4, --size 8, --threads 1 unless given")
    ap.add_argument("--model", help="kmtools checkpoint (or a state dict with --arch); needs --data")
    ap.add_argument("--arch", default="smallcnn",
                    help="without --model: smallcnn (trained on digits in-script) or resnet18/vgg16 "
                    "(random weights, random images: speed only); with --model: a state dict's architecture")
    ap.add_argument("--data", default="cifar10", help="dataset of --model (name or ImageFolder path)")
    ap.add_argument("--data-root", default=None, help="folder holding --data")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("-n", type=int, default=None, help="images attacked, correctly classified ones (default 40)")
    ap.add_argument("--pixels", type=int, default=1, help="pixels changed per candidate")
    ap.add_argument("--popsize", type=int, default=None,
                    help="torchattacks' popsize (default 400, Su et al.; see the note on fairness)")
    ap.add_argument("--steps", type=int, default=None, help="generations (default 100, Su et al.)")
    ap.add_argument("--size", type=int, default=None,
                    help="smallcnn: digits resized to size x size (default 16; 8, the original, with --quick)")
    ap.add_argument("--epochs", type=int, default=None, help="smallcnn: training epochs (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model, the image sample and the attack")
    ap.add_argument("--batch-size", type=int, default=None, help="kmtools: images evolved together")
    ap.add_argument("--chunk", type=int, default=None, help="kmtools: candidates per forward (default: its own)")
    ap.add_argument("--backend", default="auto", help="kmtools' candidate scoring backend (default auto)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="alternate the two methods over this many blocks of images (default n/4, at least 1)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="run the whole comparison this many times and report median times (default 1; 5 with "
                    "--quick, whose runs last a fraction of a second)")
    ap.add_argument("--no-amp", action="store_true", help="kmtools: no bf16 autocast on CUDA")
    ap.add_argument("--skip-torchattacks", action="store_true", help="time kmtools only")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch and onnxruntime (default 1 on the CPU: ratios depend on it)")
    args = ap.parse_args(argv)
    quick = {"n": 8, "popsize": 60, "steps": 10, "epochs": 4, "size": 8, "threads": 1, "repeat": 5}
    real = {"n": 40, "popsize": 400, "steps": 100, "epochs": 8, "size": 16, "threads": 1, "repeat": 1}
    for k, v in (quick if args.quick else real).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.skip_torchattacks:
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            print("torchattacks is not installed: pip install --no-deps torchattacks (or --skip-torchattacks)")
            return 1

    dev = resolve(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, x, y, what = _load(args)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    prep_s = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([class_confidences(model, x[i : i + 512].to(dev)).argmax(1).cpu()
                          for i in range(0, len(x), 512)])
    ok = (pred == y).nonzero().flatten()[: args.n]
    x, y = x[ok], y[ok]
    n = len(y)
    args.blocks = args.blocks or max(1, n // 4)
    dims = args.pixels * (2 + x.shape[1])
    pop = max(1, args.popsize // dims) * dims  # torchattacks' effective population
    amp = not args.no_amp
    print(f"machine: {_machine(dev)}")
    print(f"model: {what} (setup {prep_s:.1f} s); device {dev}; {n} correctly classified images "
          f"{tuple(x.shape[1:])}; pixels {args.pixels}, population {pop} (torchattacks popsize "
          f"{args.popsize} -> {max(1, args.popsize // dims)} x {dims} parameters), {args.steps} generations; "
          f"matched rules: fitness = true-class probability, success = best member, out-of-range "
          f"coordinates resampled; {args.blocks} alternating blocks", flush=True)

    races = [_race(model, x, y, args, pop, dev) for _ in range(args.repeat)]
    r = races[0]  # rates and counts: the first repetition (kmtools' search is seeded and repeats itself)
    km_s = statistics.median(q.km_s for q in races)
    ta_s = statistics.median(q.ta_s for q in races)
    evals = r.evals
    if args.repeat > 1:
        print(f"times (median of {args.repeat} repetitions): kmtools "
              + ", ".join(f"{q.km_s:.3f}" for q in races) + " s; torchattacks "
              + ", ".join(f"{q.ta_s:.3f}" for q in races) + " s")
    settings = r.settings
    chunk = int(settings["chunk"])
    sweep = sorted({50, 100, 200, 400, 800, 1600, chunk})
    fwd = _forward_sweep(model, x, sweep, dev, amp)
    best_b = max(fwd, key=lambda b: fwd[b])
    km = [bool(v) for v in r.km]
    rk = wilson(sum(km), n)
    print()
    print(f"{'method':<24}{'s':>9}{'images/s':>10}{'fooled':>8}{'rate [95% CI]':>24}{'candidates/s':>14}")
    print(f"{'kmtools onepixel':<24}{km_s:>9.1f}{n / km_s:>10.3f}{sum(km):>8}{_ci(rk):>24}{evals / km_s:>14,.0f}")
    if not args.skip_torchattacks:
        ta = [bool(v) for v in r.ta]
        print(f"{'torchattacks OnePixel':<24}{ta_s:>9.1f}{n / ta_s:>10.3f}{sum(ta):>8}{_ci(wilson(sum(ta), n)):>24}"
              f"{'-':>14}")
    print()
    print("plain eager forward, images/s by batch: "
          + ", ".join(f"{b}: {v:,.0f}" for b, v in fwd.items()) + f" (best {best_b})")
    print(f"kmtools: backend {settings.get('backend')}, threads {settings.get('threads')}, chunk {chunk}; "
          f"{evals:,} candidates, mean {sum(r.gens) / max(n, 1):.1f} generations; "
          f"candidate throughput / best plain forward = {evals / km_s / fwd[best_b]:.0%} "
          f"(/ forward at its chunk {evals / km_s / fwd[chunk]:.0%})")
    if not args.skip_torchattacks:
        d = paired_diff(ta, km)
        print(f"speed-up kmtools / torchattacks (set-up included): {ta_s / km_s:.2f}x;  rate difference "
              f"kmtools - torchattacks: {100 * (d.diff or 0):+.1f} points [{100 * (d.lo or 0):+.1f}, "
              f"{100 * (d.hi or 0):+.1f}], McNemar p = {d.test.p_value:.3g} (n = {n})")
    return 0


def _ci(r: Rate) -> str:
    if r.rate is None or r.lo is None or r.hi is None:
        return "-"
    return f"{r.rate:.1%} [{r.lo:.1%}, {r.hi:.1%}]"


if __name__ == "__main__":
    raise SystemExit(main())
