"""Tokenizers: a byte-level BPE trained locally, or a hub tokenizer such as Pythia's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # transformers loads in seconds: only when a tokenizer is made or loaded
    from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, directory: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (as GPT-2 and Pythia use) and save it in the transformers format
    in ``directory``, so that ``AutoTokenizer.from_pretrained(directory)`` loads it."""
    if vocab_size < 257:
        raise ValueError(f"a byte-level BPE needs vocab_size > 256, got {vocab_size}")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                        unk_token=END_OF_TEXT)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def load_tokenizer(name_or_path: str | Path, revision: str | None = None,
                   cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A saved tokenizer directory, or a hub name such as ``"EleutherAI/pythia-14m"`` at a
    ``revision`` (network, or the hub cache ``cache_dir`` with ``HF_HUB_OFFLINE=1``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path), revision=revision,
                                         cache_dir=None if cache_dir is None else str(cache_dir))


def token_strings(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> list[str]:
    """The text of each token on its own, leading spaces included."""
    return [tokenizer.decode([int(i)]) for i in ids]
