"""Table 1 of *Softmax is k-means* (Gauss-network paper, Sec. 5): train a CIFAR-10 classifier,
tailor it with ``kmtools tailor``, attack test images with the one-pixel attack, print the
paper's layout with the paper's numbers beside ours.

    # GPU, the paper's setting (ResNet18 or VGG16, 500 images, population 400, 100 generations)
    python benchmarks/table1.py --arch resnet18 --epochs 25 --out runs/table1-r18
    # CPU, a scaled-down version: SmallCNN on 10k training images, 100 images, smaller budget
    python benchmarks/table1.py --small --out runs/table1-small

The CIFAR-10 JPEGs come from ``--data`` (an unpacked ImageFolder with train/ and test/) or are
unpacked from ``../shared/data/cifar10-jpeg.tar.xz``. Each step is a kmtools command run
in-process (printed as it runs); ``--resume`` skips the steps whose outputs exist. The table goes
to stdout and to ``OUT/table1.md``.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from pathlib import Path

import torch

from kmtools.data import load_dataset, subset
from kmtools.features import as_tensors, extract
from kmtools.models import save_model, wrap, zoo
from kmtools.models.checkpoint import NORM_PRESETS
from kmtools_cli._output import Output
from kmtools_cli.demo_cmd import _get, _run

sys.path.insert(0, str(Path(__file__).parent))
from train_cifar import train

#: Table 1 of the paper: (run, network, acc, conf, attack rate, conf in fooled) softmax | Gauss.
PAPER = [
    ("1", "VGG16", 0.925, 0.97, 0.52, 0.84, 0.927, 0.70, 0.13, 0.59),
    ("2", "VGG16", 0.930, 0.97, 0.44, 0.79, 0.931, 0.78, 0.16, 0.70),
    ("3", "VGG16", 0.928, 0.97, 0.52, 0.81, 0.930, 0.81, 0.18, 0.68),
    ("1", "ResNet18", 0.944, 0.98, 0.34, 0.77, 0.942, 0.74, 0.05, 0.61),
    ("2", "ResNet18", 0.948, 0.98, 0.33, 0.76, 0.948, 0.76, 0.07, 0.49),
    ("3", "ResNet18", 0.950, 0.98, 0.34, 0.79, 0.948, 0.76, 0.07, 0.63),
]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"


def cifar_folder(data: Path | None, out: Path) -> Path:
    if data is not None:
        return data
    folder = out / "cifar10"
    if not (folder / "test").is_dir():
        if not SHARED.is_file():
            raise SystemExit(f"no --data given and {SHARED} not found")
        print(f"unpacking {SHARED} ...", flush=True)
        with tarfile.open(SHARED) as tar:
            tar.extractall(folder, filter="data")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="resnet18 or vgg16 (smallcnn with --small)")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/table1"))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--tailor-epochs", type=int, default=5)
    ap.add_argument("-n", type=int, default=500, help="test images attacked")
    ap.add_argument("--popsize", type=int, default=400)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--small", action="store_true",
                    help="CPU scale: SmallCNN (width 32), 10k training images, 8 epochs, 50 images, pop 50, 20 gen.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="skip steps whose outputs exist")
    args = ap.parse_args()
    if args.small:
        args.arch, args.epochs, args.tailor_epochs, args.n, args.popsize, args.steps = "smallcnn", 8, 3, 50, 50, 20
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    folder = cifar_folder(args.data, out_dir)
    t_all = time.perf_counter()
    softmax = out_dir / f"{args.arch}.safetensors"
    if not (args.resume and softmax.is_file()):
        tr = load_dataset(str(folder), split="train")
        if args.small:
            tr = subset(tr, 10_000, seed=args.seed, shuffle=True)
        tensors = as_tensors(tr.dataset)
        assert tensors is not None
        x, y = tensors[0].to(dev), tensors[1].to(dev)
        mean, std = NORM_PRESETS["cifar10"]
        kw = {"num_classes": 10, "in_channels": 3, **({"width": 32} if args.arch == "smallcnn" else {})}
        model = wrap(zoo.create(args.arch, **kw), arch=args.arch, arch_kwargs=kw, input_shape=(3, 32, 32),
                     mean=mean, std=std, classes=tr.classes)
        lr = 0.05 if args.small else 0.2
        train(model, x, y, args.epochs, lr, 128 if args.small else 512, dev, args.seed)
        del x, y
        te = load_dataset(str(folder), split="test")
        f = extract(model, te.dataset, batch_size=1024, device=dev)
        print(f"trained {args.arch}: test accuracy {float((f.predictions == f.labels).double().mean()):.4f}")
        save_model(model.cpu().to(memory_format=torch.contiguous_format), softmax, force=True)
    out = Output("human")
    log = out_dir / "table1.log"
    d = ["--data", str(folder), "--seed", str(args.seed)]
    s, g = str(softmax), str(out_dir / "gauss" / "gauss.safetensors")
    if not (args.resume and Path(g).is_file()):
        small = ["-n", "10000"] if args.small else []
        _run(out, ["tailor", s, *d, *small, "--epochs", str(args.tailor_epochs), "--out", str(out_dir / "gauss"),
                   "--export", "", "--force"], log)
    ev = _run(out, ["evaluate", s, "--compare", g, *d, "--out", str(out_dir / "evaluate"), "--force"], log)
    op = _run(out, ["attack", "onepixel", s, "--compare", g, *d, "-n", str(args.n), "--popsize", str(args.popsize),
                    "--steps", str(args.steps), "--out", str(out_dir / "onepixel"), "--force"], log)
    ours = []
    for key in ("softmax", "gauss"):
        ours += [_get(ev, "results", key, "accuracy"), _get(ev, "results", key, "mean_confidence"),
                 _get(op, "results", key, "onepixel", "rate"), _get(op, "results", key, "onepixel", "mean_conf_fooled")]
    net = {"resnet18": "ResNet18", "vgg16": "VGG16"}.get(args.arch, args.arch)
    budget = f"{args.n} images, population {args.popsize}, {args.steps} generations"
    rows = [("paper " + r[0], r[1], *r[2:]) for r in PAPER] + [("kmtools", net, *ours)]

    def cell(v: object, pct: bool) -> str:
        if not isinstance(v, float):
            return "-"
        return f"{v:.1%}" if pct else f"{v:.2f}"

    md = ["| run | network | acc | conf | attack rate | conf fooled | Gauss acc | conf | attack rate | conf fooled |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vals = [cell(v, i in (0, 2, 4, 6)) for i, v in enumerate(r[2:])]
        md.append(f"| {r[0]} | {r[1]} | " + " | ".join(vals) + " |")
    ratio = (ours[2] / ours[6]) if isinstance(ours[2], float) and isinstance(ours[6], float) and ours[6] else None
    md += ["", f"Attack-rate factor softmax/Gauss: {ratio:.2f}" if ratio else "",
           f"kmtools row: {budget}; {machine}; {time.perf_counter() - t_all:.0f} s in all "
           f"({'--small, ' if args.small else ''}{args.epochs} training epochs, {args.tailor_epochs} tailor epochs)."]
    text = "\n".join(md) + "\n"
    (out_dir / "table1.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
