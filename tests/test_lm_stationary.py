"""The language-model path's stationary draws: a planted warm-up is cut, drift is named, and the
step check follows the calibration rule (constructed draws, no model)."""

import numpy as np
import pytest
import torch

from stagewise.diagnostics import DRIFTING, HEALTHY, STEP_SENSITIVE, UNMIXED
from stagewise.lm.experiment import compare_steps, stationary_draws
from stagewise.sampling import LossDraws, SGLDConfig

CONFIG = SGLDConfig(epsilon=1e-5, nbeta=256, gamma=1000, chains=4, draws=200)
TOKENS = 30


def ar1(shape: tuple[int, ...], generator: torch.Generator, rho: float = 0.5) -> torch.Tensor:
    """Stationary AR(1) noise of unit variance along the second-to-last axis (draws)."""
    noise = torch.randn(*shape, generator=generator, dtype=torch.float64)
    out = torch.empty_like(noise)
    out[..., 0, :] = noise[..., 0, :]
    for t in range(1, shape[-2]):
        out[..., t, :] = rho * out[..., t - 1, :] + (1 - rho**2) ** 0.5 * noise[..., t, :]
    return out


def recorded(level: torch.Tensor, seed: int = 0, shared: float = 0.05, own: float = 0.05,
             config: SGLDConfig = CONFIG) -> LossDraws:
    """Draws whose every token loss follows ``level`` ``(C, T)`` plus a shared and a per-token
    stationary fluctuation; the minibatch trace is the same level plus minibatch noise."""
    generator = torch.Generator().manual_seed(seed)
    C, T = level.shape
    common = ar1((C, T, 1), generator)
    tokens = level[..., None] + 4.0 + shared * common + own * ar1((C, T, TOKENS), generator)
    trace = level + 4.0 + 0.05 * torch.randn(C, T, generator=generator, dtype=torch.float64)
    return LossDraws(sampling=None, observables=tokens.float()[None], initial_loss=torch.tensor([4.0]),
                     config=config, loss_trace=trace[None], diverged_at=torch.full((1, C), -1))


def test_a_planted_warm_up_is_cut_and_the_rest_is_healthy():
    C, T, warm = 4, 200, 30
    level = torch.zeros(C, T, dtype=torch.float64)
    level[:, :warm] = torch.linspace(-0.6, 0.0, warm)   # the loss climbs from the checkpoint's, then stays
    result = stationary_draws(recorded(level), dimension=10_000)
    assert warm <= result.burn_in <= warm + 20
    assert result.burn_in_by_trace["observables' mean loss"] >= warm
    assert result.losses.shape == (C, T - result.burn_in, TOKENS) and result.losses.dtype == torch.float32
    assert result.verdict == HEALTHY, result.describe()
    # the kept draws no longer carry the warm-up's token-token correlation
    kept_mean = result.losses.double().mean(-1)
    assert float(kept_mean.mean()) == pytest.approx(4.0, abs=0.02)
    assert result.loss_trace.shape == result.observable_trace.shape == (C, T)


def test_no_warm_up_keeps_every_draw_most_of_the_time():
    cut = [stationary_draws(recorded(torch.zeros(4, 200, dtype=torch.float64), seed=s), 10_000).burn_in
           for s in range(10)]
    assert sum(b == 0 for b in cut) >= 8, cut


def test_a_trace_that_still_drifts_after_the_cut_is_named_drifting():
    C, T = 4, 200
    level = torch.linspace(0.0, 0.5, T, dtype=torch.float64).expand(C, T).clone()   # a trend throughout
    result = stationary_draws(recorded(level), dimension=10_000)
    assert result.verdict == DRIFTING, result.describe()
    assert result.split_rhat > 1.1


def test_chains_at_different_levels_are_unmixed():
    level = torch.tensor([0.0, 0.0, 0.3, 0.3], dtype=torch.float64)[:, None].expand(4, 200).clone()
    assert stationary_draws(recorded(level), dimension=10_000).verdict == UNMIXED


def test_after_a_fixed_burn_in_the_recorded_draws_are_still_searched():
    level = torch.zeros(4, 200, dtype=torch.float64)
    level[:, :30] = -0.6    # what an unrecorded burn-in too short to end the warm-up leaves
    fixed = SGLDConfig(epsilon=1e-5, nbeta=256, gamma=1000, chains=4, draws=200, burn_in=100)
    assert stationary_draws(recorded(level, config=fixed), 10_000).burn_in >= 30


def test_the_step_check_flags_a_moved_bif_and_passes_an_unmoved_one():
    membership = np.zeros((TOKENS, 2), dtype=bool)
    membership[:15, 0] = membership[15:, 1] = True
    level = torch.zeros(4, 400, dtype=torch.float64)
    half = SGLDConfig(epsilon=5e-6, nbeta=256, gamma=1000, chains=4, draws=400)
    draws = stationary_draws(recorded(level, seed=1), 10_000)
    same = stationary_draws(recorded(level, seed=2, config=half), 10_000)
    wider = stationary_draws(recorded(level, seed=2, shared=0.1, config=half), 10_000)   # shared variance x4
    agree = compare_steps(draws, same, membership)
    assert not agree.sensitive and agree.verdict == HEALTHY, agree
    moved = compare_steps(draws, wider, membership)
    assert moved.sensitive and not moved.agrees and abs(moved.bif_scale) > 0.5 and moved.verdict == STEP_SENSITIVE
    with pytest.raises(ValueError, match="membership"):
        compare_steps(draws, same, membership[:10])
