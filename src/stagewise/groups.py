"""Influence between groups of tokens, from per-token loss draws, with the controls a reading needs.

Two reductions of the normalized BIF (SPEC §4), both in ``O(tokens × draws)`` memory:

* :func:`group_correlation`: the mean loss correlation (= −normalized BIF) between two classes
  of tokens, optionally over pairs that do not share a label (the same token id, or the same
  sequence), so that a class made of a few frequent ids is not read through the copies of one
  token.
* :func:`class_pair_test`: the between-class entry read against a null that a class's own
  loading cannot fool.  All token losses share a common mode (it grows in training), and a
  class that merely loads more (or less) on it than other tokens has a raw entry above (or
  below) that of random groups (:attr:`ClassPairTest.raw_null`) with no relation between the
  classes at all.  The test compares the entry with what one common mode predicts from each
  class's correlation with a pool of other tokens, ``ρ(A, P) ρ(B, P) / ρ(P, P)``, and reads
  the excess against the same excess for random groups of the pool with the classes' unit
  structure (as many whole token ids, so that a class of a few frequent ids is not read
  against groups of many), with the classes' own Monte-Carlo error (a block bootstrap of the
  draws, :func:`block_resamples`) added to it (:attr:`ClassPairTest.combined_null`).
  Under a single common factor the excess is 0 whatever the loadings; a term shared by the
  two classes alone stays.  :func:`class_self_test` reads a class against itself the same way,
  ``ρ(A, A)`` against ``ρ(A, P)² / ρ(P, P)``.
* :func:`knn_class_recall`: how often a token's most correlated neighbours vote for its own
  class (paper App. D.1.3), optionally ignoring neighbours with the same label, beside two
  nulls (:func:`knn_recall_test`): the vote of neighbours that know nothing of the losses (the
  rate-adjusted vote favours rare classes even when the neighbours are random, so this null is
  not 0), and the *specificity* null, in which the class's label is shuffled among its tokens
  and those of the class it is most confused with: a factor shared by two classes (word parts
  and word ends, say) lifts both above the first null but not above the second.  The
  neighbours can be found by partial correlation given the pooled mode
  (``after_common_mode``, with loadings from :func:`pool_loadings`), so that a class's loading
  on it does not make its tokens each other's neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def standardized_losses(draws: torch.Tensor) -> torch.Tensor:
    """Draws ``(..., C, T, n)`` pooled into a ``(n, D)`` matrix ``Z`` (``D`` = all draws of all
    chains) with ``Z Zᵀ`` the Pearson correlation of the losses; rows of constant losses are zero."""
    if draws.ndim < 3:
        raise ValueError(f"draws must have shape (..., chains, draws, n), got {tuple(draws.shape)}")
    pooled = draws.reshape(-1, draws.shape[-1]).T.float()  # (n, D)
    centred = pooled - pooled.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, centred / norm.clamp_min(1e-30), torch.zeros_like(centred))


def _token_indices(tokens: np.ndarray, n: int, what: str) -> np.ndarray:
    """Token indices from indices or an ``(n,)`` boolean mask."""
    tokens = np.asarray(tokens)
    if tokens.dtype == bool:
        if tokens.shape != (n,):
            raise ValueError(f"{what} as a mask must have shape ({n},), got {tokens.shape}")
        return np.flatnonzero(tokens)
    return tokens.astype(int).reshape(-1)


def _labels(exclude_same: np.ndarray | None, n: int) -> torch.Tensor:
    """Dense labels ``0…G−1`` of the tokens; every token its own label when ``exclude_same`` is None."""
    if exclude_same is None:
        return torch.arange(n)
    labels = np.asarray(exclude_same)
    if labels.shape != (n,):
        raise ValueError(f"exclude_same must hold one label per token, shape ({n},), got {labels.shape}")
    return torch.as_tensor(np.unique(labels, return_inverse=True)[1].reshape(n))


def group_correlation(draws: torch.Tensor, membership: np.ndarray, exclude_same: np.ndarray | None = None) -> np.ndarray:
    """Mean loss correlation between classes of tokens: ``(A, A)``.

    Entry ``[a, b]`` averages ``Corr(ℓ_t, ℓ_t')`` over ``t`` in class ``a`` and ``t'`` in class
    ``b`` with ``t ≠ t'``: the group normalized BIF with its sign flipped (positive: the two
    classes' losses move together, upweighting one helps the other).  ``draws`` is
    ``(..., C, T, n)``; ``membership`` is ``(n, A)`` booleans.  ``exclude_same`` (``(n,)`` labels,
    e.g. token ids or sequence indices) also leaves out every pair with equal labels; an entry
    with no pair left is ``nan``.  Computed from class sums (per label) of the standardized
    loss matrix in ``O(n · draws)`` memory; the ``n × n`` matrix is never formed.
    """
    return _group_correlation(standardized_losses(draws).double(), membership, exclude_same)


def _group_correlation(Z: torch.Tensor, membership: np.ndarray, exclude_same: np.ndarray | None) -> np.ndarray:
    """:func:`group_correlation` from the standardized losses ``Z`` ``(n, D)``, float64."""
    n = Z.shape[0]
    member = np.asarray(membership, dtype=bool)
    if member.ndim != 2 or member.shape[0] != n:
        raise ValueError(f"membership must be (tokens = {n}, classes), got {member.shape}")
    valid = (Z.abs().sum(dim=1) > 0).numpy()
    M = torch.tensor(member & valid[:, None], dtype=torch.float64)  # (n, A)
    sums = M.T @ Z  # (A, D)
    total = sums @ sums.T
    pairs = M.sum(0)[:, None] * M.sum(0)[None, :]
    if exclude_same is None:  # only t = t': each valid token's self-correlation is exactly 1
        same_total = same_pairs = M.T @ M
    else:
        labels = _labels(exclude_same, n)
        groups = int(labels.max()) + 1
        per_label = torch.zeros(groups, M.shape[1], Z.shape[1], dtype=torch.float64)
        per_label.index_add_(0, labels, M[:, :, None] * Z[:, None, :])  # (G, A, D) class sums per label
        counts = torch.zeros(groups, M.shape[1], dtype=torch.float64).index_add_(0, labels, M)  # (G, A)
        same_total = torch.einsum("gad,gbd->ab", per_label, per_label)
        same_pairs = counts.T @ counts
    kept = pairs - same_pairs
    mean = (total - same_total) / kept.clamp_min(1)
    return mean.where(kept > 0, torch.tensor(float("nan"), dtype=torch.float64)).numpy()


VERDICTS: tuple[str, ...] = ("above the null", "inside the null", "below the null")
"""Where an entry lies against its null's band."""


def band_verdict(value: float, low: float, high: float) -> str:
    """One of :data:`VERDICTS` for ``value`` against the band ``[low, high]``."""
    return VERDICTS[0] if value > high else VERDICTS[2] if value < low else VERDICTS[1]


@dataclass
class ClassPairTest:
    """A between-class entry beside what the two classes' loadings on the pooled mode predict
    for it, and the same for random groups (see :func:`class_pair_test`)."""

    entry: float
    """The mean loss correlation between the two classes (:func:`group_correlation`)."""
    predicted: float
    """What one common mode predicts for it from each class's correlation with the pool:
    ``ρ(A, P) · ρ(B, P) / ρ(P, P)`` (0 when the pool's own correlation is not positive)."""
    null: np.ndarray
    """``(samples,)`` :attr:`excess` of pairs of random groups from the pool with the classes'
    unit structure (as many whole ids, with as many copies), each against the rest of the pool:
    what the excess is with no relation between groups (and the groups' Monte-Carlo error)."""
    raw_null: np.ndarray
    """``(samples,)`` the raw entry of the same random groups: what all tokens share lifts them
    too, but not a class's own loading on it, so this is a secondary, loading-blind reading."""
    resampled: np.ndarray
    """``(resamples,)`` :attr:`excess` recomputed on the draws resampled in blocks of
    consecutive draws (:func:`block_resamples`): its Monte-Carlo spread for these classes, with
    their own loadings (the random groups have the pool's, and a class that loads far more
    than a weakly loading pool has a far noisier prediction than they do); added to
    :attr:`null` in :attr:`combined_null`."""
    mode_resolved: bool = True
    """Whether the pool's mean correlation ``ρ(P, P)`` exceeds twice its block-bootstrap spread.
    When it does not, the prediction divides by a number indistinguishable from 0 and the test
    cannot be read (:meth:`verdict` is "inside the null"); reading the raw entry instead would
    be fooled by a class that loads more than a weakly loading pool."""

    @property
    def excess(self) -> float:
        """:attr:`entry` minus :attr:`predicted`: the relation beyond the classes' loadings."""
        return float(self.entry - self.predicted)

    @property
    def combined_null(self) -> np.ndarray:
        """``(samples,)`` what the excess would be for a random group, plus these classes' own
        Monte-Carlo error: :attr:`null` with the deviations of :attr:`resampled` from their mean
        added, sample by sample (two independent draws, so pairing them by index convolves the
        two distributions).  It spreads at least as widely as either: as a random group's
        excess where the classes load like the pool, as their own Monte-Carlo error where they
        load far more and their prediction is far noisier than a random group's."""
        deviations = self.resampled - self.resampled.mean()
        return self.null + np.resize(deviations, self.null.shape)

    def band(self, coverage: float = 0.95) -> tuple[float, float]:
        """Quantiles of :attr:`combined_null` holding ``coverage`` of it."""
        tail = (1 - coverage) / 2
        low, high = np.quantile(self.combined_null, [tail, 1 - tail])
        return float(low), float(high)

    def interval(self, coverage: float = 0.95) -> tuple[float, float]:
        """The basic block-bootstrap interval of :attr:`excess` from :attr:`resampled`
        (``2·excess`` minus its upper and lower quantiles): its Monte-Carlo error alone."""
        tail = (1 - coverage) / 2
        low, high = np.quantile(self.resampled, [tail, 1 - tail])
        return float(2 * self.excess - high), float(2 * self.excess - low)

    def verdict(self, coverage: float = 0.95) -> str:
        """Where :attr:`excess` lies against :meth:`band`: one of :data:`VERDICTS`; "inside the
        null" when the pool's common mode is not resolved (:attr:`mode_resolved`)."""
        if not self.mode_resolved:
            return VERDICTS[1]
        return band_verdict(self.excess, *self.band(coverage))


def block_resamples(chains: int, draws: int, resamples: int, seed: int = 0,
                    block: int | None = None) -> np.ndarray:
    """``(resamples, chains · draws)`` indices into a chain-major ``(chains · draws)`` set of
    draws: each resample joins random blocks of ``block`` consecutive draws of one chain
    (default ``⌈√draws⌉``), taken from any chain, so that it keeps the draws' autocorrelation
    within a block and the chains' differences between them (a moving-block bootstrap)."""
    block = math.ceil(math.sqrt(draws)) if block is None else block
    if not 1 <= block <= draws or resamples < 1:
        raise ValueError(f"need 1 <= block <= draws ({draws}) and resamples >= 1, got {block} and {resamples}")
    starts = (np.arange(chains)[:, None] * draws + np.arange(draws - block + 1)[None, :]).reshape(-1)
    rng = np.random.default_rng(seed)
    blocks = math.ceil(chains * draws / block)
    picked = starts[rng.integers(len(starts), size=(resamples, blocks))]
    return (picked[..., None] + np.arange(block)).reshape(resamples, -1)[:, : chains * draws]


def autocorrelation_time(series: np.ndarray) -> float:
    """The integrated autocorrelation time of ``series`` ``(chains, draws)`` in draws (1 for
    independent draws): ``1 + 2 Σ ρ_k`` over the autocorrelations about the pooled mean,
    averaged across chains, summed in pairs while a pair stays positive (Geyer's initial
    positive sequence)."""
    x = np.asarray(series, dtype=float)
    x = x - x.mean()   # the pooled mean: a chain's own mean would hide how slowly it wanders from it
    T = x.shape[1]
    variance = (x**2).mean()
    if T < 4 or variance <= 0:
        return 1.0
    spectrum = np.fft.rfft(x, n=2 * T, axis=1)
    covariance = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :T].mean(axis=0) / T   # (T,) lag 0…T−1
    rho = covariance / covariance[0]
    total = -1.0
    for m in range(T // 2):
        pair = rho[2 * m] + rho[2 * m + 1]
        if pair <= 0:
            break
        total += 2 * pair
    return max(float(total), 1.0)


def _resampled_matrices(sums: "_PairedSums", membership: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The ``(g, g)`` group correlation of ``membership`` ``(n, g)`` on block-resampled draws
    (:func:`block_resamples`) of ``sums``' draws ``(..., C, T, n)``: ``(resamples, g, g)``.  The
    blocks are at least twice the longest autocorrelation time of the groups' mean
    standardized losses (and ``⌈√T⌉``, at most ``T / 2``), so that a block holds what a slowly
    mixing chain carries from one draw to the next."""
    chains = sums.draws.reshape(-1, *sums.draws.shape[-2:])
    C, T, _ = chains.shape
    pooled = chains.reshape(C * T, -1)
    M = torch.as_tensor(np.asarray(membership, dtype=float))
    means = (M.T @ sums.Z / M.sum(0).clamp_min(1)[:, None]).numpy()   # (g, C·T) the groups' mean losses
    tau = max(autocorrelation_time(row.reshape(C, T)) for row in means)
    block = int(min(max(math.ceil(2 * tau), math.ceil(math.sqrt(T))), max(T // 2, 1)))
    return np.stack([_group_correlation(standardized_losses(pooled[torch.as_tensor(index)][None]).double(),
                                        membership, sums.exclude_same)
                     for index in block_resamples(C, T, resamples, seed, block)])


def _one_factor_excess(matrix: np.ndarray) -> tuple[float, float]:
    """``(entry, predicted)`` from the ``(3, 3)`` group correlation of (first, second, pool)."""
    pool = matrix[2, 2]
    predicted = matrix[0, 2] * matrix[1, 2] / pool if pool > 0 else 0.0
    return float(matrix[0, 1]), float(predicted)


class _Units:
    """The pool's tokens grouped into *units* (the labels of ``exclude_same``, e.g. token ids;
    every token its own unit without labels), for random groups that have a class's unit
    structure: copies of one id share an identity component (and, with ``exclude_same``, are
    never paired), so a class of a few ids averages over few independent units, and random
    groups drawn token by token from many ids would give a null far narrower than its entry's
    spread."""

    def __init__(self, pool: np.ndarray, labels: torch.Tensor | None) -> None:
        self.pool = pool
        self.labels = None if labels is None else labels.numpy()
        self.unit = (np.arange(len(pool)) if labels is None else
                     np.unique(self.labels[pool], return_inverse=True)[1].reshape(-1))
        self.sizes = np.bincount(self.unit)

    def structure(self, members: np.ndarray) -> np.ndarray:
        """A class's copies per unit, largest first: ``(units,)``."""
        if self.labels is None:
            return np.ones(len(members), dtype=int)
        return np.sort(np.unique(self.labels[members], return_counts=True)[1])[::-1].copy()

    def _size_biased_order(self, rng: np.random.Generator) -> np.ndarray:
        """All units in a random order drawn without replacement with chances proportional to
        their sizes (Efraimidis–Spirakis keys)."""
        return np.argsort(-np.log(rng.random(len(self.sizes))) / self.sizes)

    def draw(self, rng: np.random.Generator, structures: list[np.ndarray]) -> list[np.ndarray]:
        """Random groups of whole units of the pool, one per class structure, and the rest of
        the pool (its tokens in no group): pool token indices.  Each group draws as many units
        as its class has, without replacement, with chances proportional to their sizes (the
        unit of a random token, so frequent ids come up as often as in a class of frequent
        ids); the ``i``-th largest unit drawn gives at most as many (random) copies as the
        class's ``i``-th largest.  The groups' units are disjoint when the pool has enough of
        them; otherwise groups may draw the same unit (its copies are then split between them,
        and the pairs of a unit's copies are left out of every mean)."""
        order = np.lexsort((rng.random(len(self.unit)), self.unit))  # tokens by unit, random within
        rank = np.empty(len(order), dtype=int)
        rank[order] = np.arange(len(order)) - np.searchsorted(self.unit[order], self.unit[order])
        taken = np.zeros(len(self.sizes), dtype=int)                 # copies of each unit given out
        rest = np.ones(len(self.pool), dtype=bool)
        groups = []
        disjoint = sum(map(len, structures)) <= len(self.sizes)
        ordered, used = self._size_biased_order(rng), 0
        for structure in structures:
            if len(structure) > len(self.sizes):
                raise ValueError(f"the pool has {len(self.sizes)} ids (units), fewer than a class's "
                                 f"{len(structure)}: it cannot hold random groups of as many")
            if disjoint:
                units, used = ordered[used: used + len(structure)], used + len(structure)
            else:
                units = self._size_biased_order(rng)[: len(structure)]
            units = units[np.argsort(-(self.sizes - taken)[units], kind="stable")]
            quota = np.zeros(len(self.sizes), dtype=int)
            quota[units] = np.minimum(structure, self.sizes[units] - taken[units])
            start = taken[self.unit]
            chosen = (rank >= start) & (rank < start + quota[self.unit])
            groups.append(self.pool[chosen])
            rest &= ~chosen
            taken += quota
        return groups + [self.pool[rest]]


def _random_groups_null(correlate, n: int, pool: np.ndarray, classes: tuple[np.ndarray, ...],
                        labels: torch.Tensor | None, samples: int, seed: int, chunk: int,
                        read=_one_factor_excess) -> tuple[np.ndarray, np.ndarray]:
    """The random-groups null of :func:`class_pair_test` and :func:`class_self_test`:
    ``samples`` times, random groups of the pool with the unit structure of ``classes`` (token
    indices; see :class:`_Units`) and a pool of the rest; ``correlate`` maps ``(n, gk)``
    memberships (``g = len(classes) + 1`` groups a sample) to their ``(gk, gk)`` group
    correlation and ``read`` one sample's ``(g, g)`` block to ``(entry, predicted)``.  Returns
    the excess over the prediction and the raw entry of every sample."""
    rng = np.random.default_rng(seed)
    units = _Units(pool, labels)
    structures = [units.structure(members) for members in classes]
    g = len(classes) + 1
    null, raw = [], []
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        groups = np.zeros((n, g * count), dtype=bool)
        for k in range(count):
            for j, chosen in enumerate(units.draw(rng, structures)):
                groups[chosen, g * k + j] = True
        matrix = correlate(groups)
        for k in range(count):
            value, prediction = read(matrix[g * k: g * k + g, g * k: g * k + g])
            null.append(value - prediction)
            raw.append(value)
    return np.array(null), np.array(raw)


def class_pair_test(draws: torch.Tensor, first: np.ndarray, second: np.ndarray, pool: np.ndarray | None = None,
                    exclude_same: np.ndarray | None = None, samples: int = 200, seed: int = 0,
                    chunk: int = 20) -> ClassPairTest:
    """The relation between two classes of tokens, read against a null their loadings cannot fool.

    Losses share a common mode, and a class loading more on it than other tokens correlates
    more with everything.  If that mode were all, the entry between classes ``A`` and ``B``
    would be what their correlations with a pool ``P`` of other tokens predict:
    ``ρ(A, B) ≈ ρ(A, P) ρ(B, P) / ρ(P, P)`` (each ``ρ`` a mean correlation over pairs of distinct
    tokens, so no token's own noise enters it, and the prediction is unbiased for any loadings).
    The test is the **excess** of the entry over that prediction, beside the excess of
    ``samples`` pairs of random groups drawn from the pool, each predicted from the rest of the
    pool, with the classes' own Monte-Carlo error added (:attr:`ClassPairTest.combined_null`:
    a class loading far more than a weakly loading pool has a far noisier prediction than
    random groups of it).  Loadings alone leave the excess inside the null; a component the
    two classes alone share puts it above (of opposite signs, below).  The random groups have
    the classes' unit structure: with ``exclude_same`` (token ids, say), each is made of as
    many whole ids of the pool as its class has, each id giving at most as many copies as the
    class's id it stands for, so that a class of a few frequent ids is read against groups of
    a few frequent ids, whose excess spreads as widely as its own; without labels, of single
    tokens.

    ``first`` and ``second`` are ``(n,)`` masks (or indices) of two disjoint classes; ``pool`` the
    other tokens (default: those in neither class); ``draws`` ``(..., C, T, n)``;
    ``exclude_same`` as in :func:`group_correlation` (applied to every mean)."""
    n = draws.shape[-1]
    membership = np.zeros((n, 3), dtype=bool)
    membership[_token_indices(first, n, "first"), 0] = True
    membership[_token_indices(second, n, "second"), 1] = True
    if (membership[:, 0] & membership[:, 1]).any():
        raise ValueError("the two classes share tokens; a between-class test needs disjoint classes")
    in_class = membership[:, :2].any(axis=1)
    pool = np.flatnonzero(~in_class) if pool is None else _token_indices(pool, n, "pool")
    if in_class[pool].any():
        raise ValueError("the pool must not hold tokens of either class")
    membership[pool, 2] = True
    sizes = (int(membership[:, 0].sum()), int(membership[:, 1].sum()))
    if min(sizes) < 1 or sum(sizes) + 2 > len(pool):
        raise ValueError(f"need two non-empty classes ({sizes} tokens) and a pool larger than both together; "
                         f"the pool has {len(pool)}")
    if samples < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    return _paired_sums_pair_test(_PairedSums(draws, exclude_same), membership[:, 0], membership[:, 1], pool,
                                  samples, seed, chunk)


def class_self_test(draws: torch.Tensor, members: np.ndarray, pool: np.ndarray | None = None,
                    exclude_same: np.ndarray | None = None, samples: int = 200,
                    seed: int = 0) -> ClassPairTest:
    """A class's relation with itself, read as :func:`class_pair_test` reads two classes: the
    class's mean correlation over pairs of its distinct tokens, ``ρ(A, A)``, against what its
    loading on the pooled mode predicts, ``ρ(A, P)² / ρ(P, P)``, and the excess beside the same
    excess for ``samples`` random groups of the pool with the class's unit structure (as
    :func:`class_pair_test` draws them), each against the rest of the pool.  A class that
    merely loads more (or less) on the common mode than the pool stays inside the null; a
    component its tokens alone share puts it above.

    ``members`` is a ``(n,)`` mask (or indices) of the class; ``pool`` the other tokens
    (default: all the others); ``exclude_same`` as in :func:`group_correlation`."""
    n = draws.shape[-1]
    members = _token_indices(members, n, "members")
    pool = np.setdiff1d(np.arange(n), members) if pool is None else _token_indices(pool, n, "pool")
    return _paired_sums_self_test(_PairedSums(draws, exclude_same), members, pool, samples, seed)


def _self_excess(matrix: np.ndarray) -> tuple[float, float]:
    """``(entry, predicted)`` from the ``(2, 2)`` group correlation of (class, pool)."""
    pool = matrix[1, 1]
    return float(matrix[0, 0]), float(matrix[0, 1] ** 2 / pool if pool > 0 else 0.0)


def _loading_aware_test(sums: "_PairedSums", membership: np.ndarray, classes: tuple[np.ndarray, ...],
                        pool: np.ndarray, read, samples: int, seed: int, chunk: int) -> ClassPairTest:
    """The test of ``classes`` (token indices; ``membership`` ``(n, g)`` holds them and the pool
    last), read by ``read`` (:func:`_one_factor_excess` or :func:`_self_excess`)."""
    observed = sums(membership)
    resamples = _resampled_matrices(sums, membership, samples, seed)
    resolved = bool(observed[-1, -1] > 2 * np.nanstd(resamples[:, -1, -1]))
    entry, predicted = read(observed)
    resampled = np.array([np.subtract(*read(matrix)) for matrix in resamples])
    null, raw = _random_groups_null(sums, len(sums.valid), pool, classes, sums.units, samples, seed, chunk,
                                    read=read)
    return ClassPairTest(entry=entry, predicted=predicted, null=null, raw_null=raw, resampled=resampled,
                         mode_resolved=resolved)


def _paired_sums_self_test(sums: "_PairedSums", members: np.ndarray, pool: np.ndarray, samples: int, seed: int,
                           chunk: int = 20) -> ClassPairTest:
    n = sums.Z.shape[0]
    size = len(members)
    if size < 2 or np.isin(pool, members).any() or len(pool) < size + 2:
        raise ValueError(f"need a class of two tokens or more ({size}) and a disjoint pool larger than it "
                         f"({len(pool)} tokens)")
    if samples < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    membership = np.zeros((n, 2), dtype=bool)
    membership[members, 0], membership[pool, 1] = True, True
    return _loading_aware_test(sums, membership, (members,), pool, _self_excess, samples, seed, chunk)


class _PairedSums:
    """:func:`group_correlation` of many memberships on one set of draws: the standardized
    losses and, when pairs with equal labels are left out, the Gram matrix ``Z Zᵀ`` restricted to
    those pairs (sparse: block-diagonal by label), built once, so that each membership costs
    ``O(n · A)`` beyond one ``(A, D)`` product instead of a per-label ``(G, A, D)`` sum."""

    def __init__(self, draws: torch.Tensor, exclude_same: np.ndarray | None) -> None:
        self.draws, self.exclude_same = draws, exclude_same
        self.Z = standardized_losses(draws).double()
        n = self.Z.shape[0]
        self.valid = (self.Z.abs().sum(dim=1) > 0).numpy()
        self.labels = _labels(exclude_same, n)
        self.units = None if exclude_same is None else self.labels
        """The labels random groups are drawn by, whole (:class:`_Units`); ``None``: token by token."""
        if exclude_same is None:
            self.same = None
            return
        order = np.argsort(self.labels.numpy(), kind="stable")
        bounds = np.flatnonzero(np.diff(self.labels.numpy()[order])) + 1
        rows, cols, values = [], [], []
        for block in np.split(order, bounds):
            index = torch.as_tensor(block)
            rows.append(index.repeat_interleave(len(block)))
            cols.append(index.repeat(len(block)))
            values.append((self.Z[index] @ self.Z[index].T).reshape(-1))
        index = torch.stack([torch.cat(rows), torch.cat(cols)])
        same = torch.sparse_coo_tensor(index, torch.cat(values), (n, n), check_invariants=True)
        self.same = same.coalesce()

    def __call__(self, membership: np.ndarray) -> np.ndarray:
        """``(A, A)``: what :func:`group_correlation` gives for ``membership`` ``(n, A)``."""
        M = torch.tensor(np.asarray(membership, dtype=bool) & self.valid[:, None], dtype=torch.float64)
        sums = M.T @ self.Z
        total = sums @ sums.T
        counts = M.sum(0)
        if self.same is None:
            same_total = same_pairs = M.T @ M
        else:
            same_total = M.T @ torch.sparse.mm(self.same, M)
            per_label = torch.zeros(int(self.labels.max()) + 1, M.shape[1], dtype=torch.float64)
            per_label.index_add_(0, self.labels, M)
            same_pairs = per_label.T @ per_label
        kept = counts[:, None] * counts[None, :] - same_pairs
        mean = (total - same_total) / kept.clamp_min(1)
        return mean.where(kept > 0, torch.tensor(float("nan"), dtype=torch.float64)).numpy()


def _paired_sums_pair_test(sums: _PairedSums, first: np.ndarray, second: np.ndarray, pool: np.ndarray,
                           samples: int, seed: int, chunk: int = 20) -> ClassPairTest:
    """:func:`class_pair_test` from :class:`_PairedSums` (the same groups, in the same order)."""
    n = sums.Z.shape[0]
    first, second, pool = (_token_indices(t, n, what) for t, what in ((first, "first"), (second, "second"),
                                                                        (pool, "pool")))
    membership = np.zeros((n, 3), dtype=bool)
    membership[first, 0], membership[second, 1], membership[pool, 2] = True, True, True
    return _loading_aware_test(sums, membership, (first, second), pool, _one_factor_excess, samples, seed, chunk)


def class_relation_tests(draws: torch.Tensor, target: np.ndarray, partners: np.ndarray,
                         exclude_same: np.ndarray | None = None, samples: int = 200,
                         seed: int = 0) -> list[ClassPairTest | None]:
    """One class against itself and against each of several others, every entry read against
    the loading-aware null: ``[self, partner 0, partner 1, …]``.

    ``target`` is a ``(n,)`` mask; ``partners`` ``(n, A)`` masks of the other classes, which may
    overlap the target (classes are not exclusive): each partner is read without the target's
    tokens, against a pool of tokens in neither.  The class with itself is what
    :func:`class_self_test` gives against the tokens outside it; the others what
    :func:`class_pair_test` gives (the same numbers, computed once for all the tests on these
    draws).  ``None`` where a class is too small to be read (fewer than two target tokens, or no
    partner token outside the target)."""
    target = np.asarray(target, dtype=bool)
    partners = np.asarray(partners, dtype=bool)
    n = draws.shape[-1]
    if target.shape != (n,) or partners.ndim != 2 or partners.shape[0] != n:
        raise ValueError(f"need a ({n},) target mask and ({n}, A) partner masks, "
                         f"got {target.shape} and {partners.shape}")
    if samples < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    sums = _PairedSums(draws, exclude_same)
    tests: list[ClassPairTest | None] = [None]
    if target.sum() >= 2 and (~target).sum() >= target.sum() + 2:
        tests[0] = _paired_sums_self_test(sums, np.flatnonzero(target), np.flatnonzero(~target), samples, seed)
    for a in range(partners.shape[1]):
        partner = partners[:, a] & ~target
        pool = ~(target | partners[:, a])
        ok = target.any() and partner.any() and pool.sum() >= target.sum() + partner.sum() + 2
        if not ok:
            tests.append(None)
            continue
        tests.append(_paired_sums_pair_test(sums, target, partner, pool, samples, seed + 1 + a))
    return tests


def same_label_pair_share(membership: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of the pairs of distinct tokens within each class whose labels are equal (e.g. two
    copies of one token id): ``(A,)``, ``nan`` for a class of fewer than two tokens."""
    member = np.asarray(membership, dtype=bool)
    labels = _labels(labels, member.shape[0]).numpy()
    counts = np.stack([np.bincount(labels[member[:, a]], minlength=labels.max() + 1) for a in range(member.shape[1])])
    size = counts.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 1, ((counts**2).sum(axis=1) - size) / (size * (size - 1)), np.nan)


Exclusion = np.ndarray | tuple[np.ndarray, ...] | None
"""Labels that rule out neighbours: one ``(n,)`` array (e.g. token ids), several (e.g. token
ids and sequence indices: a neighbour is ruled out when any label matches), or ``None``."""


def _exclusion_labels(exclude_same: Exclusion, n: int) -> list[torch.Tensor]:
    if exclude_same is None:
        return []
    arrays = exclude_same if isinstance(exclude_same, tuple) else (exclude_same,)
    return [_labels(labels, n) for labels in arrays]


def pool_loadings(Z: torch.Tensor, pool: np.ndarray, labels: np.ndarray | None = None) -> torch.Tensor:
    """Each token's loading on the mode the ``pool``'s tokens share, from the standardized
    losses ``Z`` ``(n, D)``: ``ρ(t, P) / √ρ(P, P)``, ``(n,)`` float64, where ``ρ(t, P)`` is token
    ``t``'s mean correlation with the pool's other tokens and ``ρ(P, P)`` the pool's mean over
    pairs of distinct tokens (with ``labels``, e.g. token ids, pairs with equal labels are left
    out of both).  Under one common mode ``Corr(ℓ_t, ℓ_u) = λ_t λ_u`` this estimates ``λ_t``
    without the shrinkage of a projection on an estimated direction (whose own noise makes
    the tokens that load most look alike after it is removed); 0 for every token when the
    pool's mean correlation is not positive."""
    n = Z.shape[0]
    pool = _token_indices(pool, n, "pool")
    lab = _labels(labels, n)
    member = torch.zeros(n, dtype=torch.float64)
    member[torch.as_tensor(pool)] = 1.0
    member = member * (Z.abs().sum(dim=1) > 0)
    groups = int(lab.max()) + 1
    per_label = torch.zeros(groups, Z.shape[1], dtype=torch.float64).index_add_(0, lab, member[:, None] * Z)
    per_count = torch.zeros(groups, dtype=torch.float64).index_add_(0, lab, member)
    total = member @ Z                                                          # (D,) the pool's sum
    with_pool = (Z @ total - (Z * per_label[lab]).sum(dim=1)) / (member.sum() - per_count[lab]).clamp_min(1)
    pool_mean = float(_group_correlation(Z, (member > 0).numpy()[:, None], labels)[0, 0])
    if not pool_mean > 0:
        return torch.zeros(n, dtype=torch.float64)
    return with_pool / math.sqrt(pool_mean)


def knn_neighbours(draws: torch.Tensor, k: int = 30, exclude_same: Exclusion = None, block: int = 1024,
                   after_common_mode: bool = False, mode_pool: np.ndarray | None = None) -> torch.Tensor:
    """Each token's ``k`` most correlated other tokens by loss, ``(n, k)`` indices.

    ``exclude_same`` (``(n,)`` labels such as token ids, or a tuple of such arrays) also rules
    out tokens that share a label with the token.  With one common mode,
    ``Corr(ℓ_t, ℓ_u) ≈ λ_t λ_u``, so every token's nearest neighbours would be the tokens that
    load most on it, and a class that loads more would vote for itself; ``after_common_mode``
    ranks by the partial correlation given the mode of the tokens ``mode_pool`` (default all),
    ``(Corr(ℓ_t, ℓ_u) − λ_t λ_u) / √((1 − λ_t²)(1 − λ_u²))`` with the loadings of
    :func:`pool_loadings` (computed with the first labels of ``exclude_same``).  Found in
    blocks of ``block`` rows, so memory is ``O(block · n)``."""
    Z = standardized_losses(draws)
    n = Z.shape[0]
    labels = _exclusion_labels(exclude_same, n)
    eligible = n - 1 - sum(int(torch.bincount(lab).max()) - 1 for lab in labels)  # at least this many per token
    if not 0 < k <= eligible:
        raise ValueError(f"need 0 < k <= {eligible} (tokens sharing no label with the most common ones), got k = {k}")
    if after_common_mode:
        pool = np.arange(n) if mode_pool is None else mode_pool
        loading = pool_loadings(Z.double(), pool, labels[0].numpy() if labels else None).clamp(-0.999, 0.999)
        scale = (1 - loading**2).rsqrt().float()
        loading = loading.float()
    neighbours = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n))
        similarity = Z[rows] @ Z.T
        if after_common_mode:   # the row's own factor does not change its ranking
            similarity = (similarity - loading[rows, None] * loading[None, :]) * scale[None, :]
        similarity[torch.arange(len(rows)), rows] = -float("inf")  # self
        for lab in labels:
            similarity[lab[rows][:, None] == lab[None, :]] = -float("inf")  # same label
        neighbours[rows] = similarity.topk(k, dim=1).indices
    return neighbours


