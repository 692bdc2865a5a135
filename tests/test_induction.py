from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stagewise.lm.induction import (
    InductionCurves,
    formation_window,
    in_context_loss_drop,
    induction_scores,
    probe_groups,
    repeated_sequences,
)


def test_repeated_sequences_repeat_and_can_be_disjoint():
    probe = repeated_sequences(10, 8, vocab_size=100, seed=3, disjoint=True)
    assert probe.shape == (10, 16)
    assert torch.equal(probe[:, :8], probe[:, 8:])
    assert len(set(probe[:, :8].flatten().tolist())) == 80, "no token may be shared between or within sequences"
    assert torch.equal(probe, repeated_sequences(10, 8, vocab_size=100, seed=3, disjoint=True))
    with pytest.raises(ValueError, match="distinct tokens"):
        repeated_sequences(20, 8, vocab_size=100, disjoint=True)


def test_probe_groups_follow_token_losses_layout():
    groups = probe_groups(count=3, half=5)
    assert groups.shape == (3 * 9, 2)
    one = groups[:9]
    # targets are positions 1..9; 1..4 are the first half, 5 starts the repeat, 6..9 are predictable
    assert one[:, 0].tolist() == [True] * 4 + [False] * 5
    assert one[:, 1].tolist() == [False] * 5 + [True] * 4


class AttentionStub(torch.nn.Module):
    """Two layers: layer 0 attends to the induction target, layer 1 attends uniformly."""

    def forward(self, input_ids, output_attentions=False):
        B, L = input_ids.shape
        half = L // 2
        induction = torch.zeros(B, 1, L, L)
        for i in range(L):
            induction[:, 0, i, i - half + 1 if i >= half else i] = 1.0
        uniform = torch.tril(torch.ones(L, L)) / torch.arange(1, L + 1)[:, None]
        return SimpleNamespace(attentions=(induction, uniform.expand(B, 1, L, L)))


def test_induction_score_reads_the_right_attention_entry():
    probe = repeated_sequences(4, 6, vocab_size=50)
    scores = induction_scores(AttentionStub(), probe)
    assert scores.shape == (2, 1)
    assert scores[0, 0] == pytest.approx(1.0)
    queries = np.arange(6, 11)
    assert scores[1, 0] == pytest.approx(np.mean(1 / (queries + 1)))


class CopyStub(torch.nn.Module):
    """Predicts the repeated half perfectly and the first half uniformly."""

    def forward(self, input_ids):
        B, L = input_ids.shape
        half, vocab = L // 2, 20
        logits = torch.zeros(B, L, vocab)
        for i in range(half, L - 1):
            logits[torch.arange(B), i, input_ids[:, i - half + 1]] = 50.0
        return SimpleNamespace(logits=logits)


def test_in_context_loss_drop_is_the_loss_saved_by_copying():
    probe = repeated_sequences(3, 5, vocab_size=20)
    assert in_context_loss_drop(CopyStub(), probe) == pytest.approx(np.log(20), abs=1e-6)


def test_crossing_step_reads_the_best_score():
    steps = np.array([0, 100, 200, 300])
    curves = InductionCurves(steps, np.array([0.0, 0.1, 0.5, 0.9])[:, None, None] * np.ones((1, 2, 3)), np.zeros(4))
    assert curves.best_score.shape == (4,) and curves.crossing_step(0.5) == pytest.approx(200)


def test_formation_window_brackets_the_rise_and_snaps_to_checkpoints():
    from stagewise.lm.intervention import snap_window

    steps = np.arange(0, 1100, 100)
    best = np.array([0.05, 0.05, 0.06, 0.06, 0.07, 0.15, 0.5, 0.85, 0.9, 0.9, 0.9])
    curves = InductionCurves(steps, best[:, None, None], np.zeros(len(steps)))
    start, stop = formation_window(curves)
    # 10 % of the way from 0.05 to 0.9 is 0.135, reached between steps 400 and 500; 90 % is 0.815
    assert start == pytest.approx(400 + (0.135 - 0.07) / (0.15 - 0.07) * 100)
    assert stop == pytest.approx(600 + (0.815 - 0.5) / (0.85 - 0.5) * 100)
    assert snap_window((start, stop), 100) == (400, 700)
    assert snap_window((0.0, 30.0), 100) == (100, 200), "a window at initialisation leaves room before it"
    with pytest.raises(ValueError, match="low < high"):
        formation_window(curves, low=0.9, high=0.1)


def test_probe_sequence_index_labels_each_target_by_its_sequence():
    from stagewise.lm.induction import probe_sequence_index

    index = probe_sequence_index(count=3, half=5)
    assert index.shape == (probe_groups(3, 5).shape[0],)
    assert index.tolist() == [0] * 9 + [1] * 9 + [2] * 9


