import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from stagewise.lm.checkpoints import PYTHIA_STEPS, LocalCheckpoints
from stagewise.lm.corpus import Corpus, folder_corpus, pile_corpus, split_documents, stdlib_corpus
from stagewise.lm.tokenizer import load_tokenizer, token_strings, train_bpe_tokenizer
from stagewise.lm.training import (
    LMConfig,
    checkpoint_schedule,
    pythia_architecture,
    sequences,
    token_losses,
    token_stream,
    train_language_model,
)

TINY = LMConfig(vocab_size=300, hidden=32, layers=2, heads=4, intermediate=64, context=32, steps=40,
                batch_size=4, warmup=5, checkpoint_interval=20)


def test_splits_are_fixed_by_name_and_seed():
    documents = {f"doc{k}": f"text {k}" for k in range(400)}
    first = split_documents(documents, "test")
    again = split_documents(dict(reversed(list(documents.items()))), "test")
    assert first == again
    assert split_documents(documents, "test", seed=1) != first
    assert 0.02 < len(first.validation) / 400 < 0.09
    with pytest.raises(ValueError, match="empty"):
        split_documents({"a": "x"}, "tiny")


def test_stdlib_and_folder_corpora(tmp_path):
    corpus = stdlib_corpus()
    assert len(corpus.train) > 1000 and "def " in corpus.train[0] + corpus.train[1]
    for k in range(60):
        (tmp_path / f"{k}.txt").write_text(f"document number {k}\n")
    assert len(folder_corpus(tmp_path).train) > 40
    with pytest.raises(FileNotFoundError):
        folder_corpus(tmp_path, pattern="*.md")


@pytest.mark.parametrize("compressed", [False, True], ids=["jsonl", "jsonl.zst"])
def test_pile_loader_reads_a_local_stand_in(tmp_path, compressed):
    import zstandard

    rows = "".join(f'{{"text": "pile document {k}", "meta": {{}}}}\n' for k in range(300)).encode()
    path = tmp_path / ("pile.jsonl.zst" if compressed else "pile.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(rows) if compressed else rows)
    corpus = pile_corpus("json", documents=250, data_files=str(path))
    texts = corpus.train + corpus.validation + corpus.observable
    assert len(texts) == 250 and "pile document 7" in texts
    with pytest.raises(FileNotFoundError, match="not found"):
        pile_corpus("json", data_files=str(tmp_path / "absent.jsonl.zst"))


def test_tokenizer_round_trip(tmp_path):
    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 50, vocab_size=300, directory=tmp_path)
    loaded = load_tokenizer(tmp_path)
    ids = loaded("def f(x):")["input_ids"]
    assert "".join(token_strings(loaded, ids)) == "def f(x):"
    assert loaded.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["x"], vocab_size=100, directory=tmp_path)


