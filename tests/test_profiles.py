import pytest

from stagewise.book.profiles import get_profile
from stagewise.book.profiles import PROFILE_ENV, PROFILES


def test_named_profiles_exist_and_grow():
    assert set(PROFILES) == {"fast", "default", "paper"}
    fast, default, paper = (get_profile(name) for name in ("fast", "default", "paper"))
    assert fast.theory.mc_draws < default.theory.mc_draws < paper.theory.mc_draws


def test_environment_variable_selects_profile(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "paper")
    assert get_profile().name == "paper"
    monkeypatch.delenv(PROFILE_ENV)
    assert get_profile().name == "default"


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "huge")
    with pytest.raises(ValueError, match="'huge'.*fast, default, paper"):
        get_profile()


def test_training_seed_comes_from_the_profile_and_the_environment(monkeypatch):
    from stagewise.book import toy as book_toy
    from stagewise.book.profiles import SEED_ENV

    monkeypatch.delenv(SEED_ENV, raising=False)
    assert get_profile("fast").seed != get_profile("default").seed   # the tests run another seed than the book
    monkeypatch.setenv(PROFILE_ENV, "default")
    assert book_toy.training_config().seed == get_profile("default").seed
    monkeypatch.setenv(SEED_ENV, "3")
    assert get_profile("fast").seed == 3 and book_toy.training_config().seed == 3
    for bad in ("-1", "one"):
        monkeypatch.setenv(SEED_ENV, bad)
        with pytest.raises(ValueError, match=SEED_ENV):
            get_profile()
