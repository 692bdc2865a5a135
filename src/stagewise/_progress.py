"""Progress bars of the domain's long loops (training, sampling, retraining).

Every long loop of the library takes ``progress: bool`` and, when true, wraps itself in
:func:`progress_bar`: a ``tqdm.auto`` bar on stderr (a terminal, or a notebook widget).  A program
that wants the bars elsewhere installs its own factory with :func:`set_progress_factory`; the book
does (:mod:`stagewise.book.progress`) so that bars of chapters executed in Jupyter kernels reach
the build's console and never the rendered page.

>>> sum(progress_bar(range(3), disable=True))
3
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

ProgressFactory = Callable[..., tqdm]
"""Takes ``tqdm``'s arguments (an iterable or ``total=``, ``desc``, ``disable``, …), returns a bar."""

_factory: ProgressFactory = tqdm


def set_progress_factory(factory: ProgressFactory | None) -> None:
    """Make :func:`progress_bar` call ``factory``; ``None`` restores ``tqdm.auto.tqdm``."""
    global _factory
    _factory = tqdm if factory is None else factory


def progress_bar(iterable: Iterable[Any] | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A ``tqdm`` progress bar over ``iterable`` (or a manual one, with ``total=``), made by the
    installed factory; takes every ``tqdm`` keyword."""
    return _factory(iterable, **tqdm_kwargs)
