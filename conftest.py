"""The book's chapters as tests, each executed once per test session.

Every notebook page of the book (``book/*.md`` with a ``kernelspec`` header) is one test item:
it passes when the page executes without error, and each chapter states its claims as
``assert`` statements, so a claim that breaks fails its chapter.  The pages execute through
the command line a reader uses, ``python -m stagewise run PAGE --out _build/test/run/PAGE``, in
subprocesses started as soon as collection ends, several at a time (longest first), while the
unit tests run in this process.  Each writes its executed notebook and figures; the rendering
tests (``tests/test_rendering.py``) build the book from those executed notebooks without
executing anything again, and the command-line tests read the same outputs.

``STAGEWISE_TEST_WORKERS`` sets how many pages execute at once (default: the CPU count); each
runs on one thread, as the machine's cores are shared with the unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
BOOK = ROOT / "book"
RUNS = ROOT / "_build" / "test" / "run"
WORKERS_ENV = "STAGEWISE_TEST_WORKERS"

# Tests run the small profile unless the caller chose one.
os.environ.setdefault("STAGEWISE_PROFILE", "fast")
# The unit tests share the cores with the pages executing beside them: one thread each (set before
# torch is imported) keeps the processes from spinning against each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The book's own build plumbing and the package's `python -m` entry point are not test modules.
collect_ignore = ["book/_ext", "src/stagewise/__main__.py"]


def is_notebook(path: Path) -> bool:
    """A Markdown file in book/ with a jupytext kernelspec header is an executable page."""
    if path.suffix != ".md" or path.parent != BOOK:
        return False
    head = path.read_text(encoding="utf-8")[:1000]
    return head.startswith("---") and "kernelspec:" in head


@dataclass
class PageRun:
    """The outcome of executing one page: its exit status and where its outputs are."""

    name: str
    returncode: int
    out: Path
    log: str

    @property
    def notebook(self) -> Path:
        return self.out / f"{self.name}.ipynb"

    def failure(self) -> str:
        """The failing cell's source and traceback, read from the executed notebook."""
        import nbformat
        from nbformat.reader import NotJSONError

        try:
            notebook = nbformat.read(self.notebook, as_version=4)
        except (OSError, NotJSONError, ValueError):
            return f"{self.name} did not run: no executed notebook was written.\n{self.log[-4000:]}"
        for index, cell in enumerate(notebook.cells):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    from IPython.core.ultratb import strip_ansi

                    trace = strip_ansi("\n".join(output.get("traceback", [])))
                    return (f"{self.name}: cell {index} raised {output.get('ename')}: {output.get('evalue')}\n"
                            f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace[-6000:]}")
        return f"{self.name} failed (exit {self.returncode}) without a failing cell:\n{self.log[-4000:]}"


class BookRun:
    """Executes pages in subprocesses, a few at a time; each page at most once per session."""

    def __init__(self, workers: int, profile: str) -> None:
        self.workers, self.profile = max(1, workers), profile
        # the environment as the session began: a unit test that monkeypatches os.environ while
        # a page starts must not hand its temporary settings (a cache folder, say) to the page
        self._environment = dict(os.environ)
        self._done: dict[str, threading.Event] = {}
        self._results: dict[str, PageRun] = {}
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._processes: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def request(self, names: list[str]) -> None:
        """Queue the pages not yet queued, the slowest first (from the reference times)."""
        from stagewise.book.cli import load_times

        known = load_times().get(self.profile, {})
        with self._lock:
            new = [name for name in names if name not in self._done]
            for name in new:
                self._done[name] = threading.Event()
            self._queue += sorted(new, key=lambda name: -known.get(name, {}).get("seconds", 1e9))
            while len(self._threads) < min(self.workers, len(self._done)):
                thread = threading.Thread(target=self._work, daemon=True)
                self._threads.append(thread)
                thread.start()

    def result(self, name: str) -> PageRun:
        """Wait for page ``name`` (queuing it if nobody asked for it yet)."""
        self.request([name])
        self._done[name].wait()
        return self._results[name]

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._stopped:
                    return
                name = self._queue.pop(0)
            self._results[name] = self._execute(name)
            self._done[name].set()

    def _execute(self, name: str) -> PageRun:
        out = RUNS / name
        env = dict(self._environment, STAGEWISE_PROFILE=self.profile, STAGEWISE_PROGRESS=str(out) + ".progress.log",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("STAGEWISE_TIMES", None)   # the run records its time beside its outputs
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "stagewise", "run", name, "--profile", self.profile, "--device", "cpu",
                   "--out", str(out)]
        with self._lock:
            if self._stopped:
                return PageRun(name, -1, out, "the session ended before this page ran")
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            self._processes.append(process)
        log, _ = process.communicate()
        return PageRun(name, process.returncode, out, log)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._processes:
                if process.poll() is None:
                    process.kill()


