"""The one device rule: ``resolve("auto"|"cpu"|"cuda"|"cuda:N")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from kmtools.errors import DeviceError


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device string into a ``torch.device``.

    ``auto`` picks CUDA when present, else CPU. An explicit ``cuda`` on a machine without
    one is an error (never a silent fallback).
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available here: use --device cpu "
                "(or --device auto to fall back)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {spec!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type not in ("cpu", "mps"):
        raise DeviceError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a disabled context elsewhere."""
    on = bool(enabled and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on a CUDA ``device`` (for timing); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or MPS/accelerator) out-of-memory error."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def retry_oom(
    fn: Callable[[int], T],
    batch_size: int,
    *,
    min_batch_size: int = 1,
    log: Callable[[str], None] | None = None,
) -> tuple[T, int]:
    """``fn(batch_size)``; on GPU out-of-memory, free the cache, halve the batch and retry.

    Returns ``(result, batch size that worked)`` so callers keep the smaller size for the
    rest of the run. Use it only where the result does not depend on the batch size
    (inference, feature extraction); training loops should fail with a message naming
    ``--batch-size`` instead. When even ``min_batch_size`` does not fit, raises
    :class:`DeviceError` naming ``--batch-size``.
    """
    bs = max(int(batch_size), 1)
    while True:
        failed = False
        try:
            return fn(bs), bs
        except Exception as exc:
            if not is_oom(exc):
                raise
            failed = True  # leave the except block so the traceback's tensors can be freed
        if failed:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if bs <= min_batch_size:
                raise DeviceError(
                    f"out of GPU memory even with a batch of {bs}: use --device cpu, a smaller model "
                    "or smaller inputs"
                )
            new = max(min_batch_size, bs // 2)
            if log:
                log(f"out of GPU memory at batch size {bs}: retrying with {new} (or pass --batch-size {new})")
            bs = new
