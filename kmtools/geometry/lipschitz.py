"""Lipschitz moduli L_p of x ↦ f_p(x) (normalisation + backbone) for Theorem 2's bounds.

- :func:`lipschitz_upper_bound` (``--lipschitz product``/``auto``): composed over the
  ``torch.fx`` graph of the backbone, node by node: L(op(a)) = c_op · L(a) for layers and
  activations, L(a + b) = L(a) + L(b) at residual additions, L(cat(a, b)) = √(L(a)² + L(b)²),
  constants 0. Its ``guaranteed`` flag is true only when every factor is a proven upper
  bound: exact SVD for ``nn.Linear``, eval-mode BatchNorm scales, the activations' maximal
  slopes, √(windows per input) for max-pooling, 1/min(std) for the normalisation. A
  convolution, average pooling or mean is bounded by power iteration on its input shape,
  which approaches σ from below: the product is then an estimate (usually tight per
  layer), not a proof, and ``guaranteed`` is false.
- :func:`lipschitz_local` (``--lipschitz local``): the largest Jacobian spectral norm along
  x → x_adv, an empirical per-input estimate; never guaranteed.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as Fn
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import eval_mode


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast over a batch like ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class LipschitzEstimate:
    """A Lipschitz modulus L_p of x ↦ f_p(x) and how it was obtained.

    ``value`` is a float (global) or an (N,) tensor (per input, ``method="local"``);
    ``guaranteed`` says whether it is meant as an upper bound; ``layers`` lists
    (graph node, factor) for the product bound.
    """

    value: float | torch.Tensor
    method: str
    guaranteed: bool
    assumptions: list[str] = field(default_factory=list)
    layers: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        val: Any = float(v) if not isinstance(v, torch.Tensor) else {
            "median": float(v.float().median()), "max": float(v.float().max()), "min": float(v.float().min())
        }
        return {
            "value": val,
            "method": self.method,
            "guaranteed": self.guaranteed,
            "assumptions": list(self.assumptions),
            "layers": [{"node": n, "factor": f} for n, f in self.layers],
        }


def _op_norm(
    fn: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], iters: int, tol: float
) -> float:
    """Largest singular value of the linear map ``fn`` on inputs of ``shape`` (power iteration)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    v /= v.norm()
    sigma, prev = 0.0, -1.0
    for _ in range(iters):
        with torch.enable_grad():
            vg = v.clone().requires_grad_(True)
            u = fn(vg)
            (w,) = torch.autograd.grad(u, vg, u)
        sigma = float(u.detach().norm())
        nw = w.norm()
        if float(nw) == 0.0:
            return 0.0
        v = (w / nw).detach()
        if abs(sigma - prev) <= tol * max(sigma, 1e-300):
            break
        prev = sigma
    with torch.no_grad():
        return max(sigma, float(fn(v).norm()))


_ACT_CONST: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Tanh: 1.0, nn.Sigmoid: 0.25, nn.Softplus: 1.0, nn.Hardtanh: 1.0,
    nn.GELU: 1.13, nn.SiLU: 1.1, nn.Mish: 1.1, nn.Hardswish: 1.5, nn.Hardsigmoid: 1.0 / 6.0,
    nn.Identity: 1.0, nn.Dropout: 1.0, nn.Dropout1d: 1.0, nn.Dropout2d: 1.0, nn.Dropout3d: 1.0,
    nn.AlphaDropout: 1.0, nn.Flatten: 1.0, nn.Unflatten: 1.0, nn.Softsign: 1.0, nn.Tanhshrink: 1.0,
}
_FN_CONST: dict[Any, float] = {
    Fn.relu: 1.0, torch.relu: 1.0, Fn.relu6: 1.0, torch.tanh: 1.0, Fn.tanh: 1.0, torch.sigmoid: 0.25,
    Fn.sigmoid: 0.25, Fn.softplus: 1.0, Fn.hardtanh: 1.0, Fn.gelu: 1.13, Fn.silu: 1.1, Fn.dropout: 1.0,
    torch.flatten: 1.0, torch.reshape: 1.0, torch.squeeze: 1.0, torch.unsqueeze: 1.0, torch.transpose: 1.0,
    torch.permute: 1.0, operator.neg: 1.0, operator.pos: 1.0,
}
_METHOD_CONST: dict[str, float] = {
    "relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "flatten": 1.0, "view": 1.0, "reshape": 1.0, "contiguous": 1.0,
    "permute": 1.0, "transpose": 1.0, "squeeze": 1.0, "unsqueeze": 1.0, "clone": 1.0, "neg": 1.0,
}
_LINEAR_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
_LINEAR_FNS = (
    Fn.avg_pool1d, Fn.avg_pool2d, Fn.avg_pool3d, Fn.adaptive_avg_pool1d, Fn.adaptive_avg_pool2d,
    Fn.adaptive_avg_pool3d, torch.mean,
)


