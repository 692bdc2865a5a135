"""Progress bars that reach the person waiting, even from inside a book build.

The domain's loops draw their bars through :func:`stagewise._progress.progress_bar`; importing
:mod:`stagewise.book` installs :func:`progress` as its factory.  A chapter executed by ``jupyter-book build`` runs in a Jupyter kernel whose stderr never
reaches the console, so a plain ``tqdm`` bar is invisible there (and would clutter the rendered
page).  :func:`progress` returns a ``tqdm`` bar whose destination is chosen by the environment
variable ``STAGEWISE_PROGRESS``:

* unset: the usual ``tqdm.auto`` bar on stderr (a terminal, or a notebook widget);
* a path (``/dev/tty``, or a log file that ``make book`` follows with ``tail -f``): the bar is
  appended to that file, so it shows on the build's console and never in the page.

:func:`announce` writes one line to the same place, for messages such as "chapter started".

>>> from stagewise.book.progress import progress
>>> sum(progress(range(3), disable=True))
3
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm as tqdm_auto

PROGRESS_ENV = "STAGEWISE_PROGRESS"
"""Environment variable naming the file that progress is written to (unset: stderr)."""

T = TypeVar("T")

_streams: dict[str, IO[str]] = {}


@atexit.register
def _close_streams() -> None:
    for stream in _streams.values():
        stream.close()


def progress_stream() -> IO[str] | None:
    """The file named by ``$STAGEWISE_PROGRESS``, opened once per process for appending;
    ``None`` when the variable is unset or empty.  A path that cannot be opened raises
    ``OSError`` naming the variable."""
    path = os.environ.get(PROGRESS_ENV, "").strip()
    if not path:
        return None
    if path not in _streams:
        try:
            _streams[path] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)
        except OSError as error:
            raise OSError(f"cannot write progress to {path!r} (from ${PROGRESS_ENV}): {error}") from error
    return _streams[path]


def progress(iterable: Iterable[T] | None = None, **tqdm_kwargs: Any) -> tqdm_std:
    """A ``tqdm`` progress bar over ``iterable`` (or a manual one, with ``total=``).

    Takes every ``tqdm`` keyword (``desc``, ``total``, ``disable``, ``leave``, …).  With
    ``$STAGEWISE_PROGRESS`` set the bar is written to that file, refreshed at most every
    ``mininterval`` seconds (default 1 s, so a log file stays small); otherwise it is
    ``tqdm.auto.tqdm`` on stderr.
    """
    stream = progress_stream()
    if stream is None:
        return tqdm_auto(iterable, **tqdm_kwargs)
    tqdm_kwargs.setdefault("mininterval", 1.0)
    tqdm_kwargs.setdefault("ncols", 100)
    tqdm_kwargs.setdefault("ascii", False)
    return tqdm_std(iterable, file=stream, **tqdm_kwargs)


def announce(message: str) -> None:
    """Write one line to the progress destination (``$STAGEWISE_PROGRESS``, else stderr)."""
    stream = progress_stream() or sys.stderr
    print(message, file=stream, flush=True)
