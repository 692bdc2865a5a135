import numpy as np
import pytest
import torch

from stagewise.groups import (class_pair_test, group_correlation, knn_class_recall, knn_neighbours, knn_recall_test,
                              pool_loadings, random_neighbours, recall_from_neighbours,
                              same_label_pair_share, standardized_losses)
from stagewise.influence import bif_matrix


def brute_force_group(draws, membership, labels):
    full = -bif_matrix(draws[None], normalized=True)[0].numpy()  # correlation = -normalized BIF
    A = membership.shape[1]
    expected = np.full((A, A), np.nan)
    for a in range(A):
        for b in range(A):
            values = [full[t, u] for t in np.flatnonzero(membership[:, a]) for u in np.flatnonzero(membership[:, b])
                      if t != u and labels[t] != labels[u]]
            if values:
                expected[a, b] = np.mean(values)
    return expected


def test_standardized_losses_give_the_correlation():
    draws = torch.tensor(np.random.default_rng(0).normal(size=(2, 30, 5)))
    Z = standardized_losses(draws).double()
    correlation = -bif_matrix(draws[None], normalized=True)[0]
    torch.testing.assert_close(Z @ Z.T, correlation, rtol=1e-5, atol=1e-6)


def test_group_correlation_matches_the_full_matrix_without_same_token_pairs():
    rng = np.random.default_rng(0)
    draws = torch.tensor(rng.normal(size=(2, 50, 12)))
    draws[..., 6:] += 2 * draws[..., :1]  # tokens 6.. share a component with token 0
    membership = rng.random((12, 3)) < 0.5
    membership[0, 0] = membership[0, 1] = True
    np.testing.assert_allclose(group_correlation(draws, membership), brute_force_group(draws, membership, np.arange(12)),
                               rtol=1e-5)


def test_group_correlation_can_leave_out_pairs_with_the_same_label():
    rng = np.random.default_rng(2)
    draws = torch.tensor(rng.normal(size=(2, 40, 15)))
    draws[..., 5:] += draws[..., :1]
    membership = rng.random((15, 3)) < 0.6
    ids = rng.integers(0, 4, size=15)
    np.testing.assert_allclose(group_correlation(draws, membership, exclude_same=ids),
                               brute_force_group(draws, membership, ids), rtol=1e-5)
    # a class whose tokens all share one label has no pair left with itself
    one_id = np.zeros(15, dtype=bool)
    one_id[ids == ids[0]] = True
    assert np.isnan(group_correlation(draws, one_id[:, None], exclude_same=ids)[0, 0])
    with pytest.raises(ValueError, match="one label per token"):
        group_correlation(draws, membership, exclude_same=ids[:3])


