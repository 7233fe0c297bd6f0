"""kmtools: post-hoc surgery of trained PyTorch classifiers seen as k-means models.

A softmax classifier assigns each input to the nearest of c equidistant centroids in its
penultimate feature space (Theorem 1 of "Softmax is k-means"); kmtools builds on that fact.
"""

__version__ = "0.1.0"

from kmtools.errors import KmtoolsError

__all__ = ["KmtoolsError", "__version__"]
