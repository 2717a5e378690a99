"""Comparing arms of an experiment: effects, intervals, tests and power.

One concept: an A/B(/n) test or a holdout test compares each treatment arm
with a control arm. :func:`compare_arms` does this for a per-customer frame;
the vectorised building blocks it uses (:func:`proportion_test`,
:func:`welch_test`, :func:`holm`) also work on summary statistics computed in
the engine (see :func:`bmkt.report.incrementality`). :func:`sample_size` and
:func:`minimum_detectable_effect` plan a test before it runs; they are exact
inverses of each other.

Statistical choices
-------------------
Binary outcomes (converted yes/no)
    Two-proportion z-test. The *test* uses the pooled standard error
    ``sqrt(p(1-p)(1/n1 + 1/n0))`` with ``p`` the pooled proportion (the
    standard error under the null hypothesis of equal proportions, so that
    ``z**2`` equals Pearson's chi-square statistic of the 2x2 table without
    continuity correction). The *confidence interval* of the difference uses
    the unpooled (Wald) standard error ``sqrt(p1(1-p1)/n1 + p0(1-p0)/n0)``,
    because under the alternative the proportions differ [1]_. With
    ``ci='agresti-caffo'`` the same formula is applied after adding one
    success and one failure to each arm [7]_, which keeps the coverage when
    an arm has few or no successes (small holdouts, rare conversions).
Continuous outcomes (spend, revenue per recipient)
    Welch's unequal-variance t-test with Welch-Satterthwaite degrees of
    freedom [2]_ [3]_; the confidence interval of the difference uses the same
    standard error and the t quantile at those degrees of freedom.
Relative difference (lift = treatment mean / control mean - 1)
    Fieller's interval for a ratio of two independent means [4]_: the set of
    ratios ``r`` for which ``(m1 - r m0)**2 <= c**2 (v1 + r**2 v0)``, with
    ``c`` the critical value of the absolute difference (z for proportions,
    Welch's t otherwise). Unlike the delta method it is not forced to be
    symmetric and stays valid for skewed ratios. When the control mean is
    not significantly different from zero (``m0**2 <= c**2 v0``) the set is
    unbounded and both bounds are NaN.
Multiple comparisons
    Holm-Bonferroni step-down adjustment [5]_ over *all* arms x metrics of a
    call; ``significant`` means ``p_adjusted < alpha``. The confidence
    intervals are per comparison (level ``1 - alpha``), not adjusted.
Degenerate samples
    When both arms have zero variance and the same mean (e.g. nobody
    converted anywhere) the statistic is 0 and the p-value 1; with zero
    variance and different means the statistic is infinite and the p-value 0.

References
----------
.. [1] Agresti, A. (2013). *Categorical Data Analysis*, 3rd ed., Wiley,
   chapter 3 (Wald interval and pooled test for two proportions).
.. [2] Welch, B. L. (1947). The generalization of "Student's" problem when
   several different population variances are involved. *Biometrika*, 34,
   28-35.
.. [3] Satterthwaite, F. E. (1946). An approximate distribution of estimates
   of variance components. *Biometrics Bulletin*, 2(6), 110-114.
.. [4] Fieller, E. C. (1954). Some problems in interval estimation.
   *Journal of the Royal Statistical Society B*, 16(2), 175-185.
.. [5] Holm, S. (1979). A simple sequentially rejective multiple test
   procedure. *Scandinavian Journal of Statistics*, 6(2), 65-70.
.. [6] Fleiss, J. L., Levin, B. & Paik, M. C. (2003). *Statistical Methods
   for Rates and Proportions*, 3rd ed., Wiley, chapter 4 (sample size for
   comparing two proportions, without continuity correction).
.. [7] Agresti, A. & Caffo, B. (2000). Simple and effective confidence
   intervals for proportions and differences of proportions result from
   adding two successes and two failures. *The American Statistician*,
   54(4), 280-288.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bmkt.errors import ConfigError, DataError, format_examples

log = logging.getLogger(__name__)

__all__ = [
    "compare_arms",
    "proportion_test",
    "welch_test",
    "fieller_ratio_ci",
    "holm",
    "sample_size",
    "minimum_detectable_effect",
    "RESULT_COLUMNS",
]

#: Columns of :func:`compare_arms`, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "metric",
    "arm",
    "control",
    "kind",
    "test",
    "n",
    "n_control",
    "mean",
    "mean_control",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "statistic",
    "df",
    "p_value",
    "p_adjusted",
    "significant",
)

_KINDS = ("proportion", "mean")
_CI_METHODS = ("wald", "agresti-caffo")


# --------------------------------------------------------------------------- building blocks


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    if not isinstance(alpha, int | float) or not 0 < float(alpha) < 1:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1. Got {alpha!r}.")
    return float(alpha)


def fieller_ratio_ci(
    m1: Any, v1: Any, m0: Any, v0: Any, crit: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Fieller's confidence interval for the ratio ``m1 / m0`` of independent means.

    Parameters
    ----------
    m1, m0 : array-like
        Estimated means (numerator, denominator).
    v1, v0 : array-like
        Their sampling variances (squared standard errors).
    crit : array-like
        Critical value (e.g. ``1.96`` for a 95 % interval).

    Returns
    -------
    low, high : numpy.ndarray
        Bounds of the ratio; NaN where the interval is unbounded (the
        denominator is not significantly different from zero).

    References
    ----------
    .. [1] Fieller, E. C. (1954). Some problems in interval estimation.
       *JRSS B*, 16(2), 175-185.
    """
    m1, v1, m0, v0, c = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (m1, v1, m0, v0, crit))
    )
    a = m0**2 - c**2 * v0
    disc = v1 * m0**2 + v0 * m1**2 - c**2 * v0 * v1
    with np.errstate(invalid="ignore", divide="ignore"):
        root = c * np.sqrt(np.where(disc > 0, disc, 0.0))
        low = (m1 * m0 - root) / a
        high = (m1 * m0 + root) / a
    bounded = a > 0
    return np.where(bounded, low, np.nan), np.where(bounded, high, np.nan)


