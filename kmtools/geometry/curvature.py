"""Curvature of a decision boundary from Hessian-vector products (Fawzi et al., Sec. IV-V).

For two classes k (the side the input is on) and i (the other side), kmtools uses the
score difference of Algorithm 2, line 3::

    F(x) = s_i(x) - s_k(x)        (s = :func:`~kmtools.attacks.deepfool.decision_scores`)

so F < 0 in the region of k, F > 0 in the region of i, and ∇F is the normal of the
boundary B = {F = 0} pointing *out of* k's region. The normal curvature along a tangent
direction v is Eq. (1), κ(z, v) = vᵀH_F v / (‖v‖² ‖∇F(z)‖), and the principal curvatures
are the eigenvalues of

    G(z) = ‖∇F(z)‖⁻¹ P H_F(z) P,     P = I - n nᵀ,  n = ∇F/‖∇F‖

restricted to the tangent space (the paper writes P = I - ∇F∇Fᵀ; the gradient must be
normalised for P to be a projection). **Sign convention**: with this F the curvature is
*positive when k's region is locally convex* (a ball of class k with radius ρ has all
principal curvatures +1/ρ) and negative when k's region bends away from the input.
With it, Sec. V's text and Algorithm 2 read: near clean inputs the average curvature is
negative, near perturbed inputs it is positive. (Table II prints the opposite signs,
i.e. uses F = s_k - s_i; the fractions are the same under that flip.)

Nothing here forms a Hessian. H_F v comes from one of:

* ``"exact"``: double backward through the model (a retained graph of ∇F, so each
  product costs about one backward). Exact for smooth networks (tanh, softplus, GELU).
* ``"fd"``: central differences of gradients, H v ≈ (∇F(z + h v̂) - ∇F(z - h v̂))‖v‖/(2h),
  and for quadratic forms (F(z + h v̂) - 2F(z) + F(z - h v̂))‖v‖²/h² (forward passes
  only). Networks built of ReLU and max-pooling are piecewise linear: their exact Hessian
  is 0 almost everywhere, and their boundary curvature only exists at a scale h. The
  default step follows the authors' research code (as ported by Jetley et al., 2018):
  h = √d · (max x - min x) / 512 · 10 for unit directions.
* ``"auto"`` (default): ``"exact"`` unless an exact product on the first inputs is
  identically zero (a piecewise-linear network), then ``"fd"``. The result records which.

Samples of a batch are treated as independent (the batch's F is a sum of per-sample
functions, so its Hessian is block diagonal); models run in eval mode for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import decision_scores, eval_mode, model_device

Progress = Callable[[int, int], None]
HvpMethod = Literal["auto", "exact", "fd"]

__all__ = [
    "BoundaryOperator",
    "CurvatureResult",
    "HvpMethod",
    "boundary_curvature",
    "default_fd_step",
    "mean_curvature",
    "principal_curvatures",
    "resolve_method",
    "score_difference",
]

_TINY = 1e-30


def score_difference(model: nn.Module, x: torch.Tensor, i: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """F(x) = s_i(x) - s_k(x) per row, shape (N,) (Algorithm 2, line 3)."""
    s = decision_scores(model, x)
    s = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
    return s.gather(1, i.view(-1, 1)).squeeze(1) - s.gather(1, k.view(-1, 1)).squeeze(1)


def default_fd_step(x: torch.Tensor) -> float:
    """The authors' central-difference step: √d · (max x - min x) / 512 · 10.

    ``d`` is the input dimension; the range is that of ``x`` (1 for images in [0, 1]),
    or 1 when ``x`` is constant. A per-pixel step of about 2% of the range.
    """
    d = x[0].numel() if x.shape[0] else 1
    span = float(x.max() - x.min()) if x.numel() else 1.0
    return math.sqrt(d) * (span if span > 0 else 1.0) / 512.0 * 10.0


def _grad_F(model: nn.Module, x: torch.Tensor, i: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(score_difference(model, xg, i, k).sum(), xg)
    return g.detach()


class BoundaryOperator:
    """G(z) = ‖∇F‖⁻¹ P H_F P for a batch of inputs and class pairs (Eq. 1, Sec. V).

    Args:
        model: returns class scores; run it in eval mode.
        x: (B, ...) points (on the boundary for principal curvatures; anywhere for
            Algorithm 2's approximation G(x) ≈ G(z)).
        i, k: (B,) class pairs; F = s_i - s_k.
        method: ``"exact"`` or ``"fd"`` (see the module docstring); resolve ``"auto"``
            with :func:`resolve_method` first.
        fd_step: h for ``"fd"`` (default :func:`default_fd_step`).

    Vectors are flat, shape (B, d). ``gvp(v)`` returns G v, ``quad(v)`` returns vᵀG v.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        i: torch.Tensor,
        k: torch.Tensor,
        method: str = "exact",
        fd_step: float | None = None,
    ) -> None:
        if method not in ("exact", "fd"):
            raise ConfigError(f"method must be 'exact' or 'fd' here, got {method!r}")
        self.model = model
        self.x = x.detach()
        self.shape = x.shape
        self.i = i.to(x.device).long()
        self.k = k.to(x.device).long()
        self.method = method
        self.fd_step = float(fd_step) if fd_step is not None else default_fd_step(self.x)
        self._g_graph: torch.Tensor | None = None
        with torch.enable_grad():
            self._xg = self.x.clone().requires_grad_(True)
            F = score_difference(model, self._xg, self.i, self.k)
            (g,) = torch.autograd.grad(F.sum(), self._xg, create_graph=method == "exact")
        if method == "exact" and g.requires_grad:
            self._g_graph = g
        self.F = F.detach()
        self.grad = g.detach().flatten(1)
        self.grad_norm = self.grad.norm(dim=1)
        self.normal = self.grad / self.grad_norm.clamp_min(_TINY)[:, None]

    @property
    def dim(self) -> int:
        return int(self.grad.shape[1])

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """P v = v - (nᵀv) n: the tangent component."""
        return v - (v * self.normal).sum(1, keepdim=True) * self.normal

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_F v per row, (B, d) -> (B, d)."""
        if self.method == "exact":
            if self._g_graph is None:  # ∇F does not depend on x at all: H_F = 0
                return torch.zeros_like(v)
            (hv,) = torch.autograd.grad(
                self._g_graph, self._xg, v.view(self.shape).to(self._xg.dtype), retain_graph=True,
                allow_unused=True,
            )
            return torch.zeros_like(v) if hv is None else hv.detach().flatten(1)
        nv = v.norm(dim=1)
        u = (v / nv.clamp_min(_TINY)[:, None]).view(self.shape)
        h = self.fd_step
        xx = torch.cat([self.x + h * u, self.x - h * u])
        g = _grad_F(self.model, xx, self.i.repeat(2), self.k.repeat(2)).flatten(1)
        b = v.shape[0]
        return (g[:b] - g[b:]) * (nv / (2 * h))[:, None]

    def gvp(self, v: torch.Tensor) -> torch.Tensor:
        """G v = ‖∇F‖⁻¹ P H_F P v per row."""
        return self.project(self.hvp(self.project(v))) / self.grad_norm.clamp_min(_TINY)[:, None]

    def quad(self, v: torch.Tensor) -> torch.Tensor:
        """vᵀ G v per row, (B, d) -> (B,). With ``"fd"``: a second difference of F."""
        w = self.project(v)
        if self.method == "exact":
            return (w * self.hvp(w)).sum(1) / self.grad_norm.clamp_min(_TINY)
        nw = w.norm(dim=1)
        u = (w / nw.clamp_min(_TINY)[:, None]).view(self.shape)
        h = self.fd_step
        with torch.no_grad():
            xx = torch.cat([self.x + h * u, self.x - h * u])
            Fpm = score_difference(self.model, xx, self.i.repeat(2), self.k.repeat(2))
        b = w.shape[0]
        second = (Fpm[:b] + Fpm[b:] - 2 * self.F) / (h * h)
        return second * nw.pow(2) / self.grad_norm.clamp_min(_TINY)


def resolve_method(
    model: nn.Module, x: torch.Tensor, i: torch.Tensor, k: torch.Tensor, method: str = "auto"
) -> str:
    """``"exact"``/``"fd"`` as given; for ``"auto"`` probe an exact product on a few rows.

    A piecewise-linear network (ReLU, max-pooling) gives an identically zero exact
    Hessian-vector product; then ``"fd"`` is the only meaningful choice.
    """
    if method in ("exact", "fd"):
        return method
    if method != "auto":
        raise ConfigError(f"--hvp must be auto, exact or fd, got {method!r}")
    n = min(4, x.shape[0])
    if n == 0:
        return "exact"
    op = BoundaryOperator(model, x[:n], i[:n], k[:n], "exact")
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(op.grad.shape, generator=gen, dtype=op.grad.dtype).to(op.grad.device)
    hv = op.hvp(v)
    return "exact" if bool((hv != 0).any()) else "fd"


def _randn(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=like.dtype, device="cpu").to(like.device)


def _lanczos(op: BoundaryOperator, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Ritz values (B, steps) of G on the tangent space, ascending; full reorthogonalisation.

    The start vector is tangent and G maps into the tangent space, so the Krylov space
    stays tangent and the zero eigenvalue along the normal never appears. With
    ``steps = d - 1`` the Ritz values are all d - 1 principal curvatures. An invariant
    subspace (β ≈ 0) is handled by restarting from a fresh random tangent vector.
    """
    b, d = op.grad.shape
    dt = torch.float64 if op.grad.dtype == torch.float64 else torch.float32
    Q = torch.zeros(b, steps + 1, d, dtype=dt, device=op.grad.device)
    alpha = torch.zeros(b, steps, dtype=dt, device=op.grad.device)
    beta = torch.zeros(b, steps, dtype=dt, device=op.grad.device)

    def fresh(j: int) -> torch.Tensor:
        q = torch.zeros(b, d, dtype=dt, device=op.grad.device)
        for _ in range(8):  # redraw rows that fell (numerically) into span(Q, n)
            redo = q.norm(dim=1) < 1e-6
            if not bool(redo.any()):
                break
            r = _randn((b, d), gen, op.grad).to(dt)
            r = r / r.norm(dim=1, keepdim=True)
            for _ in range(2):
                r = op.project(r)
                r = r - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", Q[:, :j], r), Q[:, :j])
            q = torch.where(redo[:, None], r, q)
        return q / q.norm(dim=1, keepdim=True).clamp_min(_TINY)

    Q[:, 0] = fresh(0)
    scale = torch.zeros(b, dtype=dt, device=op.grad.device)
    for j in range(steps):
        w = op.gvp(Q[:, j].to(op.grad.dtype)).to(dt)
        a = (w * Q[:, j]).sum(1)
        alpha[:, j] = a
        for _ in range(2):  # full reorthogonalisation (twice is enough)
            w = w - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", Q[:, : j + 1], w), Q[:, : j + 1])
        w = op.project(w)
        bn = w.norm(dim=1)
        scale = torch.maximum(scale, torch.maximum(a.abs(), bn))
        if j == steps - 1:
            break
        broken = bn <= 1e-7 * scale + 1e-30
        beta[:, j] = torch.where(broken, torch.zeros_like(bn), bn)
        nxt = w / bn.clamp_min(_TINY)[:, None]
        if bool(broken.any()):
            nxt = torch.where(broken[:, None], fresh(j + 1), nxt)
        Q[:, j + 1] = nxt
    off = beta[:, : steps - 1]
    T = torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(T)


