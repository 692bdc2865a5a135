"""Where a language-model study's text, tokenizer and checkpoints come from, chosen as one.

A *source* fixes the three together, so a model is never fed ids from another tokenizer:

:class:`LocalSource` (the offline default)
    the Python standard library's sources as text, a byte-level BPE trained on them, and models
    of Pythia-14m's architecture trained from scratch on that text;
:class:`PythiaSource`
    Pile text (by default streamed from the hub as ``monology/pile-uncopyrighted``, a filtered,
    copyright-stripped subset of the Pile rather than the exact Pile Pythia was trained on; or
    local ``.jsonl.zst`` shards of the Pile), Pythia's own tokenizer and
    Pythia's published hub revisions ``step0 … step143000``; a model can also be trained from
    scratch on this text and tokenizer, as the paper's App. D.2 does.

Everything a source builds (tokenizer, token streams, trained runs) is written under a
directory its caller names; hub files go to the Hugging Face cache, as the hub client does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from stagewise._files import exclusive_lock, written_atomically
from stagewise.lm.checkpoints import PYTHIA_STEPS, LocalCheckpoints, PythiaCheckpoints
from stagewise.lm.corpus import Corpus, pile_corpus, stdlib_corpus
from stagewise.lm.tokenizer import load_tokenizer, train_bpe_tokenizer
from stagewise.lm.training import LMConfig, token_stream, train_language_model


@dataclass(frozen=True)
class LocalSource:
    """Standard-library text, a byte-level BPE of the model's vocabulary size trained on its
    first ``tokenizer_documents`` training documents, and models trained here."""

    tokenizer_documents: int = 400
    seed: int = 0
    """Seeds the split of the documents into training, validation and observable text."""
    name: ClassVar[str] = "local"
    published_checkpoints: ClassVar[bool] = False
    """Its models are always trained here."""

    def describe(self) -> str:
        return "local: a Pythia-architecture model trained here on the Python standard library, with its own BPE"

    def check_available(self) -> None:
        """Everything of the local source is made here: always available."""

    def vocab_size(self, config: LMConfig) -> int:
        """The vocabulary of its models: ``config``'s (the BPE is trained to that size)."""
        return config.vocab_size

    def corpus(self) -> Corpus:
        """The standard library's text, split into training, validation and observable documents."""
        return stdlib_corpus(self.seed)

    def text_directory(self, vocab_size: int, directory: Path) -> Path:
        """Where the BPE of ``vocab_size`` tokens and its token streams are kept under ``directory``."""
        return directory / f"bpe-{vocab_size}"

    def tokenizer(self, vocab_size: int, directory: Path):
        """A BPE of ``vocab_size`` tokens trained on the corpus, kept in :meth:`text_directory`."""
        saved = self.text_directory(vocab_size, directory) / "tokenizer"
        with exclusive_lock(saved.with_name("tokenizer.lock")):   # another process may be training it
            if not (saved / "tokenizer.json").exists():
                train_bpe_tokenizer(self.corpus().train[: self.tokenizer_documents], vocab_size, saved)
        return load_tokenizer(saved)

    def checkpoints(self, model: LMConfig, train_tokens: torch.Tensor, directory: Path, train: bool = False,
                    progress: bool = True, keep_states: bool = False,
                    device: str | torch.device = "cpu") -> LocalCheckpoints:
        """A model ``model`` trained (or resumed) in :func:`model_directory` on ``train_tokens``
        (``train`` is implied: the local source has no published checkpoints)."""
        return trained_checkpoints(model, train_tokens, directory, progress, keep_states, device)


@dataclass(frozen=True)
class PythiaSource:
    """A Pythia model's hub revisions, its tokenizer, and the first ``documents`` documents of
    Pile text: the hub data set ``pile`` streamed (by default ``monology/pile-uncopyrighted``,
    a filtered subset of the Pile with its copyrighted parts removed, *not* the exact Pile
    Pythia was trained on), or the local shards ``pile_files`` (``.jsonl.zst`` as the Pile
    ships them, or ``.jsonl``: the real Pile when one has it)."""

    repo: str = "EleutherAI/pythia-14m"
    steps: tuple[int, ...] = PYTHIA_STEPS
    """The revisions the study uses (loading one fetches it; fetching all 154 is not needed)."""
    pile: str = "monology/pile-uncopyrighted"
    pile_files: tuple[str, ...] = ()
    documents: int = 2000
    seed: int = 0
    cache_dir: str | None = None
    """The Hugging Face hub cache (default: the hub client's, ``$HF_HOME/hub``)."""
    published_checkpoints: ClassVar[bool] = True
    """Its checkpoints are the hub revisions, unless a study asks to train."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a Pythia source needs at least one revision step")
        PythiaCheckpoints(self.repo, self.steps)  # validates the steps

    @property
    def name(self) -> str:
        return self.repo.rpartition("/")[2]

    def describe(self) -> str:
        if self.pile_files:
            text = f"the Pile shards {', '.join(Path(f).name for f in self.pile_files)}"
        elif self.pile == "monology/pile-uncopyrighted":
            text = f"{self.pile}, a copyright-filtered subset of the Pile, not the exact Pile Pythia saw"
        else:
            text = self.pile
        return f"{self.name}: {self.repo}'s hub revisions and tokenizer, {self.documents} documents of {text}"

    def check_available(self) -> None:
        """Raise :class:`SourceUnavailable`, naming every missing piece at once, when the
        tokenizer, a revision or the text can be neither found locally nor fetched.  Checks only
        small files (each revision's ``config.json``), before anything long starts, and asks the
        hub only when something is not in its local cache."""
        _check_pythia(self)

    def vocab_size(self, config: LMConfig) -> int:
        """The hub model's vocabulary (50 304 for Pythia), whatever ``config`` says."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.repo, revision=f"step{self.steps[-1]}",
                                          cache_dir=self.cache_dir).vocab_size

    def corpus(self) -> Corpus:
        """The first ``documents`` Pile documents, split into training, validation and observable text."""
        if self.pile_files:
            return pile_corpus("json", self.documents, self.seed, data_files=list(self.pile_files))
        return pile_corpus(self.pile, self.documents, self.seed)

    def text_directory(self, vocab_size: int, directory: Path) -> Path:
        """Where the token streams are kept under ``directory`` (Pythia's tokenizer is fixed)."""
        return directory / "pythia-tokens"

    def tokenizer(self, vocab_size: int, directory: Path):
        """Pythia's tokenizer, from the hub (or its cache)."""
        return load_tokenizer(self.repo, revision=f"step{self.steps[-1]}", cache_dir=self.cache_dir)

    def checkpoints(self, model: LMConfig, train_tokens: torch.Tensor, directory: Path, train: bool = False,
                    progress: bool = True, keep_states: bool = False,
                    device: str | torch.device = "cpu") -> LocalCheckpoints | PythiaCheckpoints:
        """Pythia's published revisions, or with ``train`` a model ``model`` trained (or resumed)
        in :func:`model_directory` on ``train_tokens``, as the paper's App. D.2 does."""
        if not train:
            return PythiaCheckpoints(self.repo, self.steps, self.cache_dir, device=device)
        return trained_checkpoints(model, train_tokens, directory, progress, keep_states, device)


