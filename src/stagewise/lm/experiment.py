"""Per-token influence across the checkpoints of a language model (paper §4, App. D.1).

:func:`prepare_run` builds everything up to the checkpoints from a source
(:mod:`stagewise.lm.sources`: the local default or Pythia's): tokenizer, token streams and the
checkpoints, trained in the directory it is given or published on the hub.
:func:`token_draws` samples the local posterior at one checkpoint with minibatch RMSprop-SGLD on
training text and records the per-token losses of the observable sequences at every draw; they
never enter the gradient.  Nothing here caches: :mod:`stagewise.book.lm` does, for the book.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stagewise.lm.checkpoints import LocalCheckpoints, PythiaCheckpoints
from stagewise.lm.classes import classify_tokens
from stagewise.lm.sources import (
    LanguageModelSource,
    LocalSource,
    check_available,
    model_directory,
    source_checkpoints,
    source_streams,
    source_tokenizer,
)
from stagewise.lm.tokenizer import token_strings
from stagewise.lm.training import LMConfig, sequences, token_losses, train_language_model
from stagewise.sampling import SGLDConfig, sample_losses


@dataclass(frozen=True)
class TokenInfluenceConfig:
    """Everything that fixes a per-token influence study (paper Table 2 for the SGLD defaults)."""

    model: LMConfig = field(default_factory=LMConfig)
    """The model trained from scratch (its vocabulary size must hold the source's tokenizer);
    unused with Pythia's published checkpoints."""
    sgld: SGLDConfig = field(default_factory=lambda: SGLDConfig(
        epsilon=1e-6, nbeta=256, gamma=1000, chains=4, draws=200, batch_size=64))
    observable_sequences: int = 600
    sequence_length: int = 55
    sampling_sequences: int = 4096
    """Training-text sequences that SGLD draws its minibatches from."""
    seed: int = 0
    """Seeds the choice of the sampling and observable sequences."""


@dataclass
class LanguageModelRun:
    """Checkpoints with their tokenizer and the fixed sampling and observable sets."""

    config: TokenInfluenceConfig
    source: LanguageModelSource
    tokenizer: object
    checkpoints: LocalCheckpoints | PythiaCheckpoints
    sampling_ids: torch.Tensor
    """``(sampling_sequences, sequence_length)`` token ids of training text."""
    observable_ids: torch.Tensor
    """``(observable_sequences, sequence_length)`` token ids of held-out text."""
    train_tokens: torch.Tensor
    """The training text as one stream of token ids (what branched runs train on)."""
    directory: Path
    """Where the source's tokenizer, streams and trained runs are kept (branches train here)."""

    def observable_classes(self) -> np.ndarray:
        """Class membership of every observable *target* token (positions 1…L−1 of each
        sequence, the tokens whose losses are recorded), ``(M·(L−1), 6)``."""
        rows = []
        for ids in self.observable_ids.tolist():
            rows.append(classify_tokens(ids, token_strings(self.tokenizer, ids))[1:])
        return np.concatenate(rows)


def prepare_run(config: TokenInfluenceConfig, directory: str | Path, source: LanguageModelSource = LocalSource(),
                train: bool = False, progress: bool = True, keep_states: bool = False,
                device: str | torch.device = "cpu") -> LanguageModelRun:
    """Tokenizer, token streams and checkpoints of ``source`` for ``config``, built in (or read
    from) ``directory``.

    The checkpoints are Pythia's published revisions for a :class:`~stagewise.lm.sources.PythiaSource`
    unless ``train``; otherwise ``config.model`` is trained on the source's text (an interrupted
    run resumes).  ``keep_states`` keeps the training state at every multiple of the checkpoint
    interval, for :func:`branch_run`.  Models load in float32 on ``device``.  A Pythia source
    that can be neither reached nor found in the hub cache raises
    :class:`~stagewise.lm.sources.SourceUnavailable` before anything else runs.
    """
    check_available(source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = source_tokenizer(source, config.model.vocab_size, directory)
    if (train or isinstance(source, LocalSource)) and len(tokenizer) > config.model.vocab_size:
        raise ValueError(f"the model's vocabulary ({config.model.vocab_size}) is smaller than the tokenizer's "
                         f"({len(tokenizer)}); set LMConfig.vocab_size to at least that")
    tokens = source_streams(source, tokenizer, config.model.vocab_size, directory)
    checkpoints = source_checkpoints(source, config.model, tokens["train"], directory, train=train,
                                     progress=progress, keep_states=keep_states, device=device)
    return LanguageModelRun(
        config=config,
        source=source,
        tokenizer=tokenizer,
        checkpoints=checkpoints,
        sampling_ids=sequences(tokens["train"], config.sampling_sequences, config.sequence_length, seed=config.seed),
        observable_ids=sequences(tokens["observable"], config.observable_sequences, config.sequence_length,
                                 seed=config.seed + 1),
        train_tokens=tokens["train"],
        directory=directory,
    )


def branch_run(run: LanguageModelRun, model: LMConfig, progress: bool = True) -> LocalCheckpoints:
    """Checkpoints of a model ``model`` trained on ``run``'s text, usually ``run``'s own
    configuration with a branch and a boost window; trained in ``run.directory`` (from ``run``'s
    kept state at the branch step when there is one) unless already there."""
    if not isinstance(run.checkpoints, LocalCheckpoints):
        raise ValueError(f"{run.checkpoints.name}'s published checkpoints have no training state to branch from; "
                         f"prepare the run with train=True")
    directory = model_directory(run.directory, model)
    if not (directory / "complete").exists():
        train_language_model(model, run.train_tokens, directory, progress=progress,
                             parent=run.checkpoints.directory, device=run.checkpoints.device)
    return LocalCheckpoints(directory, device=run.checkpoints.device)


def token_draws(run: LanguageModelRun, step: int, observables: torch.Tensor | None = None,
                sampling: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """Per-token losses of the observable sequences at every SGLD draw around checkpoint
    ``step``: ``(chains, draws, M·(L−1))``, float32 on the CPU.  ``observables`` replaces the
    run's held-out sequences (``(M, L)`` token ids, e.g. a repeated probe); ``sampling`` replaces
    the sequences SGLD draws its minibatches from (``(S, L)`` token ids, default
    ``run.sampling_ids``).  Sampling runs on the checkpoints' device."""
    observables = run.observable_ids if observables is None else observables
    sampling = run.sampling_ids if sampling is None else sampling
    model = run.checkpoints.load(step)
    device = next(model.parameters()).device
    draws = sample_losses(model, token_losses, sampling.to(device), run.config.sgld, observables.to(device),
                          record_sampling=False, progress=progress)
    return draws.observables[0].float().cpu()
