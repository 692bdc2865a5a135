"""The book's drawing helpers draw what their docstrings say: one line per query but the source,
bands only where errors are given, one panel per source."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection

from stagewise.book.plotting import PALETTE, influence_grid, influence_panels

NAMES = ["a", "b", "c", "d", "e"]
EPOCHS = np.arange(7)


def test_influence_panels_leave_out_the_source_and_band_only_given_errors():
    rng = np.random.default_rng(0)
    traces = [rng.normal(size=(7, 5)) for _ in range(3)]
    errors = [np.full((7, 5), 0.1), None, None]
    fig = influence_panels(EPOCHS, traces, NAMES, 2, ["x", "y", "z"], ["BIF", "", ""], errors=errors)
    axes = fig.axes
    assert len(axes) == 3
    for ax, trace in zip(axes, traces):
        lines = [line for line in ax.get_lines() if line.get_label() in NAMES]
        assert [line.get_label() for line in lines] == ["a", "b", "d", "e"]
        np.testing.assert_array_equal(lines[2].get_ydata(), trace[:, 3])
        assert lines[2].get_color() == PALETTE[3]
    bands = [[c for c in ax.collections if isinstance(c, PolyCollection)] for ax in axes]
    assert [len(b) for b in bands] == [4, 0, 0]
    assert [ax.get_title() for ax in axes] == ["x", "y", "z"]
    plt.close(fig)


def test_influence_grid_has_one_panel_per_source():
    influence = np.arange(7 * 5 * 5, dtype=float).reshape(7, 5, 5)
    fig = influence_grid(EPOCHS, influence, NAMES, "BIF", "title", columns=3)
    drawn = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in drawn] == [f"perturb {n}" for n in NAMES]
    for p, ax in enumerate(drawn):
        lines = ax.get_lines()[:4]
        np.testing.assert_array_equal(lines[0].get_ydata(), influence[:, p, 0 if p else 1])
        assert len([line for line in ax.get_lines() if len(line.get_xdata()) == 7]) == 4
    assert sum(not ax.axison for ax in fig.axes) == 1   # 6 slots, 5 sources
    plt.close(fig)
