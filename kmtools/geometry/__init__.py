"""Decision-boundary geometry (Fawzi, Moosavi-Dezfooli, Frossard & Soatto, "Classification
regions of deep neural networks"; Theorem 2 of "Gauss networks / softmax is k-means").

* :mod:`~kmtools.geometry.distance`: r(x) and z = x + r(x) on the boundary (DeepFool +
  bisection), and Theorem 2's lower bound for Gauss networks beside it.
* :mod:`~kmtools.geometry.curvature`: principal curvatures (Eq. 1) by Lanczos on
  Hessian-vector products, and the average curvature by random directions.
* :mod:`~kmtools.geometry.detect`: Algorithm 2, detection of perturbed inputs and label
  recovery; Table II (sign asymmetry); Fig. 8 (TP/FP over the threshold).
* :mod:`~kmtools.geometry.path`: Algorithm 1, paths inside a classification region.
* :mod:`~kmtools.geometry.plots`: Fig. 4b-, Fig. 8- and path-profile figures.

Sign convention everywhere: F = s_other - s_own, so a locally convex region of the
input's own class has positive curvature, and the paper's asymmetry reads "clean inputs
κ̄ < 0, perturbed inputs κ̄ > 0".
"""

from kmtools.geometry.curvature import (
    BoundaryOperator,
    CurvatureResult,
    boundary_curvature,
    default_fd_step,
    mean_curvature,
    principal_curvatures,
)
from kmtools.geometry.detect import (
    AdversarialSet,
    AsymmetryResult,
    DetectionEvaluation,
    DetectionResult,
    average_curvatures,
    boundary_asymmetry,
    detect,
    evaluate_detection,
    load_adversarial_set,
    save_adversarial_set,
)
from kmtools.geometry.distance import (
    BoundaryResult,
    LipschitzEstimate,
    boundary_distance,
    boundary_points,
    lipschitz_local,
    lipschitz_upper_bound,
    theorem2_bounds,
)
from kmtools.geometry.path import PathResult, find_path, path_profile, project_to_class, same_class_pairs

__all__ = [
    "AdversarialSet",
    "AsymmetryResult",
    "BoundaryOperator",
    "BoundaryResult",
    "CurvatureResult",
    "DetectionEvaluation",
    "DetectionResult",
    "LipschitzEstimate",
    "PathResult",
    "average_curvatures",
    "boundary_asymmetry",
    "boundary_curvature",
    "boundary_distance",
    "boundary_points",
    "default_fd_step",
    "detect",
    "evaluate_detection",
    "find_path",
    "lipschitz_local",
    "lipschitz_upper_bound",
    "load_adversarial_set",
    "mean_curvature",
    "path_profile",
    "principal_curvatures",
    "project_to_class",
    "same_class_pairs",
    "save_adversarial_set",
    "theorem2_bounds",
]
