"""NEON: explaining (k-means, kernel k-means, deep) cluster assignments.

Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). Everything here imports without zennit; the
deep explainer imports it when first used.

* :func:`neon`, :func:`neuralize`, :func:`stiffness` — Sec. II, Eqs. 1–4.
* :func:`fit_kernel_kmeans`, :func:`kernel_neon` — Sec. III, Appendix F.
* :func:`explain_deep`, :class:`DeepNeonExplainer` — Sec. IV with zennit LRP rules.
* :data:`METHODS` — NEON and the baselines of Sec. VII.
* :func:`feature_adding_auc`, :func:`table_row` — Algorithm 1 and Table I.
"""

from kmtools.explain.baselines import BASELINES, METHODS
from kmtools.explain.deep import DeepExplanation, DeepNeonExplainer, explain_deep
from kmtools.explain.evaluate import KDE, feature_adding_auc, feature_adding_curves, loo_sigma, table_row
from kmtools.explain.kernel import KernelKMeans, fit_kernel_kmeans, kernel_neon
from kmtools.explain.neon import (
    ClusterModel,
    KMeansModel,
    NeuralizedKMeans,
    assign,
    cluster_score,
    min_take_most,
    neon,
    neuralize,
    stiffness,
)


__all__ = [
    "BASELINES",
    "KDE",
    "METHODS",
    "ClusterModel",
    "DeepExplanation",
    "DeepNeonExplainer",
    "KMeansModel",
    "KernelKMeans",
    "NeuralizedKMeans",
    "assign",
    "cluster_score",
    "explain_deep",
    "feature_adding_auc",
    "feature_adding_curves",
    "fit_kernel_kmeans",
    "kernel_neon",
    "loo_sigma",
    "min_take_most",
    "neon",
    "neuralize",
    "stiffness",
    "table_row",
]
