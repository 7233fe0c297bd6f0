"""Out-of-distribution scores and calibration, the field's post-hoc baselines beside κ.

Scores (higher = more in-distribution), all from one network's penultimate features f(x)
and its linear head (W, b), so a Gauss network's κ is compared with what the *original*
softmax network already offers without any training:

* ``msp`` – maximum softmax probability (Hendrycks & Gimpel 2017), as log max p in float64
  so saturated probabilities do not tie;
* ``max_logit`` – max_k z_k (Hendrycks et al. 2022);
* ``energy`` – logsumexp_k z_k, the negative free energy at T = 1 (Liu et al. 2020);
* ``mahalanobis`` – -min_k (f - μ_k)ᵀ Σ⁻¹ (f - μ_k) with class means μ_k and the tied
  (pooled, maximum-likelihood) covariance Σ of the training features (Lee et al. 2018,
  without input preprocessing or layer ensembles);
* ``knn`` – minus the distance of f/‖f‖ to its k-th nearest normalised training feature
  (Sun et al. 2022);
* ``kappa`` – a Gauss network's max_k log κ_k = -γ min_k ‖f - C_k‖².

Metrics: AUROC, AUPR-in (in-distribution positive), AUPR-out (OOD positive, score negated),
FPR at 95% TPR; AUROC and AUPRs with percentile-bootstrap intervals (:func:`kmtools.stats.bootstrap`).
Calibration of a probability vector: ECE (equal-width bins on the predicted-class
probability) with its reliability diagram, NLL and the Brier score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kmtools.errors import ConfigError, DataError
from kmtools.stats import auroc, bootstrap, fpr_at_tpr

__all__ = [
    "SCORES",
    "Calibration",
    "MatchShape",
    "OODReport",
    "OODScorer",
    "aupr",
    "auroc_difference",
    "baseline_reports",
    "best_baseline",
    "calibration",
    "convert_image",
    "energy_score",
    "fit_scorer",
    "knn_score",
    "log_msp",
    "mahalanobis_score",
    "ood_baselines",
    "ood_metrics",
    "ood_table",
]

SCORES = ("msp", "max_logit", "energy", "mahalanobis", "knn", "kappa")


# ----------------------------------------------------------------------------- metrics
def aupr(positive: Any, negative: Any) -> float:
    """Average precision with ``positive`` as the positive class (higher score = positive):
    Σ_n (R_n - R_{n-1}) P_n over the distinct score thresholds, as
    ``sklearn.metrics.average_precision_score``."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise DataError("AUPR needs at least one positive and one negative score")
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # end of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(score_in: Any, score_out: Any, *, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """AUROC, AUPR-in, AUPR-out (each with ``_lo``/``_hi`` 95% bootstrap bounds) and FPR@95
    (``fpr95``) for in-distribution scores ``score_in`` against OOD scores ``score_out``
    (higher = more in-distribution). ``n_boot=0`` skips the intervals."""
    si = np.asarray(score_in, dtype=np.float64).ravel()
    so = np.asarray(score_out, dtype=np.float64).ravel()
    if not (np.isfinite(si).all() and np.isfinite(so).all()):
        raise DataError("OOD scores contain NaN or infinity")
    s = np.concatenate([si, so])
    is_in = np.concatenate([np.ones(si.size, bool), np.zeros(so.size, bool)])

    def split(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
        def stat(sc: np.ndarray, lab: np.ndarray) -> float:
            if lab.all() or not lab.any():
                raise ValueError("one class only")
            return fn(sc[lab], sc[~lab])

        return stat

    stats = {
        "auroc": split(auroc),
        "aupr_in": split(aupr),
        "aupr_out": split(lambda a, b: aupr(-b, -a)),
    }
    out: dict[str, Any] = {"n_in": int(si.size), "n_out": int(so.size)}
    for name, fn in stats.items():
        if n_boot:
            v, lo, hi = bootstrap(fn, s, is_in, n_boot=n_boot, seed=seed)
        else:
            v, lo, hi = fn(s, is_in), None, None
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = v, lo, hi
    out["fpr95"] = fpr_at_tpr(si, so, 0.95)
    return out


@dataclass
class Calibration:
    """ECE over ``bins`` equal-width bins of the predicted-class probability, NLL, Brier,
    and the reliability diagram (per bin: mean confidence, accuracy, count)."""

    ece: float
    ece_lo: float | None
    ece_hi: float | None
    nll: float
    brier: float
    bins: int
    bin_confidence: list[float | None] = field(default_factory=list)
    bin_accuracy: list[float | None] = field(default_factory=list)
    bin_count: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ece": self.ece, "ece_lo": self.ece_lo, "ece_hi": self.ece_hi, "nll": self.nll, "brier": self.brier,
            "bins": self.bins,
            "reliability": {"confidence": self.bin_confidence, "accuracy": self.bin_accuracy,
                            "count": self.bin_count},
        }


def _ece(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)  # bins (i/B, (i+1)/B]
    tot = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            tot += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(tot / conf.size)


def calibration(probs: Any, labels: Any, *, bins: int = 15, n_boot: int = 200, seed: int = 0) -> Calibration:
    """Calibration of class probabilities ``probs`` (N, c), rows summing to 1, against ``labels``.

    ECE = Σ_b |B_b|/N · |acc(B_b) - conf(B_b)| with bins (i/B, (i+1)/B] of the predicted-class
    probability (Guo et al. 2017); NLL = -mean log p_y; Brier = mean Σ_k (p_k - 1[k = y])².
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.size or p.shape[0] == 0:
        raise DataError(f"calibration needs probabilities (N, c) and N labels, got {p.shape} and {y.size}")
    if bins < 1:
        raise ConfigError("bins must be at least 1")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    ece, lo, hi = (bootstrap(lambda c, k: _ece(c, k, bins), conf, correct, n_boot=n_boot, seed=seed)
                   if n_boot else (_ece(conf, correct, bins), None, None))
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    bc: list[float | None] = []
    ba: list[float | None] = []
    cnt: list[int] = []
    for b in range(bins):
        m = idx == b
        cnt.append(int(m.sum()))
        bc.append(float(conf[m].mean()) if m.any() else None)
        ba.append(float(correct[m].mean()) if m.any() else None)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    nll = float(-np.log(np.clip(p[np.arange(y.size), y], 1e-300, None)).mean())
    brier = float(((p - onehot) ** 2).sum(1).mean())
    return Calibration(ece, lo, hi, nll, brier, bins, bc, ba, cnt)


