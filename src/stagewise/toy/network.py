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
from torch import nn
from stagewise._progress import progress_bar
from stagewise.classical import squared_error

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


def reduced_rank_llc(inputs: int, hidden: int, outputs: int, rank: int) -> float:
    """Learning coefficient of a two-layer linear network ``W2 W1`` (``inputs → hidden →
    outputs``) at a true map of rank ``rank``: Aoyagi & Watanabe (2005), the two-layer case of
    Aoyagi (2024).  With ``M, N, H, r`` = inputs, outputs, hidden, rank:

    * ``N + r ≤ M + H``, ``M + r ≤ N + H``, ``H + r ≤ M + N``:
      ``[2(H + r)(M + N) − (M − N)² − (H + r)² + δ] / 8``, ``δ = 1`` if ``M + H + N + r`` is odd;
    * ``M + H < N + r``: ``(HM − Hr + Nr)/2``;  ``N + H < M + r``: ``(HN − Hr + Mr)/2``;
    * ``M + N < H + r``: ``MN/2`` (the hidden layer is wide enough to be invisible).
    """
    M, N, H, r = inputs, outputs, hidden, rank
    if not 0 <= r <= min(M, N, H):
        raise ValueError(f"rank must lie in [0, min(inputs, outputs, hidden)], got {r}")
    if M + N < H + r:
        return M * N / 2
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    odd = (M + H + N + r) % 2
    return (2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + odd) / 8


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


