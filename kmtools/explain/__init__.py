"""NEON: explaining (k-means, kernel k-means, deep) cluster assignments.

Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks"
(``papers/neon-cluster-explanations.txt``). Everything here imports without zennit; the
deep explainer imports it when first used.

* :func:`neon`, :func:`neuralize`, :func:`stiffness` — Sec. II, Eqs. 1–4.
* :func:`fit_kernel_kmeans`, :func:`kernel_neon` — Sec. III, Appendix F.
* :func:`explain_deep`, :class:`DeepNeonExplainer` — Sec. IV with zennit LRP rules.
* :data:`METHODS` — NEON and the baselines of Sec. VII.
* :func:`feature_adding_auc`, :func:`table_row` — Algorithm 1 and Table I.
* :class:`KDE`, :func:`loo_sigma` — Appendix G's kernel density and its conditionals.
* :func:`explain_data`, :func:`explain_network` — whole runs (what ``kmtools explain`` calls).
"""

from kmtools.explain.api import (
    TABLE_I_WINER,
    NeonRun,
    auc_key,
    elbow,
    explain_data,
    explain_network,
    standardize,
)
from kmtools.explain.baselines import BASELINES, METHODS
from kmtools.explain.deep import DeepExplanation, DeepNeonExplainer, explain_deep
from kmtools.explain.evaluate import feature_adding_auc, feature_adding_curves, table_row
from kmtools.explain.kde import KDE, loo_sigma
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
    "TABLE_I_WINER",
    "ClusterModel",
    "DeepExplanation",
    "DeepNeonExplainer",
    "KMeansModel",
    "KernelKMeans",
    "NeonRun",
    "NeuralizedKMeans",
    "assign",
    "auc_key",
    "cluster_score",
    "elbow",
    "explain_data",
    "explain_deep",
    "explain_network",
    "feature_adding_auc",
    "feature_adding_curves",
    "fit_kernel_kmeans",
    "kernel_neon",
    "loo_sigma",
    "min_take_most",
    "neon",
    "neuralize",
    "standardize",
    "stiffness",
    "table_row",
]
