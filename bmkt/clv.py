"""Customer lifetime value: buy-till-you-die transaction models and the Gamma-Gamma spend model.

Estimators (scikit-learn contract: ``__init__`` only stores parameters,
``fit`` returns ``self``, learned state ends in ``_``, :class:`NotFittedError`
before ``fit``):

:class:`BetaGeo`
    BG/NBD [1]_: Poisson purchases at rate ``lambda ~ Gamma(r, alpha)``; after
    each repeat purchase the customer drops out with probability
    ``p ~ Beta(a, b)``.
:class:`ModifiedBetaGeo`
    MBG/NBD [5]_: as BG/NBD, but a customer may also drop out right after the
    first purchase (so a one-time buyer can be dead).
:class:`ParetoNBD`
    Pareto/NBD [3]_ [4]_: Poisson purchases at ``lambda ~ Gamma(r, alpha)``,
    exponential lifetime at rate ``mu ~ Gamma(s, beta)``.
:class:`GammaGamma`
    Gamma-Gamma [2]_ [6]_: spend per transaction, shrinking each customer's
    observed mean towards the population mean.

and the functions :func:`clv` (discounted expected value), :func:`evaluate`
(calibration / holdout check), :func:`check_gamma_gamma_assumption` and three
plots (plotly figures; the library never shows them).

Every model reads the per-customer summary of :func:`bmkt.rfm.summarize`
(``frequency``, ``recency``, ``T``; ``monetary_value`` for Gamma-Gamma). Time
is in the summary's unit (``summary.attrs["period"]``, days or weeks), so
``alpha`` (and ``beta``) and every horizon are in that unit too.

How the models are fitted, and why
-----------------------------------
The log-likelihoods are written here, vectorised with ``numpy`` and
``scipy.special`` (``gammaln``, ``digamma``, ``hyp2f1`` for Pareto/NBD) and
checked in the tests against ``lifetimes`` at equal parameters. Fitting then:

1. **Compresses** customers to unique ``(frequency, recency, T)`` patterns
   (``(frequency, monetary_value)`` for Gamma-Gamma) with counts as weights,
   as Fader and Hardie do in their spreadsheets: with daily data a million
   customers collapse to a few hundred thousand patterns, and the likelihood
   is evaluated once per pattern.
2. Optionally **subsamples** (``sample_size``): the likelihood of a random
   sample of customers has the same maximum up to sampling error
   (``O(1/sqrt(sample_size))`` relative), which is negligible beside the model
   error above a few hundred thousand customers. Everybody is then scored
   vectorised. ``None`` (default) fits on all customers.
3. **Rescales** time so the largest ``T`` is 1 (and spend so its mean is 1),
   making every parameter of order one.
4. Minimises the *mean* negative log-likelihood per customer with
   ``scipy.optimize.minimize(method="L-BFGS-B")`` over the **logarithms** of
   the parameters (positivity for free; bounds ``exp(+-18)`` keep the
   optimiser away from overflow), with **analytic gradients** for BG/NBD,
   MBG/NBD and Gamma-Gamma (digamma terms) and finite differences for
   Pareto/NBD.
5. Starts from moment-based values (purchase rate from ``frequency / T``,
   spend from the mean), with two fallback starts.
6. **Accepts** a solution when L-BFGS-B reports success *or* the gradient of
   the mean log-likelihood is below ``1e-5`` (a line search that stops on
   rounding noise at the optimum is not a failure); otherwise it tries the
   next start and finally raises :class:`ModelError` saying what to try.

``lifetimes`` instead runs BFGS on the *unscaled* mean likelihood with a fixed
``tol=1e-7`` and raises ``ConvergenceError`` whenever BFGS reports "precision
loss", which on a million customers it routinely does at the optimum; steps
4 and 6 are what make the fit converge there.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting Your
   Customers the Easy Way: An Alternative to the Pareto/NBD Model",
   Marketing Science, 24 (2), 275-284.
.. [2] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
   Using Iso-Value Curves for Customer Base Analysis", Journal of Marketing
   Research, 42 (4), 415-430.
.. [3] Schmittlein, D. C., Morrison, D. G. and Colombo, R. (1987), "Counting
   Your Customers: Who Are They and What Will They Do Next?", Management
   Science, 33 (1), 1-24.
.. [4] Fader, P. S. and Hardie, B. G. S. (2005), "A Note on Deriving the
   Pareto/NBD Model and Related Expressions",
   http://brucehardie.com/notes/009/
.. [5] Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical
   Validation and Comparison of Models for Customer Base Analysis",
   International Journal of Research in Marketing, 24 (3), 201-209.
.. [6] Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma Model of
   Monetary Value", http://brucehardie.com/notes/025/
.. [7] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2008), "Computing
   P(alive) Using the BG/NBD Model", http://brucehardie.com/notes/021/
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1
from sklearn.base import BaseEstimator, clone
from threadpoolctl import threadpool_limits

from bmkt import engine, rfm
from bmkt.errors import ConfigError, DataError, ModelError, NotFittedError, data_problem

log = logging.getLogger(__name__)

__all__ = [
    "BetaGeo",
    "ModifiedBetaGeo",
    "ParetoNBD",
    "GammaGamma",
    "clv",
    "score_spark",
    "evaluate",
    "Evaluation",
    "check_gamma_gamma_assumption",
    "plot_frequency_recency_matrix",
    "plot_p_alive_matrix",
    "plot_calibration_purchases",
    "plot_cumulative_purchases",
]

#: Model periods per month, used to turn monthly CLV steps into model time
#: (the values ``lifetimes.utils._customer_lifetime_value`` uses).
PERIODS_PER_MONTH: dict[str, float] = {"D": 30.0, "W": 4.345}

_LOG_BOUND = 18.0  # parameters live in [exp(-18), exp(18)] (scaled units)
_ACCEPT_GRAD = 1e-5  # max |gradient| of the mean log-likelihood accepted as converged


# --------------------------------------------------------------------------- #
# log-likelihoods (per customer, vectorised), with gradients w.r.t. parameters
# --------------------------------------------------------------------------- #
class _Data:
    """Customer (or pattern) arrays with their unique values, for fast likelihoods.

    Special functions of ``frequency`` (``gammaln``, ``digamma``) and logs of
    ``recency`` and ``T`` are evaluated once per distinct value and gathered:
    a base has a few dozen distinct frequencies and, with daily data, at most
    a few thousand distinct ``recency`` and ``T`` values, however many customers.
    """

    def __init__(self, *cols: np.ndarray, n_unique: int | None = None) -> None:
        self.cols = [np.asarray(c, dtype="float64") for c in cols]
        self.unique: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        for c in self.cols[:n_unique]:
            u, i = np.unique(c, return_inverse=True)
            self.unique.append(u)
            self.index.append(i.reshape(-1))


def _bg_nbd_ll(
    params: Sequence[float], d: _Data, grad: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r, alpha, a, b = (float(p) for p in params)
    x = d.cols[0]
    (xu, tu, Tu), (xi, ti, Ti) = d.unique, d.index
    rep = x > 0
    xmu = np.maximum(xu, 1.0)
    log_aT = np.log(alpha + Tu)[Ti]
    log_at = np.log(alpha + tu)[ti]
    a12 = (
        gammaln(r + xu)
        - gammaln(r)
        + r * math.log(alpha)
        + gammaln(a + b)
        + gammaln(b + xu)
        - gammaln(b)
        - gammaln(a + b + xu)
    )[xi]
    a3 = -(r + x) * log_aT
    a4 = np.where(rep, (math.log(a) - np.log(b + xmu - 1.0))[xi] - (r + x) * log_at, -np.inf)
    both = np.logaddexp(a3, a4)
    ll = a12 + both
    if not grad:
        return ll
    w4 = np.exp(a4 - both)
    w3 = 1.0 - w4
    d_r = (digamma(r + xu) - digamma(r) + math.log(alpha))[xi] - w3 * log_aT - w4 * log_at
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + Tu)[Ti] + w4 / (alpha + tu)[ti])
    psi_ab = digamma(a + b)
    psi_abx = digamma(a + b + xu)
    d_a = (psi_ab - psi_abx)[xi] + w4 / a
    d_b = (psi_ab + digamma(b + xu) - digamma(b) - psi_abx)[xi] - w4 * (1.0 / (b + xmu - 1.0))[xi]
    return ll, np.vstack([d_r, d_alpha, d_a, d_b])


def bg_nbd_log_likelihood(
    params: Sequence[float],
    frequency: np.ndarray,
    recency: np.ndarray,
    T: np.ndarray,
    grad: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """BG/NBD log-likelihood of each customer ([1]_, eq. 6 in the form of its section 7).

    ``L = B(a, b+x)/B(a, b) * Gamma(r+x) alpha^r / (Gamma(r) (alpha+T)^(r+x))
    + [x > 0] B(a+1, b+x-1)/B(a, b) * Gamma(r+x) alpha^r / (Gamma(r) (alpha+t_x)^(r+x))``

    Parameters
    ----------
    params : sequence of float
        ``(r, alpha, a, b)``.
    frequency, recency, T : numpy.ndarray
        ``x``, ``t_x`` and ``T`` of each customer (or pattern).
    grad : bool
        Also return the gradient, shape ``(4, n)``, w.r.t. ``(r, alpha, a, b)``.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
    """
    return _bg_nbd_ll(params, _Data(frequency, recency, T), grad)


def _mbg_nbd_ll(
    params: Sequence[float], d: _Data, grad: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r, alpha, a, b = (float(p) for p in params)
    x = d.cols[0]
    (xu, tu, Tu), (xi, ti, Ti) = d.unique, d.index
    log_aT = np.log(alpha + Tu)[Ti]
    log_at = np.log(alpha + tu)[ti]
    a12 = (
        gammaln(r + xu)
        - gammaln(r)
        + r * math.log(alpha)
        + gammaln(a + b)
        + gammaln(b + xu + 1.0)
        - gammaln(b)
        - gammaln(a + b + xu + 1.0)
    )[xi]
    a3 = -(r + x) * log_aT
    a4 = (math.log(a) - np.log(b + xu))[xi] + (r + x) * (log_aT - log_at)
    ll = a12 + a3 + np.logaddexp(a4, 0.0)
    if not grad:
        return ll
    sig = expit(a4)
    d_r = (digamma(r + xu) - digamma(r) + math.log(alpha))[xi] - log_aT + sig * (log_aT - log_at)
    inv_T = (1.0 / (alpha + Tu))[Ti]
    d_alpha = r / alpha - (r + x) * inv_T + sig * (r + x) * (inv_T - (1.0 / (alpha + tu))[ti])
    psi_ab = digamma(a + b)
    psi_abx = digamma(a + b + xu + 1.0)
    d_a = (psi_ab - psi_abx)[xi] + sig / a
    d_b = (psi_ab + digamma(b + xu + 1.0) - digamma(b) - psi_abx)[xi] - sig * (1.0 / (b + xu))[xi]
    return ll, np.vstack([d_r, d_alpha, d_a, d_b])


def mbg_nbd_log_likelihood(
    params: Sequence[float],
    frequency: np.ndarray,
    recency: np.ndarray,
    T: np.ndarray,
    grad: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """MBG/NBD log-likelihood of each customer ([5]_, as in ``lifetimes``).

    Parameters and returns as :func:`bg_nbd_log_likelihood`.
    """
    return _mbg_nbd_ll(params, _Data(frequency, recency, T), grad)


def _pareto_log_a0(
    params: Sequence[float], x: np.ndarray, recency: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """log A_0 of Pareto/NBD, eqs. (19)-(20) of [4]_."""
    r, alpha, s, beta = params
    if alpha < beta:
        lo, hi, second = alpha, beta, r + x
    else:
        lo, hi, second = beta, alpha, s + 1.0
    rsx = r + s + x
    q1 = hi + recency
    q2 = hi + T
    with np.errstate(divide="ignore", invalid="ignore"):
        term1 = np.log(hyp2f1(rsx, second, rsx + 1.0, (hi - lo) / q1)) - rsx * np.log(q1)
        term2 = np.log(hyp2f1(rsx, second, rsx + 1.0, (hi - lo) / q2)) - rsx * np.log(q2)
        # log(exp(term1) - exp(term2)), term1 >= term2 since q1 <= q2
        diff = np.minimum(term2 - term1, 0.0)
        return term1 + np.log1p(-np.exp(diff))


def _pareto_nbd_ll(params: Sequence[float], d: _Data, grad: bool = False) -> np.ndarray:
    return pareto_nbd_log_likelihood(params, *d.cols)


def pareto_nbd_log_likelihood(
    params: Sequence[float],
    frequency: np.ndarray,
    recency: np.ndarray,
    T: np.ndarray,
) -> np.ndarray:
    """Pareto/NBD log-likelihood of each customer, eq. (18) of [4]_.

    Parameters
    ----------
    params : sequence of float
        ``(r, alpha, s, beta)``.
    frequency, recency, T : numpy.ndarray

    Returns
    -------
    numpy.ndarray
    """
    r, alpha, s, beta = (float(p) for p in params)
    x = np.asarray(frequency, dtype="float64")
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + s * math.log(beta)
    log_a0 = _pareto_log_a0((r, alpha, s, beta), x, recency, T)
    with np.errstate(divide="ignore"):
        a2 = np.logaddexp(
            -(r + x) * np.log(alpha + T) - s * np.log(beta + T),
            math.log(s) + log_a0 - np.log(r + s + x),
        )
    return a1 + a2


def _gamma_gamma_ll(
    params: Sequence[float], d: _Data, grad: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    p, q, v = (float(t) for t in params)
    x, m = d.cols
    xu, xi = d.unique[0], d.index[0]
    if not hasattr(d, "log_m"):  # constant over iterations
        d.log_m, d.log_xu = np.log(m), np.log(xu)
    log_m, log_x = d.log_m, d.log_xu[xi]
    pxu = p * xu
    px = pxu[xi]
    log_xmv = np.log(x * m + v)
    ll = (
        (gammaln(pxu + q) - gammaln(pxu))[xi]
        - gammaln(q)
        + q * math.log(v)
        + (px - 1.0) * log_m
        + px * log_x
        - (px + q) * log_xmv
    )
    if not grad:
        return ll
    psi_pxq = digamma(pxu + q)
    d_p = x * ((psi_pxq - digamma(pxu))[xi] + log_m + log_x - log_xmv)
    d_q = (psi_pxq - digamma(q))[xi] + math.log(v) - log_xmv
    d_v = q / v - (px + q) / (x * m + v)
    return ll, np.vstack([d_p, d_q, d_v])


def gamma_gamma_log_likelihood(
    params: Sequence[float],
    frequency: np.ndarray,
    monetary_value: np.ndarray,
    grad: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Gamma-Gamma log-likelihood of each repeat customer's mean spend, eq. (1a) of [6]_.

    Parameters
    ----------
    params : sequence of float
        ``(p, q, v)`` (``v`` is the paper's ``gamma``).
    frequency, monetary_value : numpy.ndarray
        Number of repeat transactions ``x > 0`` and their mean value ``m > 0``.
    grad : bool
        Also return the gradient, shape ``(3, n)``.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
    """
    return _gamma_gamma_ll(params, _Data(frequency, monetary_value, n_unique=1), grad)


