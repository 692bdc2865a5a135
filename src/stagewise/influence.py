"""Bayesian influence from loss draws, and the public entry points :func:`bif_trajectory` (every
checkpoint of a training run) and :func:`local_bif` (one model).

``BIF(i, j) = −Cov(ℓ_i, ℓ_j)`` over the draws of all chains pooled (SPEC §1).  Negative BIF
means upweighting ``i`` lowers the expected loss of ``j`` (helps); positive means it harms.
The *normalized* BIF is ``−Corr(ℓ_i, ℓ_j)``, minus the Pearson correlation of the losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def chain_rhat(traces: torch.Tensor) -> torch.Tensor:
    """Gelman–Rubin ``R̂`` across chains of a scalar trace, ``(..., C, T) -> (...)``.

    ``R̂ = √(((T−1)/T·W + B/T) / W)`` with ``W`` the mean within-chain variance and ``B/T`` the
    variance of the chain means; near 1 when the chains sample one distribution.
    """
    x = traces.double()
    T = x.shape[-1]
    within = x.var(dim=-1).mean(dim=-1)
    between = x.mean(dim=-1).var(dim=-1)
    pooled = (T - 1) / T * within + between
    return (pooled / within).sqrt()


HEALTHY, DIVERGED, TOO_LITTLE_SIGNAL = "healthy", "diverged", "too little signal"


@dataclass
class BIFTrajectory:
    """The BIF at every checkpoint of a trajectory, with the draws and the chains' health.

    ``bif``: ``(K, n, n_obs)`` in the library's axis order ``(checkpoint, source, query)``:
    ``−Cov(ℓ_source, ℓ_query)`` over the pooled draws, or ``−Corr`` when ``normalized``
    (queries are the observables if given, else the sampling set itself).  ``llc``: ``(K,)``
    local learning coefficient estimates.  ``loss_trace``: ``(K, C, T)`` the mean batch loss of
    every chain at every draw; ``rhat``: ``(K,)`` Gelman–Rubin ``R̂`` of those traces across
    chains; ``verdicts``: one per checkpoint, ``"healthy"``, ``"diverged"`` (a chain's loss
    became non-finite or ran away; its draws are NaN and so is the BIF) or ``"too little
    signal"`` (the losses hardly move: their spread over the draws is at the level of rounding,
    so the covariances are noise).  ``draws`` holds the recorded losses themselves.
    """

    bif: torch.Tensor
    normalized: bool
    llc: torch.Tensor
    loss_trace: torch.Tensor
    rhat: torch.Tensor
    verdicts: list[str]
    draws: LossDraws

    @property
    def healthy(self) -> bool:
        """Whether every checkpoint's verdict is healthy."""
        return all(verdict == HEALTHY for verdict in self.verdicts)

    def summary(self) -> str:
        """A line counting the verdicts (with the largest R̂), then one line per checkpoint that
        is not healthy."""
        indices = self.draws.checkpoint_indices or range(len(self.verdicts))
        counts = ", ".join(f"{self.verdicts.count(v)} {v}" for v in (HEALTHY, DIVERGED, TOO_LITTLE_SIGNAL)
                           if v in self.verdicts)
        rhat = self.rhat[torch.isfinite(self.rhat)]
        head = f"{len(self.verdicts)} checkpoints: {counts}" + (f"; largest R-hat {rhat.max():.3f}" if len(rhat) else "")
        return "\n".join([head] + [f"checkpoint {k}: {verdict} (R-hat {r:.3f})"
                                    for k, verdict, r in zip(indices, self.verdicts, self.rhat.tolist()) if verdict != HEALTHY])


def _verdicts(draws: LossDraws) -> list[str]:
    losses = draws.sampling if draws.sampling is not None else draws.observables
    result = []
    for k in range(losses.shape[0]):
        if draws.diverged_at is not None and bool((draws.diverged_at[k] >= 0).any()):
            result.append(DIVERGED)
            continue
        pooled = _pooled(losses[k]).double()
        spread = pooled.std(dim=0)
        rounding = 64 * torch.finfo(losses.dtype).eps * pooled.abs().mean(dim=0) + torch.finfo(losses.dtype).tiny
        result.append(TOO_LITTLE_SIGNAL if bool((spread <= rounding).float().mean() > 0.5) else HEALTHY)
    return result


