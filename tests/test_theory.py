import numpy as np
import pytest
import sympy as sp
from dataclasses import replace

from stagewise import theory


def test_symbolic_identities_hold():
    assert theory.bif_is_negative_covariance().holds
    assert theory.bif_is_free_energy_hessian(values=2).holds
    assert theory.total_covariance_decomposition().holds


def test_identity_rejects_a_wrong_sign():
    right = theory.bif_is_negative_covariance()
    assert not theory.Identity(right.lhs, -right.rhs).holds


def test_decomposition_needs_the_between_phase_term():
    s = theory.MixtureSymbols()
    full = theory.total_covariance_decomposition(s)
    assert not theory.Identity(full.lhs, s.within_term()).holds


def test_critical_n_splits_the_posterior():
    posterior = theory.example_posterior()
    n_c = posterior.critical_n()
    assert posterior.weight_V(n_c) == pytest.approx(0.5, abs=1e-9)
    assert posterior.weight_V(n_c / 2) < 0.01 and posterior.weight_V(2 * n_c) > 0.99


def test_closed_form_matches_monte_carlo_at_the_transition():
    posterior = theory.example_posterior()
    n_c = posterior.critical_n()
    estimate, error = theory.monte_carlo_bif(posterior, n_c, draws=100_000, seed=1)
    assert np.all(np.abs(estimate - posterior.bif(n_c)[0]) < 4.5 * error)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss_U": 0.4}, "loss_U > loss_V"),
        ({"llc_V": 1.0}, "llc_U < llc_V"),
        ({"mean_losses_V": np.zeros(2)}, "shape"),
        ({"within_cov_U": -np.eye(3)}, "positive semi-definite"),
        ({"within_cov_V": np.triu(np.ones((3, 3)))}, "symmetric"),
    ],
)
def test_invalid_posteriors_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        replace(theory.example_posterior(), **change)


def test_monte_carlo_needs_two_draws():
    with pytest.raises(ValueError, match="at least 2"):
        theory.monte_carlo_bif(theory.example_posterior(), 100.0, draws=1)


def test_symmetric_transient_flip_threshold():
    conditions = theory.sign_change_conditions()
    assert conditions.flips_transiently(1.0, 1.0, -4.1)
    assert not conditions.flips_transiently(1.0, 1.0, -3.9)
    assert not conditions.flips_transiently(1.0, 1.0, 5.0)
    assert conditions.flips_across(1.0, -0.5) and not conditions.flips_across(1.0, 0.5)
    C_U, C_V, D = sp.symbols("C_U C_V D")
    assert sp.simplify(conditions.across - C_U * C_V) == 0