def test_training_mix_sequences_hold_the_models_share_of_repeated_segments():
    from stagewise.lm.induction import training_mix_sequences
    from stagewise.lm.training import LMConfig

    stream = torch.arange(5000) % 97 + 3  # natural text: never repeats within 20 tokens
    mix = training_mix_sequences(LMConfig(vocab_size=100, repeated_fraction=0.75), stream, count=40, length=24)
    assert mix.shape == (40, 24)
    periodic = [any(torch.equal(row[p:], row[:-p]) for p in range(8, 13)) for row in mix]
    assert sum(periodic) == 30, "three quarters of the rows repeat a segment of 8 to 12 tokens"


def synthetic_scan(saving_per_sequence, seeds=6, noise=3.0, seed=0):
    """A scan whose arms' induction curves are logistic in the step: each seed's control forms
    at its own step, and a boost moves formation earlier by ``saving_per_sequence(start) · dose``."""
    from stagewise.lm.intervention import BoostScan, ScanResult

    rng = np.random.default_rng(seed)
    scan = BoostScan(starts=(1000, 1200, 1400, 1600), length=200, boosted_fraction=0.875, seeds=tuple(range(seeds)),
                     stop=3000, checkpoint_interval=25)
    dose = 400
    steps = np.arange(0, 3001, 25)

    def curve(midpoint):
        best = 0.1 + 0.8 / (1 + np.exp(-(steps - midpoint) / 60))
        return InductionCurves(steps, best[:, None, None], np.zeros(len(steps)))

    # each start continues its own state of the baseline: a shared shift per start, which the
    # paired control carries too
    midpoints = 2300 + 40 * rng.normal(size=(len(scan.starts), 1)) + 10 * rng.normal(size=(len(scan.starts), seeds))
    control = [[curve(m + noise * rng.normal()) for m in row] for row in midpoints]
    boosted = [[curve(m - saving_per_sequence(start) * dose + noise * rng.normal()) for m in row]
               for start, row in zip(scan.starts, midpoints)]
    return ScanResult(scan=scan, extra_sequences=dose, control=control, boosted=boosted)


def test_scan_profile_of_a_dose_only_baseline_is_flat():
    from stagewise.lm.intervention import scan_profile

    result = synthetic_scan(lambda start: 0.1)  # every extra sequence saves 0.1 steps, whenever given
    profile = scan_profile(result.scan.starts, *result.event_steps(0.7), result.extra_sequences)
    assert profile.favours == "dose only (flat)"
    assert profile.slope_interval[0] < 0 < profile.slope_interval[1]
    assert profile.null_level == pytest.approx(0.1, abs=0.01)
    assert np.all(np.abs(profile.mean - 0.1) < 0.02)


def test_scan_profile_detects_a_stagewise_saving_in_either_direction():
    from stagewise.lm.intervention import scan_profile

    for saving, reading in [(lambda start: 0.05 + 1e-4 * (start - 1000), "later boosts help more"),
                            (lambda start: 0.15 - 1e-4 * (start - 1000), "earlier boosts help more")]:
        result = synthetic_scan(saving)
        profile = scan_profile(result.scan.starts, *result.event_steps(0.7), result.extra_sequences)
        assert profile.favours == reading
        assert profile.slope == pytest.approx(1000 * 1e-4 * (1 if "later" in reading else -1), rel=0.2)


def test_scan_profile_rejects_unreached_events_and_single_seeds():
    from stagewise.lm.intervention import scan_profile

    with pytest.raises(ValueError, match="never reached"):
        scan_profile([1, 2], np.full((2, 2), 10.0), np.array([[9.0, np.nan], [8.0, 9.0]]), 5)
    with pytest.raises(ValueError, match="seeds >= 2"):
        scan_profile([1, 2], np.array([[10.0], [10.0]]), np.array([[9.0], [8.0]]), 5)
    with pytest.raises(ValueError, match="paired"):  # one control per seed is not a paired design
        scan_profile([1, 2], np.array([10.0, 11.0]), np.array([[9.0, 9.5], [8.0, 9.0]]), 5)


