"""The one device rule: ``resolve("auto"|"cpu"|"cuda"|"cuda:N")``."""

from __future__ import annotations

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
