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


def test_profiles_hold_the_domains_own_configurations():
    """Each configuration is written once: the profiles carry the domain's objects, the Pythia
    study is the paper's Table 2 (down to the fast profile's stand-in, which only shrinks it), and
    the local studies sample Table 2's posterior."""
    from stagewise.book.profiles import LOCAL_SAMPLER
    from stagewise.lm.experiment import PAPER_TABLE_2, TokenInfluenceConfig
    from stagewise.lm.intervention import BoostScan

    assert (PAPER_TABLE_2.sgld.epsilon, PAPER_TABLE_2.sgld.nbeta, PAPER_TABLE_2.sgld.gamma) == (1e-6, 256, 1000)
    for profile in PROFILES.values():
        for sizes in (profile.lm, profile.induction.model):
            assert isinstance(sizes.study, TokenInfluenceConfig)
            assert (sizes.study.sgld.nbeta, sizes.study.sgld.gamma) == (LOCAL_SAMPLER.nbeta, LOCAL_SAMPLER.gamma)
            assert sizes.study.sgld.epsilon == LOCAL_SAMPLER.epsilon
        assert isinstance(profile.induction.scan, BoostScan)
        pythia = profile.pythia.study.sgld
        assert (pythia.epsilon, pythia.nbeta, pythia.gamma) == (1e-6, 256, 1000)
    assert get_profile("default").pythia.study == PAPER_TABLE_2


def test_language_model_chapters_write_no_sampler_literal():
    import re
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    for name in ("language_models.md", "induction_heads.md"):
        code = re.findall(r"```\{code-cell\}.*?\n(.*?)```", (book / name).read_text(encoding="utf-8"), re.S)
        literals = [line for cell in code for line in cell.splitlines()
                    if re.search(r"\b(epsilon|nbeta|gamma)\s*=\s*[\d.]", line)]
        assert not literals, f"{name} sets the sampler in place: {literals}"
