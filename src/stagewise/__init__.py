"""stagewise: stagewise data attribution with Bayesian influence functions.

The library behind the executable book reproducing Lee et al., "Influence Dynamics and
Stagewise Data Attribution" (ICLR 2026).

This package and its subpackages :mod:`stagewise.toy` and :mod:`stagewise.lm` are the domain: they
compute, and never read a profile, a cache or the environment.  :mod:`stagewise.book` is the
book's plumbing around them (profiles, cache, command line, plots, progress).
"""

from stagewise.diagnostics import Criteria
from stagewise.influence import (
    BIFTrajectory, Calibration, LLCTrajectory, bif_matrix, bif_trajectory, calibrate, llc_trajectory, local_bif,
)
from stagewise.sampling import LossDraws, SamplerDivergence, SGLDConfig, sample_losses

__all__ = [
    "calibrate", "Calibration", "Criteria", "bif_trajectory", "BIFTrajectory",
    "local_bif", "llc_trajectory", "LLCTrajectory", "bif_matrix", "sample_losses", "LossDraws", "SGLDConfig", "SamplerDivergence",
]
__version__ = "0.1.0"
