"""RMSprop-preconditioned SGLD around a checkpoint, for any torch model.

The sampler draws from the local posterior (SPEC §1–2)

    p(w) ∝ exp(−nβ · L_m(w) − (γ/2)‖w − w*‖²),

with the update of devinterp 2.0.1's ``rmsprop_sgld``: per step, with ``g = ∇L_m(w)`` the
gradient of the *mean* per-sample loss on a batch of ``m``,

    V ← b·V + (1 − b)·g²,   G = 1/(√V + α),
    w ← w − (ε/2)·G ⊙ (nβ·g + γ(w − w*)) + √(ε·G) ⊙ ξ,   ξ ~ N(0, I).

At every draw (before the update, as in the paper's Algorithm 1) it records the per-sample
losses of the sampling set and of any *observable* sets, which never enter the gradient.

Chains are a batch dimension, and so are checkpoints: all ``checkpoints × chains`` parameter
sets advance together through ``torch.func.functional_call`` and ``vmap`` (for small models;
a transformer's sets are evaluated one after the other, which is faster there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_flatten, tree_map
from tqdm.auto import tqdm

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch)`` returns one loss per sample (``(m,)``) or per token (``(m, L)``)."""


VMAP_MAX_PARAMETERS = 100_000
"""Above this many parameters per set, :func:`sample_losses` evaluates the sets one by one."""


class SamplerDivergence(RuntimeError):
    """SGLD left the neighbourhood of the checkpoint (non-finite or runaway loss)."""


@dataclass(frozen=True)
class SGLDConfig:
    """Hyperparameters of RMSprop-SGLD (names as in the paper; defaults of devinterp 2.0.1)."""

    epsilon: float
    """Step size ε."""
    nbeta: float
    """Inverse temperature times sample size, nβ."""
    gamma: float
    """Localization strength γ (0 disables the pull towards the checkpoint)."""
    chains: int = 4
    """Number of independent chains C (at least 2)."""
    draws: int = 200
    """Draws per chain T, recorded after ``burn_in`` steps."""
    batch_size: int | None = None
    """Batch size m for the gradient; ``None`` is the full sampling set."""
    decay: float = 0.99
    """RMSprop decay b of the squared-gradient average."""
    stability: float = 0.1
    """RMSprop stability constant α added to √V."""
    burn_in: int = 0
    """Steps taken before the first recorded draw."""
    seed: int = 0
    divergence_factor: float = 100.0
    """A chain has diverged when its batch loss exceeds the checkpoint's by more than this
    many times ``|L(w*)| + d/(2·nβ)``; ``d/(2nβ)`` bounds the loss increase of a healthy local
    posterior (the learning coefficient is at most ``d/2`` for ``d`` parameters)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("epsilon", "nbeta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive finite number, got {value}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            problems.append(f"gamma must be a finite number >= 0, got {self.gamma}")
        if self.chains < 2:
            problems.append(f"chains must be at least 2 to pool a covariance, got {self.chains}")
        if self.draws < 2:
            problems.append(f"draws must be at least 2, got {self.draws}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be positive or None, got {self.batch_size}")
        if not 0 <= self.decay < 1:
            problems.append(f"decay must lie in [0, 1), got {self.decay}")
        if not self.stability > 0:
            problems.append(f"stability must be positive, got {self.stability}")
        if self.burn_in < 0:
            problems.append(f"burn_in must be >= 0, got {self.burn_in}")
        if not self.divergence_factor > 0:
            problems.append(f"divergence_factor must be positive, got {self.divergence_factor}")
        if problems:
            raise ValueError("invalid SGLD hyperparameters: " + "; ".join(problems))

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "divergence_factor")


@dataclass
class LossDraws:
    """Per-sample losses recorded along the chains.

    ``sampling``: ``(K, C, T, n)`` losses of the sampling set (``n`` flattened per-sample or
    per-token losses); ``observables``: ``(K, C, T, n_obs)`` or ``None``; ``initial_loss``:
    ``(K,)`` mean sampling loss at each checkpoint.  ``K`` is the number of checkpoints.
    """

    sampling: torch.Tensor | None
    observables: torch.Tensor | None
    initial_loss: torch.Tensor
    config: SGLDConfig


def _batch_size(data: Any) -> int:
    leaves, _ = tree_flatten(data)
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise TypeError("data must be a tensor or a tuple/list/dict of tensors sharing dimension 0")
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"all tensors in data must share dimension 0, got sizes {sorted(sizes)}")
    return sizes.pop()


class _Objective(nn.Module):
    """Wraps ``loss_fn(model, batch)`` so that ``functional_call`` can swap the model's weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch).reshape(-1)


