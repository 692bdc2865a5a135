import numpy as np
import pytest
import torch
from torch import nn

from stagewise.classical import damped_influence, local_curvature
from stagewise.influence import bif_matrix
from stagewise.sampling import SGLDConfig, sample_losses


def squared_error(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1)


@pytest.fixture(scope="module")
def regression():
    torch.manual_seed(0)
    X = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    w = torch.tensor([[0.4, -1.0, 0.3]], dtype=torch.float64)
    return model, X, y, w


def test_laplace_bif_is_the_damped_influence_with_the_samplers_damping(regression):
    model, X, y, w = regression
    curvature = local_curvature(model, squared_error, (X, y), [{"weight": w}], progress=False)
    nbeta, gamma, n = 50.0, 20.0, len(X)
    residual = (X @ w.T - y)[:, 0]
    gradients = residual[:, None] * X
    hessian_of_mean = X.T @ X / n
    by_hand = -(gradients @ torch.linalg.inv(gamma * torch.eye(3, dtype=torch.float64) + nbeta * hessian_of_mean) @ gradients.T)
    np.testing.assert_allclose(curvature.laplace_bif(nbeta, gamma)[0], by_hand.numpy(), rtol=1e-10)
    np.testing.assert_allclose(curvature.gradient_product()[0], -(gradients @ gradients.T).numpy(), rtol=1e-10)
    # the same number as the damped Hessian IF at lambda = n gamma / nbeta, scaled by n / nbeta
    radius = torch.linalg.eigvalsh(X.T @ X).max().item()
    damped = damped_influence(model, X, y, [{"weight": w}], alphas=np.array([n * gamma / nbeta / radius]), progress=False)
    np.testing.assert_allclose(curvature.laplace_bif(nbeta, gamma)[0], n / nbeta * damped.hessian[0, 0], rtol=1e-8)
    assert curvature.stiffness(nbeta, gamma)[0] == pytest.approx(nbeta * torch.linalg.eigvalsh(hessian_of_mean).max().item() / gamma)
    with pytest.raises(ValueError, match="nbeta"):
        curvature.laplace_bif(0.0, gamma)


def test_laplace_bif_is_nan_where_the_gaussian_does_not_exist():
    model = nn.Linear(1, 1, bias=False).double()
    # loss 0.5 (w x - y)^2 - 0.5 c w^2 has curvature x^2 - c < 0 for c > x^2 in w
    concave = lambda m, batch: 0.5 * ((m(batch[0]) - batch[1]) ** 2).sum(-1) - 2.0 * m.weight.pow(2).sum()
    x, y = torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    curvature = local_curvature(model, concave, (x, y), [{"weight": torch.tensor([[0.5]], dtype=torch.float64)}], progress=False)
    assert curvature.eigenvalues[0, 0] == pytest.approx(1.0 - 4.0)
    assert np.isnan(curvature.laplace_bif(10.0, 1.0)).all()
    assert np.isfinite(curvature.laplace_bif(10.0, 100.0)).all()


def test_sampled_bif_approaches_its_laplace_limit_for_a_nearly_linear_loss(regression):
    # at the least-squares solution (no pull off w*) with large residuals and a tight posterior,
    # the losses are nearly linear in w over its spread: their covariance is the Laplace one
    model, X, y, _ = regression
    y_far = y + 20.0
    w = torch.linalg.lstsq(X, y_far).solution.T
    config = SGLDConfig(epsilon=2e-4, nbeta=100.0, gamma=500.0, chains=8, draws=3000, preconditioner="none", seed=3)
    draws = sample_losses(model, squared_error, (X, y_far), config, checkpoints=[{"weight": w}], progress=False)
    sampled = bif_matrix(draws.sampling)[0].numpy()
    laplace = local_curvature(model, squared_error, (X, y_far), [{"weight": w}], progress=False).laplace_bif(100.0, 500.0)[0]
    slope = (sampled * laplace).sum() / (laplace * laplace).sum()
    assert np.corrcoef(sampled.ravel(), laplace.ravel())[0, 1] > 0.98
    assert 0.85 < slope < 1.15   # plain SGLD's step-size bias at eps * gamma = 0.1 is about 1 / (1 - 0.025)


def test_gaussian_limits_refuse_non_finite_data_and_weights(regression):
    from stagewise.classical import gaussian_bif
    model, X, y, w = regression
    bad = X.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="data tensor 0 holds non-finite values"):
        gaussian_bif(model, squared_error, (bad, y), [{"weight": w}], 10.0, 1.0, progress=False)
    with pytest.raises(ValueError, match="data tensor 1 holds non-finite values"):
        local_curvature(model, squared_error, (X, y * float("inf")), [{"weight": w}], progress=False)
    with pytest.raises(ValueError, match=r"weights \['weight'\] of a checkpoint are not finite"):
        local_curvature(model, squared_error, (X, y), [{"weight": w * float("nan")}], progress=False)


def test_gaussian_bif_checks_its_memory_before_starting(regression, monkeypatch):
    from stagewise import classical
    model, X, y, w = regression
    monkeypatch.setattr(classical, "available_memory", lambda device: 1000)
    with pytest.raises(MemoryError, match=r"10 per-sample Hessians of 3 x 3"):
        classical.gaussian_bif(model, squared_error, (X, y), [{"weight": w}], 10.0, 1.0, progress=False)
    monkeypatch.setattr(classical, "available_memory", lambda device: 3 * 8 * 10 * 3 * 3)
    limit = classical.gaussian_bif(model, squared_error, (X, y), [{"weight": w}], 10.0, 1.0, progress=False)
    assert limit.shape == (1, 10, 10)
