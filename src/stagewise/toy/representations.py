"""Hidden representations over training: their MDS picture and the branch points of the
hierarchy (Saxe et al. 2019; paper Fig. 4b)."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import MDS

from stagewise.stages import first_crossing
from stagewise.toy.data import Hierarchy, Split


def split_separation(hidden: np.ndarray, hierarchy: Hierarchy, split: Split) -> np.ndarray:
    """Distance between the two child groups' mean hidden representations over time, divided
    by its final value.  ``hidden`` is ``(T, items, hidden units)``; returns ``(T,)``."""
    left = [hierarchy.index(item) for item in split.left]
    right = [hierarchy.index(item) for item in split.right]
    distance = np.linalg.norm(hidden[:, left].mean(1) - hidden[:, right].mean(1), axis=1)
    if distance[-1] <= 0:
        raise ValueError(f"the split {split.label} never separates")
    return distance / distance[-1]


def separation_epoch(hidden: np.ndarray, epochs: np.ndarray, hierarchy: Hierarchy, split: Split, fraction: float) -> float:
    """First epoch (interpolated) at which a split's separation reaches ``fraction`` of its final
    value: the hierarchy *branches* there."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    separation = split_separation(hidden, hierarchy, split)
    return first_crossing(epochs, separation, fraction)


def mds_trajectories(hidden: np.ndarray, n_components: int = 2, seed: int = 0) -> np.ndarray:
    """Metric MDS of all hidden representations at all checkpoints together,
    ``(T, items, hidden units) -> (T, items, n_components)``, so the trajectories share one map.

    SMACOF starts from classical (Torgerson) MDS.  Classical MDS alone is a projection on the
    two leading principal directions, which hides the finer branches of the tree; metric MDS
    spreads the distortion over all distances and shows every level.
    """
    T, N, H = hidden.shape
    mds = MDS(n_components=n_components, metric_mds=True, init="classical_mds", n_init=1, random_state=seed)
    return mds.fit_transform(hidden.reshape(T * N, H)).reshape(T, N, n_components)
