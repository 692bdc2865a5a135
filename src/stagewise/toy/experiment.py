"""The toy experiment as one object: the trained network, its checkpoints and the constants
the closed form takes from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from stagewise._progress import progress_bar

from stagewise.diagnostics import DIVERGED
from stagewise.influence import (
    BIFTrajectory, Calibration, LLCTrajectory, bif_trajectory, calibrate, llc_trajectory, trajectory_from_draws,
)
from stagewise.sampling import LossDraws, SamplerDivergence, SGLDConfig, sample_losses

from stagewise.toy.data import Hierarchy, hierarchy
from stagewise.toy.dynamics import (
    ModeBasis,
    data_modes,
    fit_initial_strengths,
    pool_within_blocks,
    trained_mode_strengths,
)
from stagewise.toy.network import (
    DeepLinearNetwork,
    TrainingConfig,
    Trajectory,
    checkpoint_epochs,
    item_loss,
    time_constant,
    train_linear_network,
)


@dataclass
class ToyExperiment:
    """A trained deep linear network on the hierarchy, recorded at ``checkpoints`` epochs."""

    config: TrainingConfig
    trajectory: Trajectory
    data: Hierarchy = field(default_factory=hierarchy)

    @property
    def epochs(self) -> np.ndarray:
        return self.trajectory.epochs

    @property
    def tau(self) -> float:
        """Time constant of the closed form, in epochs."""
        return time_constant(self.config, self.data)

    @property
    def dimension(self) -> int:
        """The number of the network's parameters ``d`` (the LLC's range is ``[0, d/2]``)."""
        return sum(p.numel() for p in self.trajectory.module().parameters())

    @property
    def modes(self) -> ModeBasis:
        return data_modes(self.data)

    def mode_strengths(self) -> np.ndarray:
        """Trained mode strengths in the data basis, ``(T, r)``."""
        return trained_mode_strengths(self.trajectory.network_map[0].numpy(), self.modes)

    def initial_strengths(self) -> np.ndarray:
        """Effective ``u_k0`` of every mode, fitted to the run, ``(r,)``."""
        return fit_initial_strengths(self.epochs, self.mode_strengths(), self.modes, self.tau)

    def block_initial_strengths(self) -> np.ndarray:
        """``u_k0`` pooled inside blocks of equal singular values (for the perturbation theory)."""
        return pool_within_blocks(self.initial_strengths(), self.modes)

    def hidden(self) -> np.ndarray:
        """Hidden representations ``W1 x_i``, ``(T, items, hidden units)``."""
        return self.trajectory.hidden(self.data.inputs)[0].numpy()

    def _sampling_inputs(self, stride: int) -> tuple[DeepLinearNetwork, tuple[torch.Tensor, torch.Tensor], list, range]:
        dtype = torch.float32
        data = (torch.tensor(self.data.inputs, dtype=dtype), torch.tensor(self.data.outputs, dtype=dtype))
        indices = range(0, len(self.epochs), stride)
        checkpoints = self.trajectory.state_dicts(dtype=dtype)[::stride]
        return self.trajectory.module(dtype=dtype), data, checkpoints, indices

    def sample_posterior(self, config: SGLDConfig, stride: int = 1, progress: bool = True,
                         device: torch.device | str | None = None,
                         on_divergence: Literal["raise", "record"] = "raise") -> LossDraws:
        """RMSprop-SGLD around every ``stride``-th checkpoint at once (float32), recording the
        per-sample losses of the eight items: ``sampling`` is ``(K, C, T, 8)``.  Raises
        :class:`~stagewise.sampling.SamplerDivergence` at the first diverging chain, or with
        ``on_divergence="record"`` fills that chain's later draws with NaN."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return sample_losses(model, item_loss, data, config, checkpoints=checkpoints, checkpoint_indices=indices,
                             progress=progress, device=device, on_divergence=on_divergence)

    def bif_trajectory(self, config: SGLDConfig, stride: int = 1, progress: bool = True,
                       device: torch.device | str | None = None, step_check: bool = False) -> BIFTrajectory:
        """The BIF of every item on every item at every ``stride``-th checkpoint, with the LLC
        and the chains' health (:func:`stagewise.influence.bif_trajectory`): ``bif`` is
        ``(K, 8, 8)`` in the order ``(checkpoint, source, query)``.  Each checkpoint's chains
        draw from the streams of its index in the full trajectory, so a strided run samples
        what the full run samples at the same checkpoints.  ``step_check``: also at half the
        step (twice the draws), with the change in ``step_change``."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return bif_trajectory(model, item_loss, data, checkpoints, config, device=device,
                              checkpoint_indices=indices, progress=progress, step_check=step_check)

    def llc_trajectory(self, config: SGLDConfig, stride: int = 1, progress: bool = True,
                       device: torch.device | str | None = None, step_check: bool = False) -> LLCTrajectory:
        """The LLC at every ``stride``-th checkpoint (:func:`stagewise.influence.llc_trajectory`),
        from the same streams as :meth:`bif_trajectory`."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return llc_trajectory(model, item_loss, data, checkpoints, config, device=device,
                              checkpoint_indices=indices, progress=progress, step_check=step_check)

    def calibrate(self, stride: int, *, nbeta: float, gamma: float, progress: bool = True,
                  device: torch.device | str | None = None, **settings) -> Calibration:
        """:func:`stagewise.calibrate` at every ``stride``-th checkpoint: the largest step size
        at which the BIF and the LLC of the posterior (``nbeta``, ``gamma``) do not depend on it.
        ``settings``: the other :class:`~stagewise.sampling.SGLDConfig` fields (chains,
        draws, …), also those of the chosen config."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return calibrate(model, item_loss, data, checkpoints, nbeta=nbeta, gamma=gamma,
                         checkpoint_indices=list(indices), device=device, progress=progress, **settings)


@dataclass
class SweepResult:
    """The sampled BIF for each sampler setting of a sweep.

    ``configs``: the ``S`` settings; ``bif``: ``(S, K, 8, 8)`` at the ``K`` checkpoints
    ``checkpoint_indices`` (indices into the experiment's epochs), in the order ``(setting,
    checkpoint, source, query)``, over the draws kept after the burn-in.  It is NaN where the
    sampler diverged: at every checkpoint of a setting swept with ``on_divergence="raise"`` (it
    stopped there), at the checkpoints with a diverged chain with ``"record"``.
    ``burn_in``: ``(S, K)`` draws discarded as warm-up (found from the trace when the setting's
    ``burn_in`` is ``None``; 0 where it stopped); ``verdicts``: ``S`` lists of ``K`` verdicts
    (:mod:`stagewise.diagnostics`).
    """

    configs: list[SGLDConfig]
    bif: np.ndarray
    checkpoint_indices: np.ndarray
    burn_in: np.ndarray
    verdicts: list[list[str]]

    @property
    def diverged(self) -> np.ndarray:
        """``(S, K)``: whether the sampler diverged at each checkpoint under each setting."""
        return np.isnan(self.bif).any(axis=(2, 3))


def bif_sweep(
    experiment: ToyExperiment,
    configs: list[SGLDConfig],
    stride: int,
    on_divergence: Literal["raise", "record"] = "raise",
    progress: bool = True,
    device: torch.device | str | None = None,
) -> SweepResult:
    """The BIF at every ``stride``-th checkpoint under each sampler setting in ``configs``.

    With ``on_divergence="raise"`` a setting stops at its first diverging chain, which makes
    unstable settings cheap, and its BIF is NaN everywhere; with ``"record"`` every setting runs
    to the end and only the checkpoints with a diverged chain are NaN, which maps where it
    diverges.
    """
    indices = np.arange(0, len(experiment.epochs), stride)
    n_items = len(experiment.data.items)
    bif = np.full((len(configs), len(indices), n_items, n_items), np.nan)
    burn_in = np.zeros((len(configs), len(indices)), dtype=int)
    verdicts = [[DIVERGED] * len(indices) for _ in configs]
    dimension = experiment.dimension
    for s, config in enumerate(progress_bar(configs, desc="sweep", leave=False, disable=not progress)):
        try:
            draws = experiment.sample_posterior(config, stride, progress=False, device=device, on_divergence=on_divergence)
        except SamplerDivergence:
            continue
        result = trajectory_from_draws(draws, dimension)
        bif[s], burn_in[s], verdicts[s] = result.bif.numpy(), result.burn_in.numpy(), result.verdicts
    return SweepResult(list(configs), bif, indices, burn_in, verdicts)


@dataclass
class GaussianCheck:
    """How far the sampled local posterior is from one Gaussian, per setting and checkpoint.

    ``configs``: the ``S`` sampler settings; ``checkpoint_indices``: the ``K`` checkpoints
    (indices into the experiment's epochs).  ``(S, K)`` arrays: ``slope`` and ``correlation`` of
    the sampled BIF's 64 entries regressed on (correlated with) its second-order Gaussian limit
    (:func:`stagewise.classical.gaussian_bif`) for the same nβ and γ; ``between_chains``: the
    share of the total loss's variance over all draws that lies between the chains' means (the
    between term of the law of total variance: near ``τ/T`` for chains mixing in one mode, with
    ``τ`` the autocorrelation time and ``T`` the draws, and large when chains settle in different
    modes); ``diverged``: whether a chain diverged (then the other entries are NaN);
    ``burn_in``: draws discarded as warm-up before any of these (found from the loss trace
    when the setting's ``burn_in`` is ``None``).

    The loss draws' shape is no test of one Gaussian here: under a Gaussian posterior the loss
    is a generalised chi-square, skewed when few directions dominate.
    """

    configs: list[SGLDConfig]
    checkpoint_indices: np.ndarray
    slope: np.ndarray
    correlation: np.ndarray
    between_chains: np.ndarray
    diverged: np.ndarray
    burn_in: np.ndarray


def gaussian_check(experiment: ToyExperiment, configs: list[SGLDConfig], checkpoint_indices: list[int],
                   progress: bool = True, device: torch.device | str | None = None) -> GaussianCheck:
    """Sample each setting in ``configs`` around the checkpoints ``checkpoint_indices`` and
    compare the BIF with its second-order Gaussian limit (see :class:`GaussianCheck`)."""
    from stagewise.classical import gaussian_bif

    indices = np.asarray(checkpoint_indices, dtype=int)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(experiment.epochs):
        raise ValueError(f"checkpoint indices must lie in [0, {len(experiment.epochs)}), got {checkpoint_indices}")
    model, data, checkpoints, _ = experiment._sampling_inputs(1)
    chosen = [checkpoints[k] for k in indices]
    exact = experiment.trajectory.state_dicts()
    items64 = (torch.tensor(experiment.data.inputs), torch.tensor(experiment.data.outputs))
    shape = (len(configs), len(indices))
    slope, correlation, between = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    diverged = np.zeros(shape, dtype=bool)
    burn_in = np.zeros(shape, dtype=int)
    for s, config in enumerate(progress_bar(configs, desc="Gaussian check", leave=False, disable=not progress)):
        draws = sample_losses(model, item_loss, data, config, checkpoints=chosen, checkpoint_indices=indices.tolist(),
                              progress=False, device=device, on_divergence="record")
        estimate = trajectory_from_draws(draws, experiment.dimension)
        sampled = estimate.bif.numpy()                                      # (K, 8, 8), kept draws
        burn_in[s] = estimate.burn_in.numpy()
        limit = gaussian_bif(experiment.trajectory.module(), item_loss, items64, [exact[k] for k in indices],
                             config.nbeta, config.gamma, progress=False)    # (K, 8, 8)
        for k in range(len(indices)):
            total = draws.sampling[k, :, int(estimate.burn_in[k]):].sum(-1).numpy()   # (C, T kept)
            if not np.all(np.isfinite(total)):
                diverged[s, k] = True
                continue
            a, b = sampled[k].ravel(), limit[k].ravel()
            slope[s, k] = a @ b / (b @ b)
            correlation[s, k] = np.corrcoef(a, b)[0, 1]
            between[s, k] = total.mean(axis=1).var() / total.var()
    return GaussianCheck(list(configs), indices, slope, correlation, between, diverged, burn_in)


def run_toy_experiment(config: TrainingConfig | None = None, checkpoints: int = 201,
                       device: torch.device | str | None = None) -> ToyExperiment:
    """Train the network of App. C.1 on ``device`` (default the CPU) and record it at
    ``checkpoints`` evenly spaced epochs."""
    config = config or TrainingConfig()
    data = hierarchy()
    trajectory = train_linear_network(data, config, checkpoint_epochs(config.epochs, checkpoints), device=device)
    return ToyExperiment(config, trajectory, data)
