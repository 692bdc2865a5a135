"""What a compiled, counter-based noise source fused with the update would save on the toy
trajectory's step. This is a prototype for issue 26, not the library's sampler.

    python bench/fused_update.py [--sets 404] [--dimension 1150]

In one run, per step for ``sets`` parameter rows of ``dimension`` each:

1. the library's step as it is: each chain's float32 noise from its own Mersenne Twister
   (``torch.Generator``, drawn in one thread per torch thread) plus the allocation-free
   RMSprop-SGLD update;
2. the same formula with a counter-based generator (SplitMix64 of a per-chain key plus the
   counter, then Box–Muller) written in torch operations, eager;
3. (2) through ``torch.compile``, one fused C++ kernel (needs a C++ compiler; the compile time
   is printed apart from the step).

It also prints the moments of the compiled kernel's noise, recovered from the update, to check
that it is standard normal.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import machine
from stagewise.sampling import SGLDConfig, SGLDState, _sgld_update_in_place

GOLDEN, MIX1, MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685  # SplitMix64's, as int64


def logical_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x >> bits`` of int64 read as unsigned (torch shifts int64 arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def counter_noise(keys: torch.Tensor, counter: torch.Tensor, constants: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """Standard normals ``(S, 2 * lanes)``: SplitMix64 of ``key + (counter + j)·γ`` for each chain's
    key, two 24-bit uniforms per output, Box–Muller."""
    x = keys[:, None] + (counter + lanes) * constants[0]
    z = (x ^ logical_shift(x, 30)) * constants[1]
    z = (z ^ logical_shift(z, 27)) * constants[2]
    z = z ^ logical_shift(z, 31)
    u1 = (logical_shift(z, 40).to(torch.float32) + 0.5) * (1.0 / 16777216)
    u2 = (z & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216)
    radius, angle = torch.sqrt(-2.0 * torch.log(u1)), 6.283185307179586 * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def counter_step(w, V, g, center, keys, counter, constants, lanes, epsilon: float, nbeta: float, gamma: float,
                 decay: float, stability: float):
    """One RMSprop-SGLD step (SPEC §2) with the counter-based noise; returns ``(w', V')``."""
    noise = counter_noise(keys, counter, constants, lanes)
    V = V * decay + (1 - decay) * g * g
    root = torch.rsqrt(torch.sqrt(V) + stability)
    return w - 0.5 * epsilon * root * root * (nbeta * g + gamma * (w - center)) + math.sqrt(epsilon) * root * noise, V


def per_step_ms(step, repeats: int = 5, steps: int = 100) -> float:
    """The fastest of ``repeats`` timings of ``steps`` calls, in ms per call."""
    for _ in range(5):
        step()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=404, help="parameter sets (checkpoints × chains)")
    parser.add_argument("--dimension", type=int, default=1150, help="parameters per set (even)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine.line()}")
    S, d = args.sets, args.dimension
    if d % 2:
        raise SystemExit("--dimension must be even (Box–Muller gives normals in pairs)")
    config = SGLDConfig(epsilon=3e-5, nbeta=3000, gamma=5000)
    hyper = (config.epsilon, config.nbeta, config.gamma, config.decay, config.stability)
    w = torch.randn(S, d)
    center, g = w + 0.01 * torch.randn(S, d), torch.randn(S, d)
    state = SGLDState(w.clone(), torch.rand(S, d))
    scratch = [torch.empty_like(w) for _ in range(3)]

    # 1. the library's step: per-chain generators in blocks of 57 steps, drawn in threads
    block = 57
    generators = [torch.Generator().manual_seed(s) for s in range(S)]
    rows = torch.empty(S, block, d)
    halves = [range(0, S // 2), range(S // 2, S)]

    def fill(chains: range) -> None:
        for c in chains:
            rows[c].normal_(generator=generators[c])

    with ThreadPoolExecutor(2) as pool:
        noise_ms = per_step_ms(lambda: list(pool.map(fill, halves)), steps=5) / block
    update_ms = per_step_ms(lambda: _sgld_update_in_place(state, g, center, rows[:, 0], config, scratch))

    # 2. and 3. the counter-based step, eager and compiled
    keys = torch.randint(0, 2**62, (S,), dtype=torch.int64)
    constants = torch.tensor([GOLDEN, MIX1, MIX2], dtype=torch.int64)
    lanes = torch.arange(d // 2, dtype=torch.int64)
    eager_ms = per_step_ms(lambda: counter_step(w, state.V, g, center, keys, torch.tensor(0), constants, lanes, *hyper),
                           steps=20)
    start = time.perf_counter()
    compiled = torch.compile(counter_step, dynamic=False)
    compiled(w, state.V, g, center, keys, torch.tensor(0), constants, lanes, *hyper)
    compile_s = time.perf_counter() - start
    counter = [0]

    def compiled_step():
        counter[0] += d // 2
        return compiled(w, state.V, g, center, keys, torch.tensor(counter[0]), constants, lanes, *hyper)

    compiled_ms = per_step_ms(compiled_step)

    print(f"{S} sets × {d} parameters, per step:")
    print(f"  library: noise {noise_ms:.2f} ms + update {update_ms:.2f} ms = {noise_ms + update_ms:.2f} ms")
    print(f"  counter-based noise + update, eager:    {eager_ms:.2f} ms")
    print(f"  counter-based noise + update, compiled: {compiled_ms:.2f} ms "
          f"({(noise_ms + update_ms) / compiled_ms:.1f}x less than the library's; compiled in {compile_s:.0f} s)")
    new_w, new_V = compiled_step()
    root = torch.rsqrt(torch.sqrt(new_V) + config.stability)
    drift = config.nbeta * g + config.gamma * (w - center)
    noise = (new_w - w + 0.5 * config.epsilon * root * root * drift) / (math.sqrt(config.epsilon) * root)
    centred = noise - noise.mean()
    print(f"  its noise over {noise.numel()} draws: mean {noise.mean().item():.4f}, standard deviation "
          f"{noise.std().item():.4f}, kurtosis {(centred**4).mean().item() / centred.var().item() ** 2:.3f} "
          f"(a standard normal: 0, 1, 3)")
    print(f"machine at the end: {machine.line()}")


if __name__ == "__main__":
    main()