_ADD_OPS = (
    operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
    "add", "sub", "add_", "sub_",
)


def _bind(fn: Any, rest: Sequence[Any], kw: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> fn(v, *rest, **kw)``: the linear map of one traced node."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = fn(v, *rest, **kw)
        return out

    return apply


def _tup(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _maxpool_const(spatial: Sequence[int], kernel: Any, stride: Any, dilation: Any = 1) -> float:
    """√(max number of pooling windows an input element belongs to) (ℓ₂ Lipschitz bound)."""
    nd = len(spatial)
    k, s = _tup(kernel, nd), _tup(stride if stride else kernel, nd)
    dl = _tup(dilation, nd)
    count = 1
    for kk, ss, dd in zip(k, s, dl, strict=True):
        count *= min(kk, math.ceil(((kk - 1) * dd + 1) / ss))
    return math.sqrt(count)

def _module_const(m: nn.Module, in_shape: Sequence[int], iters: int, tol: float) -> tuple[float, bool]:
    """(Lipschitz constant of layer ``m`` on inputs of ``in_shape``, whether it is an
    estimate: power iteration, which approaches σ from below)."""
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(m.weight.detach().double().cpu(), ord=2)), False
    if isinstance(m, _LINEAR_MODULES):
        mm = copy.deepcopy(m).double().cpu().eval()
        zero = mm(torch.zeros(tuple(in_shape), dtype=torch.float64)).detach()
        return _op_norm(lambda v: mm(v) - zero, in_shape, iters, tol), True
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_var is None:
            raise ConfigError(f"{type(m).__name__} without running statistics is not Lipschitz per input")
        scale = 1.0 / torch.sqrt(m.running_var.detach().double() + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().double().abs()
        return float(scale.max()), False
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return _maxpool_const(in_shape[2:], m.kernel_size, m.stride, m.dilation), False
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        out = _tup(m.output_size, len(in_shape) - 2)
        pairs = zip(in_shape[2:], out, strict=True)
        return math.sqrt(math.prod(1 if (o is None or i % o == 0) else 2 for i, o in pairs)), False
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(float(m.negative_slope))), False
    if isinstance(m, nn.ELU):
        return max(1.0, float(m.alpha)), False
    if isinstance(m, nn.PReLU):
        return max(1.0, float(m.weight.detach().abs().max())), False
    for cls, c in _ACT_CONST.items():
        if type(m) is cls:
            return c, False
    raise ConfigError(
        f"cannot bound the Lipschitz modulus of a {type(m).__name__} layer: use --lipschitz local "
        "(an empirical estimate) or give a number"
    )


def _unknown(what: str) -> ConfigError:
    return ConfigError(
        f"cannot bound the Lipschitz modulus of {what}: use --lipschitz local (an empirical estimate) "
        "or give a number"
    )


class _Graph:
    """The moduli of the nodes of a traced backbone, composed node by node (input node: 1)."""

    def __init__(self, gm: torch.fx.GraphModule, iters: int, tol: float) -> None:
        self.gm, self.iters, self.tol = gm, iters, tol
        self.L: dict[Any, float] = {}
        self.factors: list[tuple[str, float]] = []
        self.estimated: list[str] = []  # nodes whose constant came from power iteration

    def lip(self, a: Any) -> float:
        if isinstance(a, torch.fx.Node):
            return self.L.get(a, 0.0)
        if isinstance(a, (list, tuple)):
            return max((self.lip(b) for b in a), default=0.0)
        return 0.0

    @staticmethod
    def shape_of(a: Any) -> tuple[int, ...]:
        meta = a.meta.get("tensor_meta") if isinstance(a, torch.fx.Node) else None
        if meta is None or not hasattr(meta, "shape"):
            raise ConfigError(f"no shape recorded for {a}")
        return tuple(int(s) for s in meta.shape)

    def output(self) -> float:
        """L of the graph's output: every node composed in order."""
        first = True
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.L[node] = 1.0 if first else 0.0
                first = False
            elif node.op == "get_attr":
                self.L[node] = 0.0
            elif node.op == "output":
                return self.lip(node.args[0])
            else:
                self.L[node] = self._node(node)
        raise ConfigError("the traced backbone has no output")

    def _scaled(self, node: Any, c: float, src: float, estimated: bool = False) -> float:
        """c · L(src), recording the factor (and whether it is an estimate)."""
        self.factors.append((node.name, float(c)))
        if estimated:
            self.estimated.append(node.name)
        return c * src

    def _node(self, node: Any) -> float:
        op, tgt, args = node.op, node.target, node.args
        src = self.lip(args[0]) if args else 0.0
        if op == "call_module":
            c, est = _module_const(self.gm.get_submodule(str(tgt)), self.shape_of(args[0]), self.iters, self.tol)
            return self._scaled(node, c, src, est)
        if tgt in _ADD_OPS:
            return sum(self.lip(a) for a in args[:2])
        if tgt in (operator.mul, operator.imul, torch.mul, "mul", "mul_"):
            a, b = args[0], args[1]
            if isinstance(b, (int, float)):
                return abs(float(b)) * self.lip(a)
            if isinstance(a, (int, float)):
                return abs(float(a)) * self.lip(b)
            if self.lip(a) == 0.0 and self.lip(b) == 0.0:
                return 0.0
            raise _unknown(f"a product of tensors ({node.name})")
        if tgt in (operator.truediv, torch.div, "div") and isinstance(args[1], (int, float)):
            return self.lip(args[0]) / abs(float(args[1]))
        if tgt in _FN_CONST or (op == "call_method" and tgt in _METHOD_CONST):
            k = _FN_CONST.get(tgt) if op == "call_function" else _METHOD_CONST[str(tgt)]
            return self._scaled(node, float(k or 0.0), src)
        if tgt is Fn.leaky_relu:
            slope = args[1] if len(args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return max(1.0, abs(float(slope))) * src
        if tgt in (Fn.max_pool1d, Fn.max_pool2d, Fn.max_pool3d):
            kw = dict(node.kwargs)
            kernel = args[1] if len(args) > 1 else kw.get("kernel_size")
            stride = args[2] if len(args) > 2 else kw.get("stride")
            dil = args[4] if len(args) > 4 else kw.get("dilation", 1)
            return _maxpool_const(self.shape_of(args[0])[2:], kernel, stride, dil) * src
        if tgt in _LINEAR_FNS or (op == "call_method" and tgt == "mean"):
            if any(isinstance(a, torch.fx.Node) for a in list(args[1:]) + list(node.kwargs.values())):
                raise _unknown(f"{node.name} (arguments computed in the graph)")
            fn = getattr(torch.Tensor, "mean") if op == "call_method" else tgt  # noqa: B009
            c = _op_norm(_bind(fn, args[1:], dict(node.kwargs)), self.shape_of(args[0]), self.iters, self.tol)
            return self._scaled(node, c, src, estimated=True)
        if tgt is torch.cat:
            return math.sqrt(sum(self.lip(a) ** 2 for a in args[0]))
        if tgt is operator.getitem:
            return src  # slicing a tensor is 1-Lipschitz; indexing a size tuple gives L = 0
        if tgt is getattr or (op == "call_method" and tgt in ("size", "dim")):
            return 0.0  # shapes and attributes are constants
        raise _unknown(f"the operation {tgt!r} ({node.name})")


def _trace(backbone: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """The backbone traced by ``torch.fx`` with the shapes of ``x`` recorded."""
    from torch.fx.passes.shape_prop import ShapeProp

    bb = copy.deepcopy(backbone).cpu().float().eval()
    if not list(bb.children()):  # a single layer: trace it as a module call, not its functional body
        bb = nn.Sequential(bb)
    try:
        gm = torch.fx.symbolic_trace(bb)
        ShapeProp(gm).propagate(x)
    except Exception as exc:  # tracing failures come in many types
        raise ConfigError(
            f"cannot trace the backbone to bound its Lipschitz modulus ({type(exc).__name__}: {exc}); "
            "use --lipschitz local or give a number"
        ) from exc
    return gm


def lipschitz_upper_bound(
    model: nn.Module, example: torch.Tensor, *, iters: int = 500, tol: float = 1e-7
) -> LipschitzEstimate:
    """Upper bound on the Lipschitz modulus (ℓ₂) of x ↦ f_p(x) = backbone(normalize(x)).

    The backbone is traced with ``torch.fx``; the bound is composed node by node:
    L(op(a)) = c_op · L(a) for layers and activations, L(a + b) = L(a) + L(b),
    L(cat(a, b)) = √(L(a)² + L(b)²), constants contribute 0. ``guaranteed`` is true only
    when no factor came from power iteration (convolutions, average pooling, means: an
    estimate from below); see the module docstring.

    Args:
        model: a KmModel (``normalize``, ``backbone``) or any ``nn.Module`` (traced whole).
        example: (1, ...) or (N, ...) an input, for the layers' shapes.

    Raises:
        ConfigError: the graph cannot be traced or contains an operation without a known
            bound (then use :func:`lipschitz_local` or give L_p yourself).
    """
    backbone: nn.Module = getattr(model, "backbone", model)
    norm = getattr(model, "normalize", None)
    factors: list[tuple[str, float]] = []
    x = example[:1].detach().float().cpu()
    L0 = 1.0
    if norm is not None and getattr(norm, "active", False):
        L0 = float(1.0 / norm.std.detach().double().min())
        factors.append(("normalize", L0))
        with torch.no_grad():
            x = norm(x.to(norm.std.device)).cpu()
    graph = _Graph(_trace(backbone, x), iters, tol)
    value = L0 * graph.output()
    assumptions = [
        "composed over the torch.fx graph of the backbone: layer spectral norms x activation constants, "
        "sums at residual additions",
        "nn.Linear: exact SVD; convolutions/average pooling: power iteration on the layer's input shape "
        f"({iters} iterations max, rel. tol {tol:g}), which approaches sigma from below",
        "BatchNorm in eval mode (running statistics); ReLU/tanh 1, sigmoid 1/4, GELU 1.13, SiLU 1.1",
        "max-pooling: sqrt(windows per input element); normalisation: 1/min(std)",
    ]
    if graph.estimated:
        assumptions.append(
            f"not a proof: {len(graph.estimated)} factor(s) by power iteration ({', '.join(graph.estimated[:5])}"
            + (", ..." if len(graph.estimated) > 5 else "") + "), each an estimate from below"
        )
    return LipschitzEstimate(value=value, method="product", guaranteed=not graph.estimated,
                             assumptions=assumptions, layers=factors + graph.factors)


def _features_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    feats = getattr(model, "features", None)
    if not callable(feats):
        raise ConfigError(
            "Theorem 2 needs a KmModel (normalize -> backbone -> head) with penultimate features"
        )
    return feats  # type: ignore[no-any-return]


def lipschitz_local(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor | None = None,
    *,
    points: int = 5,
    iters: int = 20,
    seed: int = 0,
) -> LipschitzEstimate:
    """Per-input empirical modulus: max over points of the segment x → x_adv of ‖J_{f_p}‖₂.

    ‖J‖₂ by power iteration on JᵀJ (J v by the double-backward trick, Jᵀu by backward;
    all inputs of the batch at once). With ``x_adv=None`` only x itself is used. Not a
    guarantee: the supremum over the segment (and over other directions) may be larger.
    """
    f = _features_fn(model)
    gen = torch.Generator().manual_seed(seed)
    ts = [0.0] if x_adv is None or points < 2 else [j / (points - 1) for j in range(points)]
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    with eval_mode(model):
        for t in ts:
            xt = (x if x_adv is None else x + t * (x_adv.to(x.device) - x)).detach()
            v = torch.randn(xt.shape, generator=gen, dtype=xt.dtype).to(xt.device)
            v = v / _bview(v.flatten(1).norm(dim=1).clamp_min(1e-30), v)
            with torch.enable_grad():  # one forward; J v by the double-backward trick
                xg = xt.clone().requires_grad_(True)
                y = f(xg)
                u = torch.zeros_like(y, requires_grad=True)
                (jtu,) = torch.autograd.grad(y, xg, u, create_graph=True)  # Jᵀu, linear in u
                for _ in range(iters):
                    (jv,) = torch.autograd.grad(jtu, u, v, retain_graph=True)
                    (w,) = torch.autograd.grad(y, xg, jv, retain_graph=True)
                    v = w / _bview(w.flatten(1).norm(dim=1).clamp_min(1e-30), w)
                (jv,) = torch.autograd.grad(jtu, u, v)
            best = torch.maximum(best, jv.detach().flatten(1).norm(dim=1).double().cpu())
    return LipschitzEstimate(
        value=best.float(),
        method="local",
        guaranteed=False,
        assumptions=[
            f"max Jacobian spectral norm of f_p at {len(ts)} points of the segment x -> DeepFool's x_adv "
            f"({iters} power iterations): an empirical, per-input estimate along one direction; "
            "not a guarantee"
        ],
    )
