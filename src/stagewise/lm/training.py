"""A Pythia-architecture language model, trained from scratch on a local corpus.

The model is ``GPTNeoXForCausalLM`` with Pythia-14m's design (rotary embeddings on a quarter of
each head, parallel residual) and sizes from the configuration.  Training saves checkpoints on
a Pythia-like schedule (log-spaced early, then evenly spaced) in the transformers format, and a
resume file after each, so an interrupted run continues where it stopped.  A run lives in the
directory its caller names (the book keeps them in its cache, :mod:`stagewise.book.lm`), on the
device its caller names (the CPU by default).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from stagewise._files import written_atomically
from stagewise._progress import progress_bar
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # transformers loads in seconds: only when a model is built
    from transformers import GPTNeoXConfig

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class LMConfig:
    """Model and training sizes. The defaults are Pythia-14m's architecture with a 4096-token
    vocabulary and a short context."""

    vocab_size: int = 4096
    hidden: int = 128
    layers: int = 6
    heads: int = 4
    intermediate: int = 512
    context: int = 128
    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup: int = 100
    lr_schedule: str = "cosine"
    """After the linear warm-up: ``"cosine"`` decay to zero at ``steps`` (Pythia), or
    ``"constant"`` (a late phase transition is not starved of learning rate)."""
    weight_decay: float = 0.01
    checkpoint_interval: int = 250
    """After the log-spaced checkpoints (1, 2, 4, …, 512), one every this many steps."""
    seed: int = 0
    repeated_fraction: float = 0.0
    """Share of each batch replaced by random-token sequences whose second half repeats the
    first (an induction-rich mix, Chapter 6); 0 trains on natural text only."""
    boost_window: tuple[int, int] | None = None
    """Steps ``[start, stop)`` in which the share is ``boosted_fraction`` instead (upweighting
    induction data inside a window of training)."""
    boosted_fraction: float = 0.0
    branch: tuple[int, int] | None = None
    """``(step, seed)``: at ``step`` the data are reseeded with ``seed``, so runs that differ
    only in their branch share everything before ``step`` and see independent data after it.
    From the branch on, the natural-text windows and the repeated rows come from two generators
    (:func:`repeated_rows_generator`), each drawing a fixed amount a step: two runs with the same
    branch that differ only in their share of repeated rows (a boost window and its control)
    draw the same batches, except the rows the boost turns into repeated sequences (common
    random numbers)."""

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if min(self.vocab_size, self.layers, self.context, self.steps, self.batch_size, self.checkpoint_interval) < 1:
            raise ValueError("sizes, steps, batch size and checkpoint interval must be positive")
        for name in ("repeated_fraction", "boosted_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.boost_window is not None and not 0 <= self.boost_window[0] < self.boost_window[1]:
            raise ValueError(f"boost_window must be (start, stop) with 0 <= start < stop, got {self.boost_window}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.branch is not None and not 0 <= self.branch[0] <= self.steps:
            raise ValueError(f"the branch step must lie in [0, steps = {self.steps}], got {self.branch[0]}")

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of :attr:`learning_rate` at ``step``: linear warm-up, then the schedule."""
        warmup = min(1.0, (step + 1) / self.warmup)
        if self.lr_schedule == "constant":
            return warmup
        return warmup * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))

    def repeated_rows(self, step: int) -> int:
        """How many rows of the batch at ``step`` are repeated random sequences."""
        window = self.boost_window
        inside = window is not None and window[0] <= step < window[1]
        return round((self.boosted_fraction if inside else self.repeated_fraction) * self.batch_size)


def pythia_architecture(config: LMConfig) -> GPTNeoXConfig:
    """GPT-NeoX configuration with Pythia's design choices and the sizes of ``config``."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=config.intermediate,
        max_position_embeddings=config.context,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_act="gelu",
        tie_word_embeddings=False,
        attn_implementation="eager",  # batches under vmap, unlike CPU flash attention
    )


def checkpoint_schedule(steps: int, interval: int, branch: int | None = None) -> list[int]:
    """Pythia-like: step 0, powers of two up to 512, then every ``interval`` steps, and the last
    (and the branch step, where branched runs start)."""
    schedule = {0, steps} | ({branch} if branch is not None else set())
    schedule.update(2**k for k in range(10) if 2**k <= steps)
    schedule.update(range(interval, steps + 1, interval))
    return sorted(schedule)


def token_stream(texts: tuple[str, ...], tokenizer) -> torch.Tensor:
    """All texts tokenized and joined with end-of-text tokens, as one 1-D tensor of ids."""
    ids: list[int] = []
    for encoded in tokenizer(list(texts))["input_ids"]:  # one batched call: the Rust tokenizer runs in parallel
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _save_atomically(obj: object, path: Path) -> None:
    with written_atomically(path) as temporary:
        torch.save(obj, temporary)


def state_path(directory: Path, step: int) -> Path:
    """Where a run trained with ``keep_states`` keeps its full training state at ``step``."""
    return directory / f"state-step{step}.pt"


REPEATED_STREAM = 1
"""Key of the repeated rows' stream of a branched run, beside its branch seed."""


