"""Distance to the decision boundary: DeepFool's r(x) beside Theorem 2's lower bound.

* r(x) = argmin ‖r‖₂ s.t. k̂(x + r) ≠ k̂(x) (Fawzi et al., Sec. II) is approximated by
  DeepFool (:func:`kmtools.attacks.deepfool.deepfool`, with its overshoot), then refined:
  a bisection along the segment x → x_adv finds the point z where the segment leaves the
  region of the input's class k (the prediction changes), so z = x + r lies *on* the
  boundary of that region, between k and the class l entered there (usually DeepFool's
  label; another class when the segment passes through a third region first), F = s_l - s_k
  = 0 at z, and ``distance = ‖z - x‖`` (≤ DeepFool's norm). For the minimal r(x), r is
  orthogonal to the boundary at z.

* For a Gauss network (``model.head_kind == "gauss"``, centroids C of shape (c, d)),
  Theorem 2 of "Gauss networks / softmax is k-means" bounds any perturbation Δ that moves
  the prediction from k to l from below::

      ‖Δ‖ ≥ (‖C_l - C_k‖ - ‖f(x̃) - C_l‖ - ‖f(x) - C_k‖) / L_p,     x̃ = x + Δ,

  where L_p is a Lipschitz modulus of x ↦ f_p(x) (normalisation + backbone). Three numbers
  are reported per input:

  - ``bound_at_adv``: the theorem as stated, at DeepFool's x̃ and its label l;
  - ``bound_any``: an x̃-free corollary: x̃ predicted l means ‖f(x̃) - C_l‖ ≤ ‖f(x̃) - C_k‖,
    so ‖f(x̃) - C_k‖ ≥ ‖C_l - C_k‖/2, giving ‖Δ‖ ≥ (min_l ‖C_l - C_k‖/2 - ‖f(x) - C_k‖)/L_p;
  - ``bound_margin``: the sharpest bound of this kind: f(x̃) must cross the bisector of
    C_k and C_l, at distance (‖f - C_l‖² - ‖f - C_k‖²)/(2‖C_l - C_k‖) from f(x).

  A negative value is a vacuous bound. All three are only as good as L_p:

  - ``lipschitz="product"`` (default): an upper bound composed over the traced graph of
    the backbone: spectral norms of linear layers (exact SVD for ``nn.Linear``; power
    iteration on the layer's actual input shape for convolutions and average pooling,
    which approaches σ from below to a relative tolerance, so it is an estimate, not a
    certificate), Lipschitz constants of activations (≤ 1 for ReLU, tanh; 1/4 sigmoid),
    eval-mode BatchNorm scales, √(windows per input) for overlapping max-pooling, the sum
    of both branches at residual additions, and 1/min(std) for the normalisation. It is
    a genuine global bound when those hold, and typically very loose for deep networks.
  - ``lipschitz="local"``: the largest spectral norm of the Jacobian of f_p at points of
    the segment x → x_adv (power iteration with jvp/vjp). An empirical, per-input
    estimate along DeepFool's direction; *not* a guarantee.
  - a number: the user's own modulus.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as Fn
from torch import nn

from kmtools.attacks.deepfool import deepfool
from kmtools.errors import ConfigError
from kmtools.models.scoring import decision_scores, eval_mode, model_device

Progress = Callable[[int, int], None]

__all__ = [
    "BoundaryResult",
    "LipschitzEstimate",
    "boundary_distance",
    "boundary_points",
    "lipschitz_local",
    "lipschitz_upper_bound",
    "theorem2_bounds",
]


# --------------------------------------------------------------------------- boundary points


@dataclass
class BoundaryResult:
    """The nearest boundary point z = x + r(x) for N inputs, and Theorem 2 beside it.

    Attributes:
        z: (N, ...) points on the boundary between ``labels`` and ``adv_labels``.
        r: (N, ...) ``z - x``; distance: (N,) ‖r‖₂ (NaN where not converged).
        x_adv: (N, ...) DeepFool's iterate (just past the boundary); deepfool_norm: (N,).
        labels: (N,) the classes the inputs were on; adv_labels: (N,) the class entered at z
            (the prediction just past z); deepfool_labels: (N,) the prediction at ``x_adv``.
        converged: (N,) DeepFool flipped the label; iterations: (N,).
        on_boundary: (N,) at z the two top scores are those of ``labels`` and ``adv_labels``
            (they tie there; False only where a third class is as high, at a corner).
        bound_at_adv, bound_any, bound_margin: (N,) Theorem 2 bounds (Gauss heads only).
        lipschitz: how L_p was obtained.
    """

    z: torch.Tensor
    r: torch.Tensor
    distance: torch.Tensor
    x_adv: torch.Tensor
    deepfool_norm: torch.Tensor
    labels: torch.Tensor
    adv_labels: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    on_boundary: torch.Tensor
    deepfool_labels: torch.Tensor | None = None
    bound_at_adv: torch.Tensor | None = None
    bound_any: torch.Tensor | None = None
    bound_margin: torch.Tensor | None = None
    lipschitz: LipschitzEstimate | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.distance.shape[0])

    def to_dict(self) -> dict[str, Any]:
        ok = self.converged.bool().cpu()
        dist = self.distance.detach().float().cpu()[ok]

        def stats(t: torch.Tensor | None) -> dict[str, float | None] | None:
            if t is None:
                return None
            v = t.detach().float().cpu()[ok]
            v = v[~v.isnan()]
            if not v.numel():
                return {"mean": None, "median": None, "min": None, "max": None}
            return {
                "mean": float(v.mean()), "median": float(v.median()),
                "min": float(v.min()), "max": float(v.max()),
            }

        out: dict[str, Any] = {
            "inputs": len(self),
            "converged": int(ok.sum()),
            "on_boundary": int((self.on_boundary.bool().cpu() & ok).sum()),
            "distance": stats(self.distance),
            "deepfool_norm": stats(self.deepfool_norm),
            "distance_median": float(dist.median()) if dist.numel() else None,
        }
        if self.bound_any is not None:
            out["theorem2"] = {
                "bound_at_adv": stats(self.bound_at_adv),
                "bound_any": stats(self.bound_any),
                "bound_margin": stats(self.bound_margin),
                "nonvacuous_any": int(((self.bound_any.cpu() > 0) & ok).sum()),
                "violations": self.violations(),
                "lipschitz": self.lipschitz.to_dict() if self.lipschitz else None,
            }
        out["notes"] = list(self.notes)
        return out

    def violations(self) -> int:
        """Inputs where a bound exceeds a perturbation that changed the prediction: DeepFool's
        ‖x_adv - x‖ for all three bounds, and also ‖z - x‖ for the two x̃-free ones (z is just
        outside the input's region). Impossible when L_p is a true Lipschitz modulus;
        possible with ``lipschitz="local"``."""
        if self.bound_any is None:
            return 0
        ok = self.converged.bool().cpu()
        dfn = self.deepfool_norm.cpu()
        ref = torch.minimum(self.distance.cpu(), dfn)
        bad = torch.zeros_like(ok)
        for b, r in ((self.bound_at_adv, dfn), (self.bound_any, ref), (self.bound_margin, ref)):
            if b is not None:
                bad |= b.cpu() > r * (1 + 1e-5) + 1e-7
        return int((bad & ok).sum())

    def records(self) -> list[dict[str, Any]]:
        out = []
        for n in range(len(self)):
            rec: dict[str, Any] = {
                "index": n,
                "label": int(self.labels[n]),
                "adv_label": int(self.adv_labels[n]),
                "converged": bool(self.converged[n]),
                "distance": float(self.distance[n]),
                "deepfool_norm": float(self.deepfool_norm[n]),
            }
            for name in ("bound_at_adv", "bound_any", "bound_margin"):
                t = getattr(self, name)
                if t is not None:
                    rec[name] = float(t[n])
            out.append(rec)
        return out


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def _bisect(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, lab: torch.Tensor, steps: int
) -> torch.Tensor:
    """t ∈ [0, 1] per row: x + t (x_adv - x) is just outside the region of ``lab`` (k̂ ≠ lab)
    and x + (t - 2^-steps)(x_adv - x) inside it; x is inside, x_adv outside."""
    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    r = x_adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        out = decision_scores(model, x + _bview(mid, x) * r).argmax(1) != lab
        hi = torch.where(out, mid, hi)
        lo = torch.where(out, lo, mid)
    return hi


def boundary_points(
    model: nn.Module,
    x: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = 10,
    bisection_steps: int = 30,
    clip: tuple[float, float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> BoundaryResult:
    """r(x) and z = x + r(x) on the boundary, batched (Sec. II, Sec. IV).

    DeepFool (the attacks module's) gives x_adv just past the boundary; ``bisection_steps``
    halvings along x → x_adv put z where the segment leaves the input's region (on its
    far side, to 2^-steps of the segment), on F = s_l - s_k = 0 with l the class entered.
    Non-converged inputs keep z = x and distance NaN.
    """
    dev = model_device(model, device)
    if not x.is_floating_point():
        x = x.float()
    x = x.to(dev)
    df = deepfool(
        model, x, labels=labels, candidates=candidates, overshoot=overshoot, max_iter=max_iter,
        clip=clip, batch_size=batch_size, device=dev, progress=progress,
    )
    n = x.shape[0]
    ok = df.converged.bool() & (df.iterations > 0)
    lab, dfl = df.labels.to(dev), df.adv_labels.to(dev)
    adv = dfl.clone()
    z = x.clone()
    t = torch.zeros(n, dtype=x.dtype, device=dev)
    on = torch.zeros(n, dtype=torch.bool, device=dev)
    bs = n if not batch_size else max(1, int(batch_size))
    with eval_mode(model):
        idx_all = ok.nonzero().flatten()
        for start in range(0, idx_all.numel(), bs):
            idx = idx_all[start : start + bs]
            ti = _bisect(model, x[idx], df.x_adv[idx].to(dev), lab[idx], bisection_steps)
            t[idx] = ti
            z[idx] = x[idx] + _bview(ti, x[idx]) * (df.x_adv[idx].to(dev) - x[idx])
            with torch.no_grad():
                s = decision_scores(model, z[idx])
            # at z the scores of k and l tie (to float precision): l = the best class other than k
            top2 = s.topk(2, dim=1).indices
            adv[idx] = s.scatter(1, lab[idx][:, None], -math.inf).argmax(1)
            on[idx] = ((top2[:, 0] == lab[idx]) & (top2[:, 1] == adv[idx])) | (
                (top2[:, 0] == adv[idx]) & (top2[:, 1] == lab[idx])
            )
    r = z - x
    dist = r.flatten(1).norm(dim=1)
    dist = torch.where(ok, dist, torch.full_like(dist, math.nan))
    dfn = torch.where(ok, df.norms.to(dev), torch.full_like(dist, math.nan))
    return BoundaryResult(
        z=z.detach(), r=r.detach(), distance=dist.detach(), x_adv=df.x_adv.detach(),
        deepfool_norm=dfn.detach(), labels=lab, adv_labels=adv, converged=ok,
        iterations=df.iterations, on_boundary=on, deepfool_labels=dfl,
        notes=[f"DeepFool (overshoot {overshoot}, {max_iter} steps max) + {bisection_steps} bisection steps"],
    )


# --------------------------------------------------------------------------- Lipschitz moduli


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


def _module_const(m: nn.Module, in_shape: Sequence[int], iters: int, tol: float) -> float:
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(m.weight.detach().double().cpu(), ord=2))
    if isinstance(m, _LINEAR_MODULES):
        import copy

        mm = copy.deepcopy(m).double().cpu().eval()
        zero = mm(torch.zeros(tuple(in_shape), dtype=torch.float64)).detach()
        return _op_norm(lambda v: mm(v) - zero, in_shape, iters, tol)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_var is None:
            raise ConfigError(f"{type(m).__name__} without running statistics is not Lipschitz per input")
        scale = 1.0 / torch.sqrt(m.running_var.detach().double() + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().double().abs()
        return float(scale.max())
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return _maxpool_const(in_shape[2:], m.kernel_size, m.stride, m.dilation)
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        out = _tup(m.output_size, len(in_shape) - 2)
        pairs = zip(in_shape[2:], out, strict=True)
        return math.sqrt(math.prod(1 if (o is None or i % o == 0) else 2 for i, o in pairs))
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(float(m.negative_slope)))
    if isinstance(m, nn.ELU):
        return max(1.0, float(m.alpha))
    if isinstance(m, nn.PReLU):
        return max(1.0, float(m.weight.detach().abs().max()))
    for cls, c in _ACT_CONST.items():
        if type(m) is cls:
            return c
    raise ConfigError(
        f"cannot bound the Lipschitz modulus of a {type(m).__name__} layer: use --lipschitz local "
        "(an empirical estimate) or give a number"
    )


def lipschitz_upper_bound(
    model: nn.Module, example: torch.Tensor, *, iters: int = 500, tol: float = 1e-7
) -> LipschitzEstimate:
    """Upper bound on the Lipschitz modulus (ℓ₂) of x ↦ f_p(x) = backbone(normalize(x)).

    The backbone is traced with ``torch.fx``; the bound is composed node by node:
    L(op(a)) = c_op · L(a) for layers and activations, L(a + b) = L(a) + L(b),
    L(cat(a, b)) = √(L(a)² + L(b)²), constants contribute 0. See the module docstring for
    the per-layer constants and what is and is not guaranteed.

    Args:
        model: a KmModel (``normalize``, ``backbone``) or any ``nn.Module`` (traced whole).
        example: (1, ...) or (N, ...) an input, for the layers' shapes.

    Raises:
        ConfigError: the graph cannot be traced or contains an operation without a known
            bound (then use :func:`lipschitz_local` or give L_p yourself).
    """
    from torch.fx.passes.shape_prop import ShapeProp

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
    import copy

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

    L: dict[Any, float] = {}
    first = True

    def lip(a: Any) -> float:
        if isinstance(a, torch.fx.Node):
            return L.get(a, 0.0)
        if isinstance(a, (list, tuple)):
            return max((lip(b) for b in a), default=0.0)
        return 0.0

    def shape_of(a: Any) -> tuple[int, ...]:
        meta = a.meta.get("tensor_meta") if isinstance(a, torch.fx.Node) else None
        if meta is None or not hasattr(meta, "shape"):
            raise ConfigError(f"no shape recorded for {a}")
        return tuple(int(s) for s in meta.shape)

    def unknown(what: str) -> ConfigError:
        return ConfigError(
            f"cannot bound the Lipschitz modulus of {what}: use --lipschitz local (an empirical estimate) "
            "or give a number"
        )

    out_node = None
    for node in gm.graph.nodes:
        op, tgt = node.op, node.target
        if op == "placeholder":
            L[node] = 1.0 if first else 0.0
            first = False
            continue
        if op == "get_attr":
            L[node] = 0.0
            continue
        if op == "output":
            out_node = node.args[0]
            break
        args = node.args
        src = lip(args[0]) if args else 0.0
        c: float | None = None
        if op == "call_module":
            m = gm.get_submodule(str(tgt))
            c = _module_const(m, shape_of(args[0]), iters, tol)
            L[node] = c * src
        elif tgt in _ADD_OPS:
            L[node] = sum(lip(a) for a in args[:2])
        elif tgt in (operator.mul, operator.imul, torch.mul, "mul", "mul_"):
            a, b = args[0], args[1]
            if isinstance(b, (int, float)):
                L[node] = abs(float(b)) * lip(a)
            elif isinstance(a, (int, float)):
                L[node] = abs(float(a)) * lip(b)
            elif lip(a) == 0.0 and lip(b) == 0.0:
                L[node] = 0.0
            else:
                raise unknown(f"a product of tensors ({node.name})")
        elif tgt in (operator.truediv, torch.div, "div") and isinstance(args[1], (int, float)):
            L[node] = lip(args[0]) / abs(float(args[1]))
        elif tgt in _FN_CONST or (op == "call_method" and tgt in _METHOD_CONST):
            c = _FN_CONST.get(tgt) if op == "call_function" else _METHOD_CONST[str(tgt)]
            L[node] = float(c or 0.0) * src
        elif tgt is Fn.leaky_relu:
            slope = args[1] if len(args) > 1 else node.kwargs.get("negative_slope", 0.01)
            L[node] = max(1.0, abs(float(slope))) * src
        elif tgt in (Fn.max_pool1d, Fn.max_pool2d, Fn.max_pool3d):
            kw = dict(node.kwargs)
            kernel = args[1] if len(args) > 1 else kw.get("kernel_size")
            stride = args[2] if len(args) > 2 else kw.get("stride")
            dil = args[4] if len(args) > 4 else kw.get("dilation", 1)
            L[node] = _maxpool_const(shape_of(args[0])[2:], kernel, stride, dil) * src
        elif tgt in _LINEAR_FNS or (op == "call_method" and tgt == "mean"):
            if any(isinstance(a, torch.fx.Node) for a in list(args[1:]) + list(node.kwargs.values())):
                raise unknown(f"{node.name} (arguments computed in the graph)")
            fn = getattr(torch.Tensor, "mean") if op == "call_method" else tgt  # noqa: B009
            rest, kw = args[1:], dict(node.kwargs)
            c = _op_norm(_bind(fn, rest, kw), shape_of(args[0]), iters, tol)
            L[node] = c * src
        elif tgt is torch.cat:
            L[node] = math.sqrt(sum(lip(a) ** 2 for a in args[0]))
        elif tgt is operator.getitem:
            L[node] = src  # slicing a tensor is 1-Lipschitz; indexing a size tuple gives L = 0
        elif tgt is getattr or (op == "call_method" and tgt in ("size", "dim")):
            L[node] = 0.0  # shapes and attributes are constants
        else:
            raise unknown(f"the operation {tgt!r} ({node.name})")
        if c is not None:
            factors.append((node.name, float(c)))
    if out_node is None:
        raise ConfigError("the traced backbone has no output")
    value = L0 * lip(out_node)
    return LipschitzEstimate(
        value=value,
        method="product",
        guaranteed=True,
        assumptions=[
            "composed over the torch.fx graph of the backbone: layer spectral norms x activation constants, "
            "sums at residual additions",
            "nn.Linear: exact SVD; convolutions/average pooling: power iteration on the layer's input shape "
            f"({iters} iterations max, rel. tol {tol:g}), which approaches sigma from below",
            "BatchNorm in eval mode (running statistics); ReLU/tanh 1, sigmoid 1/4, GELU 1.13, SiLU 1.1",
            "max-pooling: sqrt(windows per input element); normalisation: 1/min(std)",
        ],
        layers=factors,
    )


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


@torch.no_grad()
def theorem2_bounds(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    adv_labels: torch.Tensor,
    lipschitz: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Theorem 2 for a Gauss head: ``(bound_at_adv, bound_any, bound_margin)``, each (N,).

    ``labels`` must be the predictions k at x (nearest centroid); ``adv_labels`` the class l
    at ``x_adv``. See the module docstring for the three forms.
    """
    head = getattr(model, "head", None)
    C = getattr(head, "centroids", None)
    if C is None:
        raise ConfigError("Theorem 2 needs a Gauss head with centroids (model.head.centroids, shape (c, d))")
    f = _features_fn(model)
    with eval_mode(model):
        fx = f(x).double()
        fa = f(x_adv.to(x.device)).double()
    C = C.detach().double().to(fx.device)
    k, l = labels.to(fx.device).long(), adv_labels.to(fx.device).long()
    if isinstance(lipschitz, torch.Tensor):
        Lp = lipschitz.double().to(fx.device)
    else:
        Lp = torch.tensor(float(lipschitz), dtype=torch.float64, device=fx.device)
    dC = torch.cdist(C, C)  # (c, c)
    dx = torch.cdist(fx, C)  # (n, c)
    da = torch.cdist(fa, C)
    ar = torch.arange(fx.shape[0], device=fx.device)
    at_adv = (dC[l, k] - da[ar, l] - dx[ar, k]) / Lp
    dCk = dC[k].clone()
    dCk[ar, k] = math.inf
    any_ = (dCk.min(1).values / 2 - dx[ar, k]) / Lp
    margin = (dx.pow(2) - dx[ar, k][:, None].pow(2)) / (2 * dCk)
    margin[ar, k] = math.inf
    bm = margin.min(1).values / Lp
    return at_adv.float().cpu(), any_.float().cpu(), bm.float().cpu()


def boundary_distance(
    model: nn.Module,
    x: torch.Tensor,
    *,
    lipschitz: str | float | LipschitzEstimate | None = "product",
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = 10,
    bisection_steps: int = 30,
    clip: tuple[float, float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> BoundaryResult:
    """Boundary distance r(x) (DeepFool + bisection) and, for Gauss nets, Theorem 2 beside it.

    Args:
        lipschitz: ``"product"`` (upper bound, :func:`lipschitz_upper_bound`), ``"local"``
            (:func:`lipschitz_local`), a number, a precomputed :class:`LipschitzEstimate`,
            or ``None`` to skip the bound. Ignored for heads other than Gauss.
        the rest: see :func:`boundary_points`.
    """
    res = boundary_points(
        model, x, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
        bisection_steps=bisection_steps, clip=clip, batch_size=batch_size, device=device, progress=progress,
    )
    centroids = getattr(getattr(model, "head", None), "centroids", None)
    gauss = getattr(model, "head_kind", None) == "gauss" and centroids is not None
    if lipschitz is None or not gauss:
        if lipschitz is not None and not gauss:
            res.notes.append("Theorem 2 bound skipped: it needs a Gauss head (centroids)")
        return res
    dev = res.z.device
    xd = x.to(dev).float() if not x.is_floating_point() else x.to(dev)
    if isinstance(lipschitz, LipschitzEstimate):
        est = lipschitz
    elif isinstance(lipschitz, (int, float)):
        if lipschitz <= 0:
            raise ConfigError("--lipschitz must be positive")
        est = LipschitzEstimate(float(lipschitz), "given", False, ["given by the user"])
    elif lipschitz == "product":
        est = lipschitz_upper_bound(model, xd[:1])
    elif lipschitz == "local":
        est = lipschitz_local(model, xd, res.x_adv)
    else:
        raise ConfigError(f"--lipschitz must be product, local or a number, got {lipschitz!r}")
    dfl = res.deepfool_labels if res.deepfool_labels is not None else res.adv_labels
    b1, b2, b3 = theorem2_bounds(model, xd, res.x_adv, res.labels, dfl, est.value)
    nan = torch.full_like(b1, math.nan)
    ok = res.converged.cpu()
    res.bound_at_adv = torch.where(ok, b1, nan)
    res.bound_any, res.bound_margin = b2, b3
    res.lipschitz = est
    return res