# ----------------------------------------------------------------------------- scores
def log_msp(logits: torch.Tensor) -> torch.Tensor:
    """log max_k softmax(z)_k in float64 without rounding to 0 when it saturates:
    -softplus(logsumexp_{k≠top}(z_k - z_top)), which keeps e^-40 apart from e^-60."""
    z = logits.double()
    top = z.argmax(1, keepdim=True)
    rest = (z - z.gather(1, top)).scatter(1, top, float("-inf"))
    return -nn.functional.softplus(torch.logsumexp(rest, dim=1))


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp_k z_k (float64): the negative free energy at temperature 1."""
    return torch.logsumexp(logits.double(), dim=1)


def mahalanobis_score(f: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """-min_k (f - μ_k)ᵀ P (f - μ_k), float64, for features (N, d), means (c, d), P (d, d)."""
    f = f.double()
    mu = means.double()
    pr = precision.double()
    fp = f @ pr
    quad = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ pr) * mu).sum(1)[None]
    return -quad.min(1).values


def knn_score(f: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """-‖f/‖f‖ - b_(k)‖ with b_(k) the k-th nearest row of ``bank`` (already normalised)."""
    fn = nn.functional.normalize(f.double(), dim=1)
    out = []
    for s in range(0, fn.shape[0], chunk):
        d = torch.cdist(fn[s : s + chunk], bank.double())
        out.append(-d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@dataclass
class OODScorer:
    """Everything the post-hoc scores need from a softmax network: its head (W, b), class
    means and tied precision of the training features, and the normalised training bank."""

    weight: torch.Tensor
    bias: torch.Tensor
    means: torch.Tensor
    precision: torch.Tensor
    bank: torch.Tensor
    k: int

    def scores(self, f: torch.Tensor) -> dict[str, np.ndarray]:
        """``{msp, max_logit, energy, mahalanobis, knn}`` for features ``f`` (float64 arrays)."""
        f64 = f.double()
        z = f64 @ self.weight.double().T + self.bias.double()
        return {
            "msp": log_msp(z).numpy(),
            "max_logit": z.amax(1).numpy(),
            "energy": energy_score(z).numpy(),
            "mahalanobis": mahalanobis_score(f64, self.means, self.precision).numpy(),
            "knn": knn_score(f64, self.bank, self.k).numpy(),
        }


def fit_scorer(head: nn.Module, train_features: torch.Tensor, train_labels: torch.Tensor, *,
               k: int = 50, means: torch.Tensor | None = None, ridge: float = 1e-6) -> OODScorer:
    """Fit the post-hoc scores on training features of a softmax network.

    ``means``: class means (default: computed, as :func:`kmtools.centroids.class_means`);
    Σ = (1/N) Σ_i (f_i - μ_{y_i})(f_i - μ_{y_i})ᵀ, inverted with a ridge of ``ridge`` · tr(Σ)/d
    (pseudo-inverse behaviour for rank-deficient features). ``k`` is capped at N.
    """
    if not isinstance(head, nn.Linear):
        raise ConfigError("the post-hoc OOD baselines need the original network's linear (softmax) head")
    f = train_features.detach().double().cpu()
    y = train_labels.long().cpu()
    c = int(head.out_features)
    if f.shape[0] < 2:
        raise DataError("fitting the OOD baselines needs at least 2 training inputs")
    if means is None:
        from kmtools.centroids import class_means

        means = class_means(f, y, c)
    mu = means.double().cpu()
    r = f - mu[y]
    cov = r.T @ r / f.shape[0]
    d = cov.shape[0]
    cov = cov + ridge * float(torch.trace(cov)) / d * torch.eye(d, dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    bank = nn.functional.normalize(f, dim=1)
    b = head.bias if head.bias is not None else torch.zeros(c)
    return OODScorer(head.weight.detach().double().cpu(), b.detach().double().cpu(), mu, precision, bank,
                     max(1, min(int(k), f.shape[0])))


def ood_table(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray], *,
              n_boot: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`ood_metrics` for every score present in both dicts, in :data:`SCORES` order."""
    names = [s for s in SCORES if s in scores_in and s in scores_out]
    names += [s for s in scores_in if s in scores_out and s not in names]
    return {s: ood_metrics(scores_in[s], scores_out[s], n_boot=n_boot, seed=seed) for s in names}


