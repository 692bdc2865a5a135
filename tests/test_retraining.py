from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from stagewise import toy
from stagewise.toy import retraining
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


def test_target_scaling_trains_on_the_scaled_targets_and_reports_the_original_loss(data):
    config = toy.TrainingConfig(epochs=800)
    epochs = np.array([0, 400, 800])
    scales = torch.ones(1, 8, dtype=torch.float64)
    scales[0, 2] = 1.3
    scaled = toy.train_linear_network(data, config, epochs, target_scales=scales)
    outputs = data.outputs.copy()
    outputs[2] *= 1.3
    by_hand = toy.train_linear_network(SimpleNamespace(inputs=data.inputs, outputs=outputs), config, epochs)
    torch.testing.assert_close(scaled.W2 @ scaled.W1, by_hand.W2 @ by_hand.W1, rtol=1e-12, atol=1e-14)
    # the loss is against the unscaled targets
    W = (scaled.W2 @ scaled.W1)[0, -1].numpy()
    np.testing.assert_allclose(scaled.losses[0, -1].numpy(), 0.5 * ((data.inputs @ W.T - data.outputs) ** 2).sum(-1), rtol=1e-12)
    with pytest.raises(ValueError, match="target_scales"):
        toy.train_linear_network(data, config, epochs, torch.ones(3, 8), target_scales=torch.ones(2, 8))


def test_upweighting_a_loss_differs_from_scaling_its_target(data):
    config = toy.TrainingConfig(epochs=4000)
    epochs = np.array([0, 2000, 4000])
    loss = retraining.upweighting_influence(data, config, epochs, perturb="loss")
    target = retraining.upweighting_influence(data, config, epochs, perturb="target")
    assert loss.shape == target.shape == (3, 8, 8)
    assert np.all(loss[0] == 0) and np.all(target[0] == 0)    # nothing trained yet
    assert np.all(np.diagonal(loss[-1]) < 0)                 # more weight on p helps p
    # a loss weight also raises the curvature along x_p (Sigma_xx), a target scale does not
    assert np.abs(loss[-1] - target[-1]).max() > 0.05 * np.abs(loss[-1]).max()
    finer = retraining.upweighting_influence(data, config, epochs, step=1e-3, perturb="loss")
    np.testing.assert_allclose(finer, loss, rtol=1e-3, atol=1e-3 * np.abs(loss).max())   # a derivative, not a step
    with pytest.raises(ValueError, match="perturb"):
        retraining.upweighting_influence(data, config, epochs, perturb="input")


def test_random_subsets_are_distinct_and_complete_when_few():
    every = retraining.random_subsets(8, count=100)
    assert every.shape == (70, 8) and np.all(every.sum(1) == 4)
    assert len({row.tobytes() for row in every}) == 70
    some = retraining.random_subsets(12, count=30, size=3, seed=4)
    assert some.shape == (30, 12) and np.all(some.sum(1) == 3) and len({row.tobytes() for row in some}) == 30
    with pytest.raises(ValueError, match="size"):
        retraining.random_subsets(8, count=5, size=8)


def test_lds_is_one_for_an_additive_truth_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    T, P = 3, 8
    subsets = retraining.random_subsets(P, count=70)
    truth = rng.standard_normal((T, P, P))
    losses = np.einsum("sp,tpj->tsj", subsets.astype(float), truth) + 5.0   # exactly additive
    for condition in (False, True):
        score = retraining.linear_datamodeling_score(truth, subsets, losses, condition_on_query=condition)
        np.testing.assert_allclose(score, 1.0)
        assert np.all(retraining.linear_datamodeling_score(-truth, subsets, losses, condition_on_query=condition) < -0.99)
    noise = np.array([retraining.linear_datamodeling_score(rng.standard_normal((T, P, P)), subsets, losses).mean()
                      for _ in range(50)])
    assert abs(noise.mean()) < 0.05
    # membership alone: perfect on the subsets' own losses when only membership matters, undefined once conditioned
    membership = -np.broadcast_to(np.eye(P), (T, P, P))
    own = 1.0 - subsets[None].astype(float).repeat(T, 0)
    assert np.all(retraining.linear_datamodeling_score(membership, subsets, own) > 0.99)
    assert np.all(np.isnan(retraining.linear_datamodeling_score(membership, subsets, own, condition_on_query=True)))
