"""RMSprop-preconditioned SGLD around checkpoints, for any torch model, on any device.

The sampler draws from the local posterior (SPEC §1–2)

    p(w) ∝ exp(−nβ · L_m(w) − (γ/2)‖w − w*‖²),

with the update of devinterp 2.0.1's ``rmsprop_sgld``: per step, with ``g = ∇L_m(w)`` the
gradient of the *mean* per-sample loss on a batch of ``m``,

    V ← b·V + (1 − b)·g²,   G = 1/(√V + α),
    w ← w − (ε/2)·G ⊙ (nβ·g + γ(w − w*)) + √(ε·G) ⊙ ξ,   ξ ~ N(0, I).

The update is a pure kernel, :func:`sgld_init` and :func:`sgld_update` (state in, state out, as
in optax or blackjax); :func:`sample_losses` is the driver around it, which batches parameter
sets, draws minibatches and noise, records losses and checks the chains' health.

At every draw (before the update, as in the paper's Algorithm 1) the driver records the
per-sample losses of the sampling set and of any *observable* sets, which never enter the
gradient.  Chains are a batch dimension, and so are checkpoints: all ``checkpoints × chains``
parameter sets advance together through ``torch.func.functional_call`` and ``vmap`` (for small
models; a transformer's sets are evaluated one after the other, which is faster there).

Every tensor lives on the model's device (or ``device=``).  Each chain has its own random
stream, a generator on that device seeded from ``(seed, checkpoint, chain)``
(:func:`chain_seed`), so the draws do not depend on which other checkpoints are sampled in the
same call, nor on how a ``torchrun`` job splits the work between its ranks
(:mod:`stagewise.distributed`).
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.data import DataLoader, Dataset, SequentialSampler, default_collate
from stagewise._progress import progress_bar

from stagewise.distributed import all_gather, join_from_environment, rank_and_size, share

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch)`` returns one loss per sample (``(m,)``) or per token (``(m, L)``)."""


VMAP_MAX_PARAMETERS = 100_000
"""Above this many parameters per set, :func:`sample_losses` evaluates the sets one by one."""

NOISE_BLOCK_BYTES = 256 * 1024
"""Each chain draws the float32 noise of several steps at once, up to this many bytes (at
least one step): one generator call per block instead of per step.  The block depends on the
number of parameters only, so a chain's stream is the same however the work is split."""


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
    """Draws per chain T, recorded after ``burn_in`` steps, one every ``thin`` steps."""
    batch_size: int | None = None
    """Batch size m for the gradient; ``None`` is the full sampling set."""
    decay: float = 0.99
    """RMSprop decay b of the squared-gradient average."""
    stability: float = 0.1
    """RMSprop stability constant α added to √V."""
    preconditioner: Literal["rmsprop", "none"] = "rmsprop"
    """``"rmsprop"``: the update above; ``"none"``: plain SGLD, ``G = 1`` (``decay`` and
    ``stability`` are then unused)."""
    burn_in: int | None = None
    """Steps taken before the first recorded draw.  ``None`` (the default): none are taken and
    the warm-up is found afterwards from the recorded loss trace
    (:func:`stagewise.diagnostics.find_burn_in`); the draws before it are discarded by
    :func:`~stagewise.influence.bif_trajectory` and :func:`~stagewise.influence.local_bif`, so
    fewer than ``draws`` draws per chain are kept."""
    thin: int = 1
    """Steps per recorded draw: a chain takes ``burn_in + thin × draws`` steps and records the
    losses at every ``thin``-th.  Worth more than 1 when evaluating the losses costs more than a
    step (many observables) and consecutive draws are nearly the same."""
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
        if self.preconditioner not in ("rmsprop", "none"):
            problems.append(f"preconditioner must be 'rmsprop' or 'none', got {self.preconditioner!r}")
        if self.burn_in is not None and self.burn_in < 0:
            problems.append(f"burn_in must be >= 0 or None (found from the trace), got {self.burn_in}")
        if self.thin < 1:
            problems.append(f"thin must be at least 1, got {self.thin}")
        if not self.divergence_factor > 0:
            problems.append(f"divergence_factor must be positive, got {self.divergence_factor}")
        if problems:
            raise ValueError("invalid SGLD hyperparameters: " + "; ".join(problems))

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "divergence_factor")


