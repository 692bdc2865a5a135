"""The book's boundary for Chapters 2 to 4 (the toy model): profile sizes, the device and
caching around the domain functions of :mod:`stagewise.toy`, :mod:`stagewise.influence` and
:mod:`stagewise.toy.retraining`.

Run Chapter 3's sampling on ``N`` GPUs (or ``N`` CPU processes), filling the cache the chapter
then reads::

    STAGEWISE_DEVICE=cuda torchrun --nproc_per_node N -m stagewise.book.toy
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from stagewise.toy import retraining
from stagewise.book import book_device
from stagewise.book.cache import cached
from stagewise.classical import LocalCurvature, gaussian_bif, local_curvature
from stagewise.distributed import init_from_environment, rank_and_size
from stagewise.influence import BIFTrajectory, Calibration, LLCTrajectory, calibrate
from stagewise.book.profiles import ToySizes, get_profile
from stagewise.sampling import SGLDConfig
from stagewise.toy import experiment as toy_experiment
from stagewise.toy.experiment import (
    GaussianCheck,
    SweepResult,
    ToyExperiment,
    bif_sweep,
    gaussian_check,
    run_toy_experiment,
)
from stagewise.toy.network import TrainingConfig, item_loss


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


def calibration(run: ToyExperiment | None = None) -> Calibration:
    """:func:`stagewise.calibrate` on the toy network (cached): the library's default grid of
    step sizes at the profile's posterior (``posterior_nbeta``, ``posterior_gamma``), at every
    ``calibration_stride``-th checkpoint, with the profile's ``calibration_chains`` and the BIF
    trajectory's draws, the warm-up found from the trace."""
    run = run or experiment()
    toy = sizes()
    where = device()
    settings = {"chains": toy.calibration_chains, "draws": toy.bif_draws}
    posterior = {"nbeta": toy.posterior_nbeta, "gamma": toy.posterior_gamma}
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": toy.calibration_stride,
           "posterior": posterior, "settings": settings, "device": where.type}
    rank, _ = rank_and_size()
    return cached("toy-calibration", key, lambda: run.calibrate(
        toy.calibration_stride, device=where, progress=rank == 0, **posterior, **settings),
        depends_on=(toy_experiment, calibrate))


def bif_setting(run: ToyExperiment | None = None) -> SGLDConfig:
    """Chapter 3's SGLD setting for the BIF trajectory: the profile's posterior at the step chosen by
    :func:`calibration`, with the profile's chains (``bif_chains``) and draws and the warm-up
    found from the trace (``burn_in=None``)."""
    return replace(calibration(run).config, chains=sizes().bif_chains)


def training_config() -> TrainingConfig:
    """The chapters' training hyperparameters (App. C.1) with the profile's training seed
    (:attr:`stagewise.book.profiles.Profile.seed`; ``$STAGEWISE_SEED`` overrides it)."""
    return TrainingConfig(seed=get_profile().seed)


def experiment(config: TrainingConfig | None = None, checkpoints: int | None = None) -> ToyExperiment:
    """The trained toy network (cached), recorded at the profile's number of checkpoints, with
    :func:`training_config` unless ``config`` is given."""
    config = config or training_config()
    count = checkpoints or sizes().checkpoints
    return cached("toy-experiment", {"training": config, "checkpoints": count},
                  lambda: run_toy_experiment(config, count, device=device()), depends_on=run_toy_experiment)


def cached_bif_trajectory(run: ToyExperiment, config: SGLDConfig, stride: int = 1, progress: bool = True,
                   step_check: bool = False) -> BIFTrajectory:
    """:meth:`ToyExperiment.bif_trajectory` on the chapters' device, cached by configuration
    (and device type: CPU and GPU random streams differ)."""
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": stride, "sgld": config, "device": where.type}
    if step_check:
        key["step_check"] = True    # only then, so that the caches of runs without one stay valid
    rank, _ = rank_and_size()
    return cached("toy-bif", key, lambda: run.bif_trajectory(config, stride, progress=progress and rank == 0, device=where,
                                                            step_check=step_check),
                  depends_on=toy_experiment)


def cached_llc_trajectory(run: ToyExperiment, config: SGLDConfig, stride: int = 1, progress: bool = True,
                   step_check: bool = False) -> LLCTrajectory:
    """:meth:`ToyExperiment.llc_trajectory` on the chapters' device, cached by configuration."""
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": stride, "sgld": config,
           "device": where.type, "step_check": step_check}
    rank, _ = rank_and_size()
    return cached("toy-llc", key, lambda: run.llc_trajectory(config, stride, progress=progress and rank == 0,
                                                            device=where, step_check=step_check),
                  depends_on=toy_experiment)


