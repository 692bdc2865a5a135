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
