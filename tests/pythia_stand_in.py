"""Offline stand-ins for Pythia-14m and the Pile, in the formats the real ones ship in.

* the Pile: ``.jsonl.zst`` shards of ``{"text": …, "meta": {"pile_set_name": …}}`` rows (here:
  small standard-library files as documents);
* Pythia: a Hugging Face hub cache folder ``models--EleutherAI--pythia-14m`` whose ``refs/step<N>``
  name snapshots holding a GPT-NeoX ``config.json``, half-precision ``model.safetensors`` (as
  Pythia's hub weights are stored) and a GPT-NeoX byte-level BPE tokenizer.  The weights are a
  tiny GPT-NeoX trained briefly on the stand-in text, so that later revisions predict it better.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import zstandard
from tokenizers import ByteLevelBPETokenizer
from transformers import GPTNeoXTokenizerFast

from stagewise.lm.checkpoints import LocalCheckpoints
from stagewise.lm.corpus import pile_corpus
from stagewise.lm.training import LMConfig, token_stream, train_language_model

STAND_IN = LMConfig(vocab_size=512, hidden=32, layers=2, heads=4, intermediate=64, context=64, steps=150,
                    batch_size=8, warmup=10, learning_rate=3e-3, checkpoint_interval=50)


def build_pile(directory: Path, documents: int = 200) -> Path:
    """A ``.jsonl.zst`` shard of ``documents`` small standard-library files; returns its path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.glob("*.py")) if 1_000 < p.stat().st_size < 12_000][:documents]
    rows = "".join(json.dumps({"text": p.read_text(encoding="utf-8", errors="replace"),
                               "meta": {"pile_set_name": "Github"}}) + "\n" for p in files)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "00.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    return path


def build_hub_cache(cache: Path, pile: Path, revisions: tuple[int, ...], repo: str = "EleutherAI/pythia-14m",
                    work: Path | None = None) -> Path:
    """The hub cache folder of ``repo`` with one snapshot per revision ``step<N>``; returns it.

    The revisions hold checkpoints of one short training run, in order (step 0 first)."""
    corpus = pile_corpus("json", documents=10_000, data_files=[str(pile)])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus.train, vocab_size=STAND_IN.vocab_size - 8, min_frequency=2,
                            special_tokens=["<|endoftext|>", "<|padding|>"], show_progress=False)
    tokenizer = GPTNeoXTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|padding|>")
    work = work or cache.parent / "stand-in-training"
    run = LocalCheckpoints(train_language_model(STAND_IN, token_stream(corpus.train, tokenizer), work, progress=False))
    trained = [0, *run.steps[len(run.steps) - len(revisions) + 1:]]  # the first and the last few
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    for revision, step in zip(revisions, trained):
        commit = hashlib.sha1(f"{repo}@step{revision}".encode()).hexdigest()
        snapshot = folder / "snapshots" / commit
        run.load(step).half().save_pretrained(snapshot)  # Pythia's hub weights are float16
        tokenizer.save_pretrained(snapshot)
        (folder / "refs" / f"step{revision}").write_text(commit)
    return folder
