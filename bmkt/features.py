"""Per-customer behavioural features at a cutoff, computed in the engine without leakage.

:func:`build_features` turns a store into one row per customer (signed up
before the cutoff) of numeric features for the supervised models of
:mod:`bmkt.churn`, :mod:`bmkt.propensity` and :mod:`bmkt.uplift`.
:func:`build_features_at` does the same for many ``(customer, cutoff)``
points in one query (every past campaign's audience at its own send time,
for uplift models); :func:`build_features_before_many` builds several
cutoffs of every customer at once (the training and scoring cutoffs of the
churn and purchase models, shared between them). Every feature is listed with
its meaning and its fill in :data:`FEATURES`.

Cutoff semantics
----------------
Only events **strictly before the cutoff** count. :func:`build_features`
takes a run date and applies :func:`bmkt.schema.parse_as_of`: ``"2024-06-30"``
means through the end of that day, so the cutoff (exclusive end) is
``2024-07-01 00:00``. :func:`build_features_at` takes the exclusive ends
themselves (a campaign's ``sent_at``: its own 'sent' and 'holdout' events are
*not* before it). Time windows ("last 30 days") are ``[cutoff - 30 days,
cutoff)``; ages are fractional days from the event to the cutoff.

Leakage
-------
Nothing at or after the cutoff may change a feature (tested by planting
future events). Two features need care:

* an *abandoned cart* is an add-to-cart with no purchase in the next 24 h;
  only carts added at least one day before the cutoff are judged, so the
  verdict never depends on what happens after the cutoff;
* a campaign *followed by an order* (``email_order_rate``,
  ``unmailed_order_rate``) likewise needs its whole
  :data:`RESPONSE_WINDOW_DAYS` window before the cutoff.

Machine opens
-------------
Opens are labelled by :func:`bmkt.engagement.flag_machine_opens` (the ESP
flag, proxy user agents, then the per-customer timing pattern of a privacy
proxy). The first two rules look at one event only; the timing rule depends
on the customer's history, so the *proxy user* verdict is re-evaluated at
every cutoff from the emails delivered before it, exactly as
:func:`bmkt.engagement.engagement_scores` would at that ``as_of`` (the counts
``n_delivered``, ``n_human_opens``, ``n_clicks`` and ``is_proxy_user`` match
it; tested). Machine opens never count as engagement.

Missing values
--------------
Counts are 0 when nothing happened (a customer without any email event has
``n_delivered == 0`` and zero opens and clicks). *Days since* an event that
never happened, and ratios with an empty denominator, are **NaN** -- never a
sentinel: "never" is not "long ago", and
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` (the default model)
learns where missing values go at every split. :data:`NULLABLE_FEATURES`
lists exactly the columns that may hold NaN; every other column is complete.
The user-facing ``customers.email_status`` is *not* a feature: it is the
status at the end of the data, not at the cutoff (unsubscribes before the
cutoff are in ``email_opted_out``).

Examples
--------
>>> from bmkt.simulate import simulate_store
>>> X = build_features(simulate_store(n_customers=300, days=120, seed=1), "2024-06-30")
>>> list(X.columns) == list(FEATURES)
True
>>> bool(X.drop(columns=list(NULLABLE_FEATURES)).notna().all().all())
True
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from ibis.expr.types import Table

from bmkt import engine
from bmkt.engagement import (
    _covering_deliveries,
    _covering_labels,
    _email_events_of,
    _machine_params,
    flag_machine_opens,
    labelled_opens,
)
from bmkt.errors import ConfigError, DataError, data_problem
from bmkt.io import Store, open_store
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = [
    "FEATURES",
    "NULLABLE_FEATURES",
    "RESPONSE_WINDOW_DAYS",
    "SESSION_GAP_MINUTES",
    "build_features",
    "build_features_at",
    "build_features_before",
    "build_features_before_many",
    "as_of_for_end",
    "cutoff_end",
]

#: An email counts as "followed by an order" when a purchase comes within this many days.
RESPONSE_WINDOW_DAYS = 5.0
#: Revenue sums are rounded to this many decimals (see :func:`_finish`).
REVENUE_DECIMALS = 6
#: Web events more than this many minutes apart belong to different sessions.
SESSION_GAP_MINUTES = 30.0
#: An add-to-cart without a purchase within this many hours is abandoned.
ABANDON_HOURS = 24.0

#: Every feature, in column order: name -> meaning (and fill where nothing happened).
#: A *purchase* is an order with revenue >= 0 (refunds are negative orders).
FEATURES: dict[str, str] = {
    # -- tenure and RFM
    "tenure_days": "Days from signup (customers.created_at) to the cutoff.",
    "n_orders": "Purchases before the cutoff. 0 for never-buyers.",
    "frequency": (
        "Repeat purchase days: distinct UTC calendar days with a purchase, minus one "
        "(the BG/NBD 'frequency'). 0 for one-time and never-buyers (tell them apart by n_orders)."
    ),
    "recency_days": "Days since the last purchase. NaN for never-buyers.",
    "T_days": "Days since the first purchase (the BG/NBD 'T', in days). NaN for never-buyers.",
    "purchase_span_days": (
        "Days from the first to the last purchase (the BG/NBD 'recency'). NaN for never-buyers."
    ),
    "mean_gap_days": "purchase_span_days / frequency. NaN when frequency == 0.",
    "recency_gap_ratio": (
        "recency_days / mean_gap_days: how many usual gaps the current silence lasts. "
        "NaN when frequency == 0."
    ),
    "monetary": "Mean revenue of a purchase. NaN for never-buyers.",
    "total_revenue": "Net revenue of all orders, refunds included. 0 without orders.",
    "orders_last_90d": "Purchases in the 90 days before the cutoff. 0 when none.",
    "orders_prev_90d": "Purchases 180 to 90 days before the cutoff. 0 when none.",
    "order_trend_90d": "orders_last_90d - orders_prev_90d.",
    "revenue_last_90d": "Net revenue (refunds included) of the last 90 days. 0 when none.",
    "revenue_prev_90d": "Net revenue (refunds included) 180 to 90 days before. 0 when none.",
    "revenue_trend_90d": "revenue_last_90d - revenue_prev_90d.",
    "discount_share": (
        "Share of purchases with a discount (orders.discount > 0) among purchases whose "
        "discount is known. NaN when no purchase has a known discount."
    ),
    "n_categories_bought": "Distinct product categories among purchased order lines. 0 when none.",
    "n_categories_viewed": "Distinct categories of product views. 0 when none.",
    # -- email (machine opens excluded everywhere except n_machine_opens)
    "n_delivered": "Distinct emails delivered before the cutoff. 0 without email events.",
    "delivered_30d": "Emails delivered in the last 30 days. 0 when none.",
    "delivered_90d": "Emails delivered in the last 90 days. 0 when none.",
    "n_human_opens": "Human open events (machine opens excluded). 0 when none.",
    "human_opens_30d": "Human open events in the last 30 days. 0 when none.",
    "human_opens_90d": "Human open events in the last 90 days. 0 when none.",
    "n_machine_opens": "Opens labelled as made by a machine (privacy proxy, scanner). 0 when none.",
    "n_clicks": "Email click events. 0 when none.",
    "clicks_30d": "Click events in the last 30 days. 0 when none.",
    "clicks_90d": "Click events in the last 90 days. 0 when none.",
    "human_open_rate": (
        "Distinct emails with a human open / n_delivered. NaN when n_delivered == 0 "
        "(no email, no evidence). Understated behind a privacy proxy (see is_proxy_user)."
    ),
    "click_rate": "Distinct emails clicked / n_delivered. NaN when n_delivered == 0.",
    "days_since_human_open": "Days since the last human open. NaN when never.",
    "days_since_click": "Days since the last click. NaN when never.",
    "is_proxy_user": (
        "1 when the customer's opens show the privacy-proxy timing pattern at the cutoff "
        "(bmkt.engagement), else 0."
    ),
    "email_opted_out": "1 after an 'unsubscribe' or 'complaint' event before the cutoff, else 0.",
    "email_order_rate": (
        f"Share of the campaigns delivered to the customer that were followed by a purchase "
        f"within {RESPONSE_WINDOW_DAYS:g} days of the campaign's sent_at (campaigns sent after "
        f"signup and at least {RESPONSE_WINDOW_DAYS:g} days before the cutoff). NaN when none."
    ),
    "unmailed_order_rate": (
        "The same share over the campaigns of that period *not* delivered to the customer "
        "(not in the audience, held out, bounced, or unsubscribed): the customer's usual "
        "purchase rate around campaigns. NaN when none."
    ),
    "email_lift_history": (
        "email_order_rate - unmailed_order_rate: the customer's own history of buying more "
        "when mailed. NaN when either is NaN."
    ),
    # -- web
    "page_views_30d": "page_view events in the last 30 days. 0 when none.",
    "product_views_30d": "product_view events in the last 30 days. 0 when none.",
    "searches_30d": "search events in the last 30 days. 0 when none.",
    "cart_adds_30d": "add_to_cart events in the last 30 days. 0 when none.",
    "abandoned_carts_30d": (
        f"add_to_cart events made 30 to 1 days before the cutoff with no purchase in the "
        f"next {ABANDON_HOURS:g} hours (younger carts are not judged yet). 0 when none."
    ),
    "sessions_30d": (
        f"Web sessions started in the last 30 days (a gap over {SESSION_GAP_MINUTES:g} minutes "
        "starts a new session). 0 when none."
    ),
    "sessions_90d": "Web sessions started in the last 90 days. 0 when none.",
    "n_sessions": "Web sessions before the cutoff. 0 when none.",
    "days_since_last_visit": "Days since the last web event. NaN when never.",
}

#: The features that may be NaN (see "Missing values" in the module docstring).
NULLABLE_FEATURES: tuple[str, ...] = (
    "recency_days",
    "T_days",
    "purchase_span_days",
    "mean_gap_days",
    "recency_gap_ratio",
    "monetary",
    "discount_share",
    "human_open_rate",
    "click_rate",
    "days_since_human_open",
    "days_since_click",
    "email_order_rate",
    "unmailed_order_rate",
    "email_lift_history",
    "days_since_last_visit",
)

_KEYS = ["customer_id", "cutoff"]
_US_PER_DAY = 86_400e6
_US_PER_HOUR = 3_600e6
#: Points whose customers are fewer than this share of the customers in their id
#: range read only those customers' events (a semi join before anything else).
SPARSE_SHARE = 0.5
#: Web events followed by at least this many days of silence are kept as marks.
_SILENCE_DAYS = 30
#: Web events of the last this many days before a cutoff are read in full.
_RECENT_DAYS = 31


def _days(later: ibis.Value, earlier: ibis.Value) -> ibis.Value:
    """Fractional days from ``earlier`` to ``later`` (exact to the microsecond, any engine)."""
    return later.delta(earlier, unit="microsecond").cast(dt.float64) / _US_PER_DAY


def _us(later: ibis.Value, earlier: ibis.Value) -> ibis.Value:
    """Whole microseconds from ``earlier`` to ``later`` (int64), as :func:`_days` counts them."""
    return later.delta(earlier, unit="microsecond")


def _within(cutoff: ibis.Value, at: ibis.Value, days: float) -> ibis.Value:
    """``_days(cutoff, at) < days``, compared in integer microseconds.

    The same verdict for every pair: for an integer ``x``, ``x / 86400e6 < days``
    exactly when ``x < days * 86400e6`` (both sides exact in float64 for whole
    or half days), and an integer comparison is much cheaper than a division.
    """
    return _us(cutoff, at) < int(days * _US_PER_DAY)


def _session_gap_us() -> int:
    """The least gap in whole microseconds that starts a new session.

    A gap ``x`` starts one when ``x / 86400e6 * 1440 > SESSION_GAP_MINUTES`` in
    float64 (the definition); that test is monotone in ``x``, so it holds exactly
    from this integer on, and the engine compares integers instead.
    """
    gap = float(SESSION_GAP_MINUTES)
    lo, hi = 0, int(gap * 60e6) + 2
    while hi - lo > 1:  # invariant: the test fails at lo and holds at hi
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if float(mid) / _US_PER_DAY * 1440.0 > gap else (mid, hi)
    return hi


def _utc_day(ts: ibis.Value) -> ibis.Value:
    """Days since 1970-01-01 of a naive (UTC) timestamp (int64): an equality join key."""
    return engine.epoch_us(ts) // int(_US_PER_DAY)


def _on_days(table: Table, at: ibis.Value, days: float) -> Table:
    """``table`` listed once on each UTC day (column ``day``) that ``[at, at + days)`` touches.

    A window of ``days`` starting anywhere in a day ends at most ``ceil(days)``
    days later, so joined on ``day`` with events keyed by their own
    :func:`_utc_day`, each row meets every event of its window (and some
    outside it, which a range test then drops) instead of every event.
    """
    first = _utc_day(at)
    listed = [table.mutate(day=first + k) for k in range(math.ceil(days) + 1)]
    return ibis.union(*listed, distinct=False)


def _count(cond: ibis.Value) -> ibis.Value:
    return cond.fill_null(False).cast(dt.int64).sum()


def cutoff_end(cutoff: object) -> pd.Timestamp:
    """The exclusive end of the data window of a run date (:func:`bmkt.schema.parse_as_of`).

    Examples
    --------
    >>> cutoff_end("2024-06-30")
    Timestamp('2024-07-01 00:00:00')
    """
    if cutoff is None:
        raise ConfigError("cutoff: a date is required (e.g. '2024-06-30'). Got None.")
    return parse_as_of(cutoff)


def as_of_for_end(end: pd.Timestamp) -> str:
    """A run date whose window (:func:`bmkt.schema.parse_as_of`) ends exactly at ``end``.

    For functions that take an ``as_of`` (engagement, RFM) when the caller
    holds an exclusive end.

    Examples
    --------
    >>> from bmkt.schema import parse_as_of
    >>> parse_as_of(as_of_for_end(pd.Timestamp("2024-07-01")))
    Timestamp('2024-07-01 00:00:00')
    """
    return (end - pd.Timedelta(microseconds=1)).isoformat()


def _machine_settings(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameters of :func:`~bmkt.engagement.flag_machine_opens`, defaults filled in."""
    sig = inspect.signature(flag_machine_opens).parameters
    names = [n for n in sig if n not in ("store", "as_of", "as_frame")]
    merged = {n: sig[n].default for n in names}
    for key, value in (params or {}).items():
        if key not in merged:
            raise ConfigError(
                f"Valid options for 'machine_open_params' are {sorted(merged)}. Got {key!r}."
            )
        merged[key] = value
    return merged


