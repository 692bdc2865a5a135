"""The stagewise intervention (paper §4): upweight induction data inside the window in which
induction heads form, or before it, or never, and see when the heads form.

All arms branch from the same checkpoint of a baseline run (a run with
``keep_states``), at the start of the earlier window, and differ only in when a batch holds
``boosted_fraction`` of repeated sequences instead of the baseline's share.  Each arm is repeated
with several data seeds, so that a difference between arms can be told from noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from stagewise.lm.experiment import LanguageModelRun, branch_run
from stagewise.lm.induction import InductionCurves, induction_curves

ARMS: tuple[str, ...] = ("inside", "before", "never")
"""Induction data upweighted inside the formation window, in an equally long window just before
it, or never."""


@dataclass
class InterventionResult:
    """Induction curves of every arm and seed."""

    inside: tuple[int, int]
    """The formation window ``[start, stop)`` in steps."""
    before: tuple[int, int]
    """The equally long window that ends where it starts; the branch step is its start."""
    seeds: tuple[int, ...]
    curves: dict[str, list[InductionCurves]]
    """Arm → one :class:`InductionCurves` per seed, from the branch step on."""

    def crossing_steps(self, threshold: float) -> dict[str, np.ndarray]:
        """Arm → ``(seeds,)`` first step at which the best head's score reaches ``threshold``."""
        return {arm: np.array([c.crossing_step(threshold) for c in runs]) for arm, runs in self.curves.items()}


def snap_window(window: tuple[float, float], interval: int) -> tuple[int, int]:
    """``window`` widened to the grid of checkpoints every ``interval`` steps, starting one
    interval after initialisation at the earliest (so that there is a window before it) and
    one interval long at least."""
    start = max(interval, int(np.floor(window[0] / interval) * interval))
    stop = max(start + interval, int(np.ceil(window[1] / interval) * interval))
    return start, stop


def intervention(run: LanguageModelRun, window: tuple[int, int], boosted_fraction: float, seeds: tuple[int, ...],
                 probe: torch.Tensor, progress: bool = True) -> InterventionResult:
    """Train every arm of :data:`ARMS` for every seed, branching from ``run`` at the start of the
    window before ``window``, and measure induction on ``probe`` at every checkpoint after it.

    ``window`` is ``[start, stop)`` in steps, on ``run``'s grid of evenly spaced checkpoints."""
    start, stop = window
    interval = run.config.model.checkpoint_interval
    if not 0 < start < stop <= run.config.model.steps or start % interval or stop % interval:
        raise ValueError(f"the window must be [start, stop) with 0 < start < stop <= {run.config.model.steps}, "
                         f"on multiples of the checkpoint interval {interval}; got {window}")
    if not seeds:
        raise ValueError("the intervention needs at least one seed")
    before = (max(0, 2 * start - stop), start)
    boosts = {"inside": window, "before": before, "never": None}
    curves: dict[str, list[InductionCurves]] = {arm: [] for arm in ARMS}
    jobs = [(arm, seed) for seed in seeds for arm in ARMS]
    for arm, seed in tqdm(jobs, desc="intervention arms", disable=not progress):
        boost = boosts[arm]
        config = replace(run.config.model, branch=(before[0], seed), boost_window=boost,
                         boosted_fraction=boosted_fraction if boost else 0.0)
        checkpoints = branch_run(run, config, progress=progress)
        curves[arm].append(induction_curves(checkpoints.load, checkpoints.steps, probe))
    return InterventionResult(inside=window, before=before, seeds=tuple(seeds), curves=curves)
