"""Candidates of the one-pixel attack: the counter-based random numbers that draw them and
the perturbed images they stand for (see :mod:`kmtools.attacks.onepixel`).

Randomness is a hash of (seed, image id, generation, stream, element), so an image's search
does not depend on the batch it shares. A candidate is ``pixels`` tuples (row, column,
colour); :func:`_build` applies it to its image by gather + scatter on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_M32 = 0xFFFFFFFF
_VERDICT_BATCH = 32
"""Images per float32 verdict forward pass (clean images, final adversarial images)."""


# ------------------------------------------------------------------ counter-based RNG
def _hash(v: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in [0, 2^32)."""
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & _M32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & _M32
    return v ^ (v >> 16)


def _uniform(key: torch.Tensor, gen: torch.Tensor | int, stream: int, shape: Sequence[int]) -> torch.Tensor:
    """U[0, 1) float32 of shape (S, *shape), a function of (key[s], gen[s], stream, element)."""
    s = key.shape[0]
    dev = key.device
    g = gen if isinstance(gen, torch.Tensor) else torch.full((s,), int(gen), dtype=torch.long, device=dev)
    base = _hash(key ^ _hash((g * 8 + stream) & _M32))  # (S,)
    n = math.prod(shape)
    ctr = _hash(torch.arange(n, dtype=torch.long, device=dev))
    h = _hash(base[:, None] ^ ctr[None, :])
    return ((h >> 8).float() * (1.0 / (1 << 24))).view(s, *shape)


def _image_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    k = _hash(torch.full_like(index, int(seed) & _M32))
    return _hash(k ^ _hash(index & _M32))


def _distinct_parents(key: torch.Tensor, gen: torch.Tensor, p: int) -> tuple[torch.Tensor, ...]:
    """Three distinct indices in [0, p) other than the candidate's own, per (slot, candidate)."""
    u = _uniform(key, gen, 1, (p, 3))
    s = key.shape[0]
    own = torch.arange(p, device=key.device).expand(s, p)
    a = (u[..., 0] * (p - 1)).long().clamp_max(p - 2)
    a = a + (a >= own).long()
    lo, hi = torch.minimum(own, a), torch.maximum(own, a)
    b = (u[..., 1] * (p - 2)).long().clamp_max(p - 3)
    b = b + (b >= lo).long()
    b = b + (b >= hi).long()
    ex = torch.sort(torch.stack([own, a, b], -1), dim=-1).values
    c = (u[..., 2] * (p - 3)).long().clamp_max(p - 4)
    for j in range(3):
        c = c + (c >= ex[..., j]).long()
    return a, b, c


# ------------------------------------------------------------------ candidate images
def _decode(cand: torch.Tensor, pixels: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, pixels*(2+C)) parameters -> flat positions (m, pixels) and colours (m, pixels, C).

    When two pixels of a candidate share a position the later one wins (its colour is
    copied to the earlier one, so the scatter is deterministic).
    """
    m = cand.shape[0]
    c = cand.view(m, pixels, -1)
    row = c[..., 0].floor().clamp(0, h - 1).long()
    col = c[..., 1].floor().clamp(0, w - 1).long()
    lin = row * w + col
    vals = c[..., 2:].clamp(0.0, 1.0)
    if pixels > 1:
        eq = lin[:, :, None] == lin[:, None, :]
        idx = torch.arange(pixels, device=cand.device)
        last = (eq.long() * idx).argmax(-1)
        vals = vals.gather(1, last[..., None].expand(-1, -1, vals.shape[-1]))
    return lin, vals


def _build(
    base: torch.Tensor, slot: torch.Tensor, cand: torch.Tensor, pixels: int, nhwc: bool
) -> torch.Tensor:
    """Perturbed images (m, C, H, W): image ``base[slot[j]]`` with candidate ``cand[j]`` applied.

    ``base`` is (S, H, W, C) when ``nhwc`` (the result is then a channels-last view),
    else (S, C, H, W).
    """
    m = cand.shape[0]
    if nhwc:
        _, h, w, ch = base.shape
        lin, vals = _decode(cand, pixels, h, w)
        img = base[slot].view(m, h * w, ch)
        img.scatter_(1, lin[..., None].expand(m, pixels, ch), vals.to(img.dtype))
        return img.view(m, h, w, ch).permute(0, 3, 1, 2)
    _, ch, h, w = base.shape
    lin, vals = _decode(cand, pixels, h, w)
    img = base[slot].view(m, ch, h * w)
    img.scatter_(2, lin[:, None, :].expand(m, ch, pixels), vals.transpose(1, 2).to(img.dtype))
    return img.view(m, ch, h, w)
