"""Problem sizes for every chapter, chosen by name.

A *profile* fixes how big each computation is; the chapters never hard-code sizes.  Pick one
with the environment variable ``STAGEWISE_PROFILE``:

``fast``
    the test suite: every code path, seconds to a few minutes a chapter;
``default``
    what ``make book`` builds, sized for a laptop CPU;
``paper``
    the paper's sizes, meant for a GPU.

>>> from stagewise import get_profile
>>> get_profile("fast").name
'fast'
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "STAGEWISE_PROFILE"


@dataclass(frozen=True)
class TheorySizes:
    """Chapter 1: the worked Bayesian phase transition."""

    n_grid: int
    """Number of dataset sizes n on the logarithmic grid of the figures."""
    mc_sizes: int
    """Number of dataset sizes at which the closed form is checked by Monte Carlo."""
    mc_draws: int
    """Posterior draws per checked dataset size."""


@dataclass(frozen=True)
class ToySizes:
    """Chapters 2 and 3: the deep linear network."""

    checkpoints: int
    """Checkpoints recorded, evenly spaced over the 10 000 epochs of training."""


@dataclass(frozen=True)
class Profile:
    """All sizes of one profile, grouped by chapter."""

    name: str
    theory: TheorySizes
    toy: ToySizes


PROFILES: dict[str, Profile] = {
    "fast": Profile(
        name="fast",
        theory=TheorySizes(n_grid=60, mc_sizes=5, mc_draws=40_000),
        toy=ToySizes(checkpoints=101),
    ),
    "default": Profile(
        name="default",
        theory=TheorySizes(n_grid=200, mc_sizes=9, mc_draws=200_000),
        toy=ToySizes(checkpoints=201),
    ),
    "paper": Profile(
        name="paper",
        theory=TheorySizes(n_grid=400, mc_sizes=17, mc_draws=1_000_000),
        toy=ToySizes(checkpoints=401),
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name``, or the one named by ``$STAGEWISE_PROFILE``.

    With neither given, the ``default`` profile.  An unknown name raises ``ValueError``
    listing the valid ones.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or "default"
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(PROFILES)
        raise ValueError(
            f"unknown profile {name!r} (from {PROFILE_ENV} or the argument); "
            f"valid profiles are: {valid}"
        ) from None
