"""Per-token influence across the checkpoints of a language model (paper §4, App. D.1).

:func:`prepare_run` builds everything up to the checkpoints from a source
(:mod:`stagewise.lm.sources`: the local default or Pythia's): tokenizer, token streams and the
checkpoints, trained in the directory it is given or published on the hub.
:func:`token_draws` samples the local posterior at one checkpoint with minibatch RMSprop-SGLD on
training text and records the per-token losses of the observable sequences at every draw; they
never enter the gradient.  The chains start at the checkpoint, so their first draws are a
warm-up: :func:`stationary_draws` finds it from the recorded loss traces, discards it and judges
the kept draws (drift, mixing) in the vocabulary of :mod:`stagewise.diagnostics`; a
:class:`TokenDraws` carries the kept draws with that verdict.  :func:`compare_steps` checks the
sampler's step against a run at a smaller one by the calibration rule
(:func:`stagewise.diagnostics.step_change`).  Nothing here caches: :mod:`stagewise.book.lm`
does, for the book.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from stagewise.lm.checkpoints import LocalCheckpoints, PythiaCheckpoints
from stagewise.lm.classes import classify_tokens
from stagewise.lm.sources import LanguageModelSource, LocalSource, model_directory, source_streams
from stagewise.lm.tokenizer import token_strings
from stagewise.diagnostics import (
    HEALTHY, STEP_SENSITIVE, VERDICTS, Criteria, bif_standard_error, chain_rhat, find_burn_in, judge, little_signal,
    split_rhat, standard_error, step_change,
)
from stagewise.influence import bif_matrix
from stagewise.lm.training import LMConfig, sequences, token_losses, train_language_model
from stagewise.sampling import LossDraws, SGLDConfig, model_device, sample_losses


@dataclass(frozen=True)
class TokenInfluenceConfig:
    """Everything that fixes a per-token influence study (paper Table 2 for the SGLD defaults)."""

    model: LMConfig = field(default_factory=LMConfig)
    """The model trained from scratch (its vocabulary size must hold the source's tokenizer);
    unused with Pythia's published checkpoints."""
    sgld: SGLDConfig = field(default_factory=lambda: SGLDConfig(
        epsilon=1e-6, nbeta=256, gamma=1000, chains=4, draws=200, batch_size=64))
    observable_sequences: int = 600
    sequence_length: int = 55
    sampling_sequences: int = 4096
    """Training-text sequences that SGLD draws its minibatches from."""
    seed: int = 0
    """Seeds the choice of the sampling and observable sequences."""


PAPER_TABLE_2 = TokenInfluenceConfig()
"""The paper's Table 2 for Pythia-14m, the defaults above: SGLD at ε = 1e-6, nβ = 256 (of
{256, 1024}), γ = 1000 (of {500, 1000}), 4 chains × 200 draws on minibatches of 64, and 600
observable sequences × 55 tokens."""


@dataclass(frozen=True)
class TokenTargets:
    """The tokens whose losses are recorded, in the column order of every per-token loss tensor:
    positions 1…L−1 of each of the ``M`` observable sequences (position 0 has no prediction),
    sequence after sequence.  ``ids``: ``(M·(L−1),)`` their token ids; ``sequence``: ``(M·(L−1),)``
    the sequence each belongs to; ``classes``: ``(M·(L−1), 6)`` their membership of
    :data:`~stagewise.lm.classes.CLASSES`."""

    ids: np.ndarray
    sequence: np.ndarray
    classes: np.ndarray


def token_targets(sequences: torch.Tensor, tokenizer) -> TokenTargets:
    """The :class:`TokenTargets` of ``sequences`` (``(M, L)`` token ids) under ``tokenizer``."""
    rows = [classify_tokens(ids, token_strings(tokenizer, ids))[1:] for ids in sequences.tolist()]
    m, length = sequences.shape
    return TokenTargets(ids=sequences[:, 1:].reshape(-1).numpy(), sequence=np.repeat(np.arange(m), length - 1),
                        classes=np.concatenate(rows))


@dataclass
class LanguageModelRun:
    """Checkpoints with their tokenizer and the fixed sampling and observable sets."""

    config: TokenInfluenceConfig
    source: LanguageModelSource
    tokenizer: object
    checkpoints: LocalCheckpoints | PythiaCheckpoints
    sampling_ids: torch.Tensor
    """``(sampling_sequences, sequence_length)`` token ids of training text."""
    observable_ids: torch.Tensor
    """``(observable_sequences, sequence_length)`` token ids of held-out text."""
    train_tokens: torch.Tensor
    """The training text as one stream of token ids (what branched runs train on)."""
    directory: Path
    """Where the source's tokenizer, streams and trained runs are kept (branches train here)."""

    def observable_targets(self) -> TokenTargets:
        """The observables' target tokens: ids, sequence index and classes, in the loss columns' order."""
        return token_targets(self.observable_ids, self.tokenizer)


def prepare_run(config: TokenInfluenceConfig, directory: str | Path, source: LanguageModelSource = LocalSource(),
                train: bool = False, progress: bool = True, keep_states: bool = False,
                device: str | torch.device = "cpu") -> LanguageModelRun:
    """Tokenizer, token streams and checkpoints of ``source`` for ``config``, built in (or read
    from) ``directory``.

    The checkpoints are Pythia's published revisions for a :class:`~stagewise.lm.sources.PythiaSource`
    unless ``train``; otherwise ``config.model`` is trained on the source's text (an interrupted
    run resumes).  ``keep_states`` keeps the training state at every multiple of the checkpoint
    interval, for :func:`branch_run`.  Models load in float32 on ``device``.  A Pythia source
    that can be neither reached nor found in the hub cache raises
    :class:`~stagewise.lm.sources.SourceUnavailable` before anything else runs.
    """
    source.check_available()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = source.tokenizer(config.model.vocab_size, directory)
    if (train or not source.published_checkpoints) and len(tokenizer) > config.model.vocab_size:
        raise ValueError(f"the model's vocabulary ({config.model.vocab_size}) is smaller than the tokenizer's "
                         f"({len(tokenizer)}); set LMConfig.vocab_size to at least that")
    tokens = source_streams(source, tokenizer, config.model.vocab_size, directory)
    checkpoints = source.checkpoints(config.model, tokens["train"], directory, train=train, progress=progress,
                                     keep_states=keep_states, device=device)
    return LanguageModelRun(
        config=config,
        source=source,
        tokenizer=tokenizer,
        checkpoints=checkpoints,
        sampling_ids=sequences(tokens["train"], config.sampling_sequences, config.sequence_length, seed=config.seed),
        observable_ids=sequences(tokens["observable"], config.observable_sequences, config.sequence_length,
                                 seed=config.seed + 1),
        train_tokens=tokens["train"],
        directory=directory,
    )


def branch_run(run: LanguageModelRun, model: LMConfig, progress: bool = True) -> LocalCheckpoints:
    """Checkpoints of a model ``model`` trained on ``run``'s text, usually ``run``'s own
    configuration with a branch and a boost window; trained in ``run.directory`` (from ``run``'s
    kept state at the branch step when there is one) unless already there."""
    if not isinstance(run.checkpoints, LocalCheckpoints):
        raise ValueError(f"{run.checkpoints.name}'s published checkpoints have no training state to branch from; "
                         f"prepare the run with train=True")
    directory = model_directory(run.directory, model)
    if not (directory / "complete").exists():
        train_language_model(model, run.train_tokens, directory, progress=progress,
                             parent=run.checkpoints.directory, device=run.checkpoints.device)
    return LocalCheckpoints(directory, device=run.checkpoints.device)


@dataclass
class TokenDraws:
    """Per-token losses of the observables at the kept SGLD draws around one checkpoint, with the
    warm-up that was cut and the chains' health (see :func:`stationary_draws`).

    ``losses``: ``(C, T − burn_in, n)`` float32, the kept draws (what every estimate reads);
    ``burn_in``: draws discarded at the start of every chain, and ``warm_up``:
    ``(C, burn_in, n)`` their losses (to show what the warm-up did, never to estimate from); ``loss_trace``: ``(C, T)`` the
    mean loss of the gradient's minibatch at every recorded draw, and ``observable_trace``:
    ``(C, T)`` the mean loss of the observables, both over all ``T`` recorded draws (nats per
    token); ``burn_in_by_trace``: the burn-in each trace alone gives.  ``rhat`` and
    ``split_rhat``: the larger over the two traces of ``R̂`` across chains and of split ``R̂`` of
    the kept draws.  ``initial_loss``: the sampling set's mean loss at the checkpoint;
    ``llc``, ``llc_se``: the local learning coefficient ``nβ (E[L] − L(w*))`` from the kept
    minibatch losses and its Monte-Carlo standard error.  ``verdict``: the first rule broken
    (:data:`stagewise.diagnostics.VERDICTS`), ``reasons``: every rule broken with its numbers
    (empty when healthy).
    """

    losses: torch.Tensor
    burn_in: int
    warm_up: torch.Tensor
    loss_trace: torch.Tensor
    observable_trace: torch.Tensor
    burn_in_by_trace: dict[str, int]
    rhat: float
    split_rhat: float
    initial_loss: float
    llc: float
    llc_se: float
    verdict: str
    reasons: list[tuple[str, str]]
    config: SGLDConfig
    targets: TokenTargets | None = None
    """What the loss columns are (ids, sequence, classes); set by :func:`token_draws`."""

    @property
    def recorded(self) -> int:
        """Draws recorded per chain, the warm-up included."""
        return int(self.loss_trace.shape[-1])

    @property
    def kept(self) -> int:
        """Draws kept per chain."""
        return int(self.losses.shape[1])

    def describe(self) -> str:
        """One line: burn-in, R-hats and verdict with its reasons."""
        found = "; ".join(reason for _, reason in self.reasons)
        return (f"burn-in {self.burn_in} of {self.recorded} draws, R-hat {self.rhat:.3f}, split R-hat "
                f"{self.split_rhat:.3f}: {self.verdict}" + (f" ({found})" if found else ""))


def stationary_draws(draws: LossDraws, dimension: int, criteria: Criteria = Criteria()) -> TokenDraws:
    """The stationary part of one checkpoint's recorded draws, judged.

    ``draws``: one checkpoint's :class:`~stagewise.sampling.LossDraws` (``K = 1``) with observables
    and a loss trace.  The burn-in is
    the larger of the warm-ups :func:`~stagewise.diagnostics.find_burn_in` finds in the
    minibatch loss trace and in the observables' mean loss (the second is far less noisy, and it
    is what the estimates read).  With a fixed ``config.burn_in`` those steps were taken before
    the first recorded draw, and the recorded draws are still searched for what remains of the
    warm-up (``burn_in`` counts recorded draws only).  The kept
    draws are judged by :func:`~stagewise.diagnostics.judge` with ``dimension`` parameters: R-hat
    across chains (``unmixed``) and split R-hat over the halves of the kept draws (``drifting``),
    each the larger over the two traces, the signal, and the LLC's range.
    """
    if draws.observables is None or draws.loss_trace is None:
        raise ValueError("stationary_draws needs the observables' losses and the loss trace")
    if draws.observables.shape[0] != 1:
        raise ValueError(f"stationary_draws takes one checkpoint's draws, got {draws.observables.shape[0]}")
    observables = draws.observables[0]
    traces = {"minibatch loss": draws.loss_trace[0].double(), "observables' mean loss": observables.double().mean(-1)}
    found = {name: int(find_burn_in(trace[None], criteria)[0]) for name, trace in traces.items()}
    burn_in = max(found.values())
    rhat = max(float(chain_rhat(trace[:, burn_in:])) for trace in traces.values())
    split = max(float(split_rhat(trace[:, burn_in:])) for trace in traces.values())
    kept_trace = traces["minibatch loss"][:, burn_in:]
    nbeta = draws.config.nbeta
    initial = float(draws.initial_loss[0])
    llc = nbeta * (float(kept_trace.mean()) - initial)
    llc_se = nbeta * float(standard_error(kept_trace))
    diverged = draws.diverged_at is not None and bool((draws.diverged_at >= 0).any())
    kept = observables[:, burn_in:]
    little = not diverged and little_signal(kept)
    reasons = judge(diverged, little, rhat, split, llc, llc_se, dimension, criteria=criteria)
    return TokenDraws(losses=kept.float().contiguous(), burn_in=burn_in,
                      warm_up=observables[:, :burn_in].float().contiguous(), loss_trace=traces["minibatch loss"],
                      observable_trace=traces["observables' mean loss"], burn_in_by_trace=found, rhat=rhat,
                      split_rhat=split, initial_loss=initial, llc=llc, llc_se=llc_se,
                      verdict=reasons[0][0] if reasons else HEALTHY, reasons=reasons, config=draws.config)


def token_draws(run: LanguageModelRun, step: int, observables: torch.Tensor | None = None,
                sampling: torch.Tensor | None = None, progress: bool = True,
                criteria: Criteria = Criteria()) -> TokenDraws:
    """Per-token losses of the observable sequences at the SGLD draws around checkpoint ``step``
    that follow the warm-up, judged (:func:`stationary_draws`): a :class:`TokenDraws` whose
    ``losses`` are ``(chains, kept draws, M·(L−1))``, float32 on the CPU, with ``targets`` saying
    what its columns are (:class:`TokenTargets`).  ``observables``
    replaces the run's held-out sequences (``(M, L)`` token ids, e.g. a repeated probe);
    ``sampling`` replaces the sequences SGLD draws its minibatches from (``(S, L)`` token ids,
    default ``run.sampling_ids``).  Sampling runs on the checkpoints' device; a diverging chain
    raises :class:`~stagewise.sampling.SamplerDivergence`."""
    observables = run.observable_ids if observables is None else observables
    sampling = run.sampling_ids if sampling is None else sampling
    model = run.checkpoints.load(step)
    device = model_device(model)
    draws = sample_losses(model, token_losses, sampling.to(device), run.config.sgld, observables.to(device),
                          record_sampling=False, progress=progress)
    dimension = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return replace(stationary_draws(draws, dimension, criteria), targets=token_targets(observables, run.tokenizer))


@dataclass(frozen=True)
class StepCheck:
    """How the estimates at one checkpoint move when the step is halved (:func:`compare_steps`).

    ``bif_scale``: the change of scale of the BIF between the groups' mean losses (its slope on
    the half step's, minus 1) and ``bif_scale_se`` its Monte-Carlo error; ``bif_change``: its
    relative Frobenius change (noise included, reported only); ``llc_change`` and ``llc_se``:
    the LLC's relative change and its error; ``sensitive``: evidence that the estimates depend
    on the step (a change beyond ``tolerance`` and its error); ``agrees``: evidence that they do
    not (upper bounds within ``tolerance``; what :func:`stagewise.calibrate` asks of a step);
    neither, when the comparison is too noisy to tell.  ``verdicts``: the two runs' own
    verdicts (step, then half step); ``verdict``: the most serious of those two and
    ``"step-size sensitive"`` when ``sensitive`` (in the order of
    :data:`stagewise.diagnostics.VERDICTS`).  See :class:`stagewise.diagnostics.StepChange`.
    """

    epsilon: float
    reference_epsilon: float
    bif_scale: float
    bif_scale_se: float
    bif_change: float
    llc_change: float
    llc_se: float
    tolerance: float
    sensitive: bool
    agrees: bool
    verdicts: tuple[str, str]
    verdict: str


def _group_means(losses: torch.Tensor, membership: np.ndarray) -> torch.Tensor:
    """``(C, T, n)`` per-token losses -> ``(C, T, A)`` mean loss of each group's tokens."""
    member = torch.as_tensor(np.asarray(membership, dtype=bool), dtype=torch.float64)
    if member.ndim != 2 or member.shape[0] != losses.shape[-1] or not bool((member.sum(0) > 0).all()):
        raise ValueError(f"membership must be (tokens = {losses.shape[-1]}, groups) with no empty group, "
                         f"got {tuple(member.shape)}")
    return losses.double() @ (member / member.sum(0))


def compare_steps(draws: TokenDraws, reference: TokenDraws, membership: np.ndarray,
                  criteria: Criteria = Criteria()) -> StepCheck:
    """The calibration rule (:func:`stagewise.influence.calibrate`) at one checkpoint: do the
    estimates at ``draws``' step agree with those at the smaller step of ``reference`` (the same
    checkpoint, observables and seeds)?

    Compared are the LLC and the BIF between the mean losses of the token groups of
    ``membership`` (``(n, A)`` booleans, e.g. the structural classes): ``−Cov`` of the groups'
    mean losses over the kept draws, ``(A, A)``, with its batch-means error.  (A per-token BIF
    of thousands of tokens is neither cheap to compare nor resolved at a few hundred draws; its
    group means are what the chapters read.)  The reference should travel as far
    (:func:`stagewise.influence.at_equal_travel`: at half the step, twice the draws, or twice the
    thinning of a thinned chain).
    """
    if draws.losses.shape[-1] != reference.losses.shape[-1]:
        raise ValueError("the two runs must record the same observables")
    a, b = _group_means(draws.losses, membership), _group_means(reference.losses, membership)
    bif, ref = bif_matrix(a)[None], bif_matrix(b)[None]
    def tensor(value: float) -> torch.Tensor:
        return torch.tensor([value], dtype=torch.float64)

    scale = reference.config.nbeta * float(reference.loss_trace[:, reference.burn_in:].std())
    change = step_change(bif, bif_standard_error(a)[None], tensor(draws.llc), tensor(draws.llc_se),
                         ref, bif_standard_error(b)[None], tensor(reference.llc), tensor(reference.llc_se),
                         tensor(scale), criteria)
    sensitive = bool(change.sensitive(criteria.step_tolerance)[0])
    found = [draws.verdict, reference.verdict] + ([STEP_SENSITIVE] if sensitive else [])
    return StepCheck(epsilon=draws.config.epsilon, reference_epsilon=reference.config.epsilon,
                     bif_scale=float(change.bif_scale[0]), bif_scale_se=float(change.bif_scale_se[0]),
                     bif_change=float(change.bif[0]), llc_change=float(change.llc[0]),
                     llc_se=float(change.llc_se[0]), tolerance=criteria.step_tolerance,
                     sensitive=sensitive, agrees=bool(change.agrees(criteria.step_tolerance)[0]),
                     verdicts=(draws.verdict, reference.verdict), verdict=min(found, key=VERDICTS.index))
