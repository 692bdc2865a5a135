"""Classical influence functions with damping, at every checkpoint (paper App. C.4), and the
Gaussian (Laplace) limit of the local BIF, which is one of them.

    IF_t(i → j) = −∇ℓ_j(w_t)ᵀ (M + λI)⁻¹ ∇ℓ_i(w_t),     λ = α·ρ,  ρ = max |eig(M)|,

with ``M`` the Hessian ``H`` of the total loss ``Σ_i ℓ_i`` or its Gauss–Newton approximation
``G = Σ_i J_iᵀ J_i`` (for squared-error losses ``ℓ_i = ½‖f(x_i) − y_i‖²``, whose output
Hessian is the identity).  One eigendecomposition per checkpoint serves every ``α``.  Sign as
for the BIF: negative means upweighting ``i`` helps ``j``.

If the local posterior ``exp(−nβ L(w) − (γ/2)‖w − w*‖²)`` (``L`` the mean loss over the ``n``
samples) is replaced by its Gaussian approximation at ``w*``, its covariance is
``(γI + nβ H_L)⁻¹`` and, to first order in ``w − w*``,

    BIF(i, j) ≈ −∇ℓ_iᵀ (γI + nβ H_L)⁻¹ ∇ℓ_j = −(n/nβ) ∇ℓ_iᵀ (H + (nγ/nβ) I)⁻¹ ∇ℓ_j,

the damped-Hessian influence function with the damping ``λ = nγ/nβ`` fixed by the sampler
(:meth:`LocalCurvature.laplace_bif`).  For ``γ ≫ nβ·ρ_L`` it becomes the gradient product
``−∇ℓ_i·∇ℓ_j/γ``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev
from torch.utils._pytree import tree_flatten, tree_map

from stagewise._progress import progress_bar
from stagewise.sampling import FlatLayout, LossFn, PerSampleLoss, as_tensors, model_device


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


def squared_error(outputs: torch.Tensor, targets: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Per-sample squared-error loss ``½‖f(x_i) − y_i‖²`` of outputs and targets ``(m, O)``:
    ``(m,)`` (the output axis is ``dim``), the negative log-likelihood of a unit-variance
    Gaussian model up to a constant."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim)


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
    layout = FlatLayout.of(model)

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        return functional_call(model, layout.unflatten(theta), (inputs,))

    def per_sample_losses(theta: torch.Tensor) -> torch.Tensor:
        return squared_error(outputs(theta), targets)

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
        theta = layout.flatten(checkpoint, device=inputs.device).double()
        gradients = jacrev(per_sample_losses)(theta)  # (N, d)
        H = jacrev(jacrev(lambda t: per_sample_losses(t).sum()))(theta)  # faster here than jacfwd(jacrev)
        J = jacrev(outputs)(theta).reshape(-1, theta.numel())  # (N·O, d)
        result.hessian[:, k], result.hessian_radius[k], eigenvalues = _damped_inverse_products(H, gradients, alphas)
        result.gauss_newton[:, k], result.gauss_newton_radius[k], _ = _damped_inverse_products(J.T @ J, gradients, alphas)
        result.negative_fraction[k] = np.mean(eigenvalues < -1e-8 * result.hessian_radius[k])
        result.gradient_products[k] = -(gradients @ gradients.T).cpu().numpy()
    return result


@dataclass
class LocalCurvature:
    """The Hessian of the mean loss ``L = (1/n) Σ_i ℓ_i`` at ``K`` checkpoints, diagonalised, with
    the per-sample gradients in its eigenbasis.

    ``eigenvalues``: ``(K, d)`` of ``H_L``, ascending; ``projected_gradients``: ``(K, d, n)``,
    column ``i`` is ``Vᵀ∇ℓ_i`` with ``V`` the eigenvectors.  Every influence that is a quadratic
    form of the gradients in a function of ``H_L`` is then a sum over ``d`` terms.
    """

    eigenvalues: np.ndarray
    projected_gradients: np.ndarray

    def laplace_bif(self, nbeta: float, gamma: float) -> np.ndarray:
        """``−∇ℓ_iᵀ (γI + nβ H_L)⁻¹ ∇ℓ_j``, the BIF of the Gaussian approximation to the local
        posterior with these ``nβ``, ``γ``: ``(K, n, n)`` in the order ``(checkpoint, source,
        query)``.  NaN at a checkpoint where ``γ + nβ·λ_min ≤ 0`` (no Gaussian there)."""
        if not (nbeta > 0 and gamma >= 0):
            raise ValueError(f"need nbeta > 0 and gamma >= 0, got {nbeta}, {gamma}")
        precision = gamma + nbeta * self.eigenvalues  # (K, d)
        proper = (precision > 0).all(axis=1)
        weights = np.where(proper[:, None], 1.0 / np.where(precision > 0, precision, 1.0), np.nan)
        g = self.projected_gradients
        return -np.einsum("kdi,kd,kdj->kij", g, weights, g)

    def gradient_product(self) -> np.ndarray:
        """``−∇ℓ_i·∇ℓ_j``, ``(K, n, n)``: ``γ`` times the limit of :meth:`laplace_bif` as ``γ``
        grows (and of any damped influence as the damping does)."""
        g = self.projected_gradients
        return -np.einsum("kdi,kdj->kij", g, g)

    def stiffness(self, nbeta: float, gamma: float) -> np.ndarray:
        """``nβ·λ_max / γ`` at each checkpoint, ``(K,)``: below 1 the localization, not the loss,
        sets the posterior's widest scale in every direction and the Laplace BIF is close to the
        gradient product."""
        return nbeta * self.eigenvalues.max(axis=1) / gamma


def _per_sample_loss_of_flat_weights(model: nn.Module, loss_fn: LossFn, data) -> tuple[Callable, Callable]:
    """``(losses, flatten)``: ``losses(theta)`` the per-sample losses ``(n,)`` at the flat weight
    vector ``theta`` (float64, on the model's device) and ``flatten(checkpoint)`` that vector."""
    layout = FlatLayout.of(model)
    device = model_device(model)
    data = tree_map(lambda leaf: leaf.to(device, torch.float64) if leaf.is_floating_point() else leaf.to(device),
                    as_tensors(data))
    for i, leaf in enumerate(tree_flatten(data)[0]):
        if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all()):
            raise ValueError(f"data tensor {i} holds non-finite values; the Gaussian limit needs finite data")
    objective = PerSampleLoss(model, loss_fn)

    def losses(theta: torch.Tensor) -> torch.Tensor:
        params = {f"model.{name}": piece for name, piece in layout.unflatten(theta).items()}
        return functional_call(objective, params, (data,), strict=False)

    def flatten(checkpoint: Mapping[str, torch.Tensor]) -> torch.Tensor:
        theta = layout.flatten(checkpoint, device=device).double()
        if not bool(torch.isfinite(theta).all()):
            bad = [name for name, piece in layout.unflatten(theta).items() if not bool(torch.isfinite(piece).all())]
            raise ValueError(f"weights {bad} of a checkpoint are not finite; the Gaussian limit needs "
                             f"finite weights")
        return theta

    return losses, flatten


