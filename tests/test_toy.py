import numpy as np
import pytest
import torch

from stagewise import toy


@pytest.fixture(scope="module")
def data():
    return toy.hierarchy()


@pytest.fixture(scope="module")
def experiment():
    return toy.run_toy_experiment(checkpoints=101)


def test_hierarchy_matrices(data):
    assert data.outputs.shape == (8, 15)
    assert data.nodes[:3] == ("living", "animal", "plant")
    squared = np.linalg.svd(data.outputs.T @ data.inputs, compute_uv=False) ** 2
    np.testing.assert_allclose(squared, [15, 7, 3, 3, 1, 1, 1, 1], atol=1e-12)
    assert toy.data_modes(data).blocks == ((0,), (1,), (2, 3), (4, 5, 6, 7))
    assert len(data.splits()) == 7 and data.split("living").label == "animal | plant"


def test_unknown_names_are_reported(data):
    with pytest.raises(ValueError, match="unknown item 'wolf'"):
        data.index("wolf")
    with pytest.raises(ValueError, match="does not branch"):
        data.split("dog")


def test_zero_weight_leaves_the_item_untouched(data):
    config = toy.TrainingConfig(epochs=500)
    weights = torch.ones(2, 8, dtype=torch.float64)
    weights[1, 3] = 0.0
    run = toy.train_linear_network(data, config, np.array([0, 500]), weights)
    W1_init = toy.network.initial_weights(config, data)[0]
    # leave-one-out: the input column of the removed item never receives a gradient
    torch.testing.assert_close(run.W1[1, -1, :, 3], W1_init[:, 3])
    assert not torch.allclose(run.W1[0, -1, :, 3], W1_init[:, 3])


def test_training_rejects_bad_arguments(data):
    config = toy.TrainingConfig(epochs=10)
    with pytest.raises(ValueError, match="record_epochs"):
        toy.train_linear_network(data, config, np.array([0, 11]))
    with pytest.raises(ValueError, match="sample_weights"):
        toy.train_linear_network(data, config, np.array([0]), torch.ones(2, 5))
    with pytest.raises(ValueError, match="positive"):
        toy.TrainingConfig(learning_rate=0.0)


def test_closed_form_solves_the_mode_equation():
    s, tau, u0 = 1.7, 1200.0, 2e-5
    t = np.linspace(0, 8000, 80_001)
    u = toy.mode_strength(s, t, tau, u0)
    assert u[0] == pytest.approx(u0)
    # tau du/dt = 2 u (s - u)
    np.testing.assert_allclose(tau * np.gradient(u, t), 2 * u * (s - u), atol=1e-6)
    h = 1e-7
    numeric = (toy.mode_strength(s + h, t, tau, u0) - toy.mode_strength(s - h, t, tau, u0)) / (2 * h)
    np.testing.assert_allclose(toy.mode_strength_ds(s, t, tau, u0), numeric, atol=1e-5)


def test_initial_strength_is_recovered(data):
    basis = toy.data_modes(data)
    epochs = np.linspace(0, 10_000, 2001)
    u0 = np.linspace(1e-5, 4e-5, basis.rank)
    strengths = toy.mode_strength(basis.s, epochs[:, None], 1200.0, u0)
    np.testing.assert_allclose(toy.fit_initial_strengths(epochs, strengths, basis, 1200.0), u0, rtol=1e-2)
    with pytest.raises(ValueError, match="never crosses"):
        toy.fit_initial_strengths(epochs[:100], strengths[:100], basis, 1200.0)


def test_trained_network_follows_closed_form(experiment):
    predicted = toy.mode_strength(experiment.modes.s, experiment.epochs[:, None], experiment.tau,
                                  experiment.initial_strengths())
    assert np.abs(predicted - experiment.mode_strengths()).max() < 0.01


def test_svd_response_with_a_degenerate_block():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(6, 4)))
    V, _ = np.linalg.qr(rng.normal(size=(5, 4)))
    C = U @ np.diag([3.0, 2.0, 2.0, 2.0]) @ V.T
    dC = rng.normal(size=(6, 5))
    errors = toy.svd_response_errors(C, dC)
    assert max(errors.values()) < 1e-5
    # the naive diagonal formula in an arbitrary basis gets the block's split wrong
    response = toy.svd_response(toy.correlation_modes(C), dC)
    naive = np.sort(np.diag(response.Q)[1:])
    assert not np.allclose(naive, np.sort(response.singular_value_derivatives()[1:]), atol=1e-3)


def test_analytic_influence_matches_finite_differences(experiment):
    epochs = experiment.epochs[::5]
    u0 = experiment.block_initial_strengths()
    analytic = toy.analytic_influence(experiment.data, epochs, experiment.tau, u0)
    numeric = toy.finite_difference_influence(experiment.data, epochs, experiment.tau, u0)
    assert np.abs(analytic - numeric).max() < 1e-6 * np.abs(analytic).max()
    with pytest.raises(ValueError, match="equal inside each block"):
        toy.analytic_influence(experiment.data, epochs, experiment.tau, experiment.initial_strengths())