def auroc_difference(a_in: Any, a_out: Any, b_in: Any, b_out: Any, *, n_boot: int = 200,
                     seed: int = 0) -> dict[str, Any]:
    """AUROC(b) − AUROC(a) for two scores of the *same* inputs, with a paired percentile-
    bootstrap interval: each resample draws in-distribution and OOD inputs (stratified, so
    both groups keep their sizes) and scores both AUROCs on that one resample."""
    ai, ao = np.asarray(a_in, np.float64).ravel(), np.asarray(a_out, np.float64).ravel()
    bi, bo = np.asarray(b_in, np.float64).ravel(), np.asarray(b_out, np.float64).ravel()
    if ai.shape != bi.shape or ao.shape != bo.shape:
        raise DataError("a paired AUROC difference needs both scores on the same inputs")
    diff = auroc(bi, bo) - auroc(ai, ao)
    lo = hi = None
    if n_boot and ai.size > 1 and ao.size > 1:
        rng = np.random.default_rng(seed)
        vals = np.empty(n_boot)
        for t in range(n_boot):
            ii, oo = rng.integers(0, ai.size, ai.size), rng.integers(0, ao.size, ao.size)
            vals[t] = auroc(bi[ii], bo[oo]) - auroc(ai[ii], ao[oo])
        lo, hi = float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))
    return {"diff": float(diff), "diff_lo": lo, "diff_hi": hi, "n_in": int(ai.size), "n_out": int(ao.size)}


def best_baseline(table: dict[str, dict[str, Any]], exclude: Sequence[str] = ("kappa",)) -> str | None:
    """The post-hoc score with the highest AUROC (``kappa`` excluded)."""
    cand = [(v["auroc"], k) for k, v in table.items() if k not in exclude and math.isfinite(v["auroc"])]
    return max(cand)[1] if cand else None


