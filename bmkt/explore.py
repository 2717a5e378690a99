"""Figures and tables for exploring scored customers (the analyst's view).

Every function takes the per-customer score table of
:func:`bmkt.scoring.score_customers` (and a segment assignment where it
says so) and returns a plotly figure or a small DataFrame; nothing is shown
from here. Notebooks call these and display the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bmkt.errors import DataError

__all__ = [
    "rfm_grid",
    "plot_rfm_heatmap",
    "segment_summary",
    "plot_segment_summary",
    "plot_distributions",
    "plot_by_segment",
    "plot_engagement_states",
    "plot_category_affinity",
]


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"scores: {what} needs column(s) {missing} "
            f"(present: {', '.join(map(str, table.columns[:12]))}...)"
        )


def rfm_grid(scores: pd.DataFrame) -> pd.DataFrame:
    """Customers and revenue per (R score, F score) cell, buyers only.

    Returns
    -------
    DataFrame
        Columns ``r_score``, ``f_score``, ``customers``, ``revenue``,
        ``revenue_per_customer``.
    """
    _require(scores, ["r_score", "f_score", "total_revenue"], "the RFM grid")
    b = scores.dropna(subset=["r_score", "f_score"])
    grid = (
        b.groupby(["r_score", "f_score"], observed=True)
        .agg(customers=("total_revenue", "size"), revenue=("total_revenue", "sum"))
        .reset_index()
    )
    grid["revenue_per_customer"] = grid["revenue"] / grid["customers"]
    return grid


def plot_rfm_heatmap(scores: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Two heatmaps of R score by F score: coloured by customers and by revenue."""
    grid = rfm_grid(scores)
    fig = fig or make_subplots(rows=1, cols=2, subplot_titles=("Customers", "Revenue"))
    for i, value in enumerate(("customers", "revenue"), start=1):
        pivot = grid.pivot(index="r_score", columns="f_score", values=value).sort_index()
        fig.add_trace(
            go.Heatmap(
                z=pivot.values,
                x=[f"F{int(c)}" for c in pivot.columns],
                y=[f"R{int(r)}" for r in pivot.index],
                colorscale="Blues",
                showscale=False,
                texttemplate="%{z:,.0f}",
                name=value,
            ),
            row=1,
            col=i,
        )
    fig.update_layout(title="RFM grid (buyers): recency score by frequency score", height=420)
    return fig


def segment_summary(assignment: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Size and value of each primary segment.

    Returns
    -------
    DataFrame
        Indexed by segment (rule order): ``customers``, ``share``,
        ``buyers``, ``revenue``, ``mean_clv``, ``total_clv``, ``mean_p_alive``,
        ``mean_churn_risk`` (where scored).
    """
    if "segment" not in assignment.columns:
        raise DataError("assignment: no 'segment' column (use bmkt.segments.RuleSet.assign)")
    t = scores.join(assignment[["segment"]], how="inner", rsuffix="_assigned")
    seg = "segment_assigned" if "segment_assigned" in t.columns else "segment"
    agg: dict[str, tuple[str, str]] = {"customers": (seg, "size")}
    for name, col, how in (
        ("buyers", "is_buyer", "sum"),
        ("revenue", "total_revenue", "sum"),
        ("mean_clv", "clv", "mean"),
        ("total_clv", "clv", "sum"),
        ("mean_p_alive", "p_alive", "mean"),
        ("mean_churn_risk", "churn_risk", "mean"),
    ):
        if col in t.columns:
            agg[name] = (col, how)
    out = t.groupby(seg, observed=True, sort=True).agg(**agg)
    out["share"] = out["customers"] / out["customers"].sum()
    out.index.name = "segment"
    return out[["customers", "share", *[c for c in out.columns if c not in ("customers", "share")]]]


def plot_segment_summary(summary: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Bars of segment sizes next to their total CLV."""
    fig = fig or make_subplots(rows=1, cols=2, subplot_titles=("Customers", "Total CLV"))
    names = [str(s) for s in summary.index]
    fig.add_trace(go.Bar(x=names, y=summary["customers"], name="customers"), row=1, col=1)
    if "total_clv" in summary:
        fig.add_trace(go.Bar(x=names, y=summary["total_clv"], name="total CLV"), row=1, col=2)
    fig.update_layout(title="Segments: size and value", showlegend=False, height=420)
    return fig


def plot_distributions(
    scores: pd.DataFrame, columns: Sequence[str] = ("clv", "p_alive"), fig: go.Figure | None = None
) -> go.Figure:
    """Histograms of score columns (buyers; CLV clipped at its 99th percentile)."""
    _require(scores, list(columns), "the distributions")
    fig = fig or make_subplots(rows=1, cols=len(columns), subplot_titles=list(columns))
    for i, col in enumerate(columns, start=1):
        values = scores[col].dropna()
        if "is_buyer" in scores:
            values = scores.loc[scores["is_buyer"], col].dropna()
        if col == "clv" and len(values):
            values = values.clip(upper=float(np.nanpercentile(values, 99)))
        fig.add_trace(go.Histogram(x=values, nbinsx=40, name=col), row=1, col=i)
    fig.update_layout(title="Score distributions (buyers)", showlegend=False, height=380)
    return fig


def plot_by_segment(
    assignment: pd.DataFrame,
    scores: pd.DataFrame,
    column: str = "churn_risk",
    fig: go.Figure | None = None,
) -> go.Figure:
    """Box plot of one score per primary segment (e.g. churn risk by segment)."""
    _require(scores, [column], f"{column} by segment")
    t = scores[[column]].join(assignment[["segment"]], how="inner")
    fig = fig or go.Figure()
    for seg, part in t.groupby("segment", observed=True, sort=True):
        fig.add_trace(go.Box(y=part[column], name=str(seg), boxpoints=False))
    fig.update_layout(title=f"{column} by segment", showlegend=False, height=420)
    return fig


def plot_engagement_states(
    scores: pd.DataFrame, by: str | None = "is_proxy_user", fig: go.Figure | None = None
) -> go.Figure:
    """Customers per email engagement state, split by ``by`` (privacy-proxy users)."""
    _require(scores, ["engagement_state"], "engagement states")
    order = ["active", "lapsing", "dormant", "never_engaged"]
    fig = fig or go.Figure()
    groups = scores.groupby(by) if by and by in scores else [("all", scores)]
    for key, part in groups:
        counts = part["engagement_state"].value_counts().reindex(order).fillna(0)
        fig.add_trace(go.Bar(x=order, y=counts.values, name=f"{by}={key}" if by else "all"))
    fig.update_layout(
        title="Email engagement states (human opens and clicks only)", barmode="stack", height=380
    )
    return fig


def plot_category_affinity(scores: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Customers by their top category (from views and orders)."""
    _require(scores, ["top_category"], "category affinity")
    counts = scores["top_category"].fillna("(none)").value_counts()
    fig = fig or go.Figure()
    fig.add_trace(go.Bar(x=counts.index.astype(str), y=counts.values))
    fig.update_layout(title="Top category per customer", height=380)
    return fig