@dataclass
class LossDraws:
    """Per-sample losses recorded along the chains, on the CPU.

    ``sampling``: ``(K, C, T, n)`` losses of the sampling set (``n`` flattened per-sample or
    per-token losses); ``observables``: ``(K, C, T, n_obs)`` or ``None``; ``initial_loss``:
    ``(K,)`` mean sampling loss at each checkpoint.  ``K`` is the number of checkpoints.
    ``loss_trace``: ``(K, C, T)`` the mean loss of the gradient's batch at every draw;
    ``diverged_at``: ``(K, C)`` the step at which a chain diverged, ``-1`` for a healthy one
    (draws after it are NaN); ``checkpoint_indices``: the global index of each checkpoint, from
    which the chains' random streams derive.
    """

    sampling: torch.Tensor | None
    observables: torch.Tensor | None
    initial_loss: torch.Tensor
    config: SGLDConfig
    loss_trace: torch.Tensor | None = None
    diverged_at: torch.Tensor | None = None
    checkpoint_indices: tuple[int, ...] | None = None


class SGLDState(NamedTuple):
    """State of the kernel for ``S`` parameter sets flattened to rows: ``w`` and the RMSprop
    average ``V`` of squared gradients, both ``(S, d)``."""

    w: torch.Tensor
    V: torch.Tensor


def sgld_init(center: torch.Tensor) -> SGLDState:
    """The kernel's state at the checkpoint ``center`` (``(S, d)``): ``w = w*``, ``V = 0``."""
    return SGLDState(center.clone(), torch.zeros_like(center))


def sgld_update(state: SGLDState, gradient: torch.Tensor, center: torch.Tensor, noise: torch.Tensor, config: SGLDConfig) -> SGLDState:
    """One RMSprop-SGLD step (SPEC §2), a pure function of its arguments.

    ``gradient``: ``∇L_m(w)`` of the mean batch loss, ``(S, d)``; ``center``: ``w*``;
    ``noise``: standard normal ``ξ`` of the same shape.  Returns the new state::

        V' = b·V + (1 − b)·g²,  G = 1/(√V' + α),
        w' = w − (ε/2)·G ⊙ (nβ·g + γ(w − w*)) + √(ε·G) ⊙ ξ

    With ``config.preconditioner == "none"``, ``G = 1`` (plain SGLD) and ``V`` stays as it was.
    """
    new = SGLDState(state.w.clone(), state.V.clone())
    _sgld_update_in_place(new, gradient, center, noise, config, [torch.empty_like(state.w) for _ in range(3)])
    return new


def _sgld_update_in_place(state: SGLDState, gradient: torch.Tensor, center: torch.Tensor, noise: torch.Tensor,
                          config: SGLDConfig, scratch: Sequence[torch.Tensor]) -> None:
    """:func:`sgld_update` written into ``state.w`` and ``state.V``, with three ``(S, d)``
    ``scratch`` buffers and no allocation: the driver's step.  (Fresh ``(S, d)`` results of a
    few MB each are page-faulted in at every step by the allocator, which cost more than the
    arithmetic; the operations and their order are those of the formula, so the result is
    bitwise the same.)"""
    drift, root, term = scratch
    torch.sub(state.w, center, out=drift).mul_(config.gamma)
    drift.add_(torch.mul(gradient, config.nbeta, out=term))  # nβ·g + γ(w − w*)
    if config.preconditioner == "none":
        state.w.sub_(drift.mul_(0.5 * config.epsilon)).add_(torch.mul(noise, math.sqrt(config.epsilon), out=term))
        return
    state.V.mul_(config.decay).add_(torch.mul(gradient, 1 - config.decay, out=term).mul_(gradient))
    torch.sqrt(state.V, out=root).add_(config.stability).rsqrt_()  # √G
    state.w.sub_(torch.mul(root, 0.5 * config.epsilon, out=term).mul_(root).mul_(drift))
    state.w.add_(torch.mul(root, math.sqrt(config.epsilon), out=term).mul_(noise))


