"""The stagewise intervention (paper, camera-ready summary): does a boost of induction data help
formation more inside the window in which induction heads form than before it?

A fair test compares equal doses given at different stages.  :func:`boost_scan` gives a short,
mild boost (a few more repeated sequences per batch, for ``length`` steps) starting at each of
several steps before and through the formation window.  Every arm branches from the baseline
run's kept state at the start of its window, so it shares the baseline's batches up to its
window; beside every boosted arm an unboosted control branches at the same start with the same
data seed, and the two draw the same batches except the rows the boost turns into repeated
sequences (common random numbers, :attr:`~stagewise.lm.training.LMConfig.branch`): the
pair's difference is the boost's effect plus the two models' own divergence, not the noise of
two independent streams of batches.  :func:`unpaired_profile` sets every boosted arm against
the control of another seed instead, which shares no batch with it: the interval an
independent-batches design would give, from the same runs.  Pairing at every start matters: all
seeds of a start continue one realisation of the baseline, so a control branched at the
earliest start only would leave the baseline's own variation between the starts out of the
seeds' spread.  The outcome is the step at which a *late* level of the best head's induction
score is reached, after every window has ended, and the effect is the steps saved against the
paired control per extra repeated sequence.  :func:`scan_profile` sets that profile beside the
dose-only null in which a boosted sequence saves the same number of steps whenever it is given
(a flat profile).  A dose that buys a fixed amount of *progress* instead predicts more steps
saved where natural progress is slow (on a plateau): a falling profile does not by itself show
a stage-specific sensitivity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats
from stagewise._progress import progress_bar

from stagewise.lm.experiment import LanguageModelRun, branch_run
from stagewise.lm.induction import InductionCurves, induction_curves
from stagewise.lm.training import LMConfig


def snap_window(window: tuple[float, float], interval: int) -> tuple[int, int]:
    """``window`` widened to the grid of checkpoints every ``interval`` steps, starting one
    interval after initialisation at the earliest (so that there is a window before it) and
    one interval long at least."""
    start = max(interval, int(np.floor(window[0] / interval) * interval))
    stop = max(start + interval, int(np.ceil(window[1] / interval) * interval))
    return start, stop


@dataclass(frozen=True)
class BoostScan:
    """The design of a scan of equal boosts."""

    starts: tuple[int, ...]
    """First step of each boost window (on the baseline's kept states, increasing)."""
    length: int
    """Steps in every window."""
    boosted_fraction: float
    """Share of repeated sequences in a batch inside a window (the baseline's share elsewhere)."""
    seeds: tuple[int, ...]
    """Data seeds: each seed continues every arm, and its control, with its own batches."""
    stop: int
    """The last step trained by every arm."""
    checkpoint_interval: int
    """Checkpoints of the arms, every this many steps (the resolution of the measured event)."""

    def windows(self) -> list[tuple[int, int]]:
        return [(start, start + self.length) for start in self.starts]

    def extra_sequences(self, model: LMConfig) -> int:
        """Repeated sequences a window adds to the baseline's, the dose of every arm."""
        boosted = replace(model, boost_window=(0, 1), boosted_fraction=self.boosted_fraction)
        return (boosted.repeated_rows(0) - model.repeated_rows(0)) * self.length


@dataclass
class ScanResult:
    """Induction curves of the control and of every boosted arm, per seed."""

    scan: BoostScan
    extra_sequences: int
    control: list[list[InductionCurves]]
    """``[start][seed]``: the unboosted control paired with each boosted arm."""
    boosted: list[list[InductionCurves]]
    """``[start][seed]``."""

    def event_steps(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Step at which the best head's score reaches ``level``: paired controls and boosted
        arms, each ``(starts, seeds)``; ``nan`` where it is not reached by :attr:`BoostScan.stop`."""
        control = np.array([[c.crossing_step(level) for c in arm] for arm in self.control])
        boosted = np.array([[c.crossing_step(level) for c in arm] for arm in self.boosted])
        return control, boosted


@dataclass
class ScanProfile:
    """Steps saved per extra repeated sequence, by the start of the boost, beside the dose-only null."""

    starts: np.ndarray
    """``(W,)`` first step of each window."""
    saved: np.ndarray
    """``(W, seeds)`` steps saved against the paired control, per extra repeated sequence."""
    confidence: float
    mean: np.ndarray
    """``(W,)`` mean over seeds."""
    interval: np.ndarray
    """``(W, 2)`` t-interval of the mean at :attr:`confidence`."""
    null_level: float
    """The dose-only null: the same saving at every start (the mean of all arms)."""
    slope: float
    """Change of the saving per 1000 steps of later start: the mean over seeds of each seed's
    least-squares slope.  0 under the null; positive if a boost helps more the later (the
    closer to formation) it is given."""
    slope_interval: tuple[float, float]
    """t-interval of :attr:`slope` at :attr:`confidence`, over seeds."""

    @property
    def favours(self) -> str:
        """Which reading the slope's interval supports: ``"later boosts help more"``,
        ``"earlier boosts help more"`` or ``"dose only (flat)"`` when it contains 0."""
        low, high = self.slope_interval
        if low > 0:
            return "later boosts help more"
        if high < 0:
            return "earlier boosts help more"
        return "dose only (flat)"


def _t_interval(values: np.ndarray, confidence: float, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean - half, mean + half


def scan_profile(starts: Sequence[int], control_events: np.ndarray, boosted_events: np.ndarray, extra_sequences: int,
                 confidence: float = 0.9) -> ScanProfile:
    """The profile of a scan from its event steps (:meth:`ScanResult.event_steps`): ``starts``
    ``(W,)``, paired ``control_events`` and ``boosted_events``, each ``(W, seeds)``; needs two
    starts, two seeds or more and every event reached."""
    starts = np.asarray(starts, dtype=float)
    control, boosted = np.asarray(control_events, dtype=float), np.asarray(boosted_events, dtype=float)
    if boosted.ndim != 2 or boosted.shape != control.shape or boosted.shape[0] != len(starts) \
            or boosted.shape[1] < 2 or len(starts) < 2:
        raise ValueError(f"need paired control and boosted events of shape (starts = {len(starts)} >= 2, seeds >= 2), "
                         f"got {control.shape} and {boosted.shape}")
    if np.isnan(control).any() or np.isnan(boosted).any():
        raise ValueError("an arm never reached the level: train longer (BoostScan.stop) or pick a lower level")
    if extra_sequences <= 0:
        raise ValueError(f"the boost must add repeated sequences, got {extra_sequences}")
    saved = (control - boosted) / extra_sequences
    low, high = _t_interval(saved, confidence, axis=1)
    x = (starts - starts.mean()) / 1000
    slopes = (x[:, None] * (saved - saved.mean(axis=0))).sum(axis=0) / (x**2).sum()  # (seeds,)
    slope_low, slope_high = _t_interval(slopes, confidence)
    return ScanProfile(starts=starts, saved=saved, confidence=confidence, mean=saved.mean(axis=1),
                       interval=np.stack([low, high], axis=1), null_level=float(saved.mean()),
                       slope=float(slopes.mean()), slope_interval=(float(slope_low), float(slope_high)))


def unpaired_profile(starts: Sequence[int], control_events: np.ndarray, boosted_events: np.ndarray,
                     extra_sequences: int, shift: int = 1, confidence: float = 0.9) -> ScanProfile:
    """:func:`scan_profile` with the boosted arm of seed ``k`` set against the control of seed
    ``k + shift`` (cyclically) at the same start, instead of its own: an arm and a control that
    branch from the same state but share none of their batches, as in a design without common
    random numbers.  ``shift`` must not be a multiple of the number of seeds."""
    seeds = np.asarray(control_events).shape[-1]
    if seeds < 2 or shift % seeds == 0:
        raise ValueError(f"a shift of {shift} pairs every arm with its own control among {seeds} seeds")
    return scan_profile(starts, np.roll(np.asarray(control_events), -shift, axis=1), boosted_events,
                        extra_sequences, confidence)


def interval_width_ratio(paired: ScanProfile, unpaired: Sequence[ScanProfile]) -> tuple[float, float]:
    """How much wider the intervals are without the pairing: the mean over ``unpaired``
    (:func:`unpaired_profile`, e.g. one per shift) of their width divided by ``paired``'s, for
    the slope's interval and for the per-window means' intervals (averaged over windows);
    ``nan`` where a paired interval has no width (every saving equal, e.g. all 0)."""
    if not unpaired:
        raise ValueError("need at least one unpaired profile")
    width = lambda interval: np.diff(np.asarray(interval, dtype=float), axis=-1)[..., 0]  # noqa: E731

    def ratio(unpaired_width: np.ndarray, paired_width: np.ndarray) -> np.ndarray:
        positive = paired_width > 0
        return np.where(positive, unpaired_width / np.where(positive, paired_width, 1), np.nan)

    slope = np.mean([ratio(width(u.slope_interval), width(paired.slope_interval)) for u in unpaired])
    means = np.mean([np.mean(ratio(width(u.interval), width(paired.interval))) for u in unpaired])
    return float(slope), float(means)


def boost_scan(run: LanguageModelRun, scan: BoostScan, probe: torch.Tensor, progress: bool = True) -> ScanResult:
    """Train every boosted arm of ``scan`` and its paired unboosted control, for every seed (each
    cached as a run), and measure induction on ``probe`` at their checkpoints.  ``run`` must have kept its training
    state (``prepare_run(..., keep_states=True)``) at every window start."""
    model = run.config.model
    starts = list(scan.starts)
    if not scan.seeds:
        raise ValueError("the scan needs at least one seed")
    if starts != sorted(set(starts)) or starts[0] <= 0 or any(s % model.checkpoint_interval for s in starts):
        raise ValueError(f"window starts must increase, be positive and lie on the baseline's kept states "
                         f"(multiples of {model.checkpoint_interval}); got {scan.starts}")
    if starts[-1] + scan.length > scan.stop or scan.stop > model.steps:
        raise ValueError(f"every window must end by the last step trained ({scan.stop}, at most {model.steps})")
    if scan.stop != model.steps and model.lr_schedule != "constant":
        raise ValueError("stopping the arms early changes a decaying learning-rate schedule; use stop = steps")
    if scan.extra_sequences(model) <= 0:
        raise ValueError(f"a boosted fraction of {scan.boosted_fraction} adds no repeated sequence to a batch of "
                         f"{model.batch_size} with {model.repeated_fraction:.0%} repeated")

    def arm(start: int, seed: int, window: tuple[int, int] | None) -> InductionCurves:
        # the branch seed depends on the start, so arms of different starts do not reuse one stream
        # of batches, while an arm and its control (same start and seed) share theirs but the boosted rows
        config = replace(model, steps=scan.stop, checkpoint_interval=scan.checkpoint_interval,
                         branch=(start, 1000 * seed + start // model.checkpoint_interval),
                         boost_window=window, boosted_fraction=scan.boosted_fraction if window else 0.0)
        checkpoints = branch_run(run, config, progress=False)
        return induction_curves(checkpoints.load, [s for s in checkpoints.steps if s >= start], probe)

    jobs = [(w, seed, boosted) for w in scan.windows() for seed in scan.seeds for boosted in (False, True)]
    curves = {}
    for window, seed, boosted in progress_bar(jobs, desc="boost scan arms", disable=not progress):
        curves[window, seed, boosted] = arm(window[0], seed, window if boosted else None)
    return ScanResult(scan=scan, extra_sequences=scan.extra_sequences(model),
                      control=[[curves[w, seed, False] for seed in scan.seeds] for w in scan.windows()],
                      boosted=[[curves[w, seed, True] for seed in scan.seeds] for w in scan.windows()])