# ----------------------------------------------------------------------------- models
class MatchShape(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A dataset's images converted to ``shape`` (C, H, W): grey ↔ RGB (channel repeat or
    ITU-R 601 luma) and bilinear resizing, for OOD pairs such as Fashion-MNIST vs digits
    (8×8 upscaled to 28×28) or CIFAR-10 vs Fashion-MNIST (as RGB 32×32). Labels pass through."""

    def __init__(self, data: Any, shape: Sequence[int]) -> None:
        self.data = data
        self.shape = tuple(int(s) for s in shape)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        x, y = self.data[i]
        return convert_image(torch.as_tensor(x).float(), self.shape), y


def convert_image(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """One image (C, H, W) in [0, 1] to ``shape``: channels first, then bilinear size."""
    c, h, w = (int(s) for s in shape)
    if x.dim() != 3:
        raise DataError(f"OOD images must be (C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] != c:
        if x.shape[0] == 1:
            x = x.expand(c, *x.shape[1:])
        elif c == 1 and x.shape[0] == 3:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        else:
            raise DataError(f"cannot convert {x.shape[0]} channels to {c}")
    if tuple(x.shape[1:]) != (h, w):
        x = nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return x.clamp(0, 1)


@dataclass
class OODReport:
    """Side-by-side OOD metrics of the post-hoc scores (and κ) and calibration per model;
    ``kappa_vs_best``: κ's AUROC minus the best post-hoc baseline's, paired bootstrap interval."""

    table: dict[str, dict[str, Any]]
    calibration: dict[str, Calibration]
    source: str
    n_train: int
    knn_k: int
    kappa_vs_best: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "n_train": self.n_train, "knn_k": self.knn_k,
            "scores": self.table, "best_baseline": best_baseline(self.table),
            "kappa_vs_best": self.kappa_vs_best,
            "calibration": {k: v.to_dict() for k, v in self.calibration.items()},
        }


def _features(model: nn.Module, data: Any, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    from kmtools.features import extract

    feats = extract(model, data, batch_size=batch_size, device=device)  # type: ignore[arg-type]
    return feats.features, feats.labels


def _probs(head: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """Normalised class probabilities: softmax of logits, or κ normalised (softmax of log κ)."""
    lk = getattr(head, "log_kappa", None)
    with torch.no_grad():
        if callable(lk):
            s = lk(f.double())
        elif isinstance(head, nn.Linear):
            b = None if head.bias is None else head.bias.double()
            s = nn.functional.linear(f.double(), head.weight.double(), b)
        else:
            raise ConfigError(f"no class probabilities known for a {type(head).__name__} head")
    return torch.softmax(s.double(), 1)


def ood_baselines(
    model: nn.Module, train: Any, data: Any, ood: Any, *, gauss: nn.Module | None = None, source: str = "ood",
    k: int = 50, batch_size: int = 256, device: str | torch.device | None = None, n_boot: int = 200,
    seed: int = 0, bins: int = 15,
) -> OODReport:
    """Score ``data`` (in-distribution) and ``ood`` with the post-hoc baselines of the softmax
    ``model`` (fitted on ``train``: class means, tied covariance, k-NN bank) and, with
    ``gauss``, the Gauss network's κ, on the same inputs; calibration of both on ``data``."""
    return baseline_reports(model, train, data, {source: ood}, gauss=gauss, k=k, batch_size=batch_size,
                            device=device, n_boot=n_boot, seed=seed, bins=bins)[source]


def baseline_reports(
    model: nn.Module, train: Any, data: Any, sources: dict[str, Any], *, gauss: nn.Module | None = None,
    k: int = 50, batch_size: int = 256, device: str | torch.device | None = None, n_boot: int = 200,
    seed: int = 0, bins: int = 15,
) -> dict[str, OODReport]:
    """:func:`ood_baselines` for several OOD datasets (``{name: dataset}``) against one
    in-distribution set: the scorer is fitted once and ``data`` is scored once."""
    import copy

    from kmtools.device import resolve

    dev = resolve(device) if device is not None else torch.device("cpu")
    head: Any = copy.deepcopy(model.head).cpu()
    if not isinstance(head, nn.Linear):
        raise ConfigError("the post-hoc OOD baselines need the original network's linear (softmax) head")
    ftr, ytr = _features(model, train, batch_size, dev)
    scorer = fit_scorer(head, ftr.cpu(), ytr, k=k)
    fin, yin = _features(model, data, batch_size, dev)
    s_in = scorer.scores(fin.cpu())
    cal = {"softmax": calibration(_probs(head, fin.cpu()).numpy(), yin.numpy(), bins=bins, n_boot=n_boot,
                                  seed=seed)}
    gh: Any = None
    if gauss is not None:
        gh = copy.deepcopy(gauss.head).cpu()
        if not callable(getattr(gh, "log_kappa", None)):
            raise ConfigError("--compare must be a Gauss network (a head with log κ) for the κ column")
        gin, gyin = _features(gauss, data, batch_size, dev)
        with torch.no_grad():
            s_in["kappa"] = gh.log_kappa(gin.double().cpu()).amax(1).numpy()
        cal["gauss"] = calibration(_probs(gh, gin.cpu()).numpy(), gyin.numpy(), bins=bins, n_boot=n_boot,
                                   seed=seed)
    out: dict[str, OODReport] = {}
    for name, ood in sources.items():
        fout, _ = _features(model, ood, batch_size, dev)
        s_out = scorer.scores(fout.cpu())
        if gh is not None and gauss is not None:
            gout, _ = _features(gauss, ood, batch_size, dev)
            with torch.no_grad():
                s_out["kappa"] = gh.log_kappa(gout.double().cpu()).amax(1).numpy()
        table = ood_table(s_in, s_out, n_boot=n_boot, seed=seed)
        best = best_baseline(table)
        vs = None
        if "kappa" in table and best is not None:
            vs = {"baseline": best, **auroc_difference(s_in[best], s_out[best], s_in["kappa"], s_out["kappa"],
                                                       n_boot=n_boot, seed=seed)}
        out[name] = OODReport(table, cal, name, int(ftr.shape[0]), scorer.k, vs)
    return out