def random_neighbours(n: int, k: int, exclude_same: Exclusion, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct neighbours drawn at random for each of ``n`` tokens, among the tokens that
    share no label with it (and are not itself): ``(n, k)`` indices.  The neighbours of a vote
    that knows nothing about the losses, with the same exclusions as :func:`knn_neighbours`."""
    labels = _exclusion_labels(exclude_same, n)
    rows = torch.arange(n)[:, None]
    neighbours = torch.randint(n, (n, k), generator=generator)
    for _ in range(10_000):
        invalid = neighbours == rows
        for lab in labels:
            invalid |= lab[neighbours] == lab[:, None]
        ordered, order = neighbours.sort(dim=1)
        repeated = torch.zeros_like(invalid)
        repeated.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])  # later copies of a neighbour
        invalid |= repeated
        if not bool(invalid.any()):
            return neighbours
        neighbours[invalid] = torch.randint(n, (int(invalid.sum()),), generator=generator)
    raise ValueError(f"cannot draw {k} distinct eligible neighbours for every token; use a smaller k")


def recall_from_neighbours(neighbours: torch.Tensor, membership: np.ndarray) -> np.ndarray:
    """Same-class recall of the rate-adjusted vote of ``neighbours`` ``(n, k)``, minus the class
    rate: ``(A,)``.  Each neighbour votes for its classes, each vote divided by the rate of that
    class among the other tokens; the token is predicted the winning class, and the recall of
    class ``a`` is the share of its tokens predicted ``a`` (``nan`` for an empty class)."""
    member = torch.as_tensor(np.asarray(membership, dtype=bool))
    n, A = member.shape
    if neighbours.shape[0] != n:
        raise ValueError(f"membership has {n} rows for {neighbours.shape[0]} tokens")
    counts = member.sum(0).double()
    votes = member[neighbours].sum(1).double()  # (n, A)
    rate = (counts[None, :] - member.double()) / (n - 1)
    score = torch.where(rate > 0, votes / rate.clamp_min(1e-12), torch.zeros_like(votes))
    predicted = score.argmax(dim=1)
    recall = np.array([(predicted[member[:, a]] == a).double().mean().item() if counts[a] > 0 else np.nan
                       for a in range(A)])
    return recall - (counts / n).numpy()


def knn_class_recall(draws: torch.Tensor, membership: np.ndarray, k: int = 30, exclude_same: Exclusion = None,
                     block: int = 1024) -> np.ndarray:
    """Same-class recall minus class rate of a ``k``-nearest-neighbour vote by loss correlation
    (paper App. D.1.3): ``(A,)``.  Its value for neighbours unrelated to the classes is *not* 0
    (see :func:`knn_recall_test`).  ``exclude_same`` as in :func:`knn_neighbours`."""
    return recall_from_neighbours(knn_neighbours(draws, k, exclude_same, block), membership)


def _rate_scores(neighbours: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """The rate-adjusted votes of ``neighbours`` ``(n, k)`` for every class, ``(n, A)``."""
    n = member.shape[0]
    votes = member[neighbours].sum(1).double()
    rate = (member.sum(0).double()[None, :] - member.double()) / (n - 1)
    return torch.where(rate > 0, votes / rate.clamp_min(1e-12), torch.zeros_like(votes))


def confusable_classes(neighbours: torch.Tensor, membership: np.ndarray) -> np.ndarray:
    """For every class, the other class its tokens' neighbours vote for most (rate-adjusted
    votes summed over the class's tokens), the tokens of no class counting as one more class
    (index ``A``): ``(A,)`` indices, the group a factor shared with it would make it look like."""
    member = np.asarray(membership, dtype=bool)
    A = member.shape[1]
    extended = torch.as_tensor(np.concatenate([member, ~member.any(axis=1, keepdims=True)], axis=1))
    scores = _rate_scores(neighbours, extended)
    confused = np.empty(A, dtype=int)
    for a in range(A):
        totals = scores[extended[:, a]].sum(0)
        totals[a] = -float("inf")
        confused[a] = int(totals.argmax())
    return confused


def specificity_null(neighbours: torch.Tensor, membership: np.ndarray, confused: np.ndarray, permutations: int,
                     seed: int = 0) -> np.ndarray:
    """``(permutations, A)``: the recall of each class ``a`` with its label shuffled among the
    tokens of ``a`` and of ``confused[a]`` (a class, or ``A`` for the tokens of no class; see
    :func:`confusable_classes`), its size kept and every other class as it is, under the same
    ``neighbours``.  If ``a``'s tokens are found only as part of a group they share with the
    confused class (a factor common to both), the shuffled label is recalled as well; only what
    tells ``a`` from that group lifts its recall above this null.  With neighbours found under
    exclusions (``exclude_same``), the shuffle moves the label away from its own ids, which
    makes this null conservative (high) for a class made of a few ids."""
    member = np.asarray(membership, dtype=bool)
    n, A = member.shape
    groups = np.concatenate([member, ~member.any(axis=1, keepdims=True)], axis=1)
    base = torch.as_tensor(member)
    rng = np.random.default_rng(seed)
    null = np.empty((permutations, A))
    others = _rate_scores(neighbours, base)  # shuffling one class leaves the others' scores as they are
    for a in range(A):
        union = np.flatnonzero(groups[:, a] | groups[:, confused[a]])
        size = int(member[:, a].sum())
        for p in range(permutations):
            column = np.zeros(n, dtype=bool)
            column[rng.choice(union, size=size, replace=False)] = True
            inside = torch.as_tensor(column)
            scores = others.clone()
            scores[:, a] = _rate_scores(neighbours, inside[:, None])[:, 0]
            null[p, a] = (scores.argmax(dim=1)[inside] == a).double().mean().item() - size / n
    return null


@dataclass
class KNNRecall:
    """KNN recall beside its permutation null."""

    recall: np.ndarray
    """``(A,)`` recall minus class rate."""
    null: np.ndarray
    """``(P, A)`` the same vote ``P`` times with neighbours that know nothing of the losses (see
    :func:`knn_recall_test`): what it gives when the classes have nothing to do with influence."""
    specific_null: np.ndarray
    """``(P, A)`` the vote with each class's label shuffled among its tokens and those of
    :attr:`confused_with` (:func:`specificity_null`): what a factor shared by the two gives."""
    confused_with: np.ndarray
    """``(A,)`` the class each class is most confused with (:func:`confusable_classes`)."""

    @property
    def null_mean(self) -> np.ndarray:
        """``(A,)`` mean of the null."""
        return self.null.mean(axis=0)

    def null_band(self, coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(A,)`` lower and upper quantiles holding ``coverage`` of the null."""
        tail = (1 - coverage) / 2
        return np.quantile(self.null, tail, axis=0), np.quantile(self.null, 1 - tail, axis=0)

    @property
    def excess(self) -> np.ndarray:
        """``(A,)`` recall above the null's mean."""
        return self.recall - self.null_mean

    def specific_band(self, coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(A,)`` lower and upper quantiles holding ``coverage`` of :attr:`specific_null`."""
        tail = (1 - coverage) / 2
        return np.quantile(self.specific_null, tail, axis=0), np.quantile(self.specific_null, 1 - tail, axis=0)

    def recognised(self, coverage: float = 0.95) -> np.ndarray:
        """``(A,)`` booleans: the recall lies above the upper bound of *both* nulls' bands, so the
        class is told apart from random neighbours and from the class it is most confused with.
        This is what a claim that a class is recognised is read against."""
        return (self.recall > self.null_band(coverage)[1]) & (self.recall > self.specific_band(coverage)[1])


def knn_recall_test(draws: torch.Tensor, membership: np.ndarray, k: int = 30, exclude_same: Exclusion = None,
                    permutations: int = 200, seed: int = 0, block: int = 1024, after_common_mode: bool = False,
                    mode_pool: np.ndarray | None = None) -> KNNRecall:
    """:func:`knn_class_recall` beside its two nulls, ``permutations`` times each: the chance null
    below and the specificity null (:func:`specificity_null`); :meth:`KNNRecall.recognised`
    reads a class against both.  ``after_common_mode`` as in :func:`knn_neighbours`, with the
    mode read from ``mode_pool`` (default: the tokens of no class, which carry the mode all
    tokens share but no class's own factor, so removing it cannot remove what makes a class a
    class).

    Without ``exclude_same`` the null shuffles the rows of the membership (which keeps the
    classes' sizes and overlaps) under the neighbours found once.  With it, shuffling would be
    wrong: the shuffle moves a class away from its token ids while the exclusion stays with the
    ids, so a class made of a few ids, which can never vote for itself through its own copies,
    could in the shuffled data, and the null would sit too high.  The null then keeps the
    membership and draws each token's ``k`` neighbours at random among the tokens it may have
    as neighbours (:func:`random_neighbours`)."""
    if permutations < 1:
        raise ValueError(f"need at least one permutation, got {permutations}")
    member = np.asarray(membership, dtype=bool)
    if after_common_mode and mode_pool is None:
        mode_pool = ~member.any(axis=1)
        if mode_pool.sum() < 2:
            raise ValueError("every token is in a class: name the tokens to read the common mode from (mode_pool)")
    neighbours = knn_neighbours(draws, k, exclude_same, block, after_common_mode, mode_pool)
    if exclude_same is None:
        rng = np.random.default_rng(seed)
        null = [recall_from_neighbours(neighbours, member[rng.permutation(len(member))]) for _ in range(permutations)]
    else:
        generator = torch.Generator().manual_seed(seed)
        null = [recall_from_neighbours(random_neighbours(len(member), k, exclude_same, generator), member)
                for _ in range(permutations)]
    confused = confusable_classes(neighbours, member)
    return KNNRecall(recall_from_neighbours(neighbours, member), np.array(null),
                     specificity_null(neighbours, member, confused, permutations, seed), confused)
