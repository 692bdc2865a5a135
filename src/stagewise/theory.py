"""Influence as a susceptibility: the symbolic results of paper §2.3 and App. A.

Two halves:

* **Derivations** (sympy).  Each returns an :class:`Identity`, an equation whose two sides
  sympy has shown equal, in general (symbolic sizes and symbolic entries, not numbers).
* **A worked Bayesian phase transition** (numpy).  :class:`TwoPhasePosterior` is a posterior
  that is a mixture of two phases whose weights follow the free-energy formula; its BIF has a
  closed form that can be checked against Monte Carlo draws (:func:`monte_carlo_bif`).

Sign convention throughout: ``BIF(i, j) = -Cov(l_i, l_j)``; negative means upweighting sample
``i`` lowers the expected loss of ``j`` (helps), positive means it harms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from scipy.optimize import brentq
from scipy.special import expit

# ---------------------------------------------------------------------------------------------
# Symbolic derivations


@dataclass(frozen=True)
class Identity:
    """An equation ``lhs = rhs`` together with the verdict of ``sympy.simplify(lhs - rhs)``."""

    lhs: sp.Expr
    rhs: sp.Expr
    name: str = ""

    @property
    def holds(self) -> bool:
        """True when sympy reduces ``lhs - rhs`` to exactly zero."""
        return sp.simplify(self.lhs - self.rhs) == 0

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {sp.latex(self.lhs)} = {sp.latex(self.rhs)}$"


def bif_is_negative_covariance() -> Identity:
    """Show ``d E_beta[phi] / d beta_i |_{beta=1} = -Cov(l_i, phi)`` for a posterior over any
    finite set of ``K`` parameter values (``K`` symbolic).

    The weighted posterior puts mass ``p_k ∝ exp(-beta_i l_i(w_k) + r_k)`` on value ``w_k``,
    where ``r_k`` collects the log prior and the other samples' weighted losses, which do not
    depend on ``beta_i``.
    """
    K = sp.Symbol("K", integer=True, positive=True)
    k = sp.Idx("k")
    beta = sp.Symbol("beta_i", positive=True)
    loss, phi, rest = sp.IndexedBase(r"\ell_i"), sp.IndexedBase(r"\phi"), sp.IndexedBase("r")
    weight = sp.exp(-beta * loss[k] + rest[k])
    Z = sp.Sum(weight, (k, 1, K))

    def expect(f: sp.Expr) -> sp.Expr:
        return sp.Sum(f * weight, (k, 1, K)) / Z

    derivative = sp.diff(expect(phi[k]), beta).subs(beta, 1)
    covariance = (expect(loss[k] * phi[k]) - expect(loss[k]) * expect(phi[k])).subs(beta, 1)
    return Identity(derivative, -covariance, "BIF = -Cov")


def bif_is_free_energy_hessian(values: int = 3) -> Identity:
    """Show ``BIF(i, j) = d^2 F / d beta_i d beta_j`` with ``F = -log Z(beta)`` (paper Eq. 8):
    the BIF is a second derivative of the free energy, i.e. a susceptibility.

    Checked for two samples over ``values`` parameter values with fully symbolic losses.
    """
    b1, b2 = sp.symbols("beta_1 beta_2", positive=True)
    l1 = sp.symbols(f"ell_1_1:{values + 1}")
    l2 = sp.symbols(f"ell_2_1:{values + 1}")
    weights = [sp.exp(-b1 * a - b2 * b) for a, b in zip(l1, l2)]
    Z = sum(weights)
    F = -sp.log(Z)
    mean = lambda xs: sum(x * w for x, w in zip(xs, weights)) / Z  # noqa: E731
    covariance = mean([a * b for a, b in zip(l1, l2)]) - mean(l1) * mean(l2)
    hessian = sp.diff(F, b1, b2).subs({b1: 1, b2: 1})
    return Identity(hessian, (-covariance).subs({b1: 1, b2: 1}), "BIF = d2F")


@dataclass(frozen=True)
class MixtureSymbols:
    """Symbols of a two-phase mixture posterior ``pi_U p(w|U) + (1 - pi_U) p(w|V)``."""

    pi: sp.Symbol = field(default_factory=lambda: sp.Symbol("pi_U", positive=True))
    cov_U: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"C_U"))
    cov_V: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"C_V"))
    mu_iU: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"mu_iU"))
    mu_iV: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"mu_iV"))
    mu_jU: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"mu_jU"))
    mu_jV: sp.Symbol = field(default_factory=lambda: sp.Symbol(r"mu_jV"))

    @property
    def between_product(self) -> sp.Expr:
        """``(mu_iU - mu_iV)(mu_jU - mu_jV)``: how much the phases disagree on ``i`` and ``j``."""
        return (self.mu_iU - self.mu_iV) * (self.mu_jU - self.mu_jV)

    def within_term(self) -> sp.Expr:
        """In-phase average ``pi_U C_U + pi_V C_V``."""
        return self.pi * self.cov_U + (1 - self.pi) * self.cov_V

    def between_term(self) -> sp.Expr:
        """Between-phase term ``pi_U pi_V (mu_iU - mu_iV)(mu_jU - mu_jV)``."""
        return self.pi * (1 - self.pi) * self.between_product


def total_covariance_decomposition(s: MixtureSymbols | None = None) -> Identity:
    """The law of total covariance for the two-phase mixture, from raw moments.

    The mixture's moments are ``E[l_i] = sum_Z pi_Z mu_iZ`` and
    ``E[l_i l_j] = sum_Z pi_Z (C_Z + mu_iZ mu_jZ)``; the identity shows that
    ``E[l_i l_j] - E[l_i] E[l_j]`` equals in-phase average plus between-phase term, for all
    symbolic values.
    """
    s = s or MixtureSymbols()
    p, q = s.pi, 1 - s.pi
    mean_i = p * s.mu_iU + q * s.mu_iV
    mean_j = p * s.mu_jU + q * s.mu_jV
    second_moment = p * (s.cov_U + s.mu_iU * s.mu_jU) + q * (s.cov_V + s.mu_iV * s.mu_jV)
    total = second_moment - mean_i * mean_j
    return Identity(total, s.within_term() + s.between_term(), "total covariance")


def between_term_extremum(s: MixtureSymbols | None = None) -> tuple[sp.Expr, sp.Expr]:
    """Where the between-phase term is extremal in ``pi_U``, and its second derivative there.

    Returns ``(pi_star, curvature)``; ``pi_star`` is 1/2 and ``curvature`` is
    ``-2 (mu_iU - mu_iV)(mu_jU - mu_jV)``: a maximum of the covariance (so a negative, helpful
    peak of the BIF) when the phases move both losses the same way, a minimum otherwise.
    """
    s = s or MixtureSymbols()
    term = s.between_term()
    (pi_star,) = sp.solve(sp.diff(term, s.pi), s.pi)
    return sp.simplify(pi_star), sp.simplify(sp.diff(term, s.pi, 2).subs(s.pi, pi_star))


@dataclass(frozen=True)
class SignChangeConditions:
    """When ``Cov(l_i, l_j)`` (so the BIF) changes sign as ``pi_U`` sweeps from 1 to 0."""

    covariance: sp.Expr
    """The total covariance as a quadratic in ``pi_U``."""
    across: sp.Expr
    """``Cov|_{pi=1} * Cov|_{pi=0}``: negative iff the sign differs before and after."""
    vertex: sp.Expr
    """``pi_U`` where the covariance is extremal."""
    vertex_value: sp.Expr
    """The covariance at the vertex."""

    def flips_across(self, cov_U: float, cov_V: float) -> bool:
        """The BIF has opposite signs deep in phase U and deep in phase V."""
        return cov_U * cov_V < 0

    def flips_transiently(self, cov_U: float, cov_V: float, product: float) -> bool:
        """Same sign in both phases, yet the between-phase term flips it during the transition.

        ``product`` is ``(mu_iU - mu_iV)(mu_jU - mu_jV)``.
        """
        if cov_U * cov_V <= 0 or product == 0:
            return False
        s = MixtureSymbols()
        values = {s.cov_U: cov_U, s.cov_V: cov_V, sp.Symbol("D"): product}
        vertex = float(self.vertex.subs(values))
        extreme = float(self.vertex_value.subs(values))
        return 0 < vertex < 1 and extreme * cov_U < 0


def sign_change_conditions() -> SignChangeConditions:
    """Derive, with sympy, when the total covariance changes sign across a transition.

    With ``D = (mu_iU - mu_iV)(mu_jU - mu_jV)`` the covariance is the quadratic
    ``pi C_U + (1 - pi) C_V + pi (1 - pi) D``.  Its values at the ends are ``C_V`` (all mass in
    V) and ``C_U`` (all in U), so the sign differs before and after iff ``C_U C_V < 0``.  If
    ``C_U`` and ``C_V`` share a sign, it still flips during the transition iff the vertex lies
    in ``(0, 1)`` and the quadratic's value there has the other sign.
    """
    s = MixtureSymbols()
    D = sp.Symbol("D")
    cov = sp.expand(s.within_term() + s.pi * (1 - s.pi) * D)
    (vertex,) = sp.solve(sp.diff(cov, s.pi), s.pi)
    return SignChangeConditions(
        covariance=cov,
        across=sp.factor(cov.subs(s.pi, 1) * cov.subs(s.pi, 0)),
        vertex=sp.simplify(vertex),
        vertex_value=sp.simplify(cov.subs(s.pi, vertex)),
    )


# ---------------------------------------------------------------------------------------------
# A worked Bayesian phase transition


@dataclass(frozen=True)
class TwoPhasePosterior:
    """A posterior that is a mixture of two phases U and V, weighted by the free energy.

    Phase Z has expected total loss ``L_Z`` per sample and learning coefficient ``lambda_Z``;
    its free energy is ``F_Z(n) = n L_Z + lambda_Z log n`` (App. A, Eq. 10), so the posterior
    log-odds of V against U are ``n (L_U - L_V) - (lambda_V - lambda_U) log n``.  U fits worse but
    is simpler (``L_U > L_V``, ``lambda_U < lambda_V``), so it wins at small ``n`` and V wins
    past the critical ``n``.

    Inside phase Z the per-sample losses of the ``S`` tracked samples are Gaussian with means
    ``mean_losses[Z]`` (shape ``(S,)``) and covariance ``within_cov[Z] / n`` (shape ``(S, S)``):
    the posterior concentrates like ``1/n`` inside a phase.
    """

    loss_U: float
    loss_V: float
    llc_U: float
    llc_V: float
    mean_losses_U: np.ndarray
    mean_losses_V: np.ndarray
    within_cov_U: np.ndarray
    within_cov_V: np.ndarray
    sample_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.loss_U > self.loss_V:
            raise ValueError(f"need loss_U > loss_V, got {self.loss_U} and {self.loss_V}")
        if not self.llc_U < self.llc_V:
            raise ValueError(f"need llc_U < llc_V, got {self.llc_U} and {self.llc_V}")
        S = len(self.mean_losses_U)
        for name in ("mean_losses_V",):
            if np.shape(getattr(self, name)) != (S,):
                raise ValueError(f"{name} must have shape ({S},)")
        for name in ("within_cov_U", "within_cov_V"):
            cov = np.asarray(getattr(self, name))
            if cov.shape != (S, S) or not np.allclose(cov, cov.T):
                raise ValueError(f"{name} must be a symmetric ({S}, {S}) matrix")
            if np.linalg.eigvalsh(cov).min() < -1e-12:
                raise ValueError(f"{name} must be positive semi-definite")
        if self.sample_names and len(self.sample_names) != S:
            raise ValueError(f"sample_names must name all {S} samples")

    @property
    def n_samples(self) -> int:
        return len(self.mean_losses_U)

    def log_odds_V(self, n: np.ndarray) -> np.ndarray:
        """``log(pi_V / pi_U) = F_U(n) - F_V(n)`` at dataset sizes ``n`` (any shape)."""
        n = np.asarray(n, dtype=float)
        return n * (self.loss_U - self.loss_V) - (self.llc_V - self.llc_U) * np.log(n)

    def weight_V(self, n: np.ndarray) -> np.ndarray:
        """Posterior mass ``pi_V(n)`` of the complex, better-fitting phase."""
        return expit(self.log_odds_V(n))

    def critical_n(self) -> float:
        """The dataset size where ``pi_V = 1/2`` and V takes over.

        The log-odds first fall (the ``log n`` term dominates) and reach their minimum at
        ``n = (lambda_V - lambda_U) / (L_U - L_V)``; the transition is the root above it.  (The
        root below it, near ``n = 1``, lies where the asymptotic formula does not apply.)
        """
        n_min = (self.llc_V - self.llc_U) / (self.loss_U - self.loss_V)
        upper = n_min
        while self.log_odds_V(upper) <= 0:
            upper *= 2
        return float(brentq(self.log_odds_V, n_min, upper, xtol=1e-10))

    def covariance_terms(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """In-phase average and between-phase term of ``Cov(l_i, l_j)`` at sizes ``n``.

        Returns two arrays of shape ``(len(n), S, S)``.
        """
        n = np.atleast_1d(np.asarray(n, dtype=float))
        pi_V = self.weight_V(n)[:, None, None]
        pi_U = 1.0 - pi_V
        within = (pi_U * self.within_cov_U + pi_V * self.within_cov_V) / n[:, None, None]
        delta = self.mean_losses_U - self.mean_losses_V
        between = pi_U * pi_V * np.outer(delta, delta)
        return within, between

    def bif(self, n: np.ndarray) -> np.ndarray:
        """Closed-form ``BIF(i, j) = -Cov(l_i, l_j)``, shape ``(len(n), S, S)``."""
        within, between = self.covariance_terms(n)
        return -(within + between)

    def sample_losses(self, n: float, draws: int, rng: np.random.Generator) -> np.ndarray:
        """Draw per-sample losses from the mixture posterior at size ``n``: ``(draws, S)``."""
        in_V = rng.random(draws) < self.weight_V(n)
        losses = np.where(
            in_V[:, None],
            rng.multivariate_normal(self.mean_losses_V, self.within_cov_V / n, size=draws),
            rng.multivariate_normal(self.mean_losses_U, self.within_cov_U / n, size=draws),
        )
        return losses


def example_posterior() -> TwoPhasePosterior:
    """The worked example of Chapter 1: three samples and a transition near ``n = 280``.

    ``a`` and ``b`` are fitted better by the complex phase V; ``c`` is fitted worse, as when a
    new distinction is learned at the cost of an old shortcut.  Inside U, ``a`` and ``c`` move
    together; inside V they trade off.  The three pairs show the three behaviours: ``(a, b)`` a
    helpful peak, ``(a, c)`` a sign flip across the transition, ``(b, c)`` a transient flip.
    """
    return TwoPhasePosterior(
        loss_U=0.50,
        loss_V=0.45,
        llc_U=1.5,
        llc_V=4.0,
        mean_losses_U=np.array([1.0, 0.9, 0.2]),
        mean_losses_V=np.array([0.4, 0.5, 0.5]),
        within_cov_U=np.array([[0.50, 0.25, 0.20], [0.25, 0.40, 0.12], [0.20, 0.12, 0.30]]),
        within_cov_V=np.array([[0.40, 0.20, -0.15], [0.20, 0.40, 0.06], [-0.15, 0.06, 0.30]]),
        sample_names=("a", "b", "c"),
    )


def monte_carlo_bif(
    posterior: TwoPhasePosterior, n: float, draws: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate ``BIF = -Cov`` from ``draws`` posterior samples at size ``n``.

    Returns ``(estimate, standard_error)``, each ``(S, S)``; the standard error of each entry is
    that of the mean of the centred products ``(l_i - mean_i)(l_j - mean_j)``.
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2, got {draws}")
    losses = posterior.sample_losses(n, draws, np.random.default_rng(seed))
    centred = losses - losses.mean(axis=0)
    products = centred[:, :, None] * centred[:, None, :]
    estimate = -products.sum(axis=0) / (draws - 1)
    standard_error = products.std(axis=0, ddof=1) / np.sqrt(draws)
    return estimate, standard_error
