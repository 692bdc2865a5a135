"""Text corpora with fixed, seeded train / validation / observable splits.

Offline default: the standard-library sources of the running interpreter (code, docstrings
and comments; about 30 MB of text), present wherever Python is.  Alternatives: any folder of
text files, or the first documents of the Pile through ``datasets`` (streamed from the hub with a
network, or read from local ``.jsonl.zst`` shards).
Documents are assigned to splits by a seeded hash of their name, so a split never changes when
documents are added elsewhere.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Corpus:
    """Documents by split; each split is a tuple of texts in a fixed order."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    observable: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for name in ("train", "validation", "observable"):
            if not getattr(self, name):
                raise ValueError(f"the {name} split of {self.source} is empty; use more documents")


def split_documents(documents: Mapping[str, str], source: str, seed: int = 0,
                    validation: float = 0.05, observable: float = 0.05) -> Corpus:
    """Split named documents by a seeded hash of their names."""
    if not (0 < validation < 1 and 0 < observable < 1 and validation + observable < 1):
        raise ValueError("validation and observable fractions must be positive and sum below 1")
    splits: dict[str, list[str]] = {"train": [], "validation": [], "observable": []}
    for name in sorted(documents):
        text = documents[name]
        if not text.strip():
            continue
        u = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12
        split = "validation" if u < validation else "observable" if u < validation + observable else "train"
        splits[split].append(text)
    return Corpus(tuple(splits["train"]), tuple(splits["validation"]), tuple(splits["observable"]), source)


def folder_corpus(folder: str | Path, pattern: str = "**/*.txt", seed: int = 0) -> Corpus:
    """Every file matching ``pattern`` under ``folder``, read as UTF-8 (undecodable bytes replaced)."""
    root = Path(folder)
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files match {pattern!r} under {root}")
    documents = {str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace") for p in files}
    return split_documents(documents, f"{root} ({pattern})", seed)


def stdlib_corpus(seed: int = 0) -> Corpus:
    """The Python sources of the running interpreter's standard library (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    documents = {str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace") for p in files}
    return split_documents(documents, f"Python {sysconfig.get_python_version()} standard library", seed)


def pile_corpus(dataset: str = "monology/pile-uncopyrighted", documents: int = 20_000, seed: int = 0,
                data_files: str | list[str] | tuple[str, ...] | None = None) -> Corpus:
    """The first ``documents`` documents of a Pile-style data set (a ``text`` field per row),
    streamed with ``datasets`` and split by a seeded hash of their position.

    The default, ``monology/pile-uncopyrighted``, is a *filtered* Pile: the Pile with its
    subsets under copyright removed, not the exact corpus Pythia was trained on; its text is
    Pile-like, and statistics of it are not those of Pythia's training data.  The Pile itself, as local shards, is ``"json"`` with
    ``data_files``.

    ``dataset`` is a hub name (needs a network, or the ``datasets`` cache), or ``"json"`` with
    local ``data_files``: the Pile's own ``.jsonl.zst`` shards (decompressed with
    ``zstandard``) or plain ``.jsonl``.  The Pile's shards on the hub are ``.jsonl.zst`` too.
    """
    from datasets import load_dataset  # optional dependency: pip install stagewise[pile]

    files = [data_files] if isinstance(data_files, str) else list(data_files or [])
    if dataset != "json" or any(str(f).endswith(".zst") for f in files):
        try:
            import zstandard  # noqa: F401  (datasets needs it for .zst files, and only says so mid-stream)
        except ImportError:
            raise ImportError("reading the Pile's .jsonl.zst files needs the zstandard package: "
                              "pip install zstandard (pinned in requirements.txt)") from None
    missing = [str(f) for f in files if dataset == "json" and not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"Pile files not found: {', '.join(missing)}")
    stream = load_dataset(dataset, data_files=files or None, split="train", streaming=True)
    texts = {}
    for k, row in enumerate(stream):
        if k >= documents:
            break
        texts[f"{k:09d}"] = row["text"]
    return split_documents(texts, f"{dataset if not files else ', '.join(Path(f).name for f in files)} "
                                  f"({len(texts)} documents)", seed)
