import pytest

from stagewise import get_profile
from stagewise.profiles import PROFILE_ENV, PROFILES


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
