"""The book's boundary for Chapters 2 and 3 (the toy model): profile sizes, the device and
caching around the domain functions of :mod:`stagewise.toy`, :mod:`stagewise.influence` and
:mod:`stagewise.retraining`.

Run Chapter 3's sampling on ``N`` GPUs (or ``N`` CPU processes), filling the cache the chapter
then reads::

    STAGEWISE_DEVICE=cuda torchrun --nproc_per_node N -m stagewise.book.toy
"""

from __future__ import annotations

import numpy as np
import torch

from stagewise import retraining
from stagewise.book import book_device
from stagewise.cache import cached
from stagewise.distributed import init_from_environment, rank_and_size
from stagewise.influence import BIFTrajectory
from stagewise.profiles import ToySizes, get_profile
from stagewise.sampling import SGLDConfig
from stagewise.toy import experiment as toy_experiment
from stagewise.toy.experiment import ToyExperiment, hyperparameter_sweep, run_toy_experiment
from stagewise.toy.network import TrainingConfig


def sizes() -> ToySizes:
    """The toy sizes of the chosen profile (``$STAGEWISE_PROFILE``)."""
    return get_profile().toy


def device() -> torch.device:
    """The chapters' device (``$STAGEWISE_DEVICE``); inside a ``torchrun`` job on GPUs, this
    rank's GPU."""
    chosen = book_device()
    rank, size = rank_and_size()
    if chosen.type == "cuda" and size > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return chosen


def bif_setting() -> SGLDConfig:
    """Chapter 3's SGLD setting for the BIF trajectory (stable at every checkpoint, from the
    sweep), with the profile's chains and draws."""
    toy = sizes()
    return SGLDConfig(epsilon=3e-5, nbeta=3000, gamma=5000, chains=toy.bif_chains, draws=toy.bif_draws)


def experiment(config: TrainingConfig | None = None, checkpoints: int | None = None) -> ToyExperiment:
    """The trained toy network (cached), recorded at the profile's number of checkpoints."""
    config = config or TrainingConfig()
    count = checkpoints or sizes().checkpoints
    return cached("toy-experiment", {"training": config, "checkpoints": count},
                  lambda: run_toy_experiment(config, count, device=device()), depends_on=run_toy_experiment)


def bif_trajectory(run: ToyExperiment, config: SGLDConfig, stride: int = 1, progress: bool = True) -> BIFTrajectory:
    """:meth:`ToyExperiment.bif_trajectory` on the chapters' device, cached by configuration
    (and device type: CPU and GPU random streams differ)."""
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": stride, "sgld": config, "device": where.type}
    rank, _ = rank_and_size()
    return cached("toy-bif", key, lambda: run.bif_trajectory(config, stride, progress=progress and rank == 0, device=where),
                  depends_on=toy_experiment)


def sweep(run: ToyExperiment, base: SGLDConfig, reference: np.ndarray, source: int) -> np.ndarray:
    """:func:`stagewise.toy.hyperparameter_sweep` over the profile's grid and stride (cached);
    ``reference`` is ``(T, N)`` at every ``sweep_stride``-th checkpoint."""
    toy = sizes()
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "base": base, "device": where.type,
           "grid": (toy.sweep_epsilons, toy.sweep_nbetas, toy.sweep_gammas), "source": source,
           "stride": toy.sweep_stride, "reference": np.asarray(reference).round(12).tolist()}
    return cached("toy-sweep", key, lambda: hyperparameter_sweep(
        run, base, toy.sweep_epsilons, toy.sweep_nbetas, toy.sweep_gammas, reference, source, toy.sweep_stride,
        progress=False, device=where), depends_on=hyperparameter_sweep)


def leave_one_out(run: ToyExperiment) -> np.ndarray:
    """Leave-one-out retraining at every checkpoint of ``run`` (cached): ``(T, P, N)``."""
    return cached("toy-loo", {"training": run.config, "epochs": run.epochs.tolist()},
                  lambda: retraining.leave_one_out(run.data, run.config, run.epochs, device=device()),
                  depends_on=retraining.leave_one_out)


def main() -> None:
    """Fill the cache with Chapter 3's BIF trajectory, split over the ranks of a ``torchrun`` job."""
    init_from_environment()
    rank, size = rank_and_size()
    run = experiment()
    result = bif_trajectory(run, bif_setting())
    if rank == 0:
        print(f"on {size} process(es), {device().type}: {result.summary()}")


if __name__ == "__main__":
    main()
