"""NEON through a deep feature extractor (Sec. IV), with LRP rules from zennit.

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Section IV ("Neuralized deep k-means": a = Ψ_L ∘ … ∘ Ψ_1(x), then the k-means network of
Prop. 1 on a), Sec. VI-B and VII-B (LRP-γ in convolution layers, γ = 0.25 in VGG-16
blocks 1–3 and 0.1 in blocks 4–5; γ = 0.1 for Table I).

The clusters live on a layer of the network: the penultimate features f(x) of a
:class:`~kmtools.models.core.KmModel` (default) or any named module of its backbone.
For a Gauss network (``model.head_kind == "gauss"``) the clusters are its class centroids
``model.head.centroids`` and the explanation says why x is assigned to its class rather
than to the nearest other one; for a softmax network pass k-means centroids of its features.

Steps, for inputs x in pixel space:

1. z = model.normalize(x) (the per-channel normalisation is element-wise, so relevance on z
   *is* relevance on x, pixel by pixel);
2. a = activations at the cluster layer, with a zennit composite registered on a private
   copy of the backbone: canonizers merge BatchNorm into the preceding convolution
   (``SequentialMergeBatchNorm``; zennit's ``ResNetCanonizer`` for torchvision ResNets; the
   kmtools zoo's ResNet already sums its skip connections in an explicit ``Sum`` module),
   and rules: LRP-γ for convolutions, LRP-ε for linear layers, the z^B (box) rule for the
   first layer of image models (pixels in [0, 1]), Norm (proportional) for skip-connection
   sums and average pooling, pass-through for activations; max-pooling keeps its gradient
   (winner-take-all);
3. NEON on a (Eqs. 2–4) gives R_a (N, d) with Σ R_a = f_c(a);
4. the modified gradient ∂a/∂z with grad_output R_a is the LRP relevance at the input.

zennit is an optional dependency (``pip install 'kmtools[explain]'``); it is imported lazily.
``engine="auto"`` (the default) runs the same rules with :mod:`kmtools.explain.fastlrp` when
every layer of the network is one it covers (conv, linear, ReLU, pooling, BatchNorm, skip
sums), about 3× faster, and with zennit otherwise; ``"fast"`` and ``"zennit"`` force one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError, KmtoolsError
from kmtools.explain.fastlrp import ENGINES, FastLRP
from kmtools.explain.neon import assign, cluster_score, competitor_scores, neon, stiffness

__all__ = [
    "DeepExplanation",
    "DeepNeonExplainer",
    "deep_integrated_gradients",
    "explain_deep",
    "lrp_composite",
    "require_zennit",
]


class MissingDependencyError(KmtoolsError):
    """An optional package needed for this command is not installed."""


def require_zennit() -> Any:
    """Import zennit or raise a :class:`KmtoolsError` that says how to install it."""
    try:
        import zennit
        import zennit.canonizers
        import zennit.composites
        import zennit.rules
        import zennit.torchvision
    except ImportError as exc:  # pragma: no cover - exercised by the error test with a patched import
        raise MissingDependencyError(
            "explaining a deep model needs zennit: pip install 'kmtools[explain]' (or pip install zennit)"
        ) from exc
    return zennit


def _sum_types() -> tuple[type, ...]:
    from zennit.layer import Sum as ZSum

    types: list[type] = [ZSum]
    try:
        from kmtools.models.zoo import Sum as ZooSum

        types.append(ZooSum)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _has_torchvision_resnet(module: nn.Module) -> bool:
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, (BasicBlock, Bottleneck)) for m in module.modules())


def lrp_composite(
    module: nn.Module,
    *,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
    first_rule: str = "gamma",
    low: torch.Tensor | float | None = None,
    high: torch.Tensor | float | None = None,
    canonize: bool = True,
) -> Any:
    """The zennit composite used for NEON's backward pass through ``module``.

    ``first_rule``: rule of the first conv/linear layer: ``"zbox"`` (needs ``low``/``high``,
    the bounds of the normalised input), ``"flat"``, ``"epsilon"`` or ``"gamma"``.
    ``canonize`` adds ``SequentialMergeBatchNorm`` (or zennit's ``ResNetCanonizer`` when the
    module contains torchvision ResNet blocks).
    """
    require_zennit()
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import Epsilon, Flat, Gamma, Norm, Pass, ZBox
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    layer_map = [
        (Activation, Pass()),
        (_sum_types(), Norm()),
        (AvgPool, Norm()),
        (BatchNorm, Pass()),  # identity once merged into the preceding layer
        (Convolution, Gamma(gamma=gamma)),
        (nn.Linear, Epsilon(epsilon=epsilon)),
    ]
    first: Any
    if first_rule == "zbox":
        if low is None or high is None:
            raise ConfigError("the zbox first-layer rule needs the input bounds (low, high)")
        first = ZBox(low=low, high=high)
    elif first_rule == "flat":
        first = Flat()
    elif first_rule == "epsilon":
        first = Epsilon(epsilon=epsilon)
    elif first_rule == "gamma":
        first = None
    else:
        raise ConfigError(f"first_rule must be zbox, flat, epsilon or gamma, got {first_rule!r}")
    first_map = [] if first is None else [((Convolution, nn.Linear), first)]
    canonizers: list[Any] = []
    if canonize:
        canonizers = [ResNetCanonizer()] if _has_torchvision_resnet(module) else [SequentialMergeBatchNorm()]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map, canonizers=canonizers)


class _Stop(Exception):
    pass


def _layer_activations(backbone: nn.Module, target: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    """Flattened output of ``target`` (a module of ``backbone``; None: the backbone's output).

    The forward pass stops at ``target`` (the rest of the network is not run).
    """
    if target is None:
        out: torch.Tensor = backbone(z)
        return out.flatten(1)
    box: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, o: Any) -> None:
        box["a"] = o[0] if isinstance(o, tuple) else o
        raise _Stop

    handle = target.register_forward_hook(hook)
    try:
        backbone(z)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box["a"].flatten(1)


@dataclass
class DeepExplanation:
    """NEON of deep cluster assignments.

    ``relevance``: (N, *input_shape) pixel/feature relevance; ``feature_relevance``: (N, d)
    NEON relevance at the cluster layer; ``features``: (N, d) activations there;
    ``assignments`` (N,); ``score``: f_c (N,) at the cluster layer; ``beta``: the stiffness.
    """

    relevance: torch.Tensor
    feature_relevance: torch.Tensor
    features: torch.Tensor
    assignments: torch.Tensor
    score: torch.Tensor
    beta: float
    layer: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def conservation(self) -> torch.Tensor:
        """Σ input relevance / f_c per input (1 = fully conserved; biases absorb the rest)."""
        total = self.relevance.flatten(1).sum(1).double()
        return total / self.score.double()

    def to_dict(self) -> dict[str, Any]:
        cons = self.conservation()
        return {
            "n": int(self.assignments.numel()),
            "layer": self.layer or "penultimate",
            "beta": self.beta,
            "mean_score": float(self.score.double().mean()),
            "conservation_mean": float(cons.mean()),
            "conservation_median": float(cons.median()),
            "cluster_counts": torch.bincount(self.assignments.cpu()).tolist(),
            **self.settings,
        }


def _resolve_centroids(
    model: nn.Module, centroids: torch.Tensor | None, layer: str | None, required: bool = True
) -> torch.Tensor | None:
    if centroids is not None:
        return centroids.detach()
    head = getattr(model, "head", None)
    if getattr(model, "head_kind", None) == "gauss" and head is not None and layer is None:
        return head.centroids.detach()
    if not required:
        return None
    raise ConfigError(
        "no clusters to explain: pass centroids (k-means on the layer's activations, e.g. "
        "kmtools.centroids.kmeans) or use a Gauss network, whose class centroids are the clusters"
    )


class DeepNeonExplainer:
    """Reusable NEON explainer for a KmModel-like network (``normalize``, ``backbone``).

    Works on a private copy of the backbone (eval mode) with the LRP composite registered
    once, so repeated calls cost one forward and one modified backward pass each; the user's
    model is never modified. Use as a context manager or call :meth:`close`.

    ``engine``: ``"auto"`` (the fast engine of :mod:`.fastlrp` when it covers every layer,
    else zennit), ``"fast"`` (an error when it does not) or ``"zennit"``. Both give the same
    relevance to float rounding; :attr:`engine_used` says which ran.
    """

    def __init__(
        self,
        model: nn.Module,
        centroids: torch.Tensor | None = None,
        *,
        layer: str | None = None,
        gamma: float = 0.25,
        epsilon: float = 1e-6,
        first_rule: str = "auto",
        bounds: tuple[float, float] | None = (0.0, 1.0),
        canonize: bool = True,
        device: torch.device | str | None = None,
        engine: str = "auto",
    ) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"the LRP engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "zennit":
            require_zennit()
        if not hasattr(model, "backbone"):
            raise ConfigError("explain_deep needs a KmModel-like network with .backbone (and .normalize)")
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        self.device = dev
        self.layer = layer
        mu = _resolve_centroids(model, centroids, layer, required=False)
        self.centroids: torch.Tensor | None = None if mu is None else mu.to(dev)
        norm = getattr(model, "normalize", None)
        self.normalize: nn.Module = copy.deepcopy(norm).to(dev).eval() if norm is not None else nn.Identity()
        self.backbone: nn.Module = copy.deepcopy(model.get_submodule("backbone")).to(dev).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.target: nn.Module | None = None
        if layer is not None:
            try:
                self.target = self.backbone.get_submodule(layer)
            except AttributeError as exc:
                names = [n for n, _ in self.backbone.named_modules() if n]
                raise ConfigError(
                    f"no layer {layer!r} in the backbone; layers: {', '.join(names[:40])}"
                ) from exc
        self.gamma = gamma
        self.epsilon = epsilon
        self.first_rule = first_rule
        self.bounds = bounds
        self.canonize = canonize
        self.engine = engine
        self.engine_used: str | None = None
        self.fallback_reason: str | None = None
        self._composite: Any = None
        self._fast: FastLRP | None = None
        self._first_resolved: str | None = None

    # -- composite management -------------------------------------------------------------
    def _register(self, x: torch.Tensor) -> None:
        rule = self.first_rule
        low = high = None
        if rule == "auto":
            rule = "zbox" if (x.dim() == 4 and self.bounds is not None) else "epsilon"
        if rule == "zbox":
            if self.bounds is None:
                raise ConfigError("first_rule='zbox' needs input bounds")
            shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            with torch.no_grad():
                low = self.normalize(torch.full(shape, self.bounds[0], device=self.device, dtype=x.dtype))
                high = self.normalize(torch.full(shape, self.bounds[1], device=self.device, dtype=x.dtype))
        self._first_resolved = rule
        if self.engine != "zennit":
            try:
                self._fast = FastLRP(
                    self.backbone, self.layer, gamma=self.gamma, epsilon=self.epsilon, first_rule=rule, low=low,
                    high=high, canonize=self.canonize,
                )
                self.engine_used = "fast"
                return
            except ConfigError as exc:
                if self.engine == "fast":
                    raise ConfigError(
                        f"the fast LRP engine does not cover this network: {exc} (use engine auto or zennit)"
                    ) from exc
                self.fallback_reason = str(exc)
        require_zennit()
        self._composite = lrp_composite(
            self.backbone, gamma=self.gamma, epsilon=self.epsilon, first_rule=rule, low=low, high=high,
            canonize=self.canonize,
        )
        self._composite.register(self.backbone)
        self.engine_used = "zennit"

    def close(self) -> None:
        self._fast = None
        if self._composite is not None:
            self._composite.remove()
            self._composite = None

    def __enter__(self) -> DeepNeonExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the clusters ------------------------------------------------------------------------
    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Set (or replace) the (K, d) centroids at the cluster layer, e.g. after k-means on
        :meth:`features`."""
        if centroids.dim() != 2 or centroids.shape[0] < 2:
            raise ConfigError("centroids must be a (K, d) tensor with K ≥ 2")
        self.centroids = centroids.detach().to(self.device)

    def _centroids(self) -> torch.Tensor:
        if self.centroids is None:
            raise ConfigError(
                "no clusters to explain: set k-means centroids of the layer's activations "
                "(set_centroids) or use a Gauss network, whose class centroids are the clusters"
            )
        return self.centroids

    # -- forward to the cluster layer ----------------------------------------------------
    def activations(self, z: torch.Tensor) -> torch.Tensor:
        """Activations at the cluster layer for normalised inputs z (graph kept), (N, d)."""
        return _layer_activations(self.backbone, self.target, z)

    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Plain (unhooked) activations at the cluster layer, for k-means and β."""
        outs = []
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                z = self.normalize(x[s : s + batch_size].to(self.device))
                outs.append(self.activations(z).detach())
        return torch.cat(outs)

    # -- explanation -----------------------------------------------------------------------
    def explain(
        self,
        x: torch.Tensor,
        assignments: torch.Tensor | None = None,
        beta: float | None = None,
        *,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> DeepExplanation:
        """NEON relevance in input space for a batch ``x`` (N, C, H, W) or (N, D).

        ``beta`` defaults to 1 / E[f_c] over the cluster-layer activations of ``x`` (Eq. 3);
        for a small batch pass the β of the whole data set (:meth:`stiffness`).
        """
        mu = self._centroids()
        if self._composite is None and self._fast is None:
            self._register(x)
        n = x.shape[0]
        if beta is None:
            feats = self.features(x, batch_size)
            c_all = assign(feats, mu) if assignments is None else assignments.to(self.device)
            beta = stiffness(feats, mu, c_all)
        rel, frel, feats_out, cs, fs = [], [], [], [], []
        for s in range(0, n, batch_size):
            xb = x[s : s + batch_size].to(self.device)
            with torch.no_grad():
                z = self.normalize(xb)
            z = z.detach().requires_grad_(self._fast is None)
            given = None if assignments is None else assignments[s : s + batch_size]
            if self._fast is not None:
                ad = self._fast.forward(z).flatten(1)
                self._check_width(ad, mu)
                c = assign(ad, mu) if given is None else given.to(self.device).long()
                ra = neon(ad, mu, c, beta)  # Eqs. 2–4 at the cluster layer
                r = self._fast.relevance(ra.to(ad.dtype))
            else:
                with torch.enable_grad():
                    a = self.activations(z)
                    self._check_width(a, mu)
                    ad = a.detach()
                    c = assign(ad, mu) if given is None else given.to(self.device).long()
                    ra = neon(ad, mu, c, beta)  # Eqs. 2–4 at the cluster layer
                    (r,) = torch.autograd.grad(a, z, grad_outputs=ra.to(a.dtype))
            f = competitor_scores(ad, mu, c).min(1).values
            rel.append(r.detach())
            frel.append(ra)
            feats_out.append(ad)
            cs.append(c)
            fs.append(f.to(ad.dtype))
            if progress is not None:
                progress(min(s + batch_size, n), n)
        return DeepExplanation(
            relevance=torch.cat(rel),
            feature_relevance=torch.cat(frel),
            features=torch.cat(feats_out),
            assignments=torch.cat(cs),
            score=torch.cat(fs),
            beta=float(beta),
            layer=self.layer,
            settings={"gamma": self.gamma, "first_rule": self._first_resolved, "epsilon": self.epsilon,
                      "lrp_engine": self.engine_used},
        )

    @staticmethod
    def _check_width(a: torch.Tensor, mu: torch.Tensor) -> None:
        if a.shape[1] != mu.shape[1]:
            raise ConfigError(f"the cluster layer has {a.shape[1]} features but the centroids have {mu.shape[1]}")

    def stiffness(self, x: torch.Tensor, batch_size: int = 256) -> float:
        """Eq. 3 over a data set: β = 1 / E[f_c] of the cluster-layer activations of ``x``."""
        return stiffness(self.features(x, batch_size), self._centroids())


def explain_deep(
    model: nn.Module,
    x: torch.Tensor,
    centroids: torch.Tensor | None = None,
    layer: str | None = None,
    gamma: float = 0.25,
    *,
    assignments: torch.Tensor | None = None,
    beta: float | None = None,
    epsilon: float = 1e-6,
    first_rule: str = "auto",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 256,
    device: torch.device | str | None = None,
    details: bool = False,
    engine: str = "auto",
) -> Any:
    """NEON relevance of deep cluster assignments, in input space (N, *input_shape).

    ``centroids`` (K, d) on the cluster layer (default: the class centroids of a Gauss
    network); ``layer`` a module name of ``model.backbone`` (default: the penultimate
    features, ``model.features``); ``gamma`` of LRP-γ in convolutions. With ``details=True``
    returns the :class:`DeepExplanation` instead of the relevance tensor. ``engine``: see
    :class:`DeepNeonExplainer`.
    """
    _resolve_centroids(model, centroids, layer)  # fail before copying the network
    with DeepNeonExplainer(
        model, centroids, layer=layer, gamma=gamma, epsilon=epsilon, first_rule=first_rule, bounds=bounds,
        device=device, engine=engine,
    ) as ex:
        out = ex.explain(x, assignments, beta, batch_size=batch_size)
    return out if details else out.relevance


def deep_integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    layer: str | None = None,
    steps: int = 50,
    assignments: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Integrated gradients of f_c(a(x)) w.r.t. the input, from the black image (x̃ = 0).

    The baseline NEON is compared with for speed (``steps`` gradient evaluations per input).
    """
    net = copy.deepcopy(model).eval()
    dev = next(net.parameters()).device
    mu = centroids.to(dev)
    backbone, normalize = net.get_submodule("backbone"), net.get_submodule("normalize")
    target = backbone.get_submodule(layer) if layer else None
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(dev)
        if assignments is None:
            with torch.no_grad():
                c = assign(_layer_activations(backbone, target, normalize(xb)), mu)
        else:
            c = assignments[s : s + batch_size].to(dev).long()
        total = torch.zeros_like(xb)
        for k in range(1, steps + 1):
            xi = (xb * (k / steps)).requires_grad_(True)
            with torch.enable_grad():
                f = cluster_score(_layer_activations(backbone, target, normalize(xi)), mu, c)
                (g,) = torch.autograd.grad(f.sum(), xi)
            total += g
        out.append((xb * total / steps).detach())
    return torch.cat(out)
