"""The Pythia source end to end, offline: every line a reader's networked run takes, on stand-ins.

A tiny GPT-NeoX saved in the Hugging Face hub cache layout as ``EleutherAI/pythia-14m`` (refs
``step0``, ``step512``, ``step1000``: the fast profile's analysed revisions; half-precision weights;
a GPT-NeoX byte-level tokenizer) and a ``.jsonl.zst`` Pile shard are built here
(:mod:`pythia_stand_in`); with ``HF_HUB_OFFLINE=1`` and the hub cache pointed at them, the library
and Chapter 5 run through the hub code path.  Hub clients read their offline switches at import,
so everything offline runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pythia_stand_in import STAND_IN, build_hub_cache, build_pile
from stagewise.lm.checkpoints import PYTHIA_STEPS
from stagewise.book.profiles import LM_SOURCE_ENV, get_profile

ROOT = Path(__file__).resolve().parents[1]
REVISIONS = (0, 512, 1000)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> tuple[Path, Path]:
    """``(hub cache, Pile shard)``."""
    root = tmp_path_factory.mktemp("pythia")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains several times faster on one thread
    try:
        pile = build_pile(root / "pile")
        build_hub_cache(root / "hub", pile, REVISIONS)
    finally:
        torch.set_num_threads(threads)
    return root / "hub", pile


def offline(hub: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "hf-home"), STAGEWISE_CACHE=str(tmp_path / "cache"),
                OMP_NUM_THREADS="1", **extra)


def run_script(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          cwd=ROOT)


def test_the_source_is_one_setting(monkeypatch):
    monkeypatch.delenv(LM_SOURCE_ENV, raising=False)
    assert {get_profile(name).lm_source for name in ("fast", "default", "paper")} == {"local"}
    monkeypatch.setenv(LM_SOURCE_ENV, "pythia-14m")
    assert get_profile("fast").lm_source == "pythia-14m"
    paper = get_profile("default").pythia
    study = paper.study
    assert (study.observable_sequences, study.sequence_length, study.sgld.batch_size, study.sgld.chains,
            study.sgld.draws) == (600, 55, 64, 4, 200), "the Pythia study runs at the paper's Table 2 sizes"
    assert set(paper.analysed_steps) <= set(PYTHIA_STEPS)
    monkeypatch.setenv(LM_SOURCE_ENV, "gpt2")
    with pytest.raises(ValueError, match="valid sources are: local, pythia-14m"):
        get_profile("fast")


def test_library_path_reads_the_hub_revisions_tokenizer_and_pile(stand_in, tmp_path):
    hub, pile = stand_in
    script = f"""
        from pathlib import Path

        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer
        from stagewise.lm import LocalCheckpoints, PythiaCheckpoints, PythiaSource, TokenInfluenceConfig, prepare_run
        from stagewise.lm import token_draws
        from stagewise.lm.training import LMConfig
        from stagewise.sampling import SGLDConfig

        source = PythiaSource(steps={REVISIONS!r}, pile_files=({str(pile)!r},), documents=200)
        config = TokenInfluenceConfig(sgld=SGLDConfig(epsilon=1e-6, nbeta=256, gamma=1000, chains=2, draws=3,
                                                      batch_size=4),
                                      observable_sequences=6, sequence_length=17, sampling_sequences=32)
        run = prepare_run(config, {str(tmp_path / "study")!r}, source, progress=False)
        assert isinstance(run.checkpoints, PythiaCheckpoints) and run.checkpoints.steps == {list(REVISIONS)!r}

        # the tokenizer is the checkpoint's own, and the text was tokenized with it
        snapshot = next(Path({str(hub)!r}).rglob("tokenizer.json")).parent
        hub_tokenizer = AutoTokenizer.from_pretrained(snapshot)
        assert run.tokenizer.get_vocab() == hub_tokenizer.get_vocab()
        text = run.tokenizer.decode(run.observable_ids[0])
        assert hub_tokenizer(text)["input_ids"] == run.observable_ids[0].tolist()

        # weights stored in float16 load as float32, value for value
        model = run.checkpoints.load(1000)
        stored = load_file(next(Path({str(hub)!r}).rglob("model.safetensors")))
        assert {{t.dtype for t in stored.values()}} == {{torch.float16}}
        assert {{p.dtype for p in model.parameters()}} == {{torch.float32}}

        draws = token_draws(run, 1000, progress=False)
        assert draws.recorded == 3 and draws.losses.shape == (2, 3 - draws.burn_in, 6 * 16)
        assert torch.isfinite(draws.losses).all()
        assert not Path({str(tmp_path / "cache")!r}).exists(), "the library wrote to a cache"

        # App. D.2's path: a model trained here on the Pile with Pythia's tokenizer and vocabulary
        small = TokenInfluenceConfig(model=LMConfig(vocab_size=512, hidden=16, layers=1, heads=2, intermediate=32,
                                                    context=16, steps=4, batch_size=2, warmup=2,
                                                    checkpoint_interval=2),
                                     observable_sequences=4, sequence_length=9, sampling_sequences=8)
        trained = prepare_run(small, {str(tmp_path / "study")!r}, source, train=True, progress=False)
        assert isinstance(trained.checkpoints, LocalCheckpoints) and trained.checkpoints.steps[-1] == 4
        assert trained.tokenizer.get_vocab() == hub_tokenizer.get_vocab()
        print("ok")
    """
    result = run_script(script, offline(hub, tmp_path))
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_without_hub_access_the_pythia_source_fails_at_once_saying_what_is_missing(tmp_path):
    script = """
        from stagewise.book.lm import study_sizes
        from stagewise.lm import SourceUnavailable
        try:
            study_sizes()
        except SourceUnavailable as error:
            print(error)
        else:
            print("no error")
    """
    empty = tmp_path / "empty-hub"
    empty.mkdir()
    env = offline(empty, tmp_path, STAGEWISE_LM="pythia-14m", STAGEWISE_PROFILE="fast")
    env.pop("STAGEWISE_PILE", None)
    result = run_script(script, env)
    message = result.stdout
    assert "pythia-14m source cannot be reached" in message, result.stderr[-3000:]
    assert "EleutherAI/pythia-14m files not in the hub cache (HF_HUB_OFFLINE is set)" in message
    assert "step0/config.json" in message and "the Pile" in message
    assert "STAGEWISE_LM=local" in message, "the message must say how to build offline instead"
    assert not (tmp_path / "cache").exists(), "nothing may start before the check"


def test_chapter_5s_boundary_runs_on_the_hub_stand_in(stand_in, tmp_path):
    """What Chapter 5 calls with ``STAGEWISE_LM=pythia-14m`` (its analysis cells are the local
    run's, which the chapter's own test executes): sizes from the hub config, the run, the draws."""
    hub, pile = stand_in
    script = """
        from stagewise.book.profiles import get_profile
        from stagewise.book.lm import cached_run, cached_token_draws, lm_source, study_sizes

        profile = get_profile()
        source = lm_source(profile)
        sizes = study_sizes(profile)
        run = cached_run(sizes.study, source)
        draws = cached_token_draws(run, sizes.analysed_steps[-1], progress=False)
        print(source.name, sizes.study.model.vocab_size, run.config.sgld.epsilon, (draws.losses.shape[0], draws.recorded, draws.losses.shape[2]))
    """
    env = offline(hub, tmp_path, STAGEWISE_LM="pythia-14m", STAGEWISE_PILE=str(pile), STAGEWISE_PROFILE="fast")
    result = run_script(script, env)
    assert result.returncode == 0, result.stderr[-5000:]
    study = get_profile("fast").pythia.study
    name, vocab, epsilon, shape = result.stdout.split(maxsplit=3)
    assert name == "pythia-14m" and int(vocab) == STAND_IN.vocab_size
    assert float(epsilon) == 1e-6, "the Pythia study samples at Table 2's step"
    tokens = study.observable_sequences * (study.sequence_length - 1)
    assert tuple(int(x) for x in shape.strip("()\n").split(",")) == (study.sgld.chains, study.sgld.draws, tokens)
    # the run went through the hub path: draws were cached under the stand-in's repository
    assert list((tmp_path / "cache").glob("lm-token-draws-*.pkl"))
    assert list((tmp_path / "cache").glob("lm-source-*/pythia-tokens/streams.pt"))