# --------------------------------------------------------------------------- engine query


def _feature_query(
    store: Store,
    points: Table,
    min_end: pd.Timestamp,
    max_end: pd.Timestamp,
    machine: dict,
    ids: tuple[int, int] | None = None,
    sparse: bool = False,
) -> list[Table]:
    """The lazy Ibis expressions of every feature for each ``(customer_id, cutoff)`` point.

    Five tables, each with one row per point ordered by ``cutoff`` then
    ``customer_id`` and the features of one source (orders, web events, email
    deliveries, opens and clicks, campaign responses), run as five queries:
    at a million points each fits DuckDB's memory limit, where one query for
    all the email features spilled (43 s instead of 21 s for the two).

    ``min_end`` and ``max_end`` bound the points' cutoffs: events are filtered
    to what some point can see before they are joined to the points. Written
    for speed on one or two cores, every feature keeping its exact value:

    * window tests compare integer microseconds (``_within``,
      ``_session_gap_us``) instead of fractional days, and "days since" is
      taken from the latest timestamp (the same value: ``_days`` is monotone);
    * distinct counts are counts of first occurrences (first purchase of a
      day, first view or purchase of a category, first human open of an
      email), computed once before the join to the points;
    * opens are counted per point both as a proxy user and not, and the
      point's verdict (from the deliveries query) picks one in :func:`_finish`;
    * the session window reads customer and time only, and the points join
      its marks (session starts, events before a long silence) plus the last
      month of events, not every event;
    * range joins go through an equality key (campaigns listed on each day of
      their response window; carts matched to purchases of the same customer
      within a day) rather than an inequality join over all pairs.

    Several cutoffs in one query (:func:`build_features_before_many`) share
    everything that does not depend on the cutoff. ``ids``, the smallest and
    the largest customer id of the points, filters every per-customer table
    before anything else: a chunk of customers (:func:`build_features_at`
    called chunk by chunk) reads only their events, and Parquet row groups
    outside the range are skipped. With ``sparse`` (the points' customers are
    a small share of those in the range, such as a training sample), the
    tables are also semi-joined with the points' customers first, so that
    sessions and per-email work cover only their events.
    """
    who = points.select("customer_id").distinct()

    def mine(table: Table) -> Table:
        if ids is not None:
            table = table.filter(table.customer_id.between(ids[0], ids[1]))
        return table.semi_join(who, "customer_id") if sparse else table

    cust = mine(store.table("customers")).select("customer_id", "created_at")
    P = points.inner_join(cust, "customer_id")
    P = P.select(P.customer_id, P.cutoff, P.created_at).filter(P.created_at < P.cutoff)
    K = P.select(*_KEYS)

    def at_points(table: Table, time_col: str) -> Table:
        """Rows of ``table`` joined to the points of their customer, before the cutoff."""
        j = K.inner_join(table, "customer_id")
        return j.filter(j[time_col] < j.cutoff)

    # ---- orders
    orders = mine(store.table("orders"))
    orders = orders.filter(orders.ordered_at < max_end)
    o = at_points(orders, "ordered_at")
    buy = o.revenue >= 0
    last90 = _within(o.cutoff, o.ordered_at, 90)
    prev90 = ~last90 & _within(o.cutoff, o.ordered_at, 180)
    order_agg = o.group_by(_KEYS).aggregate(
        n_orders=_count(buy),
        last_purchase_at=o.ordered_at.max(where=buy),
        first_purchase_at=o.ordered_at.min(where=buy),
        purchase_revenue=o.revenue.sum(where=buy),
        total_revenue=o.revenue.sum(),
        orders_last_90d=_count(buy & last90),
        orders_prev_90d=_count(buy & prev90),
        revenue_last_90d=o.revenue.sum(where=last90),
        revenue_prev_90d=o.revenue.sum(where=prev90),
        n_discount_known=_count(buy & o.discount.notnull()),
        n_discounted=_count(buy & (o.discount > 0)),
    )
    order_agg = order_agg.select(
        *_KEYS,
        *[
            c
            for c in order_agg.columns
            if c not in (*_KEYS, "last_purchase_at", "first_purchase_at")
        ],
        recency_days=_days(order_agg.cutoff, order_agg.last_purchase_at),
        T_days=_days(order_agg.cutoff, order_agg.first_purchase_at),
    )

    purchases = orders.filter(orders.revenue >= 0).select(
        "customer_id", "order_id", purchased_at=orders.ordered_at
    )
    # distinct purchase days: a day counts from its first purchase on
    pdays = purchases.group_by(purchases.customer_id, day=purchases.purchased_at.date()).aggregate(
        first_at=purchases.purchased_at.min()
    )
    pd_ = at_points(pdays, "first_at")
    days_agg = pd_.group_by(_KEYS).aggregate(n_purchase_days=pd_.count())

    lines = store.table("order_lines")
    lines = lines.filter(lines.category.notnull())
    pl = lines.inner_join(purchases, "order_id").select(
        "customer_id", "purchased_at", lines.category
    )
    first_bought = pl.group_by("customer_id", "category").aggregate(first_at=pl.purchased_at.min())
    fb = at_points(first_bought, "first_at")
    bought_agg = fb.group_by(_KEYS).aggregate(n_categories_bought=fb.count())

    # ---- web
    web = mine(store.table("web_events"))
    web = web.filter(web.occurred_at < max_end)
    # sessions: the previous event (never a later one), so they are leak-free. The
    # window reads customer and time only; what the points join is its few marks:
    # session starts, and events followed by a long silence (see last visit below)
    visits = web.select("customer_id", "occurred_at")
    order = {"group_by": visits.customer_id, "order_by": visits.occurred_at}
    prev_at = visits.occurred_at.lag().over(**order)
    next_at = visits.occurred_at.lead().over(**order)
    visits = visits.mutate(
        new_session=prev_at.isnull() | (_us(visits.occurred_at, prev_at) >= _session_gap_us()),
        before_silence=next_at.isnull()
        | (_us(next_at, visits.occurred_at) >= int(_SILENCE_DAYS * _US_PER_DAY)),
    )
    marks = visits.filter(visits.new_session | visits.before_silence)
    v = at_points(marks, "occurred_at")
    visit_agg = v.group_by(_KEYS).aggregate(
        sessions_30d=_count(v.new_session & _within(v.cutoff, v.occurred_at, 30)),
        sessions_90d=_count(v.new_session & _within(v.cutoff, v.occurred_at, 90)),
        n_sessions=_count(v.new_session),
        last_silent_at=v.occurred_at.max(where=v.before_silence),
    )
    # the last visit before a cutoff is in the last _RECENT_DAYS (then in `recent`), or
    # it is followed by more than that much silence (then a mark): the later of the two
    recent = web.filter(web.occurred_at >= min_end - pd.Timedelta(days=_RECENT_DAYS))
    w = at_points(recent, "occurred_at")
    w30 = _within(w.cutoff, w.occurred_at, 30)
    et = w.event_type
    web_agg = w.group_by(_KEYS).aggregate(
        page_views_30d=_count((et == "page_view") & w30),
        product_views_30d=_count((et == "product_view") & w30),
        searches_30d=_count((et == "search") & w30),
        cart_adds_30d=_count((et == "add_to_cart") & w30),
        last_recent_at=w.occurred_at.max(),
    )
    views = web.filter((web.event_type == "product_view") & web.category.notnull())
    first_viewed = views.group_by("customer_id", "category").aggregate(
        first_at=views.occurred_at.min()
    )
    fv = at_points(first_viewed, "first_at")
    viewed_agg = fv.group_by(_KEYS).aggregate(n_categories_viewed=fv.count())

    # an add to cart is abandoned without a purchase in the ABANDON_HOURS after it; only
    # adds at least that long before a cutoff are judged, so purchases before max_end do
    adds = recent.filter(recent.event_type == "add_to_cart")
    carts = adds.group_by("customer_id", "occurred_at").aggregate(n_adds=adds.count())
    # (the carts are recent, so are the purchases after them: the join reads only those).
    # A purchase within ABANDON_HOURS of an add falls on one of the few UTC days from the
    # add's day on: an equality join on (customer, day), each cart listed on each such
    # day, then the range -- not every later purchase of the customer (26M pairs at 1M)
    later = purchases.filter(purchases.purchased_at >= min_end - pd.Timedelta(days=_RECENT_DAYS))
    later = later.mutate(day=_utc_day(later.purchased_at))
    cart_days = _on_days(carts, carts.occurred_at, ABANDON_HOURS / 24.0)
    bought = cart_days.inner_join(later, ["customer_id", "day"])
    bought = bought.filter(
        (bought.occurred_at <= bought.purchased_at)
        & (_us(bought.purchased_at, bought.occurred_at) < int(ABANDON_HOURS * _US_PER_HOUR))
    )
    bought = bought.select("customer_id", "occurred_at").distinct()
    bought = bought.mutate(bought=ibis.literal(True))
    carts = carts.left_join(bought, ["customer_id", "occurred_at"]).select(
        carts.customer_id, carts.occurred_at, carts.n_adds, bought=bought.bought.fill_null(False)
    )
    c = K.inner_join(carts, "customer_id")
    c = c.filter(
        ~_within(c.cutoff, c.occurred_at, ABANDON_HOURS / 24.0)
        & _within(c.cutoff, c.occurred_at, 30)
    )
    cart_agg = c.group_by(_KEYS).aggregate(
        abandoned_carts_30d=(c.n_adds * (~c.bought).cast(dt.int64)).sum()
    )

    # ---- email: one row per delivered email, with the machine-open evidence
    ev = mine(store.table("email_events"))
    ev = ev.filter(ev.occurred_at < max_end)
    ekeys = ["customer_id", "campaign_id"]
    # each email's first delivery: kept by a run's shared block (engagement.shared_machine_opens)
    # or aggregated from the events here
    shared_emails = _covering_deliveries(store, max_end, _machine_params(machine))
    if shared_emails is not None:
        emails = mine(shared_emails)
    else:
        dv = ev.filter(ev.event_type == "delivered")
        emails = dv.group_by(ekeys).aggregate(delivered_at=dv.occurred_at.min())
    # labelled once per run inside engagement.shared_machine_opens (also for earlier cutoffs)
    labelled = _covering_labels(store, max_end, _machine_params(machine))
    if labelled is None:
        labelled = labelled_opens(store, as_of_for_end(max_end), **machine)
    labelled = mine(labelled)
    cand = labelled.filter(labelled.is_fast & labelled.machine_open.fill_null(True))
    cand = cand.inner_join(emails, ekeys)  # a fast open needs a delivery (as in engagement)
    # per email with a fast open: the first such open and the email's delivery
    fast = cand.group_by(ekeys).aggregate(
        first_fast_at=cand.occurred_at.min(), delivered_at=cand.delivered_at.min()
    )
    clicks = mine(_email_events_of(store, max_end, ["click"]))
    clicks = clicks.select(*ekeys, click_at=clicks.occurred_at)
    fc = fast.inner_join(clicks, ekeys)
    gap = _days(fc.click_at, fc.first_fast_at) * 86_400.0
    fc = fc.filter((gap >= 0) & (gap <= float(machine["click_window_seconds"])))
    fast_click = fc.group_by(ekeys).aggregate(
        fast_click_at=fc.click_at.min(), delivered_at=fc.delivered_at.min()
    )
    camps = store.table("campaigns").select("campaign_id", "sent_at")
    win = ibis.interval(seconds=int(RESPONSE_WINDOW_DAYS * 86_400))
    em = emails.left_join(camps, "campaign_id").select(emails, camps.sent_at)

    # counted per point apart (the emails delivered before the cutoff; of those, the
    # ones with a fast open, and with a fast click, before it), not joined per email
    # first: that join of every delivered email held two hash tables of all of them
    e = P.inner_join(em, "customer_id")
    e = e.filter(e.delivered_at < e.cutoff)
    delivered_agg = e.group_by(_KEYS).aggregate(
        n_delivered=e.count(),
        delivered_30d=_count(_within(e.cutoff, e.delivered_at, 30)),
        delivered_90d=_count(_within(e.cutoff, e.delivered_at, 90)),
        # delivered emails of the campaigns that count for the response rates (below)
        n_mailed_eligible=_count((e.sent_at >= e.created_at) & (e.sent_at < e.cutoff - win)),
    )
    f = K.inner_join(fast, "customer_id")
    f = f.filter((f.delivered_at < f.cutoff) & (f.first_fast_at < f.cutoff))
    fast_agg = f.group_by(_KEYS).aggregate(n_fast_open_emails=f.count())
    g = K.inner_join(fast_click, "customer_id")
    g = g.filter((g.delivered_at < g.cutoff) & (g.fast_click_at < g.cutoff))
    fast_click_agg = g.group_by(_KEYS).aggregate(n_fast_clicked=g.count())
    d = delivered_agg
    email_agg = d.left_join(fast_agg, _KEYS).left_join(fast_click_agg, _KEYS)
    email_agg = email_agg.select(
        d.customer_id,
        d.cutoff,
        d.n_delivered,
        d.delivered_30d,
        d.delivered_90d,
        n_fast_open_emails=fast_agg.n_fast_open_emails.fill_null(0),
        n_fast_clicked=fast_click_agg.n_fast_clicked.fill_null(0),
        n_mailed_eligible=d.n_mailed_eligible,
    )
    share = email_agg.n_fast_open_emails.cast(dt.float64) / email_agg.n_delivered
    email_agg = email_agg.mutate(
        is_proxy_user=(
            (email_agg.n_delivered >= int(machine["min_delivered"]))
            & (share >= float(machine["min_share"]))
            & (
                email_agg.n_fast_clicked.cast(dt.float64)
                <= float(machine["max_fast_click_share"]) * email_agg.n_fast_open_emails
            )
        )
    )

    # ---- campaign responses: was a campaign followed by a purchase, mailed or not?
    # Campaigns count when sent after signup and RESPONSE_WINDOW_DAYS before the cutoff:
    # a range join of the points with the (few) campaigns, counted per point;
    # responses from purchases joined to the campaigns of the preceding window.
    ce = P.inner_join(camps, [camps.sent_at >= P.created_at, camps.sent_at < P.cutoff - win])
    camp_agg = ce.group_by(_KEYS).aggregate(n_campaigns_eligible=ce.count())
    # purchases in a campaign's window [sent_at, sent_at + window): an equality join on
    # the UTC day (each campaign listed on every day its window touches), then the range
    camp_days = _on_days(camps, camps.sent_at, RESPONSE_WINDOW_DAYS)
    buys = purchases.mutate(day=_utc_day(purchases.purchased_at))
    resp = buys.inner_join(camp_days, "day")
    resp = resp.filter(
        (resp.purchased_at >= resp.sent_at) & (resp.purchased_at < resp.sent_at + win)
    ).select("customer_id", "campaign_id", "sent_at")
    resp = resp.distinct()
    # the delivery of each responded campaign's email: the delivered events of those
    # emails only (a semi join), not every delivered email aggregated (19.5M at 1M)
    if shared_emails is not None:
        mailed = emails
    else:
        dv = ev.filter(ev.event_type == "delivered").semi_join(resp, ekeys)
        mailed = dv.group_by(ekeys).aggregate(delivered_at=dv.occurred_at.min())
    resp = resp.left_join(mailed, ekeys).select(
        resp.customer_id, resp.sent_at, mailed_at=mailed.delivered_at
    )
    r = P.inner_join(resp, "customer_id")
    r = r.filter((r.sent_at >= r.created_at) & (r.sent_at < r.cutoff - win))
    resp_agg = r.group_by(_KEYS).aggregate(
        n_responded=r.count(),
        n_mailed_responded=_count(r.mailed_at < r.cutoff),
    )

    # opens: the per-event rules (flag, user agent) hold at any cutoff; the timing rule
    # uses the proxy verdict at the point's cutoff. Counted both ways per point (as if a
    # proxy user or not), the verdict picks one after the aggregation.
    ruled = labelled.rule.isin(["flag", "user_agent"]).fill_null(False)
    opens = labelled.select(
        *ekeys,
        "occurred_at",
        ruled_machine=ruled & labelled.is_machine,  # machine whatever the verdict
        timed_machine=~ruled & labelled.is_fast,  # machine for a proxy user
    )
    op = at_points(opens, "occurred_at")
    o30 = _within(op.cutoff, op.occurred_at, 30)
    o90 = _within(op.cutoff, op.occurred_at, 90)
    human_np = ~op.ruled_machine
    human_p = ~op.ruled_machine & ~op.timed_machine
    open_agg = op.group_by(_KEYS).aggregate(
        n_opens=op.count(),
        n_opens_30d=_count(o30),
        n_opens_90d=_count(o90),
        n_ruled=_count(op.ruled_machine),
        n_ruled_30d=_count(op.ruled_machine & o30),
        n_ruled_90d=_count(op.ruled_machine & o90),
        n_timed=_count(op.timed_machine),
        n_timed_30d=_count(op.timed_machine & o30),
        n_timed_90d=_count(op.timed_machine & o90),
        last_human_np=op.occurred_at.max(where=human_np),
        last_human_p=op.occurred_at.max(where=human_p),
    )
    # emails with a human open: each email's first human open, both ways
    oe = opens.filter(opens.campaign_id.notnull())
    first_opens = oe.group_by(ekeys).aggregate(
        first_np=oe.occurred_at.min(where=~oe.ruled_machine),
        first_p=oe.occurred_at.min(where=~oe.ruled_machine & ~oe.timed_machine),
    )
    fo = K.inner_join(first_opens, "customer_id")
    opened_agg = fo.group_by(_KEYS).aggregate(
        n_opened_np=_count(fo.first_np < fo.cutoff),
        n_opened_p=_count(fo.first_p < fo.cutoff),
    )
    # both ways per point; the proxy verdict (the email query's) picks one in _finish
    g = open_agg.left_join(opened_agg, _KEYS).select(
        open_agg, opened_agg.n_opened_np, opened_agg.n_opened_p
    )
    open_agg = g.select(
        *_KEYS,
        *[c for c in g.columns if c.startswith(("n_opens", "n_ruled", "n_timed"))],
        n_opened_np=g.n_opened_np.fill_null(0),
        n_opened_p=g.n_opened_p.fill_null(0),
        days_since_human_np=_days(g.cutoff, g.last_human_np),
        days_since_human_p=_days(g.cutoff, g.last_human_p),
    )

    act = mine(_email_events_of(store, max_end, ["click", "unsubscribe", "complaint"]))
    a = at_points(act, "occurred_at")
    is_click = a.event_type == "click"
    per_act = a.group_by([*_KEYS, "campaign_id"]).aggregate(
        n_clicks=_count(is_click),
        clicks_30d=_count(is_click & _within(a.cutoff, a.occurred_at, 30)),
        clicks_90d=_count(is_click & _within(a.cutoff, a.occurred_at, 90)),
        last_click_at=a.occurred_at.max(where=is_click),
        n_opt_outs=_count(~is_click),
    )
    click_agg = per_act.group_by(_KEYS).aggregate(
        n_clicks=per_act.n_clicks.sum(),
        clicks_30d=per_act.clicks_30d.sum(),
        clicks_90d=per_act.clicks_90d.sum(),
        n_clicked_emails=_count((per_act.n_clicks > 0) & per_act.campaign_id.notnull()),
        last_click_at=per_act.last_click_at.max(),
        email_opted_out=per_act.n_opt_outs.sum() > 0,
    )
    click_agg = click_agg.select(
        *[c for c in click_agg.columns if c != "last_click_at"],
        days_since_click=_days(click_agg.cutoff, click_agg.last_click_at),
    )

    # ---- one row per point; counts filled in the engine (nothing happened = 0). Five
    # queries, one per source, each ordered by point: each needs a fraction of the memory
    # of one query, which spilled to disk at a million points within the 4 GB default limit
    base = P.mutate(tenure_days=_days(P.cutoff, P.created_at)).drop("created_at")
    groups = (
        (order_agg, days_agg, bought_agg),  # orders and order lines
        (visit_agg, web_agg, viewed_agg, cart_agg),  # web events (carts: and orders)
        (email_agg,),  # email deliveries, and the proxy verdict
        (open_agg, click_agg),  # opens (both ways) and clicks
        (camp_agg, resp_agg),  # campaign responses (orders and deliveries)
    )
    parts = []
    for k, aggs in enumerate(groups):
        out = base if k == 0 else base.select(*_KEYS)
        for agg in aggs:
            cols = [c for c in agg.columns if c not in _KEYS]
            out = out.left_join(agg, _KEYS).select(out, *[agg[c] for c in cols])
        if "last_recent_at" in out.columns:
            last_a, last_b = out.last_recent_at, out.last_silent_at
            last_visit = ibis.cases(
                (last_a.isnull(), last_b),
                (last_b.isnull(), last_a),
                (last_a >= last_b, last_a),
                else_=last_b,
            )
            out = out.mutate(days_since_last_visit=_days(out.cutoff, last_visit))
            out = out.drop("last_recent_at", "last_silent_at")
        schema = out.schema()
        out = out.select(
            *_KEYS,
            **{
                c: out[c] if c in _NULL_AGGS | _BOTH_WAYS_NULL else out[c].fill_null(_zero(t))
                for c, t in schema.items()
                if c not in _KEYS
            },
        )
        # in the order of the frames built from them: no re-sort in pandas
        parts.append(out.order_by(["cutoff", "customer_id"]))
    return parts


