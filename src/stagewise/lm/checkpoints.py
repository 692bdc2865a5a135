"""One interface over checkpoints: a local training run, or Pythia's hub revisions.

Both give the training steps they hold and load a ``GPTNeoXForCausalLM`` at a step.  Pythia's
checkpoints are the revisions ``step0, step1, step2, step4, …, step512, step1000, step2000, …,
step143000`` of ``EleutherAI/pythia-*`` on the Hugging Face hub; loading them needs a network
(or a local hub cache that already holds them, with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import GPTNeoXForCausalLM
from transformers.utils import logging as transformers_logging

transformers_logging.disable_progress_bar()  # one bar per checkpoint load is noise in a book

PYTHIA_STEPS: tuple[int, ...] = (0, *(2**k for k in range(10)), *range(1000, 143_001, 1000))


class LocalCheckpoints:
    """The ``step{N}`` folders of a run saved by :func:`stagewise.lm.training.train_language_model`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        found = [re.fullmatch(r"step(\d+)", p.name) for p in self.directory.iterdir() if p.is_dir()]
        self.steps = sorted(int(m.group(1)) for m in found if m)
        if not self.steps:
            raise FileNotFoundError(f"no step<N> checkpoints in {self.directory}")

    def load(self, step: int) -> GPTNeoXForCausalLM:
        if step not in self.steps:
            raise KeyError(f"no checkpoint at step {step}; available: {self.steps}")
        return GPTNeoXForCausalLM.from_pretrained(self.directory / f"step{step}", attn_implementation="eager")


class PythiaCheckpoints:
    """Revisions of a Pythia model on the hub, e.g. ``PythiaCheckpoints("EleutherAI/pythia-14m")``."""

    def __init__(self, repo: str = "EleutherAI/pythia-14m", steps: tuple[int, ...] = PYTHIA_STEPS,
                 cache_dir: str | Path | None = None) -> None:
        self.repo = repo
        self.steps = sorted(steps)
        self.cache_dir = cache_dir

    def load(self, step: int) -> GPTNeoXForCausalLM:
        if step not in self.steps:
            raise KeyError(f"{self.repo} has no revision step{step}")
        return GPTNeoXForCausalLM.from_pretrained(self.repo, revision=f"step{step}", cache_dir=self.cache_dir,
                                                  attn_implementation="eager")
