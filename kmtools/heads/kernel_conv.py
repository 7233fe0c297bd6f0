"""Kernel-prototype convolution (prototype-layers paper, Sec. 6.2, Eq. 21).

A convolution kernel ``k`` (C × kh × kw) is read as a *prototype* of image patches, and the
response at every position is the squared Euclidean distance between the patch ``x̃_ij``
and the kernel ``k̃`` (both flattened to ``C·kh·kw`` vectors):

``x ⊛ k |_ij = ‖x̃_ij‖² - 2 x̃_ijᵀ k̃ + ‖k̃‖²``,   i.e.   ``x ⊛ k = x² ∗ 1 - 2 x ∗ k ⊕ ‖k‖²``

(``∗`` the usual CNN convolution/cross-correlation, Sec. 5, Eq. 16-17; ``1`` a kernel of ones;
``x²`` component-wise). It is computed with two convolutions: ``x²`` summed over channels
and convolved with a ``1 × kh × kw`` ones kernel, and the ordinary convolution with the
kernel-prototypes; zero padding enters both, so padded positions count as zeros exactly as
in an explicit ``unfold``. The output is the *dissimilarity stack* (N, P, H', W').

Options follow Sec. 6.2, 7.5 and 8:

* ``bias=True``: a learnable ``r_k²`` per prototype and output ``r_k² - x ⊛ k`` (> 0 inside
  the n-ball ``B_{r_k}(k̃)``);
* ``activation``: ``None``; ``"relu"`` (positive inside the ball, 0 outside: needs bias);
  ``"sigmoid"`` of ``(r² - x ⊛ k)/T`` (> 0.5 inside the ball: needs bias, "cluster
  possibilities"); ``"softmax"`` over the prototypes of ``-(x ⊛ k)/T`` (or of
  ``(r² - x ⊛ k)/T`` with bias: "cluster probabilities" per pixel);
* ``hard=True`` (Sec. 8, "hard assignment derivative"): the forward pass emits one-hot
  (softmax) or Heaviside (sigmoid) maps, the backward pass uses the soft activation's
  gradient (straight-through).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from kmtools.errors import ConfigError

ACTIVATIONS = (None, "relu", "sigmoid", "softmax")


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return hard.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass (exactly: no ``hard + soft - soft`` rounding), the
    gradient of ``soft`` in the backward pass (Sec. 8, "hard assignment derivative")."""
    if not (torch.is_grad_enabled() and soft.requires_grad):
        return hard
    out: torch.Tensor = _StraightThrough.apply(hard, soft)
    return out


class KernelPrototypeConv2d(nn.Module):
    """Distances of every patch to ``num_prototypes`` kernel-prototypes, as convolutions.

    Parameters mirror ``nn.Conv2d``: ``in_channels``, ``num_prototypes`` (= output
    channels), ``kernel_size``, ``stride``, ``padding`` (zeros), ``dilation``. ``weight``
    has shape (P, C, kh, kw) like a conv weight. See the module docstring for ``bias``,
    ``activation``, ``temperature`` and ``hard``.
    """

    ones: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        num_prototypes: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        activation: str | None = None,
        temperature: float = 1.0,
        hard: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}: use none, relu, sigmoid or softmax")
        if activation in ("relu", "sigmoid") and not bias:
            raise ConfigError(f"activation {activation!r} thresholds r² - distance: it needs bias=True")
        if hard and activation not in ("sigmoid", "softmax"):
            raise ConfigError("hard assignments need activation 'softmax' or 'sigmoid'")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.in_channels = int(in_channels)
        self.num_prototypes = int(num_prototypes)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.activation = activation
        self.temperature = float(temperature)
        self.hard = bool(hard)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.num_prototypes, self.in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(self.num_prototypes)) if bias else None
        self.register_buffer("ones", torch.ones(1, 1, kh, kw), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Prototypes uniform in [0, 1) (the range of image inputs); radii² = the expected
        squared distance of a uniform patch to a prototype, ``C·kh·kw/6``."""
        nn.init.uniform_(self.weight, 0.0, 1.0)
        if self.bias is not None:
            nn.init.constant_(self.bias, self.weight[0].numel() / 6.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.num_prototypes}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, activation={self.activation}, hard={self.hard}"
        )

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "num_prototypes": self.num_prototypes,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "bias": self.bias is not None,
            "activation": self.activation,
            "temperature": self.temperature,
            "hard": self.hard,
        }

    def dissimilarity(self, x: torch.Tensor) -> torch.Tensor:
        """The dissimilarity stack ``x ⊛ k`` (N, P, H', W') of Eq. (21), clamped at 0."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        w = self.weight.to(x.dtype)
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        sq = F.conv2d((x * x).sum(dim=1, keepdim=True), self.ones.to(x.dtype), **kw)  # x² ∗ 1
        cross = F.conv2d(x, w, **kw)  # x ∗ k
        knorm = (w * w).flatten(1).sum(dim=1).view(1, -1, 1, 1)  # ‖k‖²
        return (sq - 2.0 * cross + knorm).clamp_min(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dissimilarity(x)
        # r² - x ⊛ k with a bias (> 0 inside the n-ball), else -x ⊛ k
        s = self.bias.to(d.dtype).view(1, -1, 1, 1) - d if self.bias is not None else -d
        if self.activation is None:
            return s if self.bias is not None else d
        if self.activation == "relu":
            return F.relu(s)
        if self.activation == "sigmoid":
            soft = torch.sigmoid(s / self.temperature)
            if self.hard:
                return straight_through((s > 0).to(soft.dtype), soft)
            return soft
        soft = torch.softmax(s / self.temperature, dim=1)
        if self.hard:
            onehot = F.one_hot(s.argmax(dim=1), self.num_prototypes).permute(0, 3, 1, 2).to(soft.dtype)
            return straight_through(onehot, soft)
        return soft

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial output size for an ``h × w`` input (as ``nn.Conv2d``)."""
        out = []
        for size, k, s, p, dl in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation, strict=True
        ):
            out.append(math.floor((size + 2 * p - dl * (k - 1) - 1) / s + 1))
        return out[0], out[1]


def unfold_dissimilarity(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Reference: ``‖x̃_ij - k̃‖²`` from explicit patches (``F.unfold``), (N, P, H', W').

    Memory N·C·kh·kw·L·P: for tests and small inputs only.
    """
    n, _, h, w = x.shape
    p = weight.shape[0]
    kh, kw = weight.shape[2:]
    patches = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, D, L)
    flat = weight.reshape(p, -1)  # (P, D)
    diff = patches.unsqueeze(1) - flat.view(1, p, -1, 1)  # (N, P, D, L)
    d = diff.pow(2).sum(dim=2)  # (N, P, L)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return d.view(n, p, ho, wo)
