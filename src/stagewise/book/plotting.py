"""One figure style for the whole book."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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


def plot_chain_traces(runs: Mapping[int, Any], columns: int = 4) -> Figure:
    """One panel per checkpoint (``runs``: step -> :class:`stagewise.lm.TokenDraws`): every chain's
    observables' mean loss (solid) and minibatch loss (faint) at each recorded draw, the warm-up
    found shaded, the burn-in and the kept draws' verdict in the title."""
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12.5, 2.6 * rows), squeeze=False)
    for ax, (step, run) in zip(axes.flat, runs.items()):
        for chain in range(run.loss_trace.shape[0]):
            colour = PALETTE[chain % len(PALETTE)]
            ax.plot(run.loss_trace[chain], color=colour, lw=0.6, alpha=0.3)
            ax.plot(run.observable_trace[chain], color=colour, lw=1.4)
        ax.axvspan(-0.5, run.burn_in - 0.5, color="0.6", alpha=0.3, lw=0)
        ax.axvline(run.burn_in - 0.5, color="0.3", lw=0.8, ls="--")
        ax.set_title(f"step {step}: burn-in {run.burn_in}, {run.verdict}", fontsize=9)
        unrecorded, thin = run.config.burn_in or 0, run.config.thin
        every = f"one every {thin} steps" if thin > 1 else "every step"
        ax.set_xlabel(f"recorded draw\n({every}" + (f", after {unrecorded} unrecorded)" if unrecorded else ")"),
                      fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("loss (nats/token)")
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    return fig


def draw_tokens(strings: Sequence[str], member: np.ndarray, classes: Sequence[str],
                line_width: int = 96) -> Figure:
    """Draw a token sequence as boxes laid out in lines of ``line_width`` characters (monospace
    units): ``strings`` the tokens' texts, ``member`` a (tokens, classes) boolean array of their
    classes (named by ``classes``). Each box is outlined in the colour of its token's first class
    and filled with that of its second, if any; dotted when it has none. Spaces are shown as ␣,
    newlines as ↵ and tabs as →."""
    boxes, x, y = [], 0.0, 0
    for text, in_class in zip(strings, member):
        label = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "→") or "∅"
        width = len(label) + 0.8
        if x + width > line_width:
            x, y = 0.0, y + 1
        boxes.append((x, y, width, label, np.flatnonzero(in_class)))
        x += width + 0.4
    fig, ax = plt.subplots(figsize=(12.5, 0.42 * (y + 2) + 0.6))
    for x, y, width, label, colours in boxes:
        filled = len(colours) > 1
        ax.add_patch(plt.Rectangle(
            (x, -y - 0.8), width, 0.7, fill=filled, linewidth=1.6 if len(colours) else 0.8,
            facecolor=(*mpl.colors.to_rgb(PALETTE[colours[1]]), 0.25) if filled else "none",
            edgecolor=PALETTE[colours[0]] if len(colours) else "0.6",
            linestyle="-" if len(colours) else ":"))
        ax.text(x + width / 2, -y - 0.45, label, ha="center", va="center", family="monospace",
                fontsize=7.5)
    ax.set(xlim=(-0.5, line_width + 0.5), ylim=(-y - 1.0, 0.1))
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, fill=False, edgecolor=PALETTE[c], linewidth=1.6)
               for c in range(len(classes))]
    ax.legend(handles, classes, ncol=len(classes), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              fontsize=8, frameon=False)
    return fig


def influence_panels(epochs: np.ndarray, traces: Sequence[np.ndarray], names: Sequence[str],
                     source: int, titles: Sequence[str], ylabels: Sequence[str],
                     errors: Sequence[np.ndarray | None] | None = None, height: float = 3.6) -> Figure:
    """One panel per estimate of one source's influence on every other item over training.

    ``traces``: per panel a (checkpoint, query) array (any unit: a BIF, a derivative, a loss
    difference), ``epochs`` its (checkpoint,) x-axis, ``names`` the queries' names (their colours
    follow :data:`PALETTE`), ``source`` the item whose own column is left out. ``errors``: per panel
    ``None`` or a (checkpoint, query) array of standard errors, drawn as ±2 s.e. bands."""
    fig, axes = plt.subplots(1, len(traces), figsize=(12.5, height), squeeze=False)
    axes = axes[0]
    errors = errors or [None] * len(traces)
    for ax, trace, title, ylabel, error in zip(axes, traces, titles, ylabels, errors):
        for j, name in enumerate(names):
            if j == source:
                continue
            ax.plot(epochs, trace[:, j], color=PALETTE[j], label=name)
            if error is not None:
                ax.fill_between(epochs, trace[:, j] - 2 * error[:, j], trace[:, j] + 2 * error[:, j],
                                color=PALETTE[j], alpha=0.25, linewidth=0)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    return fig


def influence_grid(epochs: np.ndarray, influence: np.ndarray, names: Sequence[str], ylabel: str,
                   title: str, columns: int = 4) -> Figure:
    """One panel per source item: its influence on every other item over training.

    ``influence``: a (checkpoint, source, query) array with sources and queries both the items
    named by ``names``; ``epochs``: its (checkpoint,) x-axis."""
    n_items = len(names)
    rows = -(-n_items // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12.5, 2.6 * rows), sharex=True, squeeze=False)
    for p, ax in enumerate(axes.flat[:n_items]):
        for j in range(n_items):
            if j != p:
                ax.plot(epochs, influence[:, p, j], color=PALETTE[j], linewidth=1.2)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_title(f"perturb {names[p]}")
        ax.set(ylabel=ylabel if p % columns == 0 else "", xlabel="epoch" if p >= n_items - columns else "")
    for ax in axes.flat[n_items:]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=PALETTE[j]) for j in range(n_items)]
    fig.legend(handles, names, title="query $j$", loc="outside right center", fontsize=8)
    fig.suptitle(title)
    return fig
