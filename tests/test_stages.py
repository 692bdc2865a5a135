import numpy as np
import pytest

from stagewise.stages import first_crossing, inflection_steps, sign_changes


def test_inflection_steps_find_the_drops_of_a_two_stage_curve():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    x = np.log(np.maximum(steps, 1))
    curve = 3 - 1 / (1 + np.exp(-(x - np.log(16)) * 4)) - 1 / (1 + np.exp(-(x - np.log(512)) * 4))
    found = inflection_steps(steps, curve)
    assert len(found) == 2
    assert 8 <= found[0] <= 32 and 256 <= found[1] <= 1024
    with pytest.raises(ValueError):
        inflection_steps(steps[:2], curve[:2])


def test_sign_changes_count_a_crossing_wherever_the_checkpoints_fall():
    # a curve helpful, then harmful, then helpful again: zeros at 3 and 7
    def curve(t):
        return np.sin(np.pi * (t - 3) / 4) * np.exp(-((t - 5) / 3) ** 2)

    for steps in (np.linspace(0, 10, 41), np.linspace(0, 10, 101)):
        found, after = sign_changes(steps, curve(steps))
        np.testing.assert_allclose(found, [3, 7], atol=0.02)
        assert after.tolist() == [1, -1]
    # a checkpoint landing within 0.1 % of the largest magnitude, right at the crossing
    steps = np.array([0, 1, 2, 2.999, 4, 5, 6, 7.001, 8, 9, 10.0])
    found, after = sign_changes(steps, curve(steps))
    np.testing.assert_allclose(found, [3, 7], atol=0.01)
    assert after.tolist() == [1, -1]
    # a checkpoint exactly at zero
    steps = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.0])
    found, _ = sign_changes(steps, curve(steps))
    np.testing.assert_allclose(found, [3, 7], atol=1e-9)


def test_sign_changes_ignore_noise_below_the_floor():
    steps = np.arange(20.0)
    values = np.where(steps < 10, -1.0, 1.0)
    values[:4] = [1e-4, -1e-4, 1e-4, -1e-4]          # a flat start with sign noise
    found, after = sign_changes(steps, values)
    assert found.tolist() == [9.5] and after.tolist() == [1]
    assert len(sign_changes(steps, values, floor=0.0)[0]) == 4   # three noise flips and the real one
    with pytest.raises(ValueError):
        sign_changes(steps[::-1], values)
    with pytest.raises(ValueError):
        sign_changes(steps, values, floor=1.5)


def test_first_crossing_interpolates_and_reports_the_start_and_never():
    steps = np.array([0, 100, 200, 300])
    assert first_crossing(steps, np.array([0.0, 0.1, 0.5, 0.9]), 0.3) == pytest.approx(150)
    assert first_crossing(steps, np.array([0.0, 0.1, 0.5, 0.9]), 0.5) == 200
    assert first_crossing(steps, np.array([0.4, 0.1, 0.5, 0.9]), 0.3) == 0
    assert np.isnan(first_crossing(steps, np.array([0.0, 0.1, 0.1, 0.2]), 0.3))
