"""Property-based tests (hypothesis) for option parsing and the numeric core (issue 10, item 2).

* CLI option helpers (``floats``, ``ints``) and ``--gate`` expressions: any text parses or
  raises the documented KmtoolsError subclass, never anything else.
* Theorem 1 ("Softmax is k-means"): the equidistant centroids Z = W̃ + v of any linear head
  with d + 1 ≥ c - 1 have equal norms, and the nearest centroid is the argmax on every input.
* Gauss confidence κ = exp(-γ‖f - C‖²) lies in (0, 1] (and in [0, 1] after float underflow),
  equals 1 exactly at a centroid, and its argmax is the nearest centroid.
* NEON (Kauffmann et al., Sec. II-B): relevance is conserved, Σ_i R_i = f_c(x), for the
  midpoint rule and any root point, for the nearest cluster and for a "why not k?" cluster.

Example counts are small so the file runs in a few seconds; hypothesis's database replays
any failure it found before.
"""

from __future__ import annotations

import math
import string

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from kmtools.centroids import augment, class_means, equidistant, nearest
from kmtools.errors import ConfigError, GateError
from kmtools.explain.neon import cluster_score, competitor_scores, min_take_most, neon, stiffness
from kmtools.models.core import GaussHead
from kmtools.report import gates
from kmtools_cli._common import floats, ints

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------- option parsing
@FAST
@given(st.lists(finite, min_size=1, max_size=6))
def test_floats_round_trip(vals: list[float]) -> None:
    assert floats(",".join(repr(v) for v in vals), "--mean") == vals
    assert floats(", ".join(repr(v) for v in vals), "--mean") == vals


@FAST
@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=4))
def test_ints_round_trip(vals: list[int]) -> None:
    assert ints(",".join(map(str, vals)), "--input-shape") == vals
    assert ints(",".join(f"{v}.0" for v in vals), "--input-shape") == vals


_OPTION_TEXT = st.text(alphabet=string.digits + ".,-+eEinfatxX_ \t", max_size=20)


@settings(max_examples=150, deadline=None)
@given(_OPTION_TEXT)
def test_floats_and_ints_never_crash(text: str) -> None:
    for fn in (floats, ints):
        try:
            out = fn(text, "--opt")
        except ConfigError as exc:
            assert "--opt" in str(exc)
            continue
        assert out is not None
        assert all(math.isfinite(v) for v in out)
        if fn is ints:
            assert all(isinstance(v, int) for v in out)


@pytest.mark.parametrize("text", ["nan", "1,inf", "-inf", "1e400", "3.5,32,32"])
def test_non_finite_and_fractional_values_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        ints(text, "--input-shape")
    if "." not in text:
        with pytest.raises(ConfigError, match="finite"):
            floats(text, "--mean")


_DOC = {"results": {"accuracy": 0.9, "softmax": {"accuracy": 0.8, "rate": 0.25},
                    "fgsm": {"accuracy": [0.9, 0.5, 0.1]}}, "seed": 0, "timings": {"total": 1.5}}
_PATHS = ["accuracy", "softmax.accuracy", "softmax.rate", "results.accuracy", "seed", "fgsm.accuracy[0]",
          "fgsm.accuracy[-1]", "timings.total"]
_GATE_TEXT = st.text(alphabet=string.ascii_letters[:6] + string.digits + "._<>=!+-*/()[] '\"\\\x00eE", max_size=30)


@settings(max_examples=200, deadline=None)
@given(_GATE_TEXT)
def test_any_gate_text_parses_or_is_a_gate_error(text: str) -> None:
    try:
        tree = gates.parse(text)
    except GateError:
        return
    try:
        res = gates.evaluate(text, _DOC)
    except GateError:
        return
    assert isinstance(res.passed, bool)
    assert tree is not None


