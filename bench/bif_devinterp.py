"""BIF trajectory of the toy model: stagewise against devinterp 2.0.1, same checkpoints and
hyperparameters, in one run.

    python bench/bif_devinterp.py [--checkpoints 101] [--devinterp-checkpoints 10] [--device cuda]

1. Agreement: at one checkpoint, the BIF matrix of both implementations, compared within Monte
   Carlo error (standard errors from the spread of independent chains).
2. Speed against the raw work: the same RMSprop-SGLD steps for all checkpoints × chains as a
   plain loop of batched matrix products with hand-written gradients and one noise generator
   (nothing recorded, nothing checked), per draw, beside stagewise's per-draw cost.
3. Speed: the whole trajectory (checkpoints × chains × draws, full batch) with stagewise, and
   devinterp's ``bif()`` on the first ``--devinterp-checkpoints`` of the same checkpoints; its
   per-checkpoint time is multiplied out to the whole trajectory (devinterp samples one
   checkpoint and one chain at a time, so its cost is linear in both).
   ``--devinterp-checkpoints 0`` times stagewise alone (no devinterp needed).

devinterp is a bench-only requirement (bench/requirements.txt); the book does not need it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

import machine
from stagewise import toy
from stagewise.influence import bif_matrix
from stagewise.sampling import SGLDConfig

warnings.filterwarnings("ignore")


def devinterp_bif(network: torch.nn.Module, data: toy.Hierarchy, config: SGLDConfig) -> np.ndarray:
    """devinterp's ``bif()`` on the eight items: (chains, 8, 8) per-chain covariances → −Cov.

    devinterp takes token sequences; item ``i`` becomes the sequence ``[i, i]`` and the loss of
    its single "next token" is the item loss.
    """
    from datasets import Dataset
    from devinterp.slt.sampling import sample

    X = torch.tensor(data.inputs, dtype=torch.float32)
    Y = torch.tensor(data.outputs, dtype=torch.float32)
    dataset = Dataset.from_dict({"input_ids": [[i, i] for i in range(len(data.items))]}).with_format("torch")

    def loss_fn(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        items = input_ids[:, 0]
        return toy.item_loss(model, (X[items], Y[items]))[:, None]

    samples = sample(
        network, dataset, {"items": (dataset, 1)},
        lr=config.epsilon, n_beta=config.nbeta, localization=config.gamma,
        sampling_method="rmsprop_sgld", rmsprop_eps=config.stability, rmsprop_alpha=config.decay,
        num_chains=config.chains, num_draws=config.draws, batch_size=len(data.items), shuffle=False,
        loss_fn=loss_fn, device="cpu", init_seed=config.seed,
    )
    ds = samples.dataset
    losses = ds["loss_items"].values.reshape(config.chains, config.draws, len(data.items))
    order = ds["input_ids_items"].values.reshape(-1, 2)[: len(data.items), 0]
    unshuffled = np.empty_like(losses)
    unshuffled[..., order] = losses
    return unshuffled


def per_chain_bif(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled BIF and its standard error from ``(chains, draws, n)`` losses."""
    pooled = bif_matrix(torch.tensor(losses)[None])[0].numpy()
    chains = bif_matrix(torch.tensor(losses)[:, None]).numpy()
    return pooled, chains.std(axis=0, ddof=1) / np.sqrt(len(losses))


