"""What every chapter page does besides its science: glue values for the prose, and the opening
shared by the two language-model chapters."""

from __future__ import annotations

from typing import Any

import numpy as np
from myst_nb import glue

from stagewise.book.plotting import use_style


def glue_value(name: str, value: Any) -> None:
    """Glue ``value`` for the prose under ``name`` without showing it in the cell's output;
    numpy scalars are glued as Python numbers, so the prose's format specs apply."""
    glue(name, value.item() if isinstance(value, np.generic) else value, display=False)


def start_lm_chapter(source: Any) -> None:
    """The opening of a language-model chapter: the book's figure style, and the page's source
    (the local run or Pythia-14m, :func:`stagewise.book.lm.lm_source`) glued as ``lm_source``."""
    use_style()
    glue("lm_source", source.describe(), display=False)