def _zero(t: dt.DataType) -> Any:
    """Fill of an aggregate over no rows: 0 for counts and sums, False for flags."""
    if t.is_boolean():
        return False
    return 0.0 if t.is_floating() else 0


#: Aggregates whose null means "never" and stays null (NaN in pandas).
_NULL_AGGS = frozenset(
    {
        "recency_days",
        "T_days",
        "days_since_last_visit",
        "days_since_human_open",
        "days_since_click",
    }
)


#: The days since the last human open, counted as if a proxy user and not (null: never).
_BOTH_WAYS_NULL = frozenset({"days_since_human_p", "days_since_human_np"})


# --------------------------------------------------------------------------- pandas edge


#: Count features as the engine returns them (integers, 0 when nothing happened).
_COUNTS = (
    "n_orders",
    "n_purchase_days",
    "orders_last_90d",
    "orders_prev_90d",
    "n_discount_known",
    "n_discounted",
    "n_categories_bought",
    "n_categories_viewed",
    "page_views_30d",
    "product_views_30d",
    "searches_30d",
    "cart_adds_30d",
    "abandoned_carts_30d",
    "sessions_30d",
    "sessions_90d",
    "n_sessions",
    "n_delivered",
    "delivered_30d",
    "delivered_90d",
    "n_campaigns_eligible",
    "n_mailed_eligible",
    "n_responded",
    "n_mailed_responded",
    "n_human_opens",
    "human_opens_30d",
    "human_opens_90d",
    "n_machine_opens",
    "n_opened_emails",
    "n_clicks",
    "clicks_30d",
    "clicks_90d",
    "n_clicked_emails",
)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as floats, NaN where ``den`` is not > 0 (or either is NaN)."""
    num = num.astype("float64", copy=False)
    den = den.astype("float64", copy=False)
    ok = den > 0
    out = np.full(len(num), np.nan)
    np.divide(num, den, out=out, where=ok)
    return out


@overload
def _finish(raw: pa.Table, split: Literal[False] = False) -> pd.DataFrame: ...
@overload
def _finish(raw: pa.Table, split: Literal[True]) -> dict[pd.Timestamp, pd.DataFrame]: ...
@overload
def _finish(
    raw: pa.Table, split: bool = False
) -> pd.DataFrame | dict[pd.Timestamp, pd.DataFrame]: ...


def _finish(raw: pa.Table, split: bool = False) -> pd.DataFrame | dict[pd.Timestamp, pd.DataFrame]:
    """Derived ratios, fills and dtypes of the per-point rows (see :data:`FEATURES`).

    Works on the engine's Arrow result column by column in numpy and builds
    each frame once, in one copy, through Arrow (pandas column assignments,
    re-sorts and block consolidation of the wide frame cost seconds at a
    million points, most of it in page faults of fresh memory). The engine
    returns the rows sorted by ``cutoff`` then ``customer_id``; other orders
    are sorted here.

    Returns the frame of :func:`build_features_at` (RangeIndex), or with
    ``split`` one frame per cutoff (ascending): each indexed by ``customer_id``
    (sorted), with the columns of :data:`FEATURES` and ``attrs["cutoff"]``
    (ISO text).
    """

    def column(name: str, fill: Any = None) -> np.ndarray:
        if name in picked:
            return picked[name]
        a = raw.column(name)
        if fill is not None and a.null_count:
            a = pc.fill_null(a, fill)
        return a.to_numpy()

    # the opens were counted both ways: the point's proxy verdict picks one
    picked: dict[str, np.ndarray] = {}
    proxy = column("is_proxy_user", False).astype(bool)

    def pick(if_proxy: str, otherwise: str, fill: Any = None) -> np.ndarray:
        return np.where(proxy, column(if_proxy, fill), column(otherwise, fill))

    for window in ("", "_30d", "_90d"):
        n_opens = column(f"n_opens{window}", 0).astype("int64", copy=False)
        n_timed = column(f"n_timed{window}", 0).astype("int64", copy=False)
        n_machine = column(f"n_ruled{window}", 0) + np.where(proxy, n_timed, 0)
        human = "n_human_opens" if not window else f"human_opens{window}"
        picked[human] = n_opens - n_machine
        if not window:
            picked["n_machine_opens"] = n_machine
    picked["n_opened_emails"] = pick("n_opened_p", "n_opened_np", 0)
    picked["days_since_human_open"] = pick("days_since_human_p", "days_since_human_np")

    c: dict[str, np.ndarray] = {}
    for name in _COUNTS:
        c[name] = column(name, 0).astype("int64", copy=False)
    # revenue sums to a millionth: the engine adds in parallel, in no fixed order, and the
    # last bits of a sum would differ from run to run -- and so would the models' trees
    for name in ("total_revenue", "revenue_last_90d", "revenue_prev_90d", "purchase_revenue"):
        c[name] = np.round(column(name, 0.0).astype("float64", copy=False), REVENUE_DECIMALS)
    for name in ("is_proxy_user", "email_opted_out"):
        c[name] = column(name, False).astype("int64")
    for name in _NULL_AGGS:
        c[name] = column(name).astype("float64", copy=False)
    c["tenure_days"] = column("tenure_days").astype("float64", copy=False)
    c["frequency"] = np.maximum(c["n_purchase_days"] - 1, 0)
    c["purchase_span_days"] = c["T_days"] - c["recency_days"]
    c["mean_gap_days"] = _ratio(c["purchase_span_days"], c["frequency"])
    c["recency_gap_ratio"] = _ratio(c["recency_days"], c["mean_gap_days"])
    c["monetary"] = _ratio(c["purchase_revenue"], c["n_orders"])
    c["order_trend_90d"] = c["orders_last_90d"] - c["orders_prev_90d"]
    c["revenue_trend_90d"] = c["revenue_last_90d"] - c["revenue_prev_90d"]
    c["discount_share"] = _ratio(c["n_discounted"], c["n_discount_known"])
    c["human_open_rate"] = _ratio(c["n_opened_emails"], c["n_delivered"])
    c["click_rate"] = _ratio(c["n_clicked_emails"], c["n_delivered"])
    c["email_order_rate"] = _ratio(c["n_mailed_responded"], c["n_mailed_eligible"])
    c["unmailed_order_rate"] = _ratio(
        c["n_responded"] - c["n_mailed_responded"],
        c["n_campaigns_eligible"] - c["n_mailed_eligible"],
    )
    c["email_lift_history"] = c["email_order_rate"] - c["unmailed_order_rate"]
    c = {name: c[name] for name in FEATURES}
    ids = column("customer_id").astype("int64", copy=False)
    cutoff = column("cutoff").astype("datetime64[ns]")
    if not _is_sorted(cutoff, ids):
        order = np.lexsort((ids, cutoff))
        ids, cutoff = ids[order], cutoff[order]
        c = {name: values[order] for name, values in c.items()}
    if not split:
        return _frame({"customer_id": ids, "cutoff": cutoff, **c})
    starts = np.concatenate([[0], np.flatnonzero(cutoff[1:] != cutoff[:-1]) + 1, [len(ids)]])
    frames: dict[pd.Timestamp, pd.DataFrame] = {}
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if a == b:
            continue
        X = _frame({name: values[a:b] for name, values in c.items()})
        X.index = pd.Index(ids[a:b], name="customer_id")
        stamp = pd.Timestamp(cutoff[a])
        X.attrs["cutoff"] = stamp.isoformat()
        frames[stamp] = X
    return frames


def _is_sorted(cutoff: np.ndarray, ids: np.ndarray) -> bool:
    """Whether the points run by ``cutoff`` then ``customer_id``, both ascending."""
    c0, c1 = cutoff[:-1], cutoff[1:]
    return bool(np.all((c1 > c0) | ((c1 == c0) & (ids[1:] >= ids[:-1]))))


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame of numpy columns, filled in one copy (by Arrow, not pandas' consolidation)."""
    return pa.table(columns).to_pandas()


