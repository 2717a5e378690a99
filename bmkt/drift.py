"""Drift of score distributions between two runs (model health over time).

The population stability index (PSI) compares the distribution of a score
in a *reference* run with a *current* run over the reference's decile bins:

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

with ``r_i`` and ``c_i`` the shares of customers in bin ``i`` (a small floor
keeps empty bins finite). A common reading: below 0.1 stable, 0.1-0.25
moderate shift, above 0.25 a major shift that calls for a look at the model
or the data. Categorical scores (segments, states) use their categories as
bins. The two-sample Kolmogorov-Smirnov statistic is reported beside PSI for
numeric scores.

References
----------
Yurdakul, B. (2018), "Statistical Properties of Population Stability Index",
Western Michigan University dissertation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy import stats

from bmkt.errors import ConfigError, DataError

__all__ = ["psi", "score_drift", "plot_drift", "MODERATE", "MAJOR"]

MODERATE = 0.10
MAJOR = 0.25
_FLOOR = 1e-4


def _shares(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    counts = np.histogram(values, bins=edges)[0].astype(float)
    return np.maximum(counts / max(counts.sum(), 1.0), _FLOOR)


def psi(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Numeric series are binned at the reference's quantiles (``bins`` bins);
    other series by category. Missing values form their own bin.
    """
    if bins < 2:
        raise ConfigError(f"'bins' must be at least 2. Got {bins!r}.")
    ref, cur = pd.Series(reference), pd.Series(current)
    if ref.dropna().empty or cur.dropna().empty:
        raise DataError("psi: a score has no values in one of the runs")
    if (
        pd.api.types.is_numeric_dtype(ref)
        and pd.api.types.is_numeric_dtype(cur)
        and not (pd.api.types.is_bool_dtype(ref))
    ):
        r, c = ref.dropna().astype(float), cur.dropna().astype(float)
        edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([r.min() - 0.5, r.min() + 0.5])
        edges[0], edges[-1] = -np.inf, np.inf
        rs, cs = _shares(r, edges), _shares(c, edges)
        rn, cn = ref.isna().mean(), cur.isna().mean()
        rs, cs = (
            np.append(rs * (1 - rn), max(rn, _FLOOR)),
            np.append(cs * (1 - cn), max(cn, _FLOOR)),
        )
    else:
        cats = sorted(set(ref.astype(str)) | set(cur.astype(str)))
        rs = np.maximum(
            ref.astype(str).value_counts(normalize=True).reindex(cats).fillna(0).values, _FLOOR
        )
        cs = np.maximum(
            cur.astype(str).value_counts(normalize=True).reindex(cats).fillna(0).values, _FLOOR
        )
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def score_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    bins: int = 10,
) -> pd.DataFrame:
    """PSI (and KS for numeric scores) of every shared score column between two runs.

    Parameters
    ----------
    reference, current : DataFrame
        Per-customer score tables of two runs.
    columns : sequence of str, optional
        Scores to compare; default the shared numeric scores and segments.

    Returns
    -------
    DataFrame
        Indexed by column: ``psi``, ``ks``, ``mean_reference``,
        ``mean_current``, ``n_reference``, ``n_current`` and ``status``
        (``stable``, ``moderate`` or ``major``; ``not scored`` with NaN PSI
        when a score has no values in one of the runs).
    """
    default = [
        "clv",
        "p_alive",
        "churn_risk",
        "purchase_propensity",
        "engagement_score",
        "expected_purchases_90d",
        "rfm_segment",
        "engagement_state",
        "segment",
    ]
    cols = (
        list(columns)
        if columns is not None
        else [c for c in default if c in reference.columns and c in current.columns]
    )
    missing = [c for c in cols if c not in reference.columns or c not in current.columns]
    if missing:
        raise DataError(f"score_drift: column(s) {missing} are not in both runs")
    rows = []
    for col in cols:
        r, c = reference[col], current[col]
        if r.notna().sum() == 0 or c.notna().sum() == 0:  # not scored in one of the runs
            rows.append(
                {
                    "column": col,
                    "psi": np.nan,
                    "ks": np.nan,
                    "mean_reference": np.nan,
                    "mean_current": np.nan,
                    "n_reference": int(r.notna().sum()),
                    "n_current": int(c.notna().sum()),
                    "status": "not scored",
                }
            )
            continue
        numeric = pd.api.types.is_numeric_dtype(r) and not pd.api.types.is_bool_dtype(r)
        value = psi(r, c, bins)
        ks = float(stats.ks_2samp(r.dropna(), c.dropna()).statistic) if numeric else np.nan
        rows.append(
            {
                "column": col,
                "psi": value,
                "ks": ks,
                "mean_reference": float(r.mean()) if numeric else np.nan,
                "mean_current": float(c.mean()) if numeric else np.nan,
                "n_reference": int(r.notna().sum()),
                "n_current": int(c.notna().sum()),
                "status": "major"
                if value > MAJOR
                else "moderate"
                if value > MODERATE
                else "stable",
            }
        )
    return pd.DataFrame(rows).set_index("column")


def plot_drift(drift: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Bar chart of PSI per score with the 0.1 and 0.25 reading lines."""
    fig = fig or go.Figure()
    colours = drift["status"].map({"stable": "#2ca02c", "moderate": "#ff7f0e", "major": "#d62728"})
    fig.add_trace(go.Bar(x=drift.index.astype(str), y=drift["psi"], marker_color=list(colours)))
    for y in (MODERATE, MAJOR):
        fig.add_hline(y=y, line_dash="dot")
    fig.update_layout(title="Score drift between runs (PSI)", yaxis_title="PSI", height=380)
    return fig
