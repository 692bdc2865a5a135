"""Bayesian influence from loss draws, and the public entry points :func:`bif_trajectory` (every
checkpoint of a training run) and :func:`local_bif` (one model).

``BIF(i, j) = −Cov(ℓ_i, ℓ_j)`` over the draws of all chains pooled (SPEC §1).  Negative BIF
means upweighting ``i`` lowers the expected loss of ``j`` (helps); positive means it harms.
The *normalized* BIF is ``−Corr(ℓ_i, ℓ_j)``, minus the Pearson correlation of the losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import torch
from torch import nn

from stagewise.diagnostics import (
    DIVERGED, HEALTHY, STEP_SENSITIVE, TOO_LITTLE_SIGNAL, VERDICTS, Criteria, StepChange, bif_standard_error,
    chain_rhat, find_burn_in, judge, little_signal, split_rhat, standard_error, step_change,
)
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


def local_learning_coefficient(draws: LossDraws, burn_in: torch.Tensor | None = None) -> torch.Tensor:
    """LLC estimate ``λ̂ = nβ (E[L(w)] − L(w*))`` at each checkpoint, ``(K,)``.

    ``L`` is the mean per-sample loss over the sampling set (the per-sample losses must be the
    negative log-likelihood for this to estimate the learning coefficient).  ``burn_in``:
    ``(K,)`` draws to discard at each checkpoint (default none).
    """
    if draws.sampling is None:
        raise ValueError("the LLC needs the sampling-set losses (record_sampling=True)")
    series = draws.sampling.double().mean(dim=-1)  # (K, C, T)
    cut = torch.zeros(series.shape[0], dtype=torch.long) if burn_in is None else burn_in
    mean_loss = torch.stack([series[k, :, int(b):].mean() for k, b in enumerate(cut)])
    return draws.config.nbeta * (mean_loss - draws.initial_loss.double())


@dataclass
class BIFTrajectory:
    """The BIF at every checkpoint of a trajectory, with its Monte-Carlo error and the chains'
    health.

    ``bif``: ``(K, n, n_obs)`` in the library's axis order ``(checkpoint, source, query)``:
    ``−Cov(ℓ_source, ℓ_query)`` over the pooled kept draws, or ``−Corr`` when ``normalized``
    (queries are the observables if given, else the sampling set itself); ``bif_se``: the same
    shape, the Monte-Carlo standard error of every entry (batch means,
    :func:`stagewise.diagnostics.bif_standard_error`).  ``llc``, ``llc_se``: ``(K,)`` local
    learning coefficient estimates and their standard errors.  ``burn_in``: ``(K,)`` draws
    discarded as warm-up, found from the trace when ``config.burn_in`` is ``None``
    (:func:`stagewise.diagnostics.find_burn_in`), else 0 (the ``config.burn_in`` steps were
    never recorded).  ``loss_trace``: ``(K, C, T)`` the mean batch loss of every chain at every
    recorded draw; ``rhat``, ``split_rhat``: ``(K,)`` ``R̂`` across chains and split ``R̂`` of the
    kept traces.  ``verdicts``: one per checkpoint from the vocabulary of
    :mod:`stagewise.diagnostics` (healthy, diverged, too little signal, unmixed, drifting,
    step-size sensitive, LLC out of range); ``reasons``: for each checkpoint every rule it
    breaks, with the numbers (empty when healthy).  ``step_change`` and ``reference``: with a
    step check, how the estimates moved and the run at half the step.  ``draws`` holds the
    recorded losses themselves.
    """

    bif: torch.Tensor
    normalized: bool
    llc: torch.Tensor
    loss_trace: torch.Tensor
    rhat: torch.Tensor
    verdicts: list[str]
    draws: LossDraws
    bif_se: torch.Tensor
    llc_se: torch.Tensor
    burn_in: torch.Tensor
    split_rhat: torch.Tensor
    reasons: list[list[tuple[str, str]]]
    step_change: StepChange | None = None
    reference: BIFTrajectory | None = None

    @property
    def healthy(self) -> bool:
        """Whether every checkpoint's verdict is healthy."""
        return all(verdict == HEALTHY for verdict in self.verdicts)

    def summary(self) -> str:
        """A line counting the verdicts (with the largest R̂ and the burn-in found), then one line
        per checkpoint that is not healthy, naming every rule it breaks."""
        indices = self.draws.checkpoint_indices or range(len(self.verdicts))
        counts = ", ".join(f"{self.verdicts.count(v)} {v}" for v in (HEALTHY, *VERDICTS[:-1]) if v in self.verdicts)
        rhat = self.rhat[torch.isfinite(self.rhat)]
        head = f"{len(self.verdicts)} checkpoints: {counts}" + (f"; largest R-hat {rhat.max():.3f}" if len(rhat) else "")
        head += f"; burn-in {int(self.burn_in.min())}–{int(self.burn_in.max())} of {self.loss_trace.shape[-1]} draws"
        lines = [f"checkpoint {k}: " + "; ".join(f"{verdict} ({reason})" for verdict, reason in found)
                 for k, found in zip(indices, self.reasons) if found]
        return "\n".join([head] + lines)


