"""Speed of one NEON explanation of a deep model, against its forward pass and IG-50.

For a batch of inputs: the forward pass of the same batch (``model(x)``, no gradients),
NEON (forward to the cluster layer + NEON head + LRP backward through the backbone with the
zennit composite, the explainer built once beforehand) and integrated gradients of f_c with
50 steps. Weights are random (speed does not depend on them); the clusters are K feature
vectors of the batch. Prints one table with the ratios measured in the same run.

    python benchmarks/neon_speed.py                               # CPU, ResNet18, batch 32
    python benchmarks/neon_speed.py --device cuda --batch 256     # on a GPU
    python benchmarks/neon_speed.py --arch smallcnn --shape 1,28,28
    python benchmarks/neon_speed.py --write docs/explain.md       # also records the table there
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
from kmtools.io import write_text
from kmtools.models import zoo
from kmtools.models.core import KmModel, Normalize, split

BEGIN, END = "<!-- neon-speed:begin -->", "<!-- neon-speed:end -->"


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
    ap.add_argument("--engine", default="auto", help="LRP engine: auto (the fast one where it covers the network), "
                    "fast or zennit")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    ap.add_argument("--write", default=None, help=f"a Markdown file whose {BEGIN} … {END} block gets this table")
    args = ap.parse_args()

    dev = resolve(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else zoo.default_input_shape(args.arch)
    kw = {"pool": 7} if args.arch == "smallcnn" and shape[-1] == 28 else {}  # the Fashion-MNIST reference layout
    net = zoo.create(args.arch, in_channels=shape[0], **kw).eval()
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
    explainer = DeepNeonExplainer(model, mu, gamma=args.gamma, device=dev, engine=args.engine)
    explainer._register(x)
    t_setup = time.perf_counter() - t_setup

    def explain() -> object:
        return explainer.explain(x, beta=1.0, batch_size=args.batch)

    def ig() -> object:
        return deep_integrated_gradients(model, x, mu, steps=args.ig_steps, batch_size=args.batch)

    t_fwd = timeit(forward, dev, args.reps)
    t_neon = timeit(explain, dev, args.reps)
    t_ig = timeit(ig, dev, max(1, args.reps // 2))
    engine = explainer.engine_used
    explainer.close()
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {threads} threads"
    head = (f"**{args.arch} {shape}, batch {args.batch}, K = {args.k}, {dev.type}** "
            f"({where}, median of {args.reps} runs)")
    lines = [head, "", "| step | seconds | images/s | × forward |", "|---|---|---|---|"]
    rows = (("forward (model(x))", t_fwd), (f"NEON (LRP-γ, {engine} engine)", t_neon),
            (f"IG-{args.ig_steps}", t_ig))
    for name, t in rows:
        lines.append(f"| {name} | {t:.4f} | {args.batch / t:,.0f} | {t / t_fwd:.2f} |")
    target = {"smallcnn": " (issue 18: ≤ 3.2)", "resnet18": " (issue 18: ≤ 4.5)"}.get(args.arch, "")
    lines += ["", f"NEON / forward = {t_neon / t_fwd:.2f}{target}; "
              f"IG-{args.ig_steps} / NEON = {t_ig / t_neon:.1f}; "
              f"explainer set-up (copy, canonizers, tracing, once) {t_setup:.3f} s."]
    print("\n".join(lines))
    if args.write:
        update(Path(args.write), head, lines)


def update(path: Path, head: str, lines: list[str]) -> None:
    """Put ``lines`` into the marked block of ``path``, replacing an earlier table with the same set-up."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        sys.exit(f"{path} has no {BEGIN} … {END} block to replace")
    before, rest = text.split(BEGIN, 1)
    inner, after = rest.split(END, 1)
    key = head.split("** (")[0]
    sections = [sec.strip() for sec in inner.split("\n\n**") if sec.strip()]
    sections = [sec if sec.startswith("**") else "**" + sec for sec in sections]
    sections = [sec for sec in sections if not sec.startswith(key)] + ["\n".join(lines)]
    block = "\n\n".join(sections)
    write_text(path, f"{before}{BEGIN}\n\n{block}\n\n{END}{after}", force=True)
    print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
