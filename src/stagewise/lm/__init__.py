"""Language models (paper §4, App. D): per-token influence between structural token classes.

Nouns: a :class:`Corpus` (standard-library sources offline, any folder, or the Pile), a
tokenizer (:func:`train_bpe_tokenizer` locally or :func:`load_tokenizer` from the hub), an
:class:`LMConfig` for a Pythia-architecture model trained by :func:`train_language_model`,
checkpoints read through :class:`LocalCheckpoints` or :class:`PythiaCheckpoints` (float32 on a
device), a source that fixes text, tokenizer and checkpoints together (:class:`LocalSource`, the
offline default, or :class:`PythiaSource`), token classes from :func:`classify_tokens`, and a
:class:`TokenInfluenceConfig` whose :func:`prepare_run` and :func:`token_draws` give per-token
losses at the SGLD draws kept after the warm-up (a :class:`TokenDraws`, judged by
:func:`stationary_draws`; :func:`compare_steps` checks the step).  Nothing here caches or reads a profile; :mod:`stagewise.book.lm`
does that for the book.
"""

from stagewise.lm.checkpoints import PYTHIA_STEPS, LocalCheckpoints, PythiaCheckpoints
from stagewise.lm.classes import CLASSES, classify_tokens
from stagewise.lm.corpus import Corpus, folder_corpus, pile_corpus, stdlib_corpus
from stagewise.lm.experiment import (
    PAPER_TABLE_2, LanguageModelRun, StepCheck, TokenDraws, TokenInfluenceConfig, TokenTargets, branch_run, compare_steps,
    prepare_run, stationary_draws, token_draws, token_targets,
)
from stagewise.lm.sources import LocalSource, PythiaSource, SourceUnavailable
from stagewise.lm.tokenizer import load_tokenizer, token_strings, train_bpe_tokenizer
from stagewise.lm.training import LMConfig, pythia_architecture, token_losses, train_language_model

__all__ = [
    "CLASSES", "PAPER_TABLE_2", "PYTHIA_STEPS", "Corpus", "LMConfig", "LanguageModelRun", "LocalCheckpoints", "LocalSource",
    "PythiaCheckpoints", "PythiaSource", "SourceUnavailable", "StepCheck", "TokenDraws", "TokenInfluenceConfig", "TokenTargets",
    "branch_run", "classify_tokens", "compare_steps", "folder_corpus", "load_tokenizer", "pile_corpus", "prepare_run", "pythia_architecture",
    "stationary_draws", "stdlib_corpus", "token_draws", "token_losses", "token_targets", "token_strings", "train_bpe_tokenizer", "train_language_model",
]
