"""OOD baselines and calibration against references: sklearn (AUROC, AUPR, ROC, log loss),
NumPy (Mahalanobis with a tied covariance, brute-force k-NN, ECE), scipy (logsumexp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import TensorDataset

from kmtools.models.core import GaussHead, KmModel
from kmtools.ood import (
    aupr,
    calibration,
    convert_image,
    energy_score,
    fit_scorer,
    knn_score,
    mahalanobis_score,
    ood_baselines,
    ood_metrics,
)


def _scores(seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.2, 200)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return a, b


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_sklearn(ties: bool) -> None:
    si, so = _scores(ties=ties)
    y = np.r_[np.ones(si.size), np.zeros(so.size)]
    s = np.r_[si, so]
    assert aupr(si, so) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    m = ood_metrics(si, so, n_boot=100)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    for key in ("auroc", "aupr_in", "aupr_out"):
        assert m[f"{key}_lo"] < m[key] < m[f"{key}_hi"]
    assert ood_metrics(si, so, n_boot=0)["auroc_lo"] is None


def test_mahalanobis_and_knn_match_numpy() -> None:
    rng = np.random.default_rng(1)
    c, d = 3, 5
    mu = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c, 400)
    f = mu[y] + rng.normal(0, 1, (400, d)) @ rng.normal(0, 1, (d, d))
    head = nn.Linear(d, c)
    sc = fit_scorer(head, torch.tensor(f), torch.tensor(y), k=7, ridge=0.0)
    means = np.stack([f[y == k].mean(0) for k in range(c)])
    r = f - means[y]
    prec = np.linalg.inv(r.T @ r / len(f))
    q = rng.normal(0, 3, (50, d))
    ref = -np.min([np.einsum("nd,de,ne->n", q - means[k], prec, q - means[k]) for k in range(c)], axis=0)
    got = mahalanobis_score(torch.tensor(q), sc.means, sc.precision).numpy()
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-9)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dist = np.linalg.norm(qn[:, None] - fn[None], axis=2)
    assert np.allclose(knn_score(torch.tensor(q), sc.bank, 7).numpy(), -np.sort(dist, 1)[:, 6], atol=1e-12)
    z = rng.normal(0, 5, (20, c))
    assert np.allclose(energy_score(torch.tensor(z)).numpy(), logsumexp(z, axis=1))
    s = sc.scores(torch.tensor(q))
    logits = q @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    assert np.allclose(s["max_logit"], logits.max(1))
    assert np.allclose(np.exp(s["msp"]), (np.exp(logits - logsumexp(logits, 1, keepdims=True))).max(1))


def test_msp_does_not_tie_when_softmax_saturates() -> None:
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [0.0]]))
        head.bias.zero_()
    sc = fit_scorer(head, torch.randn(10, 1), torch.randint(0, 2, (10,)), k=2)
    f = torch.tensor([[40.0], [60.0]])
    assert torch.softmax(head(f), 1).amax(1).tolist() == [1.0, 1.0]  # float32 ties
    msp = sc.scores(f)["msp"]
    assert msp[1] > msp[0]


def test_calibration_matches_references() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (500, 4))
    p = np.exp(logits - logsumexp(logits, 1, keepdims=True))
    y = np.array([rng.choice(4, p=row) for row in p])
    cal = calibration(p, y, bins=10, n_boot=50)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for b in range(10):
        m = (conf > b / 10) & (conf <= (b + 1) / 10)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    assert cal.ece == pytest.approx(ece, abs=1e-12)
    assert cal.nll == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-9)
    assert cal.brier == pytest.approx(((p - np.eye(4)[y]) ** 2).sum(1).mean(), rel=1e-12)
    assert sum(cal.bin_count) == 500
    assert cal.ece_lo is not None and cal.ece_hi is not None and cal.ece_lo <= cal.ece <= cal.ece_hi
    # perfectly calibrated-by-construction probabilities: sampling labels from p gives a small ECE
    assert cal.ece < 0.08


def test_convert_image_and_end_to_end_baselines() -> None:
    grey = torch.rand(1, 8, 8)
    rgb = convert_image(grey, (3, 32, 32))
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[1])
    assert convert_image(torch.rand(3, 5, 5), (1, 5, 5)).shape == (1, 5, 5)
    torch.manual_seed(0)
    d_in, c = 6, 3
    means = torch.randn(c, d_in) * 3
    ytr = torch.randint(0, c, (300,))
    xtr = means[ytr] + torch.randn(300, d_in) * 0.5
    backbone = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh())
    head = nn.Linear(8, c)
    model = KmModel(backbone, head, input_shape=(d_in,))
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        f = model.features(xtr)
    cents = torch.stack([f[ytr == k].mean(0) for k in range(c)])
    gauss = KmModel(backbone, GaussHead(cents), input_shape=(d_in,)).eval()
    yte = torch.randint(0, c, (100,))
    te = TensorDataset(means[yte] + torch.randn(100, d_in) * 0.5, yte)
    far = TensorDataset(torch.randn(100, d_in) * 0.5 + 8.0, torch.zeros(100, dtype=torch.long))
    rep = ood_baselines(model, TensorDataset(xtr, ytr), te, far, gauss=gauss, source="far", k=5, n_boot=20)
    d = rep.to_dict()
    assert list(d["scores"]) == ["msp", "max_logit", "energy", "mahalanobis", "knn", "kappa"]
    assert d["scores"]["mahalanobis"]["auroc"] > 0.95
    with torch.no_grad():  # κ column: max log κ of the Gauss network on the same inputs
        k_in = torch.log(gauss(te.tensors[0]).double()).amax(1).numpy()
        k_out = torch.log(gauss(far.tensors[0]).double()).amax(1).numpy()
    y = np.r_[np.ones(100), np.zeros(100)]
    assert d["scores"]["kappa"]["auroc"] == pytest.approx(roc_auc_score(y, np.r_[k_in, k_out]), abs=1e-9)
    assert set(d["calibration"]) == {"softmax", "gauss"} and d["best_baseline"] in d["scores"]