def _tangent_sphere(op: BoundaryOperator, gen: torch.Generator) -> torch.Tensor:
    """Uniform on the unit sphere of each row's tangent space (a projected Gaussian)."""
    v = op.project(_randn(tuple(op.grad.shape), gen, op.grad))
    return v / v.norm(dim=1, keepdim=True).clamp_min(_TINY)


def _mean_of(op: BoundaryOperator, samples: int, gen: torch.Generator) -> torch.Tensor:
    """(1/T) Σ_j v_jᵀ G v_j with v_j uniform on the unit sphere of the tangent space."""
    acc = torch.zeros(op.grad.shape[0], dtype=op.grad.dtype, device=op.grad.device)
    for _ in range(samples):
        acc += op.quad(_tangent_sphere(op, gen))
    return acc / max(samples, 1)


@dataclass
class CurvatureResult:
    """Principal curvatures at N boundary points (Eq. 1) and their average (Sec. V).

    Attributes:
        top: (N, k) the largest principal curvatures, descending.
        bottom: (N, k) the smallest principal curvatures, ascending.
        mean: (N,) estimate of κ̄ = (1/(d-1)) Σ κ_i (NaN where not computed).
        grad_norm: (N,) ‖∇F‖ at the points.
        labels: (N,) the class k of the side the input is on; ``others``: (N,) class i.
        method: ``"exact"`` or ``"fd"``; ``fd_step``: h when ``"fd"``.
        lanczos_steps: Krylov dimension; ``samples``: random directions for ``mean``.
        distance: (N,) distance from the input to the boundary point, when known.
        valid: (N,) False where no boundary point was found (curvatures are NaN).
    """

    top: torch.Tensor
    bottom: torch.Tensor
    mean: torch.Tensor
    grad_norm: torch.Tensor
    labels: torch.Tensor
    others: torch.Tensor
    method: str
    fd_step: float | None
    lanczos_steps: int
    samples: int
    dim: int
    distance: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.top.shape[0])

    def _valid(self) -> torch.Tensor:
        return self.valid.bool().cpu() if self.valid is not None else torch.ones(len(self), dtype=torch.bool)

    def to_dict(self) -> dict[str, Any]:
        ok = self._valid()
        mean = self.mean.detach().float().cpu()[ok]
        mean = mean[~mean.isnan()]
        top = self.top.detach().float().cpu()[ok]
        bottom = self.bottom.detach().float().cpu()[ok]
        out: dict[str, Any] = {
            "inputs": len(self),
            "valid": int(ok.sum()),
            "dim": self.dim,
            "sign_convention": "F = s_other - s_own; positive = own class region locally convex",
            "hvp": self.method,
            "fd_step": self.fd_step,
            "lanczos_steps": self.lanczos_steps,
            "samples": self.samples,
            "top_mean_profile": top.mean(0).tolist() if top.numel() else [],
            "bottom_mean_profile": bottom.mean(0).tolist() if bottom.numel() else [],
            "mean_curvature_mean": float(mean.mean()) if mean.numel() else None,
            "mean_curvature_median": float(mean.median()) if mean.numel() else None,
            "fraction_negative": float((mean < 0).float().mean()) if mean.numel() else None,
            "notes": list(self.notes),
        }
        if self.distance is not None:
            dist = self.distance.detach().float().cpu()[ok]
            out["distance_median"] = float(dist.median()) if dist.numel() else None
        return out

    def records(self) -> list[dict[str, Any]]:
        ok = self._valid()
        return [
            {
                "index": n,
                "valid": bool(ok[n]),
                "label": int(self.labels[n]),
                "other": int(self.others[n]),
                "mean": float(self.mean[n]),
                "top": [float(v) for v in self.top[n]],
                "bottom": [float(v) for v in self.bottom[n]],
                "grad_norm": float(self.grad_norm[n]),
                **({"distance": float(self.distance[n])} if self.distance is not None else {}),
            }
            for n in range(len(self))
        ]


