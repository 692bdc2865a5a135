"""Command line: list the book's chapters, execute one without building the book, or build it.

    python -m stagewise list
    python -m stagewise run CHAPTER [--profile P] [--device D] [--out DIR]
    python -m stagewise build [--profile P] [--device D] [--jobs N]

``run`` executes the chapter's notebook (a MyST-Markdown file in ``book/``, read as the book build reads it)
in a fresh Jupyter kernel, cell by cell with a progress bar, and writes to ``DIR`` (default
``_build/run/CHAPTER``) the executed notebook ``CHAPTER.ipynb`` and each figure as a PNG file.
The profile and device reach the chapter through the environment variables
``STAGEWISE_PROFILE`` and ``STAGEWISE_DEVICE``; the library's own progress bars (training,
sampling) are shown on this console through ``STAGEWISE_PROGRESS`` (see
:mod:`stagewise.book.progress`).

Measured chapter times never go into the source tree: ``run`` records its time in
``DIR/chapter_times.json`` (or where ``$STAGEWISE_TIMES`` points), the book build
(``book/_ext/stagewise_build.py``) in ``_build/chapter_times.json``.  ``list`` shows those beside
the *reference* table ``chapter_times.json`` beside this module, which changes only when someone
runs ``list --update-reference`` on purpose (each entry names its machine and load).

``build`` (what ``make book`` runs) executes every page as ``run`` does, ``--jobs`` at a time
(default: one per CPU core, each with its share of the threads; the slowest first), into
``_build/run/PROFILE/``, then builds the HTML book from those executed notebooks
(:func:`build_from_executed`) without executing anything again.  A page that fails stops the
build; what the pages computed stays in the cache (``$STAGEWISE_CACHE``) for the next one.
"""

from __future__ import annotations

import argparse
import base64
from contextlib import nullcontext
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stagewise._files import written_atomically
from stagewise.book import DEVICE_ENV, valid_devices
from stagewise.book.profiles import PROFILE_ENV, PROFILES



def book_root() -> Path:
    """The checkout whose book the commands build: the working directory or the nearest of its
    parents holding ``_toc.yml``; else the checkout this package is installed from (editable)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    return Path(__file__).resolve().parents[3]


ROOT = book_root()
BOOK = ROOT / "book"
TOC = ROOT / "_toc.yml"
REFERENCE_TIMES = Path(__file__).with_name("chapter_times.json")
"""Chapter times per profile measured on a named machine, kept in the repository."""
MEASURED_TIMES = ROOT / "_build" / "chapter_times.json"
"""Where the book build records what it measured in this checkout (``make book`` points
``$STAGEWISE_TIMES`` here)."""
TIMES_ENV = "STAGEWISE_TIMES"


@dataclass(frozen=True)
class Chapter:
    """One executable chapter of the book."""

    number: int
    name: str
    """File stem in ``book/`` (``theory`` for ``book/theory.md``)."""
    title: str
    path: Path


def chapters(book: Path = BOOK, toc: Path = TOC, every_part: bool = False) -> list[Chapter]:
    """The executable chapters, in the order of ``_toc.yml``: the pages of its first part that
    are notebooks, or with ``every_part`` every notebook page of the book (the reproducibility
    page too).

    Raises ``FileNotFoundError`` when the book is not there (an installed package without the
    repository)."""
    import yaml

    if not toc.exists():
        raise FileNotFoundError(f"the book's table of contents {toc} is missing; run from a clone of the repository")
    entries = yaml.safe_load(toc.read_text(encoding="utf-8"))
    parts = entries.get("parts") or [entries]
    names = [entry["file"] for part in (parts if every_part else parts[:1]) for entry in part.get("chapters", [])]
    found = []
    for name in names:
        path = book / f"{name}.md"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if "kernelspec:" not in text[:1000]:
            continue   # a page without code (references, the API)
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), name)
        found.append(Chapter(len(found) + 1, name, title, path))
    return found


def load_times(path: Path = REFERENCE_TIMES) -> dict[str, dict[str, dict]]:
    """``{profile: {chapter: {"seconds": ..., "machine": ..., "measured": ..., "by": ...}}}``."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def machine() -> str:
    """A short description of this machine: CPU count and kind, and the GPU if torch sees one."""
    description = f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"
    if hasattr(os, "getloadavg"):   # a busy machine makes every time longer
        description += f", load {os.getloadavg()[0]:.1f}"
    try:
        import torch

        if torch.cuda.is_available():
            description += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return description


