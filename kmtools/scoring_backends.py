"""Scoring backends: the same class log-confidences, computed by eager torch, channels-last,
``torch.compile`` or onnxruntime.

The one-pixel attack spends nearly all its time scoring candidate images
(:func:`kmtools.models.scoring.class_log_confidences` on batches of thousands). This module
builds a callable ``scores = scorer(batch)`` (log-confidences (N, classes), float32) for a
backend:

* ``eager``: ``class_log_confidences`` under ``torch.inference_mode`` (bf16 autocast on
  CUDA when ``amp``);
* ``channels-last``: the same on a channels-last copy of the model (what CPU and GPU
  convolution kernels often prefer);
* ``compile``: ``torch.compile`` of that function (inductor); its cold start (tens of seconds
  on a small CPU) is paid on the first call of each batch size;
* ``onnxruntime``: the function exported to ONNX in memory (TorchScript exporter, dynamic
  batch axis) and run by an onnxruntime CPU session with torch's thread count;
* ``auto`` (:func:`resolve_backend`): on CUDA ``eager``. On the CPU ``onnxruntime`` when it
  is installed and the run's budget is at least :data:`ORT_MIN_CANDIDATES` candidate images
  (its forward measured 3.3–5.4× eager on the 2-core test CPU, but its first export in a
  process costs about 0.5 s, importing the exporter), else ``channels-last`` for images
  (1.4–1.8× eager, no set-up) and ``eager`` for other inputs. Figures: docs/speed.md.

All backends compute the same function in float32 (bf16 only for eager on CUDA with
``amp``); they differ by float rounding, so a caller that must be exact (the attack's
verdicts) judges with eager float32 (see :func:`kmtools.attacks.onepixel.onepixel`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import class_log_confidences

__all__ = ["BACKENDS", "ORT_MIN_CANDIDATES", "Scorer", "build_scorer", "default_chunk", "onnxruntime_available",
           "resolve_backend"]

BACKENDS = ("auto", "eager", "channels-last", "compile", "onnxruntime")
ORT_MIN_CANDIDATES = 50_000  # below it onnxruntime's ~0.5 s cold start outweighs its gain (docs/speed.md)
CPU_CHUNK = 512  # eager/channels-last on the CPU: 400–800 candidates per forward score fastest per image


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, *, budget: int | None = None, images: bool = True) -> str:
    """The backend ``auto`` stands for on ``device`` (others are checked and returned).

    ``budget``: the most candidate images the run may score (None: large); ``images``: inputs
    are (N, C, H, W). The rule is fixed and measured (module docstring).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type != "cpu":
            return "eager"
        if onnxruntime_available() and (budget is None or budget >= ORT_MIN_CANDIDATES):
            return "onnxruntime"
        return "channels-last" if images else "eager"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ConfigError("--backend onnxruntime scores on the CPU only: use --device cpu or --backend eager")
        if not onnxruntime_available():
            raise ConfigError("--backend onnxruntime needs onnxruntime: pip install 'kmtools[onnx]'")
    return backend


def default_chunk(backend: str, device: torch.device, popsize: int, batch_images: int) -> int:
    """Candidates per forward pass: every candidate of the batch's images in one pass, except for
    eager/channels-last on the CPU, where smaller passes score faster per image (measured: the
    Fashion-MNIST SmallCNN at 1,995 scores 1,614 img/s eager against 2,148 at 400 and 2,528 at
    100; the digits one 26k at 2,040 against 39k at 480), so whole populations up to
    :data:`CPU_CHUNK` candidates."""
    if device.type == "cpu" and backend in ("eager", "channels-last"):
        return max(1, min(batch_images, CPU_CHUNK // popsize)) * popsize
    return batch_images * popsize


class _LogConf(nn.Module):
    """``class_log_confidences`` as a module (what is compiled or exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_log_confidences(self.model, x).float()


@dataclass
class Scorer:
    """``scorer(batch) -> (N, classes)`` float32 log-confidences on the scorer's device.

    ``backend`` is the resolved name; ``setup_seconds`` the export/compile time paid when built
    (compile also pays per new batch size at its first call).
    """

    backend: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    amp: bool = False
    setup_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _onnx_session(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    buf = io.BytesIO()
    wrapper = _LogConf(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            wrapper, (example[:2].cpu().float(),), buf,  # type: ignore[arg-type]  # a file object works
            input_names=["x"], output_names=["scores"],
            dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}}, opset_version=17, dynamo=False,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(sess.run(None, {"x": arr})[0])

    return run


def build_scorer(model: nn.Module, backend: str = "auto", *, example: torch.Tensor | None = None,
                 device: torch.device | str | None = None, amp: bool = False) -> Scorer:
    """A :class:`Scorer` computing ``class_log_confidences(model, batch)`` with ``backend``.

    ``example``: one input batch (N, ...) (needed by ``onnxruntime`` for the export, N ≥ 1);
    ``device``: where batches live (default the model's); ``amp``: bf16 autocast for eager on
    CUDA. The model is used in eval mode and not modified (channels-last works on a copy).
    """
    import time

    from kmtools.models.scoring import model_device

    dev = torch.device(device) if device is not None else model_device(model)
    name = resolve_backend(backend, dev)
    t0 = time.perf_counter()
    model.eval()
    fn: Callable[[torch.Tensor], torch.Tensor]
    if name == "eager":
        def fn(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return class_log_confidences(model, x, amp=amp).float()
    elif name == "channels-last":
        import copy

        cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()

        def fn(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                xc = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                return class_log_confidences(cl, xc, amp=amp).float()
    elif name == "compile":
        compiled = torch.compile(_LogConf(model).eval(), dynamic=False)

        def fn(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # inductor does not trace inference-mode tensors created outside it
                return compiled(x)  # type: ignore[no-any-return]
    else:
        if example is None or example.shape[0] < 1:
            raise ConfigError("the onnxruntime scorer needs an example batch to export the model")
        fn = _onnx_session(model, example)
    return Scorer(name, fn, dev, amp=amp and dev.type == "cuda", setup_seconds=time.perf_counter() - t0,
                  info={"threads": torch.get_num_threads()})
