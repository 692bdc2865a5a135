"""Retraining experiments on the toy model: leave-one-out, down-weighting, upweighting by
finite differences, time-window ablation (paper §3, App. C.3 and C.5) and the linear
datamodeling score (LDS) over retrained subsets.

All runs of one experiment train together from the same initialisation
(:func:`stagewise.toy.train_linear_network` with one weight vector per run).  Every result is
a loss *difference* ``ℓ_j(D) − ℓ_j(D')`` against the unmodified run, so that, as for the BIF,
negative means the removed sample was *helping* ``j``.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata

from stagewise.influence import pearson
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


def upweighting_influence(
    hierarchy: Hierarchy, config: TrainingConfig, record_epochs: np.ndarray, step: float = 1e-2,
    perturb: Literal["loss", "target"] = "loss", device: torch.device | str | None = None,
) -> np.ndarray:
    """``dℓ_j/dε`` of real training by central differences, ``(ℓ_j(1+h) − ℓ_j(1−h)) / 2h``, for
    every ``p``: ``(T, P, N)`` in the order ``(checkpoint, source, query)``.

    ``perturb="loss"`` weights the loss of ``p`` by ``1 ± h`` (what upweighting a sample means;
    it moves both ``Σ_yx`` and ``Σ_xx``); ``"target"`` scales its target ``y_p`` by ``1 ± h``
    instead, which moves ``Σ_yx = Σ_i y_i x_iᵀ`` alone, as the closed form's perturbation
    ``C + ε y_p x_pᵀ`` does.  Negative means ``p`` helps ``j``.
    """
    if not 0 < step < 1:
        raise ValueError(f"step must lie in (0, 1), got {step}")
    if perturb not in ("loss", "target"):
        raise ValueError(f"perturb must be 'loss' or 'target', got {perturb!r}")
    n_items = len(hierarchy.items)
    factors = torch.ones(2 * n_items, n_items, dtype=torch.float64)
    eye = torch.eye(n_items, dtype=torch.float64)
    factors[:n_items] += step * eye
    factors[n_items:] -= step * eye
    options = {"sample_weights": factors} if perturb == "loss" else {"target_scales": factors}
    losses = train_linear_network(hierarchy, config, record_epochs, record_weights=False, device=device, **options).losses.numpy()
    return ((losses[:n_items] - losses[n_items:]) / (2 * step)).transpose(1, 0, 2)


def random_subsets(n_samples: int, count: int, size: int | None = None, seed: int = 0) -> np.ndarray:
    """``count`` distinct subsets of ``size`` samples (default half), as a boolean ``(S, n)``
    mask; every such subset when there are at most ``count`` of them."""
    size = n_samples // 2 if size is None else size
    if not 0 < size < n_samples:
        raise ValueError(f"size must lie in (0, {n_samples}), got {size}")
    if math.comb(n_samples, size) <= count:
        chosen = list(itertools.combinations(range(n_samples), size))
    else:
        generator = np.random.default_rng(seed)
        found: set[tuple[int, ...]] = set()
        while len(found) < count:
            found.add(tuple(sorted(generator.choice(n_samples, size, replace=False).tolist())))
        chosen = sorted(found)
    mask = np.zeros((len(chosen), n_samples), dtype=bool)
    for row, members in enumerate(chosen):
        mask[row, list(members)] = True
    return mask


def subset_losses(hierarchy: Hierarchy, config: TrainingConfig, record_epochs: np.ndarray, subsets: np.ndarray,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Per-sample losses of networks retrained on each subset (from the same initialisation),
    ``(T, S, N)``; ``subsets`` is a boolean ``(S, N)`` mask of the samples kept."""
    subsets = np.asarray(subsets, dtype=bool)
    if subsets.ndim != 2 or subsets.shape[1] != len(hierarchy.items):
        raise ValueError(f"subsets must be a boolean (S, {len(hierarchy.items)}) mask, got {subsets.shape}")
    weights = torch.as_tensor(subsets, dtype=torch.float64)
    losses = train_linear_network(hierarchy, config, record_epochs, weights, record_weights=False, device=device).losses
    return losses.numpy().transpose(1, 0, 2)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along axis 1 of ``(T, S, ...)`` arrays, NaN where either is constant."""
    return pearson(rankdata(a, axis=1), rankdata(b, axis=1), axis=1)


def linear_datamodeling_score(attribution: np.ndarray, subsets: np.ndarray, losses: np.ndarray,
                              condition_on_query: bool = False) -> np.ndarray:
    """The linear datamodeling score (LDS; Park et al. 2023) of an attribution at every
    checkpoint and query: ``(T, N)``.

    ``attribution``: ``(T, P, N)`` in the library's order and sign (negative: ``p`` helps
    ``j``), so a subset's predicted loss of ``j`` is ``Σ_{p ∈ S} attribution[t, p, j]`` up to a
    constant; ``subsets``: boolean ``(S, P)``; ``losses``: ``(T, S, N)`` the retrained losses
    (the queries are the training samples themselves).  The score is the Spearman correlation
    over subsets of prediction and retrained loss, NaN where either is constant (e.g. at
    initialisation).

    Whether a query is itself in the subset dominates its retrained loss, and any attribution
    with a helpful self-influence ranks that right.  ``condition_on_query=True`` scores each
    query over the subsets that keep it only, so the score measures what the attribution says
    about the *other* samples.
    """
    attribution = np.asarray(attribution, dtype=float)
    subsets = np.asarray(subsets, dtype=bool)
    if attribution.shape[1] != subsets.shape[1] or losses.shape[:2] != (attribution.shape[0], subsets.shape[0]):
        raise ValueError(f"attribution {attribution.shape}, subsets {subsets.shape} and losses {losses.shape} do not match")
    if not condition_on_query:
        return _spearman(np.einsum("sp,tpj->tsj", subsets.astype(float), attribution), losses)
    score = np.empty((attribution.shape[0], attribution.shape[2]))
    for j in range(attribution.shape[2]):
        keep = subsets[:, j]
        if keep.sum() < 3:
            raise ValueError(f"fewer than 3 subsets keep sample {j}")
        score[:, j] = _spearman(attribution[:, :, j] @ subsets[keep].T.astype(float), losses[:, keep, j])
    return score


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
