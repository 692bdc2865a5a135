import numpy as np
import pytest

from stagewise.stages import inflection_steps


def test_inflection_steps_find_the_drops_of_a_two_stage_curve():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    x = np.log(np.maximum(steps, 1))
    curve = 3 - 1 / (1 + np.exp(-(x - np.log(16)) * 4)) - 1 / (1 + np.exp(-(x - np.log(512)) * 4))
    found = inflection_steps(steps, curve)
    assert len(found) == 2
    assert 8 <= found[0] <= 32 and 256 <= found[1] <= 1024
    with pytest.raises(ValueError):
        inflection_steps(steps[:2], curve[:2])