def book_run(config: pytest.Config) -> BookRun:
    run = getattr(config, "_stagewise_book_run", None)
    if run is None:
        workers = int(os.environ.get(WORKERS_ENV, "") or os.cpu_count() or 1)
        run = BookRun(workers, os.environ["STAGEWISE_PROFILE"])
        config._stagewise_book_run = run
    return run


def every_page() -> list[str]:
    """Every notebook page of the book, in the order of its table of contents."""
    from stagewise.book.cli import chapters

    return [chapter.name for chapter in chapters(every_part=True)]


def git_status() -> str | None:
    """``git status`` of the checkout, untracked files included (``None`` outside a git checkout)."""
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uses_book: the test reads the executed pages of the whole book")
    config._stagewise_git_status = git_status()   # before anything ran (tests/test_rendering.py compares)
    if getattr(config, "workerinput", None) is not None:
        raise pytest.UsageError("the book's suite schedules its chapters itself; run it without pytest-xdist's -n")


class NotebookPage(pytest.File):
    def collect(self):
        yield PageItem.from_parent(self, name=self.path.stem)


class PageFailed(Exception):
    pass


class PageItem(pytest.Item):
    """Passes when the page executed without error (its asserts are the chapter's claims)."""

    def runtest(self) -> None:
        result = book_run(self.config).result(self.name)
        if result.returncode != 0:
            raise PageFailed(result.failure())

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, PageFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"chapter {self.name} executes and its claims hold"


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if is_notebook(file_path):
        return NotebookPage.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first (they run while the pages execute), then the pages, then what reads the whole book."""
    def stage(item: pytest.Item) -> int:
        if item.get_closest_marker("uses_book"):
            return 2
        return 1 if isinstance(item, PageItem) or "executed_page" in getattr(item, "fixturenames", ()) else 0

    items.sort(key=stage)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the pages that the selected tests need, before the first test runs."""
    pages = [item.name for item in session.items if isinstance(item, PageItem)]
    if any(item.get_closest_marker("uses_book") for item in session.items):
        pages += every_page()
    if pages and not session.config.option.collectonly:
        book_run(session.config).request(list(dict.fromkeys(pages)))


def pytest_unconfigure(config: pytest.Config) -> None:
    run = getattr(config, "_stagewise_book_run", None)
    if run is not None:
        run.stop()


@pytest.fixture(scope="session")
def executed_pages(request) -> dict[str, PageRun]:
    """Every page of the book executed once (shared with the chapter items); fails when one did not run."""
    run = book_run(request.config)
    results = {name: run.result(name) for name in every_page()}
    failed = [name for name, result in results.items() if result.returncode != 0]
    if failed:
        pytest.fail(f"pages that failed to execute: {', '.join(failed)} (see their chapter tests)")
    return results


@pytest.fixture(scope="session")
def executed_page(request):
    """``executed_page(name)``: the session's one execution of that page (run when first asked)."""
    return lambda name: book_run(request.config).result(name)


def pytest_report_header(config: pytest.Config) -> str:
    return (f"stagewise: profile {os.environ['STAGEWISE_PROFILE']}, chapters execute once each into {RUNS}, "
            f"{os.environ.get(WORKERS_ENV) or os.cpu_count()} at a time")