def repeated_rows_generator(branch_seed: int) -> torch.Generator:
    """The generator of a branched run's repeated rows from its branch step on: seeded from
    ``(branch_seed, REPEATED_STREAM)``, a stream independent of the natural-text windows', which
    the branch seed itself seeds."""
    state = np.random.SeedSequence([branch_seed, REPEATED_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def train_language_model(config: LMConfig, stream: torch.Tensor, directory: str | Path, progress: bool = True,
                         keep_states: bool = False, parent: Path | None = None,
                         device: str | torch.device = "cpu") -> Path:
    """Train on random windows of ``stream`` (1-D token ids) on ``device`` and save
    ``directory/step{N}`` at every scheduled step; resumes from ``directory/resume.pt`` when
    present.  Returns ``directory``.  Weights are initialised and batches drawn on the CPU, so
    the data and the initialisation do not depend on the device.

    ``keep_states`` also keeps the full training state (weights, optimizer, data generator) at
    every multiple of the checkpoint interval, three times a checkpoint's size each, so that
    branched runs can start there.  A branched run (``config.branch``) whose ``parent`` kept its state at the branch
    step starts there instead of retraining the shared steps; the result is the same.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(stream) <= config.context + 1:
        raise ValueError(f"the token stream ({len(stream)} tokens) is shorter than one context window")
    torch.manual_seed(config.seed)
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(pythia_architecture(config)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: config.learning_rate_factor(s))
    generator = torch.Generator().manual_seed(config.seed)
    repeats = None  # a branched run's second generator, for its repeated rows from the branch step on
    start = 0
    resume = directory / "resume.pt"
    if not resume.exists() and config.branch is not None and parent is not None:
        fork = state_path(parent, config.branch[0])
        if fork.exists():
            shutil.copyfile(fork, resume)
    if resume.exists():
        state = torch.load(resume, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"].cpu())
        if state.get("repeated_generator") is not None:
            repeats = torch.Generator()
            repeats.set_state(state["repeated_generator"].cpu())
        start = state["step"]
    branch_step, branch_seed = config.branch if config.branch is not None else (None, None)
    saves = set(checkpoint_schedule(config.steps, config.checkpoint_interval, branch_step))
    model.train()
    bar = progress_bar(range(start, config.steps + 1), initial=start, total=config.steps + 1, disable=not progress,
               desc="training", leave=False)
    for step in bar:
        if step in saves:
            model.save_pretrained(directory / f"step{step}")
            _save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "schedule": schedule.state_dict(), "generator": generator.get_state(),
                              "repeated_generator": None if repeats is None else repeats.get_state(),
                              "step": step}, resume)
            if keep_states and step % config.checkpoint_interval == 0:
                shutil.copyfile(resume, state_path(directory, step))
        if step == config.steps:
            break
        if step == branch_step:
            generator.manual_seed(branch_seed)
            repeats = repeated_rows_generator(branch_seed)
        batch = training_batch(config, stream, step, generator, repeats).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    (directory / "complete").touch()
    return directory


def training_batch(config: LMConfig, stream: torch.Tensor, step: int, generator: torch.Generator,
                   repeated_generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``(batch_size, context + 1)`` batch of ``step``: random windows of ``stream``, the last
    :meth:`LMConfig.repeated_rows` of them replaced by a random segment of random tokens repeated
    to fill the row.  The segment length varies (8 up to half the row), so only copying by
    content, not by a fixed offset, predicts the repeats.  Before a boost window the draws are
    those of the unboosted run, so runs that differ only in their window share every checkpoint
    before it.

    Without ``repeated_generator`` one ``generator`` draws everything, and how much it draws
    depends on the number of repeated rows.  With it, ``generator`` draws the windows only and
    ``repeated_generator`` a segment and a period for every row of the batch, whatever the number
    of repeated rows, of which the last rows use theirs: two runs that differ only in that number
    draw the same batch except the rows one of them repeats and the other does not."""
    offsets = torch.randint(0, len(stream) - config.context - 1, (config.batch_size,), generator=generator)
    batch = torch.stack([stream[o : o + config.context + 1] for o in offsets.tolist()])
    repeated = config.repeated_rows(step)
    length = config.context + 1
    shortest, rows = min(8, length // 2), range(config.batch_size - repeated, config.batch_size)
    if repeated_generator is not None:
        periods = torch.randint(shortest, length // 2 + 1, (config.batch_size,), generator=repeated_generator)
        segments = torch.randint(config.vocab_size, (config.batch_size, length // 2),
                                 generator=repeated_generator)
        _fill_repeated(batch, rows, segments[rows.start:], periods[rows.start:].tolist())
    elif repeated:
        periods = torch.randint(shortest, length // 2 + 1, (repeated,), generator=generator).tolist()
        segments = torch.randint(config.vocab_size, (repeated, length // 2), generator=generator)
        _fill_repeated(batch, rows, segments, periods)
    return batch


def _fill_repeated(batch: torch.Tensor, rows: range, segments: torch.Tensor, periods: list[int]) -> None:
    """Rows ``rows`` of ``batch`` become ``segments[k][:periods[k]]`` repeated to fill the row."""
    length = batch.shape[1]
    for row, segment, period in zip(rows, segments, periods):
        batch[row] = segment[:period].repeat(math.ceil(length / period))[:length]


LOGITS_PER_CHUNK = 2**24
"""At most this many logits (64 MiB in float32) are formed at once by :func:`token_losses`."""


def token_losses(model: torch.nn.Module, input_ids: torch.Tensor, logits_per_chunk: int = LOGITS_PER_CHUNK) -> torch.Tensor:
    """Per-token next-token cross-entropy of a causal LM, ``(batch, length − 1)``, computed on the
    model's device (the ids are moved there).

    The rows are evaluated in chunks of at most ``logits_per_chunk`` logits (rows × length ×
    vocabulary), so that the memory of the logits does not grow with the batch: 600 × 55
    observables at Pythia's vocabulary of 50 304 would otherwise form 6.6 GB of logits at once
    (and as much again for their log-softmax).  Under autograd, a model with a linear output
    layer (``get_output_embeddings``, as transformers' causal LMs have) runs its body once and
    its output layer and loss through :class:`_ChunkedHeadLosses`, whose backward pass
    recomputes one chunk's logits at a time instead of keeping the whole batch's (an SGLD
    gradient on 64 × 55 tokens at Pythia's vocabulary would keep 0.7 GB of logits, as much of
    log-softmax and of their gradient)."""
    parameter = next(model.parameters(), None)
    if parameter is not None:
        input_ids = input_ids.to(parameter.device)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    rows = input_ids.shape[0] if vocab is None else max(1, logits_per_chunk // (vocab * input_ids.shape[1]))
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if torch.is_grad_enabled() and isinstance(head, torch.nn.Linear) and rows < input_ids.shape[0]:
        hidden = model.base_model(input_ids=input_ids).last_hidden_state[:, :-1]  # (batch, L − 1, width)
        return _ChunkedHeadLosses.apply(head.weight, head.bias, hidden, input_ids[:, 1:], rows)
    return torch.cat([_token_losses(model, input_ids[start : start + rows])
                      for start in range(0, input_ids.shape[0], rows)])


class _ChunkedHeadLosses(torch.autograd.Function):
    """Per-token cross-entropy of a linear output layer, ``(rows, L − 1)``, whose backward pass
    recomputes the logits chunk by chunk (``rows`` sequences at a time) instead of keeping the
    whole batch's logits, log-softmax and their gradient: what activation checkpointing would
    do, which ``torch.func.grad`` (the sampler's gradient) does not support."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight, bias, hidden, targets, rows):
        losses = []
        for start in range(0, hidden.shape[0], rows):
            logits = torch.nn.functional.linear(hidden[start: start + rows], weight, bias)
            losses.append(_next_token_losses(logits, targets[start: start + rows]))
        return torch.cat(losses)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, bias, hidden, targets, rows = inputs
        ctx.save_for_backward(weight, bias, hidden, targets)
        ctx.rows = rows

    @staticmethod
    def backward(ctx, grad_losses):
        weight, bias, hidden, targets = ctx.saved_tensors
        grad_weight = torch.zeros_like(weight)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], ctx.rows):
            chunk = slice(start, start + ctx.rows)
            logits = torch.nn.functional.linear(hidden[chunk], weight, bias)       # (r, L − 1, V)
            grad_logits = torch.softmax(logits, dim=-1)                            # d loss / d logits
            grad_logits.scatter_add_(-1, targets[chunk, :, None], -torch.ones_like(grad_logits[..., :1]))
            grad_logits *= grad_losses[chunk, :, None]
            grad_hidden[chunk] = grad_logits @ weight
            grad_weight += grad_logits.flatten(0, 1).T @ hidden[chunk].flatten(0, 1)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=(0, 1))
        return grad_weight, grad_bias, grad_hidden, None, None


def _next_token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``(rows, L − 1, vocabulary)`` against ``targets`` ``(rows, L − 1)``."""
    # classes on dimension 1, as cross_entropy takes them: a view, where a reshape would copy
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def _token_losses(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids).logits[:, :-1]  # (rows, L − 1, vocabulary), a view
    return _next_token_losses(logits, input_ids[:, 1:])


def sequences(stream: torch.Tensor, count: int, length: int, seed: int = 0) -> torch.Tensor:
    """``count`` non-overlapping windows of ``length`` tokens from ``stream``, chosen with a seed."""
    windows = len(stream) // length
    if windows < count:
        raise ValueError(f"the stream holds {windows} windows of {length} tokens, fewer than {count}")
    chosen = np.sort(np.random.default_rng(seed).choice(windows, size=count, replace=False))
    return torch.stack([stream[w * length : (w + 1) * length] for w in chosen])
