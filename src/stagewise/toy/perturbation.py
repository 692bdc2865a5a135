"""Analytic influence in the deep linear network (paper App. C.6).

Upweighting sample ``p`` by ``1 + ε`` changes the correlation to ``C(ε) = C + ε y_p x_pᵀ``.
:func:`svd_response` differentiates the SVD ``C = U S Vᵀ``: in the mode basis,
``Q = Uᵀ Ċ V = A S + Ṡ − S B`` with ``A = UᵀU̇`` and ``B = VᵀV̇`` skew-symmetric.

* Between modes with different singular values ``s_j ≠ s_k``:
  ``A_jk = (Q_jk s_k + Q_kj s_j)/(s_k² − s_j²)`` and ``B_jk = (Q_jk s_j + Q_kj s_k)/(s_k² − s_j²)``.
* Inside a block of equal singular values ``s`` (Eqs. 52–56) the split is ``Q_bb = M + K``,
  symmetric plus skew: the singular values respond by the eigenvalues of ``M`` (the block
  splits) and the rotation is ``A_bb = −B_bb = K/(2s)``.  Only ``A − B`` and ``M`` enter any
  quantity that is well defined in the block, so no basis has to be chosen.

The network follows the closed form ``W(t) = U diag(u(s, t)) Vᵀ``; pushing the SVD response
through it gives ``dW/dε`` and, by the chain rule, the influence of ``p`` on the loss
``ℓ_i = ½‖y_i − W x_i‖²`` of every sample at every time (Eq. 59).  Sign: ``dℓ_i/dε < 0``
means upweighting ``p`` helps ``i``, the same convention as the BIF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagewise.toy.data import Hierarchy
from stagewise.toy.dynamics import ModeBasis, correlation_modes, mode_strength, mode_strength_ds


@dataclass(frozen=True)
class SVDResponse:
    """First-order response of the thin SVD to a perturbation ``Ċ`` (shapes as in ModeBasis)."""

    basis: ModeBasis
    Q: np.ndarray
    """``Uᵀ Ċ V``, ``(r, r)``."""
    A: np.ndarray
    """Skew-symmetric rotation of the left singular vectors inside their span, ``(r, r)``."""
    B: np.ndarray
    """Skew-symmetric rotation of the right singular vectors inside their span, ``(r, r)``."""
    dS: np.ndarray
    """Response of the singular values as a block-diagonal symmetric matrix ``(r, r)``."""
    dU_out: np.ndarray
    """Part of ``U̇`` outside the span of ``U``, ``(outputs, r)``."""
    dV_out: np.ndarray
    """Part of ``V̇`` outside the span of ``V``, ``(inputs, r)``."""

    @property
    def dU(self) -> np.ndarray:
        return self.basis.U @ self.A + self.dU_out

    @property
    def dV(self) -> np.ndarray:
        return self.basis.V @ self.B + self.dV_out

    def singular_value_derivatives(self) -> np.ndarray:
        """``ds_k/dε``, ``(r,)``; inside a block the eigenvalues of ``M`` in decreasing order,
        i.e. the rates at which the block's singular values split."""
        rates = np.empty(self.basis.rank)
        for block in self.basis.blocks:
            idx = list(block)
            rates[idx] = np.linalg.eigvalsh(self.dS[np.ix_(idx, idx)])[::-1]
        return rates

    def projector_derivatives(self, block: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Derivatives of the projectors ``U_b U_bᵀ`` and ``V_b V_bᵀ`` onto a block's subspaces."""
        idx = list(block)
        U_b, V_b = self.basis.U[:, idx], self.basis.V[:, idx]
        dU_b, dV_b = self.dU[:, idx], self.dV[:, idx]
        return dU_b @ U_b.T + U_b @ dU_b.T, dV_b @ V_b.T + V_b @ dV_b.T

    def pairing_derivative(self, block: tuple[int, ...]) -> np.ndarray:
        """Derivative of ``U_b V_bᵀ``, the block's left–right pairing, which is also basis-free."""
        idx = list(block)
        return self.dU[:, idx] @ self.basis.V[:, idx].T + self.basis.U[:, idx] @ self.dV[:, idx].T


def svd_response(basis: ModeBasis, dC: np.ndarray) -> SVDResponse:
    """First-order response of ``C = U diag(s) Vᵀ`` to ``C + ε dC``, degenerate blocks included."""
    U, s, V = basis.U, basis.s, basis.V
    Q = U.T @ dC @ V
    owner = basis.block_of()
    same_block = owner[:, None] == owner[None, :]
    gap = np.where(same_block, 1.0, s[None, :] ** 2 - s[:, None] ** 2)  # s_k² − s_j²
    A = np.where(same_block, 0.0, (Q * s[None, :] + Q.T * s[:, None]) / gap)
    B = np.where(same_block, 0.0, (Q * s[:, None] + Q.T * s[None, :]) / gap)
    symmetric, skew = (Q + Q.T) / 2, (Q - Q.T) / 2
    dS = np.where(same_block, symmetric, 0.0)
    A = A + np.where(same_block, skew / (2 * s[:, None]), 0.0)
    B = B - np.where(same_block, skew / (2 * s[:, None]), 0.0)
    dU_out = (np.eye(U.shape[0]) - U @ U.T) @ dC @ V / s
    dV_out = (np.eye(V.shape[0]) - V @ V.T) @ dC.T @ U / s
    return SVDResponse(basis, Q, A, B, dS, dU_out, dV_out)


def upweighting_direction(hierarchy: Hierarchy, p: int) -> np.ndarray:
    """``dC/dε = y_p x_pᵀ`` for upweighting sample ``p``, shape ``(outputs, inputs)``."""
    return np.outer(hierarchy.outputs[p], hierarchy.inputs[p])


def _require_block_constant(u0: np.ndarray, basis: ModeBasis) -> None:
    for block in basis.blocks:
        if not np.allclose(u0[list(block)], u0[block[0]]):
            raise ValueError("u0 must be equal inside each block of equal singular values "
                             "(see dynamics.pool_within_blocks)")


def closed_form_map(basis: ModeBasis, epochs: np.ndarray, tau: float, u0: np.ndarray) -> np.ndarray:
    """``W(t) = U diag(u(s, t)) Vᵀ`` at every epoch, ``(T, outputs, inputs)``."""
    strengths = mode_strength(basis.s[None, :], np.asarray(epochs, float)[:, None], tau, u0[None, :])
    return np.einsum("ok,tk,dk->tod", basis.U, strengths, basis.V)


def map_derivative(response: SVDResponse, epochs: np.ndarray, tau: float, u0: np.ndarray) -> np.ndarray:
    """``dW(t)/dε`` under the closed-form dynamics, ``(T, outputs, inputs)``.

    ``u0`` (``(r,)``) must be constant inside each block, as the closed form is then degenerate
    in the block too.
    """
    basis = response.basis
    _require_block_constant(u0, basis)
    t = np.asarray(epochs, float)[:, None]
    g = mode_strength(basis.s[None, :], t, tau, u0[None, :])  # (T, r)
    dg = mode_strength_ds(basis.s[None, :], t, tau, u0[None, :])  # (T, r)
    inner = response.A[None] * g[:, None, :] - g[:, :, None] * response.B[None] + dg[:, :, None] * response.dS[None]
    in_span = np.einsum("ok,tkj,dj->tod", basis.U, inner, basis.V)
    out_of_span = np.einsum("ok,tk,dk->tod", response.dU_out, g, basis.V) + np.einsum(
        "ok,tk,dk->tod", basis.U, g, response.dV_out
    )
    return in_span + out_of_span


def analytic_influence(hierarchy: Hierarchy, epochs: np.ndarray, tau: float, u0: np.ndarray) -> np.ndarray:
    """``dℓ_i/dε`` for upweighting every sample ``p``, at every epoch: ``(T, P, N)``, the library's
    axis order ``(checkpoint, source, query)``.

    ``influence[t, p, i]`` is the influence of ``p`` on the loss of ``i`` at epoch ``epochs[t]``
    under the closed-form dynamics; negative means ``p`` helps ``i``.
    """
    basis = correlation_modes(hierarchy.outputs.T @ hierarchy.inputs)
    X, Y = hierarchy.inputs, hierarchy.outputs
    residual = np.einsum("tod,nd->tno", closed_form_map(basis, epochs, tau, u0), X) - Y  # (T, N, O)
    influence = np.empty((len(epochs), len(X), len(X)))
    for p in range(len(X)):
        dW = map_derivative(svd_response(basis, upweighting_direction(hierarchy, p)), epochs, tau, u0)
        influence[:, p] = np.einsum("tno,tod,nd->tn", residual, dW, X)
    return influence


def closed_form_losses(
    hierarchy: Hierarchy, epochs: np.ndarray, tau: float, u0: np.ndarray, sample_weights: np.ndarray | None = None
) -> np.ndarray:
    """Per-sample losses ``(T, N)`` of the closed-form network trained on weighted data.

    The weights ``(N,)`` change the correlation to ``Σ_i w_i y_i x_iᵀ``; its exact SVD sets the
    modes, each with the initial strength of the unweighted mode of the same rank.
    """
    X, Y = hierarchy.inputs, hierarchy.outputs
    weights = np.ones(len(X)) if sample_weights is None else np.asarray(sample_weights, float)
    basis = correlation_modes((Y * weights[:, None]).T @ X)
    if basis.rank != len(u0):
        raise ValueError("the weights remove a mode of the data; use a nonzero weight")
    W = closed_form_map(basis, epochs, tau, u0)
    return 0.5 * ((np.einsum("tod,nd->tno", W, X) - Y) ** 2).sum(-1)


def closed_form_loss_difference(
    hierarchy: Hierarchy, epochs: np.ndarray, tau: float, u0: np.ndarray, p: int, weight: float = 0.9
) -> np.ndarray:
    """``ℓ_j(D) − ℓ_j(D with sample p weighted by `weight`)``, shape ``(T, N)``.

    With ``weight = 0.9`` this is the paper's stand-in for ablation (App. C.6); negative means
    ``p`` helps ``j``, as for leave-one-out.
    """
    weights = np.ones(len(hierarchy.items))
    weights[p] = weight
    return closed_form_losses(hierarchy, epochs, tau, u0) - closed_form_losses(hierarchy, epochs, tau, u0, weights)


def svd_response_errors(correlation: np.ndarray, dC: np.ndarray, eps: float = 1e-6) -> dict[str, float]:
    """Largest differences between :func:`svd_response` and finite differences of the SVD of
    ``correlation ± eps·dC``, for quantities well defined in degenerate blocks.

    ``singular values``: one-sided differences of the sorted values (inside a block the sorted
    values are not differentiable from both sides at once); ``projectors`` and ``pairing``:
    central differences of ``U_b U_bᵀ``, ``V_b V_bᵀ`` and ``U_b V_bᵀ`` for every block.
    """
    basis = correlation_modes(correlation)
    response = svd_response(basis, dC)
    plus = correlation_modes(correlation + eps * dC, rtol=1e-12)
    minus = correlation_modes(correlation - eps * dC, rtol=1e-12)
    rates = (plus.s[: basis.rank] - basis.s) / eps  # a perturbation may add modes below the rank
    errors = {"singular values": float(np.abs(rates - response.singular_value_derivatives()).max())}
    projector_error = pairing_error = 0.0
    for block in basis.blocks:
        idx = list(block)

        def block_quantities(b: ModeBasis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            U_b, V_b = b.U[:, idx], b.V[:, idx]
            return U_b @ U_b.T, V_b @ V_b.T, U_b @ V_b.T

        (PU_p, PV_p, pair_p), (PU_m, PV_m, pair_m) = block_quantities(plus), block_quantities(minus)
        dPU, dPV = response.projector_derivatives(block)
        projector_error = max(
            projector_error,
            np.abs((PU_p - PU_m) / (2 * eps) - dPU).max(),
            np.abs((PV_p - PV_m) / (2 * eps) - dPV).max(),
        )
        pairing_error = max(pairing_error, np.abs((pair_p - pair_m) / (2 * eps) - response.pairing_derivative(block)).max())
    errors["projectors"] = float(projector_error)
    errors["pairing"] = float(pairing_error)
    return errors


def finite_difference_influence(
    hierarchy: Hierarchy, epochs: np.ndarray, tau: float, u0: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """Central finite differences of :func:`closed_form_losses` under ``(1 ± eps)``-weighting of
    every sample, ``(T, P, N)``: what :func:`analytic_influence` must reproduce."""
    n_items = len(hierarchy.items)
    result = np.empty((len(epochs), n_items, n_items))
    for p in range(n_items):
        up, down = np.ones(n_items), np.ones(n_items)
        up[p], down[p] = 1 + eps, 1 - eps
        difference = closed_form_losses(hierarchy, epochs, tau, u0, up) - closed_form_losses(hierarchy, epochs, tau, u0, down)
        result[:, p] = difference / (2 * eps)
    return result
