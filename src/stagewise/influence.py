"""Bayesian influence from loss draws, and the public entry point :func:`local_bif`.

``BIF(i, j) = −Cov(ℓ_i, ℓ_j)`` over the draws of all chains pooled (SPEC §1).  Negative BIF
means upweighting ``i`` lowers the expected loss of ``j`` (helps); positive means it harms.
The *normalized* BIF is ``−Corr(ℓ_i, ℓ_j)``, minus the Pearson correlation of the losses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import torch
from torch import nn

from stagewise.sampling import LossDraws, LossFn, SGLDConfig, sample_losses


def _pooled(draws: torch.Tensor) -> torch.Tensor:
    """``(..., C, T, n) -> (..., C·T, n)``: chains and draws pooled into one sample."""
    if draws.ndim < 3:
        raise ValueError(f"draws must have shape (..., chains, draws, n), got {tuple(draws.shape)}")
    return draws.reshape(*draws.shape[:-3], -1, draws.shape[-1])


def bif_matrix(draws: torch.Tensor, observable_draws: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
    """BIF between every sample and every observable from pooled draws.

    ``draws``: ``(..., C, T, n)`` losses of the samples; ``observable_draws``:
    ``(..., C, T, n_obs)`` (default: ``draws``).  Returns ``(..., n, n_obs)`` holding
    ``−Cov`` (unbiased, over ``C·T`` pooled draws) or, with ``normalized``, ``−Corr``.
    """
    a = _pooled(draws).double()
    b = a if observable_draws is None else _pooled(observable_draws).double()
    if a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"draws {tuple(draws.shape)} and observable draws {tuple(observable_draws.shape)} do not match")
    a = a - a.mean(dim=-2, keepdim=True)
    b = b - b.mean(dim=-2, keepdim=True)
    covariance = a.transpose(-1, -2) @ b / (a.shape[-2] - 1)
    if normalized:
        scale_a = a.pow(2).sum(-2).div(a.shape[-2] - 1).sqrt()
        scale_b = b.pow(2).sum(-2).div(b.shape[-2] - 1).sqrt()
        covariance = covariance / (scale_a[..., :, None] * scale_b[..., None, :]).clamp_min(1e-300)
    return -covariance


def local_learning_coefficient(draws: LossDraws) -> torch.Tensor:
    """LLC estimate ``λ̂ = nβ (E[L(w)] − L(w*))`` at each checkpoint, ``(K,)``.

    ``L`` is the mean per-sample loss over the sampling set (the per-sample losses must be the
    negative log-likelihood for this to estimate the learning coefficient).
    """
    if draws.sampling is None:
        raise ValueError("the LLC needs the sampling-set losses (record_sampling=True)")
    mean_loss = draws.sampling.double().mean(dim=-1).mean(dim=(1, 2))  # (K,)
    return draws.config.nbeta * (mean_loss - draws.initial_loss.double())


def local_bif(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    observables: Any | None = None,
    *,
    nbeta: float,
    gamma: float,
    epsilon: float,
    chains: int,
    draws: int,
    batch_size: int | None = None,
    seed: int = 0,
    normalized: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """The local BIF of every sample of ``data`` on every observable, at the model's weights.

    ``loss_fn(model, batch)`` returns one loss per sample (or per token) of ``batch``; ``data``
    and ``observables`` are tensors or tuples/lists/dicts of tensors indexed along dimension 0
    (``observables`` defaults to ``data``).  Samples the local posterior with RMSprop-SGLD
    (:mod:`stagewise.sampling`) and returns a ``(len(data), len(observables))`` tensor of
    ``−Cov`` (or ``−Corr`` with ``normalized``); per-token losses count as separate entries.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> local_bif(model, loss, (x, y), nbeta=16, gamma=100, epsilon=1e-3, chains=2, draws=50, progress=False).shape
    torch.Size([16, 16])
    """
    config = SGLDConfig(epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=chains, draws=draws, batch_size=batch_size, seed=seed)
    recorded = sample_losses(model, loss_fn, data, config, observables, progress=progress)
    other = recorded.observables if observables is not None else None
    return bif_matrix(recorded.sampling, other, normalized=normalized)[0].to(torch.get_default_dtype())


def trace_correlation(traces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson correlation over time between two sets of influence traces.

    ``traces`` and ``reference`` have shape ``(T, ...)``; returns the correlation of every
    trailing entry, shape ``(...)`` (e.g. one value per query).
    """
    a = np.asarray(traces, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"trace shapes differ: {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))


def standardized_losses(draws: torch.Tensor) -> torch.Tensor:
    """Pooled draws ``(..., C, T, n)`` as a ``(n, C·T)`` matrix ``Z`` with ``Z Zᵀ`` the Pearson
    correlation of the losses (rows of constant losses are zero)."""
    pooled = _pooled(draws).reshape(-1, draws.shape[-1]).T.float()  # (n, D)
    centred = pooled - pooled.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, centred / norm.clamp_min(1e-30), torch.zeros_like(centred))


