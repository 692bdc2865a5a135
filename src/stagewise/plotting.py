"""One figure style for the whole book."""

from __future__ import annotations

import matplotlib as mpl
from matplotlib.axes import Axes

# Colour-blind-safe qualitative palette (Okabe & Ito 2008).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def use_style() -> None:
    """Apply the book's matplotlib style (sizes for an HTML page, light grid, no top/right spines)."""
    mpl.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "figure.figsize": (7.5, 3.6),
            "figure.constrained_layout.use": True,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=PALETTE),
            "legend.frameon": False,
            "font.size": 10,
        }
    )


def mark_transition(ax: Axes, x: float, label: str | None = None) -> None:
    """Draw a dashed vertical line at a transition ``x`` (e.g. the critical dataset size)."""
    ax.axvline(x, color="0.35", linestyle="--", linewidth=1, label=label)