def local_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    progress: bool = True,
) -> LocalCurvature:
    """Diagonalise the Hessian of the mean per-sample loss at each checkpoint (float64, on the
    model's device).

    ``loss_fn(model, batch)`` returns one loss per sample, as for the sampler; ``data`` is the
    whole set (tensors, a ``Dataset`` or a ``DataLoader``).  The Hessian is formed densely, so
    this is for models of a few thousand parameters.
    """
    losses, flatten = _per_sample_loss_of_flat_weights(model, loss_fn, data)
    eigenvalues, projected = [], []
    for checkpoint in progress_bar(checkpoints, disable=not progress, desc="Hessian", leave=False):
        theta = flatten(checkpoint)
        gradients = jacrev(losses)(theta)  # (n, d)
        hessian = jacrev(jacrev(lambda t: losses(t).mean()))(theta)
        values, vectors = torch.linalg.eigh(hessian)
        eigenvalues.append(values.cpu().numpy())
        projected.append((vectors.T @ gradients.T).cpu().numpy())
    return LocalCurvature(np.stack(eigenvalues), np.stack(projected))


def _rows(data) -> int:
    return tree_flatten(as_tensors(data))[0][0].shape[0]


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: ``torch.cuda.mem_get_info`` on a GPU, the
    kernel's ``MemAvailable`` (else free pages) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_memory(needed: int, device: torch.device, what: str) -> None:
    free = available_memory(device)
    if needed > free:
        raise MemoryError(f"{what}: about {needed / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB are free "
                          f"on {device}; use fewer samples, or local_curvature(...).laplace_bif for the "
                          f"first-order limit")