def _run(
    store: Store,
    pts: Table,
    min_end: pd.Timestamp,
    max_end: pd.Timestamp,
    machine: dict,
    ids: tuple[int, int] | None = None,
    sparse: bool = False,
    split: bool = False,
) -> pd.DataFrame | dict[pd.Timestamp, pd.DataFrame]:
    """Execute the feature query for the points ``pts`` and finish the frame in pandas.

    ``min_end`` and ``max_end`` are the earliest and the latest cutoff of the
    points, ``ids`` their smallest and largest customer id (when known);
    ``sparse`` as in :func:`_feature_query`; ``split`` as in :func:`_finish`.
    """
    started = time.perf_counter()
    pts = pts.select(
        customer_id=pts.customer_id.cast(dt.int64), cutoff=pts.cutoff.cast(dt.Timestamp())
    )
    # through Arrow: per-point rows, numeric columns (faster than the generic conversion)
    parts = [
        q.to_pyarrow() for q in _feature_query(store, pts, min_end, max_end, machine, ids, sparse)
    ]
    for part in parts[1:]:  # the same points in the same order (left joins onto the points)
        for key in _KEYS:
            if not part.column(key).equals(parts[0].column(key)):
                raise RuntimeError(f"feature query parts differ in their points ({key})")
    columns = {name: part.column(name) for part in parts for name in part.column_names}
    n_points = len(parts[0])
    out = _finish(pa.table(columns), split)
    log.info(
        "features for %d points (%d cutoffs) in %.2fs",
        n_points,
        len(out) if split else out["cutoff"].nunique(),
        time.perf_counter() - started,
    )
    return out


