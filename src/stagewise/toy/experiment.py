"""The toy experiment as one object: the trained network, its checkpoints and the constants
the closed form takes from it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from stagewise.cache import cached
from stagewise.influence import bif_matrix, local_learning_coefficient, trace_correlation
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

    def sample_posterior(self, config: SGLDConfig, stride: int = 1, progress: bool = True) -> LossDraws:
        """RMSprop-SGLD around every ``stride``-th checkpoint at once (float32), recording the
        per-sample losses of the eight items: ``sampling`` is ``(K, C, T, 8)``."""
        dtype = torch.float32
        data = (torch.tensor(self.data.inputs, dtype=dtype), torch.tensor(self.data.outputs, dtype=dtype))
        checkpoints = self.trajectory.state_dicts(dtype=dtype)[::stride]
        return sample_losses(self.trajectory.module(dtype=dtype), item_loss, data, config,
                             checkpoints=checkpoints, progress=progress)

    def bif_trajectory(self, config: SGLDConfig, stride: int = 1, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``BIF(p, j)`` at every ``stride``-th checkpoint, ``(K, 8, 8)``, and the LLC estimate at
        each, ``(K,)``; cached by configuration."""

        def compute() -> tuple[np.ndarray, np.ndarray]:
            draws = self.sample_posterior(config, stride, progress)
            return bif_matrix(draws.sampling).numpy(), local_learning_coefficient(draws).numpy()

        key = {"training": self.config, "checkpoints": len(self.epochs), "stride": stride, "sgld": config}
        return cached("toy-bif", key, compute)


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
) -> np.ndarray:
    """Mean over queries of the BIF–reference trace correlation of sample ``source``, for every
    ``(epsilon, nbeta, gamma)`` of the grid: ``(E, B, G)``, NaN where the sampler diverged.

    ``reference`` is ``(T, N)``, the reference traces (e.g. leave-one-out) of ``source`` at
    every ``stride``-th checkpoint.
    """
    def compute() -> np.ndarray:
        result = np.full((len(epsilons), len(nbetas), len(gammas)), np.nan)
        grid = list(itertools.product(enumerate(epsilons), enumerate(nbetas), enumerate(gammas)))
        queries = [j for j in range(reference.shape[1]) if j != source]
        for (a, epsilon), (b, nbeta), (c, gamma) in tqdm(grid, desc="sweep", leave=False, disable=not progress):
            config = replace(base, epsilon=epsilon, nbeta=nbeta, gamma=gamma)
            try:
                bif, _ = experiment.bif_trajectory(config, stride, progress=False)
            except SamplerDivergence:
                continue
            result[a, b, c] = trace_correlation(bif[:, source, queries], reference[:, queries]).mean()
        return result

    key = {"training": experiment.config, "checkpoints": len(experiment.epochs), "base": base, "grid": (epsilons, nbetas, gammas),
           "source": source, "stride": stride, "reference": reference.round(12).tolist()}
    return cached("toy-sweep", key, compute)


def run_toy_experiment(config: TrainingConfig | None = None, checkpoints: int = 201) -> ToyExperiment:
    """Train the network of App. C.1 and record it at ``checkpoints`` evenly spaced epochs."""
    config = config or TrainingConfig()
    data = hierarchy()
    trajectory = train_linear_network(data, config, checkpoint_epochs(config.epochs, checkpoints))
    return ToyExperiment(config, trajectory, data)