def gaussian_bif(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    nbeta: float,
    gamma: float,
    progress: bool = True,
) -> np.ndarray:
    """The BIF of the Gaussian approximation to the local posterior, to second order in the
    losses: ``(K, n, n)`` in the order ``(checkpoint, source, query)``.

    With ``L ≈ L* + gᵀδ + ½δᵀHδ`` the posterior of ``δ = w − w*`` is ``N(μ, Σ)``,
    ``Σ = (γI + nβH)⁻¹``, ``μ = −nβΣg``; with ``ℓ_i ≈ ℓ_i* + g_iᵀδ + ½δᵀA_iδ``,

        Cov(ℓ_i, ℓ_j) = (g_i + A_iμ)ᵀ Σ (g_j + A_jμ) + ½ tr(A_i Σ A_j Σ),

    and the BIF is minus that.  Where the gradients vanish (at initialisation, at a minimum)
    the first-order form :meth:`LocalCurvature.laplace_bif` vanishes with them and the trace
    term is what remains.  NaN where ``γI + nβH`` is not positive definite.  Forms the ``n``
    per-sample Hessians densely: for models of a few thousand parameters; raises
    ``MemoryError`` before starting when their ``3·8·n·d²`` bytes exceed the free memory.
    Data and weights must be finite.
    """
    if not (nbeta > 0 and gamma >= 0):
        raise ValueError(f"need nbeta > 0 and gamma >= 0, got {nbeta}, {gamma}")
    losses, flatten = _per_sample_loss_of_flat_weights(model, loss_fn, data)
    n = _rows(data)
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _check_memory(3 * 8 * n * d * d, model_device(model),
                  f"gaussian_bif forms {n} per-sample Hessians of {d} x {d} in float64 "
                  f"(and two products of that size)")
    result = []
    for checkpoint in progress_bar(checkpoints, disable=not progress, desc="Gaussian BIF", leave=False):
        theta = flatten(checkpoint)
        gradients = jacrev(losses)(theta)  # (n, d)
        hessians = jacfwd(jacrev(losses))(theta)  # (n, d, d); forward-over-reverse is fastest here
        values, vectors = torch.linalg.eigh(hessians.mean(0))
        precision = gamma + nbeta * values
        if not bool((precision > 0).all()):
            result.append(np.full((len(gradients), len(gradients)), np.nan))
            continue
        covariance = (vectors / precision) @ vectors.T  # Σ
        mean = -nbeta * covariance @ gradients.mean(0)
        shifted = gradients + hessians @ mean  # the losses' gradients at the posterior mean
        first = shifted @ covariance @ shifted.T
        products = hessians @ covariance  # A_i Σ
        second = 0.5 * torch.einsum("iab,jba->ij", products, products)
        result.append(-(first + second).cpu().numpy())
    return np.stack(result)
