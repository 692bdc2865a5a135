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


def sign_changes(steps: np.ndarray, values: np.ndarray, floor: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Zero crossings of a sampled curve, wherever its checkpoints fall.

    Only the sign of checkpoints whose magnitude exceeds ``floor`` times the curve's largest
    magnitude counts, so noise about zero in flat stretches is not read as a flip.  Between two
    such consecutive checkpoints of opposite sign (however many small ones lie between them) the
    curve crosses zero once: at the first checkpoint after the earlier one whose sign is no
    longer the earlier one's, linearly interpolated from its predecessor.  A checkpoint landing
    near zero, right at the crossing, therefore still counts.

    ``steps`` and ``values``: ``(T,)``, steps increasing.  Returns the crossing steps ``(F,)``
    (interpolated, in the units of ``steps``) and the sign the curve takes after each ``(F,)``:
    ``+1`` for a rise through zero, ``-1`` for a fall.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.ndim != 1 or steps.shape != values.shape or np.any(np.diff(steps) <= 0):
        raise ValueError("need one value per step and increasing steps (1-d arrays of the same length)")
    if not 0 <= floor < 1:
        raise ValueError(f"floor is a fraction of the largest magnitude in [0, 1), got {floor}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    large = np.flatnonzero(np.abs(values) > floor * np.abs(values).max())
    crossings, after = [], []
    for start, end in zip(large[:-1], large[1:]):
        sign = np.sign(values[start])
        if np.sign(values[end]) == sign:
            continue
        k = start + 1 + int(np.argmax(sign * values[start + 1:end + 1] <= 0))   # first not on the old side
        before, at = values[k - 1], values[k]
        crossings.append(steps[k - 1] + (steps[k] - steps[k - 1]) * before / (before - at))
        after.append(-sign)
    return np.array(crossings), np.array(after, dtype=int)
