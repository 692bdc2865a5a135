"""Memory and time of per-token SGLD draws at Pythia-14m's real shape, on the CPU.

    python bench/lm_pythia_memory.py [--draws 2] [--chains 2] [--observables 600] [--sampling 256]
                                     [--logits-per-chunk N]

A GPT-NeoX with pythia-14m's configuration (vocabulary 50 304, 6 layers, d_model 128, 4 heads,
d_ff 512, rotary on a quarter of each head, parallel residual; 14M parameters) is built here
with random weights: nothing is downloaded.  :func:`stagewise.sampling.sample_losses` then takes
``--draws`` RMSprop-SGLD draws per chain on minibatches of 64 sequences of 55 tokens, recording
the per-token losses of ``--observables`` sequences of 55 tokens at every draw, the paper's
sizes, with :func:`stagewise.lm.training.token_losses` evaluating them in chunks.

The measurement runs in a fresh process: its resident memory once the model and the token ids
exist (``VmRSS``) and its peak afterwards (``VmHWM``, the high-water mark, read from
``/proc/self/status``); the difference is what the draws need beyond the model.  Prints one
JSON line with the machine (CPU model, cores, load average) so the numbers can be read with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import machine


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(draws: int, chains: int, observables: int, sampling: int, logits_per_chunk: int) -> dict:
    """Run in this process (the child): build, sample, report."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from stagewise.lm import training
    from stagewise.lm.training import LMConfig, pythia_architecture
    from stagewise.sampling import SGLDConfig, sample_losses

    torch.manual_seed(0)
    config = LMConfig(vocab_size=50304, hidden=128, layers=6, heads=4, intermediate=512, context=2048)
    model = GPTNeoXForCausalLM(pythia_architecture(config)).eval()
    generator = torch.Generator().manual_seed(1)
    sampling_ids = torch.randint(50277, (sampling, 55), generator=generator)  # ids a tokenizer of 50 277 can give
    observable_ids = torch.randint(50277, (observables, 55), generator=generator)

    def loss(lm: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return training.token_losses(lm, ids, logits_per_chunk=logits_per_chunk)

    before = _status("VmRSS")
    sgld = SGLDConfig(epsilon=1e-6, nbeta=256, gamma=1000, chains=chains, draws=draws, batch_size=64)
    start = time.perf_counter()
    result = sample_losses(model, loss, sampling_ids, sgld, observable_ids, record_sampling=False, progress=False)
    seconds = time.perf_counter() - start
    # the initial evaluation of the sampling set, timed alone, is set-up, not a draw
    start = time.perf_counter()
    with torch.no_grad():
        loss(model, sampling_ids)
    set_up = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "observables": list(observable_ids.shape), "sampling": list(sampling_ids.shape), "batch": 64,
        "chains": chains, "draws": draws, "logits_per_chunk": logits_per_chunk,
        "recorded": list(result.observables.shape),
        "rss_with_model_gb": before / 1e9, "peak_gb": _status("VmHWM") / 1e9,
        "beyond_model_gb": (_status("VmHWM") - before) / 1e9,
        "seconds": seconds, "initial_evaluation_seconds": set_up,
        "seconds_per_draw_per_chain": (seconds - set_up) / (draws * chains),
        **machine.describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--observables", type=int, default=600)
    parser.add_argument("--sampling", type=int, default=256, help="sequences SGLD draws its minibatches from")
    parser.add_argument("--logits-per-chunk", type=int, default=None,
                        help="default: stagewise.lm.training.LOGITS_PER_CHUNK; a huge value evaluates at once")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.logits_per_chunk is None:
        from stagewise.lm.training import LOGITS_PER_CHUNK

        args.logits_per_chunk = LOGITS_PER_CHUNK
    if args.child:
        print(json.dumps(measure(args.draws, args.chains, args.observables, args.sampling, args.logits_per_chunk)))
        return
    command = [sys.executable, __file__, "--child", "--draws", str(args.draws), "--chains", str(args.chains),
               "--observables", str(args.observables), "--sampling", str(args.sampling),
               "--logits-per-chunk", str(args.logits_per_chunk)]
    child = subprocess.run(command, capture_output=True, text=True)  # a fresh process: its own peak
    if child.returncode:
        sys.exit(child.stderr)
    print(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
