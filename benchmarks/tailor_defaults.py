"""How the TailorNetwork defaults were chosen (docs/tailor.md, "Measured").

Tailors the Fashion-MNIST reference on a 10,000-image subset of its training part for 3 epochs,
validates on 2,000 of its 5,000 held-out images, and prints, per epoch, validation accuracy /
clean training accuracy / validation scatter-over-gap², for each configuration given as
``TailorConfig`` keyword arguments (an empty string is the defaults)::

    python benchmarks/tailor_defaults.py "" "centroids='means'" "scatter_weight=1.0" "augment='auto'"
"""

from __future__ import annotations

import ast
import sys
import time

import torch
from torch.utils.data import Subset

from kmtools.data import load_dataset
from kmtools.data.split import holdout_split, labels_of
from kmtools.models import load_model
from kmtools.tailor import TailorConfig, tailor


def parse(spec: str) -> dict[str, object]:
    """``"lr=0.01, centroids='means'"`` → ``{"lr": 0.01, "centroids": "means"}`` (literals only)."""
    call = ast.parse(f"f({spec})", mode="eval").body
    assert isinstance(call, ast.Call)
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}


def main() -> None:
    torch.set_num_threads(2)
    data = load_dataset("fashion-mnist", split="train").dataset
    train_idx, val_idx = holdout_split(labels_of(data))
    g = torch.Generator().manual_seed(0)
    train = Subset(data, train_idx[torch.randperm(len(train_idx), generator=g)[:10000]].tolist())
    val = Subset(data, val_idx[torch.randperm(len(val_idx), generator=g)[:2000]].tolist())
    for spec in sys.argv[1:] or [""]:
        model = load_model("benchmarks/reference/fmnist.safetensors")
        t0 = time.time()
        cfg = TailorConfig(**{"epochs": 3, "amp": False, "channels_last": False, "max_drop": 100.0,
                              **parse(spec)})  # type: ignore[arg-type]
        res = tailor(model, train, cfg, val_data=val, dataset="fashion-mnist")
        rows = " ".join(f"e{h.epoch}:{h.val_accuracy:.4f}/{h.train_accuracy:.4f}/{h.val_scatter_over_gap2:.3f}"
                        for h in res.history)
        print(f"{spec or 'defaults'} | {rows} | {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