def identity_only_draws(seed=0, ids_per_class=4, copies=10, draws=300):
    """Draws in which only copies of the same token id correlate: class 0 is made of a few
    frequent ids, class 1 of many single ones, class 2 of the rest; everything else is noise."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([np.repeat(np.arange(ids_per_class), copies),            # class 0: 4 ids × 10 copies
                          100 + np.arange(40), 1000 + np.repeat(np.arange(40), 2)])  # class 1, class 2
    classes = np.concatenate([np.zeros(40, int), np.ones(40, int), np.full(80, 2)])
    unique, inverse = np.unique(ids, return_inverse=True)
    per_id = rng.normal(size=(draws, len(unique)))
    losses = per_id[:, inverse] + 0.7 * rng.normal(size=(draws, len(ids)))
    return torch.tensor(losses.reshape(2, draws // 2, len(ids))), np.eye(3, dtype=bool)[classes], ids


def test_token_identity_alone_correlates_all_pairs_but_not_different_id_pairs():
    draws, membership, ids = identity_only_draws()
    everything = group_correlation(draws, membership)
    different = group_correlation(draws, membership, exclude_same=ids)
    # copies of one id correlate at 1 / (1 + 0.7²) ≈ 0.67; 9 of the 39 other class-0 tokens are copies
    assert everything[0, 0] > 0.1 and everything[2, 2] > 0.003
    assert abs(different[0, 0]) < 0.03 and abs(different[2, 2]) < 0.03
    recall = knn_recall_test(draws, membership, k=5, permutations=200)
    control = knn_recall_test(draws, membership, k=5, exclude_same=ids, permutations=200)
    low, high = recall.null_band(0.99)
    assert recall.recall[0] > high[0], "the copies of a frequent id vote for its class"
    low, high = control.null_band(0.99)
    assert np.all((control.recall >= low) & (control.recall <= high)), "without them the vote is at its null"


def test_knn_recall_finds_planted_classes():
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(3, 400))
    labels = np.repeat(np.arange(3), 40)
    losses = factors[labels] + 0.5 * rng.normal(size=(120, 400))  # tokens of a class co-vary
    draws = torch.tensor(losses.T.reshape(2, 200, 120))
    membership = np.eye(3, dtype=bool)[labels]
    np.testing.assert_allclose(knn_class_recall(draws, membership, k=10, block=32), 1 - 1 / 3, atol=1e-9)
    test = knn_recall_test(draws, membership, k=10, permutations=50)
    assert np.all(test.recall > test.null_band(0.99)[1])


def test_knn_null_is_not_zero_for_rare_overlapping_classes_and_holds_pure_noise():
    # non-exclusive classes of unequal size, as the token classes are: the rate-adjusted vote
    # favours rare classes even when the neighbours are random
    rng = np.random.default_rng(3)
    n = 600
    membership = np.stack([rng.random(n) < 0.3, rng.random(n) < 0.05, rng.random(n) < 0.08], axis=1)
    draws = torch.tensor(rng.normal(size=(2, 100, n)))
    test = knn_recall_test(draws, membership, k=30, permutations=200)
    assert test.null_mean[1] > 0.05, "a rare class's null recall exceeds its rate"
    low, high = test.null_band(0.99)
    assert np.all((test.recall >= low) & (test.recall <= high)), "pure noise lies inside the null band"


def test_knn_rejects_bad_sizes():
    draws = torch.zeros(1, 5, 4)
    with pytest.raises(ValueError, match="0 < k"):
        knn_class_recall(draws, np.ones((4, 1), dtype=bool), k=4)
    with pytest.raises(ValueError, match="0 < k"):
        knn_class_recall(draws, np.ones((4, 1), dtype=bool), k=2, exclude_same=np.array([0, 0, 0, 1]))


def test_same_label_pair_share_counts_pairs_of_copies():
    membership = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    ids = np.array([7, 7, 3, 3, 9])
    # class 0: tokens 0, 1, 2 (ids 7, 7, 3): 1 of 3 pairs shares an id; class 1: ids 3, 3: 1 of 1
    np.testing.assert_allclose(same_label_pair_share(membership, ids), [1 / 3, 1.0])
    draws, membership, ids = identity_only_draws()
    assert same_label_pair_share(membership, ids)[0] == pytest.approx(4 * 10 * 9 / (40 * 39))


def few_id_noise(seed: int = 4) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Pure-noise draws of 600 tokens whose first class is made of two frequent token ids (as
    formatting or delimiters are), the others of many rare ids."""
    rng = np.random.default_rng(seed)
    n = 600
    ids = np.where(np.arange(n) < 80, np.arange(n) % 2, 2 + rng.integers(0, 300, n))
    membership = np.stack([ids < 2, rng.random(n) < 0.1, rng.random(n) < 0.4], axis=1)
    return torch.tensor(rng.normal(size=(2, 100, n))), membership, ids


def test_knn_null_with_different_id_neighbours_holds_a_class_of_few_ids():
    # Shuffling the membership would carry the class away from its two ids while the exclusion
    # stays with them: its null would sit above what noise gives (recall below the band).
    draws, membership, ids = few_id_noise()
    test = knn_recall_test(draws, membership, k=30, exclude_same=ids, permutations=200)
    low, high = test.null_band(0.99)
    assert np.all((test.recall >= low) & (test.recall <= high)), (test.recall, low, high)
    neighbours = knn_neighbours(draws, 30, ids)
    rng = np.random.default_rng(0)
    shuffled = np.array([recall_from_neighbours(neighbours, membership[rng.permutation(600)]) for _ in range(200)])
    assert test.recall[0] < np.quantile(shuffled[:, 0], 0.005), "the shuffled-membership null is biased here"


def test_random_neighbours_respect_every_exclusion():
    ids = np.arange(200) % 7
    sequences = np.arange(200) // 20
    neighbours = random_neighbours(200, 25, (ids, sequences), torch.Generator().manual_seed(1))
    assert neighbours.shape == (200, 25)
    assert all(len(set(row.tolist())) == 25 for row in neighbours)  # distinct
    rows = np.arange(200)[:, None]
    assert not np.any(neighbours.numpy() == rows)
    assert not np.any(ids[neighbours.numpy()] == ids[rows]) and not np.any(sequences[neighbours.numpy()] == sequences[rows])
    found = knn_neighbours(torch.randn(2, 30, 200), 25, (ids, sequences)).numpy()
    assert not np.any(ids[found] == ids[rows]) and not np.any(sequences[found] == sequences[rows])


