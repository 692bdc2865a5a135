"""The toy experiment as one object: the trained network, its checkpoints and the constants
the closed form takes from it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from stagewise.progress import progress as progress_bar

from stagewise.influence import BIFTrajectory, bif_matrix, bif_trajectory, trace_correlation
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
                         device: torch.device | str | None = None) -> LossDraws:
        """RMSprop-SGLD around every ``stride``-th checkpoint at once (float32), recording the
        per-sample losses of the eight items: ``sampling`` is ``(K, C, T, 8)``.  Raises
        :class:`~stagewise.sampling.SamplerDivergence` at the first diverging chain."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return sample_losses(model, item_loss, data, config, checkpoints=checkpoints, checkpoint_indices=indices,
                             progress=progress, device=device)

    def bif_trajectory(self, config: SGLDConfig, stride: int = 1, progress: bool = True,
                       device: torch.device | str | None = None) -> BIFTrajectory:
        """The BIF of every item on every item at every ``stride``-th checkpoint, with the LLC
        and the chains' health (:func:`stagewise.influence.bif_trajectory`): ``bif`` is
        ``(K, 8, 8)`` in the order ``(checkpoint, source, query)``.  Each checkpoint's chains
        draw from the streams of its index in the full trajectory, so a strided run samples
        what the full run samples at the same checkpoints."""
        model, data, checkpoints, indices = self._sampling_inputs(stride)
        return bif_trajectory(model, item_loss, data, checkpoints, config, device=device,
                              checkpoint_indices=indices, progress=progress)


def hyperparameter_sweep(
    experiment: ToyExperiment,
    base: SGLDConfig,
    epsilons: tuple[float, ...],
    nbetas: tuple[float, ...],
    gammas: tuple[float, ...],
    reference: np.ndarray,
    source: int,
    stride: int,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean over queries of the BIF–reference trace correlation of sample ``source``, for every
    ``(epsilon, nbeta, gamma)`` of the grid: ``(E, B, G)``, NaN where the sampler diverged.

    ``reference`` is ``(T, N)``, the reference traces (e.g. leave-one-out) of ``source`` at
    every ``stride``-th checkpoint.
    """
    result = np.full((len(epsilons), len(nbetas), len(gammas)), np.nan)
    grid = list(itertools.product(enumerate(epsilons), enumerate(nbetas), enumerate(gammas)))
    queries = [j for j in range(reference.shape[1]) if j != source]
    for (a, epsilon), (b, nbeta), (c, gamma) in progress_bar(grid, desc="sweep", leave=False, disable=not progress):
        config = replace(base, epsilon=epsilon, nbeta=nbeta, gamma=gamma)
        try:  # stops at the first diverging chain, which makes the unstable cells cheap
            draws = experiment.sample_posterior(config, stride, progress=False, device=device)
        except SamplerDivergence:
            continue
        bif = bif_matrix(draws.sampling).numpy()
        result[a, b, c] = trace_correlation(bif[:, source, queries], reference[:, queries]).mean()
    return result


def run_toy_experiment(config: TrainingConfig | None = None, checkpoints: int = 201,
                       device: torch.device | str | None = None) -> ToyExperiment:
    """Train the network of App. C.1 on ``device`` (default the CPU) and record it at
    ``checkpoints`` evenly spaced epochs."""
    config = config or TrainingConfig()
    data = hierarchy()
    trajectory = train_linear_network(data, config, checkpoint_epochs(config.epochs, checkpoints), device=device)
    return ToyExperiment(config, trajectory, data)
