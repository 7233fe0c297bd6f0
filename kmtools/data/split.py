"""A stratified, seeded hold-out split of a training set.

``tailor --val-split`` and ``benchmarks/reference_models.py`` both call
:func:`holdout_split` with the same arguments, so a reference model is trained on exactly
the part that tailoring does not use for validation: its validation data is truly held out.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from kmtools.errors import ConfigError, DataError

#: tailor's defaults (issue 14): 10% of the training data, at most 5,000 items, seed 0.
DEFAULT_FRACTION = 0.1
DEFAULT_MAX_ITEMS = 5000
DEFAULT_SEED = 0


def holdout_split(
    labels: torch.Tensor,
    fraction: float = DEFAULT_FRACTION,
    max_items: int = DEFAULT_MAX_ITEMS,
    seed: int = DEFAULT_SEED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a stratified random split, both sorted.

    Each class gives ``round(n_k * m / n)`` items to the validation part, where
    ``m = min(round(fraction * n), max_items)``, chosen by a permutation seeded with ``seed``
    (one generator, classes in index order), so the split depends only on the labels and
    the three arguments.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--val-split must be a fraction between 0 and 1, got {fraction}")
    y = torch.as_tensor(labels).long().flatten()
    n = len(y)
    m = min(round(fraction * n), max_items)
    if n < 2 or m < 1:
        raise DataError(f"cannot hold out a validation part of {n} items: pass --val-data")
    g = torch.Generator().manual_seed(seed)
    val: list[torch.Tensor] = []
    for k in torch.unique(y).tolist():
        idx = torch.nonzero(y == k).flatten()
        take = min(round(len(idx) * m / n), len(idx) - 1)
        perm = idx[torch.randperm(len(idx), generator=g)]
        val.append(perm[:take])
    v = torch.sort(torch.cat(val)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[v] = False
    return torch.nonzero(mask).flatten(), v


def indices_digest(idx: torch.Tensor) -> str:
    """sha256 of an index list (to record which items a split held out)."""
    return hashlib.sha256(torch.as_tensor(idx).long().numpy().tobytes()).hexdigest()


def labels_of(dataset: Any) -> torch.Tensor:
    """All labels of a dataset, without decoding inputs where the dataset allows it."""
    from torch.utils.data import Subset

    from kmtools.data.registry import _labels
    from kmtools.features import as_tensors

    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    y = _labels(dataset)
    if y is None:
        t = as_tensors(dataset)
        y = t[1] if t is not None else torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return torch.as_tensor(y).long()
