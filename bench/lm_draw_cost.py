"""Per-token influence in a language model: cost of one SGLD draw against the raw work, and the
memory of group influence.

    python bench/lm_draw_cost.py [--chains 4] [--draws 20] [--observables 600] [--tokens 33000]
                                 [--device cuda] [--pythia-14m]

1. Speed: one draw of :func:`stagewise.sampling.sample_losses` on a GPT-NeoX of the default
   profile's architecture, recording the per-token losses of ``--observables`` sequences of 55
   tokens, against the raw work it has to do in the same process: for every chain, one
   gradient step on a minibatch of 64 sequences plus one forward pass over the observables,
   written as a plain PyTorch loop with no sampler around it.  Both are timed per draw, after a
   warm-up, so set-up costs do not count.  Both run on ``--device``; ``--pythia-14m`` uses
   Pythia-14m's real size (vocabulary 50 304, context 2048; 14M parameters), the paper-scale
   per-token draw, meant for a GPU.
2. Memory: the extra peak resident memory of :func:`group_correlation` and
   :func:`knn_class_recall` on ``(4 chains, 200 draws, --tokens)`` float32 losses (the paper's
   sizes), each in a fresh process, beside the 4.4 GB a tokens × tokens float32 matrix would take.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

import machine
from stagewise.book.profiles import LOCAL_SAMPLER, get_profile
from stagewise.groups import group_correlation, knn_class_recall
from stagewise.lm.training import LMConfig, pythia_architecture, token_losses
from stagewise.sampling import sample_losses

SEQUENCE_LENGTH = 55
SAMPLING_BATCH = 64


def default_model(pythia_14m: bool = False) -> GPTNeoXForCausalLM:
    if pythia_14m:
        config = LMConfig(vocab_size=50_304, hidden=128, layers=6, heads=4, intermediate=512, context=2048)
    else:
        config = get_profile("default").lm.study.model
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(pythia_architecture(config)).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler_seconds_per_draw(model, data, observables, chains: int, draws: int) -> float:
    def run(n_draws: int) -> float:
        config = replace(LOCAL_SAMPLER, chains=chains, draws=n_draws, batch_size=SAMPLING_BATCH)
        synchronize(data.device)
        start = time.perf_counter()
        sample_losses(model, token_losses, data, config, observables, record_sampling=False, progress=False)
        synchronize(data.device)
        return time.perf_counter() - start

    run(2)  # warm-up
    return (run(2 + draws) - run(2)) / draws


def raw_seconds_per_draw(model, data, observables, chains: int, draws: int) -> float:
    generator = torch.Generator(device=data.device).manual_seed(0)

    def one_draw() -> None:
        for _ in range(chains):
            batch = data[torch.randperm(len(data), generator=generator, device=data.device)[:SAMPLING_BATCH]]
            model.zero_grad(set_to_none=True)
            token_losses(model, batch).mean().backward()
            with torch.no_grad():
                token_losses(model, observables)

    for _ in range(2):
        one_draw()
    synchronize(data.device)
    start = time.perf_counter()
    for _ in range(draws):
        one_draw()
    synchronize(data.device)
    return (time.perf_counter() - start) / draws


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def extra_peak_memory(function: str, tokens: int) -> float:
    """Peak resident memory (GiB) added by one call of ``function`` on paper-sized draws: the
    process's high-water mark is reset just before the call (Linux ``clear_refs``), so neither
    the start-up nor the inputs count.  (``ru_maxrss`` cannot do this: a child inherits the
    high-water mark of the parent it was forked from.)"""
    generator = torch.Generator().manual_seed(0)
    draws = torch.randn(4, 200, tokens, generator=generator)
    draws += torch.randn(4, 200, 1, generator=generator)  # correlated, like real losses
    membership = np.random.default_rng(0).random((tokens, 6)) < 0.2
    before = _memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if function == "group_correlation":
        group_correlation(draws, membership)
    else:
        knn_class_recall(draws, membership, k=30)
    return (_memory_kib("VmHWM") - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--observables", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=33_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pythia-14m", action="store_true", help="Pythia-14m's real size (for a GPU)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-of", choices=["group_correlation", "knn_class_recall"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory_of:
        print(json.dumps(extra_peak_memory(args.memory_of, args.tokens)))
        return

    device = torch.device(args.device)
    model = default_model(args.pythia_14m).to(device)
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    data = torch.randint(vocab, (4096, SEQUENCE_LENGTH), generator=generator).to(device)
    observables = torch.randint(vocab, (args.observables, SEQUENCE_LENGTH), generator=generator).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine.line()}")
    print(f"GPT-NeoX with {parameters / 1e6:.2f}M parameters; {args.chains} chains; minibatch "
          f"{SAMPLING_BATCH}×{SEQUENCE_LENGTH}; observables {args.observables}×{SEQUENCE_LENGTH} tokens")
    raw = raw_seconds_per_draw(model, data, observables, args.chains, args.draws)
    sampler = sampler_seconds_per_draw(model, data, observables, args.chains, args.draws)
    print(f"raw work (gradient step + observable forward, per chain): {raw:.3f} s per draw")
    print(f"stagewise sample_losses:                                 {sampler:.3f} s per draw")
    print(f"ratio sampler / raw: {sampler / raw:.2f} (on {device})")
    print(f"machine at the end: {machine.line()}")
    if args.skip_memory:
        return

    dense = args.tokens**2 * 4 / 2**30
    for function in ("group_correlation", "knn_class_recall"):
        result = subprocess.run([sys.executable, __file__, "--memory-of", function, "--tokens", str(args.tokens)],
                                capture_output=True, text=True, check=True)
        extra = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{function} on (4, 200, {args.tokens}) losses: {extra:.2f} GiB extra peak memory "
              f"(the dense tokens × tokens matrix alone: {dense:.1f} GiB)")


if __name__ == "__main__":
    main()
