"""Algorithm 1 (Fawzi et al., Sec. III): a piecewise-linear path between two inputs of one
class that stays inside the class region, with recursive midpoint projection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.attacks import decision_scores
from kmtools.data import load_dataset
from kmtools.errors import ConfigError
from kmtools.features import as_tensors
from kmtools.geometry import find_path, path_profile, project_to_class, same_class_pairs
from tests.helpers import digits_model


class Blobs(nn.Module):
    """Class 0 = background (score 0); class 1 = inside any of the balls (the best ball's score)."""

    def __init__(self, centres: torch.Tensor, rho: float) -> None:
        super().__init__()
        self.register_buffer("c", centres)
        self.rho = rho

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (self.rho**2 - (x[:, None, :] - self.c[None]).pow(2).sum(-1)) / (2 * self.rho)
        s1 = s.max(1).values
        return torch.stack([torch.zeros_like(s1), s1], 1)


def _dense_inside(model: nn.Module, anchors: torch.Tensor, label: int, points: int = 4000) -> bool:
    _, scores, _ = path_profile(model, anchors, points=points)
    return bool((scores.argmax(1) == label).all())


def test_path_goes_around_an_obstacle() -> None:
    """The background region minus a ball is connected but not convex: the straight segment
    crosses the ball, Algorithm 1 must bend around it and every point of the path stays
    in the background."""
    d = 3
    model = Blobs(torch.zeros(1, d), 1.0)
    x1 = torch.tensor([-2.0, 0.3, 0.1])
    x2 = torch.tensor([2.0, 0.1, -0.2])
    res = find_path(model, x1, x2, samples=32)
    assert res.success and not res.straight and res.reason == ""
    assert res.label == 0 and res.projections >= 1 and res.anchors.shape[0] >= 3
    assert torch.equal(res.anchors[0], x1) and torch.equal(res.anchors[-1], x2)
    assert _dense_inside(model, res.anchors, 0)
    assert res.length > res.straight_length
    assert res.to_dict()["length_ratio"] == pytest.approx(res.length / res.straight_length)


def test_straight_path_in_a_convex_region() -> None:
    model = Blobs(torch.zeros(1, 4), 2.0)
    res = find_path(model, torch.tensor([0.5, 0, 0, 0]), torch.tensor([-0.3, 0.8, 0.1, 0]))
    assert res.success and res.straight and res.anchors.shape[0] == 2 and res.label == 1
    assert res.projections == 0 and res.length == pytest.approx(res.straight_length)


def test_disconnected_region_is_reported_as_failure() -> None:
    """Class 1 = two separate balls: no path inside class 1 joins them, and the search
    must stop and say so instead of returning a path through the background."""
    model = Blobs(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]), 1.0)
    res = find_path(model, torch.tensor([-3.0, 0.2]), torch.tensor([3.0, -0.1]), max_depth=6)
    assert not res.success and res.reason in ("max_depth", "max_anchors", "projection failed")
    assert not _dense_inside(model, res.anchors, 1)


def test_endpoints_of_different_classes_are_refused() -> None:
    model = Blobs(torch.zeros(1, 2), 1.0)
    with pytest.raises(ConfigError, match="different classes"):
        find_path(model, torch.tensor([0.0, 0.0]), torch.tensor([3.0, 0.0]))


def test_path_on_a_trained_network_to_an_adversarially_moved_input() -> None:
    """Scenario 2 of Sec. III: x2 is an input of another class moved into x1's region by a
    minimal targeted perturbation; the straight segment leaves the region, the path does not."""
    model = digits_model()
    x, _ = as_tensors(load_dataset("digits", split="test").dataset)
    x = x[:60].float()
    with torch.no_grad():
        pred = decision_scores(model, x).argmax(1)
    i = 0
    others = (pred != pred[i]).nonzero().flatten()[:12]
    moved, ok = project_to_class(model, x[others], pred[i].expand(len(others)))
    assert bool(ok.all())
    with torch.no_grad():
        assert bool((decision_scores(model, moved).argmax(1) == pred[i]).all())
    results = [find_path(model, x[i], moved[j], samples=24) for j in range(len(others))]
    assert all(r.success for r in results)
    bent = [r for r in results if not r.straight]
    assert bent, "expected at least one straight segment to leave the region"
    for r in bent:
        assert r.projections >= 1 and r.anchors.shape[0] >= 3
        assert _dense_inside(model, r.anchors, int(pred[i]), points=600)


def test_same_class_pairs() -> None:
    pred = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    pairs = same_class_pairs(pred, 10, seed=0)
    assert len(pairs) == 4  # 3 pairs of class 0 + 1 of class 1; class 2, 3 have one input each
    assert len(set(pairs)) == 4 and all(i < j and pred[i] == pred[j] for i, j in pairs)
    assert same_class_pairs(pred, 2, seed=1) == same_class_pairs(pred, 2, seed=1)
    assert same_class_pairs(torch.tensor([0, 1, 2]), 5) == []
