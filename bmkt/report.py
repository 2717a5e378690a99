"""Campaign performance, measured lift, trends, and the standalone HTML report.

Everything here reads a :class:`~bmkt.io.Store`, aggregates in the engine
(Ibis) and brings only the small result into pandas.

:func:`campaign_metrics`
    What happened to the emails: sends, deliveries, human and machine opens,
    clicks, unsubscribes, complaints and the orders *attributed* to the
    campaign (last touch).
:func:`incrementality`
    What the campaign *caused*: treated (sent) against the randomised holdout,
    with confidence intervals, next to the attributed numbers so that nobody
    mistakes attribution for lift.
:func:`engagement_over_time`, :func:`cohort_retention`
    Trends, with the ``plot_*`` helpers returning plotly figures.
:func:`render_html_report`
    One self-contained HTML file (plotly.js inlined once, no CDN, autoescaped
    Jinja2 template ``bmkt/resources/report.html.j2``).

Definitions
-----------
Recipient
    A customer with a ``sent`` event for the campaign. Events of customers
    without one are ignored. The recipient's variant is the variant on their
    ``sent`` event (opens and clicks often carry none).
Delivered
    A ``delivered`` event. For a campaign without a single ``delivered``
    event (an ESP that does not report deliveries), every recipient without a
    ``bounce`` counts as delivered and ``delivered_inferred`` is True.
Machine open
    An ``open`` made by a privacy proxy (e.g. Apple Mail Privacy Protection),
    not by a person. Which opens are machine opens is decided, in this order:

    * ``machine_opens`` given as a table with ``customer_id``, ``campaign_id``
      and ``occurred_at``: the ``open`` events matching one of its rows
      exactly;
    * ``machine_opens`` given as a per-customer proxy flag (a boolean
      :class:`pandas.Series` indexed by ``customer_id``, or a table with
      ``customer_id`` and a boolean ``machine_open``): every open of a flagged
      customer;
    * ``machine_opens=None``: the contract's ``email_events.machine_open``
      flag; opens whose flag is null count as human (nothing says otherwise).
Human opener
    A recipient with a human open *or a click*: a click proves the email was
    opened by a person even when the only recorded open is the proxy's. So
    ``click_to_open_rate`` never exceeds 1.
Rates
    ``open_rate``, ``click_rate``, ``unsubscribe_rate`` and
    ``complaint_rate`` are unique customers over ``delivered``;
    ``bounce_rate``, ``conversion_rate`` and ``revenue_per_recipient`` are
    over ``sent``; ``click_to_open_rate`` is clickers over human openers.
Attribution (last touch)
    A *purchase* (an order with revenue >= 0; refund rows are never
    attributed) is attributed to the latest human touch (a click or a human
    open) of the same customer, of any campaign, with
    ``touch_at <= ordered_at <= touch_at + attribution_days`` -- **both ends
    inclusive**: an order exactly 5 days after the click is attributed with
    the default window, one a microsecond later is not. Ties between
    campaigns touched at the same instant go to the larger ``campaign_id``.
Incrementality
    Per campaign, treated = customers with a ``sent`` event, holdout =
    customers with a ``holdout`` event (customers with both are excluded and
    counted in ``note``). The outcome window is
    ``sent_at <= ordered_at <= sent_at + window_days`` (inclusive, the
    campaign's ``sent_at``), cut at ``as_of``. A customer converted when they
    placed a purchase (revenue >= 0) in the window; their revenue is the net
    revenue of all their orders in the window (refund rows included). The
    conversion difference uses :func:`bmkt.experiments.proportion_test`, the
    revenue per recipient :func:`bmkt.experiments.welch_test`; the p-values
    are per campaign (each campaign is its own experiment, not adjusted).
Segments
    ``segments`` maps a customer to one label, as known now (not at send
    time); recipients without a label are in segment ``"unassigned"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from ibis.expr.types import Table
from markupsafe import Markup

from bmkt import config, engine
from bmkt.errors import BmktError, ConfigError, DataError, format_examples
from bmkt.experiments import proportion_test, welch_test
from bmkt.io import Store, open_store, parse_timestamp
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = [
    "campaign_metrics",
    "incrementality",
    "engagement_over_time",
    "cohort_retention",
    "plot_campaign_metrics",
    "plot_incrementality",
    "plot_engagement",
    "plot_cohort_retention",
    "Section",
    "render_html_report",
    "METRIC_COLUMNS",
    "INCREMENTALITY_COLUMNS",
    "NO_HOLDOUT_NOTE",
]

#: ``note`` of a campaign without holdout customers.
NO_HOLDOUT_NOTE = "no holdout: lift not measurable"

#: Columns of :func:`campaign_metrics` after the group keys.
METRIC_COLUMNS: tuple[str, ...] = (
    "sent",
    "delivered",
    "delivered_inferred",
    "bounces",
    "bounce_rate",
    "human_opens",
    "open_rate",
    "machine_opens",
    "clicks",
    "click_rate",
    "click_to_open_rate",
    "unsubscribes",
    "unsubscribe_rate",
    "complaints",
    "complaint_rate",
    "attributed_conversions",
    "conversion_rate",
    "attributed_orders",
    "attributed_revenue",
    "revenue_per_recipient",
)

#: Columns of :func:`incrementality`.
INCREMENTALITY_COLUMNS: tuple[str, ...] = (
    "campaign_id",
    "campaign_name",
    "sent_at",
    "window_end",
    "n_treated",
    "n_holdout",
    "conversion_rate_treated",
    "conversion_rate_holdout",
    "conversion_rate_diff",
    "conversion_rate_diff_ci_low",
    "conversion_rate_diff_ci_high",
    "conversion_lift",
    "conversion_lift_ci_low",
    "conversion_lift_ci_high",
    "conversion_p_value",
    "incremental_conversions",
    "incremental_conversions_ci_low",
    "incremental_conversions_ci_high",
    "revenue_per_recipient_treated",
    "revenue_per_recipient_holdout",
    "revenue_per_recipient_diff",
    "revenue_per_recipient_diff_ci_low",
    "revenue_per_recipient_diff_ci_high",
    "revenue_lift",
    "revenue_lift_ci_low",
    "revenue_lift_ci_high",
    "revenue_p_value",
    "incremental_revenue",
    "incremental_revenue_ci_low",
    "incremental_revenue_ci_high",
    "attributed_conversions",
    "attributed_revenue",
    "note",
)

_BY_OPTIONS = ("campaign_id", "variant")
#: Suffixes of the incrementality columns that compare the arms.
_LIFT_SUFFIXES = ("_diff", "_ci_low", "_ci_high", "_lift", "_p_value", "_conversions", "_revenue")
_FREQS = {"D": "D", "W": "W", "M": "M"}
_COHORT_FREQS = {"W": "week", "M": "month"}
_UNASSIGNED = "unassigned"


# --------------------------------------------------------------------------- inputs


def _end(as_of: Any) -> Any:
    return ibis.literal(parse_as_of(as_of).to_pydatetime(), type=dt.Timestamp())


def _check_days(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of days. Got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite. Got {value!r}.")
    return float(value)


def _interval(days: float) -> Any:
    return ibis.interval(seconds=int(round(days * 86400)))


def _as_ibis(data: Any, what: str) -> Table:
    if isinstance(data, Table):
        return data
    if isinstance(data, pd.DataFrame):
        return ibis.memtable(data)
    raise ConfigError(
        f"{what}: expected a pandas DataFrame, Series or an Ibis table. Got {type(data).__name__}."
    )


def _require(table: Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{what}: missing column(s) {', '.join(map(repr, missing))} "
            f"(columns present: {', '.join(table.columns)})"
        )


def _events(store: Store, end: Any) -> Table:
    ev = store.table("email_events")
    return ev.filter(ev.occurred_at < end)


def _with_machine_flag(ev: Table, machine_opens: Any) -> Table:
    """``ev`` with a boolean ``is_machine`` column (True for machine opens only)."""
    is_open = ev.event_type == "open"
    if machine_opens is None:
        return ev.mutate(is_machine=is_open & ev.machine_open.fill_null(False))
    cid_type = ev.customer_id.type()
    if isinstance(machine_opens, pd.Series):
        if machine_opens.index.has_duplicates:
            dup = machine_opens.index[machine_opens.index.duplicated()].unique()
            raise DataError(
                f"machine_opens: {len(dup)} customer ids appear more than once, "
                f"e.g. {format_examples(dup)}"
            )
        machine_opens = pd.DataFrame(
            {"customer_id": machine_opens.index, "machine_open": machine_opens.to_numpy()}
        )
    m = _as_ibis(machine_opens, "machine_opens")
    if {"campaign_id", "occurred_at"} <= set(m.columns):
        _require(m, ["customer_id"], "machine_opens")
        keys = m.select(
            m_customer=m.customer_id.cast(cid_type),
            m_campaign=m.campaign_id.cast(ev.campaign_id.type()),
            m_at=parse_timestamp(m.occurred_at),
        ).distinct()
        keys = keys.mutate(m_hit=ibis.literal(True))
        j = ev.left_join(
            keys,
            [
                ev.customer_id == keys.m_customer,
                ev.campaign_id == keys.m_campaign,
                ev.occurred_at == keys.m_at,
            ],
        )
        return j.select(*ev.columns, is_machine=is_open & j.m_hit.fill_null(False))
    if "machine_open" in m.columns:
        _require(m, ["customer_id"], "machine_opens")
        flags = (
            m.select(m_customer=m.customer_id.cast(cid_type), m_flag=m.machine_open.cast("boolean"))
            .group_by("m_customer")
            .agg(m_flag=lambda t: t.m_flag.any())
        )
        j = ev.left_join(flags, ev.customer_id == flags.m_customer)
        return j.select(*ev.columns, is_machine=is_open & j.m_flag.fill_null(False))
    raise DataError(
        "machine_opens: expected machine-open events (customer_id, campaign_id, occurred_at) "
        "or a per-customer flag (customer_id, machine_open). "
        f"Columns present: {', '.join(m.columns)}"
    )


def _email_facts(store: Store, end: Any, machine_opens: Any) -> tuple[Table, Table]:
    """One row per recipient (campaign x customer) and the human touches."""
    ev = _with_machine_flag(_events(store, end), machine_opens)
    kind = ev.event_type
    is_sent = kind == "sent"
    human_touch = (kind == "click") | ((kind == "open") & ~ev.is_machine)
    r = ev.group_by(["campaign_id", "customer_id"]).agg(
        is_sent=is_sent.any(),
        variant=ev.variant.max(where=is_sent),
        sent_at=ev.occurred_at.min(where=is_sent),
        delivered_event=(kind == "delivered").any(),
        bounced=(kind == "bounce").any(),
        human_open=human_touch.any(),
        machine_open=ev.is_machine.any(),
        clicked=(kind == "click").any(),
        unsubscribed=(kind == "unsubscribe").any(),
        complained=(kind == "complaint").any(),
    )
    r = r.filter(r.is_sent)
    has_delivery = r.delivered_event.cast("int8").max().over(group_by=r.campaign_id) > 0
    r = r.mutate(
        delivered=ibis.ifelse(has_delivery, r.delivered_event, ~r.bounced),
        delivered_inferred=~has_delivery,
    ).drop("is_sent", "delivered_event")
    touches = ev.filter(human_touch).select(
        t_campaign=ev.campaign_id, t_customer=ev.customer_id, touch_at=ev.occurred_at
    )
    touches = touches.semi_join(
        r, [touches.t_campaign == r.campaign_id, touches.t_customer == r.customer_id]
    )
    return r, touches


def _orders(store: Store, end: Any) -> Table:
    o = store.table("orders")
    return o.filter(o.ordered_at < end)


def _attributed(store: Store, end: Any, touches: Table, days: float) -> Table:
    """Attributed purchases per (campaign_id, customer_id), last touch within ``days``."""
    o = _orders(store, end)
    o = o.filter(o.revenue >= 0)
    j = o.join(
        touches,
        [
            o.customer_id == touches.t_customer,
            touches.touch_at <= o.ordered_at,
            o.ordered_at <= touches.touch_at + _interval(days),
        ],
    )
    rank = ibis.row_number().over(
        group_by=j.order_id, order_by=[ibis.desc(j.touch_at), ibis.desc(j.t_campaign)]
    )
    last = j.mutate(rn=rank).filter(lambda t: t.rn == 0)
    return last.group_by(campaign_id=last.t_campaign, customer_id=last.customer_id).agg(
        attributed_orders=last.order_id.count(), attributed_revenue=last.revenue.sum()
    )


def _segment_table(segments: Any, cid_type: dt.DataType) -> Table:
    if isinstance(segments, pd.Series):
        if segments.index.has_duplicates:
            dup = segments.index[segments.index.duplicated()].unique()
            raise DataError(
                f"segments: {len(dup)} customer ids appear more than once, "
                f"e.g. {format_examples(dup)}"
            )
        segments = pd.DataFrame(
            {"customer_id": segments.index, "segment": segments.astype("string").to_numpy()}
        )
    seg = _as_ibis(segments, "segments")
    _require(seg, ["customer_id", "segment"], "segments")
    if isinstance(segments, pd.DataFrame) and segments["customer_id"].duplicated().any():
        dup = segments.loc[segments["customer_id"].duplicated(), "customer_id"].unique()
        raise DataError(
            f"segments: {len(dup)} customer ids appear more than once, e.g. {format_examples(dup)}"
        )
    elif isinstance(segments, Table):
        n_rows, n_ids = seg.count().execute(), seg.customer_id.nunique().execute()
        if n_rows != n_ids:
            raise DataError(f"segments: {n_rows - n_ids} rows repeat a customer id.")
    return seg.select(s_customer=seg.customer_id.cast(cid_type), s_segment=seg.segment.cast(str))


def _per_recipient(
    store: Store,
    as_of: Any,
    attribution_days: float,
    segments: Any,
    machine_opens: Any,
) -> Table:
    end = _end(as_of)
    r, touches = _email_facts(store, end, machine_opens)
    a = _attributed(store, end, touches, attribution_days)
    j = r.left_join(a, [r.campaign_id == a.campaign_id, r.customer_id == a.customer_id])
    r = j.select(
        *r.columns,
        attributed_orders=j.attributed_orders.fill_null(0),
        attributed_revenue=j.attributed_revenue.fill_null(0.0),
    )
    if segments is not None:
        seg = _segment_table(segments, r.customer_id.type())
        j = r.left_join(seg, r.customer_id == seg.s_customer)
        r = j.select(*r.columns, segment=j.s_segment.fill_null(_UNASSIGNED))
    return r


def _counts(r: Table, keys: Sequence[str]) -> Table:
    def n(flag: Any) -> Any:
        return flag.cast("int64").sum()

    return r.group_by(list(keys)).agg(
        sent=r.count(),
        delivered=n(r.delivered),
        delivered_inferred=r.delivered_inferred.any(),
        bounces=n(r.bounced),
        human_opens=n(r.human_open),
        machine_opens=n(r.machine_open),
        clicks=n(r.clicked),
        unsubscribes=n(r.unsubscribed),
        complaints=n(r.complained),
        attributed_conversions=n(r.attributed_orders > 0),
        attributed_orders=r.attributed_orders.sum(),
        attributed_revenue=r.attributed_revenue.sum(),
    )


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    num = num.astype(float)
    den = den.astype(float)
    return (num / den.where(den > 0)).astype(float)


def _add_rates(df: pd.DataFrame) -> pd.DataFrame:
    df["bounce_rate"] = _ratio(df["bounces"], df["sent"])
    df["open_rate"] = _ratio(df["human_opens"], df["delivered"])
    df["click_rate"] = _ratio(df["clicks"], df["delivered"])
    df["click_to_open_rate"] = _ratio(df["clicks"], df["human_opens"])
    df["unsubscribe_rate"] = _ratio(df["unsubscribes"], df["delivered"])
    df["complaint_rate"] = _ratio(df["complaints"], df["delivered"])
    df["conversion_rate"] = _ratio(df["attributed_conversions"], df["sent"])
    df["revenue_per_recipient"] = _ratio(df["attributed_revenue"], df["sent"])
    return df


# --------------------------------------------------------------------------- metrics


def campaign_metrics(
    store: Any,
    as_of: Any,
    attribution_days: float = 5,
    by: Sequence[str] = ("campaign_id", "variant"),
    segments: pd.Series | pd.DataFrame | Table | None = None,
    machine_opens: pd.Series | pd.DataFrame | Table | None = None,
) -> pd.DataFrame:
    """Email performance per campaign x (segment) x variant, with last-touch attribution.

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; events and orders after it are ignored (a date means
        through the end of that day, :func:`bmkt.schema.parse_as_of`).
    attribution_days : float, default 5
        Attribution window after a click or human open (inclusive).
    by : sequence of str, default ("campaign_id", "variant")
        Group keys, a subset of ``("campaign_id", "variant")``; ``()`` gives
        one total row. With ``campaign_id`` the campaign's ``campaign_name``
        and ``sent_at`` are added.
    segments : Series or DataFrame or Ibis table, optional
        Customer -> segment: a Series indexed by ``customer_id``, or a table
        with ``customer_id`` and ``segment``. Adds a ``segment`` key.
    machine_opens : Series or DataFrame or Ibis table, optional
        Machine-open events or a per-customer proxy flag; see the module
        docstring. ``None`` uses ``email_events.machine_open``.

    Returns
    -------
    pandas.DataFrame
        The keys (``campaign_id``, ``campaign_name``, ``sent_at``,
        ``segment``, ``variant`` as requested) followed by
        :data:`METRIC_COLUMNS`: counts are unique customers (recipients,
        deliveries, bounces, human openers, machine openers, clickers,
        unsubscribers, complainers, customers with an attributed purchase),
        ``attributed_orders``/``attributed_revenue`` and the rates defined in
        the module docstring. Sorted by ``sent_at`` and the keys.

    Raises
    ------
    ConfigError
        Unknown ``by`` keys or a bad ``attribution_days``.
    DataError
        Malformed ``segments`` or ``machine_opens``.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> tables = simulate_store(n_customers=500, days=60, seed=1)
    >>> m = campaign_metrics(tables, "2024-06-30", by=("campaign_id",))
    >>> list(m.columns[:4])
    ['campaign_id', 'campaign_name', 'sent_at', 'sent']
    >>> bool((m["human_opens"] <= m["delivered"]).all())
    True
    """
    store = open_store(store)
    days = _check_days(attribution_days, "attribution_days")
    by = [by] if isinstance(by, str) else list(by)
    unknown = [b for b in by if b not in _BY_OPTIONS]
    if unknown or len(set(by)) != len(by):
        raise ConfigError(f"Valid options for 'by' are {_BY_OPTIONS}. Got {tuple(by)!r}.")
    r = _per_recipient(store, as_of, days, segments, machine_opens)
    keys = [k for k in ("campaign_id", "segment", "variant") if k in by or k == "segment"]
    keys = [k for k in keys if k in r.columns]
    agg = _counts(r, keys) if keys else _counts(r.mutate(_all=0), ["_all"]).drop("_all")
    if "campaign_id" in keys:
        c = store.table("campaigns")
        j = agg.left_join(c, agg.campaign_id == c.campaign_id)
        agg = j.select("campaign_id", *agg.columns[1:], campaign_name=j.name, sent_at=j.sent_at)
    df = engine.to_pandas(agg)
    front = [k for k in ("campaign_id", "campaign_name", "sent_at") if k in df.columns]
    front += [k for k in ("segment", "variant") if k in df.columns]
    int_cols = [
        "sent",
        "delivered",
        "bounces",
        "human_opens",
        "machine_opens",
        "clicks",
        "unsubscribes",
        "complaints",
        "attributed_conversions",
        "attributed_orders",
    ]
    if df.empty:
        return pd.DataFrame(columns=[*front, *METRIC_COLUMNS])
    df[int_cols] = df[int_cols].fillna(0).astype("int64")
    df["delivered_inferred"] = df["delivered_inferred"].astype(bool)
    df["attributed_revenue"] = df["attributed_revenue"].astype(float)
    df = _add_rates(df)
    sort = [k for k in ("sent_at", "campaign_id", "segment", "variant") if k in df.columns]
    if sort:
        df = df.sort_values(sort, na_position="last", kind="stable")
    return df[[*front, *METRIC_COLUMNS]].reset_index(drop=True)


def incrementality(
    store: Any,
    as_of: Any,
    window_days: float = 5,
    alpha: float = 0.05,
    ci: str = "agresti-caffo",
) -> pd.DataFrame:
    """Lift measured against the randomised holdout, beside the attributed numbers.

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; orders after it are ignored (an outcome window that ends
        after ``as_of`` is incomplete and says so in ``note``).
    window_days : float, default 5
        Outcome window after the campaign's ``sent_at`` (inclusive); also the
        attribution window of the attributed columns.
    alpha : float, default 0.05
        The confidence intervals have level ``1 - alpha``.
    ci : {'agresti-caffo', 'wald'}, default 'agresti-caffo'
        Interval of the conversion-rate difference (see
        :func:`bmkt.experiments.proportion_test`). Agresti-Caffo by default
        because holdouts are small and conversions rare: with no conversion
        in the holdout the Wald interval has zero width on that side.

    Returns
    -------
    pandas.DataFrame
        One row per campaign with sent or held-out customers, columns
        :data:`INCREMENTALITY_COLUMNS`:

        * ``n_treated``/``n_holdout``; ``conversion_rate_treated``/
          ``_holdout``; their difference ``conversion_rate_diff`` with its
          CI (``ci``), the relative ``conversion_lift`` with Fieller CI,
          and the pooled two-proportion z-test ``conversion_p_value``;
        * ``incremental_conversions`` = difference x ``n_treated`` (CI
          likewise scaled);
        * ``revenue_per_recipient_treated``/``_holdout``, their difference
          with Welch CI, ``revenue_lift`` (relative, Fieller), Welch
          ``revenue_p_value`` and ``incremental_revenue`` = difference x
          ``n_treated`` with CI;
        * ``attributed_conversions``/``attributed_revenue`` from
          :func:`campaign_metrics` with ``attribution_days=window_days``:
          what last-touch attribution would claim, *not* lift;
        * ``note``: :data:`NO_HOLDOUT_NOTE` for a campaign without holdout
          (its lift columns are NaN), and warnings about too small arms,
          incomplete windows or customers both sent and held out.

    Raises
    ------
    ConfigError
        Bad ``window_days`` or ``alpha``.
    """
    store = open_store(store)
    days = _check_days(window_days, "window_days")
    if not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a number strictly between 0 and 1. Got {alpha!r}.")
    end_ts = parse_as_of(as_of)
    end = _end(as_of)
    ev = _events(store, end)
    ev = ev.filter(ev.event_type.isin(("sent", "holdout")))
    units = ev.group_by(["campaign_id", "customer_id"]).agg(
        is_sent=(ev.event_type == "sent").any(),
        is_holdout=(ev.event_type == "holdout").any(),
    )
    conflicts = (
        units.filter(units.is_sent & units.is_holdout)
        .group_by("campaign_id")
        .agg(n_conflicts=lambda t: t.count())
    )
    units = units.filter(units.is_sent != units.is_holdout)
    c = store.table("campaigns")
    units = units.join(c.select("campaign_id", c_sent_at=c.sent_at), "campaign_id")
    o = _orders(store, end)
    win = _interval(days)
    j = units.left_join(
        o,
        [
            units.customer_id == o.customer_id,
            o.ordered_at >= units.c_sent_at,
            o.ordered_at <= units.c_sent_at + win,
        ],
    )
    per_customer = j.group_by(
        campaign_id=j.campaign_id, customer_id=j.customer_id, treated=j.is_sent
    ).agg(
        converted=(j.revenue >= 0).fill_null(False).any().cast("int64"),
        revenue=j.revenue.sum().fill_null(0.0),
    )
    arms = per_customer.group_by(["campaign_id", "treated"]).agg(
        n=per_customer.count(),
        conversions=per_customer.converted.sum(),
        rev_mean=per_customer.revenue.mean(),
        rev_var=per_customer.revenue.var(how="sample"),
    )
    arms_df = engine.to_pandas(arms)
    conflicts_df = engine.to_pandas(conflicts)
    camp_df = engine.to_pandas(c.select("campaign_id", "name", "sent_at"))

    ids = sorted(arms_df["campaign_id"].unique().tolist())
    if not ids:
        return pd.DataFrame(columns=list(INCREMENTALITY_COLUMNS))
    t = arms_df[arms_df["treated"]].set_index("campaign_id").reindex(ids)
    h = arms_df[~arms_df["treated"]].set_index("campaign_id").reindex(ids)
    n1 = t["n"].fillna(0).to_numpy(float)
    n0 = h["n"].fillna(0).to_numpy(float)
    conv = proportion_test(
        t["conversions"].fillna(0).to_numpy(float),
        n1,
        h["conversions"].fillna(0).to_numpy(float),
        n0,
        alpha,
        ci=ci,
    )
    rev = welch_test(
        t["rev_mean"].to_numpy(float),
        t["rev_var"].fillna(0).to_numpy(float),
        n1,
        h["rev_mean"].to_numpy(float),
        h["rev_var"].fillna(0).to_numpy(float),
        n0,
        alpha,
    )
    out = pd.DataFrame({"campaign_id": ids})
    camp = camp_df.set_index("campaign_id").reindex(ids)
    out["campaign_name"] = camp["name"].to_numpy()
    out["sent_at"] = camp["sent_at"].to_numpy()
    out["window_end"] = out["sent_at"] + pd.Timedelta(days=days)
    out["n_treated"] = n1.astype("int64")
    out["n_holdout"] = n0.astype("int64")
    out["conversion_rate_treated"] = _ratio(t["conversions"], t["n"]).to_numpy()
    out["conversion_rate_holdout"] = _ratio(h["conversions"], h["n"]).to_numpy()
    for src, name in (
        ("diff", "conversion_rate_diff"),
        ("diff_ci_low", "conversion_rate_diff_ci_low"),
        ("diff_ci_high", "conversion_rate_diff_ci_high"),
        ("lift", "conversion_lift"),
        ("lift_ci_low", "conversion_lift_ci_low"),
        ("lift_ci_high", "conversion_lift_ci_high"),
        ("p_value", "conversion_p_value"),
    ):
        out[name] = conv[src]
    out["incremental_conversions"] = conv["diff"] * n1
    out["incremental_conversions_ci_low"] = conv["diff_ci_low"] * n1
    out["incremental_conversions_ci_high"] = conv["diff_ci_high"] * n1
    out["revenue_per_recipient_treated"] = t["rev_mean"].to_numpy(float)
    out["revenue_per_recipient_holdout"] = h["rev_mean"].to_numpy(float)
    for src, name in (
        ("diff", "revenue_per_recipient_diff"),
        ("diff_ci_low", "revenue_per_recipient_diff_ci_low"),
        ("diff_ci_high", "revenue_per_recipient_diff_ci_high"),
        ("lift", "revenue_lift"),
        ("lift_ci_low", "revenue_lift_ci_low"),
        ("lift_ci_high", "revenue_lift_ci_high"),
        ("p_value", "revenue_p_value"),
    ):
        out[name] = rev[src]
    out["incremental_revenue"] = rev["diff"] * n1
    out["incremental_revenue_ci_low"] = rev["diff_ci_low"] * n1
    out["incremental_revenue_ci_high"] = rev["diff_ci_high"] * n1

    attributed = campaign_metrics(store, as_of, attribution_days=days, by=("campaign_id",))
    attributed = attributed.set_index("campaign_id").reindex(ids)
    too_small = (n1 < 2) | (n0 < 2)
    lift_cols = [
        c
        for c in INCREMENTALITY_COLUMNS
        if c.endswith(_LIFT_SUFFIXES) and not c.startswith("attributed_")
    ]
    out.loc[too_small, lift_cols] = np.nan
    out["attributed_conversions"] = attributed["attributed_conversions"].fillna(0).to_numpy()
    out["attributed_revenue"] = attributed["attributed_revenue"].fillna(0.0).to_numpy()

    n_conf = conflicts_df.set_index("campaign_id")["n_conflicts"].reindex(ids).fillna(0)
    notes = []
    for i in range(len(ids)):
        msg = []
        if n0[i] == 0:
            msg.append(NO_HOLDOUT_NOTE)
        elif n1[i] == 0:
            msg.append("no sends: lift not measurable")
        elif n0[i] < 2 or n1[i] < 2:
            msg.append("fewer than 2 customers in an arm: lift not measurable")
        if pd.notna(out.at[i, "window_end"]) and out.at[i, "window_end"] >= end_ts:
            msg.append(f"window incomplete: ends after as_of ({end_ts:%Y-%m-%d %H:%M})")
        if n_conf.iloc[i] > 0:
            msg.append(f"{int(n_conf.iloc[i])} customers both sent and held out were excluded")
        notes.append("; ".join(msg))
    out["note"] = notes
    out = out.sort_values(["sent_at", "campaign_id"], kind="stable", na_position="last")
    return out[list(INCREMENTALITY_COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------- trends


def engagement_over_time(
    store: Any,
    as_of: Any,
    freq: str = "W",
    machine_opens: pd.Series | pd.DataFrame | Table | None = None,
) -> pd.DataFrame:
    """Human open rate and click rate per period of sending.

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; later events are ignored.
    freq : {'D', 'W', 'M'}, default 'W'
        Period of the recipient's send time (weeks start on Monday).
    machine_opens : optional
        As in :func:`campaign_metrics`.

    Returns
    -------
    pandas.DataFrame
        ``period`` (start, naive UTC), ``sent``, ``delivered``,
        ``human_opens``, ``open_rate``, ``machine_opens``, ``clicks``,
        ``click_rate``, ``click_to_open_rate``; one row per period with
        sends, in time order. Definitions as in :func:`campaign_metrics`.
    """
    store = open_store(store)
    if freq not in _FREQS:
        raise ConfigError(f"Valid options for 'freq' are {tuple(_FREQS)}. Got {freq!r}.")
    r, _ = _email_facts(store, _end(as_of), machine_opens)
    r = r.mutate(period=r.sent_at.truncate(_FREQS[freq]))

    def n(flag: Any) -> Any:
        return flag.cast("int64").sum()

    agg = r.group_by("period").agg(
        sent=r.count(),
        delivered=n(r.delivered),
        human_opens=n(r.human_open),
        machine_opens=n(r.machine_open),
        clicks=n(r.clicked),
    )
    df = engine.to_pandas(agg.order_by("period"))
    cols = ["period", "sent", "delivered", "human_opens", "open_rate", "machine_opens"]
    cols += ["clicks", "click_rate", "click_to_open_rate"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["open_rate"] = _ratio(df["human_opens"], df["delivered"])
    df["click_rate"] = _ratio(df["clicks"], df["delivered"])
    df["click_to_open_rate"] = _ratio(df["clicks"], df["human_opens"])
    return df[cols].reset_index(drop=True)


def cohort_retention(store: Any, as_of: Any, freq: str = "M") -> pd.DataFrame:
    """Share of each first-purchase cohort that buys again, by periods since.

    A customer's cohort is the period (calendar month or Monday-start week,
    UTC) of their first purchase (order with revenue >= 0; refund rows are
    ignored) before ``as_of``. A customer is *retained* in period ``k`` when
    they made a purchase in the ``k``-th period after their cohort's; period
    0 is the cohort period itself (retention 1 by definition).

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; later orders are ignored.
    freq : {'M', 'W'}, default 'M'
        Cohort and period length.

    Returns
    -------
    pandas.DataFrame
        Long format: ``cohort`` (period start), ``periods_since``,
        ``customers`` (buyers of the cohort in that period), ``cohort_size``
        and ``retention`` = customers / cohort_size; every cohort has a row
        for each period up to the one holding ``as_of`` (zeros included).
    """
    store = open_store(store)
    if freq not in _COHORT_FREQS:
        raise ConfigError(f"Valid options for 'freq' are {tuple(_COHORT_FREQS)}. Got {freq!r}.")
    unit = _COHORT_FREQS[freq]
    end_ts = parse_as_of(as_of)
    o = _orders(store, _end(as_of))
    o = o.filter(o.revenue >= 0)
    o = o.mutate(period=o.ordered_at.truncate(freq))
    first = o.group_by("customer_id").agg(cohort=o.period.min())
    j = o.join(first, "customer_id")
    j = j.mutate(periods_since=j.period.delta(j.cohort, unit=unit))
    active = j.group_by(["cohort", "periods_since"]).agg(customers=j.customer_id.nunique())
    sizes = first.group_by("cohort").agg(cohort_size=first.count())
    active_df = engine.to_pandas(active)
    sizes_df = engine.to_pandas(sizes)
    cols = ["cohort", "periods_since", "customers", "cohort_size", "retention"]
    if sizes_df.empty:
        return pd.DataFrame(columns=cols)
    last = (end_ts - pd.Timedelta(microseconds=1)).to_period(freq).start_time
    rows = []
    for cohort, size in sizes_df.sort_values("cohort").itertuples(index=False):
        cohort = pd.Timestamp(cohort)
        n_periods = _periods_between(cohort, last, freq)
        for k in range(n_periods + 1):
            rows.append((cohort, k, size))
    grid = pd.DataFrame(rows, columns=["cohort", "periods_since", "cohort_size"])
    active_df["cohort"] = pd.to_datetime(active_df["cohort"])
    active_df["periods_since"] = active_df["periods_since"].astype("int64")
    df = grid.merge(active_df, on=["cohort", "periods_since"], how="left")
    df["customers"] = df["customers"].fillna(0).astype("int64")
    df["cohort_size"] = df["cohort_size"].astype("int64")
    df["retention"] = df["customers"] / df["cohort_size"]
    return df[cols]


def _periods_between(start: pd.Timestamp, stop: pd.Timestamp, freq: str) -> int:
    if freq == "M":
        return (stop.year - start.year) * 12 + stop.month - start.month
    return int((stop.normalize() - start.normalize()).days // 7)


# --------------------------------------------------------------------------- plots


def _figure(fig: go.Figure | None) -> go.Figure:
    return go.Figure() if fig is None else fig


def _campaign_label(frame: pd.DataFrame) -> pd.Series:
    if "campaign_name" in frame.columns:
        names = frame["campaign_name"].astype("string").fillna("")
        return names.where(names != "", frame["campaign_id"].astype(str)) + (
            " (" + frame["campaign_id"].astype(str) + ")"
        )
    return frame["campaign_id"].astype(str)


def plot_campaign_metrics(
    frame: pd.DataFrame, metric: str = "open_rate", fig: go.Figure | None = None
) -> go.Figure:
    """Bar chart of one rate of :func:`campaign_metrics`, per campaign and variant.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`campaign_metrics` (with ``campaign_id``).
    metric : str, default 'open_rate'
        A column of :data:`METRIC_COLUMNS`.
    fig : plotly.graph_objects.Figure, optional
        Figure to draw on; a new one by default.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    if metric not in METRIC_COLUMNS:
        raise ConfigError(f"Valid options for 'metric' are {METRIC_COLUMNS}. Got {metric!r}.")
    if "campaign_id" not in frame.columns:
        raise DataError("frame: plot_campaign_metrics needs the 'campaign_id' column.")
    fig = _figure(fig)
    frame = frame.assign(_label=_campaign_label(frame))
    groups = (
        frame.groupby(frame["variant"].fillna("-"), sort=True)
        if "variant" in frame
        else [("all", frame)]
    )
    for variant, part in groups:
        fig.add_trace(go.Bar(x=part["_label"], y=part[metric], name=f"variant {variant}"))
    fig.update_layout(
        barmode="group",
        title=metric.replace("_", " "),
        yaxis_tickformat=".1%" if metric.endswith("_rate") else None,
    )
    return fig


