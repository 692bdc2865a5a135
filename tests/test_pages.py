"""The chapter pages read without horizontal scrolling: no line of a code cell is longer than
100 characters (the page's code block shows about that many)."""

from __future__ import annotations

import pathlib

import pytest

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
LIMIT = 100


def code_cell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a ```{code-cell} block of a MyST page."""
    found, inside = [], False
    for number, line in enumerate(text.split("\n"), start=1):
        if not inside and line.startswith("```{code-cell}"):
            inside = True
        elif inside and line.startswith("```"):
            inside = False
        elif inside:
            found.append((number, line))
    return found


def long_lines(page: pathlib.Path) -> list[str]:
    return [f"{page.name}:{n}: {len(line)} characters"
            for n, line in code_cell_lines(page.read_text()) if len(line) > LIMIT]


def test_code_cell_lines_are_found(tmp_path):
    text = "prose " + "x" * 200 + "\n```{code-cell} ipython3\n" + "y" * 101 + "\nz = 1\n```\n"
    assert code_cell_lines(text) == [(3, "y" * 101), (4, "z = 1")]
    page = tmp_path / "long_line_page.md"
    page.write_text(text)
    assert long_lines(page) == ["long_line_page.md:3: 101 characters"]


@pytest.mark.parametrize("page", sorted(BOOK.glob("*.md")), ids=lambda p: p.stem)
def test_code_lines_fit_the_page(page):
    assert not long_lines(page), "\n".join(long_lines(page))