def raw_draw_seconds(experiment: toy.ToyExperiment, config: SGLDConfig, steps: int, device: str) -> float:
    """Seconds per step of the bare RMSprop-SGLD update of every (checkpoint, chain) at once."""
    states = experiment.trajectory.state_dicts(dtype=torch.float32)
    W1 = torch.stack([s["W1"] for s in states]).repeat_interleave(config.chains, 0).to(device)
    W2 = torch.stack([s["W2"] for s in states]).repeat_interleave(config.chains, 0).to(device)
    centre1, centre2 = W1.clone(), W2.clone()
    V1, V2 = torch.zeros_like(W1), torch.zeros_like(W2)
    X = torch.tensor(experiment.data.inputs, dtype=torch.float32, device=device)
    Y = torch.tensor(experiment.data.outputs, dtype=torch.float32, device=device)
    n = X.shape[0]
    start = time.perf_counter()
    for _ in range(steps):
        hidden = W1 @ X.T                          # (S, hidden, n)
        residual = (W2 @ hidden - Y.T) / n         # d(mean loss)/d(output)
        g2 = residual @ hidden.transpose(1, 2)
        g1 = W2.transpose(1, 2) @ residual @ X
        for w, g, V, centre in ((W1, g1, V1, centre1), (W2, g2, V2, centre2)):
            V.mul_(config.decay).addcmul_(g, g, value=1 - config.decay)
            G = 1 / (V.sqrt() + config.stability)
            w.add_(-0.5 * config.epsilon * G * (config.nbeta * g + config.gamma * (w - centre))
                   + (config.epsilon * G).sqrt() * torch.randn_like(w))
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=101)
    parser.add_argument("--devinterp-checkpoints", type=int, default=10)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="where stagewise samples (devinterp runs on the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    skip_devinterp = args.devinterp_checkpoints == 0

    experiment = toy.run_toy_experiment(checkpoints=args.checkpoints)
    config = SGLDConfig(epsilon=3e-5, nbeta=3000, gamma=5000, chains=args.chains, draws=args.draws)
    print(f"machine: {machine.line()}")
    print(f"toy model, {args.checkpoints} checkpoints × {config.chains} chains × {config.draws} draws, full batch")
    print(f"hyperparameters: {config.describe()}\n")

    # 1. agreement at one checkpoint, with more chains for a sharper test
    if not skip_devinterp:
        t = int(np.argmin(np.abs(experiment.epochs - 3000)))
        check = SGLDConfig(**{**config.__dict__, "chains": 16})
        ours = experiment.sample_posterior(check, stride=1, progress=False).sampling[t].numpy()
        theirs = devinterp_bif(experiment.trajectory.module(checkpoint=t, dtype=torch.float32), experiment.data, check)
        (ours_bif, ours_se), (their_bif, their_se) = per_chain_bif(ours), per_chain_bif(theirs)
        z = (ours_bif - their_bif) / np.sqrt(ours_se**2 + their_se**2)
        upper = np.triu_indices(8)
        print(f"agreement at epoch {experiment.epochs[t]} ({check.chains} chains each): "
              f"|stagewise − devinterp| / s.e. over the 36 distinct entries: "
              f"median {np.median(np.abs(z[upper])):.2f}, max {np.abs(z[upper]).max():.2f}; "
              f"{np.mean(np.abs(z[upper]) < 3):.0%} within 3 s.e.")
        print(f"  BIF(dog, ·) stagewise: {np.array2string(ours_bif[3], precision=6)}")
        print(f"  BIF(dog, ·) devinterp: {np.array2string(their_bif[3], precision=6)}\n")

    # 2. raw work per draw, then 3. the public verb, draws to BIF, LLC and diagnostics
    raw_draw_seconds(experiment, config, 5, args.device)  # warm-up
    raw = raw_draw_seconds(experiment, config, min(config.draws, 500), args.device)
    experiment.bif_trajectory(replace(config, draws=2), progress=False, device=args.device)  # warm-up
    start = time.perf_counter()
    result = experiment.bif_trajectory(config, progress=False, device=args.device)
    ours_seconds = time.perf_counter() - start
    print(f"stagewise: {ours_seconds:.1f} s for the whole trajectory on {args.device} "
          f"({ours_seconds / config.draws * 1e3:.1f} ms per draw of all {args.checkpoints * config.chains} chains; "
          f"verdicts: {result.verdicts.count('healthy')} of {len(result.verdicts)} healthy)")
    print(f"raw work: {raw * 1e3:.1f} ms per draw; stagewise / raw = {ours_seconds / config.draws / raw:.2f}")
    if skip_devinterp:
        print(f"machine at the end: {machine.line()}")
        return
    subset = args.devinterp_checkpoints
    start = time.perf_counter()
    for k in range(subset):
        losses = devinterp_bif(experiment.trajectory.module(checkpoint=k * (args.checkpoints // subset), dtype=torch.float32),
                               experiment.data, config)
        per_chain_bif(losses)
    devinterp_seconds = (time.perf_counter() - start) / subset * args.checkpoints
    print(f"devinterp: {devinterp_seconds:.0f} s for the whole trajectory "
          f"(measured on {subset} checkpoints, {devinterp_seconds / args.checkpoints:.2f} s each)")
    print(f"ratio: stagewise is {devinterp_seconds / ours_seconds:.0f}x faster")
    print(f"machine at the end: {machine.line()}")


if __name__ == "__main__":
    main()
