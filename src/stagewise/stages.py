"""Reading stages off a training curve: its steepest stretches, where it first reaches a level,
where it changes sign."""

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


def first_crossing(steps: np.ndarray, values: np.ndarray, level: float) -> float:
    """First step at which ``values`` reaches ``level`` (``values >= level``), linearly
    interpolated from the checkpoint before; ``steps[0]`` if it starts there, ``nan`` if it never
    does.  ``steps`` and ``values``: ``(T,)``."""
    values = np.asarray(values)
    above = np.flatnonzero(values >= level)
    if len(above) == 0:
        return float("nan")
    if above[0] == 0:
        return float(steps[0])
    return _interpolated(steps, values, int(above[0]), level)


def _interpolated(steps: np.ndarray, values: np.ndarray, k: int, level: float) -> float:
    """The step between checkpoints ``k − 1`` and ``k`` at which the straight line through their
    values takes ``level`` (``np.interp`` on the pair, turned to run uphill)."""
    pair, where = np.asarray(values[k - 1 : k + 1], dtype=float), np.asarray(steps[k - 1 : k + 1], dtype=float)
    if pair[0] > pair[1]:
        return float(np.interp(-level, -pair, where))
    return float(np.interp(level, pair, where))


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
        crossings.append(_interpolated(steps, values, k, 0.0))
        after.append(-sign)
    return np.array(crossings), np.array(after, dtype=int)