def shared_and_specific_draws(specific: float, seed=0, n=120, draws=400):
    """Every token's loss carries a component shared by all tokens; classes 0 and 1 (20 tokens
    each) share a second one with weight ``specific``."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(2, draws, 1))
    pair = rng.normal(size=(2, draws, 1))
    values = rng.normal(size=(2, draws, n)) + 0.5 * common
    values[..., :40] += specific * pair
    membership = np.zeros((n, 2), dtype=bool)
    membership[:20, 0] = membership[20:40, 1] = True
    return torch.tensor(values), membership


@pytest.mark.parametrize("specific", [0.0, 0.6])
def test_raw_null_holds_the_shared_part_and_not_the_specific_one(specific):
    draws, membership = shared_and_specific_draws(specific)
    entry = group_correlation(draws, membership)[0, 1]
    null = class_pair_test(draws, membership[:, 0], membership[:, 1], pool=np.arange(40, 120), samples=100).raw_null
    assert null.shape == (100,) and np.all(null > 0.1)    # the shared component is in the null
    low, high = np.quantile(null, [0.025, 0.975])
    if specific:
        assert entry > high + 0.1
    else:
        assert low <= entry <= high


def test_random_groups_respect_labels():
    rng = np.random.default_rng(3)
    draws = torch.tensor(rng.normal(size=(2, 60, 60)))
    ids = np.repeat(np.arange(20), 3)
    draws[..., :] += 2 * torch.tensor(rng.normal(size=(2, 60, 20)))[..., ids]   # copies of an id correlate
    first, second = np.arange(60) < 12, (np.arange(60) >= 12) & (np.arange(60) < 24)   # four ids each
    # without labels, random groups of single tokens split copies of an id between them (about
    # 2 pairs in 35 of a group's, correlated 0.8); with them, copies are never paired
    with_copies = class_pair_test(draws, first, second, samples=50, seed=1).raw_null
    without = class_pair_test(draws, first, second, exclude_same=ids, samples=50, seed=1).raw_null
    assert with_copies.mean() > without.mean() + 0.025 and abs(without.mean()) < 0.02


def loading_only_draws(delimiter_loading: float, pair: float = 0.0, seed: int = 0, n: int = 240, draws: int = 200,
                       other_loading: float = 0.3, class_size: int = 30):
    """Every token's loss loads on one common factor (its correlation with it), the two
    'delimiter' classes (tokens 0…29 and 30…59) with ``delimiter_loading``, all others with
    ``other_loading``; ``pair`` adds a component only the two classes share."""
    rng = np.random.default_rng(seed)
    loading = np.full(n, other_loading)
    loading[: 2 * class_size] = delimiter_loading
    common, shared = rng.normal(size=(draws, 1)), rng.normal(size=(draws, 1))
    values = np.sqrt(1 - loading**2) * rng.normal(size=(draws, n)) + loading * common
    values[:, : 2 * class_size] += pair * shared
    left, right = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    left[:class_size], right[class_size: 2 * class_size] = True, True
    return torch.tensor(values.reshape(2, draws // 2, n)), left, right


@pytest.mark.parametrize("delimiter_loading", [0.5, 0.15])
def test_class_pair_test_is_not_fooled_by_a_class_loading_more_or_less(delimiter_loading):
    # no relation between the classes: only their loading on the common mode differs from the pool's
    verdicts, raw = [], []
    for seed in range(10):
        draws, left, right = loading_only_draws(delimiter_loading, seed=seed)
        test = class_pair_test(draws, left, right, samples=60, seed=seed)
        verdicts.append(test.verdict())
        low, high = np.quantile(test.raw_null, [0.025, 0.975])
        raw.append(low <= test.entry <= high)
    assert verdicts.count("inside the null") >= 8, verdicts        # the nominal rate flags 0.5 of 10
    assert sum(raw) <= 1, "the raw entry against random groups reads the loading as a relation"


def test_class_pair_test_flags_a_planted_relation():
    for seed in range(4):
        draws, left, right = loading_only_draws(0.3, pair=0.3, seed=seed)
        test = class_pair_test(draws, left, right, samples=60, seed=seed)
        assert test.verdict() == "above the null" and test.excess > 0.05
        assert test.predicted == pytest.approx(0.09, abs=0.03)     # what the loadings alone give: 0.3 × 0.3
    # a component of opposite signs in the two classes reads below the null
    rng = np.random.default_rng(99)   # not the stream of the draws' own factors
    draws, left, right = loading_only_draws(0.3, seed=9)
    shared = torch.tensor(rng.normal(size=(2, 100, 1)))
    draws[..., :30] += 0.4 * shared
    draws[..., 30:60] -= 0.4 * shared
    assert class_pair_test(draws, left, right, samples=60).verdict() == "below the null"


def test_class_pair_test_checks_its_classes():
    draws, left, right = loading_only_draws(0.3)
    with pytest.raises(ValueError, match="disjoint"):
        class_pair_test(draws, left, left)
    with pytest.raises(ValueError, match="pool must not"):
        class_pair_test(draws, left, right, pool=np.ones(240, dtype=bool))


def class_factor_draws(kind: str, seed: int = 0, n: int = 1500, draws: int = 100, other: float = 0.3):
    """Tokens in three classes (word parts 20 %, word ends 20 %, delimiters 10 %) and no class
    (50 %), with ``kind``: ``"shared"``, one factor shared by word parts and word ends;
    ``"loading"``, a common mode with delimiters loading 0.5 and all else ``other``;
    ``"planted"``, a factor of the word parts alone."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(4, size=n, p=[0.2, 0.2, 0.1, 0.5])
    values = rng.normal(size=(draws, n))
    factor = rng.normal(size=(draws, 1))
    if kind == "shared":
        values[:, classes < 2] += 0.8 * factor
    elif kind == "loading":
        loading = np.where(classes == 2, 0.5, other)
        values = np.sqrt(1 - loading**2) * values + loading * factor
    else:
        values[:, classes == 0] += 0.8 * factor
    return torch.tensor(values.reshape(2, draws // 2, n)), np.eye(4, dtype=bool)[classes][:, :3]


def test_knn_specificity_null_holds_a_factor_shared_by_two_classes():
    chance, recognised = [], []
    for seed in range(4):
        draws, membership = class_factor_draws("shared", seed)
        test = knn_recall_test(draws, membership, k=30, permutations=40, after_common_mode=True, seed=seed)
        chance.append(test.recall > test.null_band()[1])
        recognised.append(test.recognised())
        assert set(test.confused_with[:2]) == {0, 1}, "word parts and word ends are each other's confusion"
    assert np.all(np.array(chance)[:, :2].any(axis=1)), "against chance alone the shared factor passes"
    assert not np.any(recognised), "against the specificity null it lifts neither"


@pytest.mark.parametrize("other", [0.3, 0.1])
def test_knn_after_the_common_mode_is_not_fooled_by_loading_and_finds_a_planted_class(other):
    # with the pool loading 0.1, projecting out an estimated mode left the delimiters alike
    # (recognised in 20 of 20 replications); partial correlation on unshrunk loadings does not
    loading_flags, raw_flags = [], []
    for seed in range(4):
        draws, membership = class_factor_draws("loading", seed, other=other)
        loading_flags.append(knn_recall_test(draws, membership, k=30, permutations=40,
                                             after_common_mode=True).recognised()[2])
        raw = knn_recall_test(draws, membership, k=30, permutations=40)
        raw_flags.append(raw.recognised()[2])
    assert sum(loading_flags) <= 1 and sum(raw_flags) >= 3, (loading_flags, raw_flags)
    draws, membership = class_factor_draws("planted", 7)
    test = knn_recall_test(draws, membership, k=30, permutations=40, after_common_mode=True)
    assert test.recognised().tolist() == [True, False, False]
    with pytest.raises(ValueError, match="mode_pool"):
        knn_recall_test(draws, np.ones((1500, 1), dtype=bool), k=5, permutations=2, after_common_mode=True)


@pytest.mark.parametrize("loading", [0.5, 0.15])
def test_class_self_test_holds_a_class_that_only_loads_more_or_less(loading):
    from stagewise.groups import class_self_test

    verdicts = []
    for seed in range(10):
        draws, left, right = loading_only_draws(loading, seed=seed)
        verdicts.append(class_self_test(draws, left | right, samples=60, seed=seed).verdict())
    assert verdicts.count("inside the null") >= 8, verdicts


def test_class_self_test_flags_a_component_of_the_class_alone():
    from stagewise.groups import class_self_test

    for seed in range(4):
        draws, left, right = loading_only_draws(0.3, pair=0.3, seed=seed)   # the 60 tokens share a component
        test = class_self_test(draws, left | right, samples=60, seed=seed)
        assert test.verdict() == "above the null" and test.excess > 0.05
    with pytest.raises(ValueError, match="two tokens or more"):
        class_self_test(draws, np.array([3]))


def test_class_relation_tests_read_each_partner_without_the_target():
    from stagewise.groups import class_relation_tests, class_self_test

    draws, left, right = loading_only_draws(0.3, pair=0.3, seed=1)
    target = left.copy()
    target[30:35] = True                       # the target overlaps its partner
    empty = np.zeros_like(left)
    tests = class_relation_tests(draws, target, np.stack([right, empty], axis=1), samples=20, seed=3)
    assert len(tests) == 3 and tests[2] is None, "a partner with no token outside the target is not read"
    direct = class_pair_test(draws, target, right & ~target, pool=~(target | right), samples=20, seed=4)
    assert tests[1].entry == pytest.approx(direct.entry) and np.allclose(tests[1].null, direct.null)
    itself = class_self_test(draws, target, pool=~target, samples=20, seed=3)
    assert tests[0].entry == pytest.approx(itself.entry)
    assert tests[1].verdict() == "above the null"      # the planted pair component


def test_class_relation_tests_equal_the_direct_tests_with_copies_of_ids_left_out():
    from stagewise.groups import class_relation_tests, class_self_test

    draws, left, right = loading_only_draws(0.4, pair=0.2, seed=2)
    ids = np.random.default_rng(5).integers(0, 150, size=240)          # many tokens share an id
    tests = class_relation_tests(draws, left, right[:, None], exclude_same=ids, samples=30, seed=1)
    direct = [class_self_test(draws, left, pool=~left, exclude_same=ids, samples=30, seed=1),
              class_pair_test(draws, left, right, pool=~(left | right), exclude_same=ids, samples=30, seed=2)]
    plain = group_correlation(draws, np.stack([left, ~left], axis=1), exclude_same=ids)   # (class, pool)
    assert tests[0].entry == pytest.approx(plain[0, 0])
    assert tests[0].predicted == pytest.approx(plain[0, 1] ** 2 / plain[1, 1])
    for fast, slow in zip(tests, direct):
        assert fast.entry == pytest.approx(slow.entry, abs=1e-10)
        assert fast.predicted == pytest.approx(slow.predicted, abs=1e-10)
        np.testing.assert_allclose(fast.null, slow.null, atol=1e-10)
        np.testing.assert_allclose(fast.raw_null, slow.raw_null, atol=1e-10)


def autocorrelated(rng, count: int, chains: int, draws: int, phi: float = 0.7) -> np.ndarray:
    """``(chains, draws, count)`` AR(1) series of unit variance: draws of a chain that mixes slowly."""
    x = rng.normal(size=(chains, draws, count))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * x[:, t]
    return x


def few_id_draws(seed: int, class_loading: float = 0.5, pool_loading: float = 0.3, pair: float = 0.0,
                 ids_first: int = 6, chains: int = 4, draws: int = 40):
    """Autocorrelated losses ``exp(0.3 x)`` of two classes made of a few ids (40 tokens of 6 ids,
    60 of 7) and a pool of 700 tokens of up to 400 ids with Zipf-like copies; every id has an
    identity component (weight 0.5) its copies share, every token loads on one common mode
    (the classes with ``class_loading``, the pool with ``pool_loading``), and ``pair`` adds a
    component the two classes alone share.  Returns draws, the two class masks and the ids."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, 401)
    ids = np.concatenate([rng.integers(0, ids_first, 40), ids_first + rng.integers(0, ids_first + 1, 60),
                          2 * ids_first + 1 + rng.choice(400, size=700, p=weights / weights.sum())])
    loading = np.where(np.arange(len(ids)) < 100, class_loading, pool_loading)
    common, shared = autocorrelated(rng, 1, chains, draws), autocorrelated(rng, 1, chains, draws)
    identity = autocorrelated(rng, ids.max() + 1, chains, draws)[..., ids]
    x = loading * common + 0.5 * identity + autocorrelated(rng, len(ids), chains, draws)
    x[..., :100] += pair * shared
    first, second = np.arange(len(ids)) < 40, (np.arange(len(ids)) >= 40) & (np.arange(len(ids)) < 100)
    return torch.tensor(np.exp(0.3 * x)), first, second, ids


def test_class_pair_null_of_whole_ids_has_the_spread_of_a_class_of_few_ids():
    # the excess of two classes of a few ids spreads across replications as widely as the null
    # of groups of as many whole ids, and far more than groups drawn token by token
    from stagewise.groups import _PairedSums, _random_groups_null

    excess, id_spread, token_spread = [], [], []
    for seed in range(24):
        draws, first, second, ids = few_id_draws(seed)
        test = class_pair_test(draws, first, second, exclude_same=ids, samples=60, seed=seed)
        tokens, _ = _random_groups_null(_PairedSums(draws, ids), len(ids), np.flatnonzero(~(first | second)),
                                        (np.flatnonzero(first), np.flatnonzero(second)), None, 60, seed, 20)
        excess.append(test.excess)
        id_spread.append(test.null.std())
        token_spread.append(tokens.std())
    assert 0.6 < np.median(id_spread) / np.std(excess) < 1.6, (np.median(id_spread), np.std(excess))
    assert np.median(token_spread) < 0.5 * np.std(excess), (np.median(token_spread), np.std(excess))


@pytest.mark.parametrize("class_loading, pool_loading", [(0.5, 0.3), (0.15, 0.3), (0.0, 0.0), (0.5, 0.1)])
def test_class_tests_of_few_ids_stay_inside_their_null_for_loadings_alone(class_loading, pool_loading):
    # (0.5, 0.1): a class loading far more than a weakly loading pool has a far noisier
    # prediction than random groups of the pool; the block bootstrap of its own excess holds it
    from stagewise.groups import class_self_test

    flagged = []
    for seed in range(10):
        draws, first, second, ids = few_id_draws(seed, class_loading, pool_loading)
        pair = class_pair_test(draws, first, second, exclude_same=ids, samples=60, seed=seed)
        itself = class_self_test(draws, first, pool=~(first | second), exclude_same=ids, samples=60, seed=seed)
        flagged += [pair.verdict() != "inside the null", itself.verdict() != "inside the null"]
    assert sum(flagged) <= 3, flagged        # 20 tests at a nominal 5 % flag 1 on average


def test_class_pair_test_of_few_ids_flags_a_planted_relation():
    verdicts = [class_pair_test(*few_id_draws(seed, 0.3, 0.3, pair=0.3)[:3], exclude_same=few_id_draws(seed)[3],
                                samples=60, seed=seed).verdict() for seed in range(6)]
    assert verdicts.count("above the null") >= 5, verdicts


def test_block_resamples_keep_blocks_within_chains():
    from stagewise.groups import block_resamples

    index = block_resamples(chains=3, draws=16, resamples=5, seed=1)
    assert index.shape == (5, 48) and index.min() >= 0 and index.max() < 48
    blocks = index[:, :44].reshape(5, 11, 4)            # block length ⌈√16⌉ = 4
    assert np.all(np.diff(blocks, axis=2) == 1), "a block is consecutive draws"
    assert np.all(blocks[..., 0] // 16 == blocks[..., -1] // 16), "a block stays in one chain"
    with pytest.raises(ValueError, match="block"):
        block_resamples(2, 4, 3, block=5)


def test_autocorrelation_time_of_an_ar1_series():
    # AR(1) with coefficient φ: τ = (1 + φ) / (1 − φ)
    from stagewise.groups import autocorrelation_time

    rng = np.random.default_rng(0)
    for phi, expected in ((0.0, 1.0), (0.7, 1.7 / 0.3), (0.9, 19.0)):
        x = autocorrelated(rng, 1, 8, 2000, phi)[..., 0]
        # about the pooled mean the chains' differences add to the sum: the estimate errs long,
        # which makes the bootstrap's blocks longer, the safe side
        assert 0.85 * expected <= autocorrelation_time(x) <= 1.4 * expected
    # short chains (4 × 40 draws, as the chapters keep): about each chain's own mean the time
    # came out near 7 at φ = 0.9; about the pooled mean it is not so far below 19
    short = [autocorrelation_time(autocorrelated(rng, 1, 4, 40, 0.9)[..., 0]) for _ in range(100)]
    assert np.median(short) >= 10, np.median(short)
