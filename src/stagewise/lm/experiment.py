"""Per-token influence across the checkpoints of a language model (paper §4, App. D.1).

:func:`prepare_run` builds (or finds in the cache) everything up to the trained checkpoints:
corpus, tokenizer, token streams and the training run.  :func:`token_draws` samples the local
posterior at one checkpoint with minibatch RMSprop-SGLD on training text and records the
per-token losses of the observable sequences at every draw; they never enter the gradient.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from stagewise.cache import artifact_key, cache_dir, cached
from stagewise.lm.checkpoints import LocalCheckpoints
from stagewise.lm.classes import classify_tokens
from stagewise.lm.corpus import stdlib_corpus
from stagewise.lm.tokenizer import load_tokenizer, token_strings, train_bpe_tokenizer
from stagewise.lm.training import (
    TRAINING_SOURCES,
    LMConfig,
    run_directory,
    sequences,
    token_losses,
    token_stream,
    train_language_model,
)
from stagewise.profiles import LanguageModelSizes
from stagewise.sampling import SGLDConfig, sample_losses

DRAW_SOURCES = ("sampling.py", "lm/training.py", "lm/experiment.py")
"""The modules SGLD draws depend on (cache scope, see :mod:`stagewise.cache`)."""


@dataclass(frozen=True)
class TokenInfluenceConfig:
    """Everything that fixes a per-token influence study (paper Table 2 for the SGLD defaults)."""

    model: LMConfig = field(default_factory=LMConfig)
    sgld: SGLDConfig = field(default_factory=lambda: SGLDConfig(
        epsilon=1e-6, nbeta=256, gamma=1000, chains=4, draws=200, batch_size=64))
    observable_sequences: int = 600
    sequence_length: int = 55
    sampling_sequences: int = 4096
    """Training-text sequences that SGLD draws its minibatches from."""
    tokenizer_documents: int = 400
    """Training documents the BPE is trained on."""
    seed: int = 0

    @classmethod
    def from_sizes(cls, sizes: LanguageModelSizes, epsilon: float, nbeta: float, gamma: float) -> TokenInfluenceConfig:
        """The study at the sizes of a profile (``get_profile().lm``) with the given sampler."""
        model = LMConfig(vocab_size=sizes.vocab_size, hidden=sizes.hidden, layers=sizes.layers, heads=sizes.heads,
                         intermediate=sizes.intermediate, context=sizes.context, steps=sizes.steps,
                         batch_size=sizes.batch_size, checkpoint_interval=sizes.checkpoint_interval,
                         learning_rate=sizes.learning_rate, lr_schedule=sizes.lr_schedule,
                         repeated_fraction=sizes.repeated_fraction)
        sgld = SGLDConfig(epsilon=epsilon, nbeta=nbeta, gamma=gamma, chains=sizes.chains, draws=sizes.draws,
                          batch_size=sizes.sampling_batch)
        return cls(model=model, sgld=sgld, observable_sequences=sizes.observable_sequences,
                   sequence_length=sizes.sequence_length)


@dataclass
class LanguageModelRun:
    """A trained run: its tokenizer, checkpoints and the fixed sampling and observable sets."""

    config: TokenInfluenceConfig
    tokenizer: object
    checkpoints: LocalCheckpoints
    sampling_ids: torch.Tensor
    """``(sampling_sequences, sequence_length)`` token ids of training text."""
    observable_ids: torch.Tensor
    """``(observable_sequences, sequence_length)`` token ids of held-out text."""
    train_tokens: torch.Tensor
    """The training text as one stream of token ids (what branched runs train on)."""
    corpus_name: str
    """Names the corpus and tokenizer in the cache keys of runs."""

    def observable_classes(self) -> np.ndarray:
        """Class membership of every observable *target* token (positions 1…L−1 of each
        sequence, the tokens whose losses are recorded), ``(M·(L−1), 6)``."""
        rows = []
        for ids in self.observable_ids.tolist():
            rows.append(classify_tokens(ids, token_strings(self.tokenizer, ids))[1:])
        return np.concatenate(rows)


def prepare_run(config: TokenInfluenceConfig, progress: bool = True, keep_states: bool = False) -> LanguageModelRun:
    """Tokenizer, token streams and the training run for ``config``, from the cache when present
    (an interrupted training run resumes).  ``keep_states`` keeps the training state at every
    multiple of the checkpoint interval, for :func:`branch_run`."""
    corpus = stdlib_corpus(config.seed)
    tokenizer_dir = cache_dir() / artifact_key("lm-tokenizer", {
        "vocab": config.model.vocab_size, "documents": config.tokenizer_documents, "corpus": corpus.source,
        "seed": config.seed}, ("lm/tokenizer.py", "lm/corpus.py"))
    if not (tokenizer_dir / "tokenizer.json").exists():
        train_bpe_tokenizer(corpus.train[: config.tokenizer_documents], config.model.vocab_size, tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)

    def streams() -> dict[str, torch.Tensor]:
        return {"train": token_stream(corpus.train, tokenizer), "observable": token_stream(corpus.observable, tokenizer)}

    tokens = cached("lm-streams", {"tokenizer": tokenizer_dir.name, "corpus": corpus.source}, streams,
                    TRAINING_SOURCES)
    corpus_name = f"{corpus.source} / {tokenizer_dir.name}"
    directory = run_directory(config.model, corpus_name)
    if not (directory / "complete").exists():
        train_language_model(config.model, tokens["train"], directory, progress=progress, keep_states=keep_states)
    return LanguageModelRun(
        config=config,
        tokenizer=tokenizer,
        checkpoints=LocalCheckpoints(directory),
        sampling_ids=sequences(tokens["train"], config.sampling_sequences, config.sequence_length, seed=config.seed),
        observable_ids=sequences(tokens["observable"], config.observable_sequences, config.sequence_length,
                                 seed=config.seed + 1),
        train_tokens=tokens["train"],
        corpus_name=corpus_name,
    )


def branch_run(run: LanguageModelRun, model: LMConfig, progress: bool = True) -> LocalCheckpoints:
    """Checkpoints of a run on ``run``'s corpus with the model configuration ``model``, usually
    ``run``'s own with a branch and a boost window; trained (from ``run``'s kept state at the
    branch step when there is one) unless cached."""
    directory = run_directory(model, run.corpus_name)
    if not (directory / "complete").exists():
        train_language_model(model, run.train_tokens, directory, progress=progress,
                             parent=Path(run.checkpoints.directory))
    return LocalCheckpoints(directory)


def token_draws(run: LanguageModelRun, step: int, observables: torch.Tensor | None = None,
                sampling: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """Per-token losses of the observable sequences at every SGLD draw around checkpoint
    ``step``: ``(chains, draws, M·(L−1))`` (float32, cached).  ``observables`` replaces the
    run's held-out sequences (``(M, L)`` token ids, e.g. a repeated probe); ``sampling``
    replaces the sequences SGLD draws its minibatches from (``(S, L)`` token ids, default
    ``run.sampling_ids``)."""
    observables = run.observable_ids if observables is None else observables
    sampling = run.sampling_ids if sampling is None else sampling

    def compute() -> torch.Tensor:
        model = run.checkpoints.load(step)
        draws = sample_losses(model, token_losses, sampling, run.config.sgld, observables,
                              record_sampling=False, progress=progress)
        return draws.observables[0].float()

    key = {"config": asdict(run.config), "step": step, "run": Path(run.checkpoints.directory).name,
           "observables": hashlib.sha256(observables.numpy().tobytes()).hexdigest()}
    if sampling is not run.sampling_ids:
        key["sampling"] = hashlib.sha256(sampling.numpy().tobytes()).hexdigest()
    return cached("lm-token-draws", key, compute, DRAW_SOURCES)
