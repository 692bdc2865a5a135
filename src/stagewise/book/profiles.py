"""Problem sizes for every chapter, chosen by name.

A *profile* fixes how big each computation is; the chapters never hard-code sizes.  Pick one
with the environment variable ``STAGEWISE_PROFILE``:

``fast``
    the test suite: every code path, seconds to a few minutes a chapter;
``default``
    what ``make book`` builds, sized for a laptop CPU;
``paper``
    the paper's sizes, meant for a GPU.

>>> from stagewise.book.profiles import get_profile
>>> get_profile("fast").name
'fast'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from stagewise.lm.experiment import PAPER_TABLE_2, TokenInfluenceConfig
from stagewise.lm.intervention import BoostScan
from stagewise.lm.training import LMConfig

PROFILE_ENV = "STAGEWISE_PROFILE"
SEED_ENV = "STAGEWISE_SEED"
LM_SOURCE_ENV = "STAGEWISE_LM"
LM_SOURCES: tuple[str, ...] = ("local", "pythia-14m")
"""Where Chapters 5 and 6 take their model, tokenizer and text from: ``local`` (offline: the
standard library, a BPE and models trained here) or ``pythia-14m`` (Pythia-14m's hub revisions,
its tokenizer and the Pile; needs a network or a filled hub cache)."""


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
    """Chapters 2 to 4: the deep linear network."""

    checkpoints: int
    """Checkpoints recorded, evenly spaced over the 10 000 epochs of training."""
    bif_chains: int
    """SGLD chains per checkpoint for the BIF trajectory."""
    bif_draws: int
    """SGLD draws per chain for the BIF trajectory."""
    sweep_stride: int
    """The hyperparameter sweep uses every ``sweep_stride``-th checkpoint."""
    sweep_chains: int
    sweep_draws: int
    sweep_epsilons: tuple[float, ...]
    """Step sizes of the RMSprop-SGLD grid (with ``sweep_nbetas`` × ``sweep_gammas``)."""
    sweep_nbetas: tuple[float, ...]
    sweep_gammas: tuple[float, ...]
    sweep_plain_epsilons: tuple[float, ...]
    """Step sizes of the plain-SGLD grid (no preconditioner; same nβ and γ)."""
    sweep_stabilities: tuple[float, ...]
    """RMSprop stability constants α tried at the paper's reported setting and at ours."""
    sweep_decays: tuple[float, ...]
    """RMSprop decays b tried with every α."""
    classical_stride: int
    """The damped classical IF uses every ``classical_stride``-th checkpoint."""
    gaussian_stride: int
    """The second-order Gaussian BIF (per-sample Hessians) uses every ``gaussian_stride``-th checkpoint."""
    bias_epsilons: tuple[float, ...]
    """Step sizes for the step-size bias, largest first; draws grow as ε shrinks."""
    bias_stride: int
    """The step-size bias uses every ``bias_stride``-th checkpoint."""
    calibration_stride: int
    """:func:`stagewise.calibrate` chooses the step size at every ``calibration_stride``-th checkpoint."""
    calibration_chains: int
    """Chains per checkpoint for the calibration (more than the trajectory's: they only sharpen the
    comparison between steps, and cost little in one batch; the step does not depend on them)."""
    bif_seeds: int
    """Independent seeds of the BIF trajectory, to tell Monte Carlo noise from bias."""
    lds_subsets: int
    """Half-subsets retrained for the linear datamodeling score (all 70 when at least 70)."""
    lds_null_samples: int = 200
    """Random attributions drawn for the LDS's null band."""
    posterior_nbeta: float = 3000.0
    """nβ of the chapters' local posterior (under the ½Σ reading of the loss)."""
    posterior_gamma: float = 5000.0
    """γ of the chapters' local posterior.  With nβ it chooses what is sampled;
    :func:`stagewise.book.toy.calibration` chooses how finely (the step size)."""


@dataclass(frozen=True)
class LanguageModelSizes:
    """Chapter 5 (and Chapter 6's run): the study, and what the chapter reads off it."""

    study: TokenInfluenceConfig
    """The model trained here, its sampler (posterior, step, chains, draws, minibatch, burn-in,
    thinning) and the observable sequences: the domain's own configuration, passed as it is."""
    analysed_steps: tuple[int, ...]
    """Checkpoints at which the BIF is estimated."""
    asserts_claims: bool
    """Whether the run is large enough for Chapter 5 to assert the paper's claims; the fast
    profile's model is too small and too briefly trained, and only exercises the code."""
    null_samples: int = 200
    """Draws of every null of Chapter 5's token study (KNN label permutations, random groups)."""


