"""Bayesian influence from loss draws, and the public entry points :func:`bif_trajectory` (every
checkpoint of a training run) and :func:`local_bif` (one model).

``BIF(i, j) = −Cov(ℓ_i, ℓ_j)`` over the draws of all chains pooled (SPEC §1).  Negative BIF
means upweighting ``i`` lowers the expected loss of ``j`` (helps); positive means it harms.
The *normalized* BIF is ``−Corr(ℓ_i, ℓ_j)``, minus the Pearson correlation of the losses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

import torch
from torch import nn

from stagewise.diagnostics import (
    DIVERGED, DRIFTING, HEALTHY, STEP_SENSITIVE, TOO_LITTLE_SIGNAL, UNMIXED, VERDICTS, Criteria, StepChange,
    bif_error_samples, bif_standard_error,
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
    llc_scale: torch.Tensor
    step_change: StepChange | None = None
    reference: BIFTrajectory | None = None

    @property
    def healthy(self) -> bool:
        """Whether every checkpoint's verdict is healthy."""
        return all(verdict == HEALTHY for verdict in self.verdicts)

    def error_samples(self, samples: int = 1000, seed: int = 0) -> torch.Tensor:
        """``(samples, K, n, n_obs)`` draws of the Monte-Carlo error of ``bif``, correlated
        across entries as the estimates' errors are (:func:`stagewise.diagnostics.bif_error_samples`
        on each checkpoint's kept draws; independent across checkpoints, whose chains are):
        ``limit + error_samples`` is what an estimator that samples ``limit`` with these chains
        would return.  Unnormalized trajectories only."""
        if self.normalized:
            raise ValueError("error_samples needs an unnormalized trajectory (normalized=False)")
        generator = torch.Generator().manual_seed(seed)
        queries = self.draws.observables
        out = []
        for k in range(len(self.verdicts)):
            b = int(self.burn_in[k])
            kept_queries = None if queries is None else queries[k, :, b:]
            out.append(bif_error_samples(self.draws.sampling[k, :, b:], kept_queries, samples, generator))
        return torch.stack(out, dim=1)

    def summary(self) -> str:
        """A line counting the verdicts (with the largest R̂ and the burn-in found), then one line
        per checkpoint that is not healthy, naming every rule it breaks."""
        indices = self.draws.checkpoint_indices or range(len(self.verdicts))
        counts = ", ".join(f"{self.verdicts.count(v)} {v}" for v in (HEALTHY, *VERDICTS[:-1])
                           if v in self.verdicts)
        rhat = self.rhat[torch.isfinite(self.rhat)]
        head = f"{len(self.verdicts)} checkpoints: {counts}"
        head += f"; largest R-hat {rhat.max():.3f}" if len(rhat) else ""
        head += (f"; burn-in {int(self.burn_in.min())}–{int(self.burn_in.max())} "
                 f"of {self.loss_trace.shape[-1]} draws")
        lines = [f"checkpoint {k}: " + "; ".join(f"{verdict} ({reason})" for verdict, reason in found)
                 for k, found in zip(indices, self.reasons) if found]
        return "\n".join([head] + lines)