def chain_seed(seed: int, checkpoint: int, chain: int) -> int:
    """The seed of one chain's random stream, a hash of ``(seed, checkpoint, chain)``: never
    of the rank, the device or the other chains in the call."""
    digest = hashlib.blake2b(f"stagewise-sgld/{seed}/{checkpoint}/{chain}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def as_tensors(data: Any) -> Any:
    """``data`` as a tensor or a tuple/list/dict of tensors sharing dimension 0, in the order
    of its rows, so that row ``i`` of every result (BIF row and column ``i``) is sample ``i``.

    A torch ``Dataset`` is collated item by item (``default_collate``); a ``DataLoader``'s
    batches are concatenated in the order it yields them, which must be the dataset's order: a
    loader with ``shuffle=True`` (or any sampler but the sequential one) is refused, since its
    rows would come in a new random order at each pass.  NumPy arrays, also inside containers,
    become tensors (``torch.as_tensor``, same dtype); tensors pass through unchanged.
    """
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler) or getattr(data, "drop_last", False):
            drops = " and drops the last batch" if getattr(data, "drop_last", False) else ""
            raise ValueError(f"the DataLoader draws its rows through a {type(data.sampler).__name__}{drops}, so "
                             f"the BIF's rows would not follow the dataset's order; pass the Dataset itself or "
                             f"a DataLoader with shuffle=False and drop_last=False")
        batches = list(data)
        if not batches:
            raise ValueError("the DataLoader yields no batches")
        return tree_map(lambda *leaves: torch.cat(leaves), *[_numpy_to_tensors(b) for b in batches])
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        if len(data) == 0:
            raise ValueError("the Dataset is empty")
        return _numpy_to_tensors(default_collate([data[i] for i in range(len(data))]))
    return _numpy_to_tensors(data)


def _numpy_to_tensors(data: Any) -> Any:
    return tree_map(lambda leaf: torch.as_tensor(leaf) if isinstance(leaf, np.ndarray) else leaf, data)


def _batch_size(data: Any) -> int:
    leaves, _ = tree_flatten(data)
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise TypeError("data must be a tensor, a tuple/list/dict of tensors sharing dimension 0, a Dataset or a DataLoader")
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"all tensors in data must share dimension 0, got sizes {sorted(sizes)}")
    return sizes.pop()


def _on_device(data: Any, device: torch.device, move: bool, what: str) -> Any:
    """``data`` on ``device``: moved there when ``move``, else a clear error if it is elsewhere."""
    if data is None:
        return None
    if move:
        return tree_map(lambda leaf: leaf.to(device), data)
    elsewhere = {str(leaf.device) for leaf in tree_flatten(data)[0] if leaf.device != device}
    if elsewhere:
        raise ValueError(f"the model is on {device} but {what} is on {', '.join(sorted(elsewhere))}; "
                         f"move them to one device, or pass device= to sample there")
    return data


