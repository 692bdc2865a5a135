import pytest

from stagewise import cache


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
    assert not list(cache_root.glob("*.tmp*")), "temporary files must not be left behind"


def test_key_depends_on_library_source(monkeypatch):
    key = cache.artifact_key("thing", {"size": 3})
    monkeypatch.setattr(cache, "source_fingerprint", lambda modules=None: "edited")
    assert cache.artifact_key("thing", {"size": 3}) != key


def test_key_can_depend_on_named_modules_only():
    whole = cache.source_fingerprint()
    training = cache.source_fingerprint(("lm/training.py",))
    assert training not in (whole, cache.source_fingerprint(("lm/corpus.py",)))
    assert cache.artifact_key("run", {}, ("lm/training.py",)) != cache.artifact_key("run", {})
    with pytest.raises(FileNotFoundError):
        cache.source_fingerprint(("no_such_module.py",))


def test_failed_computation_stores_nothing(cache_root):
    def broken():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached("thing", {}, broken)
    assert not list(cache_root.iterdir())