def _points_frame(points: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(points, pd.DataFrame):
        raise ConfigError(f"points: expected a pandas DataFrame, got {type(points).__name__}.")
    missing = [c for c in ("customer_id", "cutoff") if c not in points.columns]
    if missing:
        raise data_problem(
            "points", missing[0], len(points), "lack required column(s) "
            f"{missing}; columns present", [str(c) for c in points.columns]
        )  # fmt: skip
    cutoff = pd.to_datetime(points["cutoff"])
    if isinstance(cutoff.dtype, pd.DatetimeTZDtype):
        cutoff = cutoff.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = pd.DataFrame(
        {
            "customer_id": pd.to_numeric(points["customer_id"]).to_numpy(),
            "cutoff": cutoff.astype("datetime64[us]").to_numpy(),
        }
    )
    bad = frame.isna().any(axis=1)
    if bad.any():
        raise data_problem(
            "points", None, int(bad.sum()), "have a null customer_id or cutoff",
            list(points.index[bad.to_numpy()][:5]),
        )  # fmt: skip
    return frame.drop_duplicates().reset_index(drop=True)


def build_features_at(
    store: Any,
    points: pd.DataFrame,
    *,
    machine_open_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Features of many ``(customer_id, cutoff)`` points in one engine query.

    Each point sees only the events strictly before its own cutoff, so a
    campaign's audience can be described at the campaign's send time for all
    campaigns at once (:mod:`bmkt.uplift`).

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    points : pandas.DataFrame
        Columns ``customer_id`` and ``cutoff``: the exclusive end of the data
        each point may see (naive UTC; zone-aware values are converted).
        Duplicate points are computed once.
    machine_open_params : dict, optional
        Keyword arguments of :func:`bmkt.engagement.flag_machine_opens`.

    Returns
    -------
    pandas.DataFrame
        One row per distinct point whose customer signed up before its cutoff
        (other points are dropped and counted in the log): ``customer_id``,
        ``cutoff`` and every column of :data:`FEATURES`, sorted by
        ``cutoff`` and ``customer_id``, with a RangeIndex.

    Raises
    ------
    DataError
        If ``points`` lacks a column or has nulls.
    ConfigError
        On unknown ``machine_open_params``.
    """
    return _features_at(store, points, machine_open_params)


@overload
def _features_at(
    store: Any,
    points: pd.DataFrame,
    machine_open_params: Mapping[str, Any] | None = None,
    split: Literal[False] = False,
) -> pd.DataFrame: ...
@overload
def _features_at(
    store: Any,
    points: pd.DataFrame,
    machine_open_params: Mapping[str, Any] | None = None,
    *,
    split: Literal[True],
) -> dict[pd.Timestamp, pd.DataFrame]: ...
@overload
def _features_at(
    store: Any,
    points: pd.DataFrame,
    machine_open_params: Mapping[str, Any] | None = None,
    split: bool = False,
) -> pd.DataFrame | dict[pd.Timestamp, pd.DataFrame]: ...


def _features_at(
    store: Any,
    points: pd.DataFrame,
    machine_open_params: Mapping[str, Any] | None = None,
    split: bool = False,
) -> pd.DataFrame | dict[pd.Timestamp, pd.DataFrame]:
    """:func:`build_features_at`; with ``split``, one frame per cutoff (see :func:`_finish`)."""
    store = open_store(store)
    frame = _points_frame(points)
    machine = _machine_settings(machine_open_params)
    if frame.empty:
        return {} if split else pd.DataFrame(columns=["customer_id", "cutoff", *FEATURES])
    ids = (int(frame["customer_id"].min()), int(frame["customer_id"].max()))
    customers = store.table("customers")
    inside = customers.customer_id.between(*ids)
    # customers who sign up after the last cutoff have no point (nor features): they
    # neither count for the sparse test nor keep the range from holding everyone
    last = pd.Timestamp(frame["cutoff"].max()).to_pydatetime()
    known = customers.created_at < ibis.literal(last, type=dt.Timestamp())
    counts = engine.to_pandas(
        customers.aggregate(n=_count(known), n_in_range=_count(inside & known))
    )
    n_all, n_in_range = (int(counts[c].iloc[0] or 0) for c in ("n", "n_in_range"))
    sparse = frame["customer_id"].nunique() < SPARSE_SHARE * n_in_range
    if n_in_range == n_all:  # the range holds everyone: its filter on every table reads all
        ids = None  # and costs (~8 s of the 1M-customer build), so it is left out
    name = f"_bmkt_points_{uuid.uuid4().hex}"
    pts = engine.register_table(store.con, name, ibis.memtable(frame))
    try:
        out = _run(
            store,
            pts,
            pd.Timestamp(frame["cutoff"].min()),
            pd.Timestamp(frame["cutoff"].max()),
            machine,
            ids,
            sparse,
            split,
        )
    finally:
        store.con.drop_table(name, force=True)
    dropped = len(frame) - (sum(map(len, out.values())) if split else len(out))
    if dropped:
        log.info("build_features_at: %d point(s) before the customer's signup left out", dropped)
    return out


def build_features(
    store: Any,
    cutoff: object,
    *,
    machine_open_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row of behavioural features per customer who signed up before the cutoff.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    cutoff : date-like
        Run date: only data before the end of its window
        (:func:`bmkt.schema.parse_as_of`) is used; ``"2024-06-30"`` sees
        everything through 2024-06-30 23:59:59.
    machine_open_params : dict, optional
        Keyword arguments of :func:`bmkt.engagement.flag_machine_opens`.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``customer_id`` (sorted); the columns of :data:`FEATURES`
        in order. ``attrs["cutoff"]`` holds the exclusive end (ISO text).

    Raises
    ------
    DataError
        If no customer signed up before the cutoff (no history).
    ConfigError
        If ``cutoff`` cannot be parsed.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> X = build_features(simulate_store(n_customers=300, days=120, seed=1), "2024-05-31")
    >>> X.attrs["cutoff"]
    '2024-06-01T00:00:00'
    """
    return build_features_before(store, cutoff_end(cutoff), machine_open_params=machine_open_params)


def build_features_before(
    store: Any,
    end: pd.Timestamp,
    *,
    machine_open_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """:func:`build_features` from data strictly before the timestamp ``end``.

    ``end`` is taken as it is (no run-date rule): ``2024-07-01 00:00`` sees
    everything through 2024-06-30. The models use it for the cutoffs of a
    backtest (``as_of - horizon``), which are exclusive ends already.
    """
    frames = build_features_before_many(store, [end], machine_open_params=machine_open_params)
    return next(iter(frames.values()))


def build_features_before_many(
    store: Any,
    ends: Sequence[Any],
    *,
    machine_open_params: Mapping[str, Any] | None = None,
) -> dict[pd.Timestamp, pd.DataFrame]:
    """:func:`build_features_before` at several ends, in one engine query.

    Each frame is the one :func:`build_features_before` returns for its end;
    what does not depend on the cutoff (sessions, machine-open evidence,
    campaign responses) is computed once for all of them. Scoring trains its
    churn and purchase models and scores everyone from one call.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    ends : sequence of timestamps
        Exclusive ends (no run-date rule); duplicates are computed once.
    machine_open_params : dict, optional
        Keyword arguments of :func:`bmkt.engagement.flag_machine_opens`.

    Returns
    -------
    dict
        Each distinct end (a naive UTC :class:`pandas.Timestamp`, ascending)
        -> its feature frame, indexed by ``customer_id`` (sorted), with
        ``attrs["cutoff"]``.

    Raises
    ------
    DataError
        If no customer signed up before the earliest end.
    ConfigError
        If ``ends`` is empty.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> store = simulate_store(n_customers=300, days=120, seed=1)
    >>> frames = build_features_before_many(store, ["2024-06-01", "2024-07-01"])
    >>> [X.attrs["cutoff"] for X in frames.values()]
    ['2024-06-01T00:00:00', '2024-07-01T00:00:00']
    """
    store = open_store(store)
    stamps = []
    for end in ends:
        end = pd.Timestamp(end)
        if end.tzinfo is not None:
            end = end.tz_convert("UTC").tz_localize(None)
        stamps.append(end)
    if not stamps:
        raise ConfigError("ends: at least one cutoff is required. Got none.")
    stamps = sorted(set(stamps))
    first_end = stamps[0]
    customers = store.table("customers")
    stats = engine.to_pandas(
        customers.aggregate(
            n=customers.count(),
            n_known=_count(customers.created_at < first_end),
            first=customers.created_at.min(),
        )
    ).iloc[0]
    if int(stats["n"]) == 0:
        raise DataError("customers: table is empty (0 rows); no history to build features from.")
    if int(stats["n_known"] or 0) == 0:
        raise DataError(
            f"customers.created_at: all {int(stats['n'])} rows signed up on or after the cutoff "
            f"{first_end} (first on {stats['first']}); there is no history before the cutoff."
        )
    parts = [
        customers.filter(customers.created_at < end).select(
            "customer_id", cutoff=ibis.literal(end.to_pydatetime(), type=dt.Timestamp())
        )
        for end in stamps
    ]
    pts = parts[0] if len(parts) == 1 else ibis.union(*parts, distinct=False)
    # every cutoff has rows: the customers of the earliest are known at the later ones
    return _run(
        store, pts, stamps[0], stamps[-1], _machine_settings(machine_open_params), split=True
    )