def model_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """Where ``model``'s weights live: the device of its first parameter (or buffer), ``fallback``
    for a model with neither."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device(fallback))


class FlatLayout(NamedTuple):
    """Where each named tensor sits in one flat weight vector: the order and shapes of a model's
    trainable parameters.  (``torch.nn.utils.parameters_to_vector`` flattens, but its inverse
    writes into the module; here both directions are functional and keep leading batch axes.)"""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        """The trainable parameters of ``model``, in ``named_parameters`` order."""
        trainable = [(name, p.shape) for name, p in model.named_parameters() if p.requires_grad]
        return cls(tuple(name for name, _ in trainable), tuple(shape for _, shape in trainable))

    def flatten(self, tensors: Mapping[str, Any], leading: int = 0, device: torch.device | None = None) -> torch.Tensor:
        """``{name: (*batch, *shape)}`` → ``(*batch, d)``, ``batch`` the first ``leading`` axes."""
        pieces = [torch.as_tensor(tensors[name], device=device) for name in self.names]
        return torch.cat([piece.reshape(*piece.shape[:leading], -1) for piece in pieces], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(*batch, d)`` → ``{name: (*batch, *shape)}`` (views of ``flat``)."""
        pieces = flat.split([math.prod(shape) for shape in self.shapes], dim=-1)
        return {name: piece.reshape(*flat.shape[:-1], *shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}


class PerSampleLoss(nn.Module):
    """Wraps ``loss_fn(model, batch)`` so that ``functional_call`` can swap the model's weights,
    and checks that it returns one loss per sample (or per token)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        losses = self.loss_fn(self.model, batch)
        size = tree_flatten(batch)[0][0].shape[0]
        if not isinstance(losses, torch.Tensor) or losses.ndim == 0 or losses.shape[0] != size:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(f"loss_fn must return one loss per sample, shape ({size},), or per token, ({size}, L), "
                             f"for a batch of {size}; it returned {shape}. A mean loss gives no influence between samples.")
        return losses.reshape(-1)


def stack_checkpoints(model: nn.Module, checkpoints: Sequence[Mapping[str, torch.Tensor]] | None,
                      device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Trainable parameters of ``model`` at each checkpoint, stacked: ``{name: (K, *shape)}``,
    on ``device`` (default: where each tensor already is).

    ``checkpoints`` are state dicts (or any mappings from parameter names to tensors); ``None``
    means the model's current parameters (``K = 1``).
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameters")
    if checkpoints is None:
        return {name: p.detach().unsqueeze(0).clone().to(device or p.device) for name, p in model.named_parameters() if p.requires_grad}
    if len(checkpoints) == 0:
        raise ValueError("checkpoints is empty")
    parameters = dict(model.named_parameters())
    stacked = {}
    for name in names:
        missing = [k for k, ckpt in enumerate(checkpoints) if name not in ckpt]
        if missing:
            raise KeyError(f"parameter {name!r} is missing from checkpoints {missing[:5]}")
        values = [torch.as_tensor(ckpt[name], device=device) for ckpt in checkpoints]
        for k, value in enumerate(values):
            if value.shape != parameters[name].shape:
                raise ValueError(f"checkpoint {k}: parameter {name!r} has shape {tuple(value.shape)}, "
                                 f"the model's has {tuple(parameters[name].shape)}")
        dtypes = {value.dtype for value in values}
        if len(dtypes) > 1:
            k = next(k for k, value in enumerate(values) if value.dtype != values[0].dtype)
            raise ValueError(f"parameter {name!r} is {values[0].dtype} in checkpoint 0 but {values[k].dtype} "
                             f"in checkpoint {k}; convert the checkpoints to one dtype")
        stacked[name] = torch.stack(values).detach()
    dtypes = {value.dtype for value in stacked.values() if value.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError("the checkpoints' parameters mix dtypes: " + ", ".join(
            f"{name!r} is {value.dtype}" for name, value in stacked.items()) + "; convert them to one dtype")
    _check_buffers(model, checkpoints)
    return stacked


def _check_buffers(model: nn.Module, checkpoints: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Refuse checkpoints whose buffers (e.g. batch norm's running statistics) differ from the
    model's: every checkpoint is evaluated with the model's own buffers."""
    for name, buffer in model.named_buffers():
        if not buffer.is_floating_point():  # counters such as num_batches_tracked do not enter the loss
            continue
        for k, checkpoint in enumerate(checkpoints):
            if name not in checkpoint:
                continue
            value = torch.as_tensor(checkpoint[name])
            if value.shape != buffer.shape or not torch.equal(value.to(buffer.device, buffer.dtype), buffer):
                raise ValueError(
                    f"checkpoint {k} holds buffer {name!r} (e.g. batch norm's running statistics) that differs "
                    f"from the model's, and the sampler evaluates every checkpoint with the model's own "
                    f"buffers; sample such checkpoints one at a time after model.load_state_dict(checkpoint)")


def _check_inputs(model: nn.Module, loss_fn: LossFn, data: Any, observables: Any, dtype: torch.dtype,
                  indices: Sequence[int]) -> None:
    """Fail before sampling, with one line, on inputs that would give plausible wrong numbers."""
    if len(set(indices)) != len(indices):
        repeated = sorted({i for i in indices if list(indices).count(i) > 1})
        raise ValueError(f"checkpoint_indices repeat {repeated[:5]}: the chains' random streams derive from "
                         f"the index, so repeated checkpoints would share their draws; give each checkpoint "
                         f"its own index")
    for what, value in (("the data", data), ("the observables", observables)):
        if value is None:
            continue
        if _batch_size(value) == 0:
            raise ValueError(f"{what} has zero rows")
        for i, leaf in enumerate(tree_flatten(value)[0]):
            if leaf.is_floating_point() and leaf.dtype != dtype:
                raise ValueError(f"{what} tensor {i} is {leaf.dtype} but the parameters (checkpoints) are "
                                 f"{dtype}; convert one of them (e.g. .to({dtype}))")
    noisy = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    if model.training and any(isinstance(module, noisy) for module in model.modules()):
        warnings.warn("the model is in training mode and has dropout or batch norm, so its losses are random "
                      "or depend on the batch; call model.eval() before sampling", stacklevel=3)
    n = _batch_size(data)
    probe_sizes = (2, 3) if n >= 3 else (1, 2) if n == 2 else (1,)
    shapes = []
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}  # training mode updates them
    with torch.enable_grad():
        for size in probe_sizes:
            losses = loss_fn(model, tree_map(lambda leaf: leaf[:size], data))
            if not isinstance(losses, torch.Tensor):
                raise TypeError(f"loss_fn must return a torch tensor of per-sample losses, "
                                f"got {type(losses).__name__}")
            if losses.ndim == 0 or losses.shape[0] != size:
                raise ValueError(f"loss_fn must return one loss per sample, shape ({size},), or per token, "
                                 f"({size}, L), for a batch of {size}; it returned {tuple(losses.shape)}. "
                                 f"A mean loss gives no influence between samples.")
            if not losses.requires_grad:
                raise ValueError("the losses from loss_fn do not depend on the model's parameters (no gradient "
                                 "flows back: .detach(), .item(), numpy or torch.no_grad() inside loss_fn?), "
                                 "so SGLD would sample the prior alone")
            shapes.append(tuple(losses.shape[1:]))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    if len(set(shapes)) > 1:
        returned = [(size, *shape) for size, shape in zip(probe_sizes, shapes)]
        raise ValueError(f"loss_fn returns shapes {returned} for batches of {list(probe_sizes)}: its second "
                         f"dimension follows the batch size, the usual broadcasting slip ((m,) against (m, 1) "
                         f"gives (m, m)); per-token losses must be (m, L) with L fixed")