def test_removing_an_item_entirely_is_refused(experiment):
    weights = np.ones(8)
    weights[0] = 0.0
    with pytest.raises(ValueError, match="nonzero weight"):
        toy.closed_form_losses(experiment.data, experiment.epochs, experiment.tau,
                               experiment.block_initial_strengths(), weights)


def test_branches_open_from_the_root_down(experiment):
    hidden, epochs, data = experiment.hidden(), experiment.epochs, experiment.data
    onset = {s.parent: toy.separation_epoch(hidden, epochs, data, s, 0.1) for s in data.splits()}
    assert onset["living"] < onset["animal"] < onset["mammal"]
    with pytest.raises(ValueError, match="fraction"):
        toy.separation_epoch(hidden, epochs, data, data.split("living"), 1.5)
    assert toy.mds_trajectories(hidden[::10]).shape == (len(epochs[::10]), 8, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to compare with the CPU")
def test_training_on_a_gpu_returns_cpu_tensors_that_match_the_cpu_run(data):
    config = toy.TrainingConfig(epochs=50)
    on_gpu = toy.train_linear_network(data, config, np.array([0, 50]), device="cuda")
    on_cpu = toy.train_linear_network(data, config, np.array([0, 50]), device="cpu")
    assert on_gpu.W1.device.type == "cpu"
    torch.testing.assert_close(on_gpu.W1, on_cpu.W1)


def test_strided_trajectory_samples_what_the_full_one_samples_there(experiment):
    from stagewise.sampling import SGLDConfig

    config = SGLDConfig(epsilon=3e-5, nbeta=3000, gamma=5000, chains=2, draws=20)
    short = toy.run_toy_experiment(checkpoints=5)
    full = short.bif_trajectory(config, progress=False)
    strided = short.bif_trajectory(config, stride=2, progress=False)
    torch.testing.assert_close(strided.bif, full.bif[::2])
    assert full.bif.shape == (5, 8, 8) and strided.verdicts == full.verdicts[::2]


def test_query_weights_give_each_distinct_query_one_share(data):
    dog = data.index("dog")
    queries = [j for j in range(8) if j != dog]
    weights = dict(zip((data.items[j] for j in queries), data.query_weights(dog, queries)))
    # three kinds of query for the dog: its sibling, the two birds, the four plants
    assert weights["cat"] == pytest.approx(1 / 3)
    assert weights["sparrow"] == weights["penguin"] == pytest.approx(1 / 6)
    assert all(weights[plant] == pytest.approx(1 / 12) for plant in ("pine", "oak", "rose", "lily"))
    with pytest.raises(ValueError):
        data.query_weights(dog, [9])


def test_gaussian_check_finds_one_gaussian_under_strong_localization():
    from stagewise.sampling import SGLDConfig
    from stagewise.toy.experiment import gaussian_check

    run = toy.run_toy_experiment(toy.TrainingConfig(epochs=3000), checkpoints=4)
    strong = SGLDConfig(epsilon=3e-6, nbeta=3000, gamma=5000, chains=2, draws=1000)
    check = gaussian_check(run, [strong], [2, 3], progress=False)
    assert check.slope.shape == check.correlation.shape == (1, 2) and not check.diverged.any()
    assert np.all(check.correlation > 0.95) and np.all(np.abs(check.slope - 1) < 0.3)
    assert np.all(check.between_chains < 0.2)     # two chains in one mode
    with pytest.raises(ValueError):
        gaussian_check(run, [strong], [7], progress=False)


def test_a_sweep_keeps_the_draws_after_the_burn_in_and_names_each_cells_verdicts():
    from stagewise.diagnostics import DIVERGED
    from stagewise.sampling import SGLDConfig
    from stagewise.toy.experiment import bif_sweep

    run = toy.run_toy_experiment(toy.TrainingConfig(epochs=3000), checkpoints=4)
    stable = SGLDConfig(epsilon=3e-6, nbeta=3000, gamma=5000, chains=2, draws=200)
    exploding = SGLDConfig(epsilon=1e-2, nbeta=3000, gamma=5000, chains=2, draws=50)
    result = bif_sweep(run, [stable, exploding], stride=2, progress=False)
    assert result.burn_in.shape == (2, 2) and result.verdicts[1] == [DIVERGED, DIVERGED]
    assert DIVERGED not in result.verdicts[0] and np.isnan(result.bif[1]).all()
    # the same draws and the same burn-in as the trajectory at that setting
    alone = run.bif_trajectory(stable, stride=2, progress=False)
    assert np.array_equal(result.burn_in[0], alone.burn_in.numpy())
    np.testing.assert_allclose(result.bif[0], alone.bif.numpy())
