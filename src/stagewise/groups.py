"""Influence between groups of tokens, from per-token loss draws, with the controls a reading needs.

Two reductions of the normalized BIF (SPEC §4), both in ``O(tokens × draws)`` memory:

* :func:`group_correlation`: the mean loss correlation (= −normalized BIF) between two classes
  of tokens, optionally over pairs that do not share a label (the same token id, or the same
  sequence), so that a class made of a few frequent ids is not read through the copies of one
  token.  Its null for a pair of classes, :func:`random_group_null`, is the same entry for
  random groups of the same sizes: the loss correlation that all tokens share grows in training;
* :func:`knn_class_recall`: how often a token's most correlated neighbours vote for its own
  class (paper App. D.1.3), optionally ignoring neighbours with the same label, beside the
  recall of the same vote with the class labels shuffled (:func:`knn_recall_test`): the
  rate-adjusted vote favours rare classes even when the neighbours are random, so its null is
  not 0.
"""

from __future__ import annotations

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


def random_group_null(draws: torch.Tensor, sizes: tuple[int, int], pool: np.ndarray, samples: int = 200,
                      exclude_same: np.ndarray | None = None, seed: int = 0, chunk: int = 20) -> np.ndarray:
    """The between-class entry of :func:`group_correlation` for two random classes: ``(samples,)``.

    Each sample draws two disjoint groups of ``sizes`` tokens from ``pool`` (token indices or an
    ``(n,)`` mask) and returns their mean loss correlation, with the same ``exclude_same`` as
    the entry it is a null for.  It is what two classes of those sizes get from the loss
    correlation that all tokens share (which grows over training), with nothing specific to
    the classes."""
    n = draws.shape[-1]
    pool = np.asarray(pool)
    pool = np.flatnonzero(pool) if pool.dtype == bool else pool
    first, second = sizes
    if min(first, second) < 1 or first + second > len(pool):
        raise ValueError(f"need two non-empty disjoint groups of {sizes} tokens from a pool of {len(pool)}")
    if samples < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    Z = standardized_losses(draws).double()   # once: every chunk reads the same losses
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        membership = np.zeros((n, 2 * count), dtype=bool)
        for k in range(count):
            chosen = rng.permutation(pool)[: first + second]
            membership[chosen[:first], 2 * k] = membership[chosen[first:], 2 * k + 1] = True
        matrix = _group_correlation(Z, membership, exclude_same)
        values.extend(matrix[2 * k, 2 * k + 1] for k in range(count))
    return np.array(values)


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


def knn_neighbours(draws: torch.Tensor, k: int = 30, exclude_same: Exclusion = None,
                   block: int = 1024) -> torch.Tensor:
    """Each token's ``k`` most correlated other tokens by loss, ``(n, k)`` indices.

    ``exclude_same`` (``(n,)`` labels such as token ids, or a tuple of such arrays) also rules
    out tokens that share a label with the token.  Found in blocks of ``block`` rows, so memory
    is ``O(block · n)``."""
    Z = standardized_losses(draws)
    n = Z.shape[0]
    labels = _exclusion_labels(exclude_same, n)
    eligible = n - 1 - sum(int(torch.bincount(lab).max()) - 1 for lab in labels)  # at least this many per token
    if not 0 < k <= eligible:
        raise ValueError(f"need 0 < k <= {eligible} (tokens sharing no label with the most common ones), got k = {k}")
    neighbours = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n))
        similarity = Z[rows] @ Z.T
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


@dataclass
class KNNRecall:
    """KNN recall beside its permutation null."""

    recall: np.ndarray
    """``(A,)`` recall minus class rate."""
    null: np.ndarray
    """``(P, A)`` the same vote ``P`` times with neighbours that know nothing of the losses (see
    :func:`knn_recall_test`): what it gives when the classes have nothing to do with influence."""

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


def knn_recall_test(draws: torch.Tensor, membership: np.ndarray, k: int = 30, exclude_same: Exclusion = None,
                    permutations: int = 200, seed: int = 0, block: int = 1024) -> KNNRecall:
    """:func:`knn_class_recall` beside its null, ``permutations`` times.

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
    neighbours = knn_neighbours(draws, k, exclude_same, block)
    if exclude_same is None:
        rng = np.random.default_rng(seed)
        null = [recall_from_neighbours(neighbours, member[rng.permutation(len(member))]) for _ in range(permutations)]
    else:
        generator = torch.Generator().manual_seed(seed)
        null = [recall_from_neighbours(random_neighbours(len(member), k, exclude_same, generator), member)
                for _ in range(permutations)]
    return KNNRecall(recall_from_neighbours(neighbours, member), np.array(null))
