"""The rendered book, as a reader sees it: build it (fast profile) and load the theory chapter
in headless Chromium, after MathJax has run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RAW_MATH = ("\\(", "\\)", "\\[", "\\]", "$$", "\\begin{", "\\frac", "\\operatorname")


def chromium() -> str:
    for name in (os.environ.get("STAGEWISE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("the rendering check needs Chromium: `apt-get install chromium` (or set STAGEWISE_CHROMIUM)")


class PageText(HTMLParser):
    """Visible text of a page (outside script/style), typeset math and images."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.math_containers = 0
        self.images: list[str] = []
        self.scripts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
            if tag == "script" and attrs.get("src"):
                self.scripts.append(attrs["src"])
        elif tag == "mjx-container":
            self.math_containers += 1
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, STAGEWISE_PROFILE="fast", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run(
        [
            "jupyter-book", "build", ".", "-W",
            "--config", str(ROOT / "_config.yml"),
            "--toc", str(ROOT / "_toc.yml"),
            "--path-output", str(out),
        ],
        cwd=ROOT / "book", env=env, check=True, capture_output=True, text=True,
    )
    return out / "_build" / "html"


def rendered(page: Path, tmp_path: Path) -> PageText:
    dom = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    parsed = PageText()
    parsed.feed(dom)
    return parsed


def test_theory_chapter_renders_math_and_figures(built_book, tmp_path):
    page = rendered(built_book / "theory.html", tmp_path)
    text = "".join(page.text)
    assert "Influence as a susceptibility" in text
    leftover = [marker for marker in RAW_MATH if marker in text]
    assert not leftover, f"raw LaTeX left untypeset: {leftover}"
    assert page.math_containers >= 30, f"only {page.math_containers} typeset formulas"
    assert any("_static/mathjax" in src for src in page.scripts), "MathJax must be served locally"
    assert not any(src.startswith(("http:", "https:", "//")) for src in page.scripts)
    figures = [src for src in page.images if "_images/" in src]
    assert len(figures) >= 3, f"expected the chapter's figures, found {figures}"
    for src in figures:
        assert (built_book / src).stat().st_size > 10_000, f"figure {src} is empty"
