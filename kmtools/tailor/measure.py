"""After tailoring: γ fitted on validation data and the before/after benefit figures."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset

from kmtools.centroids import class_means
from kmtools.features import extract
from kmtools.models.core import GaussHead, KmModel
from kmtools.tailor import objective as obj
from kmtools.tailor.config import TailorConfig


@torch.no_grad()
def fit_gamma(model: KmModel, val: Dataset[Any], cfg: TailorConfig, device: torch.device, amp: bool) -> dict[str, Any]:
    """γ so that κ_pred < 1/c flags a share ``fpr`` of the validation inputs (or ``cfg.gamma``)."""
    head = model.head
    assert isinstance(head, GaussHead)
    c = head.num_classes
    trained = float(head.gamma)
    fe = extract(model, val, batch_size=max(cfg.batch_size, 256), device=device, amp=amp,
                 workers=cfg.workers)
    d = (head.sq_dist(fe.features.double().to(head.centroids.device)) + head.offsets.double()).min(1).values
    q = float(torch.quantile(d, 1 - cfg.fpr))
    fitted = math.log(c) / max(q, obj.EPS)
    gamma = cfg.gamma if cfg.gamma is not None else fitted
    head.gamma.fill_(gamma)
    flagged = float((torch.exp(-gamma * d) < 1.0 / c).double().mean())
    return {"gamma": gamma, "trained_gamma": trained, "fitted": cfg.gamma is None, "fpr_target": cfg.fpr,
            "threshold": 1.0 / c, "val_flagged_at_threshold": flagged,
            "meaning": f"with this γ the paper's rule κ_pred < 1/c = {1.0 / c:.3g} flags {flagged:.1%} of the "
                       f"validation inputs (in-distribution false-positive rate)"}



@torch.no_grad()
def benefit(softmax: KmModel, gauss: KmModel, val: Dataset[Any], device: torch.device, seed: int) -> dict[str, Any]:
    """Validation accuracy, noise-vs-validation AUROC and scale-free separation, before/after."""
    from sklearn.metrics import roc_auc_score

    n_noise = min(1000, len(val))  # type: ignore[arg-type]
    x0 = torch.as_tensor(val[0][0])
    noise = torch.rand((n_noise, *x0.shape), generator=torch.Generator().manual_seed(seed))
    out: dict[str, Any] = {"noise": {"n": n_noise, "kind": "uniform [0, 1] inputs"}}
    for name, m in (("softmax", softmax), ("gauss", gauss)):
        fv = extract(m, val, batch_size=256, device=device)
        fz = extract(m, torch.utils.data.TensorDataset(noise, torch.zeros(n_noise, dtype=torch.long)),
                     batch_size=256, device=device)
        c = m.num_classes
        extra: dict[str, Any] = {}
        if isinstance(m.head, GaussHead):
            sv, sz = (m.head.log_kappa(x.features.double()).max(1).values for x in (fv, fz))
            own = obj.geometry(fv.features, fv.labels, m.head.centroids.cpu(), m.head.offsets.cpu())
            extra = {"centroids_scatter_over_gap2": own.scatter_over_gap2}  # around the exported centroids
        else:
            sv, sz = (torch.log_softmax(x.scores.double(), 1).max(1).values for x in (fv, fz))
        auroc = float(roc_auc_score([1] * len(sv) + [0] * len(sz), torch.cat([sv, sz]).numpy()))
        # the features' own clustering (Algorithm 1's objective), around their validation class means
        g = obj.geometry(fv.features, fv.labels, class_means(fv.features.double(), fv.labels, c))
        out[name] = {"val_accuracy": float((fv.predictions == fv.labels).double().mean()),
                     "noise_auroc": auroc, **g.to_dict(), **extra}
    return out