def record_times(profile: str, seconds: dict[str, float], path: Path, by: str = "book build") -> Path:
    """Merge measured execution times (seconds per chapter name) for ``profile`` into ``path``
    (a file under ``_build/`` or a run's output folder; never the reference table)."""
    table = load_times(path)
    stamp = datetime.date.today().isoformat()
    where = machine()
    for name, value in seconds.items():
        table.setdefault(profile, {})[name] = {"seconds": round(float(value), 1), "machine": where,
                                               "measured": stamp, "by": by}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, table)
    return path


def _write_json(path: Path, table: dict) -> None:
    with written_atomically(path) as temporary:
        temporary.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def update_reference(measured: Path = MEASURED_TIMES, reference: Path = REFERENCE_TIMES) -> list[str]:
    """Copy the times measured in this checkout into the reference table, on purpose; returns
    ``profile/chapter`` of each entry copied."""
    table, new = load_times(reference), load_times(measured)
    changed = []
    for profile, entries in new.items():
        for name, entry in entries.items():
            table.setdefault(profile, {})[name] = entry
            changed.append(f"{profile}/{name}")
    _write_json(reference, table)
    return changed


def _format_seconds(entry: dict | None) -> str:
    if not entry:
        return "unknown"
    seconds = entry["seconds"]
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def command_list(measured: Path = MEASURED_TIMES, reference: Path = REFERENCE_TIMES) -> int:
    """Print the chapters with their reference time per profile and, beside it, what this
    checkout measured (``here``) when it did."""
    times, here = load_times(reference), load_times(measured)

    def cell(profile: str, name: str) -> str:
        text = _format_seconds(times.get(profile, {}).get(name))
        ours = here.get(profile, {}).get(name)
        return f"{text} (here {_format_seconds(ours)})" if ours else text

    table = [(str(ch.number), ch.name, ch.title, *(cell(p, ch.name) for p in PROFILES)) for ch in chapters()]
    header = ("#", "chapter", "title", *PROFILES)
    widths = [max(len(row[k]) for row in [header, *table]) for k in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    machines = sorted({entry["machine"] for per in times.values() for entry in per.values()})
    print(f"\nReference times ({reference.name}, updated with `list --update-reference`) measured on: "
          f"{'; '.join(machines) or 'nothing yet'}.")
    if here:
        print(f"'here': measured in this checkout ({measured}).")
    return 0


class _Follow:
    """Copy what is appended to a file onto a stream, from a background thread."""

    def __init__(self, path: Path, stream) -> None:
        self.path, self.stream = path, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Follow:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as source:
            while True:
                chunk = source.read()
                if chunk:
                    self.stream.write(chunk)
                    self.stream.flush()
                elif self._stop.is_set():
                    return
                else:
                    time.sleep(0.2)


def figures(notebook) -> list[tuple[str, bytes]]:
    """Every PNG in the notebook's outputs, named by its figure label (``mystnb.figure.name``),
    its glue name, or the cell and output index."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        label = cell.metadata.get("mystnb", {}).get("figure", {}).get("name")
        images = [output for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
        for k, output in enumerate(images):
            glued = output.get("metadata", {}).get("scrapbook", {}).get("name")
            name = glued or (label if len(images) == 1 and label else f"cell{index:02d}-{k + 1}")
            found.append((name, base64.b64decode(output["data"]["image/png"])))
    return found


def command_run(chapter: Chapter, profile: str, device: str, out: Path, times: Path | None = None) -> int:
    """Execute ``chapter`` under ``profile`` on ``device`` into ``out``; record its time in ``times``.

    ``times`` defaults to ``out/chapter_times.json``.  Returns the exit status: 0, or 1 when a
    cell raised (the notebook so far is still written)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from stagewise.book.progress import PROGRESS_ENV, progress

    out.mkdir(parents=True, exist_ok=True)
    times = times or out / "chapter_times.json"
    notebook = read_notebook(chapter.path)
    os.environ[PROFILE_ENV] = profile
    os.environ[DEVICE_ENV] = device
    log = None
    if not os.environ.get(PROGRESS_ENV):
        log = Path(tempfile.mkstemp(prefix="stagewise-progress-", suffix=".log")[1])
        os.environ[PROGRESS_ENV] = str(log)   # the kernel inherits it: library bars come here
    client = NotebookClient(notebook, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(chapter.path.parent)}})
    code_cells = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    started = time.perf_counter()
    failed = None
    print(f"running chapter {chapter.number} ({chapter.name}) with profile {profile} on {device}", file=sys.stderr)
    try:
        follow = _Follow(log, sys.stderr) if log else None
        with client.setup_kernel(), (follow or nullcontext()):
            bar = progress(code_cells, desc=chapter.name, unit="cell", leave=True)
            for index in bar:
                try:
                    client.execute_cell(notebook.cells[index], index)
                except CellExecutionError as error:
                    failed = (index, error)
                    break
    finally:
        if log:
            os.environ.pop(PROGRESS_ENV, None)
            log.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    target = out / f"{chapter.name}.ipynb"
    nbformat.write(notebook, target)
    for name, png in figures(notebook):
        (out / f"{name}.png").write_bytes(png)
    if failed:
        index, error = failed
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        print(f"chapter {chapter.name} failed in cell {index}: {last} (notebook so far: {target})", file=sys.stderr)
        return 1
    record_times(profile, {chapter.name: elapsed}, times, by="stagewise run")
    print(f"{chapter.name}: executed in {elapsed:.0f} s; wrote {target} and {len(figures(notebook))} figures to {out}",
          file=sys.stderr)
    return 0


