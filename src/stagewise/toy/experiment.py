"""The toy experiment as one object: the trained network, its checkpoints and the constants
the closed form takes from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stagewise.toy.data import Hierarchy, hierarchy
from stagewise.toy.dynamics import (
    ModeBasis,
    data_modes,
    fit_initial_strengths,
    pool_within_blocks,
    trained_mode_strengths,
)
from stagewise.toy.network import TrainingConfig, Trajectory, checkpoint_epochs, time_constant, train_linear_network


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

    def sample_losses(self) -> np.ndarray:
        """Per-sample losses ``½‖y_i − W x_i‖²`` at every checkpoint, ``(T, items)``."""
        return self.trajectory.sample_losses(self.data)[0].numpy()


def run_toy_experiment(config: TrainingConfig | None = None, checkpoints: int = 201) -> ToyExperiment:
    """Train the network of App. C.1 and record it at ``checkpoints`` evenly spaced epochs."""
    config = config or TrainingConfig()
    data = hierarchy()
    trajectory = train_linear_network(data, config, checkpoint_epochs(config.epochs, checkpoints))
    return ToyExperiment(config, trajectory, data)
