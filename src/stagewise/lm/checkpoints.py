"""One interface over checkpoints: a local training run, or Pythia's hub revisions.

Both give the training steps they hold and load a ``GPTNeoXForCausalLM`` at a step, in float32
on the device they were given (the CPU by default), whatever precision the weights are stored
in: Pythia's hub weights are half precision, where SGLD steps of ε = 1e-6 round away and the
RMSprop preconditioner underflows.  Pythia's checkpoints are the revisions ``step0, step1, step2,
step4, …, step512, step1000, step2000, …, step143000`` of ``EleutherAI/pythia-*`` on the Hugging
Face hub; loading them needs a network, or a local hub cache that already holds them (with
``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # transformers loads in seconds: only when a checkpoint is loaded
    from transformers import GPTNeoXForCausalLM


PYTHIA_STEPS: tuple[int, ...] = (0, *(2**k for k in range(10)), *range(1000, 143_001, 1000))


def _model_class() -> type[GPTNeoXForCausalLM]:
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per checkpoint load is noise in a book
    return GPTNeoXForCausalLM


def _float32_on(model: GPTNeoXForCausalLM, device: str | torch.device) -> GPTNeoXForCausalLM:
    return model.to(device=device, dtype=torch.float32)


class LocalCheckpoints:
    """The ``step{N}`` folders of a run saved by :func:`stagewise.lm.training.train_language_model`."""

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu") -> None:
        self.directory = Path(directory)
        self.device = torch.device(device)
        found = [re.fullmatch(r"step(\d+)", p.name) for p in self.directory.iterdir() if p.is_dir()]
        self.steps = sorted(int(m.group(1)) for m in found if m)
        if not self.steps:
            raise FileNotFoundError(f"no step<N> checkpoints in {self.directory}")

    @property
    def name(self) -> str:
        """Names the run (its folder) in cache keys."""
        return self.directory.name

    def load(self, step: int) -> GPTNeoXForCausalLM:
        """The model at ``step``, float32, on :attr:`device`."""
        if step not in self.steps:
            raise KeyError(f"no checkpoint at step {step}; available: {self.steps}")
        model = _model_class().from_pretrained(self.directory / f"step{step}", dtype=torch.float32,
                                                   attn_implementation="eager")
        return _float32_on(model, self.device)


class PythiaCheckpoints:
    """Revisions of a Pythia model on the hub, e.g. ``PythiaCheckpoints("EleutherAI/pythia-14m")``.

    ``steps`` are the revisions this object offers (by default all 154); ``cache_dir`` is the
    Hugging Face hub cache (default: ``$HF_HOME/hub``)."""

    def __init__(self, repo: str = "EleutherAI/pythia-14m", steps: tuple[int, ...] = PYTHIA_STEPS,
                 cache_dir: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        unknown = sorted(set(steps) - set(PYTHIA_STEPS))
        if unknown:
            raise ValueError(f"Pythia has no revisions step{unknown[0]}…; its steps are 0, 1, 2, 4, …, 512 "
                             f"and every 1000 up to 143000")
        self.repo = repo
        self.steps = sorted(steps)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.device = torch.device(device)

    @property
    def name(self) -> str:
        """Names the checkpoints (the hub repository) in cache keys."""
        return self.repo

    def load(self, step: int) -> GPTNeoXForCausalLM:
        """The revision ``step{step}``, converted to float32, on :attr:`device`."""
        if step not in self.steps:
            raise KeyError(f"{self.repo} has no revision step{step} among {self.steps}")
        model = _model_class().from_pretrained(self.repo, revision=f"step{step}", cache_dir=self.cache_dir,
                                                   dtype=torch.float32, attn_implementation="eager")
        return _float32_on(model, self.device)
