"""Sphinx extension for the book's build: progress on the console, timings, notebook downloads.

* Before each chapter is read (and so executed by MyST-NB) it announces the chapter on the
  progress destination of :mod:`stagewise.book.progress` (``$STAGEWISE_PROGRESS``, which ``make book``
  follows on the console), and after it prints the chapter's execution time.
* At the end of a build that executed chapters it records their times, per profile, in the
  file named by ``$STAGEWISE_TIMES`` (``make book`` names ``_build/chapter_times.json``, which
  ``python -m stagewise list`` shows beside the reference table); unset, nothing is recorded.
* The library's docstrings write ``|x|`` for an absolute value; reStructuredText would read it
  as an undefined substitution, so the API page escapes bars outside literals and tables.
* It offers each executed chapter for download as ``.ipynb`` (with its outputs) beside the
  ``.md`` source: the book theme does this only when launch buttons are configured.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from shutil import copy2

from sphinx.application import Sphinx
from sphinx.util import logging

from stagewise.book.cli import chapters, record_times
from stagewise.book.profiles import get_profile
from stagewise.book.progress import announce

logger = logging.getLogger(__name__)


def _is_notebook(app: Sphinx, docname: str) -> bool:
    path = Path(app.env.doc2path(docname))
    head = path.read_text(encoding="utf-8")[:1000] if path.exists() else ""
    return path.suffix == ".md" and "kernelspec:" in head


def on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if _is_notebook(app, docname):
        app.env.stagewise_started = getattr(app.env, "stagewise_started", {})
        app.env.stagewise_started[docname] = time.perf_counter()
        if app.config.nb_execution_mode != "cache":   # from a cache it is announced once read
            announce(f"[stagewise] {docname}: executing (profile {get_profile().name}) ...")


def on_doctree_read(app: Sphinx, doctree) -> None:
    docname = app.env.docname
    started = getattr(app.env, "stagewise_started", {}).pop(docname, None)
    if started is None:
        return
    exec_data = getattr(app.env, "nb_metadata", {}).get(docname, {}).get("exec_data") or {}
    runtime = exec_data.get("runtime")
    if runtime is None:
        announce(f"[stagewise] {docname}: read in {time.perf_counter() - started:.0f} s (not executed)")
    elif exec_data.get("method") == "cache":
        announce(f"[stagewise] {docname}: its executed notebook read ({runtime:.0f} s when it was executed)")
    else:
        announce(f"[stagewise] {docname}: executed in {runtime:.0f} s")


def on_build_finished(app: Sphinx, exception: Exception | None) -> None:
    target = os.environ.get("STAGEWISE_TIMES", "").strip()
    if exception is not None or not target:
        return
    names = {chapter.name for chapter in chapters()}
    times = {
        docname: data["exec_data"]["runtime"]
        for docname, data in getattr(app.env, "nb_metadata", {}).items()
        if docname in names and data.get("exec_data") and data["exec_data"].get("succeeded")
        and data["exec_data"].get("runtime")
    }
    if times:
        path = record_times(get_profile().name, times, Path(target))
        announce(f"[stagewise] chapter times recorded in {path}")


def offer_notebook_download(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Copy the executed notebook next to the page's sources so the download menu offers it."""
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if doctree is None or not executed.exists():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def escape_bars(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    """``|eig(M)|`` in a docstring means an absolute value, never an RST substitution."""
    for k, line in enumerate(lines):
        if line.lstrip().startswith(("|", "+-", "+=")):
            continue   # a table row
        parts = re.split(r"(`+[^`]*`+)", line)   # literals and roles keep their bars
        lines[k] = "".join(part if index % 2 else part.replace("|", "\\|") for index, part in enumerate(parts))


def setup(app: Sphinx) -> dict:
    app.connect("source-read", on_source_read)
    app.connect("doctree-read", on_doctree_read)
    app.connect("build-finished", on_build_finished)
    app.connect("autodoc-process-docstring", escape_bars)
    # before the theme builds its download menu (priority 501)
    app.connect("html-page-context", offer_notebook_download, priority=400)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