def _estimate(draws: LossDraws, normalized: bool, dimension: int, criteria: Criteria) -> BIFTrajectory:
    """BIF, errors, burn-in and verdicts from recorded draws (post-processing only)."""
    if draws.sampling is None:
        raise ValueError("bif_trajectory needs the sampling-set losses (record_sampling=True)")
    trace = draws.loss_trace
    K = trace.shape[0]
    burn_in = find_burn_in(trace, criteria) if draws.config.burn_in is None else torch.zeros(K, dtype=torch.long)
    queries = draws.observables
    n_obs = (queries if queries is not None else draws.sampling).shape[-1]
    bif = torch.empty(K, draws.sampling.shape[-1], n_obs, dtype=torch.float64)
    bif_se = torch.empty_like(bif)
    rhat, split = torch.empty(K, dtype=torch.float64), torch.empty(K, dtype=torch.float64)
    series = draws.sampling.double().mean(dim=-1)  # (K, C, T): the mean loss at every draw
    llc_se = torch.empty(K, dtype=torch.float64)
    diverged = ((draws.diverged_at >= 0).any(dim=1) if draws.diverged_at is not None
                else torch.zeros(K, dtype=torch.bool))
    reasons = []
    for k in range(K):
        b = int(burn_in[k])
        kept = draws.sampling[k, :, b:]
        kept_queries = None if queries is None else queries[k, :, b:]
        bif[k] = bif_matrix(kept, kept_queries, normalized=normalized)
        bif_se[k] = bif_standard_error(kept, kept_queries, normalized=normalized)
        rhat[k], split[k] = chain_rhat(trace[k, :, b:]), split_rhat(trace[k, :, b:])
        llc_se[k] = draws.config.nbeta * standard_error(series[k, :, b:])
    llc = local_learning_coefficient(draws, burn_in)
    for k in range(K):
        little = not bool(diverged[k]) and little_signal((draws.sampling if queries is None else queries)[k, :, int(burn_in[k]):])
        reasons.append(judge(bool(diverged[k]), little, float(rhat[k]), float(split[k]), float(llc[k]),
                             float(llc_se[k]), dimension, criteria=criteria))
    return BIFTrajectory(bif=bif, normalized=normalized, llc=llc, loss_trace=trace, rhat=rhat,
                         verdicts=[found[0][0] if found else HEALTHY for found in reasons], draws=draws, bif_se=bif_se,
                         llc_se=llc_se, burn_in=burn_in,
                         split_rhat=split, reasons=reasons)