def _lift(mean1: np.ndarray, mean0: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean0 != 0, mean1 / np.where(mean0 != 0, mean0, 1.0) - 1.0, np.nan)


def _p_from_stat(diff: np.ndarray, se: np.ndarray, sf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Statistic and two-sided p-value, with the documented degenerate cases."""
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.nan)
        zero = ~(se > 0) & np.isfinite(diff)
        stat = np.where(zero & (diff == 0), 0.0, stat)
        stat = np.where(zero & (diff != 0), np.sign(diff) * np.inf, stat)
        p = np.where(np.isnan(stat), np.nan, np.clip(2.0 * sf(np.abs(stat)), 0.0, 1.0))
    return stat, p


def proportion_test(
    x1: Any, n1: Any, x0: Any, n0: Any, alpha: float = 0.05, ci: str = "wald"
) -> dict[str, np.ndarray]:
    """Two-proportion z-test of arm 1 against arm 0 (vectorised).

    Parameters
    ----------
    x1, n1 : array-like
        Successes and size of the treatment arm.
    x0, n0 : array-like
        Successes and size of the control arm.
    alpha : float, default 0.05
        The intervals have level ``1 - alpha``.
    ci : {'wald', 'agresti-caffo'}, default 'wald'
        Interval of the difference: the unpooled Wald interval, or the
        Agresti-Caffo interval [7]_ (the same unpooled formula after adding
        one success and one failure to each arm), which keeps its coverage
        when an arm has few or no successes (e.g. a small holdout). The
        point estimate ``diff`` is the plain difference either way.

    Returns
    -------
    dict of numpy.ndarray
        ``mean``, ``mean_control`` (the proportions), ``diff`` (``p1 - p0``)
        with ``diff_ci_low``/``diff_ci_high`` (unpooled interval, ``ci``),
        ``lift`` (``p1 / p0 - 1``) with Fieller bounds ``lift_ci_low``/
        ``lift_ci_high``, ``statistic`` (z with the pooled standard error),
        ``df`` (NaN: normal reference) and the two-sided ``p_value``. Arms
        with ``n < 1`` give NaN.

    Examples
    --------
    >>> r = proportion_test(150, 1000, 120, 1000)
    >>> round(float(r["statistic"]), 4), round(float(r["p_value"]), 4)
    (1.963, 0.0496)
    """
    alpha = _check_alpha(alpha)
    if ci not in _CI_METHODS:
        raise ConfigError(f"Valid options for 'ci' are {_CI_METHODS}. Got {ci!r}.")
    x1, n1, x0, n0 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x1, n1, x0, n0)))
    ok = (n1 >= 1) & (n0 >= 1)
    n1s, n0s = np.where(ok, n1, 1.0), np.where(ok, n0, 1.0)
    p1, p0 = x1 / n1s, x0 / n0s
    pooled = (x1 + x0) / (n1s + n0s)
    se_pooled = np.sqrt(np.maximum(pooled * (1 - pooled), 0.0) * (1 / n1s + 1 / n0s))
    v1 = np.maximum(p1 * (1 - p1), 0.0) / n1s
    v0 = np.maximum(p0 * (1 - p0), 0.0) / n0s
    diff = p1 - p0
    if ci == "wald":
        center, se = diff, np.sqrt(v1 + v0)
    else:
        a1, a0 = (x1 + 1) / (n1s + 2), (x0 + 1) / (n0s + 2)
        center = a1 - a0
        # rows without a valid arm (masked below) must not warn
        se = np.sqrt(
            np.maximum(a1 * (1 - a1), 0.0) / (n1s + 2) + np.maximum(a0 * (1 - a0), 0.0) / (n0s + 2)
        )
    z = stats.norm.ppf(1 - alpha / 2)
    stat, p = _p_from_stat(diff, se_pooled, stats.norm.sf)
    lo, hi = fieller_ratio_ci(p1, v1, p0, v0, z)
    out = {
        "mean": p1,
        "mean_control": p0,
        "diff": diff,
        "diff_ci_low": center - z * se,
        "diff_ci_high": center + z * se,
        "lift": _lift(p1, p0),
        "lift_ci_low": lo - 1.0,
        "lift_ci_high": hi - 1.0,
        "statistic": stat,
        "df": np.full_like(diff, np.nan),
        "p_value": p,
    }
    return {k: np.where(ok, v, np.nan) for k, v in out.items()}


def welch_test(
    mean1: Any,
    var1: Any,
    n1: Any,
    mean0: Any,
    var0: Any,
    n0: Any,
    alpha: float = 0.05,
) -> dict[str, np.ndarray]:
    """Welch's unequal-variance t-test of arm 1 against arm 0 (vectorised).

    Parameters
    ----------
    mean1, var1, n1 : array-like
        Mean, sample variance (``ddof=1``) and size of the treatment arm.
    mean0, var0, n0 : array-like
        The same for the control arm.
    alpha : float, default 0.05
        The intervals have level ``1 - alpha``.

    Returns
    -------
    dict of numpy.ndarray
        Same keys as :func:`proportion_test`; ``statistic`` is Welch's t,
        ``df`` the Welch-Satterthwaite degrees of freedom
        ``(v1 + v0)**2 / (v1**2/(n1-1) + v0**2/(n0-1))`` with
        ``v = var / n``, and the intervals use the t quantile at ``df``.
        Arms with ``n < 2`` give NaN.

    Examples
    --------
    >>> r = welch_test(10.0, 4.0, 20, 8.0, 9.0, 30)
    >>> round(float(r["statistic"]), 3), round(float(r["df"]), 1)
    (2.828, 48.0)
    """
    alpha = _check_alpha(alpha)
    m1, s1, n1, m0, s0, n0 = np.broadcast_arrays(
        *(np.asarray(v, dtype=float) for v in (mean1, var1, n1, mean0, var0, n0))
    )
    ok = (n1 >= 2) & (n0 >= 2)
    n1s, n0s = np.where(ok, n1, 2.0), np.where(ok, n0, 2.0)
    v1, v0 = s1 / n1s, s0 / n0s
    se = np.sqrt(v1 + v0)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (v1 + v0) ** 2 / (v1**2 / (n1s - 1) + v0**2 / (n0s - 1))
    # zero variance everywhere: df is undefined; use the smallest of n - 1
    df = np.where(np.isfinite(df), df, np.minimum(n1s, n0s) - 1)
    diff = m1 - m0
    stat, p = _p_from_stat(diff, se, lambda x: stats.t.sf(x, df))
    crit = stats.t.ppf(1 - alpha / 2, df)
    lo, hi = fieller_ratio_ci(m1, v1, m0, v0, crit)
    out = {
        "mean": m1,
        "mean_control": m0,
        "diff": diff,
        "diff_ci_low": diff - crit * se,
        "diff_ci_high": diff + crit * se,
        "lift": _lift(m1, m0),
        "lift_ci_low": lo - 1.0,
        "lift_ci_high": hi - 1.0,
        "statistic": stat,
        "df": df,
        "p_value": p,
    }
    return {k: np.where(ok, v, np.nan) for k, v in out.items()}


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    With the ``m`` p-values sorted ascending, ``p_(i)`` is adjusted to
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN p-values are left NaN and
    do not count towards ``m``.

    Parameters
    ----------
    pvalues : array-like
        Unadjusted p-values, in any order.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values in the input order.

    References
    ----------
    .. [1] Holm, S. (1979). A simple sequentially rejective multiple test
       procedure. *Scandinavian Journal of Statistics*, 6(2), 65-70.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# --------------------------------------------------------------------------- compare_arms


def _is_binary(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return True
    return bool(values.isin((0, 1)).all())


def compare_arms(
    frame: pd.DataFrame,
    arm: str,
    control: Any,
    metrics: str | Sequence[str],
    alpha: float = 0.05,
    binary: Sequence[str] | None = None,
    ci: str = "wald",
) -> pd.DataFrame:
    """Compare every non-control arm with the control arm on each metric.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per customer (the experimental unit): the arm column and one
        column per outcome. Not modified.
    arm : str
        Column holding the arm of each customer.
    control : scalar
        The control arm's value in ``arm``.
    metrics : str or sequence of str
        Outcome columns. Binary outcomes (bool, or numbers that are all 0/1)
        get a two-proportion z-test, others Welch's t-test.
    alpha : float, default 0.05
        Significance level after the Holm adjustment; the confidence
        intervals have level ``1 - alpha`` (95 % by default).
    binary : sequence of str, optional
        The metrics to treat as binary; when given it replaces the automatic
        detection (metrics not listed get Welch's t-test; listed metrics must
        hold only 0/1 or booleans).
    ci : {'wald', 'agresti-caffo'}, default 'wald'
        Interval of a difference of proportions (see :func:`proportion_test`).

    Returns
    -------
    pandas.DataFrame
        One row per metric x non-control arm with the columns of
        :data:`RESULT_COLUMNS`: ``metric``, ``arm``, ``control``, ``kind``
        ('proportion' or 'mean'), ``test`` ('two-proportion z' or
        'Welch t'), ``n``/``n_control``, ``mean``/``mean_control``,
        ``diff`` (arm minus control) with ``diff_ci_low``/``diff_ci_high``,
        ``lift`` (relative difference) with Fieller ``lift_ci_low``/
        ``lift_ci_high``, ``statistic`` (z or t), ``df`` (Welch only),
        ``p_value``, ``p_adjusted`` (Holm over all rows) and ``significant``
        (``p_adjusted < alpha``). See the module docstring for the formulas.

    Raises
    ------
    ConfigError
        Unknown control arm, no metrics, a bad ``alpha`` or ``binary``.
    DataError
        Missing columns, null arms or outcomes, non-numeric outcomes, a
        non-binary column listed in ``binary``, or an arm with fewer than 2
        customers.

    Examples
    --------
    >>> df = pd.DataFrame({"arm": ["A"] * 4 + ["B"] * 4,
    ...                    "buy": [0, 1, 0, 0, 1, 1, 0, 1]})
    >>> r = compare_arms(df, "arm", "A", "buy")
    >>> r[["arm", "mean_control", "mean", "diff"]].to_dict("records")
    [{'arm': 'B', 'mean_control': 0.25, 'mean': 0.75, 'diff': 0.5}]
    """
    alpha = _check_alpha(alpha)
    if ci not in _CI_METHODS:
        raise ConfigError(f"Valid options for 'ci' are {_CI_METHODS}. Got {ci!r}.")
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"frame must be a pandas DataFrame. Got {type(frame).__name__}.")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ConfigError("metrics: give at least one outcome column to compare.")
    missing = [c for c in [arm, *metrics] if c not in frame.columns]
    if missing:
        raise DataError(
            f"frame: missing column(s) {', '.join(map(repr, missing))} "
            f"(columns present: {', '.join(map(str, frame.columns))})"
        )
    if binary is not None:
        binary = [binary] if isinstance(binary, str) else list(binary)
        unknown = [b for b in binary if b not in metrics]
        if unknown:
            raise ConfigError(
                f"Valid options for 'binary' are the metrics {metrics}. Got {unknown}."
            )
    arms = frame[arm]
    if arms.isna().any():
        rows = int(arms.isna().sum())
        raise DataError(
            f"frame.{arm}: {rows} row{'s' if rows != 1 else ''} without an arm; "
            "drop them or assign an arm."
        )
    levels = list(pd.unique(arms))
    try:
        levels = sorted(levels)
    except TypeError:
        pass
    if control not in levels:
        raise ConfigError(f"Valid options for 'control' are {levels}. Got {control!r}.")
    sizes = arms.value_counts()
    small = [a for a in levels if sizes[a] < 2]
    if small:
        raise DataError(
            f"frame.{arm}: arm(s) {format_examples(small)} have fewer than 2 customers "
            f"({', '.join(f'{a!r}: {int(sizes[a])}' for a in small)}); no variance can be "
            "estimated."
        )
    treatments = [a for a in levels if a != control]
    if not treatments:
        raise DataError(f"frame.{arm}: only the control arm {control!r} is present.")

    rows: list[dict[str, Any]] = []
    for metric in metrics:
        values = frame[metric]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
            raise DataError(
                f"frame.{metric}: outcome is not numeric (dtype {values.dtype}); "
                f"{len(bad)} rows are not numbers, e.g. {format_examples(bad.unique())}"
            )
        if values.isna().any():
            n_null = int(values.isna().sum())
            raise DataError(
                f"frame.{metric}: {n_null} row{'s' if n_null != 1 else ''} with a null outcome; "
                "fill them (e.g. 0 for no purchase) or drop them before comparing."
            )
        values = values.astype(float)
        is_bin = _is_binary(frame[metric]) if binary is None else metric in binary
        if binary is not None and is_bin and not _is_binary(frame[metric]):
            bad = frame[metric][~frame[metric].isin((0, 1))]
            raise DataError(
                f"frame.{metric}: listed in 'binary' but {len(bad)} rows are not 0/1, "
                f"e.g. {format_examples(bad.unique())}"
            )
        grouped = values.groupby(arms, sort=False).agg(["count", "sum", "mean", "var"])
        c = grouped.loc[control]
        t = grouped.loc[treatments]
        if is_bin:
            res = proportion_test(t["sum"], t["count"], c["sum"], c["count"], alpha, ci=ci)
            kind, test = "proportion", "two-proportion z"
        else:
            res = welch_test(
                t["mean"], t["var"], t["count"], c["mean"], c["var"], c["count"], alpha
            )
            kind, test = "mean", "Welch t"
        for i, a in enumerate(treatments):
            row = {
                "metric": metric,
                "arm": a,
                "control": control,
                "kind": kind,
                "test": test,
                "n": int(t["count"].iloc[i]),
                "n_control": int(c["count"]),
            }
            row.update({k: float(v[i]) for k, v in res.items()})
            rows.append(row)
    out = pd.DataFrame(rows)
    out["p_adjusted"] = holm(out["p_value"].to_numpy())
    out["significant"] = out["p_adjusted"] < alpha
    return out[list(RESULT_COLUMNS)]


# --------------------------------------------------------------------------- planning


def _z(alpha: float, power: float, two_sided: bool) -> tuple[float, float]:
    alpha = _check_alpha(alpha)
    power = _check_alpha(power, "power")
    z_a = stats.norm.ppf(1 - alpha / 2) if two_sided else stats.norm.ppf(1 - alpha)
    return float(z_a), float(stats.norm.ppf(power))


def _check_plan(baseline: float, kind: str, sd: float | None, ratio: float) -> None:
    if kind not in _KINDS:
        raise ConfigError(f"Valid options for 'kind' are {_KINDS}. Got {kind!r}.")
    if not (isinstance(ratio, int | float) and ratio > 0 and math.isfinite(ratio)):
        raise ConfigError(f"ratio must be a positive number (treated / control). Got {ratio!r}.")
    if kind == "proportion":
        if not (isinstance(baseline, int | float) and 0 < baseline < 1):
            raise ConfigError(
                f"baseline must be a proportion strictly between 0 and 1. Got {baseline!r}."
            )
    else:
        if sd is None or not (isinstance(sd, int | float) and sd > 0 and math.isfinite(sd)):
            raise ConfigError(f"sd: kind='mean' needs a positive standard deviation. Got {sd!r}.")
        if not (isinstance(baseline, int | float) and math.isfinite(baseline)):
            raise ConfigError(f"baseline must be a finite number. Got {baseline!r}.")


def _n_exact(
    p0: float, delta: float, z_a: float, z_b: float, ratio: float, kind: str, sd: float | None
) -> float:
    """Control-arm size (not rounded) to detect ``delta`` (absolute)."""
    if kind == "mean":
        return ((z_a + z_b) * sd) ** 2 * (1 + 1 / ratio) / delta**2
    p1 = p0 + delta
    pbar = (p0 + ratio * p1) / (1 + ratio)
    null_sd = math.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio))
    alt_sd = math.sqrt(p0 * (1 - p0) + p1 * (1 - p1) / ratio)
    return (z_a * null_sd + z_b * alt_sd) ** 2 / delta**2


def sample_size(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    kind: str = "proportion",
    sd: float | None = None,
    relative: bool = False,
    two_sided: bool = True,
) -> int:
    """Customers needed in the control arm to detect an effect of size ``mde``.

    Parameters
    ----------
    baseline : float
        Control conversion rate (``kind='proportion'``) or control mean
        (``kind='mean'``; only used when ``relative``).
    mde : float
        Minimum detectable effect: absolute difference (``0.02`` = 2
        percentage points), or relative to ``baseline`` when ``relative``
        (``0.1`` = +10 %). Negative effects are allowed for proportions.
    alpha : float, default 0.05
        Significance level.
    power : float, default 0.8
        Probability of detecting the effect.
    ratio : float, default 1.0
        Treatment arm size / control arm size. The treatment arm needs
        ``ceil(ratio * n)`` customers.
    kind : {'proportion', 'mean'}
        Outcome type.
    sd : float, optional
        Standard deviation of the outcome (required for ``kind='mean'``;
        assumed equal in both arms).
    relative : bool, default False
        Whether ``mde`` is relative to ``baseline``.
    two_sided : bool, default True
        Two-sided test (``z_{1-alpha/2}``) or one-sided (``z_{1-alpha}``).

    Returns
    -------
    int
        Control-arm size (per arm when ``ratio == 1``), rounded up.

    Notes
    -----
    Normal approximation. For proportions, Fleiss et al. [6]_ without
    continuity correction, the formula the pooled z-test of
    :func:`proportion_test` implies::

        n = (z_a sqrt(pbar qbar (1 + 1/k)) + z_b sqrt(p0 q0 + p1 q1 / k))**2 / delta**2

    with ``pbar = (p0 + k p1) / (1 + k)`` (the pooled rate under the null).
    For means ``n = ((z_a + z_b) sd)**2 (1 + 1/k) / delta**2``.

    Examples
    --------
    >>> sample_size(0.10, 0.02)
    3841
    """
    _check_plan(baseline, kind, sd, ratio)
    z_a, z_b = _z(alpha, power, two_sided)
    delta = mde * baseline if relative else mde
    if not (isinstance(delta, int | float) and math.isfinite(delta) and delta != 0):
        raise ConfigError(f"mde must be a non-zero finite number. Got {mde!r}.")
    if kind == "proportion" and not 0 < baseline + delta < 1:
        raise ConfigError(
            f"mde: baseline + effect must stay strictly between 0 and 1. "
            f"Got baseline={baseline!r}, effect={delta!r}."
        )
    n = _n_exact(baseline, delta, z_a, z_b, ratio, kind, sd)
    # relative tolerance (float error grows with n) so that
    # sample_size(minimum_detectable_effect(n)) == n exactly
    return int(math.ceil(n - max(1e-6, 1e-9 * n)))


def minimum_detectable_effect(
    n_per_arm: float,
    baseline: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    kind: str = "proportion",
    sd: float | None = None,
    relative: bool = False,
    two_sided: bool = True,
) -> float:
    """Smallest effect a test with ``n_per_arm`` control customers detects.

    The inverse of :func:`sample_size` (same parameters and formulas): for
    proportions the upward effect ``delta > 0`` solving the Fleiss formula
    (found numerically), for means the closed form
    ``(z_a + z_b) sd sqrt((1 + 1/k) / n)``.

    Parameters
    ----------
    n_per_arm : float
        Control-arm size (the treatment arm has ``ratio * n_per_arm``).
    baseline, alpha, power, ratio, kind, sd, relative, two_sided
        As in :func:`sample_size`.

    Returns
    -------
    float
        The effect: absolute, or relative to ``baseline`` when ``relative``.

    Raises
    ------
    ConfigError
        Bad parameters, or ``n_per_arm`` too small to detect any upward
        effect on a proportion.

    Examples
    --------
    >>> round(minimum_detectable_effect(3841, 0.10), 4)
    0.02
    """
    _check_plan(baseline, kind, sd, ratio)
    z_a, z_b = _z(alpha, power, two_sided)
    if not (isinstance(n_per_arm, int | float) and n_per_arm > 0 and math.isfinite(n_per_arm)):
        raise ConfigError(f"n_per_arm must be a positive number. Got {n_per_arm!r}.")
    if kind == "mean":
        delta = (z_a + z_b) * sd * math.sqrt((1 + 1 / ratio) / n_per_arm)
    else:
        hi = (1 - baseline) * (1 - 1e-12)
        if _n_exact(baseline, hi, z_a, z_b, ratio, kind, sd) > n_per_arm:
            raise ConfigError(
                f"n_per_arm={n_per_arm!r} is too small: even a rise from {baseline!r} to "
                "nearly 1 would not be detected with the requested power."
            )
        delta = optimize.brentq(
            lambda d: _n_exact(baseline, d, z_a, z_b, ratio, kind, sd) - n_per_arm,
            1e-12,
            hi,
            xtol=1e-14,
            rtol=1e-12,
        )
    if relative:
        if baseline == 0:
            raise ConfigError("relative=True needs a non-zero baseline.")
        return float(delta / baseline)
    return float(delta)
