"""NEON runs end to end: cluster a data set (or a network layer), explain every assignment, score it.

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). This module only wires the pieces together;
the maths lives in :mod:`.neon` (Sec. II), :mod:`.kernel` (Sec. III), :mod:`.deep` (Sec. IV)
and :mod:`.evaluate` (Sec. VII, Algorithm 1). ``kmtools explain`` is a thin layer over
:func:`explain_data` and :func:`explain_network`.

* :func:`explain_data` — k-means (or kernel k-means) on the inputs themselves, standardised
  per feature as in the paper's Appendix H; K from the user or by the elbow method (Sec. VII-B).
* :func:`explain_network` — the clusters live on a layer of a network: k-means on that
  layer's activations, or the class centroids of a Gauss network; relevance reaches the
  input through LRP (zennit's rules; :mod:`.fastlrp` evaluates them faster where it can).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.explain._threads import small_work
from kmtools.explain.evaluate import table_row
from kmtools.explain.kde import loo_sigma
from kmtools.explain.kernel import KernelKMeans, fit_kernel_kmeans, kernel_neon
from kmtools.explain.neon import assign, competitor_scores, neon, stiffness

__all__ = [
    "AUC_KEYS",
    "TABLE_I_WINER",
    "NeonRun",
    "auc_key",
    "elbow",
    "explain_data",
    "explain_network",
    "standardize",
]

#: Table I of the paper, row 'winer' (wine, N = 178, D = 13, K = 6, standard k-means).
TABLE_I_WINER: dict[str, float] = {
    "random": 78.36, "x2": 85.04, "PDA0": 77.01, "PDAcs": 78.15, "grad2": 82.99,
    "IG-10": 85.87, "NCA": 85.10, "NEON": 87.23,
}

#: Method names of :data:`~kmtools.explain.baselines.METHODS` → keys usable in ``--gate`` paths.
AUC_KEYS: dict[str, str] = {
    "random": "random", "x2": "x2", "PDA0": "pda0", "PDAcs": "pdacs", "grad2": "grad2",
    "gradxinput": "gradxinput", "IG-10": "ig10", "NCA": "nca", "NEON": "neon",
}

Progress = Callable[[str, int, int], None]


def auc_key(method: str) -> str:
    """JSON key of a method's AUC (``"IG-10"`` → ``"ig10"``), so ``--gate auc.ig10>=80`` parses."""
    return AUC_KEYS.get(method, method.lower().replace("-", "").replace(" ", ""))


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-feature mean 0 / standard deviation 1 (Appendix H), ``(z, mean, std)``.

    The population standard deviation (as scikit-learn's ``StandardScaler``); a constant
    feature keeps std 1 (it becomes 0 everywhere rather than NaN).
    """
    xw = x.to(torch.float64)
    mean = xw.mean(0)
    std = xw.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (xw - mean) / std, mean, std


@small_work
def elbow(x: torch.Tensor, kmax: int = 10, *, seed: int = 0, n_init: int = 10) -> tuple[int, list[float]]:
    """The number of clusters by the elbow method (the paper's choice of K, Sec. VII-B).

    k-means inertia I(K) for K = 1..kmax; the elbow is the K farthest below the chord from
    (1, I(1)) to (kmax, I(kmax)) once both axes are scaled to [0, 1] ("kneedle"). Returns
    ``(K, [I(1), ..., I(kmax)])``; K ≥ 2.
    """
    from kmtools.centroids import kmeans

    kmax = min(int(kmax), x.shape[0])
    if kmax < 3:
        raise ConfigError(f"the elbow method needs at least 3 candidate K (got kmax {kmax}): pass -k")
    inertias = [kmeans(x, k, n_init=n_init, seed=seed).inertia for k in range(1, kmax + 1)]
    arr = np.asarray(inertias)
    ks = np.arange(1, kmax + 1)
    span = arr.max() - arr.min()
    if span <= 0:
        return 2, inertias
    xn = (ks - 1) / (kmax - 1)
    yn = (arr - arr.min()) / span
    gap = (1 - xn) - yn
    gap[0] = -np.inf  # K = 1 explains nothing
    return int(ks[int(np.argmax(gap))]), inertias


@dataclass
class NeonRun:
    """The result of one NEON run (a data set or a network layer).

    ``inputs`` (N, *shape): the explained inputs as clustered (standardised for tabular
    data); ``relevance`` (N, *shape): NEON relevance on them; ``assignments`` (N,);
    ``score`` (N,): the cluster evidence f_c at the cluster layer; ``centroids`` (K, d) at
    that layer (for kernel k-means: the mean support vector of each cluster);
    ``features``/``feature_relevance`` (N, d): activations and NEON relevance at the cluster
    layer of a network; ``auc``: Algorithm 1's AUC per method when evaluated.
    """

    inputs: torch.Tensor
    relevance: torch.Tensor
    assignments: torch.Tensor
    score: torch.Tensor
    centroids: torch.Tensor
    beta: float
    clusters: str
    layer: str
    k_choice: str
    features: torch.Tensor | None = None
    feature_relevance: torch.Tensor | None = None
    auc: dict[str, float] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def conservation(self) -> dict[str, float]:
        """Σ_i R_i against f_c: max absolute error, and the ratio's mean/median (1 = conserved)."""
        total = self.relevance.flatten(1).sum(1).double()
        f = self.score.double()
        ok = f.abs() > 1e-12
        ratio = total[ok] / f[ok] if bool(ok.any()) else torch.ones(1, dtype=torch.float64)
        return {
            "max_abs_error": float((total - f).abs().max()) if total.numel() else 0.0,
            "ratio_mean": float(ratio.mean()),
            "ratio_median": float(ratio.median()),
        }

    def to_dict(self) -> dict[str, Any]:
        counts = torch.bincount(self.assignments.cpu(), minlength=self.num_clusters).tolist()
        out: dict[str, Any] = {
            "clusters": self.clusters,
            "k": self.num_clusters,
            "k_choice": self.k_choice,
            "layer": self.layer,
            "n": int(self.assignments.numel()),
            "d": int(self.inputs[0].numel()) if self.inputs.numel() else 0,
            "beta": self.beta,
            "cluster_counts": counts,
            "mean_score": float(self.score.double().mean()),
            "assigned_fraction": float((self.score > 0).double().mean()),
            "conservation": self.conservation(),
            **{k: v for k, v in self.settings.items() if not k.startswith("_")},  # "_mean": arrays only
        }
        if self.features is not None:
            out["feature_dim"] = int(self.features.shape[1])
        if self.auc is not None:
            out["auc"] = {auc_key(m): v for m, v in self.auc.items()}
            best = max(self.auc, key=self.auc.__getitem__)
            out["best_method"] = auc_key(best)
            out["evaluation"] = dict(self.evaluation)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """What ``relevance.npz`` holds: relevance, inputs, assignments, f_c, centroids, β, …"""
        out = {
            "relevance": self.relevance.detach().float().cpu().numpy(),
            "inputs": self.inputs.detach().float().cpu().numpy(),
            "assignments": self.assignments.cpu().numpy(),
            "score": self.score.detach().double().cpu().numpy(),
            "centroids": self.centroids.detach().double().cpu().numpy(),
            "beta": np.asarray(self.beta),
        }
        if self.features is not None and self.feature_relevance is not None:
            out["features"] = self.features.detach().float().cpu().numpy()
            out["feature_relevance"] = self.feature_relevance.detach().float().cpu().numpy()
        for key in ("mean", "std"):
            val = self.settings.get(f"_{key}")
            if isinstance(val, torch.Tensor):
                out[key] = val.cpu().numpy()
        return out


def _evaluate(
    z: torch.Tensor,
    model: torch.Tensor | KernelKMeans,
    *,
    methods: Sequence[str] | None,
    imputation: str,
    repeats: int,
    seed: int,
    beta: float,
    steps: int | None,
    progress: Progress | None,
) -> tuple[dict[str, float], dict[str, Any]]:
    sigma = loo_sigma(z) if imputation == "kde" else None
    row = table_row(
        z, model, methods=methods, imputation=imputation, repeats=repeats, seed=seed, beta=beta,
        sigma=sigma, steps=steps, progress=progress,
    )
    info: dict[str, Any] = {
        "algorithm": "feature-adding AUC (Algorithm 1)", "imputation": imputation, "repeats": repeats,
        "n": int(z.shape[0]), "d": int(z.shape[1]), "seed": seed,
    }
    if sigma is not None:
        info["sigma"] = sigma
    if steps is not None:
        info["steps"] = steps
    return row, info


@small_work
def explain_data(
    x: torch.Tensor,
    k: int | None = None,
    *,
    standardize_features: bool = True,
    kernel: int = 0,
    beta: float | None = None,
    seed: int = 0,
    n_init: int = 10,
    kmax: int = 10,
    evaluate: bool = False,
    methods: Sequence[str] | None = None,
    repeats: int = 10,
    imputation: str = "kde",
    steps: int | None = None,
    progress: Progress | None = None,
) -> NeonRun:
    """Cluster ``x`` (N, ...) and explain every assignment with NEON (Secs. II–III).

    Parameters
    ----------
    x : (N, ...) inputs; each row is flattened to d features (images: one feature per pixel).
    k : number of clusters; ``None`` picks it by the elbow method over K = 1..``kmax``.
    standardize_features : standardise each feature first (Appendix H, Table I's protocol).
    kernel : M > 0 fits kernel k-means with M support vectors per cluster (Sec. III, App. F)
        instead of standard k-means.
    beta : stiffness of the min-take-most rule; default 1/E[f_c] over ``x`` (Eq. 3).
    evaluate : also score NEON and the baselines with Algorithm 1 (Table I).
    methods, repeats, imputation, steps : passed to :func:`~kmtools.explain.evaluate.table_row`.
    progress : ``progress(stage, done, total)``.
    """
    if x.dim() < 2 or x.shape[0] < 2:
        raise ConfigError("explain needs at least 2 inputs, each with at least one feature")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("the data hold NaN or Inf values: clean or impute them first")
    shape = tuple(x.shape[1:])
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    settings: dict[str, Any] = {"standardized": bool(standardize_features)}
    if standardize_features:
        z, mean, std = standardize(flat)
        settings["_mean"], settings["_std"] = mean, std
    else:
        z = flat
    k_choice = "given"
    if k is None:
        k, inertias = elbow(z, kmax, seed=seed, n_init=n_init)
        k_choice = "elbow"
        settings["inertias"] = inertias
    if not 2 <= k <= z.shape[0]:
        raise ConfigError(f"-k must be between 2 and the number of inputs ({z.shape[0]}), got {k}")
    if progress is not None:
        progress("clustering", 0, 1)
    model: torch.Tensor | KernelKMeans
    if kernel > 0:
        km = fit_kernel_kmeans(z, k, kernel, seed=seed)
        c = km.predict(z)
        b = float(beta) if beta is not None else km.stiffness(z)
        rel = kernel_neon(z, km, c, b)
        f = km.hidden(z, c).min(1).values
        centroids = km.support.to(torch.float64).mean(1)
        clusters = "kernel-kmeans"
        settings.update({"support_vectors": kernel, "kernel_gamma": km.gamma})
        model = km
    else:
        from kmtools.centroids import kmeans

        res = kmeans(z, k, n_init=n_init, seed=seed)
        centroids = res.centroids.to(torch.float64).cpu()
        c = assign(z, centroids)
        b = float(beta) if beta is not None else stiffness(z, centroids, c)
        rel = neon(z, centroids, c, b)
        f = competitor_scores(z, centroids, c).min(1).values
        clusters = "kmeans"
        settings["inertia"] = res.inertia
        model = centroids
    if progress is not None:
        progress("clustering", 1, 1)
    run = NeonRun(
        inputs=z.reshape(-1, *shape), relevance=rel.reshape(-1, *shape), assignments=c, score=f,
        centroids=centroids, beta=b, clusters=clusters, layer="input", k_choice=k_choice, settings=settings,
    )
    if evaluate:
        cb = None if progress is None else (lambda name, a, t: progress(f"AUC {name}", a, t))
        run.auc, run.evaluation = _evaluate(
            z, model, methods=methods, imputation=imputation, repeats=repeats, seed=seed, beta=b,
            steps=steps, progress=cb,
        )
    return run


def explain_network(
    model: nn.Module,
    x: torch.Tensor,
    fit_x: torch.Tensor | None = None,
    *,
    k: int | None = None,
    layer: str | None = None,
    centroids: torch.Tensor | None = None,
    gamma: float = 0.25,
    beta: float | None = None,
    seed: int = 0,
    n_init: int = 3,
    evaluate: bool = False,
    methods: Sequence[str] | None = None,
    repeats: int = 10,
    steps: int | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    engine: str = "auto",
) -> NeonRun:
    """NEON for the cluster assignments of a network layer (Sec. IV), relevance on ``x``'s pixels.

    The clusters: ``centroids`` if given; else the class centroids of a Gauss network
    (``model.head_kind == "gauss"``, penultimate layer, no ``k``); else k-means with ``k``
    clusters (default: the number of classes) on the activations of ``fit_x`` (default
    ``x``) at ``layer`` (a module name of ``model.backbone``; default the penultimate
    features). β = 1/E[f_c] over ``fit_x`` (Eq. 3). LRP-γ with ``gamma`` in convolutions.

    With ``evaluate``, Algorithm 1 scores NEON and the baselines at the cluster layer on
    the activations of ``fit_x`` with zero imputation (the paper's choice for deep
    activations, Sec. VII-A).

    ``engine``: the LRP engine, ``"auto"`` (:mod:`.fastlrp` when it covers every layer,
    else zennit), ``"fast"`` or ``"zennit"``; the one used is ``settings["lrp_engine"]``.
    """
    from kmtools.explain.deep import DeepNeonExplainer

    fit = x if fit_x is None else fit_x
    if centroids is not None:
        source, k_choice = "given", "given"
    elif getattr(model, "head_kind", None) == "gauss" and k is None and layer is None:
        source, k_choice = "gauss-centroids", "classes"
    else:
        source, k_choice = "kmeans", ("given" if k is not None else "classes")
    settings: dict[str, Any] = {"gamma": gamma}
    with DeepNeonExplainer(model, centroids, layer=layer, gamma=gamma, device=device, engine=engine) as ex:
        if progress is not None:
            progress("features", 0, 1)
        feats = ex.features(fit, batch_size)
        if progress is not None:
            progress("features", 1, 1)
        if source == "kmeans":
            from kmtools.centroids import kmeans

            kk = int(k) if k is not None else int(getattr(model, "num_classes", 0) or 0)
            if not 2 <= kk <= feats.shape[0]:
                raise ConfigError(
                    f"-k must be between 2 and the number of inputs clustered ({feats.shape[0]}), got {kk}"
                )
            res = kmeans(feats, kk, n_init=n_init, seed=seed)
            ex.set_centroids(res.centroids.to(feats.dtype))
            settings["inertia"] = res.inertia
        mu = ex._centroids()
        if mu.shape[1] != feats.shape[1]:
            raise ConfigError(f"the centroids have {mu.shape[1]} features but the layer has {feats.shape[1]}")
        b = float(beta) if beta is not None else stiffness(feats.double(), mu.double())
        cb = None if progress is None else (lambda a, t: progress("explain", a, t))
        out = ex.explain(x, beta=b, batch_size=batch_size, progress=cb)
        settings["first_rule"] = out.settings.get("first_rule")
        settings["lrp_engine"] = out.settings.get("lrp_engine")
        if ex.fallback_reason is not None:
            settings["lrp_fallback"] = ex.fallback_reason
        mu_out = mu.detach().cpu()
    run = NeonRun(
        inputs=x.detach().cpu(), relevance=out.relevance.cpu(), assignments=out.assignments.cpu(),
        score=out.score.cpu(), centroids=mu_out, beta=b, clusters=source, layer=layer or "penultimate",
        k_choice=k_choice, features=out.features.cpu(), feature_relevance=out.feature_relevance.cpu(),
        settings=settings,
    )
    if evaluate:
        cbe = None if progress is None else (lambda name, a, t: progress(f"AUC {name}", a, t))
        run.auc, run.evaluation = _evaluate(
            feats.double().cpu(), mu_out.double(), methods=methods, imputation="zero", repeats=repeats,
            seed=seed, beta=b, steps=steps, progress=cbe,
        )
        run.evaluation["layer"] = run.layer
    return run