def _dimension(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    step_check: bool = False,
    criteria: Criteria | None = None,
) -> BIFTrajectory:
    """SGLD around every checkpoint, all at once, and the BIF, LLC and chain health at each.

    ``model`` gives the architecture (its weights are replaced by each state dict of
    ``checkpoints``); ``loss_fn(model, batch)`` returns one loss per sample ``(m,)`` or per
    token ``(m, L)``; ``data`` (the sampling set) and ``observables`` are tensors, containers
    of tensors, NumPy arrays, a ``Dataset`` or a ``DataLoader``; rows of the BIF follow the
    data's order.  Sampling runs on ``device`` (default: the model's); under ``torchrun`` the
    ``checkpoints × chains`` work is split over the ranks, with the same result as one process
    (see :func:`stagewise.sampling.sample_losses`).  A chain that diverges does not stop the
    run: its checkpoint's verdict says so and its BIF is NaN.

    With ``config.burn_in=None`` (the default) the warm-up is found from the loss trace and
    its draws discarded; every estimate has a Monte-Carlo standard error, and every checkpoint
    a verdict (:mod:`stagewise.diagnostics`, thresholds in ``criteria``).  ``step_check``
    reruns everything at ``ε/2`` (twice the cost) and marks "step-size sensitive" every
    checkpoint whose BIF or LLC moves by more than ``criteria.step_tolerance`` beyond its MC
    error.  Choose ``ε`` with :func:`calibrate`.  Returns a :class:`BIFTrajectory` on the CPU;
    ``bif`` is ``(K, n, n_obs)``.

    >>> import torch
    >>> from torch import nn
    >>> from stagewise.sampling import SGLDConfig
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> checkpoints = [model.state_dict(), {k: v + 0.1 for k, v in model.state_dict().items()}]
    >>> config = SGLDConfig(epsilon=1e-3, nbeta=16, gamma=100, chains=2, draws=50)
    >>> result = bif_trajectory(model, loss, (x, y), checkpoints, config, progress=False)
    >>> tuple(result.bif.shape), tuple(result.bif_se.shape), len(result.verdicts)
    ((2, 16, 16), (2, 16, 16), 2)
    """
    criteria = criteria or Criteria()
    draws = sample_losses(model, loss_fn, data, config, observables, checkpoints=checkpoints,
                          checkpoint_indices=checkpoint_indices, progress=progress, vectorize=vectorize,
                          device=device, on_divergence="record")
    result = _estimate(draws, normalized, _dimension(model), criteria)
    if not step_check:
        return result
    half = replace(config, epsilon=config.epsilon / 2)
    reference = bif_trajectory(model, loss_fn, data, checkpoints, half, observables, device, normalized=normalized,
                               checkpoint_indices=checkpoint_indices, vectorize=vectorize, progress=progress,
                               criteria=criteria)
    change = step_change(result.bif, result.bif_se, result.llc, result.llc_se,
                         reference.bif, reference.bif_se, reference.llc, reference.llc_se, criteria)
    sensitive = change.sensitive(criteria.step_tolerance)
    for k in range(len(result.verdicts)):
        if bool(sensitive[k]) and result.verdicts[k] not in (DIVERGED, TOO_LITTLE_SIGNAL):
            reason = (f"at epsilon/2 = {half.epsilon:.3g} the BIF moves {float(change.bif[k]):.0%} and the LLC "
                      f"{float(change.llc[k]):.0%}; tolerance {criteria.step_tolerance:.0%}")
            found = result.reasons[k]
            position = next((i for i, (v, _) in enumerate(found) if VERDICTS.index(v) > VERDICTS.index(STEP_SENSITIVE)),
                            len(found))
            found.insert(position, (STEP_SENSITIVE, reason))
            result.verdicts[k] = found[0][0]
    result.step_change, result.reference = change, reference
    return result


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
    as separate entries.  With ``config.burn_in=None`` the warm-up found from the trace is
    discarded.  Raises :class:`~stagewise.sampling.SamplerDivergence` if a chain diverges.
    For standard errors and verdicts, use :func:`bif_trajectory` with ``checkpoints=[model.state_dict()]``.

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
    b = int(find_burn_in(recorded.loss_trace)[0]) if config.burn_in is None else 0
    observed = None if recorded.observables is None else recorded.observables[:, :, b:]
    return bif_matrix(recorded.sampling[:, :, b:], observed, normalized=normalized)[0].to(torch.get_default_dtype())


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
