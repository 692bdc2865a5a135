"""Reading stages off a training curve."""

from __future__ import annotations

import numpy as np


def inflection_steps(steps: np.ndarray, values: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Major inflection points of a curve against log step: the steps where it changes fastest.

    The rate of change per unit of ``log(step)`` is taken between consecutive checkpoints
    (step 0 counts as step 1); every local maximum of its magnitude that reaches ``fraction``
    of the largest one is returned, at the geometric middle of its interval.  For a loss curve
    these are the steepest drops, the boundaries between plateaus.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.shape != values.shape or len(steps) < 3 or np.any(np.diff(steps) <= 0):
        raise ValueError("need at least three increasing steps and one value per step")
    x = np.log(np.maximum(steps, 1.0))
    keep = np.concatenate([[True], np.diff(x) > 0])  # steps 0 and 1 share log(1)
    x, values = x[keep], values[keep]
    rate = np.abs(np.diff(values) / np.diff(x))
    padded = np.concatenate([[-np.inf], rate, [-np.inf]])
    peaks = np.flatnonzero((rate >= padded[:-2]) & (rate > padded[2:]) & (rate >= fraction * rate.max()))
    return np.exp((x[peaks] + x[peaks + 1]) / 2)