def read_notebook(path: Path):
    """The chapter as the book build reads it (MyST-NB's reader), so that an executed copy
    matches the build's cache of executed notebooks cell for cell."""
    import yaml
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    config = ROOT / "_config.yml"
    parse = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("parse", {}) if config.exists() else {}
    markdown = MdParserConfig(enable_extensions=set(parse.get("myst_enable_extensions", [])))
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), markdown, add_source_map=True, path=str(path))


def fill_execution_cache(executed: Mapping[str, Path], cache_path: Path, profile: str) -> None:
    """A jupyter-cache at ``cache_path`` (replaced) holding the executed pages, for a book build
    with ``execute_notebooks: cache`` to show instead of executing them.  ``executed``: page name
    -> the folder :func:`command_run` wrote (``NAME.ipynb``, ``chapter_times.json``).  Raises
    ``RuntimeError`` when an executed notebook does not match its page as the build reads it
    (the build would execute that page again)."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    shutil.rmtree(cache_path, ignore_errors=True)
    cache = get_cache(str(cache_path))
    for name, out in executed.items():
        notebook = nbformat.read(out / f"{name}.ipynb", as_version=4)
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)   # nbclient's timings: not part of what the build matches
        seconds = load_times(out / "chapter_times.json").get(profile, {}).get(name, {})
        source = BOOK / f"{name}.md"
        cache.cache_notebook_bundle(CacheBundleIn(notebook, str(source), data={"execution_seconds": seconds.get("seconds")}),
                                    check_validity=False, overwrite=True)
        try:
            cache.match_cache_notebook(read_notebook(source))
        except KeyError:
            raise RuntimeError(f"{name}: the executed notebook does not match the page; the build would execute it "
                               f"again") from None


def build_from_executed(executed: Mapping[str, Path], profile: str, out: Path, times: Path | None = None,
                        capture: bool = False) -> subprocess.CompletedProcess:
    """Build the HTML book into ``out/_build/html`` from pages already executed (``executed`` as
    for :func:`fill_execution_cache`), strictly (``-W``) and executing nothing; the build's
    files (its cache and configuration) go under ``out/_build``.  With ``times`` the chapters'
    times are recorded there (``$STAGEWISE_TIMES``).  Returns the finished ``jupyter-book``
    process (its output in ``stdout`` when ``capture``)."""
    import yaml

    work = out / "_build"
    work.mkdir(parents=True, exist_ok=True)
    cache_path = work / "jupyter_cache"
    fill_execution_cache(executed, cache_path, profile)
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    config["execute"].update(execute_notebooks="cache", cache=str(cache_path))
    config["sphinx"]["local_extensions"] = {name: str(ROOT / path)
                                            for name, path in config["sphinx"]["local_extensions"].items()}
    config_file = work / "book_config.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **{PROFILE_ENV: profile})
    env.pop(TIMES_ENV, None)
    if times is not None:
        env[TIMES_ENV] = str(times)
    command = ["jupyter-book", "build", ".", "-W", "--all", "--config", str(config_file), "--toc", str(TOC),
               "--path-output", str(out)]
    return subprocess.run(command, cwd=BOOK, env=env, text=True, capture_output=capture)


def command_build(profile: str, device: str, jobs: int, out: Path = ROOT, pages: list[Chapter] | None = None) -> int:
    """Execute every page (default: every notebook page of the book) ``jobs`` at a time into
    ``out/_build/run/PROFILE``, then build the book from them into ``out/_build/html`` (see the
    module's docstring).  Returns the exit status: 0, or 1 when a page failed (the others are
    stopped, none is started after it) or the build did."""
    from stagewise.book.progress import announce

    pages = chapters(every_part=True) if pages is None else pages
    known = load_times().get(profile, {})
    queue = sorted(pages, key=lambda page: -known.get(page.name, {}).get("seconds", float("inf")))
    runs = out / "_build" / "run" / profile
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.pop(TIMES_ENV, None)   # each run records its time beside its outputs
    announce(f"[stagewise] executing {len(pages)} pages, {jobs} at a time ({threads} threads each), profile {profile}")
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    executed: dict[str, Path] = {}
    failed: str | None = None
    try:
        while queue or running:
            while queue and len(running) < jobs and failed is None:
                page = queue.pop(0)
                folder = runs / page.name
                folder.mkdir(parents=True, exist_ok=True)
                log = open(folder / "run.log", "w", encoding="utf-8")
                command = [sys.executable, "-m", "stagewise", "run", page.name, "--profile", profile,
                           "--device", device, "--out", str(folder)]
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                running[page.name] = (process, log, time.perf_counter())
                announce(f"[stagewise] {page.name}: executing ...")
            time.sleep(0.5)
            for name, (process, log, started) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode == 0:
                    executed[name] = runs / name
                    announce(f"[stagewise] {name}: executed in {time.perf_counter() - started:.0f} s")
                elif failed is None:
                    failed = name
            if failed is not None:
                queue.clear()
                for process, _, _ in running.values():
                    process.terminate()
    finally:
        for process, log, _ in running.values():
            process.wait()
            log.close()
    if failed is not None:
        report = (runs / failed / "run.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        print(f"stagewise build: page {failed} failed; its log ({runs / failed / 'run.log'}) ends:", file=sys.stderr)
        print("\n".join(report[-15:]), file=sys.stderr)
        return 1
    announce("[stagewise] every page executed; building the book from them")
    executed = {page.name: executed[page.name] for page in pages}   # the table of contents' order
    return build_from_executed(executed, profile, out, times=out / "_build" / "chapter_times.json").returncode


def _choose(kind: str, value: str, valid: list[str]) -> None:
    if value not in valid:
        print(f"stagewise: unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stagewise``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stagewise", description="The stagewise book's chapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the chapters, with their reference and measured time per profile")
    listing.add_argument("--update-reference", action="store_true",
                         help=f"copy the times measured in this checkout ({MEASURED_TIMES}) into the reference table")
    run = commands.add_parser("run", help="execute one chapter into a directory, without building the book")
    run.add_argument("chapter", help="chapter name (e.g. theory) or number")
    run.add_argument("--profile", default=os.environ.get(PROFILE_ENV) or "default",
                     help=f"sizes: {', '.join(PROFILES)} (default: $STAGEWISE_PROFILE or default)")
    run.add_argument("--device", default=os.environ.get(DEVICE_ENV, "").strip() or "cpu",
                     help="cpu, or cuda / cuda:N when a GPU is available (default: $STAGEWISE_DEVICE or cpu)")
    run.add_argument("--out", type=Path, default=None, help="output directory (default: _build/run/CHAPTER)")
    build = commands.add_parser("build", help="execute every page, several at a time, and build the HTML book")
    build.add_argument("--profile", default=os.environ.get(PROFILE_ENV) or "default",
                       help=f"sizes: {', '.join(PROFILES)} (default: $STAGEWISE_PROFILE or default)")
    build.add_argument("--device", default=os.environ.get(DEVICE_ENV, "").strip() or "cpu",
                       help="cpu, or cuda / cuda:N when a GPU is available (default: $STAGEWISE_DEVICE or cpu)")
    build.add_argument("--jobs", type=int, default=None,
                       help="pages executed at once (default: one per CPU core on the CPU, one on a GPU)")
    args = parser.parse_args(argv)
    if args.command != "list" and not TOC.is_file():
        print(f"stagewise: no _toc.yml in {Path.cwd()} or its parents: run the command from the book's "
              f"checkout", file=sys.stderr)
        return 2

    if args.command == "list":
        if args.update_reference:
            changed = update_reference()
            print(f"reference table updated: {', '.join(changed) or 'nothing measured yet'}")
        return command_list()
    if args.command == "build":
        _choose("profile", args.profile, list(PROFILES))
        _choose("device", args.device, valid_devices())
        jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1) if args.device == "cpu" else 1
        if jobs < 1:
            print(f"stagewise: --jobs must be at least 1, got {jobs}", file=sys.stderr)
            return 2
        return command_build(args.profile, args.device, jobs)
    book = chapters(every_part=True)   # the chapters, and notebook pages such as reproducibility
    by_name = {chapter.name: chapter for chapter in book} | {str(chapter.number): chapter for chapter in book}
    if args.chapter not in by_name:
        _choose("chapter", args.chapter, [chapter.name for chapter in book])
    _choose("profile", args.profile, list(PROFILES))
    _choose("device", args.device, valid_devices())
    chapter = by_name[args.chapter]
    out = args.out if args.out is not None else ROOT / "_build" / "run" / chapter.name
    # like the book build, record where $STAGEWISE_TIMES points (default: beside the run's output)
    times = os.environ.get(TIMES_ENV, "").strip()
    return command_run(chapter, args.profile, args.device, out, Path(times) if times else None)
