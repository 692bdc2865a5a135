from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from torch.utils.data import DataLoader, TensorDataset

from stagewise import bif_trajectory, local_bif
from stagewise.influence import (at_equal_travel, bif_matrix, chain_rhat, local_learning_coefficient, pearson,
                                 trace_correlation)
from stagewise.sampling import (FlatLayout, SamplerDivergence, SGLDConfig, SGLDState, model_device, sample_losses,
                                sgld_init, sgld_update)


class Linear(nn.Module):
    """Parameters w in R^d; the 'data' are the rows a_i and each loss is linear, l_i = a_i . w."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))


def linear_loss(model, rows):
    return rows @ model.w


def test_sampler_matches_the_known_covariance_of_a_gaussian_posterior():
    # With linear losses the gradient is the constant mean row a_bar, so after burn-in the
    # preconditioner is the constant G = 1/(|a_bar| + alpha) and every coordinate is an exact
    # AR(1) process with step h = eps G gamma / 2 and stationary variance
    # eps G / (1 - (1 - h)^2).  Then Cov(l_i, l_j) = sum_k a_ik a_jk var_k.
    torch.manual_seed(0)
    rows = torch.randn(6, 3, dtype=torch.float64)
    config = SGLDConfig(epsilon=2e-3, nbeta=10.0, gamma=10.0, chains=64, draws=1500, burn_in=1500, seed=3)
    draws = sample_losses(Linear(3), linear_loss, rows, config, progress=False)
    G = 1.0 / (rows.mean(0).abs() + config.stability)
    h = config.epsilon * G * config.gamma / 2
    variance = config.epsilon * G / (1 - (1 - h) ** 2)
    expected = -(rows * variance) @ rows.T

    estimate = bif_matrix(draws.sampling)[0]
    per_chain = bif_matrix(draws.sampling[0][:, None])  # (chains, 6, 6): chains are independent
    error = per_chain.std(dim=0) / np.sqrt(config.chains)
    assert torch.all((estimate - expected).abs() < 4 * error + 1e-12)
    # and the check has power: a 10% error in the variance would be seen
    assert torch.any((estimate - 1.1 * expected).abs() > 4 * error)


def test_observables_never_enter_the_gradient():
    rows = torch.randn(5, 2, dtype=torch.float64)
    config = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=2, draws=20, seed=1)
    plain = sample_losses(Linear(2), linear_loss, rows, config, progress=False)
    with_observables = sample_losses(Linear(2), linear_loss, rows, config, 100 * torch.randn(7, 2, dtype=torch.float64), progress=False)
    torch.testing.assert_close(plain.sampling, with_observables.sampling)
    assert with_observables.observables.shape == (1, 2, 20, 7)


def test_checkpoints_are_sampled_together_and_deterministically():
    rows = torch.randn(4, 2, dtype=torch.float64)
    checkpoints = [{"w": torch.zeros(2, dtype=torch.float64)}, {"w": torch.ones(2, dtype=torch.float64)}]
    config = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=3, draws=10, seed=7)
    first = sample_losses(Linear(2), linear_loss, rows, config, checkpoints=checkpoints, progress=False)
    second = sample_losses(Linear(2), linear_loss, rows, config, checkpoints=checkpoints, progress=False)
    assert first.sampling.shape == (2, 3, 10, 4)
    torch.testing.assert_close(first.sampling, second.sampling)
    torch.testing.assert_close(first.initial_loss, torch.stack([rows.sum(1) * 0, rows.sum(1)]).mean(1))


def test_thinned_chains_record_every_thin_th_step_of_the_same_chain():
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2
    every = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=100.0, chains=2, draws=30, batch_size=4, burn_in=5, seed=3)
    thinned = replace(every, draws=10, thin=3)     # the same 35 steps
    runs = [sample_losses(model, per_token, (x, y), config, (x[:2], y[:2]),
                          progress=False) for config in (every, thinned)]
    assert runs[1].observables.shape == (1, 2, 10, 4)
    torch.testing.assert_close(runs[1].observables, runs[0].observables[:, :, ::3])
    torch.testing.assert_close(runs[1].loss_trace, runs[0].loss_trace[:, :, ::3])
    assert not torch.equal(runs[0].observables[:, :, 1], runs[0].observables[:, :, 0])   # the steps between moved


def test_equal_travel_scales_the_draws_or_the_thinning():
    config = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=100.0, draws=40, burn_in=20)
    half = at_equal_travel(config, 5e-4)
    assert (half.draws, half.thin, half.burn_in) == (80, 1, 40)
    half = at_equal_travel(replace(config, thin=4), 5e-4)
    assert (half.draws, half.thin, half.burn_in) == (40, 8, 40)


def test_minibatches_and_per_token_losses():
    model = nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2  # (m, 2): two "tokens" per sample
    config = SGLDConfig(epsilon=1e-4, nbeta=10.0, gamma=100.0, chains=2, draws=5, batch_size=4)
    draws = sample_losses(model, per_token, (x, y), config, progress=False)
    assert draws.sampling.shape == (1, 2, 5, 20)


def test_one_by_one_evaluation_draws_what_vmap_draws():
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2
    checkpoints = [model.state_dict(), {k: v + 0.5 for k, v in model.state_dict().items()}]
    config = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=100.0, chains=3, draws=15, batch_size=4, seed=2)
    runs = [sample_losses(model, per_token, (x, y), config, (x[:3], y[:3]), checkpoints=checkpoints,
                          progress=False, vectorize=vectorize) for vectorize in (True, False)]
    assert runs[0].sampling.shape == (2, 3, 15, 20) and runs[0].observables.shape == (2, 3, 15, 6)
    torch.testing.assert_close(runs[0].sampling, runs[1].sampling)
    torch.testing.assert_close(runs[0].observables, runs[1].observables)
    torch.testing.assert_close(runs[0].initial_loss, runs[1].initial_loss)


def test_batched_autograd_gives_the_gradients_of_vmap_grad_bit_for_bit():
    # the driver's gradient (one backward pass through the vmap-ed forward) must be the
    # per-set gradient of functorch's vmap(grad(...)), exactly, or the draws would change
    from torch.func import functional_call, grad_and_value, vmap

    from stagewise.sampling import PerSampleLoss, _vmapped_gradient

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(9, 3), torch.randn(9, 2)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2
    objective = PerSampleLoss(model, per_token)
    layout = FlatLayout.of(model)
    rows = layout.flatten(dict(model.named_parameters())).detach() + 0.3 * torch.randn(6, 32)

    def losses(params, batch):
        return functional_call(objective, {f"model.{k}": v for k, v in params.items()}, (batch,), strict=False)

    def mean_loss(params, batch):
        per_sample = losses(params, batch)
        return per_sample.mean(), per_sample

    grads, (mean, per_sample) = vmap(grad_and_value(mean_loss, has_aux=True), in_dims=(0, None))(
        layout.unflatten(rows), (x, y))
    ours = _vmapped_gradient(vmap(losses, in_dims=(0, None)), layout)(rows, (x, y))
    assert torch.equal(ours[0], layout.flatten(grads, leading=1))
    assert torch.equal(ours[1], mean) and torch.equal(ours[2], per_sample)
    assert not ours[0].requires_grad and ours[0].abs().min() > 0


def test_draws_do_not_depend_on_the_number_of_torch_threads():
    # the chains' noise is drawn in one thread per torch thread; each chain keeps its stream
    model = nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2
    config = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=100.0, chains=5, draws=40, seed=8)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(sample_losses(model, per_token, (x, y), config, progress=False).sampling)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0][0, 0], runs[0][0, 1])  # and the chains differ


@pytest.mark.parametrize(
    "change, message",
    [({"epsilon": 0.0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"), ({"nbeta": -1.0}, "nbeta"),
     ({"gamma": -1.0}, "gamma"), ({"chains": 1}, "chains"), ({"draws": 1}, "draws"),
     ({"batch_size": 0}, "batch_size"), ({"decay": 1.0}, "decay"), ({"stability": 0.0}, "stability"),
     ({"thin": 0}, "thin")],
)
def test_invalid_hyperparameters_are_named(change, message):
    settings = dict(epsilon=1e-3, nbeta=10.0, gamma=1.0)
    settings.update(change)
    with pytest.raises(ValueError, match=message):
        SGLDConfig(**settings)


def test_divergence_stops_the_run_and_names_the_hyperparameters():
    model = nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    config = SGLDConfig(epsilon=1.0, nbeta=1e4, gamma=1e5, chains=2, draws=100)
    with pytest.raises(SamplerDivergence, match="epsilon=1.0.*gamma=100000.0"):
        sample_losses(model, loss, (x, y), config, progress=False)


def test_local_bif_is_a_symmetric_covariance_with_correct_sign():
    rows = torch.randn(6, 3, dtype=torch.float64)
    config = SGLDConfig(nbeta=10.0, gamma=10.0, epsilon=2e-3, chains=8, draws=400)
    bif = local_bif(Linear(3), linear_loss, rows, config, progress=False)
    assert bif.shape == (6, 6)
    torch.testing.assert_close(bif, bif.T)
    assert torch.all(torch.diagonal(bif) < 0)  # BIF(i, i) = -Var(l_i)
    corr = local_bif(Linear(3), linear_loss, rows, config, normalized=True, progress=False)
    torch.testing.assert_close(torch.diagonal(corr), -torch.ones(6, dtype=corr.dtype))


def test_local_bif_and_the_trajectory_share_one_divergence_policy_and_one_dtype():
    model = nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    calm = SGLDConfig(epsilon=1e-3, nbeta=16.0, gamma=100.0, chains=2, draws=40)
    one = local_bif(model, loss, (x, y), calm, progress=False)
    run = bif_trajectory(model, loss, (x, y), [model.state_dict()], calm, progress=False)
    assert one.dtype == run.bif.dtype == torch.float64
    torch.testing.assert_close(one, run.bif[0], rtol=0, atol=0)
    wild = SGLDConfig(epsilon=1.0, nbeta=1e4, gamma=1e5, chains=2, draws=100)
    with pytest.warns(RuntimeWarning, match="diverged"):
        assert torch.isnan(local_bif(model, loss, (x, y), wild, progress=False)).all()
    assert bif_trajectory(model, loss, (x, y), [model.state_dict()], wild, progress=False).verdicts == ["diverged"]
    for call in (lambda: local_bif(model, loss, (x, y), wild, progress=False, on_divergence="raise"),
                 lambda: bif_trajectory(model, loss, (x, y), [model.state_dict()], wild, progress=False,
                                        on_divergence="raise")):
        with pytest.raises(SamplerDivergence):
            call()


def test_the_llc_has_its_own_verb_with_the_trajectorys_numbers():
    from stagewise import llc_trajectory

    rows = torch.randn(6, 3, dtype=torch.float64)
    config = SGLDConfig(nbeta=10.0, gamma=10.0, epsilon=2e-3, chains=4, draws=100)
    checkpoints = [Linear(3).state_dict()]
    llc = llc_trajectory(Linear(3), linear_loss, rows, checkpoints, config, progress=False, step_check=True)
    run = bif_trajectory(Linear(3), linear_loss, rows, checkpoints, config, progress=False, step_check=True)
    torch.testing.assert_close(llc.llc, run.llc, rtol=0, atol=0)
    torch.testing.assert_close(llc.reference_llc, run.reference.llc, rtol=0, atol=0)
    assert llc.verdicts == run.verdicts and llc.draws == config.draws and llc.step_change is not None


def test_llc_of_a_quadratic_well():
    # l_i(w) = 0.5 |w|^2 for every sample: a regular model in d dimensions has lambda = d/2.
    class Well(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))

    data = torch.zeros(10, 1, dtype=torch.float64)
    loss = lambda m, batch: 0.5 * (m.w**2).sum().expand(batch.shape[0])
    # Plain SGLD: its discretisation bias of the variance, 1 / (1 - eps nbeta / 4), is 1.3% here.
    # (RMSprop-SGLD without the preconditioner's correction term samples a density tilted by
    # 1/G(w), and G is largest near the minimum: it overestimates this LLC by about 10%.)
    config = SGLDConfig(epsilon=5e-4, nbeta=100.0, gamma=0.0, chains=16, draws=3000, burn_in=500, preconditioner="none")
    llc = local_learning_coefficient(sample_losses(Well(), loss, data, config, progress=False))
    assert llc[0].item() == pytest.approx(2.0 / (1 - 5e-4 * 100 / 4), rel=0.05)


def test_trace_correlation():
    t = np.linspace(0, 1, 50)[:, None]
    assert trace_correlation(np.hstack([t, t]), np.hstack([2 * t + 1, -t])) == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError):
        trace_correlation(t, t[:10])




def test_kernel_update_is_the_formula():
    config = SGLDConfig(epsilon=0.01, nbeta=7.0, gamma=3.0, decay=0.9, stability=0.2)
    center = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    state = sgld_init(center)
    assert torch.equal(state.w, center) and torch.equal(state.V, torch.zeros_like(center))
    state = SGLDState(torch.tensor([[1.5, -1.0]], dtype=torch.float64), torch.tensor([[0.04, 1.0]], dtype=torch.float64))
    g = torch.tensor([[0.3, -2.0]], dtype=torch.float64)
    xi = torch.tensor([[0.7, -1.1]], dtype=torch.float64)
    new = sgld_update(state, g, center, xi, config)
    for i in range(2):  # written out by hand, one coordinate at a time
        V = 0.9 * state.V[0, i].item() + 0.1 * g[0, i].item() ** 2
        G = 1 / (V**0.5 + 0.2)
        w = state.w[0, i].item()
        expected = w - 0.005 * G * (7.0 * g[0, i].item() + 3.0 * (w - center[0, i].item())) + (0.01 * G) ** 0.5 * xi[0, i].item()
        assert new.V[0, i].item() == pytest.approx(V, rel=1e-12)
        assert new.w[0, i].item() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(state.w, torch.tensor([[1.5, -1.0]], dtype=torch.float64))  # pure: the input is untouched


def test_plain_sgld_kernel_has_no_preconditioner():
    config = SGLDConfig(epsilon=0.01, nbeta=7.0, gamma=3.0, preconditioner="none")
    center = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    state = SGLDState(torch.tensor([[1.5, -1.0]], dtype=torch.float64), torch.tensor([[0.04, 1.0]], dtype=torch.float64))
    g = torch.tensor([[0.3, -2.0]], dtype=torch.float64)
    xi = torch.tensor([[0.7, -1.1]], dtype=torch.float64)
    new = sgld_update(state, g, center, xi, config)
    expected = state.w - 0.005 * (7.0 * g + 3.0 * (state.w - center)) + 0.1 * xi
    torch.testing.assert_close(new.w, expected, rtol=1e-12, atol=0)
    assert torch.equal(new.V, state.V)
    with pytest.raises(ValueError, match="preconditioner"):
        SGLDConfig(epsilon=0.01, nbeta=7.0, gamma=3.0, preconditioner="adam")


def test_streams_depend_on_the_checkpoint_index_not_on_the_company():
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    per_token = lambda m, batch: (m(batch[0]) - batch[1]) ** 2
    checkpoints = [model.state_dict(), {k: v + 0.5 for k, v in model.state_dict().items()}]
    config = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=100.0, chains=3, draws=12, batch_size=4, seed=5)
    both = sample_losses(model, per_token, (x, y), config, checkpoints=checkpoints, progress=False)
    second = sample_losses(model, per_token, (x, y), config, checkpoints=checkpoints[1:], checkpoint_indices=[1], progress=False)
    torch.testing.assert_close(both.sampling[1:], second.sampling)
    # the index, not the weights, picks the stream: index 0 draws differently
    other = sample_losses(model, per_token, (x, y), config, checkpoints=checkpoints[1:], progress=False)
    assert not torch.allclose(other.sampling, second.sampling)


def test_scalar_loss_is_refused():
    rows = torch.randn(5, 2, dtype=torch.float64)
    config = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=2, draws=5)
    with pytest.raises(ValueError, match="one loss per sample"):
        sample_losses(Linear(2), lambda m, r: (r @ m.w).mean(), rows, config, progress=False)


def test_non_finite_loss_at_the_checkpoint_names_the_data_or_the_weights():
    rows = torch.randn(5, 2, dtype=torch.float64)
    config = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=2, draws=5)
    bad_rows = rows.clone()
    bad_rows[3, 1] = float("nan")
    with pytest.raises(ValueError, match="checkpoint 0 is not finite.*data tensor 0"):
        sample_losses(Linear(2), linear_loss, bad_rows, config, progress=False)
    checkpoints = [{"w": torch.zeros(2, dtype=torch.float64)}, {"w": torch.tensor([float("inf"), 0.0], dtype=torch.float64)}]
    with pytest.raises(ValueError, match="checkpoint 1 is not finite.*weight 'w'"):
        sample_losses(Linear(2), linear_loss, rows, config, checkpoints=checkpoints, progress=False)


def test_datasets_and_loaders_give_what_tensors_give():
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    model = nn.Linear(3, 1)
    config = SGLDConfig(epsilon=1e-3, nbeta=16.0, gamma=100.0, chains=2, draws=20, seed=4)
    plain = local_bif(model, loss, (x, y), config, progress=False)
    from_dataset = local_bif(model, loss, TensorDataset(x, y), config, progress=False)
    from_loader = local_bif(model, loss, DataLoader(TensorDataset(x, y), batch_size=5), config, progress=False)
    torch.testing.assert_close(plain, from_dataset)
    torch.testing.assert_close(plain, from_loader)


def test_data_on_another_device_is_a_clear_error():
    model = nn.Linear(3, 1, device="meta")
    with pytest.raises(ValueError, match="model is on meta but the data is on cpu"):
        sample_losses(model, lambda m, b: m(b).sum(-1), torch.randn(4, 3), SGLDConfig(epsilon=1e-3, nbeta=1.0, gamma=1.0), progress=False)


def test_bif_trajectory_reports_health_per_checkpoint():
    rows = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # a quadratic well at w = 0 whose loss ends (NaN) past w_0 = 5
    cliff = lambda m, r: torch.where(m.w[0] > 5, float("nan"), 0.5 * (r @ m.w) ** 2)
    checkpoints = [{"w": torch.zeros(2, dtype=torch.float64)}, {"w": torch.tensor([4.99, 0.0], dtype=torch.float64)}]
    config = SGLDConfig(epsilon=1e-2, nbeta=5.0, gamma=50.0, chains=3, draws=200)
    result = bif_trajectory(Linear(2), cliff, rows, checkpoints, config, progress=False)
    assert result.bif.shape == (2, 16, 16) and result.loss_trace.shape == (2, 3, 200)
    assert result.rhat.shape == (2,) and result.bif_se.shape == (2, 16, 16)
    assert result.verdicts == ["healthy", "diverged"] and not result.healthy
    assert torch.isnan(result.bif[1]).all() and torch.isfinite(result.bif[0]).all()
    assert result.summary().startswith("2 checkpoints: 1 healthy, 1 diverged")
    assert "checkpoint 1: diverged" in result.summary()
    with pytest.raises(SamplerDivergence, match="checkpoint 1"):
        sample_losses(Linear(2), cliff, rows, config, checkpoints=checkpoints, progress=False)
    model = nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).sum(-1)
    # weights that hardly move: the loss spread is rounding, not signal
    still = SGLDConfig(epsilon=1e-14, nbeta=1.0, gamma=1.0, chains=2, draws=20)
    assert bif_trajectory(model, loss, (x, y), [model.state_dict()], still, progress=False).verdicts == ["too little signal"]


def test_rhat_separates_stuck_chains_from_mixed_ones():
    generator = torch.Generator().manual_seed(0)
    mixed = torch.randn(4, 500, generator=generator, dtype=torch.float64)
    stuck = mixed + torch.arange(4, dtype=torch.float64)[:, None]
    assert chain_rhat(mixed).item() == pytest.approx(1.0, abs=0.01)
    assert chain_rhat(stuck).item() > 1.5


def _regression_inputs():
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    return nn.Linear(3, 1), (x, y), lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).sum(-1)


CHEAP = SGLDConfig(epsilon=1e-3, nbeta=10.0, gamma=10.0, chains=2, draws=5)


@pytest.mark.parametrize("case, message", [
    ("detached", "do not depend on the model's parameters"),
    ("broadcast", "second dimension follows the batch size"),
    ("zero rows", "zero rows"),
    ("duplicates", "checkpoint_indices repeat"),
    ("float64 data", "the data tensor 0 is torch.float64 but the parameters"),
    ("wrong shape", "checkpoint 1: parameter 'weight' has shape"),
    ("shuffled", "shuffle=False"),
    ("buffers", "buffer 'bn.running_mean'"),
])
def test_inputs_that_would_scramble_the_answer_fail_before_sampling(case, message):
    model, (x, y), loss = _regression_inputs()
    data, checkpoints, indices = (x, y), [model.state_dict()], None
    if case == "detached":
        loss = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).sum(-1).detach()
    elif case == "broadcast":
        loss = lambda m, b: 0.5 * (m(b[0]) - b[1][:, 0]) ** 2  # (m, 1) against (m,): (m, m)
    elif case == "zero rows":
        data = (x[:0], y[:0])
    elif case == "duplicates":
        checkpoints, indices = [model.state_dict()] * 2, [3, 3]
    elif case == "float64 data":
        data = (x.double(), y)
    elif case == "wrong shape":
        checkpoints = [model.state_dict(), {"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}]
    elif case == "shuffled":
        data = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    elif case == "buffers":
        model = nn.Sequential()
        model.add_module("linear", nn.Linear(3, 1))
        model.add_module("bn", nn.BatchNorm1d(1))
        model.eval()
        moved = {k: v + 1.0 if k == "bn.running_mean" else v for k, v in model.state_dict().items()}
        checkpoints = [model.state_dict(), moved]
    with pytest.raises((ValueError, TypeError), match=message):
        sample_losses(model, loss, data, CHEAP, checkpoints=checkpoints, checkpoint_indices=indices,
                      progress=False)


def test_numpy_inputs_are_converted_and_training_mode_gets_one_warning():
    model, (x, y), loss = _regression_inputs()
    from_numpy = sample_losses(model, loss, (x.numpy(), y.numpy()), CHEAP, progress=False)
    from_tensors = sample_losses(model, loss, (x, y), CHEAP, progress=False)
    torch.testing.assert_close(from_numpy.sampling, from_tensors.sampling)
    dropout = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.1))
    with pytest.warns(UserWarning, match=r"call model.eval\(\)"):
        sample_losses(dropout, loss, (x, y), CHEAP, progress=False, vectorize=False)


def test_sampling_stops_when_every_chain_has_diverged():
    calls = []

    def exploding(model, rows):
        calls.append(1)
        return torch.where(model.w[0].abs() > 1e-9, float("nan"), rows @ model.w)

    config = SGLDConfig(epsilon=1e-3, nbeta=5.0, gamma=50.0, chains=3, draws=500)
    rows = torch.randn(4, 2, dtype=torch.float64)
    draws = sample_losses(Linear(2), exploding, rows, config, progress=False, on_divergence="record")
    assert (draws.diverged_at == 1).all() and torch.isnan(draws.sampling[0, :, 1:]).all()
    assert len(calls) < 20  # not 500 steps of a dead run


def test_flat_layout_round_trips_with_and_without_batch_axes():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    layout = FlatLayout.of(model)
    assert layout.names == ("0.weight", "0.bias", "1.weight")
    params = dict(model.named_parameters())
    flat = layout.flatten(params)
    assert flat.shape == (6 + 2 + 2,)
    assert all(torch.equal(v, params[k]) for k, v in layout.unflatten(flat).items())
    batched = {k: torch.stack([params[k], 2 * params[k]]) for k in layout.names}
    rows = layout.flatten(batched, leading=1)
    assert rows.shape == (2, 10) and torch.equal(rows[1], 2 * flat)
    assert all(torch.equal(v, batched[k]) for k, v in layout.unflatten(rows).items())
    assert model_device(model) == torch.device("cpu") and model_device(nn.ReLU(), "meta") == torch.device("meta")


def test_pearson_along_an_axis_is_nan_where_constant():
    a = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    assert pearson(a, 2 * a + 1, axis=0)[0] == pytest.approx(1.0) and np.isnan(pearson(a, a, axis=0)[1])
    assert pearson(a.T, -a.T, axis=1)[0] == pytest.approx(-1.0)
