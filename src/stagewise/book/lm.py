"""The language-model chapters' boundary (Chapters 5 and 6): profile sizes, the source, the
device and the cache around :mod:`stagewise.lm`.

The source is one setting: the profile's ``lm_source``, overridden by ``$STAGEWISE_LM``
(``local``, the offline default, or ``pythia-14m``).  With ``pythia-14m`` the text is streamed
from the hub as ``monology/pile-uncopyrighted`` (a filtered, copyright-stripped subset of the
Pile, not the exact Pile Pythia was trained on), or read from local Pile shards named in ``$STAGEWISE_PILE`` (paths separated by
``os.pathsep``, ``.jsonl.zst`` as the Pile ships them); the checkpoints and tokenizer come from
the Hugging Face hub, or its cache (``$HF_HOME``) with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from stagewise.book import book_device
from stagewise.book.cache import artifact_key, cache_dir, cached
from stagewise.lm import experiment, sources
from stagewise.influence import at_equal_travel
from stagewise.lm.experiment import LanguageModelRun, StepCheck, TokenDraws, TokenInfluenceConfig, branch_run
from stagewise.lm.sources import LanguageModelSource, LocalSource, PythiaSource, SourceUnavailable
from stagewise.lm.training import LMConfig
from stagewise.book.profiles import LM_SOURCE_ENV, LanguageModelSizes, Profile, get_profile

# The domain's LanguageModelRun, TokenInfluenceConfig and branch_run are importable from here too,
# but documented once, in stagewise.lm.
__all__ = ["PILE_ENV", "cached_run", "cached_token_draws", "lm_source", "step_check", "study_sizes"]

PILE_ENV = "STAGEWISE_PILE"
OFFLINE_HINT = (f"To build the book offline instead, use the local source: unset {LM_SOURCE_ENV} (or set "
                f"{LM_SOURCE_ENV}=local). To use Pythia without a network, fill the hub cache (HF_HOME) with its "
                f"revisions, set HF_HUB_OFFLINE=1, and name local Pile .jsonl.zst shards in {PILE_ENV}.")


def lm_source(profile: Profile | None = None) -> LanguageModelSource:
    """The source the profile (``$STAGEWISE_LM`` included) chooses for Chapters 5 and 6."""
    profile = profile or get_profile()
    if profile.lm_source == "local":
        return LocalSource()
    pile_files = tuple(p for p in os.environ.get(PILE_ENV, "").split(os.pathsep) if p.strip())
    return PythiaSource(repo=f"EleutherAI/{profile.lm_source}", steps=profile.pythia.analysed_steps,
                        pile_files=pile_files, documents=profile.pythia.documents)


def _check(source: LanguageModelSource) -> None:
    try:
        source.check_available()
    except SourceUnavailable as error:
        raise SourceUnavailable(f"{error}.\n{OFFLINE_HINT}") from None


def study_sizes(profile: Profile | None = None) -> LanguageModelSizes:
    """Chapter 5's sizes for the profile's source: the profile's ``lm`` for the local source;
    for Pythia, the profile's ``pythia`` study with the hub model's architecture (fails at once,
    saying what is missing, when Pythia cannot be reached)."""
    profile = profile or get_profile()
    source = lm_source(profile)
    if not source.published_checkpoints:
        return profile.lm
    _check(source)
    from transformers import AutoConfig

    hub = AutoConfig.from_pretrained(source.repo, revision=f"step{source.steps[-1]}", cache_dir=source.cache_dir)
    model = LMConfig(vocab_size=hub.vocab_size, hidden=hub.hidden_size, layers=hub.num_hidden_layers,
                     heads=hub.num_attention_heads, intermediate=hub.intermediate_size,
                     context=hub.max_position_embeddings, steps=max(source.steps),
                     batch_size=1024, checkpoint_interval=1000)  # Pythia's: 1024 sequences a step, a revision every 1000
    study = profile.pythia
    return LanguageModelSizes(
        study=replace(study.study, model=model), analysed_steps=study.analysed_steps,
        null_samples=profile.lm.null_samples,
        asserts_claims=False,  # the claims of the local run; Pythia's are asserted in their own section
    )


def _source_key(source: LanguageModelSource) -> dict:
    """What fixes the text and tokenizer of ``source`` (not its revisions, nor the hub cache)."""
    if isinstance(source, LocalSource):
        return {"name": source.name, **asdict(source)}
    files = [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in source.pile_files]
    return {"name": source.name, "repo": source.repo, "pile": source.pile if not files else files,
            "documents": source.documents, "seed": source.seed}


def cached_run(study: TokenInfluenceConfig, source: LanguageModelSource | None = None, *, train: bool = False,
                keep_states: bool = False, progress: bool = True) -> LanguageModelRun:
    """The run of ``study`` (a profile's ``LanguageModelSizes.study``, or any variation of it) on
    ``source`` (default: the profile's), kept in the book's cache and loaded on
    :func:`stagewise.book.book_device`.

    With a Pythia source the checkpoints are its hub revisions unless ``train``, in which case a
    model of ``study.model`` with Pythia's vocabulary is trained on the Pile (as the paper's
    App. D.2 does).  ``keep_states`` implies a trained run; see
    :func:`stagewise.lm.experiment.prepare_run`.
    """
    source = lm_source() if source is None else source
    _check(source)
    train = train or keep_states
    if train:
        study = replace(study, model=replace(study.model, vocab_size=source.vocab_size(study.model)))
    directory = cache_dir() / artifact_key("lm-source", _source_key(source), sources)
    return experiment.prepare_run(study, directory, source, train=train, progress=progress,
                                  keep_states=keep_states, device=book_device())


def _digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()


def cached_token_draws(run: LanguageModelRun, step: int, observables: torch.Tensor | None = None,
                sampling: torch.Tensor | None = None, progress: bool = True) -> TokenDraws:
    """:func:`stagewise.lm.experiment.token_draws`, cached: the kept draws ``.losses``
    ``(chains, kept draws, M·(L−1))`` with the burn-in, traces and verdict."""
    key = {"config": asdict(run.config), "step": step, "source": run.directory.name,
           "checkpoints": run.checkpoints.name,
           "observables": _digest(run.observable_ids if observables is None else observables),
           "sampling": _digest(run.sampling_ids if sampling is None else sampling)}
    return cached("lm-token-draws", key,
                  lambda: experiment.token_draws(run, step, observables, sampling, progress=progress),
                  experiment.token_draws)


def step_check(run: LanguageModelRun, step: int, membership: np.ndarray, progress: bool = True) -> StepCheck:
    """The calibration rule at checkpoint ``step``: the run's draws there (cached) against draws
    at half its step run twice as long (:func:`~stagewise.influence.at_equal_travel`), so that
    the chains travel as far (cached too, the same seeds and observables), compared by :func:`stagewise.lm.experiment.compare_steps` on the
    groups of ``membership`` ``(n, A)``.  Costs two more :func:`cached_token_draws` at ``step``."""
    sgld = run.config.sgld
    half = replace(run, config=replace(run.config, sgld=at_equal_travel(sgld, sgld.epsilon / 2)))
    return experiment.compare_steps(cached_token_draws(run, step, progress=progress),
                                    cached_token_draws(half, step, progress=progress), membership)
