"""Closed-form learning dynamics of the deep linear network (Saxe et al. 2013, 2019).

With whitened inputs and small, balanced initial weights the network map stays aligned with
the singular vectors of the input–output correlation ``C = Σ_yx = Yᵀ X = U S Vᵀ``, and each
mode strength follows a sigmoid in time:

    u_k(t) = s_k e^{2 s_k t/τ} / (e^{2 s_k t/τ} − 1 + s_k / u_k0),      τ = N·O / (2·lr).

Modes with equal singular values form *blocks*; inside a block the basis is not unique, so the
strengths of a block are read off basis-free, as the singular values of ``U_bᵀ W V_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagewise.stages import first_crossing
from stagewise.toy.data import Hierarchy


@dataclass(frozen=True)
class ModeBasis:
    """Thin SVD ``C = U diag(s) Vᵀ`` and the blocks of equal singular values.

    ``U``: ``(outputs, r)``, ``s``: ``(r,)`` in decreasing order, ``V``: ``(inputs, r)``;
    ``blocks`` are tuples of mode indices sharing one singular value.
    """

    U: np.ndarray
    s: np.ndarray
    V: np.ndarray
    blocks: tuple[tuple[int, ...], ...]

    @property
    def rank(self) -> int:
        return len(self.s)

    def block_of(self) -> np.ndarray:
        """For every mode, the index of its block, shape ``(r,)``."""
        owner = np.empty(self.rank, dtype=int)
        for b, block in enumerate(self.blocks):
            owner[list(block)] = b
        return owner


def correlation_modes(correlation: np.ndarray, rtol: float = 1e-8) -> ModeBasis:
    """SVD of a correlation matrix ``(outputs, inputs)``, keeping the nonzero modes, with
    singular values equal within ``rtol`` grouped into blocks."""
    U, s, Vt = np.linalg.svd(correlation, full_matrices=False)
    keep = s > rtol * s[0]
    U, s, V = U[:, keep], s[keep], Vt[keep].T
    blocks: list[list[int]] = []
    for k, value in enumerate(s):
        if blocks and np.isclose(value, s[blocks[-1][0]], rtol=rtol * 1e3, atol=0):
            blocks[-1].append(k)
        else:
            blocks.append([k])
    return ModeBasis(U, s, V, tuple(tuple(block) for block in blocks))


def data_modes(hierarchy: Hierarchy) -> ModeBasis:
    """Modes of ``Σ_yx = Yᵀ X`` for the hierarchy: √15, √7, √3 (×2), 1 (×4)."""
    return correlation_modes(hierarchy.outputs.T @ hierarchy.inputs)


def mode_strength(s: np.ndarray, t: np.ndarray, tau: float, u0: np.ndarray) -> np.ndarray:
    """Closed-form ``u(t)`` for singular value ``s`` and initial strength ``u0`` (broadcasting)."""
    growth = np.exp(2.0 * s * t / tau)
    return s * growth / (growth - 1.0 + s / u0)


def mode_strength_ds(s: np.ndarray, t: np.ndarray, tau: float, u0: np.ndarray) -> np.ndarray:
    """``∂u/∂s`` at fixed ``t`` and ``u0``: how a mode's strength responds to its singular value."""
    growth = np.exp(2.0 * s * t / tau)
    denominator = growth - 1.0 + s / u0
    d_growth = growth * 2.0 * t / tau
    numerator = (growth + s * d_growth) * denominator - s * growth * (d_growth + 1.0 / u0)
    return numerator / denominator**2


def trained_mode_strengths(network_map: np.ndarray, basis: ModeBasis) -> np.ndarray:
    """Mode strengths of network maps ``(T, outputs, inputs)`` in the data basis, ``(T, r)``.

    A single mode gives ``U_kᵀ W V_k``; a block gives the singular values of ``U_bᵀ W V_b`` in
    decreasing order, which do not depend on the basis chosen inside the block.
    """
    strengths = np.empty((network_map.shape[0], basis.rank))
    for block in basis.blocks:
        idx = list(block)
        projected = np.einsum("ok,tod,dj->tkj", basis.U[:, idx], network_map, basis.V[:, idx])
        if len(idx) == 1:
            strengths[:, idx[0]] = projected[:, 0, 0]
        else:
            strengths[:, idx] = np.linalg.svd(projected, compute_uv=False)
    return strengths


def fit_initial_strengths(epochs: np.ndarray, strengths: np.ndarray, basis: ModeBasis, tau: float) -> np.ndarray:
    """The effective ``u_k0`` of each mode, from the epoch at which it reaches half its value.

    The closed form reaches ``s/2`` at ``t_half`` with ``e^{2 s t_half/τ} = s/u0 − 1``; this is
    the one constant per mode taken from the run (small random initial weights are neither
    balanced nor aligned, and alignment happens early).  ``strengths`` is ``(T, r)``.
    """
    u0 = np.empty(basis.rank)
    for k, s in enumerate(basis.s):
        trace = strengths[:, k]
        t_half = first_crossing(epochs, trace, s / 2)
        if np.isnan(t_half) or trace[0] >= s / 2:
            raise ValueError(f"mode {k} (s = {s:.3f}) never crosses s/2 after the start; train longer")
        u0[k] = s / (np.exp(2.0 * s * t_half / tau) + 1.0)
    return u0


def pool_within_blocks(u0: np.ndarray, basis: ModeBasis) -> np.ndarray:
    """One initial strength per block (geometric mean), so a block stays degenerate in time."""
    pooled = np.empty_like(u0)
    for block in basis.blocks:
        idx = list(block)
        pooled[idx] = np.exp(np.log(u0[idx]).mean())
    return pooled