def sweep(run: ToyExperiment, configs: list[SGLDConfig], stride: int, on_divergence: str = "raise") -> SweepResult:
    """:func:`stagewise.toy.bif_sweep` over ``configs`` at every ``stride``-th checkpoint (cached)."""
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "configs": configs, "stride": stride,
           "on_divergence": on_divergence, "device": where.type}
    return cached("toy-sweep", key, lambda: bif_sweep(run, configs, stride, on_divergence, progress=rank_and_size()[0] == 0, device=where),
                  depends_on=bif_sweep)


def posterior_gaussianity(run: ToyExperiment, configs: list[SGLDConfig], checkpoint_indices: list[int]) -> GaussianCheck:
    """:func:`stagewise.toy.experiment.gaussian_check` of ``configs`` at ``checkpoint_indices`` (cached)."""
    where = device()
    key = {"training": run.config, "checkpoints": len(run.epochs), "configs": configs,
           "at": [int(k) for k in checkpoint_indices], "device": where.type}
    return cached("toy-gaussian-check", key, lambda: gaussian_check(run, configs, checkpoint_indices, device=where),
                  depends_on=gaussian_check)


def cached_leave_one_out(run: ToyExperiment) -> np.ndarray:
    """Leave-one-out retraining at every checkpoint of ``run`` (cached): ``(T, P, N)``."""
    return cached("toy-loo", {"training": run.config, "epochs": run.epochs.tolist()},
                  lambda: retraining.leave_one_out(run.data, run.config, run.epochs, device=device()),
                  depends_on=retraining.leave_one_out)


def _items_xy(run: ToyExperiment) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(run.data.inputs, dtype=torch.float64), torch.tensor(run.data.outputs, dtype=torch.float64)


def curvature(run: ToyExperiment, stride: int = 1) -> LocalCurvature:
    """:func:`stagewise.classical.local_curvature` at every ``stride``-th checkpoint (cached)."""
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": stride}
    return cached("toy-curvature", key, lambda: local_curvature(
        run.trajectory.module(), item_loss, _items_xy(run), run.trajectory.state_dicts()[::stride], progress=True),
        depends_on=local_curvature)


def gaussian_limit(run: ToyExperiment, config: SGLDConfig, stride: int = 1) -> np.ndarray:
    """:func:`stagewise.classical.gaussian_bif` for ``config``'s nβ and γ at every ``stride``-th
    checkpoint (cached): ``(K, 8, 8)``."""
    key = {"training": run.config, "checkpoints": len(run.epochs), "stride": stride, "nbeta": config.nbeta,
           "gamma": config.gamma}
    return cached("toy-gaussian-bif", key, lambda: gaussian_bif(
        run.trajectory.module(), item_loss, _items_xy(run), run.trajectory.state_dicts()[::stride], config.nbeta,
        config.gamma, progress=True), depends_on=gaussian_bif)


def upweighting(run: ToyExperiment, perturb: str) -> np.ndarray:
    """:func:`stagewise.toy.retraining.upweighting_influence` at every checkpoint (cached): ``(T, P, N)``."""
    key = {"training": run.config, "epochs": run.epochs.tolist(), "perturb": perturb}
    return cached("toy-upweighting", key, lambda: retraining.upweighting_influence(
        run.data, run.config, run.epochs, perturb=perturb, device=device()), depends_on=retraining.upweighting_influence)


def subset_retraining(run: ToyExperiment, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random half-subsets (all of them when there are fewer) and the per-sample
    losses of the network retrained on each, at every checkpoint (cached): ``(S, N)`` and
    ``(T, S, N)``."""
    subsets = retraining.random_subsets(len(run.data.items), count)
    key = {"training": run.config, "epochs": run.epochs.tolist(), "subsets": subsets.tolist()}
    losses = cached("toy-subsets", key, lambda: retraining.subset_losses(run.data, run.config, run.epochs, subsets,
                                                                           device=device()),
                    depends_on=retraining.subset_losses)
    return subsets, losses


def main() -> None:
    """Fill the cache with Chapter 3's BIF trajectory, split over the ranks of a ``torchrun`` job."""
    init_from_environment()
    rank, size = rank_and_size()
    run = experiment()
    result = cached_bif_trajectory(run, bif_setting())
    if rank == 0:
        print(f"on {size} process(es), {device().type}: {result.summary()}")


if __name__ == "__main__":
    main()
