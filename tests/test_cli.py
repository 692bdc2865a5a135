"""The command line (`python -m stagewise`) and the progress destination it relies on."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from stagewise.book import cli
from stagewise.book.profiles import PROFILES
from stagewise.book.progress import PROGRESS_ENV, announce, progress

ROOT = Path(__file__).resolve().parents[1]


def stagewise(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stagewise", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=600)


def test_list_shows_every_chapter_with_its_reference_time_and_what_this_checkout_measured(tmp_path, capsys):
    reference, measured = tmp_path / "reference.json", tmp_path / "measured.json"
    cli.record_times("fast", {"theory": 12.0, "toy_dynamics": 300.0}, reference, by="test")
    cli.record_times("fast", {"theory": 47.0}, measured, by="test")
    assert cli.command_list(measured=measured, reference=reference) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(profile in lines[0] for profile in PROFILES)
    names = [chapter.name for chapter in cli.chapters()]
    assert names[:3] == ["theory", "toy_dynamics", "three_estimates"]
    assert "reproducibility" not in names and "references" not in names
    rows = {name: next(line for line in lines if f" {name} " in line) for name in names}
    assert re.search(r"12 s \(here 47 s\)\s+unknown\s+unknown$", rows["theory"]), rows["theory"]
    assert re.search(r"5 min\s+unknown\s+unknown$", rows["toy_dynamics"]), rows["toy_dynamics"]
    assert re.search(r"(unknown\s+){2}unknown$", rows["three_estimates"]), rows["three_estimates"]
    assert any(cli.machine().split(",")[0] in line for line in lines), "the reference names its machine"


def test_the_reference_table_changes_only_when_asked(tmp_path):
    reference, measured = tmp_path / "reference.json", tmp_path / "measured.json"
    cli.record_times("default", {"theory": 11.0}, reference)
    cli.record_times("default", {"theory": 9.0, "toy_dynamics": 20.0}, measured)
    assert cli.load_times(reference)["default"]["theory"]["seconds"] == 11.0
    assert sorted(cli.update_reference(measured, reference)) == ["default/theory", "default/toy_dynamics"]
    assert {name: entry["seconds"] for name, entry in cli.load_times(reference)["default"].items()} == \
        {"theory": 9.0, "toy_dynamics": 20.0}


@pytest.mark.parametrize(
    ("args", "kind", "valid"),
    [
        (["run", "no_such_chapter"], "chapter", "theory, toy_dynamics"),
        (["run", "theory", "--profile", "huge"], "profile", "fast, default, paper"),
        (["run", "theory", "--device", "tpu"], "device", "cpu"),
    ],
)
def test_unknown_choices_fail_with_one_line_listing_the_valid_ones(args, kind, valid):
    result = stagewise(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert f"unknown {kind}" in message and valid in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_is_refused_without_a_gpu():
    result = stagewise("run", "theory", "--device", "cuda")
    assert result.returncode == 2 and "valid devices: cpu" in result.stderr


def fake_chapter(tmp_path: Path, body: str) -> cli.Chapter:
    path = tmp_path / "probe.md"
    path.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "# Probe\n\n```{code-cell} ipython3\n" + body + "\n```\n",
        encoding="utf-8",
    )
    return cli.Chapter(1, "probe", "Probe", path)


def test_run_passes_profile_and_device_and_shows_library_progress(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setenv("STAGEWISE_PROFILE", "default")   # restored afterwards; `run` overrides it
    monkeypatch.setenv(cli.DEVICE_ENV, "unset")
    chapter = fake_chapter(tmp_path, "import os\nfrom stagewise.book.progress import progress\n"
                                     "for _ in progress(range(5), desc='probe-bar'):\n    pass\n"
                                     "print(os.environ['STAGEWISE_PROFILE'], os.environ['STAGEWISE_DEVICE'])")
    times = tmp_path / "times.json"
    assert cli.command_run(chapter, "fast", "cpu", tmp_path / "out", times=times) == 0
    executed = nbformat.read(tmp_path / "out" / "probe.ipynb", as_version=4)
    code = next(cell for cell in executed.cells if cell.cell_type == "code")
    printed = "".join(output.get("text", "") for output in code.outputs)
    assert "fast cpu" in printed
    assert "probe-bar" not in printed, "the library's progress belongs on the console, not in the notebook"
    assert "probe-bar" in capfd.readouterr().err
    assert json.loads(times.read_text())["fast"]["probe"]["by"] == "stagewise run"


def test_run_reports_a_failing_cell_and_keeps_the_notebook(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("STAGEWISE_PROFILE", "fast")
    monkeypatch.setenv(cli.DEVICE_ENV, "cpu")
    chapter = fake_chapter(tmp_path, "raise ValueError('boom')")
    times = tmp_path / "times.json"
    assert cli.command_run(chapter, "fast", "cpu", tmp_path / "out", times=times) == 1
    assert "failed in cell" in capfd.readouterr().err
    assert (tmp_path / "out" / "probe.ipynb").exists()
    assert not times.exists(), "a failed run is not a measured time"


def test_build_stops_at_the_first_failing_page_and_starts_no_other(tmp_path, capsys):
    # `stagewise run` knows only the book's pages, so a page outside the table of contents fails at once
    first, second = fake_chapter(tmp_path, "1"), cli.Chapter(2, "other_probe", "Other", tmp_path / "probe.md")
    assert cli.command_build("fast", "cpu", jobs=1, out=tmp_path, pages=[first, second]) == 1
    runs = tmp_path / "_build" / "run" / "fast"
    assert "page probe failed" in capsys.readouterr().err
    assert "unknown chapter" in (runs / "probe" / "run.log").read_text()
    assert not (runs / "other_probe").exists() and not (tmp_path / "_build" / "html").exists()


def test_build_refuses_no_jobs():
    result = stagewise("build", "--jobs", "0")
    assert result.returncode == 2 and "--jobs must be at least 1" in result.stderr


def test_run_writes_the_executed_chapter_its_labelled_figures_and_its_time(executed_page):
    page = executed_page("theory")   # `python -m stagewise run theory --out DIR`, the session's one run of it
    assert page.returncode == 0, page.log[-2000:]
    notebook = nbformat.read(page.notebook, as_version=4)
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    figures = sorted(path.name for path in page.out.glob("*.png"))
    assert {"fig-theory-weights.png", "fig-theory-terms.png", "fig-theory-mc.png"} <= set(figures), figures
    for name in figures:
        assert (page.out / name).stat().st_size > 10_000
    progress_log = Path(f"{page.out}.progress.log").read_text()
    assert "theory: " in progress_log and "cell" in progress_log   # the progress bar over cells
    assert "theory" in json.loads((page.out / "chapter_times.json").read_text())["fast"], "its time, beside it"


def test_progress_goes_to_the_named_file(tmp_path, monkeypatch):
    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    assert sum(progress(range(4), desc="counting")) == 6
    announce("chapter done")
    text = log.read_text()
    assert "counting" in text and "4/4" in text and "chapter done" in text


def test_progress_without_destination_writes_to_stderr(capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    list(progress(range(3), desc="to-stderr"))
    announce("a line")
    captured = capsys.readouterr()
    assert "to-stderr" in captured.err and "a line" in captured.err and captured.out == ""
