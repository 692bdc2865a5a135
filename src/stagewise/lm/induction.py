"""Induction heads (paper App. D.2; Olsson et al. 2022): probes, scores and formation time.

An induction head completes ``… A B … A → B``: from the second ``A`` it attends to the token
right after the first one and copies it.  On sequences whose second half repeats the first,
it shows up twice: as attention (the *induction score* of a head) and as a drop of the loss on
the repeated half (the *in-context loss drop*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from stagewise.lm.classes import word_continuations
from stagewise.lm.tokenizer import token_strings
from stagewise.lm.training import LMConfig, token_losses, training_batch
from stagewise.sampling import model_device
from stagewise.stages import first_crossing

PROBE_GROUPS: tuple[str, ...] = ("non-repeated", "repeated")
"""Token groups of a repeated probe: targets of the first half, and targets of the second half
that an induction head can predict (every repeated token but the first)."""


def repeated_sequences(count: int, half: int, vocab_size: int, seed: int = 0, disjoint: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``(count, 2·half)`` token ids: ``half`` random tokens, then the same tokens again.

    With ``disjoint`` no token occurs in two sequences (``count·half ≤ vocab_size``), so a
    probe token's loss can only be helped by its own sequence.  ``generator`` overrides ``seed``.
    """
    if count < 1 or half < 2:
        raise ValueError(f"need count >= 1 and half >= 2, got {count} and {half}")
    generator = generator or torch.Generator().manual_seed(seed)
    if disjoint:
        if count * half > vocab_size:
            raise ValueError(f"{count} disjoint sequences of {half} tokens need {count * half} distinct tokens; "
                             f"the vocabulary has {vocab_size}")
        first = torch.randperm(vocab_size, generator=generator)[: count * half].reshape(count, half)
    else:
        first = torch.randint(vocab_size, (count, half), generator=generator)
    return torch.cat([first, first], dim=1)


def probe_groups(count: int, half: int) -> np.ndarray:
    """Group membership (:data:`PROBE_GROUPS`) of the ``count·(2·half − 1)`` target tokens of a
    repeated probe, in the order of :func:`token_losses` flattened: ``(tokens, 2)`` booleans.
    The first repeated token (position ``half``) is in neither group: nothing before it predicts it."""
    position = np.arange(1, 2 * half)  # the target positions of one sequence
    one = np.stack([position < half, position > half], axis=1)
    return np.tile(one, (count, 1))


def probe_sequence_index(count: int, half: int) -> np.ndarray:
    """The sequence each target token of a repeated probe belongs to, ``(count·(2·half − 1),)``, in the
    order of :func:`probe_groups`: the labels that leave within-sequence pairs out of a group
    correlation (``group_correlation(..., exclude_same=...)``), as the paper compares tokens of
    different sequences only."""
    return np.repeat(np.arange(count), 2 * half - 1)


def training_mix_sequences(model: LMConfig, stream: torch.Tensor, count: int, length: int, seed: int = 0) -> torch.Tensor:
    """``(count, length)`` token ids drawn as ``model`` draws its training batches (windows of
    ``stream``, the model's share of them replaced by repeated random segments): a sampling set
    for SGLD on the training mix rather than on natural text."""
    mix = replace(model, context=length - 1, batch_size=count, boost_window=None, branch=None)
    return training_batch(mix, stream, 0, torch.Generator().manual_seed(seed))


