"""Retraining experiments on the toy model: leave-one-out, down-weighting and time-window
ablation (paper §3, App. C.3 and C.5).

All runs of one experiment train together from the same initialisation
(:func:`stagewise.toy.train_linear_network` with one weight vector per run).  Every result is
a loss *difference* ``ℓ_j(D) − ℓ_j(D')`` against the unmodified run, so that, as for the BIF,
negative means the removed sample was *helping* ``j``.
"""

from __future__ import annotations

import numpy as np
import torch

from stagewise.toy.data import Hierarchy
from stagewise.toy.network import TrainingConfig, train_linear_network


def reweighting_loss_difference(
    hierarchy: Hierarchy, config: TrainingConfig, record_epochs: np.ndarray, weight: float,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``ℓ_j(D) − ℓ_j(D with sample p weighted by `weight`)`` for every ``p`` at every recorded
    epoch, in the library's axis order ``(checkpoint, source, query)``: ``(T, P, N)``.

    Weight 0 is leave-one-out (the paper zeroes row ``p`` of X and Y, which is the same).
    Training runs on ``device`` (default the CPU).
    """
    n_items = len(hierarchy.items)
    weights = torch.ones(n_items + 1, n_items, dtype=torch.float64)
    weights[1:] -= (1.0 - weight) * torch.eye(n_items, dtype=torch.float64)
    losses = train_linear_network(hierarchy, config, record_epochs, weights, record_weights=False, device=device).losses.numpy()
    return (losses[0][None] - losses[1:]).transpose(1, 0, 2)


def leave_one_out(hierarchy: Hierarchy, config: TrainingConfig, record_epochs: np.ndarray,
                  device: torch.device | str | None = None) -> np.ndarray:
    """``Δℓ_{j,t} = ℓ_{j,t}(D) − ℓ_{j,t}(D∖p)`` for every removed ``p``, ``(T, P, N)``: axis order
    ``(checkpoint, source, query)``."""
    return reweighting_loss_difference(hierarchy, config, record_epochs, weight=0.0, device=device)


def time_window_ablation(
    hierarchy: Hierarchy, config: TrainingConfig, removed: int, starts: np.ndarray, duration: int = 100,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Remove sample ``removed`` for ``duration`` epochs from each start epoch (Fig. 11).

    Returns ``(len(starts), N)``: for each window, the loss difference to the unmodified run,
    ``ℓ_j(D) − ℓ_j(ablated)``, summed over the epochs of the window.
    """
    starts = np.asarray(starts, dtype=int)
    if starts.min() < 0 or starts.max() + duration > config.epochs:
        raise ValueError(f"windows must lie inside [0, {config.epochs}] epochs")
    n_items = len(hierarchy.items)
    base = torch.ones(len(starts) + 1, n_items, dtype=torch.float64, device=device)
    start_t = torch.as_tensor(starts, device=device)

    def weights(epoch: int) -> torch.Tensor:
        current = base.clone()
        inside = (start_t <= epoch) & (epoch < start_t + duration)
        current[1:, removed] = torch.where(inside, 0.0, 1.0).to(torch.float64)
        return current

    trajectory = train_linear_network(hierarchy, config, np.arange(config.epochs + 1), weights, record_weights=False, device=device)
    losses = trajectory.losses.numpy()  # (R, epochs + 1, N)
    result = np.empty((len(starts), n_items))
    for k, start in enumerate(starts):
        window = slice(start, start + duration)
        result[k] = (losses[0, window] - losses[k + 1, window]).sum(axis=0)
    return result
