"""The paper's three claims about Pythia-14m's checkpoints (§4, App. D.1), as verdicts.

Whether a claim holds is what a run finds, not what the design guarantees, so these functions
return a :class:`ClaimVerdict` (holds, fails, or cannot be tested with the checkpoints given)
for the book to report, never an assertion that stops a build:

* :func:`induction_peak_claim`: the induction class's influence on itself rises from about
  step 1000 and peaks near step 30 000 (10 000 to 60 000) before it falls;
* :func:`delimiter_inversion_claim`: the relation between left and right delimiters, read
  against its null (:func:`stagewise.groups.class_pair_test`), has one sign in the first few
  hundred steps and the other from step 2000 on;
* :func:`knn_recall_claim`: the nearest-neighbour vote recognises every class, against both of
  its nulls (:meth:`stagewise.groups.KNNRecall.recognised`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stagewise.groups import VERDICTS, ClassPairTest


@dataclass(frozen=True)
class ClaimVerdict:
    """What a run says about one claim."""

    claim: str
    holds: bool | None
    """``None`` when the checkpoints given cannot test it."""
    detail: str

    @property
    def reading(self) -> str:
        """``"holds"``, ``"fails"`` or ``"not testable"``, with the detail."""
        word = "not testable" if self.holds is None else "holds" if self.holds else "fails"
        return f"{word} ({self.detail})"


def induction_peak_claim(steps: Sequence[int], induction_self: np.ndarray, onset: int = 1000,
                         apex: tuple[int, int] = (10_000, 60_000)) -> ClaimVerdict:
    """The induction class's within-class loss correlation ``induction_self`` ``(S,)`` at
    ``steps`` peaks inside ``apex`` and is higher there than at ``onset`` and at the last step."""
    steps = list(steps)
    values = np.asarray(induction_self, dtype=float)
    claim = f"induction influence rises from step {onset} and peaks in steps {apex[0]}-{apex[1]}, then falls"
    if len(values) != len(steps):
        raise ValueError(f"{len(values)} values for {len(steps)} steps")
    if onset not in steps or not any(apex[0] <= s <= apex[1] for s in steps) or steps[-1] <= apex[1]:
        return ClaimVerdict(claim, None, f"the steps {steps} do not include {onset}, the apex range and a later step")
    peak = steps[int(np.argmax(values))]
    holds = apex[0] <= peak <= apex[1] and values[steps.index(onset)] < values.max() > values[-1]
    return ClaimVerdict(claim, bool(holds), f"peak at step {peak}, {values.max():+.3f}; "
                        f"{values[steps.index(onset)]:+.3f} at step {onset}, {values[-1]:+.3f} at step {steps[-1]}")


def delimiter_inversion_claim(steps: Sequence[int], verdicts: Sequence[str], early: tuple[int, int] = (1, 512),
                              later: int = 2000) -> ClaimVerdict:
    """The left-right delimiter relation's verdict against its null at each step
    (:meth:`stagewise.groups.ClassPairTest.verdict`, one of :data:`stagewise.groups.VERDICTS`)
    is one side of the null at every step in ``early`` and the other side at every step from
    ``later`` on."""
    steps, verdicts = list(steps), list(verdicts)
    if len(steps) != len(verdicts) or any(v not in VERDICTS for v in verdicts):
        raise ValueError(f"need one of {VERDICTS} per step, got {verdicts} for {steps}")
    claim = "the left-right delimiter relation inverts early (one side of its null before step 512, the other after 2000)"
    first = [v for s, v in zip(steps, verdicts) if early[0] <= s <= early[1]]
    last = [v for s, v in zip(steps, verdicts) if s >= later]
    if not first or not last:
        return ClaimVerdict(claim, None, f"the steps {steps} do not include both an early step and one from {later} on")
    sides = {VERDICTS[0]: VERDICTS[2], VERDICTS[2]: VERDICTS[0]}
    holds = len(set(first)) == 1 and first[0] in sides and all(v == sides[first[0]] for v in last)
    return ClaimVerdict(claim, bool(holds), f"early: {', '.join(first)}; from step {later}: {', '.join(last)}")


def knn_recall_claim(class_names: Sequence[str], recognised: np.ndarray) -> ClaimVerdict:
    """Every class is recognised by the nearest-neighbour vote at the last checkpoint
    (``recognised`` ``(A,)`` booleans from :meth:`stagewise.groups.KNNRecall.recognised`)."""
    recognised = np.asarray(recognised, dtype=bool)
    if recognised.shape != (len(class_names),):
        raise ValueError(f"need one boolean per class ({len(class_names)}), got shape {recognised.shape}")
    missed = [name for name, ok in zip(class_names, recognised) if not ok]
    return ClaimVerdict("the nearest-neighbour vote recognises every class above both of its nulls",
                        not missed, "not recognised: " + ", ".join(missed) if missed else "all recognised")


PAPER_READINGS: tuple[str, ...] = ("confirmed", "contradicted", "unresolved")
"""What a run says about a reading of the paper."""


def _steps_in_windows(steps: Sequence[int], early: tuple[int, int], later: int) -> list[int]:
    """Indices of the ``steps`` in the early window or from ``later`` on."""
    return [k for k, s in enumerate(steps) if early[0] <= s <= early[1] or s >= later]


def direction_null_samples(steps: Sequence[int], early: tuple[int, int] = (1, 512), later: int = 2000,
                           level: float = 0.05) -> int:
    """The null samples a step needs for :func:`delimiter_direction_reading` at these steps:
    ``2 m / level`` for the ``m`` steps in its windows, so that a band's tail of
    ``level / (2 m)`` (the Bonferroni coverage's) is more than the most extreme sample."""
    return math.ceil(2 * max(len(_steps_in_windows(steps, early, later)), 1) / level - 1e-9)


def delimiter_direction_reading(steps: Sequence[int], tests: Sequence[ClassPairTest],
                                chain_tests: Sequence[Sequence[ClassPairTest]], early: tuple[int, int] = (1, 512),
                                later: int = 2000, level: float = 0.05) -> ClaimVerdict:
    """The paper's direction for the left-right delimiter relation (positive early, negative
    later, in SPEC §1's reading), against this run's tests: ``tests`` ``(S,)`` of the pooled
    chains and ``chain_tests`` ``(S, C)`` of each chain alone
    (:func:`stagewise.groups.class_pair_test`).

    Every step in the two windows is one more chance to see a side by chance, so each is read
    at the Bonferroni coverage ``1 − level / m`` over the ``m`` steps in the windows; a run with
    no relation at all then reads ``contradicted`` (or ``confirmed``) with probability at most
    ``level``.  A step *resolves a side* when the pooled verdict is above (or below) the null
    and no chain lies on the other side.  The reading is ``confirmed`` (``holds`` True) when
    every step in ``early`` resolves above and every step from ``later`` on resolves below;
    ``contradicted`` (False) when some step resolves the side opposite to the paper's (below
    early, above later); otherwise ``unresolved`` (None), which includes checkpoints that do
    not reach one of the two windows, and tests with fewer null samples than the widened band's
    tails need (:func:`direction_null_samples`).  The word is the detail's first.
    """
    steps, tests = list(steps), list(tests)
    chain_tests = [list(row) for row in chain_tests]
    if not (len(steps) == len(tests) == len(chain_tests)):
        raise ValueError(f"need one pooled test and one row of chain tests per step: {len(steps)} steps, "
                         f"{len(tests)} tests, {len(chain_tests)} rows")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    in_windows = _steps_in_windows(steps, early, later)
    coverage = 1 - level / max(len(in_windows), 1)
    needed = direction_null_samples(steps, early, later, level)
    fewest = min((len(tests[k].null) for k in in_windows), default=needed)
    above, inside, below = VERDICTS
    opposite = {above: below, below: above}

    def resolved(k: int) -> str:
        if not getattr(tests[k], "mode_resolved", True):
            return "not read (the other tokens' shared mode is not resolved)"
        side = tests[k].verdict(coverage)
        if side in opposite and opposite[side] in [t.verdict(coverage) for t in chain_tests[k]]:
            return f"pooled {side}, a chain {opposite[side]}"
        return side

    claim = "the left-right delimiter relation goes from positive (above its null) to negative (below it)"
    early_sides = [(s, resolved(k)) for k, s in enumerate(steps) if early[0] <= s <= early[1]]
    later_sides = [(s, resolved(k)) for k, s in enumerate(steps) if s >= later]
    detail = "; ".join(f"step {s}: {side}" for s, side in early_sides + later_sides) or "no step in either window"
    detail += f" (each at {coverage:.1%} coverage, Bonferroni over {len(in_windows)} steps)"
    if fewest < needed:
        return ClaimVerdict(claim, None, f"{PAPER_READINGS[2]}: {fewest} null samples a step, fewer than the "
                            f"{needed} a tail of {(1 - coverage) / 2:.2%} needs; {detail}")
    if any(side == below for _, side in early_sides) or any(side == above for _, side in later_sides):
        return ClaimVerdict(claim, False, f"{PAPER_READINGS[1]}: {detail}")
    if early_sides and later_sides and all(side == above for _, side in early_sides) \
            and all(side == below for _, side in later_sides):
        return ClaimVerdict(claim, True, f"{PAPER_READINGS[0]}: {detail}")
    missing = "" if early_sides and later_sides else (
        f" (no analysed step {f'from {later} on' if early_sides else f'in {early[0]}-{early[1]}'})")
    return ClaimVerdict(claim, None, f"{PAPER_READINGS[2]}: {detail}{missing}")