LanguageModelSource = LocalSource | PythiaSource
"""A source: ``name``, ``describe()``, ``check_available()``, ``vocab_size(config)``, ``corpus()``,
``text_directory(vocab_size, directory)``, ``tokenizer(vocab_size, directory)`` and
``checkpoints(model, train_tokens, directory, …)``, and ``published_checkpoints``; callers never
test which kind it is."""


class SourceUnavailable(RuntimeError):
    """A source's files cannot be reached (no network and no local copy)."""


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable() -> bool:
    """One request to the hub, without the client's retries (which take minutes offline)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)
    except Exception:  # no network, no DNS, a proxy refusing: all mean "unreachable"
        return False
    return True


def _check_pythia(source: PythiaSource) -> None:
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    files = [("tokenizer.json", source.steps[-1])] + [("config.json", step) for step in source.steps]
    uncached = [(name, step) for name, step in files
                if not isinstance(try_to_load_from_cache(source.repo, name, cache_dir=source.cache_dir,
                                                         revision=f"step{step}"), str)]
    reachable = not _offline() and (bool(uncached) or not source.pile_files) and _hub_reachable()
    missing, absent = [], []
    for name, step in uncached:
        if reachable:
            try:
                hf_hub_download(source.repo, name, revision=f"step{step}", cache_dir=source.cache_dir)
                continue
            except Exception as error:  # unknown repository or revision
                missing.append(f"{source.repo}@step{step}/{name} ({type(error).__name__})")
        else:
            absent.append(f"step{step}/{name}")
    if absent:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the hub is unreachable"
        missing.append(f"{source.repo} files not in the hub cache ({why}): {', '.join(absent)}")
    if source.pile_files:
        missing += [f"Pile file {f}" for f in source.pile_files if not Path(f).exists()]
    elif not reachable:
        missing.append(f"the Pile ({source.pile}): streaming it needs the hub; or name local .jsonl.zst shards")
    else:
        try:
            HfApi().dataset_info(source.pile, timeout=10)
        except Exception as error:
            missing.append(f"the Pile data set {source.pile} ({type(error).__name__})")
    if not source.pile_files or any(f.endswith(".zst") for f in source.pile_files):
        try:
            import zstandard  # noqa: F401
        except ImportError:
            missing.append("the zstandard package (the Pile is .jsonl.zst): pip install zstandard")
    if missing:
        raise SourceUnavailable(f"the {source.name} source cannot be reached, with no network and no local copy; "
                                f"missing: " + "; ".join(missing))


def source_streams(source: LanguageModelSource, tokenizer, vocab_size: int, directory: Path) -> dict[str, torch.Tensor]:
    """The training and observable text of ``source`` as 1-D token-id tensors, kept in
    the source's ``text_directory`` (the Pile is read once)."""
    path = source.text_directory(vocab_size, directory) / "streams.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_suffix(".lock")):   # another process may be tokenizing the same text
        if path.exists():
            return torch.load(path)
        corpus = source.corpus()
        streams = {"train": token_stream(corpus.train, tokenizer),
                   "observable": token_stream(corpus.observable, tokenizer)}
        with written_atomically(path) as temporary:
            torch.save(streams, temporary)
    return streams


def model_directory(directory: Path, model: LMConfig) -> Path:
    """Where a model with configuration ``model`` trains on the text of the source kept in
    ``directory``."""
    digest = hashlib.sha256(json.dumps(asdict(model), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return directory / f"run-{digest}"


def trained_checkpoints(model: LMConfig, train_tokens: torch.Tensor, directory: Path, progress: bool = True,
                        keep_states: bool = False, device: str | torch.device = "cpu") -> LocalCheckpoints:
    """A model ``model`` trained (or resumed) in :func:`model_directory` on ``train_tokens``."""
    run = model_directory(directory, model)
    if not (run / "complete").exists():
        train_language_model(model, train_tokens, run, progress=progress, keep_states=keep_states, device=device)
    return LocalCheckpoints(run, device=device)
