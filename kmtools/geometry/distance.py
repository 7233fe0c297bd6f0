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

  A negative value is a vacuous bound. All three are only as good as L_p
  (:mod:`kmtools.geometry.lipschitz`; ``guaranteed`` says whether it is a proof):

  - ``lipschitz="product"`` (default): an upper bound composed over the traced graph of
    the backbone: spectral norms of linear layers (exact SVD for ``nn.Linear``; power
    iteration on the layer's actual input shape for convolutions and average pooling,
    which approaches σ from below to a relative tolerance, so it is an estimate, not a
    certificate, and ``guaranteed`` is then false), Lipschitz constants of activations
    (≤ 1 for ReLU, tanh; 1/4 sigmoid), eval-mode BatchNorm scales, √(windows per input)
    for overlapping max-pooling, the sum of both branches at residual additions, and
    1/min(std) for the normalisation. It is a proven global bound (``guaranteed``) only
    without power-iterated factors, and typically very loose for deep networks.
  - ``lipschitz="local"``: the largest spectral norm of the Jacobian of f_p at points of
    the segment x → x_adv (power iteration with jvp/vjp). An empirical, per-input
    estimate along DeepFool's direction; *not* a guarantee.
  - a number: the user's own modulus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.attacks.deepfool import deepfool
from kmtools.errors import ConfigError
from kmtools.geometry.lipschitz import (
    LipschitzEstimate,
    _bview,
    _features_fn,
    lipschitz_local,
    lipschitz_upper_bound,
)
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