class DeepLinearNetwork(nn.Module):
    """``x ↦ W2 W1 x`` as a torch module, for samplers and autograd (parameters ``W1``, ``W2``)."""

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor) -> None:
        super().__init__()
        self.W1 = nn.Parameter(W1.clone())
        self.W2 = nn.Parameter(W2.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W1.T @ self.W2.T


def item_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample loss ``½‖y_i − f(x_i)‖²`` of a batch ``(x, y)``, shape ``(m,)``: the negative
    log-likelihood of a unit-variance Gaussian model, up to a constant."""
    x, y = batch
    return squared_error(model(x), y)


@dataclass
class Trajectory:
    """``R`` runs recorded at ``T`` epochs.

    ``W1`` has shape ``(R, T, hidden, inputs)`` and ``W2`` shape ``(R, T, outputs, hidden)``
    (``None`` when weights were not recorded); ``losses`` holds the per-sample losses
    ``½‖y_i − W x_i‖²`` at the same epochs, ``(R, T, items)``.
    """

    epochs: np.ndarray
    W1: torch.Tensor | None
    W2: torch.Tensor | None
    losses: torch.Tensor

    @property
    def network_map(self) -> torch.Tensor:
        """End-to-end map ``W = W2 W1``, shape ``(R, T, outputs, inputs)``."""
        return self.W2 @ self.W1

    def hidden(self, inputs: np.ndarray) -> torch.Tensor:
        """Hidden representations ``W1 x`` of each input, shape ``(R, T, items, hidden)``."""
        return torch.einsum("rthd,nd->rtnh", self.W1, torch.as_tensor(inputs, dtype=self.W1.dtype))

    def state_dicts(self, run: int = 0, dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
        """One ``{"W1", "W2"}`` state dict per checkpoint of ``run``, for :class:`DeepLinearNetwork`."""
        return [{"W1": self.W1[run, t].to(dtype), "W2": self.W2[run, t].to(dtype)} for t in range(len(self.epochs))]

    def module(self, checkpoint: int = -1, run: int = 0, dtype: torch.dtype = torch.float64) -> DeepLinearNetwork:
        """The network of ``run`` at a checkpoint index as a torch module."""
        return DeepLinearNetwork(self.W1[run, checkpoint].to(dtype), self.W2[run, checkpoint].to(dtype))


def train_linear_network(
    hierarchy: Hierarchy,
    config: TrainingConfig,
    record_epochs: np.ndarray,
    sample_weights: SampleWeights | None = None,
    progress: bool = False,
    record_weights: bool = True,
    device: torch.device | str | None = None,
    target_scales: torch.Tensor | None = None,
) -> Trajectory:
    """Train ``R`` networks from one initialisation and record them at ``record_epochs``.

    The objective of run ``r`` at epoch ``e`` is ``(1/(N·O)) Σ_i w_ri ‖y_i − W x_i‖²`` with
    ``w = sample_weights`` of shape ``(R, N)``, or ``sample_weights(e)`` when it is a callable
    (for weights that change during training); ``None`` is one run with all weights 1.
    Weight 0 is the same as zeroing row ``i`` of X and Y, as the paper does for leave-one-out.
    ``target_scales`` (``(R, N)``, default ones) trains run ``r`` on the targets ``s_ri·y_i``
    instead: it moves ``Σ_yx`` alone, where a loss weight also moves ``Σ_xx``.  The recorded
    losses are always against the unscaled targets.
    With ``record_weights=False`` only the per-sample losses are kept (cheap for every epoch).
    Training runs on ``device`` (default the CPU); the initial weights are drawn on the CPU, so
    every device starts from the same ones, and the trajectory is returned on the CPU.
    """
    record = np.asarray(record_epochs, dtype=int)
    if record.ndim != 1 or record.min() < 0 or record.max() > config.epochs:
        raise ValueError(f"record_epochs must lie in [0, {config.epochs}]")
    device = torch.device(device or "cpu")
    X = torch.as_tensor(hierarchy.inputs, dtype=torch.float64, device=device)
    Y = torch.as_tensor(hierarchy.outputs, dtype=torch.float64, device=device)
    n_items, n_outputs = Y.shape
    weights_at = _weights_schedule(sample_weights, n_items, device)
    runs = weights_at(0).shape[0]
    if target_scales is not None:
        scales = torch.as_tensor(target_scales, dtype=torch.float64, device=device)
        if scales.ndim != 2 or scales.shape[1] != n_items or (runs > 1 and scales.shape[0] != runs):
            raise ValueError(f"target_scales must have shape ({runs if runs > 1 else 'runs'}, {n_items}), got {tuple(scales.shape)}")
        runs = scales.shape[0]
        targets = Y.T * scales[:, None, :]  # (R, O, N)
    else:
        targets = Y.T

    W1, W2 = (w.to(device) for w in initial_weights(config, hierarchy))
    W1 = W1.expand(runs, -1, -1).clone()
    W2 = W2.expand(runs, -1, -1).clone()
    slot = {int(epoch): k for k, epoch in enumerate(record)}
    losses = torch.empty(runs, len(record), n_items, dtype=torch.float64, device=device)
    saved1 = torch.empty(runs, len(record), *W1.shape[1:], dtype=torch.float64, device=device) if record_weights else None
    saved2 = torch.empty(runs, len(record), *W2.shape[1:], dtype=torch.float64, device=device) if record_weights else None
    scale = config.learning_rate * 2.0 / (n_items * n_outputs)
    for epoch in progress_bar(range(config.epochs + 1), disable=not progress, desc="training", leave=False):
        hidden = W1 @ X.T  # (R, hidden, N)
        output = W2 @ hidden
        residual = output - targets  # (R, O, N)
        if epoch in slot:
            losses[:, slot[epoch]] = squared_error(output, Y.T, dim=1)
            if record_weights:
                saved1[:, slot[epoch]] = W1
                saved2[:, slot[epoch]] = W2
        if epoch == config.epochs:
            break
        residual = residual * weights_at(epoch)[:, None, :]
        grad2 = residual @ hidden.transpose(1, 2)
        grad1 = W2.transpose(1, 2) @ residual @ X
        W1 -= scale * grad1
        W2 -= scale * grad2
    return Trajectory(epochs=record, W1=None if saved1 is None else saved1.cpu(), W2=None if saved2 is None else saved2.cpu(),
                      losses=losses.cpu())


def _weights_schedule(sample_weights: SampleWeights | None, n_items: int, device: torch.device) -> Callable[[int], torch.Tensor]:
    if sample_weights is None:
        fixed = torch.ones(1, n_items, dtype=torch.float64, device=device)
        return lambda epoch: fixed
    if callable(sample_weights):
        return lambda epoch: torch.as_tensor(sample_weights(epoch), dtype=torch.float64, device=device)
    fixed = torch.as_tensor(sample_weights, dtype=torch.float64, device=device)
    if fixed.ndim != 2 or fixed.shape[1] != n_items:
        raise ValueError(f"sample_weights must have shape (runs, {n_items}), got {tuple(fixed.shape)}")
    return lambda epoch: fixed