# --------------------------------------------------------------------------- #
# input checks and helpers
# --------------------------------------------------------------------------- #
def _column(summary: pd.DataFrame, name: str, what: str) -> np.ndarray:
    if name not in summary.columns:
        raise data_problem(
            "summary",
            name,
            len(summary),
            f"lack the column {what} needs; columns present",
            [str(c) for c in summary.columns],
        )
    v = pd.to_numeric(summary[name], errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(v)
    if bad.any():
        raise data_problem(
            "summary",
            name,
            int(bad.sum()),
            "are missing or not finite (customer ids shown)",
            list(summary.index[bad][:5]),
        )
    return v


def _rft(summary: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``frequency``, ``recency``, ``T`` arrays of a summary."""
    if not isinstance(summary, pd.DataFrame):
        raise DataError(
            f"{what}: expected the per-customer summary (a pandas DataFrame from "
            f"bmkt.rfm.summarize), got {type(summary).__name__}."
        )
    if summary.empty:
        raise DataError(f"{what}: summary: 0 rows; there are no customers.")
    x = _column(summary, "frequency", what)
    tx = _column(summary, "recency", what)
    T = _column(summary, "T", what)
    ids = summary.index
    checks = (
        (x < 0, "frequency", "are negative"),
        (x != np.round(x), "frequency", "are not whole numbers"),
        (tx < 0, "recency", "are negative"),
        (tx > T * (1 + 1e-9) + 1e-9, "recency", "exceed T (recency must be <= T)"),
        ((x == 0) & (tx > 0), "recency", "are > 0 for customers with frequency 0"),
    )
    for bad, col, msg in checks:
        if bad.any():
            raise data_problem(
                "summary", col, int(bad.sum()), f"{msg} (customer ids shown)", list(ids[bad][:5])
            )
    return x, tx, T


def _frequency_spend(summary: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``frequency`` and ``monetary_value`` arrays of a summary."""
    if not isinstance(summary, pd.DataFrame):
        raise DataError(
            f"{what}: expected the per-customer summary (a pandas DataFrame from "
            f"bmkt.rfm.summarize), got {type(summary).__name__}."
        )
    if summary.empty:
        raise DataError(f"{what}: summary: 0 rows; there are no customers.")
    x = _column(summary, "frequency", what)
    m = _column(summary, "monetary_value", what)
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise data_problem(
            "summary",
            "frequency",
            int(bad.sum()),
            "are negative or not whole numbers (customer ids shown)",
            list(summary.index[bad][:5]),
        )
    return x, m


def _patterns(*cols: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique rows of ``cols``: (inverse index, unique columns)."""
    frame = pd.DataFrame({f"c{i}": c for i, c in enumerate(cols)})
    grouped = frame.groupby(list(frame.columns), sort=False)
    inverse = grouped.ngroup().to_numpy()
    first = frame.drop_duplicates()
    return inverse, [first[c].to_numpy() for c in frame.columns]


def _check_period_matches(summary: pd.DataFrame, fitted: str | None, what: str) -> None:
    got = summary.attrs.get("period") if isinstance(summary, pd.DataFrame) else None
    if fitted is not None and got is not None and got != fitted:
        raise ConfigError(
            f"{what}: the model was fitted with period {fitted!r}, the summary has period "
            f"{got!r}; summarize with the same period."
        )


def _weights(summary: pd.DataFrame, weights: Any) -> np.ndarray:
    if weights is None:
        return np.ones(len(summary))
    w = summary[weights] if isinstance(weights, str) else weights
    w = np.asarray(w, dtype="float64")
    if w.shape != (len(summary),):
        raise DataError(f"weights: expected {len(summary)} values, got shape {w.shape}.")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise data_problem(
            "summary", "weights", int(bad.sum()), "are negative or not finite", list(w[bad][:5])
        )
    if w.sum() <= 0:
        raise DataError("weights: all weights are zero.")
    return w


def _to_series(values: np.ndarray, summary: pd.DataFrame, name: str) -> pd.Series:
    return pd.Series(np.asarray(values, dtype="float64"), index=summary.index, name=name)


# --------------------------------------------------------------------------- #
# estimator base
# --------------------------------------------------------------------------- #
class _Fitter(BaseEstimator):
    """Shared fitting machinery (see the module docstring)."""

    _param_names: tuple[str, ...] = ()
    _ll_fast: Callable[..., Any]
    _analytic_gradient = True
    _n_unique: int | None = None  # leading data columns tabulated by distinct value

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. "
                "Call 'fit' with a customer summary first."
            )

    def _objective(
        self, data: tuple[np.ndarray, ...], w: np.ndarray
    ) -> tuple[Callable[[np.ndarray], Any], bool]:
        """Mean negative log-likelihood (+ penalty) over log-parameters, and its gradient."""
        d = _Data(*data, n_unique=self._n_unique)
        total = w.sum()
        pen = float(self.penalizer)
        ll_fn = type(self)._ll_fast

        if self._analytic_gradient:

            def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
                params = np.exp(theta)
                ll, g = ll_fn(params, d, True)
                # einsum, not BLAS: multi-threaded BLAS calls on these shapes cost
                # more in thread wake-ups than in arithmetic
                f = -np.einsum("i,i->", w, ll) / total + pen * np.sum(params**2)
                grad = -np.einsum("ji,i->j", g, w) / total * params + 2 * pen * params**2
                if not np.isfinite(f) or not np.all(np.isfinite(grad)):
                    return 1e10, np.zeros_like(theta)
                return float(f), grad

            return fun, True

        def fun_nograd(theta: np.ndarray) -> float:
            params = np.exp(theta)
            f = -np.einsum("i,i->", w, ll_fn(params, d, False)) / total + pen * np.sum(params**2)
            return float(f) if np.isfinite(f) else 1e10

        return fun_nograd, False

    def _minimize(
        self, data: tuple[np.ndarray, ...], w: np.ndarray, starts: list[np.ndarray]
    ) -> np.ndarray:
        fun, has_grad = self._objective(data, w)
        bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(self._param_names)
        messages = []
        for i, x0 in enumerate(starts):
            # one BLAS thread: L-BFGS-B's BLAS calls on 4-vectors cost more in thread
            # wake-ups than in arithmetic (2x slower fits on a busy 2-core machine)
            with np.errstate(all="ignore"), threadpool_limits(1, user_api="blas"):
                res = minimize(
                    fun,
                    np.clip(x0, -_LOG_BOUND + 1, _LOG_BOUND - 1),
                    jac=has_grad,
                    method="L-BFGS-B",
                    bounds=bounds,
                    options={"maxiter": self.max_iter, "ftol": 1e-13, "gtol": 1e-9},
                )
            g = self._gradient(fun, res.x, has_grad)
            at_bound = np.abs(res.x) >= _LOG_BOUND - 1e-6
            g_free = np.where(at_bound, 0.0, g)
            g_max = float(np.max(np.abs(g_free)))
            ok = bool(np.isfinite(res.fun)) and (
                g_max < _ACCEPT_GRAD or (bool(res.success) and g_max < 1e-3)
            )
            messages.append(f"start {i + 1}: {res.message} (max |grad| {g_max:.2g})")
            log.debug("%s %s", type(self).__name__, messages[-1])
            if ok:
                self.n_iter_ = int(res.nit)
                self.optimizer_message_ = str(res.message)
                if at_bound.any():
                    names = [n for n, b in zip(self._param_names, at_bound, strict=True) if b]
                    warnings.warn(
                        f"{type(self).__name__}: parameter(s) {names} reached the optimizer "
                        f"bound exp(+-{_LOG_BOUND:g}); the data do not identify them "
                        "(e.g. no sign of dropout). Predictions remain usable; the value "
                        "of those parameters is not.",
                        UserWarning,
                        stacklevel=3,
                    )
                return res.x
        raise ModelError(
            f"{type(self).__name__} did not converge from {len(starts)} starting points "
            f"({'; '.join(messages)}). Check the summary (enough repeat buyers? T in the "
            "intended unit?), try penalizer=0.001 or another 'period'."
        )

    @staticmethod
    def _gradient(fun: Callable[[np.ndarray], Any], x: np.ndarray, has_grad: bool) -> np.ndarray:
        if has_grad:
            with np.errstate(all="ignore"):
                return np.asarray(fun(x)[1])
        eps = 1e-6
        g = np.empty_like(x)
        with np.errstate(all="ignore"):
            for j in range(len(x)):
                e = np.zeros_like(x)
                e[j] = eps
                g[j] = (fun(x + e) - fun(x - e)) / (2 * eps)
        return g


class _TransactionModel(_Fitter):
    """A model of repeat purchases from ``(frequency, recency, T)``."""

    _ll: Callable[..., Any]

    def __init__(
        self,
        penalizer: float = 0.0,
        sample_size: int | None = None,
        random_state: int | None = 0,
        max_iter: int = 1000,
    ) -> None:
        self.penalizer = penalizer
        self.sample_size = sample_size
        self.random_state = random_state
        self.max_iter = max_iter

    # -- fitting ---------------------------------------------------------------
    def _starts(self, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        rate = max(np.sum(w * x) / max(np.sum(w * T), 1e-12), 1e-6)  # repeat purchases per unit
        r0 = 1.0
        return [
            np.log([r0, r0 / rate, 1.0, 3.0]),
            np.log([0.5, 0.5 / rate, 0.5, 2.0]),
            np.full(4, 0.1),  # the lifetimes default start
        ]

    def fit(self, summary: pd.DataFrame, weights: Any = None) -> _TransactionModel:
        """Fit the model by maximum likelihood.

        Parameters
        ----------
        summary : pandas.DataFrame
            Per-customer ``frequency``, ``recency``, ``T`` (from
            :func:`bmkt.rfm.summarize`). Not modified.
        weights : str or array-like, optional
            Number of customers each row stands for (a column name or values),
            for summaries already compressed to patterns.

        Returns
        -------
        self

        Raises
        ------
        DataError
            On missing columns, negative or non-integer frequency,
            ``recency > T``, missing values, or an empty summary.
        ModelError
            When there are too few customers or repeat buyers to fit, or the
            optimiser fails.
        """
        x, tx, T = _rft(summary, f"{type(self).__name__}.fit")
        w = _weights(summary, weights)
        if self.sample_size is not None and len(x) > int(self.sample_size):
            rng = np.random.default_rng(self.random_state)
            keep = np.sort(rng.choice(len(x), size=int(self.sample_size), replace=False))
            x, tx, T, w = x[keep], tx[keep], T[keep], w[keep]
            log.info("%s: fitting on a random sample of %d customers", type(self).__name__, len(x))
        n_customers = float(w.sum())
        if (w > 0).sum() < 2:
            raise ModelError(
                f"{type(self).__name__}: at least 2 customers are needed to fit, got {int((w > 0).sum())}."
            )
        if not np.any((x > 0) & (w > 0)):
            raise ModelError(
                f"{type(self).__name__}: no customer made a repeat purchase (every frequency "
                "is 0), so the purchase rate cannot be estimated. Use a longer observation "
                "window."
            )
        if T.max() <= 0:
            raise ModelError(f"{type(self).__name__}: every T is 0; nobody has been observed.")
        inv, (ux, utx, uT) = _patterns(x, tx, T)
        uw = np.bincount(inv, weights=w, minlength=len(ux))
        scale = 1.0 / T.max()
        theta = self._minimize((ux, utx * scale, uT * scale), uw, self._starts(ux, uT * scale, uw))
        params = np.exp(theta)
        params = self._unscale(params, scale)
        self.params_ = pd.Series(params, index=list(self._param_names), name="value")
        self.log_likelihood_ = float(np.sum(uw * type(self)._ll(params, ux, utx, uT)))
        self.n_customers_ = n_customers
        self.n_patterns_ = len(ux)
        self.period_ = summary.attrs.get("period")
        self.frequency_max_ = int(x.max())
        self.T_max_ = float(T.max())
        log.info(
            "%s fitted on %d customers (%d patterns): %s",
            type(self).__name__,
            n_customers,
            len(ux),
            ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items()),
        )
        return self

    def _unscale(self, params: np.ndarray, scale: float) -> np.ndarray:
        out = params.copy()
        out[1] /= scale  # alpha is a rate parameter of a per-time quantity
        return out

    def _arrays(self, summary: pd.DataFrame, what: str) -> tuple[np.ndarray, ...]:
        self._check_fitted()
        _check_period_matches(summary, self.period_, what)
        return _rft(summary, what)

    # -- public predictions ----------------------------------------------------
    def log_likelihood(self, summary: pd.DataFrame) -> pd.Series:
        """Log-likelihood of each customer's history at the fitted parameters."""
        x, tx, T = self._arrays(summary, f"{type(self).__name__}.log_likelihood")
        ll = type(self)._ll(self.params_.to_numpy(), x, tx, T)
        return _to_series(ll, summary, "log_likelihood")

    def p_alive(self, summary: pd.DataFrame) -> pd.Series:
        """Probability that each customer is still alive (has not dropped out) at ``T``.

        Parameters
        ----------
        summary : pandas.DataFrame
            ``frequency``, ``recency``, ``T`` per customer.

        Returns
        -------
        pandas.Series
            Named ``p_alive``, indexed like ``summary``.
        """
        x, tx, T = self._arrays(summary, f"{type(self).__name__}.p_alive")
        return _to_series(self._p_alive(x, tx, T), summary, "p_alive")

    def predict_purchases(self, summary: pd.DataFrame, horizon: float) -> pd.Series:
        """Expected number of repeat purchases of each customer in the next ``horizon`` periods.

        Parameters
        ----------
        summary : pandas.DataFrame
            ``frequency``, ``recency``, ``T`` per customer.
        horizon : float
            Length of the future window, in the summary's period (days or weeks).

        Returns
        -------
        pandas.Series
            Named ``predicted_purchases``, indexed like ``summary``.
        """
        horizon = _check_horizon(horizon)
        x, tx, T = self._arrays(summary, f"{type(self).__name__}.predict_purchases")
        inv, (ux, utx, uT) = _patterns(x, tx, T)
        pred = self._conditional_expected(horizon, ux, utx, uT)[inv]
        return _to_series(pred, summary, "predicted_purchases")

    def expected_purchases_population(self, t: float | np.ndarray) -> np.ndarray:
        """Expected repeat purchases by time ``t`` of a customer who just made a first purchase.

        Parameters
        ----------
        t : float or array-like
            Time(s) since the first purchase, in the fitted period.

        Returns
        -------
        numpy.ndarray
        """
        self._check_fitted()
        t = np.asarray(t, dtype="float64")
        if np.any(t < 0) or not np.all(np.isfinite(t)):
            raise ConfigError("'t' must be finite and >= 0.")
        return np.asarray(self._population(t))

    def _p_alive(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _conditional_expected(
        self, t: float, x: np.ndarray, tx: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError

    def _conditional_expected_many(
        self, ts: Sequence[float], x: np.ndarray, tx: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        """Cumulative expected purchases by each of ``ts``, shape ``(len(ts), n)``."""
        return np.vstack([self._conditional_expected(float(t), x, tx, T) for t in ts])

    def _population(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_horizon(horizon: Any) -> float:
    try:
        h = float(horizon)
    except (TypeError, ValueError):
        raise ConfigError(f"'horizon' must be a number of periods >= 0. Got {horizon!r}.") from None
    if not np.isfinite(h) or h < 0:
        raise ConfigError(f"'horizon' must be a number of periods >= 0. Got {horizon!r}.")
    return h


def _log_hyp2f1(a: Any, b: Any, c: Any, z: Any) -> np.ndarray:
    """log 2F1(a, b; c; z) with the Euler transformation where the direct series overflows."""
    with np.errstate(all="ignore"):
        direct = np.log(hyp2f1(a, b, c, z))
        bad = ~np.isfinite(direct)
        if np.any(bad):
            alt = np.log(hyp2f1(c - a, c - b, c, z)) + (c - a - b) * np.log1p(-z)
            direct = np.where(bad, alt, direct)
    return direct


class BetaGeo(_TransactionModel):
    """BG/NBD model of repeat purchases [1]_.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the (time-scaled) parameters, as ``lifetimes``'
        ``penalizer_coef``; 0 for plain maximum likelihood.
    sample_size : int, optional
        Fit on a random sample of this many customers (everyone is scored);
        ``None`` fits on all. See the module docstring.
    random_state : int, optional
        Seed of the sample.
    max_iter : int
        Iterations of L-BFGS-B per start.

    Attributes
    ----------
    params_ : pandas.Series
        ``r``, ``alpha`` (in the summary's period), ``a``, ``b``.
    log_likelihood_ : float
        Total log-likelihood at ``params_``.
    n_customers_, n_patterns_ : float, int
        Customers fitted and unique ``(frequency, recency, T)`` patterns.
    period_ : str or None
        The summary's period at fit time.
    n_iter_ : int
        L-BFGS-B iterations of the accepted start.
    optimizer_message_ : str
        L-BFGS-B's final message.
    frequency_max_, T_max_ : int, float
        Largest frequency and T fitted (default plot ranges).

    References
    ----------
    .. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting Your
       Customers the Easy Way: An Alternative to the Pareto/NBD Model",
       Marketing Science, 24 (2), 275-284.
    .. [2] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2008), "Computing
       P(alive) Using the BG/NBD Model", http://brucehardie.com/notes/021/

    Examples
    --------
    >>> from bmkt import datasets, rfm
    >>> orders = datasets.load_cdnow()
    >>> cal = rfm.summarize(orders, as_of="1997-09-30", period="W")
    >>> BetaGeo().fit(cal).params_.round(3).tolist()
    [0.243, 4.414, 0.793, 2.426]
    """

    _param_names = ("r", "alpha", "a", "b")
    _ll = staticmethod(bg_nbd_log_likelihood)
    _ll_fast = staticmethod(_bg_nbd_ll)

    def _p_alive(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        log_div = (r + x) * np.log((alpha + T) / (alpha + tx)) + np.log(
            a / (b + np.maximum(x, 1) - 1)
        )
        return np.where(x == 0, 1.0, expit(-log_div))

    def _conditional_expected(
        self, t: float, x: np.ndarray, tx: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        """Eq. (10) of [1]_."""
        return self._conditional_expected_many([t], x, tx, T)[0]

    def _conditional_expected_many(
        self, ts: Sequence[float], x: np.ndarray, tx: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        # eq. (10) is numerator(t; x, T) / denominator(x, t_x, T): the costly
        # hypergeometric numerator is evaluated once per distinct (x, T)
        inv, (ux, uT) = _patterns(x, T)
        den = self._denominator(x, tx, T)
        out = np.empty((len(ts), len(x)))
        for k, t in enumerate(ts):
            out[k] = self._numerator(float(t), ux, uT)[inv] / den if t > 0 else 0.0
        return out

    def _numerator(self, t: float, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        log_h = _log_hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        return (
            (a + b + x - 1)
            / (a - 1)
            * (1 - np.exp(log_h + (r + x) * np.log((alpha + T) / (alpha + t + T))))
        )

    def _denominator(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        return 1 + (x > 0) * (a / (b + np.maximum(x, 1) - 1)) * ((alpha + T) / (alpha + tx)) ** (
            r + x
        )

    def _population(self, t: np.ndarray) -> np.ndarray:
        """Eq. (9) of [1]_."""
        r, alpha, a, b = self.params_.to_numpy()
        h = hyp2f1(r, b, a + b - 1, t / (alpha + t))
        return (a + b - 1) / (a - 1) * (1 - h * (alpha / (alpha + t)) ** r)


class ModifiedBetaGeo(BetaGeo):
    """MBG/NBD model of repeat purchases [1]_: BG/NBD with dropout possible at time 0.

    Parameters and attributes as :class:`BetaGeo`.

    References
    ----------
    .. [1] Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical
       Validation and Comparison of Models for Customer Base Analysis",
       International Journal of Research in Marketing, 24 (3), 201-209.
    .. [2] Wagner, U. and Hoppe, D. (2008), "Erratum on the MBG/NBD Model",
       International Journal of Research in Marketing, 25 (3), 225-226.
    """

    _ll = staticmethod(mbg_nbd_log_likelihood)
    _ll_fast = staticmethod(_mbg_nbd_ll)

    def _p_alive(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        return 1.0 / (1 + (a / (b + x)) * ((alpha + T) / (alpha + tx)) ** (r + x))

    def _numerator(self, t: float, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        log_h = _log_hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
        return (
            (a + b + x)
            / (a - 1)
            * (1 - np.exp(log_h + (r + x) * np.log((alpha + T) / (alpha + t + T))))
        )

    def _denominator(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        return 1 + (a / (b + x)) * ((alpha + T) / (alpha + tx)) ** (r + x)

    def _population(self, t: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.params_.to_numpy()
        h = hyp2f1(r, b + 1, a + b, t / (alpha + t))
        return b / (a - 1) * (1 - h * (alpha / (alpha + t)) ** r)


class ParetoNBD(_TransactionModel):
    """Pareto/NBD model of repeat purchases [1]_ [2]_.

    Parameters and attributes as :class:`BetaGeo`; ``params_`` holds ``r``,
    ``alpha``, ``s``, ``beta`` (``alpha`` and ``beta`` in the summary's
    period). The gradient is by finite differences (the likelihood's
    ``hyp2f1`` terms have no cheap parameter derivatives), so fitting is
    slower than BG/NBD; ``sample_size`` helps on large bases.

    References
    ----------
    .. [1] Schmittlein, D. C., Morrison, D. G. and Colombo, R. (1987),
       "Counting Your Customers: Who Are They and What Will They Do Next?",
       Management Science, 33 (1), 1-24.
    .. [2] Fader, P. S. and Hardie, B. G. S. (2005), "A Note on Deriving the
       Pareto/NBD Model and Related Expressions", http://brucehardie.com/notes/009/
    """

    _param_names = ("r", "alpha", "s", "beta")
    _ll = staticmethod(pareto_nbd_log_likelihood)
    _ll_fast = staticmethod(_pareto_nbd_ll)
    _n_unique = 0  # its likelihood works on the raw columns
    _analytic_gradient = False

    def _starts(self, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        rate = max(np.sum(w * x) / max(np.sum(w * T), 1e-12), 1e-6)
        return [
            np.log([1.0, 1.0 / rate, 1.0, 1.0]),
            np.log([0.5, 0.5 / rate, 0.5, 0.5]),
            np.zeros(4),
        ]

    def _unscale(self, params: np.ndarray, scale: float) -> np.ndarray:
        out = params.copy()
        out[1] /= scale
        out[3] /= scale
        return out

    def _p_alive(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Eqs. (36)-(37) of [2]_."""
        r, alpha, s, beta = self.params_.to_numpy()
        log_a0 = _pareto_log_a0((r, alpha, s, beta), x, tx, T)
        with np.errstate(over="ignore"):
            return 1.0 / (
                1.0
                + np.exp(
                    np.log(s)
                    - np.log(r + s + x)
                    + (r + x) * np.log(alpha + T)
                    + s * np.log(beta + T)
                    + log_a0
                )
            )

    def _conditional_expected(
        self, t: float, x: np.ndarray, tx: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        """Eq. (41) of [2]_."""
        r, alpha, s, beta = self.params_.to_numpy()
        if t == 0:
            return np.zeros_like(x, dtype="float64")
        ll = pareto_nbd_log_likelihood((r, alpha, s, beta), x, tx, T)
        first = (
            gammaln(r + x)
            - gammaln(r)
            + r * np.log(alpha)
            + s * np.log(beta)
            - (r + x) * np.log(alpha + T)
            - s * np.log(beta + T)
        )
        second = np.log(r + x) + np.log(beta + T) - np.log(alpha + T)
        third = np.log((1 - ((beta + T) / (beta + T + t)) ** (s - 1)) / (s - 1))
        return np.exp(first + second + third - ll)

    def _population(self, t: np.ndarray) -> np.ndarray:
        """Eq. (27) of [2]_."""
        r, alpha, s, beta = self.params_.to_numpy()
        return r * beta / alpha / (s - 1) * (1 - (beta / (beta + t)) ** (s - 1))


class GammaGamma(_Fitter):
    """Gamma-Gamma model of spend per transaction [1]_ [2]_.

    Each transaction's value is ``Gamma(p, nu)``, and ``nu ~ Gamma(q, v)``
    across customers (``v`` is the papers' ``gamma``). It assumes spend is
    independent of purchase frequency: see :func:`check_gamma_gamma_assumption`.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the (spend-scaled) parameters, 0 for plain maximum likelihood.
    sample_size : int, optional
        Fit on a random sample of this many repeat buyers.
    random_state : int, optional
        Seed of the sample.
    max_iter : int
        Iterations of L-BFGS-B per start.

    Attributes
    ----------
    params_ : pandas.Series
        ``p``, ``q``, ``v``.
    log_likelihood_ : float
    n_customers_ : float
        Repeat buyers fitted (``frequency > 0`` and ``monetary_value > 0``).
    n_excluded_ : int
        Customers left out of the fit (no repeat purchase or zero spend).

    References
    ----------
    .. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
       Using Iso-Value Curves for Customer Base Analysis", Journal of
       Marketing Research, 42 (4), 415-430.
    .. [2] Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma Model of
       Monetary Value", http://brucehardie.com/notes/025/

    Examples
    --------
    >>> from bmkt import datasets, rfm
    >>> orders = datasets.load_cdnow()
    >>> cal = rfm.summarize(orders, as_of="1997-09-30", period="W")
    >>> GammaGamma().fit(cal).params_.round(2).tolist()
    [6.25, 3.74, 15.44]
    """

    _param_names = ("p", "q", "v")
    _ll_fast = staticmethod(_gamma_gamma_ll)
    _n_unique = 1  # frequency only; mean spend is continuous

    def __init__(
        self,
        penalizer: float = 0.0,
        sample_size: int | None = None,
        random_state: int | None = 0,
        max_iter: int = 1000,
    ) -> None:
        self.penalizer = penalizer
        self.sample_size = sample_size
        self.random_state = random_state
        self.max_iter = max_iter

    def fit(self, summary: pd.DataFrame, weights: Any = None) -> GammaGamma:
        """Fit on the repeat buyers of ``summary``.

        Customers with ``frequency == 0`` carry no repeat-spend information
        and customers with ``monetary_value <= 0`` (repeat transactions that
        were all free) are outside the model's support; both are left out
        (``n_excluded_``), as in [2]_.

        Parameters
        ----------
        summary : pandas.DataFrame
            Per-customer ``frequency`` and ``monetary_value`` (mean value of
            the repeat transactions). Not modified.
        weights : str or array-like, optional
            Customers per row.

        Returns
        -------
        self

        Raises
        ------
        DataError
            On missing or invalid columns, or when no customer has a repeat
            purchase with positive value.
        ModelError
            When fewer than 2 such customers exist or the optimiser fails.
        """
        what = "GammaGamma.fit"
        x, m = _frequency_spend(summary, what)
        w = _weights(summary, weights)
        use = (x > 0) & (m > 0) & (w > 0)
        self.n_excluded_ = int((~use).sum())
        if not use.any():
            raise DataError(
                f"{what}: no customer with a repeat purchase (frequency > 0) of positive "
                f"monetary_value among {len(summary)}; the spend model needs repeat buyers."
            )
        x, m, w = x[use], m[use], w[use]
        if self.sample_size is not None and len(x) > int(self.sample_size):
            rng = np.random.default_rng(self.random_state)
            keep = np.sort(rng.choice(len(x), size=int(self.sample_size), replace=False))
            x, m, w = x[keep], m[keep], w[keep]
        if len(x) < 2:
            raise ModelError(
                f"{what}: at least 2 repeat buyers with positive spend are needed, got {len(x)}."
            )
        if self.n_excluded_:
            log.info("%s: %d customer(s) without repeat spend left out", what, self.n_excluded_)
        inv, (ux, um) = _patterns(x, m)
        uw = np.bincount(inv, weights=w, minlength=len(ux))
        c = float(np.sum(uw * um) / uw.sum())  # spend scale
        ms = um / c
        starts = [np.log([1.0, 2.0, 1.0]), np.log([2.0, 3.0, 2.0]), np.full(3, 0.1)]
        theta = self._minimize((ux, ms), uw, starts)
        params = np.exp(theta)
        params[2] *= c
        self.params_ = pd.Series(params, index=list(self._param_names), name="value")
        self.log_likelihood_ = float(np.sum(uw * gamma_gamma_log_likelihood(params, ux, um)))
        self.n_customers_ = float(w.sum())
        log.info(
            "GammaGamma fitted on %d repeat buyers: %s",
            len(x),
            ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items()),
        )
        if params[1] <= 1:
            warnings.warn(
                f"GammaGamma: fitted q={params[1]:.3g} <= 1, so the population mean spend "
                "is infinite and expected_spend cannot be computed. Check for extreme spend "
                "values or use penalizer > 0.",
                UserWarning,
                stacklevel=2,
            )
        return self

    def population_mean_spend(self) -> float:
        """Mean spend per transaction in the population, ``p v / (q - 1)``."""
        self._check_fitted()
        p, q, v = self.params_.to_numpy()
        if q <= 1:
            raise ModelError(f"GammaGamma: q={q:.3g} <= 1, the population mean spend is infinite.")
        return float(p * v / (q - 1))

    def expected_spend(self, summary: pd.DataFrame) -> pd.Series:
        """Expected value of each customer's future transactions, eq. (5) of [2]_.

        A weighted mean of the customer's observed repeat spend and the
        population mean, the customer's weight growing with ``frequency``;
        customers with ``frequency == 0`` get the population mean.

        Parameters
        ----------
        summary : pandas.DataFrame
            ``frequency`` and ``monetary_value`` per customer.

        Returns
        -------
        pandas.Series
            Named ``expected_spend``.

        Raises
        ------
        DataError
            When ``monetary_value`` is negative.
        ModelError
            When the fitted ``q <= 1`` (infinite population mean).
        """
        self._check_fitted()
        what = "GammaGamma.expected_spend"
        x, m = _frequency_spend(summary, what)
        bad = m < 0
        if bad.any():
            raise data_problem(
                "summary",
                "monetary_value",
                int(bad.sum()),
                "are negative (customer ids shown); net refunds are not spend",
                list(summary.index[bad][:5]),
            )
        p, q, _ = self.params_.to_numpy()
        mean = self.population_mean_spend()
        wt = p * x / (p * x + q - 1)
        return _to_series((1 - wt) * mean + wt * m, summary, "expected_spend")

    def clv(
        self,
        transaction_model: _TransactionModel,
        summary: pd.DataFrame,
        horizon: int = 12,
        discount_rate: float = 0.01,
        period: str | None = None,
    ) -> pd.Series:
        """Customer lifetime value; see :func:`clv`."""
        return clv(transaction_model, self, summary, horizon, discount_rate, period)


# --------------------------------------------------------------------------- #
# CLV
# --------------------------------------------------------------------------- #
def clv(
    transaction_model: _TransactionModel,
    spend_model: GammaGamma,
    summary: pd.DataFrame,
    horizon: int = 12,
    discount_rate: float = 0.01,
    period: str | None = None,
) -> pd.Series:
    """Discounted expected value of each customer's purchases over the next ``horizon`` months.

    ``CLV = expected_spend * sum_{k=1..horizon} (E[N(k)] - E[N(k-1)]) / (1 + d)^k``
    where ``E[N(k)]`` is the transaction model's expected number of repeat
    purchases in the next ``k`` months and ``d`` the monthly discount rate:
    the discounted-cash-flow approach of [1]_ as ``lifetimes``'
    ``customer_lifetime_value`` computes it (a month is 30 days or 4.345
    weeks, as there), vectorised over unique ``(frequency, recency, T)``
    patterns.

    Parameters
    ----------
    transaction_model : BetaGeo, ModifiedBetaGeo or ParetoNBD
        Fitted.
    spend_model : GammaGamma
        Fitted.
    summary : pandas.DataFrame
        ``frequency``, ``recency``, ``T``, ``monetary_value`` per customer.
    horizon : int
        Months ahead.
    discount_rate : float
        Monthly discount rate (0.01 = 1% a month).
    period : {"D", "W"}, optional
        Unit of the summary's time columns; taken from ``summary.attrs`` or
        the transaction model when not given.

    Returns
    -------
    pandas.Series
        Named ``clv``, indexed like ``summary``.

    References
    ----------
    .. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
       Using Iso-Value Curves for Customer Base Analysis", Journal of
       Marketing Research, 42 (4), 415-430.
    """
    if not isinstance(transaction_model, _TransactionModel):
        raise ConfigError(
            "'transaction_model' must be a BetaGeo, ModifiedBetaGeo or ParetoNBD instance, "
            f"got {type(transaction_model).__name__}."
        )
    if not isinstance(spend_model, GammaGamma):
        raise ConfigError(
            f"'spend_model' must be a GammaGamma instance, got {type(spend_model).__name__}."
        )
    transaction_model._check_fitted()
    spend_model._check_fitted()
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ConfigError(f"'horizon' must be a whole number of months >= 1. Got {horizon!r}.")
    if not np.isfinite(discount_rate) or discount_rate <= -1:
        raise ConfigError(f"'discount_rate' must be > -1. Got {discount_rate!r}.")
    if period is None:
        period = (
            (summary.attrs.get("period") if isinstance(summary, pd.DataFrame) else None)
            or transaction_model.period_
            or "D"
        )
    if period not in PERIODS_PER_MONTH:
        raise ConfigError(
            f"Valid options for 'period' are {', '.join(repr(p) for p in PERIODS_PER_MONTH)}. "
            f"Got {period!r}."
        )
    got = summary.attrs.get("period") if isinstance(summary, pd.DataFrame) else None
    if got is not None and got != period:
        raise ConfigError(f"clv: period={period!r} but the summary has period {got!r}.")
    factor = PERIODS_PER_MONTH[period]
    x, tx, T = transaction_model._arrays(summary, "clv")
    spend = spend_model.expected_spend(summary).to_numpy()
    inv, (ux, utx, uT) = _patterns(x, tx, T)
    months = np.arange(0, int(horizon) + 1)
    cumulative = transaction_model._conditional_expected_many(months * factor, ux, utx, uT)
    discount = (1.0 + discount_rate) ** -months[1:]
    discounted = discount @ np.diff(cumulative, axis=0)
    value = spend * discounted[inv]
    if not np.all(np.isfinite(value)):
        bad = ~np.isfinite(value)
        raise ModelError(
            f"clv: {int(bad.sum())} customer(s) got a non-finite value (customer ids "
            f"{list(summary.index[bad][:5])}); the fitted parameters are at an extreme."
        )
    return _to_series(value, summary, "clv")


def score_spark(
    model: _TransactionModel,
    frame: Any,
    horizon: float | None = None,
    *,
    id_column: str = "customer_id",
) -> Any:
    """Score a Spark DataFrame of per-customer summaries with a fitted model, distributed.

    A map over the frame's partitions (:func:`bmkt.engine.map_partitions`,
    Spark's ``mapInPandas``): the fitted model is broadcast to the executors
    once, and each partition is scored there with the same vectorised code
    as :meth:`BetaGeo.p_alive` and :meth:`BetaGeo.predict_purchases`, so the
    values equal local scoring of the same rows. Fit on the driver, on all
    customers or a sample (``sample_size``); score everybody on the cluster.

    Parameters
    ----------
    model : BetaGeo, ModifiedBetaGeo or ParetoNBD
        Fitted (its class must be importable on the executors: install
        bmkt there).
    frame : pyspark.sql.DataFrame
        ``id_column``, ``frequency``, ``recency`` and ``T`` per customer, in
        the model's period (e.g. ``spark.createDataFrame(summary.reset_index())``,
        or a Parquet table of summaries).
    horizon : float, optional
        Also return ``predicted_purchases`` over this many periods.
    id_column : str
        The customer key, passed through.

    Returns
    -------
    pyspark.sql.DataFrame
        ``id_column``, ``p_alive`` and (with ``horizon``) ``predicted_purchases``,
        one row per input row. Lazy: nothing runs until it is written or
        collected.

    Raises
    ------
    ConfigError
        For a model that is not a transaction model, or an invalid horizon.
    NotFittedError
        Before ``fit``.
    DataError
        When a column is missing (raised here); invalid values raise the
        usual :class:`DataError` inside the Spark job.

    Examples
    --------
    >>> model = BetaGeo().fit(summary)  # doctest: +SKIP
    >>> frame = spark.createDataFrame(summary.reset_index())  # doctest: +SKIP
    >>> score_spark(model, frame, horizon=90).write.parquet("scores/")  # doctest: +SKIP
    """
    if not isinstance(model, _TransactionModel):
        raise ConfigError(
            "'model' must be a BetaGeo, ModifiedBetaGeo or ParetoNBD instance, "
            f"got {type(model).__name__}."
        )
    model._check_fitted()
    if horizon is not None:
        horizon = _check_horizon(horizon)
    from pyspark.sql.types import DoubleType, StructField, StructType

    need = [id_column, "frequency", "recency", "T"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DataError(
            f"summary.{missing[0]}: score_spark needs the column(s) {missing} "
            f"(columns present: {', '.join(frame.columns)})."
        )
    fields = [frame.schema[id_column], StructField("p_alive", DoubleType(), False)]
    if horizon is not None:
        fields.append(StructField("predicted_purchases", DoubleType(), False))
    return engine.map_partitions(
        frame.select(*need), _score_batch, StructType(fields), payload=(model, horizon, id_column)
    )


def _score_batch(batch: pd.DataFrame, payload: tuple[Any, float | None, str]) -> pd.DataFrame:
    """Score one partition's batch of summaries (runs on a Spark executor)."""
    model, horizon, id_column = payload
    summary = batch.set_index(id_column)
    out = pd.DataFrame({id_column: batch[id_column].to_numpy()})
    out["p_alive"] = model.p_alive(summary).to_numpy()
    if horizon is not None:
        out["predicted_purchases"] = model.predict_purchases(summary, horizon).to_numpy()
    return out


# --------------------------------------------------------------------------- #
# evaluation
# --------------------------------------------------------------------------- #
@dataclass
class Evaluation:
    """Calibration / holdout comparison of a transaction model (see :func:`evaluate`).

    Attributes
    ----------
    model : estimator
        The model as fitted on the calibration period.
    period : str
        Time unit.
    calibration_end, holdout_end : pandas.Timestamp
        Last days of the two periods.
    horizon : float
        Holdout length in periods.
    per_customer : pandas.DataFrame
        Calibration ``frequency``, ``recency``, ``T`` and holdout
        ``predicted`` and ``actual`` repeat purchases, one row per customer of
        the calibration cohort.
    by_frequency : pandas.DataFrame
        Mean ``predicted`` and ``actual`` holdout purchases and customer count
        ``n`` by calibration frequency ``0, 1, ..., 7+``.
    cumulative : pandas.DataFrame
        Per period since the cohort's first purchase (``t``): ``actual`` and
        ``predicted`` cumulative repeat transactions of the cohort, and
        ``holdout`` (True after ``calibration_end``).
    mae, rmse : float
        Per-customer mean absolute and root mean squared error of holdout purchases.
    aggregate_error : float
        ``(sum predicted - sum actual) / sum actual`` over the holdout.
    """

    model: Any
    period: str
    calibration_end: pd.Timestamp
    holdout_end: pd.Timestamp
    horizon: float
    per_customer: pd.DataFrame
    by_frequency: pd.DataFrame
    cumulative: pd.DataFrame
    mae: float
    rmse: float
    aggregate_error: float
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate(
    model: _TransactionModel,
    orders: Any,
    calibration_end: Any,
    holdout_end: Any,
    period: str = "W",
    refit: bool = True,
) -> Evaluation:
    """Compare a transaction model's holdout predictions with what customers actually did.

    The orders are split at ``calibration_end``: the calibration summary
    (customers whose first purchase is on or before it) is computed with
    :func:`bmkt.rfm.summarize`, the model predicts each customer's repeat
    purchases in ``(calibration_end, holdout_end]``, and those are compared
    with the actual holdout transactions (same day-level transaction rule).
    The cumulative comparison follows Figure 2 of [1]_: the cohort's
    cumulative repeat transactions per period against
    ``sum_i E[X(t - t_i)]`` (``expected_purchases_population``, ``t_i`` the
    customer's first purchase).

    Parameters
    ----------
    model : BetaGeo, ModifiedBetaGeo or ParetoNBD
        With ``refit=True`` (default) a fresh copy is fitted on the
        calibration summary (the model passed in is not changed). With
        ``refit=False`` the model is used as fitted; it must have been fitted on
        calibration data only, or the evaluation is optimistic.
    orders : pandas.DataFrame or ibis.Table
        The ``orders`` table.
    calibration_end, holdout_end : date-like
        Last days of the calibration and holdout periods.
    period : {"D", "W"}
        Time unit.
    refit : bool
        Fit a copy of ``model`` on the calibration period.

    Returns
    -------
    Evaluation

    References
    ----------
    .. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting Your
       Customers the Easy Way: An Alternative to the Pareto/NBD Model",
       Marketing Science, 24 (2), 275-284.
    """
    if not isinstance(model, _TransactionModel):
        raise ConfigError(
            "'model' must be a BetaGeo, ModifiedBetaGeo or ParetoNBD instance, "
            f"got {type(model).__name__}."
        )
    cal = rfm.summarize(orders, as_of=holdout_end, calibration_end=calibration_end, period=period)
    full = rfm.summarize(orders, as_of=holdout_end, period=period)
    cal_day = pd.Timestamp(cal.attrs["calibration_end"])
    hold_day = pd.Timestamp(cal.attrs["as_of"])
    if hold_day <= cal_day:
        raise ConfigError(
            f"holdout_end ({hold_day.date()}) must be after calibration_end ({cal_day.date()})."
        )
    days = rfm.PERIODS[period]
    horizon = (hold_day - cal_day).days / days
    fitted = clone(model).fit(cal) if refit else model
    fitted._check_fitted()

    actual = (full["frequency"].reindex(cal.index) - cal["frequency"]).to_numpy(dtype="float64")
    predicted = fitted.predict_purchases(cal, horizon).to_numpy()
    per_customer = pd.DataFrame(
        {
            "frequency": cal["frequency"],
            "recency": cal["recency"],
            "T": cal["T"],
            "predicted": predicted,
            "actual": actual,
        },
        index=cal.index,
    )
    bucket = np.minimum(cal["frequency"].to_numpy(), 7)
    labels = [str(i) for i in range(7)] + ["7+"]
    by_frequency = (
        per_customer.assign(
            bucket=pd.Categorical.from_codes(bucket.astype(int), categories=labels, ordered=True)
        )
        .groupby("bucket", observed=False)
        .agg(n=("actual", "size"), predicted=("predicted", "mean"), actual=("actual", "mean"))
    )
    by_frequency.index.name = "frequency"

    cumulative = _cumulative(fitted, orders, cal, cal_day, hold_day, days)
    err = predicted - actual
    total_actual = float(actual.sum())
    aggregate = float(err.sum() / total_actual) if total_actual > 0 else float("nan")
    ev = Evaluation(
        model=fitted,
        period=period,
        calibration_end=cal_day,
        holdout_end=hold_day,
        horizon=horizon,
        per_customer=per_customer,
        by_frequency=by_frequency,
        cumulative=cumulative,
        mae=float(np.mean(np.abs(err))),
        rmse=float(np.sqrt(np.mean(err**2))),
        aggregate_error=aggregate,
    )
    ev.metrics = {
        "customers": float(len(cal)),
        "predicted_total": float(predicted.sum()),
        "actual_total": total_actual,
        "mae": ev.mae,
        "rmse": ev.rmse,
        "aggregate_error": aggregate,
    }
    log.info(
        "evaluate: %d customers, holdout %.1f %s, predicted %.0f vs actual %.0f repeat purchases",
        len(cal),
        horizon,
        period,
        predicted.sum(),
        total_actual,
    )
    return ev


def _cumulative(
    model: _TransactionModel,
    orders: Any,
    cal: pd.DataFrame,
    cal_day: pd.Timestamp,
    hold_day: pd.Timestamp,
    days: float,
) -> pd.DataFrame:
    """Cumulative actual vs expected repeat transactions of the calibration cohort."""
    daily = rfm.repeat_transactions_by_day(orders, as_of=hold_day, cohort_end=cal_day)
    start = cal["first_order_at"].min()
    total = (hold_day - start).days / days
    t = np.arange(1, math.floor(total) + 1, dtype="float64")
    if len(t) == 0 or total > t[-1]:
        t = np.append(t, total)
    offsets = (daily.index - start).days.to_numpy() / days
    order = np.argsort(offsets, kind="stable")
    cum_counts = np.concatenate([[0.0], np.cumsum(daily.to_numpy(dtype="float64")[order])])
    # transactions at offset <= t (a purchase exactly at t counts by t)
    actual = cum_counts[np.searchsorted(offsets[order], t + 1e-9, side="right")]

    first = (cal["first_order_at"] - start).dt.days.to_numpy() / days
    t0, n0 = np.unique(first, return_counts=True)
    elapsed = t[:, None] - t0[None, :]
    expected = np.where(
        elapsed > 0, model.expected_purchases_population(np.maximum(elapsed, 0.0)), 0.0
    )
    predicted = expected @ n0
    cal_t = (cal_day - start).days / days
    return pd.DataFrame(
        {"t": t, "actual": actual.astype("float64"), "predicted": predicted, "holdout": t > cal_t}
    )


def check_gamma_gamma_assumption(summary: pd.DataFrame, threshold: float = 0.3) -> float:
    """Correlation of frequency and mean spend among repeat buyers (Gamma-Gamma assumes ~0).

    Parameters
    ----------
    summary : pandas.DataFrame
        ``frequency`` and ``monetary_value`` per customer.
    threshold : float
        Absolute correlation above which a ``UserWarning`` is issued.

    Returns
    -------
    float
        Pearson correlation of ``frequency`` and ``monetary_value`` over
        customers with ``frequency > 0`` and ``monetary_value > 0``.

    Raises
    ------
    DataError
        With fewer than 3 such customers or constant values (correlation undefined).

    References
    ----------
    .. [1] Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma Model of
       Monetary Value", http://brucehardie.com/notes/025/
    """
    x, m = _frequency_spend(summary, "check_gamma_gamma_assumption")
    what = "check_gamma_gamma_assumption"
    use = (x > 0) & (m > 0)
    if use.sum() < 3 or np.ptp(x[use]) == 0 or np.ptp(m[use]) == 0:
        raise DataError(
            f"{what}: the correlation needs at least 3 repeat buyers with varying frequency "
            f"and spend; got {int(use.sum())}."
        )
    corr = float(np.corrcoef(x[use], m[use])[0, 1])
    if abs(corr) > threshold:
        warnings.warn(
            f"Gamma-Gamma assumes spend is independent of purchase frequency, but their "
            f"correlation among {int(use.sum())} repeat buyers is {corr:.2f} "
            f"(|corr| > {threshold}). Expected spend may be biased.",
            UserWarning,
            stacklevel=2,
        )
    return corr


# --------------------------------------------------------------------------- #
# plots (plotly; returned, never shown)
# --------------------------------------------------------------------------- #
def _figure(ax: Any) -> Any:
    import plotly.graph_objects as go

    if ax is None:
        return go.Figure()
    if not isinstance(ax, go.Figure):
        raise ConfigError(
            f"'ax' must be a plotly Figure to draw into (matplotlib is not installed), got {type(ax).__name__}."
        )
    return ax


def _grid(
    model: _TransactionModel, max_frequency: int | None, max_recency: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    model._check_fitted()
    fmax = int(max_frequency if max_frequency is not None else model.frequency_max_)
    tmax = float(max_recency if max_recency is not None else model.T_max_)
    freq = np.arange(fmax + 1, dtype="float64")
    rec = np.linspace(0.0, tmax, min(int(tmax) + 1, 200))
    return freq, rec, tmax


def plot_frequency_recency_matrix(
    model: _TransactionModel,
    horizon: float = 1.0,
    max_frequency: int | None = None,
    max_recency: float | None = None,
    ax: Any = None,
) -> Any:
    """Heatmap of expected purchases in the next ``horizon`` periods by frequency and recency.

    For a customer observed for ``T = max_recency`` periods (the longest
    ``T`` fitted, by default).

    Parameters
    ----------
    model : fitted transaction model
    horizon : float
        Future window, in the model's period.
    max_frequency, max_recency : optional
        Axis limits (default: largest fitted frequency and T).
    ax : plotly.graph_objects.Figure, optional
        Figure to draw into; a new one when ``None``.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    freq, rec, tmax = _grid(model, max_frequency, max_recency)
    x = np.repeat(freq, len(rec))
    tx = np.tile(rec, len(freq))
    tx = np.where(x == 0, 0.0, tx)
    z = model._conditional_expected(float(horizon), x, tx, np.full_like(tx, tmax))
    fig = _figure(ax)
    fig.add_trace(
        go.Heatmap(
            z=z.reshape(len(freq), len(rec)).T,
            x=freq,
            y=rec,
            colorscale="Viridis",
            colorbar={"title": "purchases"},
        )
    )
    fig.update_layout(
        title=f"Expected purchases in the next {horizon:g} period(s), by frequency and recency",
        xaxis_title="frequency (repeat purchases)",
        yaxis_title=f"recency ({model.period_ or 'periods'})",
    )
    return fig


def plot_p_alive_matrix(
    model: _TransactionModel,
    max_frequency: int | None = None,
    max_recency: float | None = None,
    ax: Any = None,
) -> Any:
    """Heatmap of P(alive) by frequency and recency, for ``T = max_recency``.

    Parameters and returns as :func:`plot_frequency_recency_matrix`.
    """
    import plotly.graph_objects as go

    freq, rec, tmax = _grid(model, max_frequency, max_recency)
    x = np.repeat(freq, len(rec))
    tx = np.tile(rec, len(freq))
    tx = np.where(x == 0, 0.0, tx)
    z = model._p_alive(x, tx, np.full_like(tx, tmax))
    fig = _figure(ax)
    fig.add_trace(
        go.Heatmap(
            z=z.reshape(len(freq), len(rec)).T,
            x=freq,
            y=rec,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "P(alive)"},
        )
    )
    fig.update_layout(
        title="Probability customer is alive, by frequency and recency",
        xaxis_title="frequency (repeat purchases)",
        yaxis_title=f"recency ({model.period_ or 'periods'})",
    )
    return fig


def plot_calibration_purchases(evaluation: Evaluation, ax: Any = None) -> Any:
    """Mean holdout purchases, predicted vs actual, by calibration frequency (0..7+).

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`evaluate`.
    ax : plotly.graph_objects.Figure, optional
        Figure to draw into.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    bf = evaluation.by_frequency
    fig = _figure(ax)
    labels = [str(i) for i in bf.index]
    fig.add_trace(go.Scatter(x=labels, y=bf["actual"], mode="lines+markers", name="actual"))
    fig.add_trace(
        go.Scatter(
            x=labels, y=bf["predicted"], mode="lines+markers", name="model", line={"dash": "dash"}
        )
    )
    fig.update_layout(
        title="Holdout purchases by calibration-period frequency",
        xaxis_title="purchases in calibration period (repeat)",
        yaxis_title="mean purchases in holdout",
    )
    return fig


def plot_cumulative_purchases(evaluation: Evaluation, ax: Any = None) -> Any:
    """Cumulative repeat transactions of the cohort, actual vs model ([1]_, Figure 2).

    Parameters and returns as :func:`plot_calibration_purchases`.

    References
    ----------
    .. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting Your
       Customers the Easy Way", Marketing Science, 24 (2), 275-284.
    """
    import plotly.graph_objects as go

    cu = evaluation.cumulative
    fig = _figure(ax)
    fig.add_trace(go.Scatter(x=cu["t"], y=cu["actual"], mode="lines", name="actual"))
    fig.add_trace(
        go.Scatter(x=cu["t"], y=cu["predicted"], mode="lines", name="model", line={"dash": "dash"})
    )
    cal_t = cu.loc[~cu["holdout"], "t"].max()
    if np.isfinite(cal_t):
        fig.add_vline(x=cal_t, line={"dash": "dot", "color": "grey"})
    fig.update_layout(
        title="Cumulative repeat transactions",
        xaxis_title=f"time since first purchase of the cohort ({evaluation.period})",
        yaxis_title="cumulative repeat transactions",
    )
    return fig
