"""stagewise: stagewise data attribution with Bayesian influence functions.

The library behind the executable book reproducing Lee et al., "Influence Dynamics and
Stagewise Data Attribution" (ICLR 2026).
"""

from stagewise.profiles import Profile, get_profile

__all__ = ["Profile", "get_profile"]
__version__ = "0.1.0"