def test_boost_scan_rejects_windows_off_the_kept_states_or_past_the_stop():
    from stagewise.lm.intervention import BoostScan, boost_scan
    from stagewise.lm.training import LMConfig

    model = LMConfig(steps=1000, checkpoint_interval=100, batch_size=16, repeated_fraction=0.75, lr_schedule="constant")
    run = SimpleNamespace(config=SimpleNamespace(model=model))
    probe = repeated_sequences(2, 4, vocab_size=50)
    design = dict(length=100, boosted_fraction=0.875, seeds=(1,), stop=900, checkpoint_interval=50)
    for starts in [(150, 300), (0, 300), (500, 300), (300, 850)]:
        with pytest.raises(ValueError, match="window|windows"):
            boost_scan(run, BoostScan(starts=starts, **design), probe, progress=False)
    with pytest.raises(ValueError, match="adds no repeated"):
        boost_scan(run, BoostScan(starts=(300,), **{**design, "boosted_fraction": 0.75}), probe, progress=False)
    with pytest.raises(ValueError, match="at least one seed"):
        boost_scan(run, BoostScan(starts=(300,), **{**design, "seeds": ()}), probe, progress=False)
    assert BoostScan(starts=(300,), **design).extra_sequences(model) == 2 * 100


def test_unpaired_profile_loses_the_noise_an_arm_shares_with_its_control():
    from stagewise.lm.intervention import interval_width_ratio, scan_profile, unpaired_profile

    rng = np.random.default_rng(0)
    starts, seeds, dose = [500, 1000, 1500], 6, 100
    shared = rng.normal(0, 50, (3, seeds))              # what an arm and its control have in common
    control = 2000 + shared + rng.normal(0, 1, (3, seeds))
    boosted = 2000 + shared - 0.1 * dose + rng.normal(0, 1, (3, seeds))
    paired = scan_profile(starts, control, boosted, dose)
    unpaired = [unpaired_profile(starts, control, boosted, dose, shift=k) for k in range(1, seeds)]
    assert paired.null_level == pytest.approx(0.1, abs=0.02)
    assert all(u.null_level == pytest.approx(paired.null_level, abs=0.01) for u in unpaired), \
        "re-pairing permutes the controls, so the mean saving stays"
    slope_ratio, mean_ratio = interval_width_ratio(paired, unpaired)
    assert slope_ratio > 10 and mean_ratio > 10
    # with nothing shared, the pairing buys nothing: the ratio is near 1
    independent = 2000 + rng.normal(0, 50, (3, seeds)) - 0.1 * dose
    repaired = [unpaired_profile(starts, control, independent, dose, shift=k) for k in range(1, seeds)]
    ratios = interval_width_ratio(scan_profile(starts, control, independent, dose), repaired)
    assert all(0.5 < r < 2 for r in ratios)
    with pytest.raises(ValueError, match="its own control"):
        unpaired_profile(starts, control, boosted, dose, shift=seeds)


def test_stacked_observables_record_each_sets_losses_as_alone():
    from stagewise.lm.induction import split_observable_draws, stacked_observables
    from stagewise.lm.training import LMConfig, pythia_architecture, token_losses
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(pythia_architecture(LMConfig(vocab_size=40, hidden=16, layers=1, heads=2,
                                                            intermediate=32, context=16))).eval()
    probe = repeated_sequences(3, 4, vocab_size=40)                 # (3, 8)
    natural = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(1))
    stacked = stacked_observables(probe, natural, pad_id=39)
    assert stacked.shape == (5, 13) and bool((stacked[:3, 8:] == 39).all())
    with torch.no_grad():
        together = token_losses(model, stacked).reshape(-1)
        alone = [token_losses(model, ids).reshape(-1) for ids in (probe, natural)]
    draws = torch.stack([together, 2 * together])[None]          # (1 chain, 2 draws, tokens)
    parts = split_observable_draws(draws, probe, natural)
    assert [tuple(p.shape) for p in parts] == [(1, 2, 3 * 7), (1, 2, 2 * 12)]
    for part, expected in zip(parts, alone):
        torch.testing.assert_close(part[0, 0], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(part[0, 1], 2 * expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sets stack to"):
        split_observable_draws(draws[..., :-1], probe, natural)


def test_target_word_continuations_follow_the_targets():
    from stagewise.lm.induction import target_word_continuations

    vocabulary = {0: " foo", 1: "bar", 2: " =", 3: "\n"}
    tokenizer = SimpleNamespace(decode=lambda ids: vocabulary[ids[0]])
    ids = torch.tensor([[0, 1, 2, 0, 1], [1, 1, 3, 0, 1]])
    assert target_word_continuations(tokenizer, ids).tolist() == [True, False, False, True,
                                                                  True, False, False, True]


def test_interval_width_ratio_is_nan_where_the_paired_interval_has_no_width():
    from stagewise.lm.intervention import interval_width_ratio, scan_profile, unpaired_profile

    control = np.array([[100.0, 100.0], [200.0, 200.0]])
    boosted = control.copy()                     # every saving 0: the paired intervals have no width
    paired = scan_profile([50, 100], control, boosted, 25)
    repaired = [unpaired_profile([50, 100], control, boosted, 25)]
    assert all(np.isnan(r) for r in interval_width_ratio(paired, repaired))
