"""The two-layer bias-free linear network of the toy model, trained by full-batch gradient
descent on the weighted mean squared error.

Many runs are trained at once: each run has its own vector of per-sample weights (all ones is
the ordinary run, a zero is leave-one-out, 0.9 a down-weighting), optionally changing with the
epoch (a time-window ablation), and all start from the same initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from stagewise.toy.data import Hierarchy

SampleWeights = torch.Tensor | Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of App. C.1."""

    hidden: int = 50
    init_std: float = 1e-3
    learning_rate: float = 5e-2
    epochs: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.epochs < 1:
            raise ValueError(f"hidden and epochs must be positive, got {self.hidden}, {self.epochs}")
        if not (self.init_std > 0 and self.learning_rate > 0):
            raise ValueError("init_std and learning_rate must be positive")


def time_constant(config: TrainingConfig, hierarchy: Hierarchy) -> float:
    """``tau = N·O / (2·lr)`` in epochs, for the loss averaged over all ``N·O`` entries."""
    n_items, n_outputs = hierarchy.outputs.shape
    return n_items * n_outputs / (2 * config.learning_rate)


def checkpoint_epochs(epochs: int, count: int) -> np.ndarray:
    """``count`` evenly spaced epochs from 0 to ``epochs`` inclusive (fewer if they collide)."""
    return np.unique(np.linspace(0, epochs, count).round().astype(int))


def initial_weights(config: TrainingConfig, hierarchy: Hierarchy) -> tuple[torch.Tensor, torch.Tensor]:
    """``W1 ~ N(0, σ²)`` of shape ``(hidden, inputs)`` and ``W2`` of shape ``(outputs, hidden)``."""
    generator = torch.Generator().manual_seed(config.seed)
    n_inputs, n_outputs = hierarchy.inputs.shape[1], hierarchy.outputs.shape[1]
    W1 = torch.randn(config.hidden, n_inputs, generator=generator, dtype=torch.float64)
    W2 = torch.randn(n_outputs, config.hidden, generator=generator, dtype=torch.float64)
    return W1 * config.init_std, W2 * config.init_std


@dataclass
class Trajectory:
    """Weights of ``R`` runs at ``T`` recorded epochs.

    ``W1`` has shape ``(R, T, hidden, inputs)`` and ``W2`` shape ``(R, T, outputs, hidden)``.
    """

    epochs: np.ndarray
    W1: torch.Tensor
    W2: torch.Tensor

    @property
    def network_map(self) -> torch.Tensor:
        """End-to-end map ``W = W2 W1``, shape ``(R, T, outputs, inputs)``."""
        return self.W2 @ self.W1

    def hidden(self, inputs: np.ndarray) -> torch.Tensor:
        """Hidden representations ``W1 x`` of each input, shape ``(R, T, items, hidden)``."""
        return torch.einsum("rthd,nd->rtnh", self.W1, torch.as_tensor(inputs, dtype=self.W1.dtype))

    def sample_losses(self, hierarchy: Hierarchy) -> torch.Tensor:
        """Per-sample losses ``½‖y_i − W x_i‖²``, shape ``(R, T, items)``."""
        return per_sample_loss(self.network_map, hierarchy)


def per_sample_loss(network_map: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """``½‖y_i − W x_i‖²`` for every item, for maps of shape ``(..., outputs, inputs)``."""
    X = torch.as_tensor(hierarchy.inputs, dtype=network_map.dtype)
    Y = torch.as_tensor(hierarchy.outputs, dtype=network_map.dtype)
    predictions = torch.einsum("...od,nd->...no", network_map, X)
    return 0.5 * ((predictions - Y) ** 2).sum(-1)


def train_linear_network(
    hierarchy: Hierarchy,
    config: TrainingConfig,
    record_epochs: np.ndarray,
    sample_weights: SampleWeights | None = None,
    progress: bool = False,
) -> Trajectory:
    """Train ``R`` networks from one initialisation and record them at ``record_epochs``.

    The objective of run ``r`` at epoch ``e`` is ``(1/(N·O)) Σ_i w_ri ‖y_i − W x_i‖²`` with
    ``w = sample_weights`` of shape ``(R, N)``, or ``sample_weights(e)`` when it is a callable
    (for weights that change during training); ``None`` is one run with all weights 1.
    Weight 0 is the same as zeroing row ``i`` of X and Y, as the paper does for leave-one-out.
    """
    record = np.asarray(record_epochs, dtype=int)
    if record.ndim != 1 or record.min() < 0 or record.max() > config.epochs:
        raise ValueError(f"record_epochs must lie in [0, {config.epochs}]")
    X = torch.as_tensor(hierarchy.inputs, dtype=torch.float64)
    Y = torch.as_tensor(hierarchy.outputs, dtype=torch.float64)
    n_items, n_outputs = Y.shape
    weights_at = _weights_schedule(sample_weights, n_items)
    runs = weights_at(0).shape[0]

    W1, W2 = initial_weights(config, hierarchy)
    W1 = W1.expand(runs, -1, -1).clone()
    W2 = W2.expand(runs, -1, -1).clone()
    slot = {int(epoch): k for k, epoch in enumerate(record)}
    saved1 = torch.empty(runs, len(record), *W1.shape[1:], dtype=torch.float64)
    saved2 = torch.empty(runs, len(record), *W2.shape[1:], dtype=torch.float64)
    scale = config.learning_rate * 2.0 / (n_items * n_outputs)
    for epoch in tqdm(range(config.epochs + 1), disable=not progress, desc="training", leave=False):
        if epoch in slot:
            saved1[:, slot[epoch]] = W1
            saved2[:, slot[epoch]] = W2
        if epoch == config.epochs:
            break
        hidden = W1 @ X.T  # (R, hidden, N)
        residual = (W2 @ hidden - Y.T) * weights_at(epoch)[:, None, :]  # (R, O, N)
        grad2 = residual @ hidden.transpose(1, 2)
        grad1 = W2.transpose(1, 2) @ residual @ X
        W1 -= scale * grad1
        W2 -= scale * grad2
    return Trajectory(epochs=record, W1=saved1, W2=saved2)


def _weights_schedule(sample_weights: SampleWeights | None, n_items: int) -> Callable[[int], torch.Tensor]:
    if sample_weights is None:
        fixed = torch.ones(1, n_items, dtype=torch.float64)
        return lambda epoch: fixed
    if callable(sample_weights):
        return lambda epoch: torch.as_tensor(sample_weights(epoch), dtype=torch.float64)
    fixed = torch.as_tensor(sample_weights, dtype=torch.float64)
    if fixed.ndim != 2 or fixed.shape[1] != n_items:
        raise ValueError(f"sample_weights must have shape (runs, {n_items}), got {tuple(fixed.shape)}")
    return lambda epoch: fixed
