"""Command line: list the book's chapters, or execute one without building the book.

    python -m stagewise list
    python -m stagewise run CHAPTER [--profile P] [--device D] [--out DIR]

``run`` executes the chapter's notebook (a MyST-Markdown file in ``book/``, read as the book build reads it)
in a fresh Jupyter kernel, cell by cell with a progress bar, and writes to ``DIR`` (default
``_build/run/CHAPTER``) the executed notebook ``CHAPTER.ipynb`` and each figure as a PNG file.
The profile and device reach the chapter through the environment variables
``STAGEWISE_PROFILE`` and ``STAGEWISE_DEVICE``; the library's own progress bars (training,
sampling) are shown on this console through ``STAGEWISE_PROGRESS`` (see
:mod:`stagewise.progress`).

Measured chapter times never go into the source tree: ``run`` records its time in
``DIR/chapter_times.json`` (or where ``$STAGEWISE_TIMES`` points), the book build
(``book/_ext/stagewise_build.py``) in ``_build/chapter_times.json``.  ``list`` shows those beside
the *reference* table ``chapter_times.json`` beside this module, which changes only when someone
runs ``list --update-reference`` on purpose (each entry names its machine and load).
"""

from __future__ import annotations

import argparse
import base64
from contextlib import nullcontext
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stagewise._files import written_atomically
from stagewise.profiles import PROFILE_ENV, PROFILES

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
TOC = ROOT / "_toc.yml"
REFERENCE_TIMES = Path(__file__).with_name("chapter_times.json")
"""Chapter times per profile measured on a named machine, kept in the repository."""
MEASURED_TIMES = ROOT / "_build" / "chapter_times.json"
"""Where the book build records what it measured in this checkout (``make book`` points
``$STAGEWISE_TIMES`` here)."""
TIMES_ENV = "STAGEWISE_TIMES"
DEVICE_ENV = "STAGEWISE_DEVICE"


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


def valid_devices() -> list[str]:
    """``cpu``, plus ``cuda`` and ``cuda:N`` for each GPU that torch can use."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return devices


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

    from stagewise.progress import PROGRESS_ENV, progress

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
    args = parser.parse_args(argv)

    if args.command == "list":
        if args.update_reference:
            changed = update_reference()
            print(f"reference table updated: {', '.join(changed) or 'nothing measured yet'}")
        return command_list()
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