def _check_pairs(x: torch.Tensor, i: torch.Tensor, k: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ConfigError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if i.shape[0] != x.shape[0] or k.shape[0] != x.shape[0]:
        raise ConfigError(
            f"need one class pair per input: {x.shape[0]} inputs, {i.shape[0]}/{k.shape[0]} labels"
        )
    if bool((i == k).any()):
        raise ConfigError("a class pair has the same class on both sides: F = s_i - s_k needs i != k")


def principal_curvatures(
    model: nn.Module,
    z: torch.Tensor,
    others: torch.Tensor,
    labels: torch.Tensor,
    *,
    top: int = 10,
    bottom: int = 10,
    steps: int | None = None,
    samples: int = 0,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> CurvatureResult:
    """Top-``top`` and bottom-``bottom`` principal curvatures of {s_i = s_k} at ``z`` (Eq. 1).

    Args:
        model: returns class scores (:func:`~kmtools.attacks.deepfool.decision_scores`).
        z: (N, ...) points on (or near) the boundary between ``labels`` and ``others``.
        others: (N,) class i; labels: (N,) class k (the input's side); F = s_i - s_k.
        top, bottom: how many of the largest / smallest curvatures to return.
        steps: Lanczos steps (Krylov dimension), at most d - 1; default
            ``min(d - 1, max(40, 3 (top + bottom)))``. ``d - 1`` gives the full spectrum.
        samples: random tangent directions for the average curvature κ̄ (0: skip).
        method: ``"auto"``, ``"exact"`` or ``"fd"`` Hessian-vector products.
        fd_step: central-difference step h for ``"fd"``; default :func:`default_fd_step`
            of the whole ``z`` batch.
        seed: seeds the start vectors and the random directions.
        batch_size: inputs per Lanczos batch (default all; memory ~ batch · steps · d).
        device, progress: as elsewhere in kmtools.

    Returns:
        :class:`CurvatureResult`; curvatures in units of 1/(input units).
    """
    _check_pairs(z, others, labels)
    dev = model_device(model, device)
    n = z.shape[0]
    d = int(z[0].numel()) if n else 0
    if d < 2:
        raise ConfigError("curvature needs inputs with at least 2 dimensions")
    m = min(d - 1, steps if steps else max(40, 3 * (top + bottom)))
    if m < 1:
        raise ConfigError("steps must be at least 1")
    z = z.to(dev).float() if not z.is_floating_point() else z.to(dev)
    others, labels = others.to(dev).long(), labels.to(dev).long()
    h = fd_step if fd_step is not None else default_fd_step(z)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bs = n if not batch_size else max(1, int(batch_size))
    tops, bots, means, gns = [], [], [], []
    with eval_mode(model):
        used = resolve_method(model, z, others, labels, str(method)) if n else "exact"
        for start in range(0, n, bs):
            sl = slice(start, start + bs)
            op = BoundaryOperator(model, z[sl], others[sl], labels[sl], used, h)
            ritz = _lanczos(op, m, gen).to(z.dtype)
            tops.append(ritz.flip(1)[:, : min(top, m)])
            bots.append(ritz[:, : min(bottom, m)])
            nan = torch.full((op.grad.shape[0],), math.nan)
            means.append(_mean_of(op, samples, gen) if samples > 0 else nan)
            gns.append(op.grad_norm)
            if progress is not None:
                progress(min(start + bs, n), n)
    cat = (lambda xs, w: torch.cat(xs) if xs else torch.zeros(0, w))  # noqa: E731
    return CurvatureResult(
        top=cat(tops, min(top, m)).cpu(),
        bottom=cat(bots, min(bottom, m)).cpu(),
        mean=torch.cat([t.cpu().to(torch.float32) for t in means]) if means else torch.zeros(0),
        grad_norm=torch.cat(gns).cpu() if gns else torch.zeros(0),
        labels=labels.cpu(),
        others=others.cpu(),
        method=used,
        fd_step=h if used == "fd" else None,
        lanczos_steps=m,
        samples=samples,
        dim=d,
    )


def mean_curvature(
    model: nn.Module,
    x: torch.Tensor,
    others: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int = 20,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, str, float | None]:
    """Average curvature κ̄ ≈ (1/T) Σ_j v_jᵀ G(x) v_j (Sec. V), without eigenvalues.

    v_j are drawn uniformly from the unit sphere *of the tangent space*, so the expectation
    is tr(G)/(d - 1) = (1/(d-1)) Σ κ_i exactly (the paper samples the sphere of R^d, whose
    expectation is tr(G)/d: the same sign, a factor (d-1)/d).

    Returns ``(kappa (N,), method_used, fd_step_or_None)``.
    """
    _check_pairs(x, others, labels)
    dev = model_device(model, device)
    x = x.to(dev)
    others, labels = others.to(dev).long(), labels.to(dev).long()
    h = fd_step if fd_step is not None else default_fd_step(x)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    bs = n if not batch_size else max(1, int(batch_size))
    out = []
    with eval_mode(model):
        used = resolve_method(model, x, others, labels, str(method)) if n else "exact"
        for start in range(0, n, bs):
            sl = slice(start, start + bs)
            op = BoundaryOperator(model, x[sl], others[sl], labels[sl], used, h)
            out.append(_mean_of(op, samples, gen).cpu())
    return (torch.cat(out) if out else torch.zeros(0)), used, (h if used == "fd" else None)


def boundary_curvature(
    model: nn.Module,
    x: torch.Tensor,
    *,
    top: int = 10,
    bottom: int = 10,
    steps: int | None = None,
    samples: int = 20,
    method: HvpMethod | str = "auto",
    fd_step: float | None = None,
    seed: int = 0,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = 10,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> CurvatureResult:
    """Principal and average curvature at z = x + r(x), the nearest boundary point (Sec. IV).

    z comes from :func:`kmtools.geometry.distance.boundary_points` (DeepFool, then a
    bisection onto F = 0 along x → x_adv); F = s_adv - s_label, so κ̄ < 0 is the
    asymmetry the paper reports near clean inputs. Inputs where DeepFool did not converge
    get NaN curvatures and ``valid = False``.
    """
    from kmtools.geometry.distance import boundary_points

    dev = model_device(model, device)
    bp = boundary_points(
        model, x, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
        batch_size=batch_size, device=dev,
    )
    ok = bp.converged.bool()
    idx = ok.nonzero().flatten()
    k_top, k_bot = top, bottom
    n = x.shape[0]
    res = principal_curvatures(
        model, bp.z[idx], bp.adv_labels[idx], bp.labels[idx], top=top, bottom=bottom, steps=steps,
        samples=samples, method=method,
        fd_step=fd_step if fd_step is not None else default_fd_step(x.to(dev)),
        seed=seed, batch_size=batch_size, device=dev, progress=progress,
    )
    full_top = torch.full((n, res.top.shape[1] if idx.numel() else k_top), math.nan)
    full_bot = torch.full((n, res.bottom.shape[1] if idx.numel() else k_bot), math.nan)
    full_mean = torch.full((n,), math.nan)
    full_gn = torch.full((n,), math.nan)
    ic = idx.cpu()
    if idx.numel():
        full_top[ic], full_bot[ic] = res.top.float(), res.bottom.float()
        full_mean[ic], full_gn[ic] = res.mean, res.grad_norm.float()
    res.top, res.bottom, res.mean, res.grad_norm = full_top, full_bot, full_mean, full_gn
    res.labels, res.others = bp.labels.cpu(), bp.adv_labels.cpu()
    res.distance = bp.distance.cpu()
    res.valid = ok.cpu()
    res.notes.append("z = x + r(x) from DeepFool refined onto F = 0 by bisection")
    return res