@dataclass(frozen=True)
class InductionSizes:
    """Chapter 6: induction heads and the stagewise intervention."""

    model: LanguageModelSizes
    """The run and its sampler; SGLD runs at its ``analysed_steps``, or at every evenly spaced
    checkpoint when there are none."""
    probe_sequences: int
    probe_half: int
    """The probe: ``probe_sequences`` random sequences of ``probe_half`` tokens, each repeated once."""
    scan: BoostScan
    """The intervention scan: boost windows before and through formation, each a mild dose (the
    baseline's share of repeated sequences plus a little), on every data seed."""
    event_level: float
    """The measured event: the best head's score reaches this fraction of the baseline's final one."""
    mix_sampling_steps: tuple[int, ...]
    """Checkpoints at which the control that samples on the training mix runs (empty: every
    analysed checkpoint)."""


@dataclass(frozen=True)
class PythiaSizes:
    """Chapter 5 with the ``pythia-14m`` source: SGLD around Pythia-14m's published revisions."""

    study: TokenInfluenceConfig
    """The sampler and the observables (the model is the hub's: :func:`stagewise.book.lm.study_sizes`)."""
    analysed_steps: tuple[int, ...]
    """Hub revisions ``step<N>`` at which the BIF is estimated."""
    documents: int
    """Pile documents read (the first ones of the stream), split into training and held-out text."""
    asserts_claims: bool
    """Whether Chapter 5 asserts the paper's Pythia claims (not on the fast profile's stand-in)."""


