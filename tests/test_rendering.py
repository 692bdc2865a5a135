"""The rendered book, as a reader sees it: build it (fast profile) and load its pages in headless
Chromium, after MathJax and the page scripts have run: typeset math, figures with numbered
captions, numbers glued from the run, citations that link to the references, solutions hidden
until opened, and the chapter offered for download as a notebook."""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import git_status

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
    """Visible text of a page (outside script/style), typeset math, images, figure captions,
    glued values, links, and the text inside solutions that are hidden (collapsed)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.math_containers = 0
        self.images: list[str] = []
        self.scripts: list[str] = []
        self.links: list[tuple[str, str]] = []   # (href, class)
        self.captions: list[str] = []
        self.glued: list[str] = []
        self.hidden_solution_text: list[str] = []
        self._skip = 0
        self._divs: list[bool] = []              # per open <div>: is it a collapsed solution?
        self._collect: list[tuple[str, list[str]]] = []   # (closing tag, sink) being collected

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div":
            self._divs.append("solution" in classes and "toggle-hidden" in classes)
        elif tag == "a":
            self.links.append((attrs.get("href", ""), " ".join(classes)))
        elif tag == "figcaption":
            self._collect.append(("figcaption", self.captions))
            self.captions.append("")
        elif tag == "span" and "pasted-text" in classes:
            self._collect.append(("span", self.glued))
            self.glued.append("")
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
        elif tag == "div" and self._divs:
            self._divs.pop()
        if self._collect and self._collect[-1][0] == tag:
            self._collect.pop()

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        for _, sink in self._collect:
            sink[-1] += data
        if any(self._divs):
            self.hidden_solution_text.append(data)


pytestmark = pytest.mark.uses_book
BUILD = ROOT / "_build" / "test"


@pytest.fixture(scope="module")
def built_book(executed_pages) -> Path:
    """The book built (fast profile) from the pages this session executed, as ``make book``
    builds it (:func:`stagewise.book.cli.build_from_executed`): nothing runs twice."""
    from stagewise.book.cli import build_from_executed

    out = BUILD / "book"
    shutil.rmtree(out, ignore_errors=True)
    try:
        build = build_from_executed({name: page.out for name, page in executed_pages.items()},
                                    os.environ["STAGEWISE_PROFILE"], out, capture=True)
    except RuntimeError as error:
        pytest.fail(str(error))
    log = build.stdout + build.stderr
    assert build.returncode == 0, f"the book build failed:\n{log[-4000:]}"
    executed = re.findall(r"Executing notebook.*", log)
    assert not executed, f"the build executed pages this session had executed already: {executed}"
    return out / "_build" / "html"


def test_the_build_shows_what_this_session_computed(built_book, executed_pages):
    import html

    import nbformat

    hidden = {"remove-output", "remove-cell", "hide-output"}
    for name, page in executed_pages.items():
        notebook = nbformat.read(page.notebook, as_version=4)
        printed = [line.strip() for cell in notebook.cells if cell.cell_type == "code"
                   and not hidden & set(cell.metadata.get("tags", []))
                   for output in cell.get("outputs", []) if output.get("name") == "stdout"
                   for line in output.get("text", "").splitlines() if line.strip()]
        shown = (built_book / f"{name}.html").read_text(encoding="utf-8")
        missing = [line for line in printed if html.escape(line, quote=False) not in shown]
        assert not missing, f"{name}: the page does not show what its run printed, e.g. {missing[:3]}"


def test_running_the_book_leaves_the_checkout_as_it_was(built_book, request):
    before = request.config._stagewise_git_status
    if before is None:
        pytest.skip("not a git checkout")
    assert git_status() == before, "executing the chapters or building the book changed the source tree"


def page_dom(page: Path, tmp_path: Path, *extra_flags: str, budget_ms: int = 30000) -> str:
    """The page's DOM after Chromium has run its scripts for ``budget_ms`` of virtual time."""
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra_flags,
         f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout


def rendered(page: Path, tmp_path: Path) -> PageText:
    parsed = PageText()
    parsed.feed(page_dom(page, tmp_path))
    return parsed


@pytest.fixture(scope="module")
def theory_page(built_book, tmp_path_factory) -> PageText:
    """The theory chapter as Chromium shows it (rendered once for the checks below)."""
    return rendered(built_book / "theory.html", tmp_path_factory.mktemp("chromium"))


def test_theory_chapter_renders_math_and_figures(built_book, theory_page):
    page = theory_page
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


