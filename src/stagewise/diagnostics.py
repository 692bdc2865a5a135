"""Whether to believe a sampled estimate: the warm-up found from the loss trace, Monte-Carlo
standard errors, and a fixed vocabulary of verdicts, each with a stated rule.

Everything here is post-processing of recorded draws (no sampling), so it costs nothing per
SGLD step.  :func:`stagewise.influence.bif_trajectory` applies it to every checkpoint and
:func:`stagewise.influence.calibrate` uses it to choose the step size.

**Verdicts**, most serious first; a checkpoint's verdict is the first rule it breaks
(:data:`RULES` holds the same text, for printing):

``diverged``
    a chain's batch loss became non-finite or exceeded the divergence threshold of
    :class:`~stagewise.sampling.SGLDConfig`; its draws are NaN and so is the BIF.
``too little signal``
    for more than half of the losses, the spread over the draws is at the level of rounding
    (64 ulps of the loss), so the covariances are noise.
``unmixed``
    the Gelman–Rubin ``R̂`` across chains of the kept loss traces exceeds
    ``Criteria.rhat_max`` (1.1): the chains sample different places.
``drifting``
    the split ``R̂`` (every chain's kept draws cut into halves, treated as ``2C`` chains)
    exceeds ``Criteria.rhat_max`` while the chains agree with each other: the kept draws
    still trend.
``step-size sensitive``
    (only with a step check) rerun at ``ε/2``, the BIF or the LLC moves by more than
    ``Criteria.step_tolerance`` (relative) and by more than the Monte-Carlo error allows
    (:func:`step_change`).
``LLC out of range``
    the LLC estimate is below 0 or above ``d/2`` (``d`` parameters) by more than
    ``Criteria.z`` standard errors; no local posterior at a minimum has such a learning
    coefficient (the checkpoint is not near a minimum, or the sampler is biased).
``healthy``
    none of the above.

>>> import torch
>>> generator = torch.Generator().manual_seed(0)
>>> noise = 0.01 * torch.randn(200, generator=generator)
>>> trace = torch.cat([torch.linspace(4.3, 4.9, 20), torch.full((180,), 4.9)]) + noise
>>> int(find_burn_in(trace.expand(2, 200)[None])[0])   # the climb over the first 20 draws
20
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HEALTHY = "healthy"
DIVERGED = "diverged"
TOO_LITTLE_SIGNAL = "too little signal"
UNMIXED = "unmixed"
DRIFTING = "drifting"
STEP_SENSITIVE = "step-size sensitive"
LLC_OUT_OF_RANGE = "LLC out of range"

VERDICTS = (DIVERGED, TOO_LITTLE_SIGNAL, UNMIXED, DRIFTING, STEP_SENSITIVE, LLC_OUT_OF_RANGE, HEALTHY)
"""Every verdict, most serious first."""

RULES = {
    DIVERGED: "a chain's loss became non-finite or ran away from the checkpoint's",
    TOO_LITTLE_SIGNAL: "most losses spread over the draws no more than rounding",
    UNMIXED: "R-hat across chains above rhat_max",
    DRIFTING: "split R-hat (halves of the kept draws) above rhat_max",
    STEP_SENSITIVE: "at half the step the BIF or LLC moves beyond step_tolerance and the MC error",
    LLC_OUT_OF_RANGE: "LLC below 0 or above d/2 by more than z standard errors",
    HEALTHY: "none of the above",
}
"""The rule behind each verdict, in one line."""


@dataclass(frozen=True)
class Criteria:
    """The thresholds of the verdicts' rules."""

    rhat_max: float = 1.1
    """Largest acceptable ``R̂`` and split ``R̂`` (Gelman et al.'s classic 1.1)."""
    step_tolerance: float = 0.1
    """Largest acceptable relative change of the BIF (Frobenius norm) or the LLC between a step
    ``ε`` and the next-smaller step."""
    z: float = 3.0
    """Standard errors a difference must exceed to count as real (burn-in windows, LLC range,
    step check)."""
    agreement_z: float = 1.645
    """Standard errors above the change that bound it when agreement is to be shown (the
    calibration's upper bounds): one-sided 95 %, the level of an equivalence test (TOST)."""


