"""One CPU thread for small tensor work (a scoped, restoring switch).

The k-means, kernel k-means, KDE and AUC loops of the NEON evaluation run thousands of
tiny operations (N ≤ a few thousand rows, d ≤ a few hundred features). Multi-threaded BLAS
and OpenMP spend more on synchronising threads than they save on such sizes: the Table I
run on wine took 27 s with 2 threads and 4 s with 1 on a busy 2-core machine. Large work
(deep networks) keeps the caller's thread count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

SMALL = 4_000_000  # elements of the data matrix below which one thread is faster


@contextmanager
def single_thread_if_small(numel: int, limit: int = SMALL) -> Iterator[None]:
    """Set torch's intra-op threads to 1 inside the block when ``numel`` ≤ ``limit``; restore after."""
    old = torch.get_num_threads()
    if numel > limit or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def small_work(fn: Callable[Concatenate[torch.Tensor, P], R]) -> Callable[Concatenate[torch.Tensor, P], R]:
    """Decorator: run ``fn(x, ...)`` on one thread when its first argument ``x`` is small."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, /, *args: P.args, **kwargs: P.kwargs) -> R:
        numel = x.numel() if isinstance(x, torch.Tensor) else SMALL + 1
        with single_thread_if_small(numel):
            return fn(x, *args, **kwargs)

    return wrapper
