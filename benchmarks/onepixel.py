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
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kmtools.attacks import class_confidences, onepixel  # noqa: E402
from kmtools.device import autocast, resolve  # noqa: E402
from kmtools.models import KmModel, load_model, wrap, zoo  # noqa: E402


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


def _forward_throughput(model: KmModel, x: torch.Tensor, batch: int, dev: torch.device, amp: bool) -> float:
    xb = x[:1].to(dev).expand(batch, *x.shape[1:]).contiguous()
    if dev.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    reps = 3 if dev.type == "cpu" else 20
    with torch.no_grad(), autocast(dev, amp):
        model(xb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            model(xb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - t)


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
    ap.add_argument("--no-amp", action="store_true", help="kmtools: no bf16 autocast on CUDA")
    ap.add_argument("--skip-torchattacks", action="store_true", help="time kmtools only")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default torch's choice; 1 is faster on a loaded machine)")
    args = ap.parse_args(argv)
    quick = {"n": 8, "popsize": 60, "steps": 10, "epochs": 4, "size": 8, "threads": 1}
    real = {"n": 40, "popsize": 400, "steps": 100, "epochs": 8, "size": 16, "threads": None}
    for k, v in (quick if args.quick else real).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    dev = resolve(args.device)
    if args.threads and dev.type == "cpu":
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
    ch = x.shape[1]
    dims = args.pixels * (2 + ch)
    pop = max(1, args.popsize // dims) * dims  # torchattacks' effective population
    amp = not args.no_amp
    print(f"machine: {_machine(dev)}")
    print(f"model: {what} (setup {prep_s:.1f} s); device {dev}; {n} correctly classified images "
          f"{tuple(x.shape[1:])}; pixels {args.pixels}, population {pop} (torchattacks popsize "
          f"{args.popsize} -> {max(1, args.popsize // dims)} x {dims} parameters), {args.steps} generations",
          flush=True)

    kw = {"pixels": args.pixels, "popsize": pop, "maxiter": args.steps, "tol": None, "seed": args.seed,
          "batch_size": args.batch_size, "amp": amp}
    onepixel(model, x[:1], y[:1], **{**kw, "maxiter": 1})  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    km = onepixel(model, x, y, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    km_s = time.perf_counter() - t
    km_rate = km.rate
    evals = int(km.evaluations.sum())
    batch = int(km.settings["chunk"])
    fwd = _forward_throughput(model, x, batch, dev, amp)

    ta_s = ta_rate = None
    if not args.skip_torchattacks:
        try:
            import torchattacks
        except ImportError:
            print("torchattacks is not installed: pip install -e '.[bench]' (or --skip-torchattacks)")
            return 1
        atk = torchattacks.OnePixel(model, pixels=args.pixels, steps=args.steps, popsize=args.popsize,
                                    inf_batch=pop)
        t = time.perf_counter()
        adv = atk(x.to(dev), y.to(dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ta_s = time.perf_counter() - t
        with torch.no_grad():
            ta_pred = class_confidences(model, adv).argmax(1).cpu()
        ta_rate = float((ta_pred != y).float().mean())

    rows: list[tuple[str, float, float, float | None]] = [("kmtools onepixel", km_s, km_rate, evals / km_s)]
    if ta_s is not None and ta_rate is not None:
        rows.append(("torchattacks OnePixel", ta_s, ta_rate, None))
    print()
    print(f"{'method':<24}{'images/s':>10}{'s/image':>10}{'rate':>8}{'candidates/s':>14}")
    for name, s, rate, cps in rows:
        c = f"{cps:,.0f}" if cps else "-"
        print(f"{name:<24}{n / s:>10.3f}{s / n:>10.3f}{rate:>8.1%}{c:>14}")
    print(f"{'plain forward':<24}{'':>10}{'':>10}{'':>8}{fwd:>14,.0f}   (batch {batch}, "
          f"{'bf16' if amp and dev.type == 'cuda' else 'fp32'})")
    print()
    if ta_s is not None and ta_rate is not None:
        print(f"speed-up kmtools / torchattacks: {ta_s / km_s:.1f}x;  attack rate difference: "
              f"{100 * (km_rate - ta_rate):+.1f} points")
    print(f"kmtools candidate throughput / plain forward: {evals / km_s / fwd:.0%}  "
          f"({evals:,} candidates, mean {km.generations.float().mean():.1f} generations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