def trajectory_from_draws(draws: LossDraws, dimension: int, *, normalized: bool = False,
                          criteria: Criteria | None = None) -> BIFTrajectory:
    """The :class:`BIFTrajectory` of draws already recorded by
    :func:`~stagewise.sampling.sample_losses` (with ``record_sampling=True``): burn-in (found
    from the loss trace when ``draws.config.burn_in`` is ``None``), BIF and LLC with their
    Monte-Carlo errors, and a verdict per checkpoint.  ``dimension``: the number of sampled
    parameters ``d`` (the LLC is out of range outside ``[0, d/2]``).  Post-processing only:
    what :func:`bif_trajectory` does after sampling."""
    criteria = criteria or Criteria()
    if draws.sampling is None:
        raise ValueError("bif_trajectory needs the sampling-set losses (record_sampling=True)")
    trace = draws.loss_trace
    K = trace.shape[0]
    if draws.config.burn_in is None:
        burn_in = find_burn_in(trace, criteria)
    else:
        burn_in = torch.zeros(K, dtype=torch.long)
    queries = draws.observables
    n_obs = (queries if queries is not None else draws.sampling).shape[-1]
    bif = torch.empty(K, draws.sampling.shape[-1], n_obs, dtype=torch.float64)
    bif_se = torch.empty_like(bif)
    rhat, split = torch.empty(K, dtype=torch.float64), torch.empty(K, dtype=torch.float64)
    series = draws.sampling.double().mean(dim=-1)  # (K, C, T): the mean loss at every draw
    llc_se, llc_scale = torch.empty(K, dtype=torch.float64), torch.empty(K, dtype=torch.float64)
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
        llc_scale[k] = draws.config.nbeta * series[k, :, b:].std()
    llc = local_learning_coefficient(draws, burn_in)
    for k in range(K):
        watched = draws.sampling if queries is None else queries
        little = not bool(diverged[k]) and little_signal(watched[k, :, int(burn_in[k]):])
        reasons.append(judge(bool(diverged[k]), little, float(rhat[k]), float(split[k]), float(llc[k]),
                             float(llc_se[k]), dimension, criteria=criteria))
    return BIFTrajectory(bif=bif, normalized=normalized, llc=llc, loss_trace=trace, rhat=rhat,
                         verdicts=[found[0][0] if found else HEALTHY for found in reasons], draws=draws,
                         bif_se=bif_se,
                         llc_se=llc_se, burn_in=burn_in,
                         split_rhat=split, reasons=reasons, llc_scale=llc_scale)


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
    on_divergence: Literal["record", "raise"] = "record",
) -> BIFTrajectory:
    """SGLD around every checkpoint, all at once, and the BIF, LLC and chain health at each.

    ``model`` gives the architecture (its weights are replaced by each state dict of
    ``checkpoints``); ``loss_fn(model, batch)`` returns one loss per sample ``(m,)`` or per
    token ``(m, L)``; ``data`` (the sampling set) and ``observables`` are tensors, containers
    of tensors, NumPy arrays, a ``Dataset`` or a ``DataLoader``; rows of the BIF follow the
    data's order.  Sampling runs on ``device`` (default: the model's); under ``torchrun`` the
    ``checkpoints × chains`` work is split over the ranks, with the same result as one process
    (see :func:`stagewise.sampling.sample_losses`).  The library's divergence policy: a chain
    that diverges does not stop the run, its checkpoint's verdict says so and its estimates are
    NaN (``on_divergence="raise"`` stops at once with
    :class:`~stagewise.sampling.SamplerDivergence` instead).

    With ``config.burn_in=None`` (the default) the warm-up is found from the loss trace and
    its draws discarded; every estimate has a Monte-Carlo standard error, and every checkpoint
    a verdict (:mod:`stagewise.diagnostics`, thresholds in ``criteria``).  ``step_check``
    reruns everything at ``ε/2`` and marks "step-size sensitive" every
    checkpoint whose BIF or LLC moves by more than ``criteria.step_tolerance`` beyond its MC
    error (the BIF's by its change of scale, :class:`~stagewise.diagnostics.StepChange`); the
    rerun has twice the draws (and burn-in), so that its chains travel as far and
    mix as well, which makes a step check cost three times the run.  Choose ``ε`` with
    :func:`calibrate`.  Returns a :class:`BIFTrajectory` on the CPU;
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
                          device=device, on_divergence=on_divergence)
    result = trajectory_from_draws(draws, _dimension(model), normalized=normalized, criteria=criteria)
    if not step_check:
        return result
    half = at_equal_travel(config, config.epsilon / 2)
    reference = bif_trajectory(model, loss_fn, data, checkpoints, half, observables, device,
                               normalized=normalized, checkpoint_indices=checkpoint_indices,
                               vectorize=vectorize, progress=progress, criteria=criteria,
                               on_divergence=on_divergence)
    change = step_change(result.bif, result.bif_se, result.llc, result.llc_se,
                         reference.bif, reference.bif_se, reference.llc, reference.llc_se,
                         reference.llc_scale, criteria)
    sensitive = change.sensitive(criteria.step_tolerance)
    for k in range(len(result.verdicts)):
        if bool(sensitive[k]) and result.verdicts[k] not in (DIVERGED, TOO_LITTLE_SIGNAL):
            reason = (f"at epsilon/2 = {half.epsilon:.3g} the BIF's scale moves {float(change.bif_scale[k]):+.0%} "
                      f"± {float(change.bif_scale_se[k]):.0%} and the LLC {float(change.llc[k]):.0%} "
                      f"± {float(change.llc_se[k]):.0%}; tolerance {criteria.step_tolerance:.0%}")
            found = result.reasons[k]
            rank = VERDICTS.index(STEP_SENSITIVE)
            later = [i for i, (v, _) in enumerate(found) if VERDICTS.index(v) > rank]
            position = later[0] if later else len(found)
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
    on_divergence: Literal["record", "raise"] = "record",
) -> torch.Tensor:
    """The local BIF of every sample of ``data`` on every observable, at the model's weights:
    :func:`bif_trajectory` at the one checkpoint ``model.state_dict()``, its ``bif[0]``.

    ``loss_fn(model, batch)`` returns one loss per sample (or per token) of ``batch``; ``data``
    and ``observables`` are tensors, tuples/lists/dicts of tensors indexed along dimension 0, a
    ``Dataset`` or a ``DataLoader`` (``observables`` defaults to ``data``).  Samples the local
    posterior with RMSprop-SGLD under ``config`` (:class:`~stagewise.sampling.SGLDConfig`:
    step, temperature, localization, chains, draws, burn-in, minibatch, RMSprop constants,
    seed) on ``device`` (default: the model's) and returns a ``(len(data), len(observables))``
    float64 tensor, on the CPU, of ``−Cov`` (or ``−Corr`` with ``normalized``); per-token losses
    count as separate entries.  With ``config.burn_in=None`` the warm-up found from the trace is
    discarded.  Divergence follows :func:`bif_trajectory`'s policy: a diverged chain gives a NaN
    matrix and a ``RuntimeWarning`` naming why (``on_divergence="raise"``: a
    :class:`~stagewise.sampling.SamplerDivergence`).  For standard errors and the verdict, call
    :func:`bif_trajectory` with ``checkpoints=[model.state_dict()]``.

    >>> import torch
    >>> from torch import nn
    >>> from stagewise.sampling import SGLDConfig
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> local_bif(model, loss, (x, y), SGLDConfig(epsilon=1e-3, nbeta=16, gamma=100, chains=2, draws=50), progress=False).shape
    torch.Size([16, 16])
    """
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    result = bif_trajectory(model, loss_fn, data, [state], config, observables, device, normalized=normalized,
                            progress=progress, on_divergence=on_divergence)
    if result.verdicts[0] == DIVERGED:
        reason = "; ".join(text for verdict, text in result.reasons[0] if verdict == DIVERGED)
        warnings.warn(f"local_bif: the sampler diverged ({reason}); the BIF is NaN", RuntimeWarning, stacklevel=2)
    return result.bif[0]


@dataclass
class LLCTrajectory:
    """The local learning coefficient at every checkpoint, with its Monte-Carlo error and the
    chains' health: ``llc``, ``llc_se``, ``burn_in``, ``rhat`` are ``(K,)``; ``verdicts`` and
    ``reasons`` as in :class:`BIFTrajectory`; with a step check, ``step_change`` (its ``llc``,
    ``llc_se`` and ``llc_upper`` fields) and ``reference_llc``, the estimate at half the step."""

    llc: torch.Tensor
    llc_se: torch.Tensor
    burn_in: torch.Tensor
    rhat: torch.Tensor
    verdicts: list[str]
    reasons: list[list[tuple[str, str]]]
    draws: int
    """Draws recorded per chain at every checkpoint (the burn-in is counted in them)."""
    step_change: StepChange | None = None
    reference_llc: torch.Tensor | None = None

    @classmethod
    def of(cls, run: BIFTrajectory) -> LLCTrajectory:
        """The LLC part of a :class:`BIFTrajectory` (its chains' health included)."""
        return cls(llc=run.llc, llc_se=run.llc_se, burn_in=run.burn_in, rhat=run.rhat, verdicts=run.verdicts,
                   reasons=run.reasons, draws=run.loss_trace.shape[-1], step_change=run.step_change,
                   reference_llc=None if run.reference is None else run.reference.llc)


def llc_trajectory(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    config: SGLDConfig,
    device: torch.device | str | None = None,
    *,
    checkpoint_indices: Sequence[int] | None = None,
    vectorize: bool | None = None,
    progress: bool = True,
    step_check: bool = False,
    criteria: Criteria | None = None,
    on_divergence: Literal["record", "raise"] = "record",
) -> LLCTrajectory:
    """The LLC ``λ̂ = nβ (E[L(w)] − L(w*))`` at every checkpoint
    (:func:`local_learning_coefficient`), with its error, burn-in, verdicts and, with
    ``step_check``, its change at half the step.  The same sampling as :func:`bif_trajectory`
    (arguments, streams, divergence policy), with the sampling set as its only observables;
    ``loss_fn`` must return the negative log-likelihood per sample for λ̂ to estimate the
    learning coefficient."""
    return LLCTrajectory.of(bif_trajectory(
        model, loss_fn, data, checkpoints, config, None, device, checkpoint_indices=checkpoint_indices,
        vectorize=vectorize, progress=progress, step_check=step_check, criteria=criteria,
        on_divergence=on_divergence))


def at_equal_travel(config: SGLDConfig, epsilon: float) -> SGLDConfig:
    """``config`` at the smaller step ``epsilon``, with its steps (and a fixed burn-in) scaled
    by ``config.epsilon / epsilon`` so that a chain covers the same ``ε × steps``: compared at
    equal draws, a smaller step mixes worse and its estimates differ by more than the bias.
    The draws are scaled, or, for a thinned chain (``thin`` > 1), the thinning: as many draws,
    as far apart in travel, for no more evaluations of the losses."""
    scale = config.epsilon / epsilon
    burn_in = None if config.burn_in is None else int(round(config.burn_in * scale))
    if config.thin > 1:
        return replace(config, epsilon=epsilon, thin=int(round(config.thin * scale)), burn_in=burn_in)
    return replace(config, epsilon=epsilon, draws=int(round(config.draws * scale)), burn_in=burn_in)


DEFAULT_EPSILONS = tuple(1e-3 * 0.5**k for k in range(14))
"""The step sizes :func:`calibrate` tries by default: 1e-3 halved 13 times, down to 1.2e-7."""


@dataclass
class Calibration:
    """What :func:`calibrate` tried and what it chose.

    ``config``: the chosen :class:`~stagewise.sampling.SGLDConfig`, ready for
    :func:`bif_trajectory`.  ``table``: one row (a dict; ``pandas.DataFrame(table)`` makes it a
    frame) per setting and checkpoint with ``epsilon``, ``nbeta``, ``gamma``, ``checkpoint``,
    ``llc``, ``llc_se``, ``bif_rel_se`` (the BIF's relative MC error, ``‖bif_se‖_F / ‖bif‖_F``),
    against the next-smaller step (NaN for the smallest tried): ``bif_scale`` (the BIF's change
    of scale, signed) and ``bif_change`` (its relative Frobenius change, noise included),
    ``llc_change``, and ``bif_upper`` and ``llc_upper`` (the upper bounds the rule compares with
    the tolerance; :class:`~stagewise.diagnostics.StepChange`); ``rhat``, ``split_rhat``, ``burn_in``,
    ``diverged``, ``verdict`` and ``passes`` (whether the setting as a whole passes the rule).
    ``runs``: the :class:`BIFTrajectory` of every setting tried, keyed by
    ``(epsilon, nbeta, gamma)``; ``references``: under the same keys, the run at the
    next-smaller step that it was compared with (more draws, see :func:`calibrate`).
    ``criteria``: the thresholds used.
    """

    config: SGLDConfig
    table: list[dict[str, Any]]
    runs: dict[tuple[float, float, float], BIFTrajectory]
    criteria: Criteria
    references: dict[tuple[float, float, float], BIFTrajectory]

    def __str__(self) -> str:
        columns = ["epsilon", "nbeta", "gamma", "checkpoint", "llc", "llc_se", "bif_rel_se", "bif_change",
                   "bif_scale", "bif_upper", "llc_change", "llc_upper", "rhat", "burn_in", "verdict", "passes"]
        def cell(value: Any) -> str:
            if isinstance(value, float):
                return "–" if math.isnan(value) else f"{value:.3g}"
            return str(value)
        settings = {(r["epsilon"], r["nbeta"], r["gamma"]) for r in self.table}
        stopped = sorted((s for s in settings if all(r["diverged"] for r in self.table
                                                      if (r["epsilon"], r["nbeta"], r["gamma"]) == s)),
                         reverse=True)
        rows = [[cell(row[c]) for c in columns] for row in self.table
                if (row["epsilon"], row["nbeta"], row["gamma"]) not in stopped]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        if stopped:
            lines.append("diverged at every checkpoint: " + ", ".join(
                f"epsilon={e:.3g} (nbeta={b:g}, gamma={g:g})" for e, b, g in stopped))
        return "\n".join(lines + [f"chosen: {self.config.describe()}"])

    def plot(self):
        """A matplotlib figure against the step size, per (nβ, γ) and checkpoint: what the rule
        compares with the tolerance, the upper bounds of the BIF's change of scale and of the
        LLC's change against the next-smaller step (left), and the LLC with ``z`` standard errors
        (right); the tolerance and the chosen step are marked."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter

        fig, (change_ax, llc_ax) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
        groups = sorted({(row["nbeta"], row["gamma"], row["checkpoint"]) for row in self.table})
        for nbeta, gamma, checkpoint in groups:
            rows = sorted((r for r in self.table if not r["diverged"]
                           and (r["nbeta"], r["gamma"], r["checkpoint"]) == (nbeta, gamma, checkpoint)),
                          key=lambda r: r["epsilon"])
            eps = [r["epsilon"] for r in rows]
            label = f"nβ={nbeta:g}, γ={gamma:g}, ckpt {checkpoint}"
            line, = change_ax.plot(eps, [r["bif_upper"] for r in rows], marker="o", label=f"BIF, {label}")
            change_ax.plot(eps, [r["llc_upper"] for r in rows], marker="s", linestyle="--",
                           color=line.get_color(), label=f"LLC, {label}")
            llc_ax.errorbar(eps, [r["llc"] for r in rows], yerr=[self.criteria.z * r["llc_se"] for r in rows],
                            marker="o", capsize=2, color=line.get_color(), label=label)
        change_ax.axhline(self.criteria.step_tolerance, color="0.4", linestyle=":", label="tolerance")
        for ax in (change_ax, llc_ax):
            ax.axvline(self.config.epsilon, color="0.6", linewidth=4, alpha=0.4, label="chosen ε")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("step size ε")
        change_ax.set(yscale="log", ylabel="upper bound of the change vs ε/2",
                      title="BIF scale (solid), LLC (dashed); colours as right")
        change_ax.legend(handles=change_ax.lines[-2:-1], fontsize=7)
        llc_ax.set(ylabel=f"LLC (± {self.criteria.z:g} s.e.)", title="LLC")
        llc_ax.legend(fontsize=7)
        return fig


def _relative_error(run: BIFTrajectory) -> list[float]:
    """``‖bif_se‖_F / ‖bif‖_F`` at each checkpoint: the BIF's Monte-Carlo error, relative."""
    return (run.bif_se.flatten(1).norm(dim=1) / run.bif.flatten(1).norm(dim=1).clamp_min(1e-300)).tolist()


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    *,
    nbeta: float | Sequence[float],
    gamma: float | Sequence[float],
    epsilons: Sequence[float] | None = None,
    observables: Any | None = None,
    checkpoint_indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    criteria: Criteria | None = None,
    exhaustive: bool = False,
    progress: bool = True,
    **settings: Any,
) -> Calibration:
    """Choose the SGLD step size: try ``epsilons`` at a few ``checkpoints`` and keep the largest
    step whose estimates do not depend on it.

    **Rule.**  Steps are tried from the largest down (default :data:`DEFAULT_EPSILONS`, halvings
    of 1e-3), each with one :func:`bif_trajectory` at all ``checkpoints`` and one at the
    next-smaller step ``ε'`` with ``ε/ε'`` times the draws, so that both sets of chains travel
    as far.  A step ``ε`` passes when, at every checkpoint, (1) neither ``ε`` nor ``ε'`` has a chain
    that diverged, failed to mix, drifted or showed too little signal (the verdicts of
    :mod:`stagewise.diagnostics`; an LLC out of range is reported but does not fail it),
    (2) the run shows that the BIF and the LLC at ``ε`` agree with those at ``ε'``: the upper
    confidence bounds (one-sided 95 %, ``criteria.agreement_z``) of the BIF's change of scale
    (the slope of its entries on those at ``ε'``, minus 1) and of the LLC's relative change are
    both at most ``criteria.step_tolerance`` (default 10 %;
    :class:`~stagewise.diagnostics.StepChange`).  Absence of a significant change is not
    enough: a comparison too noisy to bound the change fails.  The chosen step is the largest
    that passes; the search stops there unless ``exhaustive``.  SGLD's bias grows about
    linearly with ``ε``, so the change from ``ε`` to ``ε/2`` is about half the bias at ``ε``:
    the chosen step's bias is at most about ``2·tol`` in scale.  The Frobenius change (in the table)
    also holds noise and shape; it is reported, not judged.  If no step passes, raise the
    draws (``draws=``) or the chains.  Raises
    ``ValueError`` with the table when no setting passes.

    ``nbeta`` and ``gamma``: one value or several (every pair is tried; they choose the
    posterior, the step only how well it is sampled).  The chosen pair is the one with the
    largest passing step, the first given on a tie.  ``settings``: the other fields of
    :class:`~stagewise.sampling.SGLDConfig` (``chains``, ``draws``, ``burn_in``,
    ``preconditioner``, ``batch_size``, ``seed``, …), used for every run and in the chosen
    config.  Costs, per step tried, one :func:`bif_trajectory` on ``checkpoints`` and one with
    ``ε/ε'`` (2 on halvings) times its draws: three runs (a diverging step stops early);
    measured in ``bench/calibration_cost.py``.

    Linear regression at its least-squares fit (an exactly Gaussian posterior):

    >>> import torch
    >>> from torch import nn
    >>> generator = torch.Generator().manual_seed(0)
    >>> x = torch.randn(32, 2, dtype=torch.float64, generator=generator)
    >>> y = x @ torch.tensor([[1.0], [-1.0]], dtype=torch.float64) + torch.randn(32, 1, dtype=torch.float64,
    ...                                                                          generator=generator)
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> fit = {"weight": torch.linalg.lstsq(x, y).solution.T}
    >>> loss = lambda m, batch: 0.5 * ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    >>> calibration = calibrate(model, loss, (x, y), [fit], nbeta=32, gamma=10,
    ...                         epsilons=[0.04, 0.02, 0.01, 0.005], chains=128, draws=500,
    ...                         preconditioner="none", progress=False)
    >>> calibration.config.epsilon < 0.04   # the largest step is biased
    True
    """
    criteria = criteria or Criteria()
    grid = sorted(DEFAULT_EPSILONS if epsilons is None else epsilons, reverse=True)
    if len(grid) < 2 or len(set(grid)) != len(grid) or grid[-1] <= 0:
        raise ValueError(f"epsilons must hold at least two distinct positive steps, got {list(grid)}")
    nbetas = [float(nbeta)] if isinstance(nbeta, (int, float)) else [float(v) for v in nbeta]
    gammas = [float(gamma)] if isinstance(gamma, (int, float)) else [float(v) for v in gamma]
    runs: dict[tuple[float, float, float], BIFTrajectory] = {}
    references: dict[tuple[float, float, float], BIFTrajectory] = {}
    table: list[dict[str, Any]] = []
    chosen: list[tuple[float, float, float]] = []
    failing = (DIVERGED, TOO_LITTLE_SIGNAL, UNMIXED, DRIFTING)

    def run(config: SGLDConfig) -> BIFTrajectory:
        return bif_trajectory(model, loss_fn, data, checkpoints, config, observables, device,
                              checkpoint_indices=checkpoint_indices, progress=progress, criteria=criteria)

    for nb in nbetas:
        for g in gammas:
            found = False
            for i, epsilon in enumerate(grid):
                if found and not exhaustive:
                    break
                config = SGLDConfig(epsilon=epsilon, nbeta=nb, gamma=g, **settings)
                current = runs[(epsilon, nb, g)] = run(config)
                smaller = None
                if i + 1 < len(grid) and current.verdicts.count(DIVERGED) < len(current.verdicts):
                    smaller = references[(epsilon, nb, g)] = run(at_equal_travel(config, grid[i + 1]))
                if smaller is not None:
                    change = step_change(current.bif, current.bif_se, current.llc, current.llc_se,
                                         smaller.bif, smaller.bif_se, smaller.llc, smaller.llc_se,
                                         smaller.llc_scale, criteria)
                    bif_change, llc_change = change.bif.tolist(), change.llc.tolist()
                    bif_scale = change.bif_scale.tolist()
                    bif_upper, llc_upper = change.bif_upper.tolist(), change.llc_upper.tolist()
                    healthy = all(v not in failing for v in current.verdicts + smaller.verdicts)
                    passes = healthy and bool(change.agrees(criteria.step_tolerance).all())
                else:
                    bif_change = llc_change = bif_upper = llc_upper = bif_scale = [float("nan")] * len(
                        current.verdicts)
                    passes = False
                indices = current.draws.checkpoint_indices or range(len(current.verdicts))
                for k, index in enumerate(indices):
                    table.append({
                        "epsilon": epsilon, "nbeta": nb, "gamma": g, "checkpoint": int(index),
                        "llc": float(current.llc[k]), "llc_se": float(current.llc_se[k]),
                        "bif_rel_se": _relative_error(current)[k],
                        "bif_change": bif_change[k], "bif_scale": bif_scale[k], "llc_change": llc_change[k],
                        "bif_upper": bif_upper[k], "llc_upper": llc_upper[k],
                        "rhat": float(current.rhat[k]),
                        "split_rhat": float(current.split_rhat[k]), "burn_in": int(current.burn_in[k]),
                        "diverged": current.verdicts[k] == DIVERGED, "verdict": current.verdicts[k],
                        "passes": passes,
                    })
                if passes and not found:
                    chosen.append((epsilon, nb, g))
                    found = True
    if not chosen:
        tried = Calibration(SGLDConfig(epsilon=grid[-1], nbeta=nbetas[0], gamma=gammas[0], **settings), table,
                            runs, criteria, references)
        raise ValueError("no step size passes the calibration rule (healthy at it and the next-smaller step, "
                         f"and the upper bounds of the BIF's and the LLC's change there within "
                         f"{criteria.step_tolerance:.0%}); a noisy comparison cannot pass: more draws or chains, "
                         "smaller steps, or another nbeta/gamma may help:\n"
                         + "\n".join(str(tried).splitlines()[:-1]))
    epsilon, nb, g = max(chosen, key=lambda setting: setting[0])
    return Calibration(SGLDConfig(epsilon=epsilon, nbeta=nb, gamma=g, **settings), table, runs, criteria,
                       references)


def trace_correlation(traces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson correlation over time between two sets of influence traces.

    ``traces`` and ``reference`` have shape ``(T, ...)``; returns the correlation of every
    trailing entry, shape ``(...)`` (e.g. one value per query).
    """
    a = np.asarray(traces, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"trace shapes differ: {a.shape} and {b.shape}")
    return pearson(a, b, axis=0)


def pearson(a: np.ndarray, b: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` (same shape) along ``axis``, in float64; ``nan``
    where either is constant."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
