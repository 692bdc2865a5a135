"""stagewise: stagewise data attribution with Bayesian influence functions.

The library behind the executable book reproducing Lee et al., "Influence Dynamics and
Stagewise Data Attribution" (ICLR 2026).
"""

from stagewise.influence import BIFTrajectory, bif_matrix, bif_trajectory, local_bif
from stagewise.profiles import Profile, get_profile
from stagewise.sampling import LossDraws, SamplerDivergence, SGLDConfig, sample_losses

__all__ = [
    "Profile", "get_profile", "bif_trajectory", "BIFTrajectory", "local_bif", "bif_matrix", "sample_losses",
    "LossDraws", "SGLDConfig", "SamplerDivergence",
]
__version__ = "0.1.0"
