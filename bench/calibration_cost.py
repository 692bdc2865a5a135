"""What calibration costs: `stagewise.calibrate` on the toy model at a few checkpoints, as a
multiple of one `stagewise.bif_trajectory` at the chosen setting on the same checkpoints.

    python bench/calibration_cost.py [--checkpoints 3] [--chains 4] [--draws 500] [--device cpu]

Prints the machine (CPU model, cores, load average, torch threads), the calibration table, the
chosen step and both times.  A diverging step stops as soon as every chain has diverged, so the
large steps of the default grid cost little; each step that runs to the end costs one
trajectory, and its comparison with the next-smaller step, run twice as long, two more.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import machine
from stagewise import bif_trajectory, calibrate, toy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=3,
                        help="checkpoints calibrated on, spread over training")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(machine.line())

    experiment = toy.run_toy_experiment(checkpoints=101)
    chosen = np.linspace(10, 100, args.checkpoints).round().astype(int)  # past the first, flat epochs
    model = experiment.trajectory.module(dtype=torch.float32)
    data = (torch.tensor(experiment.data.inputs, dtype=torch.float32),
            torch.tensor(experiment.data.outputs, dtype=torch.float32))
    checkpoints = [experiment.trajectory.state_dicts(dtype=torch.float32)[k] for k in chosen]
    print(f"toy model, checkpoints {chosen.tolist()} (epochs {experiment.epochs[chosen].tolist()}), "
          f"{args.chains} chains x {args.draws} draws, nbeta 3000, gamma 5000")

    start = time.perf_counter()
    calibration = calibrate(model, toy.item_loss, data, checkpoints, nbeta=3000, gamma=5000,
                            checkpoint_indices=chosen.tolist(), device=args.device, chains=args.chains,
                            draws=args.draws, progress=False)
    calibrating = time.perf_counter() - start
    print(calibration)

    start = time.perf_counter()
    bif_trajectory(model, toy.item_loss, data, checkpoints, calibration.config, device=args.device,
                   checkpoint_indices=chosen.tolist(), progress=False)
    one = time.perf_counter() - start
    tried = len({row["epsilon"] for row in calibration.table})
    print(f"calibrate: {calibrating:.1f} s for {tried} steps tried; "
          f"one bif_trajectory at the chosen step: {one:.2f} s; "
          f"calibration costs {calibrating / one:.1f} trajectories")
    print(f"after: {machine.line()}")


if __name__ == "__main__":
    main()
