"""Let nbval run the book's chapters, which are MyST-Markdown notebooks (jupytext).

nbval collects only ``.ipynb`` files; this collector reads each ``book/*.md`` that has a
``kernelspec`` header with jupytext and hands the notebook to nbval.  Text notebooks carry no
stored outputs, so nbval runs in ``--nbval-lax`` mode: a chapter fails when a cell raises, and
each chapter states its claims as ``assert`` statements.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import jupytext
import nbformat
import pytest
from nbval.plugin import IPyNbFile

BOOK = Path(__file__).parent / "book"

# Tests run the small profile unless the caller chose one.
os.environ.setdefault("STAGEWISE_PROFILE", "fast")


def is_chapter(path: Path) -> bool:
    """A Markdown file in book/ with a jupytext kernelspec header is an executable chapter."""
    if path.suffix != ".md" or path.parent != BOOK:
        return False
    head = path.read_text(encoding="utf-8")[:1000]
    return head.startswith("---") and "kernelspec:" in head


class JupytextNotebook(IPyNbFile):
    """nbval's notebook collector, reading the notebook with jupytext instead of nbformat."""

    def collect(self):
        def read(path, as_version):
            return nbformat.convert(jupytext.read(path), as_version)

        with mock.patch.object(nbformat, "read", read):
            yield from super().collect()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    option = parent.config.option
    if (option.nbval or option.nbval_lax) and is_chapter(file_path):
        return JupytextNotebook.from_parent(parent, path=file_path)
    return None
