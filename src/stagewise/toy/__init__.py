"""The toy model of the paper (§3, App. C): a deep linear network learning a semantic
hierarchy, its closed-form dynamics and its analytic influence.

Nouns: :class:`Hierarchy` (the data), :class:`TrainingConfig` and :class:`Trajectory` (the
network), :class:`ModeBasis` (the SVD of the data), :class:`SVDResponse` (its perturbation) and
:class:`ToyExperiment` (a trained run with everything read off it).
"""

from stagewise.toy.data import ITEMS, Hierarchy, Split, hierarchy
from stagewise.toy.dynamics import (
    ModeBasis,
    correlation_modes,
    data_modes,
    fit_initial_strengths,
    mode_strength,
    mode_strength_ds,
    pool_within_blocks,
    trained_mode_strengths,
)
from stagewise.toy.experiment import SweepResult, ToyExperiment, bif_sweep, run_toy_experiment
from stagewise.toy.network import (
    DeepLinearNetwork,
    TrainingConfig,
    Trajectory,
    checkpoint_epochs,
    item_loss,
    reduced_rank_llc,
    time_constant,
    train_linear_network,
)
from stagewise.toy.perturbation import (
    SVDResponse,
    analytic_influence,
    closed_form_loss_difference,
    closed_form_losses,
    closed_form_map,
    finite_difference_influence,
    map_derivative,
    svd_response,
    svd_response_errors,
    upweighting_direction,
)
from stagewise.toy.representations import mds_trajectories, separation_epoch, split_separation

__all__ = [
    "ITEMS", "Hierarchy", "Split", "hierarchy", "ModeBasis", "correlation_modes", "data_modes",
    "fit_initial_strengths", "mode_strength", "mode_strength_ds", "pool_within_blocks",
    "trained_mode_strengths", "DeepLinearNetwork", "item_loss", "reduced_rank_llc", "ToyExperiment", "SweepResult", "bif_sweep", "run_toy_experiment", "TrainingConfig", "Trajectory",
    "checkpoint_epochs", "time_constant", "train_linear_network", "SVDResponse",
    "analytic_influence", "closed_form_loss_difference", "closed_form_losses", "closed_form_map",
    "map_derivative", "svd_response", "svd_response_errors", "finite_difference_influence",
    "upweighting_direction", "mds_trajectories",
    "separation_epoch", "split_separation",
]