def bif_trajectory(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    config: SGLDConfig,
    observables: Any | None = None,
    device: torch.device | str | None = None,
    *,
    normalized: bool = False,
    checkpoint_indices: Sequence[int] | None = None,
    vectorize: bool | None = None,
    progress: bool = True,
) -> BIFTrajectory:
    """SGLD around every checkpoint, all at once, and the BIF, LLC and chain health at each.

    ``model`` gives the architecture (its weights are replaced by each state dict of
    ``checkpoints``); ``loss_fn(model, batch)`` returns one loss per sample ``(m,)`` or per
    token ``(m, L)``; ``data`` (the sampling set) and ``observables`` are tensors, containers
    of tensors, a ``Dataset`` or a ``DataLoader``.  Sampling runs on ``device`` (default: the
    model's); under ``torchrun`` the ``checkpoints × chains`` work is split over the ranks, with
    the same result as one process (see :func:`stagewise.sampling.sample_losses`).  A chain
    that diverges does not stop the run: its checkpoint's verdict says so and its BIF is NaN.
    Returns a :class:`BIFTrajectory` on the CPU; ``bif`` is ``(K, n, n_obs)``.

    >>> import torch
    >>> from torch import nn
    >>> from stagewise.sampling import SGLDConfig
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> checkpoints = [model.state_dict(), {k: v + 0.1 for k, v in model.state_dict().items()}]
    >>> config = SGLDConfig(epsilon=1e-3, nbeta=16, gamma=100, chains=2, draws=50)
    >>> result = bif_trajectory(model, loss, (x, y), checkpoints, config, progress=False)
    >>> tuple(result.bif.shape), result.verdicts
    ((2, 16, 16), ['healthy', 'healthy'])
    """
    draws = sample_losses(model, loss_fn, data, config, observables, checkpoints=checkpoints,
                          checkpoint_indices=checkpoint_indices, progress=progress, vectorize=vectorize,
                          device=device, on_divergence="record")
    bif = bif_matrix(draws.sampling, draws.observables, normalized=normalized)
    return BIFTrajectory(bif=bif, normalized=normalized, llc=local_learning_coefficient(draws), loss_trace=draws.loss_trace,
                         rhat=chain_rhat(draws.loss_trace), verdicts=_verdicts(draws), draws=draws)


def local_bif(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    config: SGLDConfig,
    observables: Any | None = None,
    *,
    normalized: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The local BIF of every sample of ``data`` on every observable, at the model's weights.

    ``loss_fn(model, batch)`` returns one loss per sample (or per token) of ``batch``; ``data``
    and ``observables`` are tensors, tuples/lists/dicts of tensors indexed along dimension 0, a
    ``Dataset`` or a ``DataLoader`` (``observables`` defaults to ``data``).  Samples the local
    posterior with RMSprop-SGLD under ``config`` (:class:`~stagewise.sampling.SGLDConfig`:
    step, temperature, localization, chains, draws, burn-in, minibatch, RMSprop constants,
    seed) on ``device`` (default: the model's) and returns a ``(len(data), len(observables))``
    tensor, on the CPU, of ``−Cov`` (or ``−Corr`` with ``normalized``); per-token losses count
    as separate entries.  Raises :class:`~stagewise.sampling.SamplerDivergence` if a chain
    diverges.

    >>> import torch
    >>> from torch import nn
    >>> from stagewise.sampling import SGLDConfig
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> local_bif(model, loss, (x, y), SGLDConfig(epsilon=1e-3, nbeta=16, gamma=100, chains=2, draws=50), progress=False).shape
    torch.Size([16, 16])
    """
    recorded = sample_losses(model, loss_fn, data, config, observables, progress=progress, device=device)
    return bif_matrix(recorded.sampling, recorded.observables, normalized=normalized)[0].to(torch.get_default_dtype())


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