def plot_incrementality(frame: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Measured conversion lift with its CI beside the attributed conversion rate.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`incrementality`.
    fig : plotly.graph_objects.Figure, optional
        Figure to draw on; a new one by default.

    Returns
    -------
    plotly.graph_objects.Figure
        Per campaign: the treated-minus-holdout conversion rate with error
        bars (campaigns without holdout are left out of this trace) and the
        attributed conversions per recipient as a second marker.
    """
    fig = _figure(fig)
    label = _campaign_label(frame)
    d = frame["conversion_rate_diff"]
    fig.add_trace(
        go.Scatter(
            x=label,
            y=d,
            mode="markers",
            name="measured lift (treated - holdout)",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": frame["conversion_rate_diff_ci_high"] - d,
                "arrayminus": d - frame["conversion_rate_diff_ci_low"],
            },
        )
    )
    attributed_rate = frame["attributed_conversions"] / frame["n_treated"].where(
        frame["n_treated"] > 0
    )
    fig.add_trace(
        go.Scatter(
            x=label,
            y=attributed_rate,
            mode="markers",
            marker_symbol="x",
            name="attributed conversions per recipient (not lift)",
        )
    )
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="Conversion lift vs attribution", yaxis_tickformat=".1%")
    return fig


def plot_engagement(frame: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Human open rate and click rate over time (output of :func:`engagement_over_time`).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    fig = _figure(fig)
    for col, name in (("open_rate", "human open rate"), ("click_rate", "click rate")):
        fig.add_trace(go.Scatter(x=frame["period"], y=frame[col], mode="lines+markers", name=name))
    fig.update_layout(title="Engagement over time", yaxis_tickformat=".0%")
    return fig


def plot_cohort_retention(frame: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Heatmap of cohort retention (output of :func:`cohort_retention`).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    fig = _figure(fig)
    wide = frame.pivot(index="cohort", columns="periods_since", values="retention").sort_index()
    fig.add_trace(
        go.Heatmap(
            z=wide.to_numpy(),
            x=[int(c) for c in wide.columns],
            y=[pd.Timestamp(i).strftime("%Y-%m-%d") for i in wide.index],
            colorscale="Blues",
            zmin=0,
            zmax=1,
            hovertemplate="cohort %{y}<br>period %{x}<br>retention %{z:.1%}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Cohort retention",
        xaxis_title="periods since first purchase",
        yaxis_title="cohort",
        yaxis_autorange="reversed",
    )
    return fig


# --------------------------------------------------------------------------- HTML


@dataclass
class Section:
    """One section of the HTML report.

    Parameters
    ----------
    title : str
        Heading.
    items : sequence
        Shown in order: ``str`` (a paragraph per blank-line separated
        block), :class:`pandas.DataFrame` (a table) or
        :class:`plotly.graph_objects.Figure`.
    """

    title: str
    items: Sequence[Any] = field(default_factory=list)


#: Something that looks like an email address, anywhere in a text.
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_EMAIL_COLUMN = re.compile(r"^(e-?mail|e-?mail_address|.*_e-?mail)$", re.IGNORECASE)
_REDACTED = "[email removed]"
_MAX_ROWS = 500


def _redact(text: str) -> str:
    return _EMAIL_IN_TEXT.sub(_REDACTED, text)


def _format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, pd.Timestamp):
        if pd.isna(value):
            return ""
        return value.strftime("%Y-%m-%d" if value == value.normalize() else "%Y-%m-%d %H:%M")
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1 or v == 0:
            return f"{v:,.2f}"
        return f"{v:.4f}"
    return _redact(str(value))


def _table(frame: pd.DataFrame) -> dict[str, Any]:
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    drop = [c for c in frame.columns if _EMAIL_COLUMN.match(str(c))]
    if drop:
        log.warning("report: dropping email column(s) %s; reports carry customer ids only", drop)
        frame = frame.drop(columns=drop)
    shown = frame.head(_MAX_ROWS)
    numeric = [pd.api.types.is_numeric_dtype(shown[c]) for c in shown.columns]
    return {
        "columns": [_redact(str(c)) for c in shown.columns],
        "numeric": numeric,
        "rows": [[_format_cell(v) for v in row] for row in shown.itertuples(index=False)],
        "truncated": max(0, len(frame) - _MAX_ROWS),
        "n_rows": len(frame),
    }


def _figure_html(fig: go.Figure, include_plotlyjs: bool, where: str) -> str:
    if _EMAIL_IN_TEXT.search(fig.to_json()):
        raise DataError(f"{where}: the figure carries email addresses; plot customer ids only.")
    return fig.to_html(
        full_html=False,
        include_plotlyjs=include_plotlyjs,
        config={"displaylogo": False, "responsive": True},
        default_width="100%",
        default_height="460px",
    )


def _as_section(section: Any, i: int) -> Section:
    if isinstance(section, Section):
        return section
    if isinstance(section, Mapping) and "title" in section:
        items = section.get("items", ())
        if isinstance(items, str | pd.DataFrame | go.Figure):
            items = [items]
        return Section(title=str(section["title"]), items=list(items))
    raise ConfigError(
        f"sections[{i}]: expected a Section or a mapping with 'title' and 'items'. "
        f"Got {type(section).__name__}."
    )


def _run_value(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return _redact(json.dumps(value, sort_keys=True, default=str))
    return _format_cell(value) if not isinstance(value, str) else _redact(value)


def render_html_report(
    sections: Sequence[Section | Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    title: str,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a standalone HTML report (opens offline: no CDN, no external files).

    Parameters
    ----------
    sections : sequence of Section or mapping
        The report's sections in order; a mapping needs ``title`` and
        ``items`` (see :class:`Section`).
    out_path : path-like
        The HTML file to write (parent folders are created; the file is
        written atomically).
    title : str
        Report title.
    run_info : mapping, optional
        Run id, ``as_of``, parameters, input fingerprints, package versions:
        shown in a "Run" table (nested values as JSON).

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Notes
    -----
    The template (``bmkt/resources/report.html.j2``) is rendered with
    autoescaping on: every title, text, table cell and run value is escaped.
    Figures are embedded with :meth:`plotly.graph_objects.Figure.to_html`;
    the first carries the whole plotly.js library inline
    (``include_plotlyjs=True``), the others none (``False``). Reports carry
    customer ids only: columns named like ``email`` are dropped and email
    addresses in texts and cells are replaced by ``[email removed]``; a
    figure carrying one raises :class:`~bmkt.errors.DataError`.
    """
    import jinja2

    secs = [_as_section(s, i) for i, s in enumerate(sections)]
    first_figure = True
    rendered = []
    for i, sec in enumerate(secs):
        blocks: list[dict[str, Any]] = []
        for j, item in enumerate(sec.items):
            where = f"section {sec.title!r}, item {j}"
            if isinstance(item, str):
                paragraphs = [p.strip() for p in re.split(r"\n\s*\n", item) if p.strip()]
                blocks.append({"kind": "text", "paragraphs": [_redact(p) for p in paragraphs]})
            elif isinstance(item, pd.DataFrame):
                blocks.append({"kind": "table", **_table(item)})
            elif isinstance(item, go.Figure):
                html = _figure_html(item, first_figure, where)
                first_figure = False
                blocks.append({"kind": "figure", "html": Markup(html)})
            else:
                raise ConfigError(
                    f"{where}: expected text, a pandas DataFrame or a plotly Figure. "
                    f"Got {type(item).__name__}."
                )
        rendered.append({"id": f"section-{i + 1}", "title": _redact(sec.title), "blocks": blocks})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(config.RESOURCES_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    run_rows = [(_redact(str(k)), _run_value(v)) for k, v in (run_info or {}).items()]
    html = env.get_template("report.html.j2").render(
        title=_redact(title), sections=rendered, run_info=run_rows
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote report %s (%d sections)", out, len(rendered))
    return out


def detected_machine_opens(store: Any, as_of: Any) -> Table:
    """Machine-open events as detected by :func:`bmkt.engagement.flag_machine_opens`.

    The ESP's flag, a proxy user agent, or the timing pattern; in the shape
    ``campaign_metrics(machine_opens=...)`` takes (``customer_id``,
    ``campaign_id``, ``occurred_at``).
    """
    from bmkt.engagement import flag_machine_opens

    opens = flag_machine_opens(store, as_of)
    return opens.filter(opens.is_machine).select("customer_id", "campaign_id", "occurred_at")


def performance_report(
    store: Any,
    as_of: Any,
    out_path: str | os.PathLike[str],
    *,
    attribution_days: float = 5,
    window_days: float = 5,
    segments: pd.Series | pd.DataFrame | None = None,
    run_info: Mapping[str, Any] | None = None,
) -> tuple[Path, dict[str, pd.DataFrame]]:
    """Compute the standard performance tables and write the HTML summary.

    Sections: measured lift against holdouts (with the attributed numbers
    beside it), campaign metrics with machine opens counted apart (detected,
    not only flagged), engagement over time and cohort retention.

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : date-like
        Run date.
    out_path : path-like
        The HTML file to write.
    attribution_days, window_days : float
        Attribution window after a touch; incrementality outcome window.
    segments : Series or DataFrame, optional
        Customer -> segment for a per-segment breakdown.
    run_info : mapping, optional
        Run id, parameters, fingerprints, versions for the "Run" table.

    Returns
    -------
    (Path, dict)
        The HTML path and the tables by name (``incrementality``,
        ``campaigns``, ``by_segment``, ``engagement``, ``cohorts``,
        ``clv_over_time``).
    """
    store = open_store(store)
    machine = detected_machine_opens(store, as_of)
    tables: dict[str, pd.DataFrame] = {
        "incrementality": incrementality(store, as_of, window_days=window_days),
        "campaigns": campaign_metrics(
            store,
            as_of,
            attribution_days=attribution_days,
            by=("campaign_id", "variant"),
            machine_opens=machine,
        ),
        "engagement": engagement_over_time(store, as_of, machine_opens=machine),
        "cohorts": cohort_retention(store, as_of),
        "clv_over_time": clv_over_time(store, as_of),
    }
    if segments is not None:
        tables["by_segment"] = campaign_metrics(
            store,
            as_of,
            attribution_days=attribution_days,
            by=("campaign_id",),
            segments=segments,
            machine_opens=machine,
        )
    inc = tables["incrementality"]
    n_campaigns = (
        int(tables["campaigns"]["campaign_id"].nunique()) if len(tables["campaigns"]) else 0
    )
    intro = (
        f"{n_campaigns} campaigns up to {pd.Timestamp(as_of):%Y-%m-%d}. Lift is measured against "
        "randomised holdouts; attributed numbers (last touch within "
        f"{attribution_days:g} days of a click or human open) are shown beside it and are not lift. "
        "Open rates count human opens only; machine opens by privacy proxies are counted apart."
    )
    sections = [
        Section("Summary", [intro]),
        Section("Incrementality (treatment vs holdout)", [plot_incrementality(inc), inc]),
        Section(
            "Campaign metrics",
            [plot_campaign_metrics(tables["campaigns"], "open_rate"), tables["campaigns"]],
        ),
        Section("Engagement over time", [plot_engagement(tables["engagement"])]),
        Section("Cohort retention", [plot_cohort_retention(tables["cohorts"])]),
        Section(
            "CLV of the base over time",
            [plot_clv_over_time(tables["clv_over_time"]), tables["clv_over_time"]],
        ),
    ]
    if "by_segment" in tables:
        sections.insert(3, Section("By segment", [tables["by_segment"]]))
    path = render_html_report(sections, out_path, "Campaign performance", run_info)
    return path, tables


def clv_over_time(
    store: Any,
    as_of: Any,
    months: int = 6,
    horizon_months: int = 12,
    discount_rate: float = 0.01,
    sample_size: int | None = 200_000,
) -> pd.DataFrame:
    """CLV of the customer base at the end of each of the last ``months`` months.

    At each month end ``c`` (and ``as_of`` itself) the BG/NBD and Gamma-Gamma
    models are fitted on the orders up to ``c`` only, and every buyer's CLV is
    summed: how the value of the base has moved, as the models saw it then.

    Returns
    -------
    DataFrame
        One row per cutoff: ``as_of``, ``buyers``, ``expected_active`` (sum of
        P(alive)), ``total_clv``, ``mean_clv``.
    """
    from bmkt import clv as clv_models
    from bmkt import rfm

    if not isinstance(months, int) or months < 1:
        raise ConfigError(f"'months' must be a positive integer. Got {months!r}.")
    store = open_store(store)
    end = pd.Timestamp(parse_as_of(as_of)) - pd.Timedelta(days=1)
    cutoffs = [
        (end.to_period("M") - k).to_timestamp(how="end").normalize() for k in range(months, 0, -1)
    ]
    cutoffs = [c for c in cutoffs if c < end.normalize()] + [end.normalize()]
    orders = store.table("orders")
    rows = []
    for c in cutoffs:
        try:
            summary = rfm.summarize(orders, c.date().isoformat(), period="D")
            bg = clv_models.BetaGeo(sample_size=sample_size).fit(summary)
            gg = clv_models.GammaGamma(sample_size=sample_size).fit(summary)
        except BmktError as exc:
            log.info("clv_over_time: no models at %s (%s)", c.date(), exc)
            continue
        value = clv_models.clv(
            bg, gg, summary, horizon=horizon_months, discount_rate=discount_rate, period="D"
        )
        rows.append(
            {
                "as_of": c,
                "buyers": len(summary),
                "expected_active": float(bg.p_alive(summary).sum()),
                "total_clv": float(value.sum()),
                "mean_clv": float(value.mean()),
            }
        )
    return pd.DataFrame(
        rows, columns=["as_of", "buyers", "expected_active", "total_clv", "mean_clv"]
    )


def plot_clv_over_time(frame: pd.DataFrame, fig: go.Figure | None = None) -> go.Figure:
    """Total CLV of the base and expected active customers per cutoff."""
    from plotly.subplots import make_subplots

    fig = fig or make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=frame["as_of"], y=frame["total_clv"], name="total CLV"))
    fig.add_trace(
        go.Scatter(x=frame["as_of"], y=frame["expected_active"], name="expected active customers"),
        secondary_y=True,
    )
    fig.update_layout(title="CLV of the customer base over time", height=380)
    return fig


def plot_migration(migration: Any, fig: go.Figure | None = None) -> go.Figure:
    """Heatmap of a segment migration (:func:`bmkt.segments.migration`): row shares."""
    shares = migration.shares
    fig = fig or go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=shares.values,
            x=[str(c) for c in shares.columns],
            y=[str(r) for r in shares.index],
            colorscale="Blues",
            texttemplate="%{z:.0%}",
            customdata=migration.counts.reindex_like(shares).values,
            hovertemplate="%{y} -> %{x}: %{z:.1%} (%{customdata:,} customers)<extra></extra>",
        )
    )
    fig.update_layout(
        title="Segment migration between runs (rows: before, columns: after)",
        xaxis_title="after",
        yaxis_title="before",
        height=480,
    )
    return fig
