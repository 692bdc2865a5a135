"""The Pythia section's claims, as verdicts, on planted synthetic draws where they hold and fail."""

import numpy as np
import pytest
import torch

from stagewise.groups import VERDICTS, class_pair_test, group_correlation, knn_recall_test
from stagewise.lm.claims import delimiter_inversion_claim, induction_peak_claim, knn_recall_claim

STEPS = [0, 128, 512, 1000, 4000, 16000, 32000, 64000, 143000]


def class_factor_draws(weight: float, seed: int, n: int = 200, members: int = 40, draws: int = 200) -> torch.Tensor:
    """Noise, with the first ``members`` tokens sharing one factor of ``weight``."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(draws, n))
    values[:, :members] += weight * rng.normal(size=(draws, 1))
    return torch.tensor(values.reshape(2, draws // 2, n))


def induction_self(weights) -> np.ndarray:
    member = np.zeros((200, 1), dtype=bool)
    member[:40] = True
    return np.array([group_correlation(class_factor_draws(w, seed), member)[0, 0] for seed, w in enumerate(weights)])


def test_induction_peak_claim_holds_for_a_planted_peak_and_fails_for_a_monotone_rise():
    peaked = induction_self([0, 0, 0, 0.2, 0.5, 0.8, 1.0, 0.6, 0.3])      # apex at step 32000
    verdict = induction_peak_claim(STEPS, peaked)
    assert verdict.holds is True and "32000" in verdict.detail
    rising = induction_self([0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0])      # still rising at the last step
    assert induction_peak_claim(STEPS, rising).holds is False
    assert induction_peak_claim([0, 16, 64], peaked[:3]).holds is None    # a stand-in's few steps cannot test it
    assert induction_peak_claim([0, 16, 64], peaked[:3]).reading.startswith("not testable")
    with pytest.raises(ValueError, match="values for"):
        induction_peak_claim(STEPS, peaked[:3])


def delimiter_draws(pair: float, loading: float, seed: int, n: int = 240, draws: int = 200) -> torch.Tensor:
    """A common mode (delimiters load ``loading``, the rest 0.3) and a component of weight
    ``pair`` in the left delimiters (0…29) that the right ones (30…59) carry with the opposite
    sign when ``pair < 0``."""
    rng = np.random.default_rng(seed)
    load = np.full(n, 0.3)
    load[:60] = loading
    common, shared = rng.normal(size=(draws, 1)), rng.normal(size=(draws, 1))
    values = np.sqrt(1 - load**2) * rng.normal(size=(draws, n)) + load * common
    values[:, :30] += abs(pair) * shared
    values[:, 30:60] += pair * shared
    return torch.tensor(values.reshape(2, draws // 2, n))


def delimiter_verdicts(pairs, loadings) -> list[str]:
    left, right = np.arange(240) < 30, (np.arange(240) >= 30) & (np.arange(240) < 60)
    return [class_pair_test(delimiter_draws(p, a, seed), left, right, samples=60, seed=seed).verdict()
            for seed, (p, a) in enumerate(zip(pairs, loadings))]


def test_delimiter_inversion_claim_holds_for_a_planted_flip_and_not_for_loadings_alone():
    flip = delimiter_verdicts([0, 0.4, 0.4, 0, -0.4, -0.4, -0.4, -0.4, -0.4], [0.3] * 9)
    verdict = delimiter_inversion_claim(STEPS, flip)
    assert verdict.holds is True, verdict.detail
    # the delimiters' loading falls from above the rest's to below it and nothing else: the raw
    # entry against random groups would go from above to below, the claim's shape; here it fails
    loadings = delimiter_verdicts([0] * 9, [0.5, 0.5, 0.5, 0.3, 0.15, 0.15, 0.15, 0.15, 0.15])
    assert delimiter_inversion_claim(STEPS, loadings).holds is False
    assert delimiter_inversion_claim([0, 16], ["inside the null"] * 2).holds is None
    with pytest.raises(ValueError, match="one of"):
        delimiter_inversion_claim(STEPS, ["up"] * 9)
    assert set(flip) <= set(VERDICTS)


def knn_draws(shared: bool, seed: int = 0, n: int = 900, draws: int = 100):
    """Three classes (a fifth of the tokens each) and unclassed tokens; each class with its own
    factor, or (``shared``) classes 0 and 1 with one factor between them."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(4, size=n, p=[0.2, 0.2, 0.2, 0.4])
    values = rng.normal(size=(draws, n))
    factors = rng.normal(size=(draws, 3))
    for c in range(3):
        values[:, classes == c] += 0.8 * factors[:, [0 if shared and c == 1 else c]]
    return torch.tensor(values.reshape(2, draws // 2, n)), np.eye(4, dtype=bool)[classes][:, :3]


def test_knn_recall_claim_holds_for_planted_classes_and_fails_for_a_shared_factor():
    names = ["a", "b", "c"]
    draws, membership = knn_draws(shared=False)
    planted = knn_recall_test(draws, membership, k=20, permutations=40, after_common_mode=True)
    assert knn_recall_claim(names, planted.recognised()).holds is True
    draws, membership = knn_draws(shared=True)
    shared = knn_recall_test(draws, membership, k=20, permutations=40, after_common_mode=True)
    verdict = knn_recall_claim(names, shared.recognised())
    assert verdict.holds is False and verdict.detail == "not recognised: a, b"
    with pytest.raises(ValueError, match="one boolean per class"):
        knn_recall_claim(names, np.ones(2, dtype=bool))


class FixedTest:
    """A stand-in for a ClassPairTest whose verdict is ``side`` at every coverage."""

    def __init__(self, side):
        self.side = side
        self.null = np.zeros(1000)          # enough samples for any band the reading asks for

    def verdict(self, coverage=0.95):
        return self.side


def fixed(sides):
    return [FixedTest(side) for side in sides]


def test_delimiter_direction_reading_confirms_contradicts_or_leaves_unresolved():
    from stagewise.lm.claims import delimiter_direction_reading

    above, inside, below = VERDICTS
    steps = [0, 64, 512, 3000]
    paper = delimiter_direction_reading(steps, fixed([inside, above, above, below]),
                                        [fixed([inside] * 2), fixed([above, inside]), fixed([above] * 2),
                                         fixed([below] * 2)])
    assert paper.holds is True and paper.detail.startswith("confirmed")
    # a positive relation where the paper has a negative one contradicts it
    positive = delimiter_direction_reading(steps, fixed([inside, above, above, above]), [fixed([inside] * 2)] * 4)
    assert positive.holds is False and positive.detail.startswith("contradicted")
    # a pooled side that one chain contradicts is not resolved
    split = delimiter_direction_reading(steps, fixed([inside, above, above, below]),
                                        [fixed([inside] * 2), fixed([above] * 2), fixed([above] * 2),
                                         fixed([below, above])])
    assert split.holds is None and split.detail.startswith("unresolved")
    assert "step 3000: pooled below the null, a chain above the null" in split.detail
    nothing = delimiter_direction_reading(steps, fixed([inside] * 4), [fixed([inside] * 2)] * 4)
    assert nothing.holds is None
    short = delimiter_direction_reading([0, 64, 300], fixed([inside, above, above]), [fixed([above] * 2)] * 3)
    assert short.holds is None and "from 2000 on" in short.detail
    with pytest.raises(ValueError):
        delimiter_direction_reading(steps, fixed([inside] * 3), [fixed([inside] * 2)] * 4)


def test_delimiter_direction_reading_is_corrected_for_the_steps_it_reads():
    # no relation at any of 8 steps: each step's excess is N(0, 1) against a N(0, 1) null and a
    # "contradicted" at 95 % per step would come 8 times as often
    from stagewise.groups import ClassPairTest
    from stagewise.lm.claims import delimiter_direction_reading

    rng = np.random.default_rng(0)
    steps = [1, 16, 64, 256, 2000, 3000, 5000, 8000]
    null = rng.normal(size=2000)
    spread = np.zeros(2000)                            # no Monte-Carlo error beyond the null's
    contradicted = corrected = 0
    for _ in range(300):
        excess = rng.normal(size=len(steps))
        tests = [ClassPairTest(float(e), 0.0, null, null, e + spread) for e in excess]
        corrected += delimiter_direction_reading(steps, tests, [[]] * len(steps)).holds is False
        contradicted += delimiter_direction_reading(steps, tests, [[]] * len(steps), level=0.4).holds is False
    assert corrected / 300 < 0.06, corrected          # at most the level, 5 %
    assert contradicted / 300 > 0.1, contradicted     # 8 steps at 95 % each: about 20 %
    with pytest.raises(ValueError, match="level"):
        delimiter_direction_reading(steps, tests, [[]] * len(steps), level=0)
    # 20 null samples a step cannot hold a tail of 0.3 %: the reading is not resolved
    few = [ClassPairTest(5.0, 0.0, null[:20], null[:20], np.full(20, 5.0)) for _ in steps]
    short = delimiter_direction_reading(steps, few, [[]] * len(steps))
    assert short.holds is None and "fewer than the 320" in short.detail


def test_delimiter_direction_reading_says_where_a_step_is_not_read():
    from stagewise.groups import ClassPairTest
    from stagewise.lm.claims import delimiter_direction_reading

    null = np.random.default_rng(1).normal(size=400)
    tests = [ClassPairTest(5.0, 0.0, null, null, np.zeros(400), mode_resolved=False) for _ in range(2)]
    reading = delimiter_direction_reading([64, 3000], tests, [[], []])
    assert reading.holds is None and "step 64: not read" in reading.detail
