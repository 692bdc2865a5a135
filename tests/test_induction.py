from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stagewise.lm.induction import (
    InductionCurves,
    crossing_step,
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


def test_crossing_step_interpolates_and_reports_never():
    steps = np.array([0, 100, 200, 300])
    assert crossing_step(steps, np.array([0.0, 0.1, 0.5, 0.9]), 0.3) == pytest.approx(150)
    assert np.isnan(crossing_step(steps, np.array([0.0, 0.1, 0.1, 0.2]), 0.3))
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


def test_intervention_rejects_a_window_off_the_checkpoint_grid():
    from stagewise.lm.intervention import intervention

    run = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(checkpoint_interval=100, steps=1000)))
    probe = repeated_sequences(2, 4, vocab_size=50)
    for window in [(150, 300), (0, 300), (300, 1100), (400, 300)]:
        with pytest.raises(ValueError, match="window must be"):
            intervention(run, window, 1.0, (1,), probe, progress=False)
    with pytest.raises(ValueError, match="at least one seed"):
        intervention(run, (300, 500), 1.0, (), probe, progress=False)