@FAST
@given(st.sampled_from(_PATHS), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), finite)
def test_well_formed_gates_compare_like_python(path: str, op: str, bound: float) -> None:
    res = gates.evaluate(f"{path} {op} {bound!r}", _DOC)
    value = {"accuracy": 0.9, "softmax.accuracy": 0.8, "softmax.rate": 0.25, "results.accuracy": 0.9,
             "seed": 0.0, "fgsm.accuracy[0]": 0.9, "fgsm.accuracy[-1]": 0.1, "timings.total": 1.5}[path]
    expected = {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound,
                "==": value == bound, "!=": value != bound}[op]
    assert res.passed is expected and res.value == value and res.bound == bound


@pytest.mark.parametrize(
    "expr",
    ["accuracy > 1" + "0" * 400,
     "accuracy > " + "9" * 5000, "fgsm.accuracy[99999999999999999999] > 0",
     "accuracy > (" * 60 + "1" + ")" * 60, "__import__('os').system('true') > 0", "accuracy > 1 if 1 else 0",
     "accuracy >= 1/0", "accuracy\x00 > 1"],
)
def test_hostile_gates_never_crash(expr: str) -> None:
    try:
        res = gates.evaluate(expr, _DOC)
    except GateError:
        return
    assert isinstance(res.passed, bool)


# --------------------------------------------------------------------------- Theorem 1
@st.composite
def linear_heads(draw: st.DrawFn) -> tuple[nn.Linear, torch.Tensor]:
    c = draw(st.integers(2, 8))
    d = draw(st.integers(max(1, c - 2), 12))  # Theorem 1 needs d + 1 >= c - 1
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    bias = draw(st.booleans()) if d >= c - 1 else True  # without a bias the rank needs d >= c - 1
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(d, c, bias=bias).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64) * scale)
        if bias:
            head.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * scale)
    f = torch.randn(64, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    return head, f


@MEDIUM
@given(linear_heads())
def test_theorem1_equidistant_centroids_reproduce_argmax(case: tuple[nn.Linear, torch.Tensor]) -> None:
    head, f = case
    eq = equidistant(head)
    norms = eq.centroids.norm(dim=1)
    assert float(norms.max() - norms.min()) <= 1e-7 * max(1.0, float(norms.max()))
    logits = head(f).detach()
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-7 * (1.0 + logits.abs().max(1).values)  # skip exact near-ties
    pred_nc = nearest(augment(f), eq.centroids)
    assert torch.equal(pred_nc[clear], logits.argmax(1)[clear])
    # and the squared distances are the logits up to a per-input constant (proof of Thm. 1)
    d2 = torch.cdist(augment(f), eq.centroids) ** 2
    gap = (-0.5 * d2) - logits
    assert torch.allclose(gap, gap[:, :1].expand_as(gap), atol=1e-6 * (1.0 + float(d2.abs().max())))


@FAST
@given(st.integers(3, 10), st.integers(0, 2**31 - 1))
def test_theorem1_refuses_too_few_features(c: int, seed: int) -> None:
    d = c - 3  # d + 1 < c - 1
    assume(d >= 1)
    head = nn.Linear(d, c)
    with pytest.raises(ConfigError, match="Theorem 1"):
        equidistant(head)


def test_theorem1_rank_deficient_head_is_refused() -> None:
    head = nn.Linear(1, 3, bias=False)  # W̃_1 - W̃_l span 1 dimension; 2 are needed
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [2.0], [-3.0]]))
    with pytest.raises(ConfigError):
        equidistant(head)