def group_correlation(draws: torch.Tensor, membership: np.ndarray) -> np.ndarray:
    """Mean loss correlation between classes of tokens: ``(A, A)``.

    Entry ``[a, b]`` averages ``Corr(ℓ_t, ℓ_t')`` over ``t`` in class ``a`` and ``t'`` in class
    ``b`` with ``t ≠ t'``, the group normalized BIF with its sign flipped (positive: the two
    classes' losses move together, upweighting one helps the other).  ``draws`` is
    ``(..., C, T, n)``; ``membership`` is ``(n, A)`` booleans.  Computed from class sums of the
    standardized loss matrix in ``O(n · draws)`` memory; the ``n × n`` matrix is never formed.
    """
    Z = standardized_losses(draws).double()
    valid = (Z.abs().sum(dim=1) > 0).numpy()
    M = torch.tensor(np.asarray(membership, dtype=bool) & valid[:, None], dtype=torch.float64)  # (n, A)
    if M.shape[0] != Z.shape[0]:
        raise ValueError(f"membership has {M.shape[0]} rows for {Z.shape[0]} tokens")
    sums = M.T @ Z  # (A, D)
    both = M.T @ M  # tokens in both classes: |a ∩ b|
    pairs = M.sum(0)[:, None] * M.sum(0)[None, :] - both
    total = sums @ sums.T - both  # each token's self-correlation is exactly 1
    return (total / pairs.clamp_min(1)).where(pairs > 0, torch.tensor(float("nan"), dtype=torch.float64)).numpy()


def knn_class_recall(draws: torch.Tensor, membership: np.ndarray, k: int = 30, block: int = 1024) -> np.ndarray:
    """Same-class recall of a k-nearest-neighbour vote by loss correlation, minus the class rate
    (paper App. D.1.3): ``(A,)``, 0 is chance.

    Each token's ``k`` most correlated other tokens vote for their classes, each vote divided
    by the rate of that class among the other tokens; the token is predicted the winning class.
    Recall of class ``a`` is the share of its tokens predicted ``a``.  Neighbours are found in
    blocks of ``block`` rows, so memory is ``O(block · n)``.
    """
    Z = standardized_losses(draws)
    member = torch.tensor(np.asarray(membership, dtype=bool))
    n, A = member.shape
    if n != Z.shape[0] or not 0 < k < n:
        raise ValueError(f"need membership rows = tokens = {Z.shape[0]} and 0 < k < {Z.shape[0]}")
    counts = member.sum(0).double()
    predicted = torch.empty(n, dtype=torch.long)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        similarity = Z[rows] @ Z.T
        similarity[torch.arange(similarity.shape[0]), torch.arange(rows.start, rows.stop)] = -float("inf")
        neighbours = similarity.topk(k, dim=1).indices  # (b, k)
        votes = member[neighbours].sum(1).double()  # (b, A)
        rate = (counts[None, :] - member[rows].double()) / (n - 1)
        score = torch.where(rate > 0, votes / rate.clamp_min(1e-12), torch.zeros_like(votes))
        predicted[rows] = score.argmax(dim=1)
    recall = np.array([(predicted[member[:, a]] == a).double().mean().item() if counts[a] > 0 else np.nan for a in range(A)])
    return recall - (counts / n).numpy()
