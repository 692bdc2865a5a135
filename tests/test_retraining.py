import numpy as np
import pytest
import torch
from torch import nn

from stagewise import retraining, toy
from stagewise.classical import damped_influence


@pytest.fixture(scope="module")
def data():
    return toy.hierarchy()


def test_unit_weight_changes_nothing_and_removal_hurts_the_removed_item(data):
    config = toy.TrainingConfig(epochs=4000)
    epochs = np.array([0, 2000, 4000])
    assert np.all(retraining.reweighting_loss_difference(data, config, epochs, weight=1.0) == 0)
    loo = retraining.leave_one_out(data, config, epochs)
    assert loo.shape == (3, 8, 8)  # (checkpoint, source, query)
    # without item p, p's own features are learned less: l_p(D) - l_p(D \ p) < 0
    assert np.all(np.diagonal(loo[-1]) < 0)


def test_time_windows_train_independently_in_one_batch(data):
    config = toy.TrainingConfig(epochs=3000)
    both = retraining.time_window_ablation(data, config, removed=3, starts=np.array([1000, 2000]), duration=100)
    first = retraining.time_window_ablation(data, config, removed=3, starts=np.array([1000]), duration=100)
    second = retraining.time_window_ablation(data, config, removed=3, starts=np.array([2000]), duration=100)
    np.testing.assert_allclose(both, np.vstack([first, second]), rtol=1e-12, atol=1e-15)
    assert np.abs(both).max() > 0
    with pytest.raises(ValueError, match="windows"):
        retraining.time_window_ablation(data, config, removed=3, starts=np.array([2950]), duration=100)


def test_damped_influence_of_linear_regression_matches_the_textbook_formula():
    torch.manual_seed(0)
    X = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randn(12, 1, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    w = torch.randn(1, 3, dtype=torch.float64)
    result = damped_influence(model, X, y, [{"weight": w}], alphas=np.array([1e-9, 1e3]), progress=False)
    residual = (X @ w.T - y)[:, 0]
    gradients = residual[:, None] * X
    exact = -(gradients @ torch.linalg.inv(X.T @ X) @ gradients.T).numpy()
    np.testing.assert_allclose(result.hessian[0, 0], exact, rtol=1e-6)
    np.testing.assert_allclose(result.gauss_newton[0, 0], exact, rtol=1e-6)  # GN = H for a linear model
    assert result.negative_fraction[0] == 0
    # heavy damping: the curvature drops out and IF -> -g_i.g_j / (alpha rho)
    limit = result.gradient_products[0] / (1e3 * result.hessian_radius[0])
    np.testing.assert_allclose(result.hessian[1, 0], limit, rtol=0.01)  # (alpha, checkpoint, source, query)
    with pytest.raises(ValueError, match="alphas"):
        damped_influence(model, X, y, [{"weight": w}], alphas=np.array([0.0]), progress=False)