@dataclass(frozen=True)
class Profile:
    """All sizes of one profile, grouped by chapter, and the language-model source."""

    name: str
    theory: TheorySizes
    toy: ToySizes
    lm: LanguageModelSizes
    induction: InductionSizes
    pythia: PythiaSizes
    lm_source: str = "local"
    """One of :data:`LM_SOURCES`; ``$STAGEWISE_LM`` overrides it."""
    seed: int = 0
    """The training seed of the toy chapters (the network's initial weights); ``$STAGEWISE_SEED``
    overrides it.  The fast profile, which the test suite runs, uses another seed than the book,
    so the tests check the toy chapters' claims on a second initialisation."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"the training seed must be a non-negative integer (from {SEED_ENV} or the "
                             f"profile), got {self.seed!r}")
        if self.lm_source not in LM_SOURCES:
            raise ValueError(f"unknown language-model source {self.lm_source!r} (from {LM_SOURCE_ENV} or the "
                             f"profile); valid sources are: {', '.join(LM_SOURCES)}")


LOCAL_SAMPLER = replace(PAPER_TABLE_2.sgld, epsilon=1e-5)
"""The sampler of Chapters 5 and 6 on the models trained here: Table 2's posterior (nβ = 256,
γ = 1000) at ε = 1e-5, ten times Pythia's step, for these small models; chains, draws and
minibatch are set per profile."""

PAPER_PYTHIA = PythiaSizes(
    study=PAPER_TABLE_2,
    # log-spaced through the early revisions, dense around the induction bump (≈1k–60k steps)
    analysed_steps=(0, 64, 256, 512, 1000, 2000, 4000, 8000, 16_000, 24_000, 30_000, 36_000, 50_000, 70_000,
                    100_000, 143_000),
    documents=2000, asserts_claims=True,
)
"""The paper's Pythia-14m study: Table 2's sampler and observables at its revisions."""


PROFILES: dict[str, Profile] = {
    "fast": Profile(
        name="fast",
        seed=1,
        theory=TheorySizes(n_grid=60, mc_sizes=5, mc_draws=40_000),
        toy=ToySizes(
            checkpoints=101, bif_chains=4, bif_draws=2000,
            sweep_stride=10, sweep_chains=2, sweep_draws=200,
            sweep_epsilons=(1e-5, 1e-3), sweep_nbetas=(1000, 5000), sweep_gammas=(1000, 5000),
            sweep_plain_epsilons=(1e-4, 1e-3), sweep_stabilities=(0.1, 1.0), sweep_decays=(0.99,),
            classical_stride=4, gaussian_stride=4, bias_epsilons=(3e-5, 3e-6), bias_stride=20,
            calibration_stride=20, calibration_chains=16, bif_seeds=2,
            lds_subsets=70, lds_null_samples=50,
        ),
        lm=LanguageModelSizes(
            study=TokenInfluenceConfig(
                model=LMConfig(vocab_size=512, hidden=64, layers=2, intermediate=256, context=64, steps=300,
                               batch_size=8, checkpoint_interval=100),
                sgld=replace(LOCAL_SAMPLER, chains=2, draws=20, batch_size=8),
                observable_sequences=40, sequence_length=33,
            ),
            analysed_steps=(0, 16, 64, 128, 200, 300), asserts_claims=False, null_samples=20,
        ),
        induction=InductionSizes(
            model=LanguageModelSizes(
                study=TokenInfluenceConfig(
                    model=LMConfig(vocab_size=512, hidden=64, layers=2, intermediate=256, context=32,
                                   steps=200, batch_size=8, checkpoint_interval=25, lr_schedule="constant",
                                   repeated_fraction=0.75),
                    sgld=replace(LOCAL_SAMPLER, chains=2, draws=10, batch_size=8),
                    observable_sequences=16, sequence_length=33, sampling_sequences=1024,
                ),
                analysed_steps=(), asserts_claims=False,
            ),
            probe_sequences=16, probe_half=8,
            scan=BoostScan(starts=(50, 100), length=25, boosted_fraction=0.875, seeds=(1, 2), stop=175,
                           checkpoint_interval=25),
            event_level=0.8, mix_sampling_steps=(100, 200),
        ),
        pythia=PythiaSizes(
            study=replace(PAPER_TABLE_2, observable_sequences=12, sequence_length=33,
                          sgld=replace(PAPER_TABLE_2.sgld, chains=2, draws=4, batch_size=8)),
            analysed_steps=(0, 512, 1000), documents=200, asserts_claims=False,
        ),
    ),
    "default": Profile(
        name="default",
        theory=TheorySizes(n_grid=200, mc_sizes=9, mc_draws=200_000),
        toy=ToySizes(
            checkpoints=201, bif_chains=4, bif_draws=2000,
            sweep_stride=8, sweep_chains=4, sweep_draws=500,
            # the paper's Table 1 ranges, coarsely: eps in [1e-7, 1e-2], nbeta in [10, 1e4], gamma in [1e-2, 1e6]
            sweep_epsilons=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2), sweep_nbetas=(10, 1000, 3000, 5000, 10_000),
            sweep_gammas=(1, 100, 1000, 5000, 20_000, 1e6), sweep_plain_epsilons=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
            sweep_stabilities=(1e-4, 1e-3, 1e-2, 0.1, 1.0), sweep_decays=(0.8, 0.9, 0.95, 0.99),
            classical_stride=4, gaussian_stride=2, bias_epsilons=(3e-5, 1e-5, 3e-6, 1e-6), bias_stride=16,
            calibration_stride=40, calibration_chains=16, bif_seeds=3, lds_subsets=70,
        ),
        lm=LanguageModelSizes(
            # 4 chains: 40 unrecorded steps from the checkpoint, then 40 draws one every 4 steps, at 5
            # checkpoints; evaluating the 100 observables costs about 4.5 steps, and recording every step
            # left R-hat at 1.84 at step 1000 (1.22 thinned, for a third more time; see Chapter 5)
            study=TokenInfluenceConfig(
                model=LMConfig(vocab_size=2048, hidden=128, layers=6, intermediate=512, context=64,
                               steps=3000, batch_size=16, checkpoint_interval=500),
                sgld=replace(LOCAL_SAMPLER, chains=4, draws=40, batch_size=16, burn_in=40, thin=4),
                observable_sequences=100, sequence_length=55,
            ),
            analysed_steps=(0, 64, 256, 1000, 3000), asserts_claims=True,
        ),
        induction=InductionSizes(
            model=LanguageModelSizes(
                study=TokenInfluenceConfig(
                    model=LMConfig(vocab_size=2048, hidden=128, layers=2, intermediate=512, context=64,
                                   steps=2800, batch_size=16, checkpoint_interval=100, lr_schedule="constant",
                                   repeated_fraction=0.75),
                    sgld=replace(LOCAL_SAMPLER, chains=4, draws=40, batch_size=16),
                    observable_sequences=64, sequence_length=55, sampling_sequences=1024,
                ),
                analysed_steps=(0, 200, 400, 600, 800, 1200, 1600, 2000, 2100, 2200, 2300, 2400, 2500, 2600,
                                2800),
                asserts_claims=True,
            ),
            probe_sequences=64, probe_half=16,
            scan=BoostScan(starts=(1500, 2100), length=200, boosted_fraction=0.875, seeds=(1, 2, 3), stop=2700,
                           checkpoint_interval=50),
            event_level=0.8, mix_sampling_steps=(2000, 2400, 2800),
        ),
        pythia=PAPER_PYTHIA,
    ),
    "paper": Profile(
        name="paper",
        theory=TheorySizes(n_grid=400, mc_sizes=17, mc_draws=1_000_000),
        toy=ToySizes(
            checkpoints=401, bif_chains=8, bif_draws=2000,
            sweep_stride=4, sweep_chains=4, sweep_draws=1000,
            sweep_epsilons=(1e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 1e-3, 1e-2),
            sweep_nbetas=(10, 100, 300, 1000, 3000, 5000, 10_000),
            sweep_gammas=(1e-2, 1, 100, 1000, 5000, 20_000, 100_000, 1e6),
            sweep_plain_epsilons=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
            sweep_stabilities=(1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0), sweep_decays=(0.8, 0.9, 0.95, 0.99),
            classical_stride=2, gaussian_stride=1, bias_epsilons=(3e-5, 1e-5, 3e-6, 1e-6, 3e-7), bias_stride=8,
            calibration_stride=80, calibration_chains=32, bif_seeds=5, lds_subsets=70,
        ),
        lm=LanguageModelSizes(
            study=TokenInfluenceConfig(
                model=LMConfig(vocab_size=4096, hidden=128, layers=6, intermediate=512, context=256,
                               steps=20_000, batch_size=32, checkpoint_interval=1000),
                sgld=replace(LOCAL_SAMPLER, chains=4, draws=200, batch_size=64),
                observable_sequences=600, sequence_length=55,
            ),
            analysed_steps=(0, 64, 256, 512, 1000, 2000, 5000, 10_000, 20_000), asserts_claims=True,
        ),
        induction=InductionSizes(
            model=LanguageModelSizes(
                study=TokenInfluenceConfig(
                    model=LMConfig(vocab_size=4096, hidden=128, layers=6, intermediate=512, context=256,
                                   steps=20_000, batch_size=32, checkpoint_interval=100),
                    sgld=replace(LOCAL_SAMPLER, chains=4, draws=200, batch_size=64),
                    observable_sequences=600, sequence_length=55, sampling_sequences=1024,
                ),
                analysed_steps=(), asserts_claims=True,
            ),
            probe_sequences=64, probe_half=32,
            scan=BoostScan(starts=(600, 800, 1000, 1200, 1400), length=200, boosted_fraction=0.25,
                           seeds=(1, 2, 3, 4, 5), stop=20_000, checkpoint_interval=100),
            event_level=0.8, mix_sampling_steps=(),
        ),
        pythia=PAPER_PYTHIA,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name``, or the one named by ``$STAGEWISE_PROFILE``, with its
    language-model source replaced by ``$STAGEWISE_LM`` and its training seed by
    ``$STAGEWISE_SEED`` when those are set.

    With neither given, the ``default`` profile.  An unknown name or source raises
    ``ValueError`` listing the valid ones.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or "default"
    try:
        profile = PROFILES[name]
    except KeyError:
        valid = ", ".join(PROFILES)
        raise ValueError(
            f"unknown profile {name!r} (from {PROFILE_ENV} or the argument); "
            f"valid profiles are: {valid}"
        ) from None
    source = os.environ.get(LM_SOURCE_ENV, "").strip()
    if source:
        profile = replace(profile, lm_source=source)
    seed = os.environ.get(SEED_ENV, "").strip()
    if seed:
        try:
            value = int(seed)
        except ValueError:
            raise ValueError(f"{SEED_ENV} must be a non-negative integer, got {seed!r}") from None
        profile = replace(profile, seed=value)
    return profile
