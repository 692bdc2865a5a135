"""stagewise: stagewise data attribution with Bayesian influence functions.

The library behind the executable book reproducing Lee et al., "Influence Dynamics and
Stagewise Data Attribution" (ICLR 2026).
"""

from stagewise.influence import bif_matrix, local_bif
from stagewise.profiles import Profile, get_profile
from stagewise.sampling import SamplerDivergence, SGLDConfig

__all__ = ["Profile", "get_profile", "local_bif", "bif_matrix", "SGLDConfig", "SamplerDivergence"]
__version__ = "0.1.0"