def test_schedule_is_pythia_like():
    assert checkpoint_schedule(3000, 1000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    assert PYTHIA_STEPS[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000) and PYTHIA_STEPS[-1] == 143_000


def test_architecture_matches_pythia_14m():
    config = pythia_architecture(LMConfig())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (128, 6, 4, 512)
    assert config.rope_parameters["partial_rotary_factor"] == 0.25 and config.use_parallel_residual


def _train_until_interrupted_at_step_20(monkeypatch, config, stream, directory):
    """Train until the state of step 20 is saved, then stop as Ctrl-C would; saving is restored after."""
    from stagewise.lm import training

    save = training._save_atomically

    def interrupt_after_step_20(state, path):
        save(state, path)
        if state["step"] == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_atomically", interrupt_after_step_20)
    with pytest.raises(KeyboardInterrupt):
        train_language_model(config, stream, directory, progress=False)
    monkeypatch.setattr(training, "_save_atomically", save)


def test_training_resumes_after_an_interruption(tmp_path, monkeypatch):
    stream = torch.randint(0, TINY.vocab_size, (5000,))
    whole = train_language_model(TINY, stream, tmp_path / "whole", progress=False)

    _train_until_interrupted_at_step_20(monkeypatch, TINY, stream, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "step40").exists()
    train_language_model(TINY, stream, tmp_path / "resumed", progress=False)

    assert LocalCheckpoints(whole).steps == [0, 1, 2, 4, 8, 16, 20, 32, 40]
    final_whole = LocalCheckpoints(whole).load(40).state_dict()
    final_resumed = LocalCheckpoints(tmp_path / "resumed").load(40).state_dict()
    for name in final_whole:
        torch.testing.assert_close(final_whole[name], final_resumed[name])


def test_token_losses_and_sequences():
    stream = torch.arange(1000) % 300
    batch = sequences(stream, count=5, length=20)
    assert batch.shape == (5, 20)
    from transformers import GPTNeoXForCausalLM

    lm = GPTNeoXForCausalLM(pythia_architecture(TINY))
    losses = token_losses(lm, batch)
    assert losses.shape == (5, 19)
    torch.testing.assert_close(losses.mean(), lm(input_ids=batch, labels=batch).loss)
    # in chunks of two rows (at most 2 x 20 x vocabulary logits at once): the same losses
    chunked = token_losses(lm, batch, logits_per_chunk=2 * 20 * TINY.vocab_size)
    torch.testing.assert_close(chunked, losses)
    with pytest.raises(ValueError, match="fewer"):
        sequences(stream, count=100, length=20)


def test_chunked_losses_have_the_gradient_of_the_whole_batch_under_torch_func():
    # the sampler takes gradients with torch.func.grad through functional_call, per chain or
    # vmapped over chains; the chunked output layer must give the same per-chain gradients
    from torch.func import functional_call, grad, vmap
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    lm = GPTNeoXForCausalLM(pythia_architecture(TINY)).eval()
    batch = torch.randint(TINY.vocab_size, (6, 20))
    weights = torch.rand(6, 19)                       # a loss that weighs tokens unequally

    class Loss(torch.nn.Module):
        def __init__(self, chunk):
            super().__init__()
            self.lm, self.chunk = lm, chunk

        def forward(self, ids):
            return (token_losses(self.lm, ids, logits_per_chunk=self.chunk) * weights).sum()

    chains = {k: torch.stack([v.detach(), v.detach() + 0.05 * torch.randn_like(v)]) for k, v in lm.named_parameters()}
    gradients = {}
    for chunk in (10**9, 2 * 20 * TINY.vocab_size):          # the whole batch, then two rows at a time
        loss = Loss(chunk)

        def value(params):
            return functional_call(loss, {f"lm.{k}": v for k, v in params.items()}, (batch,))

        one = grad(value)({k: v[1] for k, v in chains.items()})
        both = vmap(grad(value))(chains)
        gradients[chunk] = (one, both)
    (one, both), (chunked_one, chunked_both) = gradients.values()
    for name in one:
        torch.testing.assert_close(chunked_one[name], one[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(chunked_both[name], both[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(both[name][1], one[name], rtol=1e-4, atol=1e-6)


def test_checkpoints_stored_in_half_precision_load_in_float32(tmp_path):
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    GPTNeoXForCausalLM(pythia_architecture(TINY)).half().save_pretrained(tmp_path / "step0")
    stored = GPTNeoXForCausalLM.from_pretrained(tmp_path / "step0", dtype=torch.float16).state_dict()
    loaded = LocalCheckpoints(tmp_path).load(0)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, stored[name].float()), name
    # a step of ε = 1e-6 times a unit gradient survives in float32 and rounds away in float16
    weight = stored["gpt_neox.embed_in.weight"][0, 0]
    assert weight + 1e-6 == weight and weight.float() + 1e-6 != weight.float()


def test_pythia_revisions_load_from_a_local_hub_cache(tmp_path):
    # A stand-in of EleutherAI/pythia-14m in the hub cache layout: a snapshot per revision and
    # refs/step<N> naming it, weights in float16 as on the hub.  Loaded offline through the same
    # call that fetches the real one, converted to float32.
    from transformers import GPTNeoXForCausalLM

    repo = tmp_path / "models--EleutherAI--pythia-14m"
    for step, commit in [(1000, "a" * 40), (2000, "b" * 40)]:
        torch.manual_seed(step)
        GPTNeoXForCausalLM(pythia_architecture(TINY)).half().save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
    script = textwrap.dedent(f"""
        import torch
        from stagewise.lm.checkpoints import PythiaCheckpoints
        source = PythiaCheckpoints("EleutherAI/pythia-14m", steps=(1000, 2000), cache_dir={str(tmp_path)!r})
        a, b = source.load(1000), source.load(2000)
        assert a.config.hidden_size == 32
        assert {{p.dtype for p in a.parameters()}} == {{torch.float32}}
        assert not (a.gpt_neox.embed_in.weight == b.gpt_neox.embed_in.weight).all()
        print("ok")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_token_influence_end_to_end_on_a_tiny_run(tmp_path, monkeypatch):
    from stagewise.book import lm as book_lm
    from stagewise.diagnostics import VERDICTS
    from stagewise.groups import group_correlation, knn_class_recall
    from stagewise.lm.experiment import TokenInfluenceConfig, prepare_run, token_draws
    from stagewise.lm.sources import LocalSource
    from stagewise.sampling import SGLDConfig

    monkeypatch.setenv("STAGEWISE_CACHE", str(tmp_path / "cache"))
    config = TokenInfluenceConfig(
        model=TINY, sgld=SGLDConfig(epsilon=1e-4, nbeta=100, gamma=1000, chains=2, draws=6, batch_size=4),
        observable_sequences=6, sequence_length=16, sampling_sequences=32)
    run = prepare_run(config, tmp_path / "run", LocalSource(tokenizer_documents=30), progress=False)
    assert run.checkpoints.steps[-1] == TINY.steps
    assert len(run.tokenizer) <= TINY.vocab_size and int(run.train_tokens.max()) < TINY.vocab_size
    result = token_draws(run, run.checkpoints.steps[-1], progress=False)
    draws = result.losses
    assert draws.shape == (2, 6 - result.burn_in, 6 * 15) and draws.dtype == torch.float32
    assert result.loss_trace.shape == result.observable_trace.shape == (2, 6) and result.recorded == 6
    assert result.verdict in VERDICTS and 0 <= result.burn_in <= 3
    assert not (tmp_path / "cache").exists(), "a library call must not write to the book's cache"
    targets = result.targets
    classes = targets.classes
    assert classes.shape == (6 * 15, 6)
    # the columns are positions 1…L−1 of each sequence, sequence after sequence
    assert targets.ids.tolist() == run.observable_ids[:, 1:].reshape(-1).tolist()
    assert targets.sequence.tolist() == [m for m in range(6) for _ in range(15)]
    np.testing.assert_array_equal(run.observable_targets().classes, classes)
    assert group_correlation(draws, classes).shape == (6, 6)
    assert knn_class_recall(draws, classes, k=5).shape == (6,)
    # the book's wrapper caches: a second call is served without sampling again
    cached = book_lm.cached_token_draws(run, run.checkpoints.steps[-1], progress=False)
    torch.testing.assert_close(cached.losses, draws)  # the same seeded chains
    from stagewise.lm import experiment

    samplings = []
    original = experiment.sample_losses
    monkeypatch.setattr(experiment, "sample_losses", lambda *a, **k: samplings.append(1) or original(*a, **k))
    assert torch.equal(book_lm.cached_token_draws(run, run.checkpoints.steps[-1], progress=False).losses, cached.losses)
    assert samplings == [], "the cached entry was sampled again"
    # another sampling set is another entry, sampled once and then served
    other = book_lm.cached_token_draws(run, run.checkpoints.steps[-1], sampling=run.sampling_ids[:16], progress=False)
    assert samplings == [1] and other.recorded == cached.recorded
    book_lm.cached_token_draws(run, run.checkpoints.steps[-1], sampling=run.sampling_ids[:16], progress=False)
    assert samplings == [1]


def test_training_batches_mix_in_repeated_sequences_and_boost_in_a_window():
    from dataclasses import replace

    from stagewise.lm.training import training_batch

    stream = torch.arange(10_000) % 250
    mixed = replace(TINY, repeated_fraction=0.25, boost_window=(10, 20), boosted_fraction=0.75)
    batch = training_batch(mixed, stream, step=0, generator=torch.Generator().manual_seed(0))
    repeated = batch[-1]
    periods = [p for p in range(1, 17) if torch.equal(repeated[p:], repeated[:-p])]
    assert periods and 8 <= periods[0] <= 16, "a repeated row repeats a segment of 8 to 16 tokens"
    assert mixed.repeated_rows(0) == 1 and mixed.repeated_rows(10) == 3 and mixed.repeated_rows(20) == 1
    # natural rows are windows of the stream: consecutive ids modulo 250
    assert bool(((batch[0, 1:] - batch[0, :-1]) % 250 == 1).all())
    with pytest.raises(ValueError, match="repeated_fraction"):
        replace(TINY, repeated_fraction=1.5)
    with pytest.raises(ValueError, match="boost_window"):
        replace(TINY, boost_window=(20, 10))


def test_runs_differing_only_in_a_late_window_share_earlier_checkpoints(tmp_path):
    from dataclasses import replace

    stream = torch.randint(0, TINY.vocab_size, (5000,), generator=torch.Generator().manual_seed(0))
    base = replace(TINY, repeated_fraction=0.25)
    boosted = replace(base, boost_window=(20, 30), boosted_fraction=1.0)
    a = LocalCheckpoints(train_language_model(base, stream, tmp_path / "a", progress=False))
    b = LocalCheckpoints(train_language_model(boosted, stream, tmp_path / "b", progress=False))
    same = [torch.equal(p, q) for p, q in zip(a.load(20).parameters(), b.load(20).parameters())]
    assert all(same)
    assert not torch.equal(next(a.load(40).parameters()), next(b.load(40).parameters()))


def test_learning_rate_schedules():
    from dataclasses import replace

    cosine, constant = TINY, replace(TINY, lr_schedule="constant")
    assert cosine.learning_rate_factor(0) == pytest.approx(1 / TINY.warmup)
    assert constant.learning_rate_factor(TINY.steps - 1) == 1.0
    assert cosine.learning_rate_factor(TINY.steps // 2) == pytest.approx(0.5)
    assert cosine.learning_rate_factor(TINY.steps) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, constant"):
        replace(TINY, lr_schedule="linear")
    with pytest.raises(ValueError, match="branch step"):
        replace(TINY, branch=(TINY.steps + 1, 0))


def test_a_branch_forked_from_a_kept_state_equals_one_trained_through(tmp_path):
    from dataclasses import replace

    stream = torch.randint(0, TINY.vocab_size, (5000,), generator=torch.Generator().manual_seed(0))
    parent = train_language_model(TINY, stream, tmp_path / "parent", progress=False, keep_states=True)
    assert (parent / "state-step20.pt").exists() and not (parent / "state-step32.pt").exists(), \
        "states are kept on the grid of the checkpoint interval only"
    branched = replace(TINY, branch=(20, 7))
    forked = LocalCheckpoints(train_language_model(branched, stream, tmp_path / "forked", progress=False,
                                                   parent=parent))
    through = LocalCheckpoints(train_language_model(branched, stream, tmp_path / "through", progress=False))
    assert forked.steps == [20, 32, 40], "a forked branch holds the checkpoints from the branch step on"
    assert all(torch.equal(p, q) for p, q in zip(forked.load(40).parameters(), through.load(40).parameters()))
    assert all(torch.equal(p, q) for p, q in zip(through.load(20).parameters(),
                                                  LocalCheckpoints(parent).load(20).parameters()))
    # after the branch the data differ from the parent's
    assert not torch.equal(next(through.load(40).parameters()), next(LocalCheckpoints(parent).load(40).parameters()))


def _recorded_batches(monkeypatch, config, stream, directory, **kwargs):
    """Train ``config`` and return ``{step: batch}`` of every batch it drew."""
    from stagewise.lm import training

    batches = {}
    draw = training.training_batch

    def record(config, stream, step, *generators):
        batches[step] = draw(config, stream, step, *generators)
        return batches[step]

    monkeypatch.setattr(training, "training_batch", record)
    train_language_model(config, stream, directory, progress=False, **kwargs)
    monkeypatch.setattr(training, "training_batch", draw)
    return batches


def test_a_boosted_branch_and_its_control_draw_the_same_batches_but_the_boosted_rows(tmp_path, monkeypatch):
    from dataclasses import replace

    stream = torch.randint(0, TINY.vocab_size, (5000,), generator=torch.Generator().manual_seed(0))
    base = replace(TINY, batch_size=8, repeated_fraction=0.25, branch=(20, 7))
    boosted = replace(base, boost_window=(24, 30), boosted_fraction=0.75)
    control = _recorded_batches(monkeypatch, base, stream, tmp_path / "control")
    arm = _recorded_batches(monkeypatch, boosted, stream, tmp_path / "boosted")
    assert sorted(control) == sorted(arm) == list(range(TINY.steps))
    first_boosted, first_repeated = 8 - boosted.repeated_rows(24), 8 - base.repeated_rows(24)  # rows 2 and 6
    for step in range(TINY.steps):
        if 24 <= step < 30:
            differ = [row for row in range(8) if not torch.equal(control[step][row], arm[step][row])]
            assert differ == list(range(first_boosted, first_repeated)), f"step {step}: rows {differ} differ"
        else:
            assert torch.equal(control[step], arm[step]), f"step {step}: batches differ outside the window"
    # the same pair without common random numbers (one generator for everything) parts after the window
    pairs = _one_generator_batches(base, boosted, stream, steps=range(20, 40))
    assert not any(torch.equal(a, b) for a, b in pairs[10:]), \
        "with one generator the boosted arm's extra draws shift its later batches"


def _one_generator_batches(first, second, stream, steps):
    from stagewise.lm.training import training_batch

    generators = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)]
    return [(training_batch(first, stream, s, generators[0]),
             training_batch(second, stream, s, generators[1])) for s in steps]


def test_an_interrupted_branch_resumes_its_repeated_rows_stream(tmp_path, monkeypatch):
    from dataclasses import replace

    stream = torch.randint(0, TINY.vocab_size, (5000,), generator=torch.Generator().manual_seed(0))
    branched = replace(TINY, repeated_fraction=0.5, branch=(8, 3))
    whole = _recorded_batches(monkeypatch, branched, stream, tmp_path / "whole")
    _train_until_interrupted_at_step_20(monkeypatch, branched, stream, tmp_path / "resumed")
    resumed = _recorded_batches(monkeypatch, branched, stream, tmp_path / "resumed")
    assert sorted(resumed) == list(range(20, TINY.steps))
    assert all(torch.equal(whole[step], resumed[step]) for step in resumed), \
        "the resumed run drew other batches"
    final = [LocalCheckpoints(tmp_path / name).load(40).parameters() for name in ("whole", "resumed")]
    assert all(torch.equal(p, q) for p, q in zip(*final))