def _check_checkpoints(initial: torch.Tensor, centers: dict[str, torch.Tensor], data: Any, indices: Sequence[int]) -> None:
    """A clear error when the loss is not finite at a checkpoint, saying whether the data or
    the weights are to blame (SGLD could not start there)."""
    bad = ~torch.isfinite(initial)
    if not bool(bad.any()):
        return
    k, sample = (int(i) for i in bad.nonzero()[0])
    blame = [f"data tensor {i} holds non-finite values" for i, leaf in enumerate(tree_flatten(data)[0])
             if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all())]
    blame += [f"weight {name!r} is not finite there" for name, value in centers.items()
              if value.is_floating_point() and not bool(torch.isfinite(value[k]).all())]
    raise ValueError(f"the loss at checkpoint {indices[k]} is not finite before sampling (loss entry {sample}: "
                     f"{initial[k, sample].item()}); " + ("; ".join(blame) or "the model or loss_fn produces it")
                     + ". SGLD needs a finite loss at the checkpoint.")


def sample_losses(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    config: SGLDConfig,
    observables: Any | None = None,
    *,
    checkpoints: Sequence[Mapping[str, torch.Tensor]] | None = None,
    checkpoint_indices: Sequence[int] | None = None,
    record_sampling: bool = True,
    progress: bool = True,
    vectorize: bool | None = None,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
    on_divergence: Literal["raise", "record"] = "raise",
) -> LossDraws:
    """Run ``config.chains`` RMSprop-SGLD chains from each checkpoint and record losses.

    ``data`` is the sampling set: a tensor, a tuple/list/dict of tensors indexed along
    dimension 0, a ``Dataset`` or a ``DataLoader`` (see :func:`as_tensors`); it (or a batch of
    it) is passed to ``loss_fn(model, batch)``, which must return one loss per sample or per
    token.  ``observables`` is another such set whose losses are recorded but never enter the
    gradient.  ``checkpoints`` is a list of state dicts to sample around, all at once; by
    default the model's weights.  ``checkpoint_indices`` are their global indices (default
    ``0 … K−1``): chain ``c`` of checkpoint ``checkpoint_indices[k]`` draws from the stream
    :func:`chain_seed` ``(config.seed, checkpoint_indices[k], c)``, so sampling checkpoints
    together or apart gives the same draws.

    ``device``: where to sample (default: the model's device).  The model is copied there if it
    lives elsewhere, and data and checkpoints are moved there; without ``device`` the data must
    already be on the model's device.  The result is returned on the CPU.

    ``distributed``: inside an initialised ``torch.distributed`` job (``torchrun``), the
    ``K × C`` parameter sets are split into one contiguous share per rank and the draws
    gathered on every rank (default: whenever the world has more than one process).  A failure
    on any rank is raised on every rank, naming the rank and its checkpoints.

    ``on_divergence``: ``"raise"`` stops with :class:`SamplerDivergence` (naming the
    hyperparameters) when a chain's loss becomes non-finite or runs away from the
    checkpoint's; ``"record"`` freezes that chain, fills its later draws with NaN and records
    the step in ``diverged_at``.

    ``vectorize`` chooses how the parameter sets are evaluated: as one ``vmap`` batch
    (``True``; much faster for small models) or one after the other (``False``; faster for a
    transformer, see ``bench/README.md``).  The default picks ``vmap`` below
    :data:`VMAP_MAX_PARAMETERS` parameters per set.
    """
    if on_divergence not in ("raise", "record"):
        raise ValueError(f"on_divergence must be 'raise' or 'record', got {on_divergence!r}")
    explicit = device is not None
    device = torch.device(device) if explicit else model_device(model)
    if explicit and any(t.device != device for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).to(device)
    data = _on_device(as_tensors(data), device, explicit, "the data")
    observables = _on_device(as_tensors(observables), device, explicit, "the observables")
    n = _batch_size(data)
    if observables is not None:
        _batch_size(observables)
    m = n if config.batch_size is None else min(config.batch_size, n)
    full_batch = m == n
    centers = stack_checkpoints(model, checkpoints, device)
    K, C = next(iter(centers.values())).shape[0], config.chains
    indices = tuple(range(K)) if checkpoint_indices is None else tuple(int(i) for i in checkpoint_indices)
    if len(indices) != K:
        raise ValueError(f"checkpoint_indices has {len(indices)} entries for {K} checkpoints")
    _check_inputs(model, loss_fn, data, observables, next(iter(centers.values())).dtype, indices)
    objective = PerSampleLoss(model, loss_fn)
    dimension = sum(p[0].numel() for p in centers.values())

    def losses(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        return functional_call(objective, {f"model.{k}": v for k, v in params.items()}, (batch,), strict=False)

    layout = FlatLayout(tuple(centers), tuple(v.shape[1:] for v in centers.values()))
    if vectorize is None:
        vectorize = dimension <= VMAP_MAX_PARAMETERS
    if vectorize:
        gradient = _vmapped_gradient(vmap(losses, in_dims=(0, None if full_batch else 0)), layout)
        evaluate = vmap(losses, in_dims=(0, None))
    else:
        def mean_loss(params: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            per_sample = losses(params, batch)
            return per_sample.mean(), per_sample

        one_by_one = _one_by_one(grad_and_value(mean_loss, has_aux=True), batched_data=not full_batch)

        def gradient(rows: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            grads, (batch_loss, per_sample) = one_by_one(layout.unflatten(rows), batch)
            return layout.flatten(grads, leading=1), batch_loss, per_sample

        evaluate = _one_by_one(losses, batched_data=False)

    with torch.no_grad():
        per_sample_initial = evaluate(centers, data)  # (K, n)
    _check_checkpoints(per_sample_initial, centers, data, indices)
    initial = per_sample_initial.mean(dim=1)

    if distributed is not False:
        join_from_environment()
    rank, size = rank_and_size() if distributed is not False else (0, 1)
    mine = share(K * C, rank, size)
    sets = [divmod(s, C) for s in mine]  # (local checkpoint, chain) of each set of this rank
    try:
        outcome = _run_chains(
            gradient, evaluate, centers, layout, sets, indices, initial, data, observables, config, dimension,
            full_batch=full_batch, m=m, n=n, record_sampling=record_sampling, on_divergence=on_divergence,
            progress=progress and rank == 0, device=device,
        )
    except Exception as error:  # gathered below, so that no rank waits forever for a failed one
        if size == 1:
            raise
        outcome = {"error": (type(error).__name__, str(error), isinstance(error, SamplerDivergence))}
    if size > 1:
        outcomes = all_gather(outcome)
        for r, result in enumerate(outcomes):
            if "error" in result:
                name, message, divergence = result["error"]
                where = sorted({indices[s // C] for s in share(K * C, r, size)})
                raise (SamplerDivergence if divergence else RuntimeError)(
                    f"rank {r} of {size} (checkpoints {where}) failed: {name}: {message}")
        parts = [result for result in outcomes if result["sets"] > 0]
    else:
        parts = [outcome]

    def joined(key: str) -> torch.Tensor | None:
        pieces = [part[key] for part in parts]
        return None if pieces[0] is None else torch.cat(pieces).reshape(K, C, *pieces[0].shape[1:])

    return LossDraws(sampling=joined("sampling"), observables=joined("observables"), initial_loss=initial.cpu(),
                     config=config, loss_trace=joined("trace"), diverged_at=joined("diverged_at"),
                     checkpoint_indices=indices)


def _run_chains(
    gradient: Callable, evaluate: Callable, centers: dict[str, torch.Tensor], layout: FlatLayout,
    sets: list[tuple[int, int]],
    indices: Sequence[int], initial: torch.Tensor, data: Any, observables: Any, config: SGLDConfig, dimension: int,
    *, full_batch: bool, m: int, n: int, record_sampling: bool, on_divergence: str, progress: bool, device: torch.device,
) -> dict[str, Any]:
    """The driver for the parameter sets ``sets`` (pairs of local checkpoint and chain): draws
    minibatches and noise from each chain's stream, applies :func:`sgld_update` (in place),
    records the losses and checks health.  Returns CPU tensors with one row per set."""
    S, T = len(sets), config.draws
    if S == 0:
        return {"sets": 0}
    checkpoint_of = torch.tensor([k for k, _ in sets], device=device)
    # All parameters of one chain live in one flat row: w, V and w* are (S, d), so each step
    # updates every chain in a handful of tensor ops.
    center = layout.flatten(centers, leading=1)[checkpoint_of]
    dtype = center.dtype
    generators = [torch.Generator(device=device).manual_seed(chain_seed(config.seed, indices[k], c)) for k, c in sets]

    start = initial[checkpoint_of]
    threshold = start + config.divergence_factor * (start.abs() + dimension / (2 * config.nbeta))
    state = sgld_init(center)
    warm = config.burn_in or 0  # None: nothing skipped, the warm-up is found from the trace afterwards
    steps = warm + config.thin * T
    block = max(1, min(NOISE_BLOCK_BYTES // (4 * dimension), steps))
    noise = _NoiseBlocks(generators, block, dimension, device)
    scratch = [torch.empty_like(center) for _ in range(3)]
    diverged_at = torch.full((S,), -1, dtype=torch.long, device=device)
    trace = torch.full((S, T), float("nan"), dtype=dtype, device=device)
    sampled = observed = None
    bar = progress_bar(range(steps), disable=not progress, desc=f"SGLD ({S} checkpoint × chain sets)", leave=False)
    try:
        for step in bar:
            if full_batch:
                batch = data
            else:
                order = torch.stack([torch.randperm(n, generator=g, device=device)[:m] for g in generators])
                batch = tree_map(lambda leaf: leaf[order], data)
            gradient_rows, batch_loss, per_sample = gradient(state.w, batch)
            bad = (~torch.isfinite(batch_loss) | (batch_loss > threshold)) & (diverged_at < 0)
            if bool(bad.any()):
                if on_divergence == "raise":
                    b = int(bad.nonzero()[0, 0])
                    k, chain = sets[b]
                    raise SamplerDivergence(
                        f"SGLD diverged at step {step} (chain {chain}, checkpoint {indices[k]}): batch loss "
                        f"{batch_loss[b].item():.4g}, allowed at most {threshold[b].item():.4g}. "
                        f"Hyperparameters: {config.describe()}. Try a smaller epsilon, a larger gamma or a smaller nbeta.")
                diverged_at[bad] = step
            dead = diverged_at >= 0
            any_dead = bool(dead.any())
            draw, skipped = divmod(step - warm, config.thin)
            with torch.no_grad():
                if draw >= 0 and skipped == 0:
                    params = layout.unflatten(state.w)
                    trace[:, draw] = batch_loss.detach().masked_fill(dead, float("nan"))
                    if record_sampling:
                        current = per_sample if full_batch else evaluate(params, data)
                        if sampled is None:
                            sampled = torch.full((S, T, current.shape[-1]), float("nan"), dtype=current.dtype,
                                                 device=device)
                        sampled[:, draw] = current.masked_fill(dead[:, None], float("nan"))
                    if observables is not None:
                        current = evaluate(params, observables)
                        if observed is None:
                            observed = torch.full((S, T, current.shape[-1]), float("nan"), dtype=current.dtype,
                                                  device=device)
                        observed[:, draw] = current.masked_fill(dead[:, None], float("nan"))
                _sgld_update_in_place(state, gradient_rows, center, noise.step(step).to(dtype), config, scratch)
                if any_dead:  # a diverged chain rests at its checkpoint, out of harm's way
                    state.w[dead] = center[dead]
                    state.V[dead] = 0.0
            if any_dead and bool(dead.all()):  # nothing left to sample: stop, and say so
                if progress:
                    bar.set_postfix_str(f"all {S} chains diverged by step {step}; stopped")
                bar.close()
                break
            if progress and step % 50 == 0:
                alive = ~dead
                postfix = f"loss={batch_loss[alive].mean().item():.4g}"
                bar.set_postfix_str(postfix + (f", {int(dead.sum())}/{S} diverged" if any_dead else ""))
    finally:
        noise.close()
    if record_sampling and sampled is None:  # every chain diverged before the first draw
        with torch.no_grad():
            width = evaluate(layout.unflatten(center[:1]), data).shape[-1]
        sampled = torch.full((S, T, width), float("nan"), dtype=dtype, device=device)
    if observables is not None and observed is None:
        with torch.no_grad():
            width = evaluate(layout.unflatten(center[:1]), observables).shape[-1]
        observed = torch.full((S, T, width), float("nan"), dtype=dtype, device=device)

    def cpu(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.cpu()

    return {"sets": S, "sampling": cpu(sampled), "observables": cpu(observed), "trace": trace.cpu(), "diverged_at": diverged_at.cpu()}


class _NoiseBlocks:
    """The standard normal noise of every chain, ``block`` steps at a time from each chain's own
    generator, in float32 (several times cheaper to draw than float64, and ample).  On the CPU
    each generator is a serial Mersenne Twister, the largest single cost of a small model's
    step, so the chains' generators run in parallel threads (one per torch thread); each chain
    still draws its own stream in its own order.  (Drawing the next block while the current one
    is used was slower on two cores: the drawing thread competes with torch's own threads.)"""

    def __init__(self, generators: Sequence[torch.Generator], block: int, dimension: int, device: torch.device) -> None:
        self.generators, self.block = list(generators), block
        self.rows = torch.empty(len(generators), block, dimension, dtype=torch.float32, device=device)
        workers = min(torch.get_num_threads(), len(generators)) if device.type == "cpu" else 1
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        bounds = np.linspace(0, len(generators), workers + 1).astype(int)
        self.shares = [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def _fill(self, chains: range) -> None:
        for c in chains:
            self.rows[c].normal_(generator=self.generators[c])

    def step(self, step: int) -> torch.Tensor:
        """The noise of ``step``, ``(S, d)``, drawing the next block when ``step`` starts one."""
        if step % self.block == 0:
            if self.pool is None:
                self._fill(range(len(self.generators)))
            else:
                for drawn in [self.pool.submit(self._fill, chains) for chains in self.shares]:
                    drawn.result()
        return self.rows[:, step % self.block]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _vmapped_gradient(batched_losses: Callable, layout: FlatLayout) -> Callable:
    """``gradient(rows, batch)`` for parameter sets flattened to ``rows`` ``(S, d)``: the gradient
    of each set's mean batch loss ``(S, d)``, that mean ``(S,)`` and the per-sample losses.

    One backward pass of ordinary autograd through the ``vmap``-ed forward pass, of the sum of
    the sets' means (the sets share no weights, so each row of its gradient is that set's):
    the same operations as ``vmap(grad(...))``, and the same numbers, without the functorch
    layer that costs more than the arithmetic for a small model."""

    def gradient(rows: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = rows.detach().requires_grad_(True)
        with torch.enable_grad():
            per_sample = batched_losses(layout.unflatten(rows), batch)
            mean = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
            (grad,) = torch.autograd.grad(mean.sum(), rows)
        return grad, mean.detach(), per_sample.detach()

    return gradient


def _one_by_one(function: Callable, batched_data: bool) -> Callable:
    """``function(params, data)`` applied to each parameter set in turn (and to its own slice of
    ``data`` when ``batched_data``), the results stacked like ``vmap``'s."""

    def apply(params: dict[str, torch.Tensor], data: Any) -> Any:
        sets = next(iter(params.values())).shape[0]
        results = [function({k: v[b] for k, v in params.items()},
                            tree_map(lambda leaf: leaf[b], data) if batched_data else data) for b in range(sets)]
        return tree_map(lambda *leaves: torch.stack(leaves), *results)

    return apply
