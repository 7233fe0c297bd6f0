"""Batched extraction of penultimate features f_p(x) ("Softmax is k-means", Sec. 3).

One pass over the data returns the features, the head's scores and the labels, on CPU or
CUDA, with optional bf16 autocast and channels_last on CUDA, pinned non-blocking
transfers, DataLoader workers, a progress callback and an optional ``.safetensors`` cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from kmtools.device import autocast, retry_oom
from kmtools.errors import ConfigError, DataError
from kmtools.models.core import KmModel

Progress = Callable[[int, int], None]


@dataclass
class Features:
    features: torch.Tensor  # (N, d) float32
    scores: torch.Tensor  # (N, c) head outputs (logits or κ), float32
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predictions(self) -> torch.Tensor:
        return self.scores.argmax(1)


def as_tensors(data: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is an in-memory TensorDataset (or a Subset of one), else None."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    u8 = getattr(data, "u8_tensors", None)  # in-memory uint8 images (kmtools.data.registry)
    if callable(u8):
        x, y = u8()
        return x.float().div_(255.0), y
    if isinstance(data, Subset):
        inner = as_tensors(data.dataset)
        if inner is not None:
            idx = torch.as_tensor(list(data.indices), dtype=torch.long)
            return inner[0][idx], inner[1][idx]
    return None


class _TensorBatches:
    """Batches sliced straight from in-memory tensors (no per-item collate overhead)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None) -> None:
        self.x, self.y, self.bs, self.shuffle, self.g = x, y, batch_size, shuffle, generator

    def __len__(self) -> int:
        return (len(self.y) + self.bs - 1) // self.bs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.g) if self.shuffle else None
        for i in range(0, n, self.bs):
            if order is None:
                yield self.x[i : i + self.bs], self.y[i : i + self.bs]
            else:
                j = order[i : i + self.bs]
                yield self.x[j], self.y[j]


def loader(
    data: Dataset[Any], batch_size: int, device: torch.device, workers: int = 0, shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterable[Any]:
    """Batches of ``(x, y)``: sliced from memory for tensor datasets, else a DataLoader."""
    tensors = as_tensors(data)
    if tensors is not None:
        return _TensorBatches(tensors[0], tensors[1].long(), batch_size, shuffle, generator)
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False, generator=generator,
    )


@torch.no_grad()
def extract(
    model: KmModel,
    data: Dataset[Any],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = False,
    channels_last: bool = False,
    workers: int = 0,
    progress: Progress | None = None,
    cache: str | Path | None = None,
) -> Features:
    """Features, scores and labels of every sample of ``data`` (model in eval mode)."""
    if cache is not None and Path(cache).is_file():
        return _load_cache(Path(cache), len(data))  # type: ignore[arg-type]
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    total = len(data)  # type: ignore[arg-type]
    if total == 0:
        raise DataError("the dataset is empty: nothing to extract")
    feats, scores, labels = [], [], []
    done = 0
    chunk = batch_size  # halved for the rest of the pass after a GPU out-of-memory error
    for x, y in loader(data, batch_size, device, workers):
        x = x.to(device, non_blocking=True)
        if channels_last and device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        (f, s), chunk = retry_oom(partial(_forward, model, x, device=device, amp=amp), chunk)
        feats.append(f)
        scores.append(s)
        labels.append(torch.as_tensor(y).long())
        done += len(y)
        if progress:
            progress(done, total)
    out = Features(torch.cat(feats), torch.cat(scores), torch.cat(labels))
    if not bool(torch.isfinite(out.features).all()):
        raise DataError("features contain NaN/Inf: check the input data and normalisation (--mean/--std)")
    if cache is not None:
        _save_cache(Path(cache), out)
    return out


def _forward(model: KmModel, x: torch.Tensor, chunk: int, device: torch.device, amp: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and head scores of ``x`` in pieces of ``chunk`` rows (float32, on the CPU).

    Eval-mode features do not depend on how a batch is split, so a smaller ``chunk`` after
    an out-of-memory error gives the same result (up to float rounding)."""
    fs, ss = [], []
    for i in range(0, len(x), chunk):
        with autocast(device, amp):
            f = model.features(x[i : i + chunk])
        f = f.float()
        s = model.head(f)  # the head in float32 even under bf16 autocast (κ underflows in bf16)
        fs.append(f.cpu())
        ss.append(s.float().cpu())
    return torch.cat(fs), torch.cat(ss)


def _save_cache(path: Path, feats: Features) -> None:
    from safetensors.torch import save_file

    from kmtools.io import write_with

    tensors = {"features": feats.features, "scores": feats.scores, "labels": feats.labels}
    write_with(path, lambda tmp: save_file(tensors, str(tmp)), force=True)


def _load_cache(path: Path, n: int) -> Features:
    from kmtools.models.checkpoint import read_safetensors

    t, _ = read_safetensors(path)
    if set(t) != {"features", "scores", "labels"} or len(t["labels"]) != n:
        raise DataError(f"feature cache {path} does not match this data ({n} samples): delete it")
    return Features(t["features"], t["scores"], t["labels"])