def stack_checkpoints(model: nn.Module, checkpoints: Sequence[Mapping[str, torch.Tensor]] | None) -> dict[str, torch.Tensor]:
    """Trainable parameters of ``model`` at each checkpoint, stacked: ``{name: (K, *shape)}``.

    ``checkpoints`` are state dicts (or any mappings from parameter names to tensors); ``None``
    means the model's current parameters (``K = 1``).
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameters")
    if checkpoints is None:
        return {name: p.detach().unsqueeze(0).clone() for name, p in model.named_parameters() if p.requires_grad}
    if len(checkpoints) == 0:
        raise ValueError("checkpoints is empty")
    stacked = {}
    for name in names:
        missing = [k for k, ckpt in enumerate(checkpoints) if name not in ckpt]
        if missing:
            raise KeyError(f"parameter {name!r} is missing from checkpoints {missing[:5]}")
        stacked[name] = torch.stack([torch.as_tensor(ckpt[name]) for ckpt in checkpoints]).detach()
    return stacked


def sample_losses(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    config: SGLDConfig,
    observables: Any | None = None,
    *,
    checkpoints: Sequence[Mapping[str, torch.Tensor]] | None = None,
    record_sampling: bool = True,
    progress: bool = True,
    vectorize: bool | None = None,
) -> LossDraws:
    """Run ``config.chains`` RMSprop-SGLD chains from each checkpoint and record losses.

    ``data`` is the sampling set: a tensor, or a tuple/list/dict of tensors indexed along
    dimension 0, passed (or a batch of it) to ``loss_fn(model, batch)``.  ``observables`` is
    another such set whose losses are recorded but never enter the gradient.  ``checkpoints``
    is a list of state dicts to sample around, all at once; by default the model's weights.

    Raises :class:`SamplerDivergence` (naming the hyperparameters) when a chain's loss becomes
    non-finite or runs away from the checkpoint's.

    ``vectorize`` chooses how the checkpoint × chain parameter sets are evaluated: as one
    ``vmap`` batch (``True``; much faster for small models, whose many sets would otherwise cost
    a Python loop each) or one after the other (``False``; faster for a transformer, whose
    batched attention under ``vmap`` costs 1.5–2.7× the loop, see ``bench/README.md``).  The
    default picks ``vmap`` below :data:`VMAP_MAX_PARAMETERS` parameters per set.
    """
    n = _batch_size(data)
    if observables is not None:
        _batch_size(observables)
    m = n if config.batch_size is None else min(config.batch_size, n)
    full_batch = m == n
    centers = stack_checkpoints(model, checkpoints)
    K, C = next(iter(centers.values())).shape[0], config.chains
    B = K * C
    names = list(centers)
    objective = _Objective(model, loss_fn)
    dimension = sum(p[0].numel() for p in centers.values())

    def losses(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        return functional_call(objective, {f"model.{k}": v for k, v in params.items()}, (batch,), strict=False)

    def mean_loss(params: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        per_sample = losses(params, batch)
        return per_sample.mean(), per_sample

    if vectorize is None:
        vectorize = dimension <= VMAP_MAX_PARAMETERS
    if vectorize:
        gradient = vmap(grad_and_value(mean_loss, has_aux=True), in_dims=(0, None if full_batch else 0))
        evaluate = vmap(losses, in_dims=(0, None))
    else:
        gradient = _one_by_one(grad_and_value(mean_loss, has_aux=True), batched_data=not full_batch)
        evaluate = _one_by_one(losses, batched_data=False)

    # All parameters of one chain live in one flat row: w, V and w* are (B, d), checkpoint-major,
    # so each step draws its noise and updates the preconditioner in a handful of tensor ops.
    shapes = {k: v.shape[1:] for k, v in centers.items()}
    center = torch.cat([centers[k].reshape(K, -1) for k in names], dim=1).repeat_interleave(C, dim=0)
    dtype = center.dtype

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = flat.split([math.prod(shapes[k]) for k in names], dim=1)
        return {k: piece.reshape(flat.shape[0], *shapes[k]) for k, piece in zip(names, pieces)}

    w = center.clone()
    V = torch.zeros_like(w)
    generator = torch.Generator().manual_seed(config.seed)

    with torch.no_grad():
        initial = evaluate(centers, data).mean(dim=1)  # (K,)
    threshold = initial.repeat_interleave(C) + config.divergence_factor * (
        initial.abs().repeat_interleave(C) + dimension / (2 * config.nbeta)
    )

    steps = config.burn_in + config.draws
    sampled = observed = None
    bar = tqdm(range(steps), disable=not progress, desc=f"SGLD ({K} checkpoints × {C} chains)", leave=False)
    for step in bar:
        if full_batch:
            batch = data
        else:
            order = torch.rand(B, n, generator=generator).argsort(dim=1)[:, :m]
            batch = tree_map(lambda leaf: leaf[order], data)
        params = unflatten(w)
        grads, (batch_loss, per_sample) = gradient(params, batch)
        _check_health(batch_loss, threshold, step, C, config)
        draw = step - config.burn_in
        with torch.no_grad():
            if draw >= 0:
                if record_sampling:
                    current = per_sample if full_batch else evaluate(params, data)
                    if sampled is None:
                        sampled = torch.empty(B, config.draws, current.shape[-1], dtype=current.dtype)
                    sampled[:, draw] = current
                if observables is not None:
                    current = evaluate(params, observables)
                    if observed is None:
                        observed = torch.empty(B, config.draws, current.shape[-1], dtype=current.dtype)
                    observed[:, draw] = current
            g = torch.cat([grads[k].reshape(B, -1) for k in names], dim=1)
            V.mul_(config.decay).addcmul_(g, g, value=1 - config.decay)
            G = 1.0 / (V.sqrt() + config.stability)
            drift = config.nbeta * g + config.gamma * (w - center)
            # float32 normals are several times cheaper to draw, and their precision is ample
            noise = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(dtype)
            w = w - 0.5 * config.epsilon * G * drift + (config.epsilon * G).sqrt() * noise
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{batch_loss.mean().item():.4g}")

    def shaped(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(K, C, config.draws, -1)

    return LossDraws(sampling=shaped(sampled), observables=shaped(observed), initial_loss=initial, config=config)


def _one_by_one(function: Callable, batched_data: bool) -> Callable:
    """``function(params, data)`` applied to each parameter set in turn (and to its own slice of
    ``data`` when ``batched_data``), the results stacked like ``vmap``'s."""

    def apply(params: dict[str, torch.Tensor], data: Any) -> Any:
        sets = next(iter(params.values())).shape[0]
        results = [function({k: v[b] for k, v in params.items()},
                            tree_map(lambda leaf: leaf[b], data) if batched_data else data) for b in range(sets)]
        return tree_map(lambda *leaves: torch.stack(leaves), *results)

    return apply


def _check_health(batch_loss: torch.Tensor, threshold: torch.Tensor, step: int, chains: int, config: SGLDConfig) -> None:
    bad = ~torch.isfinite(batch_loss) | (batch_loss > threshold)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        checkpoint, chain = divmod(b, chains)
        raise SamplerDivergence(
            f"SGLD diverged at step {step} (chain {chain}, checkpoint {checkpoint}): batch loss "
            f"{batch_loss[b].item():.4g}, allowed at most {threshold[b].item():.4g}. "
            f"Hyperparameters: {config.describe()}. Try a smaller epsilon, a larger gamma or a smaller nbeta."
        )