def stacked_observables(*sets: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Sets of observable sequences, each ``(M_k, L_k)`` token ids, as one ``(ΣM_k, max L_k)``
    batch, every row padded on the right with ``pad_id``: a causal model's losses on a row's own
    targets do not see the padding, so one SGLD run records the losses of every set (undo with
    :func:`split_observable_draws`)."""
    if not sets or any(ids.ndim != 2 or ids.shape[1] < 2 for ids in sets):
        shapes = [tuple(ids.shape) for ids in sets]
        raise ValueError(f"need one or more (M, L >= 2) sets of sequences, got shapes {shapes}")
    length = max(ids.shape[1] for ids in sets)
    return torch.cat([torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad_id) for ids in sets])


def split_observable_draws(draws: torch.Tensor, *sets: torch.Tensor) -> list[torch.Tensor]:
    """Per-token loss draws of :func:`stacked_observables` (``(..., ΣM_k·(max L − 1))``, in the
    order of :func:`token_losses` flattened) split back into the sets: ``(..., M_k·(L_k − 1))``
    each, the padded targets dropped."""
    length = max(ids.shape[1] for ids in sets)
    rows = sum(ids.shape[0] for ids in sets)
    if draws.shape[-1] != rows * (length - 1):
        raise ValueError(f"draws hold {draws.shape[-1]} tokens; the sets stack to {rows} rows "
                         f"of {length - 1} targets")
    grid = draws.reshape(*draws.shape[:-1], rows, length - 1)
    parts, start = [], 0
    for ids in sets:
        count, targets = ids.shape
        parts.append(grid[..., start : start + count, : targets - 1].reshape(*draws.shape[:-1], -1))
        start += count
    return parts


def target_word_continuations(tokenizer, ids: torch.Tensor) -> np.ndarray:
    """:func:`~stagewise.lm.classes.word_continuations` of the target tokens of ``ids`` (positions
    1…L−1 of each row, in the order of :func:`token_losses` flattened): ``(M·(L−1),)`` booleans."""
    return np.concatenate([word_continuations(token_strings(tokenizer, row))[1:] for row in ids.tolist()])


def induction_scores(model: torch.nn.Module, probe: torch.Tensor) -> np.ndarray:
    """Mean attention from each token of the repeated half to the token after its first
    occurrence, per head: ``(layers, heads)``, in [0, 1]; ``probe`` from :func:`repeated_sequences`."""
    half = probe.shape[1] // 2
    device = model_device(model, probe.device)
    with torch.no_grad():
        attentions = model(input_ids=probe.to(device), output_attentions=True).attentions  # layers × (B, H, L, L)
    queries = torch.arange(half, 2 * half - 1, device=device)
    return torch.stack([a[:, :, queries, queries - half + 1].mean(dim=(0, 2)) for a in attentions]).cpu().numpy()


def in_context_loss_drop(model: torch.nn.Module, probe: torch.Tensor) -> float:
    """Mean loss on the first half minus mean loss on the predictable repeated tokens (nats)."""
    half = probe.shape[1] // 2
    with torch.no_grad():
        losses = token_losses(model, probe.to(model_device(model, probe.device)))  # target t + 1 at column t
    return float(losses[:, : half - 1].mean() - losses[:, half:].mean())


@dataclass
class InductionCurves:
    """Induction measurements over checkpoints."""

    steps: np.ndarray
    """``(S,)`` training steps."""
    scores: np.ndarray
    """``(S, layers, heads)`` induction score of every head."""
    loss_drop: np.ndarray
    """``(S,)`` in-context loss drop (nats)."""

    @property
    def best_score(self) -> np.ndarray:
        """``(S,)`` the largest induction score of any head."""
        return self.scores.reshape(len(self.steps), -1).max(axis=1)

    def crossing_step(self, threshold: float) -> float:
        """First step at which :attr:`best_score` reaches ``threshold``, linearly interpolated
        between checkpoints; ``nan`` if it never does."""
        return first_crossing(self.steps, self.best_score, threshold)


def induction_curves(load, steps: Sequence[int], probe: torch.Tensor) -> InductionCurves:
    """:class:`InductionCurves` of the checkpoints ``load(step)`` for ``step`` in ``steps``."""
    scores, drops = [], []
    for step in steps:
        model = load(step)
        scores.append(induction_scores(model, probe))
        drops.append(in_context_loss_drop(model, probe))
    return InductionCurves(np.asarray(steps), np.asarray(scores), np.asarray(drops))


def formation_window(curves: InductionCurves, low: float = 0.1, high: float = 0.9) -> tuple[float, float]:
    """Steps at which the best induction score has risen ``low`` and ``high`` of the way from its
    smallest to its largest value (interpolated): where the induction head forms."""
    best = curves.best_score
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low < high <= 1, got {low} and {high}")
    level = lambda fraction: best.min() + fraction * (best.max() - best.min())  # noqa: E731
    return first_crossing(curves.steps, best, level(low)), first_crossing(curves.steps, best, level(high))