@FAST
@given(st.integers(2, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_class_means_are_means(c: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.arange(c), torch.randint(c, (20,), generator=g)])
    f = torch.randn(len(y), d, generator=g, dtype=torch.float64)
    cm = class_means(f, y, c)
    for k in range(c):
        assert torch.allclose(cm[k], f[y == k].mean(0))


# --------------------------------------------------------------------------- κ
@MEDIUM
@given(st.integers(1, 6), st.integers(1, 10), st.integers(0, 2**31 - 1),
       st.floats(min_value=1e-3, max_value=10.0), st.sampled_from([0.1, 1.0, 5.0]))
def test_gauss_confidence_is_in_unit_interval(c: int, d: int, seed: int, gamma: float, spread: float) -> None:
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(c, d, generator=g) * spread
    head = GaussHead(centroids, gamma=gamma)
    f = torch.cat([torch.randn(32, d, generator=g) * spread * 2, centroids])
    kappa = head(f)
    assert bool(((kappa >= 0) & (kappa <= 1)).all())
    d2 = head.sq_dist(f)
    assert bool((kappa[gamma * d2 < 60] > 0).all())  # strictly positive until float32 underflow
    assert torch.equal(kappa[-c:].diagonal(), torch.ones(c))  # κ_k = 1 exactly at C_k
    far = kappa.max(1).values > 0  # where something is representable, argmax κ = nearest centroid
    assert torch.equal(kappa[far].argmax(1), d2[far].argmin(1))
    assert bool((head.log_kappa(f) <= 0).all()) and bool(torch.isfinite(head.log_kappa(f)).all())


# --------------------------------------------------------------------------- NEON conservation
@st.composite
def clusterings(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    k = draw(st.integers(2, 6))
    d = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 3.0, 50.0]))
    x = mu[torch.randint(k, (24,), generator=g)] + torch.randn(24, d, generator=g, dtype=torch.float64)
    return x, mu


def _scale(x: torch.Tensor, mu: torch.Tensor) -> float:
    return 1.0 + float(x.abs().max()) ** 2 + float(mu.abs().max()) ** 2


@MEDIUM
@given(clusterings(), st.floats(min_value=0.0, max_value=5.0))
def test_neon_midpoint_rule_conserves_relevance(case: tuple[torch.Tensor, torch.Tensor], beta: float) -> None:
    x, mu = case
    r = neon(x, mu, beta=beta)
    f = cluster_score(x, mu)
    assert r.shape == x.shape
    assert torch.allclose(r.sum(1), f, atol=1e-9 * _scale(x, mu), rtol=1e-9)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusterings(), st.integers(0, 2**31 - 1))
def test_neon_conserves_for_why_not_clusters_and_other_roots(case: tuple[torch.Tensor, torch.Tensor],
                                                            seed: int) -> None:
    x, mu = case
    g = torch.Generator().manual_seed(seed)
    other = torch.randint(mu.shape[0], (len(x),), generator=g)
    f = cluster_score(x, mu, other)
    tol = 1e-8 * _scale(x, mu)
    assert torch.allclose(neon(x, mu, other, beta=1.0).sum(1), f, atol=tol, rtol=1e-8)
    h = competitor_scores(x, mu, other)
    ok = (h[torch.isfinite(h)].abs() > 1e-6).all()  # root-point rules divide by w_kᵀ(x - x̃)
    if bool(ok):
        for ref in ("zero", torch.randn(x.shape[1], generator=g, dtype=torch.float64)):
            r = neon(x, mu, other, beta=1.0, reference=ref)
            assert torch.allclose(r.sum(1), f, atol=1e-5 * _scale(x, mu), rtol=1e-6)


@FAST
@given(clusterings(), st.floats(min_value=0.0, max_value=100.0))
def test_min_take_most_sums_to_f(case: tuple[torch.Tensor, torch.Tensor], beta: float) -> None:
    x, mu = case
    c = torch.cdist(x, mu).argmin(1)
    h = competitor_scores(x, mu, c)
    rk = min_take_most(h, beta)
    f = h.min(1).values
    assert torch.allclose(rk.sum(1), f, atol=1e-9 * _scale(x, mu))
    assert bool((rk.gather(1, c[:, None]) == 0).all())  # the own cluster gets nothing
    assert float(stiffness(x, mu)) > 0
