from pathlib import Path

import pytest

from stagewise.book import cache


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_computes_once_per_configuration(cache_root):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert cache.cached("thing", {"size": 3}, compute) == {"value": 1}
    assert cache.cached("thing", {"size": 3}, compute) == {"value": 1}
    assert cache.cached("thing", {"size": 4}, compute) == {"value": 2}
    assert len(calls) == 2
    assert not list(cache_root.glob("*.tmp")), "temporary files must not be left behind"


def test_key_depends_on_library_source(monkeypatch):
    key = cache.artifact_key("thing", {"size": 3})
    monkeypatch.setattr(cache, "source_fingerprint", lambda modules=None: "edited")
    assert cache.artifact_key("thing", {"size": 3}) != key


def test_scope_is_the_import_closure_of_the_function():
    from stagewise.lm import corpus, training
    from stagewise.toy import experiment

    assert "lm/training.py" in cache._scope_of(training.train_language_model)
    assert "lm/corpus.py" not in cache._scope_of(training.train_language_model)
    toy = cache._scope_of(experiment.ToyExperiment)
    assert {"toy/experiment.py", "toy/network.py", "sampling.py"} <= set(toy)  # imported, transitively
    assert not any(path.startswith("lm/") for path in toy)
    both = cache._scope_of((training.train_language_model, corpus.stdlib_corpus))
    assert set(both) == set(cache._scope_of(training.train_language_model)) | set(cache._scope_of(corpus.stdlib_corpus))
    assert cache.artifact_key("run", {}, training.train_language_model) != cache.artifact_key("run", {})
    with pytest.raises(ValueError, match="stagewise package"):
        cache.artifact_key("run", {}, pytest.raises)


def test_editing_an_imported_module_changes_the_key(monkeypatch):
    from stagewise.lm import training

    key = cache.artifact_key("run", {}, training.train_language_model)
    real = cache.source_fingerprint.__wrapped__

    def edited(modules=None):
        return "edited" if modules is not None and "lm/training.py" in modules else real(modules)

    monkeypatch.setattr(cache, "source_fingerprint", edited)
    assert cache.artifact_key("run", {}, training.train_language_model) != key


def test_failed_computation_stores_nothing(cache_root):
    def broken():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached("thing", {}, broken)
    assert not [path for path in cache_root.iterdir() if path.suffix != ".lock"], "no entry, no temporary file"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_entry_is_reported_and_recomputed(cache_root, damage):
    calls = []

    def compute():
        calls.append(1)
        return list(range(1000))

    cache.cached("thing", {}, compute)
    (entry,) = cache_root.glob("thing-*.pkl")
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-10] + bytes(10))
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.cached("thing", {}, compute) == list(range(1000))
    assert len(calls) == 2
    assert cache.cached("thing", {}, compute) == list(range(1000)) and len(calls) == 2


def _fill_entry(root: str, start, value: int) -> None:
    import os

    os.environ[cache.CACHE_ENV] = root
    path = cache.cache_dir() / f"{cache.artifact_key('shared', {})}.pkl"
    start.wait()
    for _ in range(20):  # the same entry written over and over, as by ranks racing on it
        cache._write_entry(path, [value] * 200_000)


def test_two_processes_filling_one_entry_leave_a_whole_one(cache_root):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_fill_entry, args=(str(cache_root), start, v)) for v in (1, 2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    (entry,) = cache_root.glob("shared-*.pkl")
    value = cache._read_entry(entry)  # raises on a torn or interleaved write
    assert value in ([1] * 200_000, [2] * 200_000)
    assert not list(cache_root.glob("*.tmp")), "temporary files must not be left behind"


def test_a_second_process_waits_for_an_entry_being_computed_instead_of_computing_it(tmp_path):
    """Two chapters run side by side ask for the same entry: one computes, the other reads."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    marks = tmp_path / "computed"
    marks.mkdir()
    env = {"STAGEWISE_CACHE": str(tmp_path / "cache")}
    together = context.Barrier(2)   # both ask at the same moment
    workers = [context.Process(target=_compute_slowly, args=(env, str(marks), k, together)) for k in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(list(marks.iterdir())) == 1, "the entry was computed more than once"


def _compute_slowly(env: dict, marks: str, index: int, together) -> None:
    import os
    import time

    os.environ.update(env)
    from stagewise.book.cache import cached

    def compute() -> int:
        Path(marks, str(index)).touch()
        time.sleep(1.0)   # long enough for the other process to ask while this one computes
        return 42

    together.wait(timeout=60)
    assert cached("slow", {"a": 1}, compute) == 42