def _batches(draws: int) -> tuple[int, int]:
    """``(size, count)``: batches of ``⌊√T⌋`` draws, ``⌊T / ⌊√T⌋⌋`` of them per chain."""
    size = max(1, math.isqrt(draws))
    return size, draws // size


def batch_means(series: torch.Tensor) -> torch.Tensor:
    """Means of contiguous batches of ``⌊√T⌋`` draws: ``(..., C, T) -> (..., C·B)`` with
    ``B = ⌊T / ⌊√T⌋⌋`` batches per chain (the last ``T mod ⌊√T⌋`` draws are left out)."""
    size, count = _batches(series.shape[-1])
    blocks = series[..., : count * size].reshape(*series.shape[:-1], count, size).mean(-1)
    return blocks.reshape(*series.shape[:-2], -1)


def standard_error(series: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo standard error of the mean of ``series`` over chains and draws, by batch
    means (which accounts for the autocorrelation within a chain and for chains that disagree):
    ``(..., C, T) -> (...)``.

    >>> import torch
    >>> white = torch.randn(4, 10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> round(standard_error(white).item() * 200, 1)   # 1/sqrt(40 000) = 0.005
    1.0
    """
    means = batch_means(series.double())
    return (means.var(dim=-1) / means.shape[-1]).sqrt()


def _centered_batches(draws: torch.Tensor, observable_draws: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws ``(C, T, n)`` (and the observables') centred on their pooled means and cut into
    the batches of :func:`batch_means`: ``(C·B, ⌊√T⌋, n)`` each."""
    a = draws.double()
    b = a if observable_draws is None else observable_draws.double()
    C, T = a.shape[:2]
    a = a - a.reshape(-1, a.shape[-1]).mean(0)
    b = b - b.reshape(-1, b.shape[-1]).mean(0)
    size, count = _batches(T)
    return (a[:, : count * size].reshape(C * count, size, -1), b[:, : count * size].reshape(C * count, size, -1))


def bif_standard_error(draws: torch.Tensor, observable_draws: torch.Tensor | None = None,
                       normalized: bool = False, chunk_bytes: int = 256 * 2**20) -> torch.Tensor:
    """Monte-Carlo standard error of every BIF entry, ``(C, T, n), (C, T, n_obs) -> (n, n_obs)``.

    The covariance is the mean over draws of ``(ℓ_i − ℓ̄_i)(ℓ_j − ℓ̄_j)``; its error is that of
    a mean, by batch means (:func:`standard_error`) of this product.  With ``normalized`` it is
    divided by the two standard deviations (the error of those is neglected).  Works through
    the batches in chunks of at most ``chunk_bytes`` of float64, so a large ``n × n_obs`` needs
    a few such matrices of memory, not one per batch.
    """
    a, b = _centered_batches(draws, observable_draws)
    batches, size = a.shape[:2]
    total = torch.zeros(a.shape[-1], b.shape[-1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    step = max(1, chunk_bytes // (8 * total.numel()))
    for start in range(0, batches, step):
        products = torch.einsum("bsi,bsj->bij", a[start:start + step], b[start:start + step]) / size
        total += products.sum(0)
        squares += products.pow(2).sum(0)
    variance = (squares - total.pow(2) / batches) / max(batches - 1, 1)
    error = (variance.clamp_min(0) / batches).sqrt()
    if normalized:
        scale_a = a.pow(2).sum((0, 1)).div(batches * size - 1).sqrt()
        scale_b = b.pow(2).sum((0, 1)).div(batches * size - 1).sqrt()
        error = error / (scale_a[:, None] * scale_b[None, :]).clamp_min(1e-300)
    return error


def bif_error_samples(draws: torch.Tensor, observable_draws: torch.Tensor | None = None, samples: int = 1000,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws of the BIF's Monte-Carlo error that keep its correlation across entries,
    ``(C, T, n), (C, T, n_obs) -> (samples, n, n_obs)`` (unnormalized, units of loss²).

    Entries estimated from the same draws err together; noise drawn entry by entry from
    :func:`bif_standard_error` misses that, and a statistic over many entries (a trace
    correlation, a mean over queries) then looks more certain than it is.  Here each sample is
    a wild bootstrap of the batch means that give that standard error: the batches' deviations
    from the BIF, each with a random sign, averaged (and scaled so that its variance is the
    batch-means estimate).  Needs ``C·B × n × n_obs`` float64 of memory (``B ≈ √T`` batches per chain).
    """
    a, b = _centered_batches(draws, observable_draws)
    batches, size = a.shape[:2]
    if batches < 2:
        raise ValueError(f"bif_error_samples needs at least two batches of draws, got {batches}")
    products = -torch.einsum("bsi,bsj->bij", a, b) / size                   # (batches, n, n_obs), as the BIF
    deviations = (products - products.mean(0)).reshape(batches, -1)
    signs = torch.randint(0, 2, (samples, batches), generator=generator, dtype=torch.float64) * 2 - 1
    scale = 1 / math.sqrt(batches * (batches - 1))
    return (signs @ deviations * scale).reshape(samples, *products.shape[1:])


def find_burn_in(traces: torch.Tensor, criteria: Criteria = Criteria()) -> torch.Tensor:
    """The warm-up of each checkpoint's chains, found from their loss traces: ``(K, C, T) -> (K,)``
    draws to discard.

    Rule: average the trace over the chains and cut it into 20 windows of ``⌊T/20⌋`` draws
    (or ``T`` windows of one draw when ``T < 40``).  The second half's windows give the
    stationary level ``μ`` (their mean) and the spread of a window's mean ``σ`` (their standard
    deviation, which includes the autocorrelation).  The burn-in ends after the last window
    whose mean lies more than ``z'·σ·√(1 + 1/h)`` from ``μ`` (``h`` windows in the second half),
    where ``z'`` is ``criteria.z`` corrected for testing the ``m`` first-half windows at once
    (Bonferroni: the two-sided level of ``z`` shared among them, ``z' ≈ 3.6`` for ``z = 3`` and
    ``m = 10``), so that a stationary trace rarely loses draws to chance: from there on every
    window is within Monte-Carlo error of the second half.  It is at most ``T/2`` by construction; a
    trend that persists into the second half is caught by the split ``R̂`` of the kept draws
    (verdict ``drifting``).  A checkpoint whose chains diverged gets 0.
    """
    K, C, T = traces.shape
    width = max(1, T // 20)
    count = T // width
    level = traces.double()[..., : count * width].mean(1).reshape(K, count, width).mean(-1)  # (K, windows)
    second = level[:, count // 2:]
    mu = second.mean(-1, keepdim=True)
    sigma = second.std(-1, keepdim=True) if second.shape[-1] > 1 else torch.zeros_like(mu)
    tested = count - second.shape[-1]
    level_tail = torch.special.ndtr(torch.tensor(-float(criteria.z), dtype=torch.float64))   # one tail of z
    z_family = -torch.special.ndtri(level_tail / max(tested, 1))
    spread = sigma * math.sqrt(1 + 1 / second.shape[-1])   # the stationary level is estimated too
    tolerance = z_family * spread + 64 * torch.finfo(traces.dtype).eps * mu.abs()
    outside = (level - mu).abs() > tolerance
    outside[:, count // 2:] = False
    last = torch.where(outside, torch.arange(count), -1).max(-1).values  # last window outside, -1 if none
    burn_in = (last + 1) * width
    return torch.where(torch.isfinite(level).all(-1), burn_in, 0)


def chain_rhat(traces: torch.Tensor) -> torch.Tensor:
    """Gelman–Rubin ``R̂`` across chains of a scalar trace, ``(..., C, T) -> (...)``.

    ``R̂ = √(((T−1)/T·W + B/T) / W)`` with ``W`` the mean within-chain variance and ``B/T`` the
    variance of the chain means; near 1 when the chains sample one distribution.  NaN for fewer
    than two draws (a verdict then says unmixed: nothing shows that the chains agree).
    """
    x = traces.double()
    T = x.shape[-1]
    if T < 2:
        return torch.full(x.shape[:-2], float("nan"), dtype=torch.float64)
    within = x.var(dim=-1).mean(dim=-1)
    between = x.mean(dim=-1).var(dim=-1)
    pooled = (T - 1) / T * within + between
    return (pooled / within).sqrt()


def split_rhat(traces: torch.Tensor) -> torch.Tensor:
    """``R̂`` with every chain cut into its two halves, ``(..., C, T) -> (...)``: above 1 when the
    chains disagree *or* when each chain's first half differs from its second (a trend)."""
    half = traces.shape[-1] // 2
    halves = torch.cat([traces[..., :half], traces[..., half:2 * half]], dim=-2)
    return chain_rhat(halves)


def little_signal(losses: torch.Tensor) -> bool:
    """Whether most of the losses ``(C, T, n)`` spread over the draws no more than rounding
    (64 ulps of their size)."""
    pooled = losses.reshape(-1, losses.shape[-1]).double()
    rounding = 64 * torch.finfo(losses.dtype).eps * pooled.abs().mean(dim=0) + torch.finfo(losses.dtype).tiny
    return bool((pooled.std(dim=0) <= rounding).float().mean() > 0.5)


@dataclass
class StepChange:
    """How much the estimates move from a step ``ε`` to a smaller one, per checkpoint; every
    field is ``(K,)``.

    ``bif_scale``: the BIF's change of scale, ``s − 1`` with ``s = ⟨BIF_ε, BIF_ref⟩ /
    ⟨BIF_ref, BIF_ref⟩`` the slope of all its entries regressed on the reference's (a finite
    step inflates the posterior's spread, and with it the BIF); ``bif_scale_se`` its
    Monte-Carlo error.  ``bif``: ``‖BIF_ε − BIF_ref‖_F / ‖BIF_ref‖_F``, scale and shape and
    noise together (reported, not judged: with few draws it is mostly noise).  ``llc``:
    ``|λ_ε − λ_ref| / max(|λ_ref|, s_ref)``; ``llc_se``: its Monte-Carlo error on that scale.
    ``bif_upper``, ``llc_upper``: upper confidence bounds of ``|bif_scale|`` and ``llc``
    (``criteria.agreement_z`` standard errors above), what the step's bias could be
    (:func:`step_change`)."""

    bif_scale: torch.Tensor
    bif_scale_se: torch.Tensor
    bif: torch.Tensor
    llc: torch.Tensor
    llc_se: torch.Tensor
    bif_upper: torch.Tensor
    llc_upper: torch.Tensor
    z: float = 3.0

    def sensitive(self, tolerance: float) -> torch.Tensor:
        """Evidence that the estimates depend on the step (the verdict "step-size sensitive"):
        the BIF's scale or the LLC moved by more than ``tolerance`` and by more than ``z``
        standard errors."""
        moved_bif = (self.bif_scale.abs() > tolerance) & (self.bif_scale.abs() > self.z * self.bif_scale_se)
        return moved_bif | ((self.llc > tolerance) & (self.llc > self.z * self.llc_se))

    def agrees(self, tolerance: float) -> torch.Tensor:
        """Evidence that they do not (what :func:`stagewise.calibrate` asks of a step): both
        upper bounds within ``tolerance``; a comparison too noisy to show it fails."""
        return (self.bif_upper <= tolerance) & (self.llc_upper <= tolerance)


def step_change(bif: torch.Tensor, bif_se: torch.Tensor, llc: torch.Tensor, llc_se: torch.Tensor,
                ref_bif: torch.Tensor, ref_bif_se: torch.Tensor, ref_llc: torch.Tensor,
                ref_llc_se: torch.Tensor,
                ref_llc_scale: torch.Tensor | None = None, criteria: Criteria = Criteria()) -> StepChange:
    """Compare estimates at one step (``bif`` ``(K, n, n_obs)``, ``llc`` ``(K,)``, with their
    standard errors) with those at a smaller reference step.

    The BIF's scale ``s`` is the no-intercept slope of its entries on the reference's; its
    error, by the delta method, is ``√Σ(b² se² + (a − 2sb)² se_ref²) / Σb²`` (``a``, ``b`` the
    entries at the step and the reference), doubled in variance because a symmetric BIF
    repeats each entry.  Regressing on all entries averages their noise, so the scale is
    resolved long before each entry is.  The LLC's relative change is ``|Δλ| / max(|λ_ref|,
    s_ref)`` with ``s_ref`` the reference's ``llc_scale`` (``nβ`` times the posterior spread of
    the mean loss), so that an LLC near 0 (a checkpoint away from a minimum) is judged on the
    scale of its fluctuations; its error is ``√(se² + se_ref²)`` on the same scale.
    Independent draws are assumed (draws from one seed at both steps are positively
    correlated, which makes the errors conservative).
    """
    a, b = bif.double().flatten(1), ref_bif.double().flatten(1)
    var_a, var_b = bif_se.double().pow(2).flatten(1), ref_bif_se.double().pow(2).flatten(1)
    norm = b.pow(2).sum(1).clamp_min(1e-300)
    slope = (a * b).sum(1) / norm
    slope_var = 2 * (b.pow(2) * var_a + (a - 2 * slope[:, None] * b).pow(2) * var_b).sum(1) / norm.pow(2)
    scale_se = slope_var.sqrt()
    relative_bif = (a - b).norm(dim=1) / norm.sqrt()
    delta_llc = (llc - ref_llc).double()
    scale = ref_llc.double().abs()
    if ref_llc_scale is not None:
        scale = torch.maximum(scale, ref_llc_scale.double())
    scale = scale.clamp_min(1e-300)
    relative_llc = delta_llc.abs() / scale
    relative_llc_se = torch.hypot(llc_se.double(), ref_llc_se.double()) / scale
    z_a = criteria.agreement_z
    return StepChange(
        bif_scale=slope - 1, bif_scale_se=scale_se, bif=relative_bif, llc=relative_llc, llc_se=relative_llc_se,
        bif_upper=(slope - 1).abs() + z_a * scale_se, llc_upper=relative_llc + z_a * relative_llc_se,
        z=criteria.z,
    )


def judge(diverged: bool, little: bool, rhat: float, split: float, llc: float, llc_se: float, dimension: int,
          step_reason: str | None = None, criteria: Criteria = Criteria()) -> list[tuple[str, str]]:
    """Every rule one checkpoint breaks, most serious first, as ``(verdict, reason)`` pairs with
    the numbers behind them; empty when it is healthy.  ``step_reason``: what a step check
    found, for a checkpoint it marked step-size sensitive.

    >>> judge(False, False, rhat=2.57, split=2.6, llc=-1055.0, llc_se=3.0, dimension=385)[0]
    ('unmixed', 'R-hat 2.570 > 1.1')
    >>> [verdict for verdict, _ in judge(False, False, 1.0, 1.0, -1055.0, 3.0, 385)]
    ['LLC out of range']
    """
    if diverged:
        return [(DIVERGED, RULES[DIVERGED])]
    if little:
        return [(TOO_LITTLE_SIGNAL, RULES[TOO_LITTLE_SIGNAL])]
    found = []
    if not rhat <= criteria.rhat_max:
        found.append((UNMIXED, f"R-hat {rhat:.3f} > {criteria.rhat_max}"))
    if not split <= criteria.rhat_max and rhat <= criteria.rhat_max:
        found.append((DRIFTING, f"split R-hat {split:.3f} > {criteria.rhat_max}"))
    if step_reason:
        found.append((STEP_SENSITIVE, step_reason))
    margin = criteria.z * llc_se
    if llc + margin < 0 or llc - margin > dimension / 2:
        reason = f"LLC {llc:.4g} ± {llc_se:.2g} outside [0, d/2 = {dimension / 2:g}]"
        found.append((LLC_OUT_OF_RANGE, reason))
    return found