def test_theory_chapter_glues_captions_cites_and_hides_solutions(built_book, theory_page):
    from stagewise import theory

    page = theory_page
    text = " ".join("".join(page.text).split())
    # a number in the prose comes from the run: the critical size, as the library computes it
    n_c = f"{theory.example_posterior().critical_n():.0f}"
    assert n_c in page.glued, f"n_c = {n_c} should be glued into the prose; glued values: {page.glued}"
    assert not any("{glue" in value for value in page.glued)
    # numbered figure captions that name the paper figure, and references to them by number
    captions = [" ".join(caption.split()) for caption in page.captions]
    assert len(captions) >= 3 and all(re.match(r"Fig\. 1\.\d+ ", caption) for caption in captions), captions
    assert any("Fig. 1b" in caption for caption in captions), "a caption names the paper figure"
    assert re.search(r"\(Fig\. 1\.\d+\)", text), "the text refers to a figure by its number within the chapter"
    # citations link to the references page, where the entry is
    cited = [href for href, classes in page.links if href.startswith("references.html#")]
    assert cited, "the chapter cites its sources"
    references = (built_book / "references.html").read_text(encoding="utf-8")
    for href in cited:
        assert f'id="{href.split("#", 1)[1]}"' in references, f"citation target {href} missing"
    assert "Influence Dynamics and Stagewise Data Attribution" in references and "2510.12071" in references
    # exercise solutions run (their code is on the page) but stay hidden until opened
    hidden = "".join(page.hidden_solution_text)
    assert "replace(posterior, llc_V=6.0)" in hidden, "the solution's code should be inside a collapsed solution"


def test_every_chapter_page_offers_its_notebook_and_source(built_book):
    from stagewise.book.cli import chapters

    for chapter in chapters():
        html = (built_book / f"{chapter.name}.html").read_text(encoding="utf-8")
        for suffix in (".ipynb", ".md"):
            assert f"_sources/{chapter.name}{suffix}" in html, f"{chapter.name}: no {suffix} download"
            assert (built_book / "_sources" / f"{chapter.name}{suffix}").stat().st_size > 1000


def test_reproducibility_page_reports_profile_and_chapter_times(built_book, tmp_path):
    page = rendered(built_book / "reproducibility.html", tmp_path)
    text = "".join(page.text)
    assert "fast" in page.glued
    assert "torch" in text and "CPU cores" in text
    for chapter in ("theory", "toy_dynamics", "three_estimates"):
        assert chapter in text, f"no execution time for {chapter}"


def test_api_page_lists_every_public_module():
    import stagewise

    api = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. automodule:: (\S+)$", api, flags=re.MULTILINE))
    modules = {f"stagewise.{info.name}" for info in pkgutil.iter_modules(stagewise.__path__)
               if not info.name.startswith("_")}
    missing = modules - documented
    assert not missing, f"add these modules to book/api.md: {sorted(missing)}"


# Measured after the page has loaded and its scripts have laid it out (the theme's scripts widen
# the article column).
OVERFLOW_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const wide = [...document.querySelectorAll("div.cell div.cell_input pre")]
    .filter(pre => pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => pre.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a)));
  const out = document.createElement("pre");
  out.id = "stagewise-overflow";
  out.textContent = JSON.stringify({cells: document.querySelectorAll("div.cell_input pre").length,
                                    wide: wide});
  document.body.appendChild(out);
}, 500));
</script>"""


def test_code_cells_show_whole_lines_at_1280_pixels(built_book, tmp_path):
    """No code cell of a chapter needs a horizontal scroll bar in a 1280-pixel-wide window (the
    book's stylesheet, book/_static/stagewise.css, sizes the code for the 100 columns that
    test_pages allows)."""
    import html
    import json

    from stagewise.book.cli import chapters

    shown = 0
    for chapter in chapters():
        probe = built_book / f"_overflow_probe_{chapter.name}.html"
        page = (built_book / f"{chapter.name}.html").read_text(encoding="utf-8")
        assert "_static/stagewise.css" in page, f"{chapter.name}: the book's stylesheet is not linked"
        probe.write_text(page.replace("</body>", OVERFLOW_PROBE + "</body>"), encoding="utf-8")
        dom = page_dom(probe, tmp_path, "--window-size=1280,2000", budget_ms=60000)
        probe.unlink()
        found = re.search(r'<pre id="stagewise-overflow"[^>]*>(.*?)</pre>', dom, flags=re.DOTALL)
        assert found, f"{chapter.name}: the probe did not run"
        result = json.loads(html.unescape(found.group(1)))
        shown += result["cells"]
        assert not result["wide"], f"{chapter.name}: code cells scroll sideways, e.g. {result['wide'][:2]}"
    assert shown > 50, f"only {shown} code cells found on the chapter pages"
