"""Classical influence functions with damping, at every checkpoint (paper App. C.4).

    IF_t(i → j) = −∇ℓ_j(w_t)ᵀ (M + λI)⁻¹ ∇ℓ_i(w_t),     λ = α·ρ,  ρ = max |eig(M)|,

with ``M`` the Hessian ``H`` of the total loss ``Σ_i ℓ_i`` or its Gauss–Newton approximation
``G = Σ_i J_iᵀ J_i`` (for squared-error losses ``ℓ_i = ½‖f(x_i) − y_i‖²``, whose output
Hessian is the identity).  One eigendecomposition per checkpoint serves every ``α``.  Sign as
for the BIF: negative means upweighting ``i`` helps ``j``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev
from stagewise.progress import progress as progress_bar


@dataclass
class DampedInfluence:
    """Damped influence at ``K`` checkpoints for ``A`` damping constants.

    ``hessian`` and ``gauss_newton`` have shape ``(A, K, N, N)``: entry ``[a, k, i, j]`` is the
    influence of upweighting ``i`` on the loss of ``j`` at checkpoint ``k`` with ``alphas[a]``,
    so that ``hessian[a]`` is in the library's axis order ``(checkpoint, source, query)``.
    ``hessian_radius`` and ``gauss_newton_radius`` are ``ρ`` of each curvature matrix, ``(K,)``;
    ``negative_fraction`` the share of the Hessian's eigenvalues below ``−1e-8·ρ``, ``(K,)``;
    ``gradient_products`` is ``−∇ℓ_iᵀ∇ℓ_j``, ``(K, N, N)``: the limit of ``αρ·IF`` as the damping
    ``α`` grows and the curvature drops out.
    """

    alphas: np.ndarray
    hessian: np.ndarray
    gauss_newton: np.ndarray
    hessian_radius: np.ndarray
    gauss_newton_radius: np.ndarray
    negative_fraction: np.ndarray
    gradient_products: np.ndarray


def _damped_inverse_products(curvature: torch.Tensor, gradients: torch.Tensor, alphas: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    eigenvalues, vectors = torch.linalg.eigh(curvature)
    radius = float(eigenvalues.abs().max())
    projected = vectors.T @ gradients.T  # (d, N)
    influence = np.empty((len(alphas), gradients.shape[0], gradients.shape[0]))
    for a, alpha in enumerate(alphas):
        scaled = projected / (eigenvalues + alpha * radius)[:, None]
        influence[a] = -(projected.T @ scaled).cpu().numpy()
    return influence, radius, eigenvalues.cpu().numpy()


def damped_influence(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    alphas: np.ndarray,
    progress: bool = True,
) -> DampedInfluence:
    """Damped-Hessian and damped-Gauss–Newton influence for the squared-error loss
    ``ℓ_i = ½‖model(x_i) − y_i‖²`` of every sample on every other, at each checkpoint.

    ``inputs``: ``(N, ...)``; ``targets``: ``(N, O)``; ``checkpoints``: state dicts of
    ``model``'s trainable parameters; ``alphas``: damping constants relative to ``ρ``.
    Computes on the device of ``inputs`` (the model and checkpoints are used there).
    """
    alphas = np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or np.any(alphas <= 0):
        raise ValueError("alphas must be a 1-D array of positive numbers")
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    shapes = [dict(model.named_parameters())[name].shape for name in names]
    sizes = [math.prod(shape) for shape in shapes]

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: piece.reshape(shape) for name, piece, shape in zip(names, theta.split(sizes), shapes)}

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        return functional_call(model, unflatten(theta), (inputs,))

    def per_sample_losses(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((outputs(theta) - targets) ** 2).sum(-1)

    K, A, N = len(checkpoints), len(alphas), inputs.shape[0]
    result = DampedInfluence(
        alphas=alphas,
        hessian=np.empty((A, K, N, N)),
        gauss_newton=np.empty((A, K, N, N)),
        hessian_radius=np.empty(K),
        gauss_newton_radius=np.empty(K),
        negative_fraction=np.empty(K),
        gradient_products=np.empty((K, N, N)),
    )
    for k, checkpoint in enumerate(progress_bar(checkpoints, disable=not progress, desc="classical IF", leave=False)):
        theta = torch.cat([torch.as_tensor(checkpoint[name], device=inputs.device).reshape(-1) for name in names]).double()
        gradients = jacrev(per_sample_losses)(theta)  # (N, d)
        H = jacrev(jacrev(lambda t: per_sample_losses(t).sum()))(theta)  # faster here than jacfwd(jacrev)
        J = jacrev(outputs)(theta).reshape(-1, theta.numel())  # (N·O, d)
        result.hessian[:, k], result.hessian_radius[k], eigenvalues = _damped_inverse_products(H, gradients, alphas)
        result.gauss_newton[:, k], result.gauss_newton_radius[k], _ = _damped_inverse_products(J.T @ J, gradients, alphas)
        result.negative_fraction[k] = np.mean(eigenvalues < -1e-8 * result.hessian_radius[k])
        result.gradient_products[k] = -(gradients @ gradients.T).cpu().numpy()
    return result
