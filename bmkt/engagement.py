"""Email engagement, machine opens, send times and affinities per customer.

Every public function takes a store (anything :func:`bmkt.io.open_store`
accepts) and a run date ``as_of``; events at or after the end of the ``as_of``
window (:func:`bmkt.schema.parse_as_of`) are ignored, and only customers
created before it are scored. The heavy lifting (joins, aggregation over
event tables that may hold tens of millions of rows, time-zone conversion)
is one Ibis expression per function, executed by the store's engine
(DuckDB by default, or Spark; the time-zone conversion is the one engine
function called by name, chosen per backend by :func:`bmkt.engine.wall_time`);
only the per-customer result reaches pandas: one row per customer, indexed by
``customer_id`` (and, before it, the few distinct user agents of the opens,
matched once each). Customers created after the window end do not exist yet at
``as_of`` and are left out; an ``as_of`` before every customer is a
:class:`~bmkt.errors.DataError`.

Labelling the opens (below) is the costliest part of :func:`engagement_scores`,
:func:`preferred_send_time` and :func:`machine_open_customers`; run several of
them inside :func:`shared_machine_opens` to label the opens once.

Machine opens
-------------
Email opens lie. Apple Mail Privacy Protection (MPP) and similar proxies
fetch every message's images on delivery, so a tracking-pixel "open" arrives
seconds after each delivery whether or not a person ever reads the mail.
:func:`flag_machine_opens` labels every open, by the first rule that applies:

1. ``flag`` -- the ESP's ``email_events.machine_open`` where it is not null
   (``True`` machine, ``False`` human).
2. ``user_agent`` -- the open's user agent matches one of
   :data:`PROXY_USER_AGENT_PATTERNS` (machine). The list is conservative:
   it holds only agents no person reads mail with (a bare ``Mozilla/5.0``,
   mail-security scanners, HTTP libraries, headless browsers, bots). It does
   **not** hold Apple's WebKit agent (``Mozilla/5.0 (Macintosh; ...)
   AppleWebKit/605.1.15 (KHTML, like Gecko)`` without ``Safari``/``Version``):
   MPP's proxy uses it, but so does Apple Mail when a person opens a message,
   so it proves nothing on its own. Nor does it hold ``GoogleImageProxy`` or
   ``YahooMailProxy``: those proxies fetch images when the recipient opens
   the message, so their opens are human opens.
3. ``timing`` -- the customer shows the proxy pattern (*proxy user*): on at
   least ``min_share`` of their (at least ``min_delivered``) delivered emails
   an open arrived within ``max_delay_seconds`` of delivery, either side
   for clock skew (*fast open*; the delivery is the email's first
   ``delivered`` event, its ``sent`` event when none was recorded),
   and at most ``max_fast_click_share`` (default: none) of those fast opens
   was followed by a click on the same email within ``click_window_seconds``
   (a person who opens the instant a mail lands and clicks right away is
   reading, not a proxy). The fast opens of a proxy user are machine opens;
   their other opens -- e.g. one hours later followed by a click -- stay
   human.
4. ``none`` -- anything else is a human open. A single fast open of a
   customer who usually opens hours later is human: one fast open is not the
   pattern.

Machine opens are left out of engagement scores, open rates and send-time
estimates by default (``include_machine_opens=False``) and counted
separately (``n_machine_opens``).

Engagement
----------
:func:`engagement_scores` scores recency-weighted human engagement:

.. math::

    s = \\sum_{e \\in \\text{emails}} w_o 2^{-a_o(e)/h}\\,[\\text{opened}]
        + w_c 2^{-a_c(e)/h}\\,[\\text{clicked}]

where :math:`a_o(e)` and :math:`a_c(e)` are the ages in days (at the end of
the window) of the first human open and the first click of email ``e``,
:math:`h` the half-life in days, :math:`w_o = 1` and :math:`w_c = 3` by
default (a click is a deliberate act; an open may be a glance at a preview
pane). Each email counts once per kind however often it was re-opened. The
state is read from the age of the last human open or click (see
:data:`ENGAGEMENT_STATES`).

References
----------
.. [1] Apple, "Mail Privacy Protection", Apple Platform Security (2021).
.. [2] Fisher, N. I. *Statistical Analysis of Circular Data*. Cambridge
   University Press, 1993 (mean resultant length, circular statistics).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import duckdb
import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pandas as pd
from ibis.expr.types import Table

from bmkt import engine
from bmkt.errors import ConfigError, DataError
from bmkt.io import Store, open_store
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = [
    "ENGAGEMENT_STATES",
    "PROXY_USER_AGENT_PATTERNS",
    "flag_machine_opens",
    "labelled_opens",
    "machine_open_customers",
    "shared_machine_opens",
    "engagement_scores",
    "preferred_send_time",
    "category_affinity",
    "discount_affinity",
    "channel_preference",
]

#: Engagement states, from the age ``a`` (days, at the end of the window) of
#: the last human open or click: ``active`` when ``a <= active_days`` (30),
#: ``lapsing`` when ``active_days < a <= dormant_days`` (90), ``dormant``
#: when ``a > dormant_days``, ``never_engaged`` with no human open or click
#: in the window at all. With ``as_of="2024-06-30"`` (window end
#: 2024-07-01 00:00) an engagement on 2024-06-01 00:00 or later is active.
ENGAGEMENT_STATES = ("active", "lapsing", "dormant", "never_engaged")

#: Regular expressions (matched anywhere in the trimmed, lower-cased user agent) of
#: agents that never belong to a person reading mail. Conservative on purpose;
#: see the module docstring for what is deliberately left out.
PROXY_USER_AGENT_PATTERNS: dict[str, str] = {
    r"^mozilla/5\.0$": "a bare 'Mozilla/5.0' token: image prefetch proxies (Apple MPP fetches)",
    r"barracuda|mimecast|proofpoint|messagelabs|symantec|forcepoint|trendmicro|"
    r"trend micro|sophos|fireeye|ironport": "mail-security gateways that prefetch content",
    r"python-requests|python-urllib|aiohttp|curl/|wget/|go-http-client|java/|"
    r"libwww-perl|apache-httpclient": "HTTP libraries",
    r"headlesschrome|phantomjs|puppeteer|playwright": "headless browsers",
    r"\bbot\b|bot/|crawler|spider": "bots and crawlers",
}

_MACHINE_DEFAULTS: dict[str, Any] = {
    "max_delay_seconds": 10.0,
    "min_share": 0.8,
    "min_delivered": 3,
    "click_window_seconds": 60.0,
    "max_fast_click_share": 0.0,
    "user_agent_patterns": None,
}


# --------------------------------------------------------------------------- engine helpers


_DAY_US = 86_400_000_000


def _local_clock(t: Table, backend: str) -> Table:
    """Add ``frac_hour`` (0 <= h < 24) and ``weekday`` (0=Mon) on the local clock.

    ``t`` has a naive-UTC ``ts`` and an IANA ``zone``; ``backend`` is the
    name of the engine that runs it (:func:`bmkt.engine.wall_time`). The
    zone's UTC offset is computed by the engine once per distinct (zone, UTC
    hour) rather than per event -- offsets only change on whole UTC hours in
    practice (DST switches of zones with half- or quarter-hour offsets
    included) -- and the local clock follows with integer arithmetic.
    """
    t = engine.reuse(t.mutate(_hour_utc=t.ts.truncate("h")), backend)
    pairs = t.select("zone", "_hour_utc").distinct()
    pairs = pairs.mutate(
        _offset_us=engine.wall_time(pairs._hour_utc, pairs.zone, backend).delta(
            pairs._hour_utc, unit="microsecond"
        )
    )
    j = t.inner_join(pairs, ["zone", "_hour_utc"])
    local_us = engine.epoch_us(j.ts) + j._offset_us
    day = ibis.literal(_DAY_US, type=dt.int64)
    in_day = ((local_us % day) + day) % day
    day_number = (local_us.cast(dt.float64) / float(_DAY_US)).floor().cast(dt.int64)
    return j.mutate(
        frac_hour=in_day.cast(dt.float64) / 3_600e6,
        weekday=(((day_number + 3) % 7) + 7) % 7,  # 1970-01-01 was a Thursday
    ).drop("_hour_utc", "_offset_us")


def _seconds_between(later: ibis.Value, earlier: ibis.Value) -> ibis.Value:
    return later.delta(earlier, unit="microsecond").cast(dt.float64) / 1e6


def _age_days(ts: ibis.Value, end: pd.Timestamp) -> ibis.Value:
    """Days from ``ts`` to the (exclusive) window end."""
    return _ts_literal(end).delta(ts, unit="microsecond").cast(dt.float64) / 86_400e6


def _ts(col: ibis.Value) -> ibis.Value:
    """One timestamp type for set operations (sources differ in declared precision)."""
    return col.cast(dt.Timestamp())


def _ts_literal(ts: pd.Timestamp) -> ibis.Value:
    return ibis.literal(ts.to_pydatetime(), type=dt.Timestamp())


def _execute(expr: Table) -> pd.DataFrame:
    return engine.to_pandas(expr)


# --------------------------------------------------------------------------- validation


def _window_end(as_of: object) -> pd.Timestamp:
    if as_of is None:
        raise ConfigError("as_of: a run date is required (e.g. '2024-06-30'). Got None.")
    return parse_as_of(as_of)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, int | float) and not isinstance(value, bool) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a number {bound}. Got {value!r}.")


def _share(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 1):
        raise ConfigError(f"{name} must be a share between 0 and 1. Got {value!r}.")


def _machine_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(_MACHINE_DEFAULTS)
    for key, value in (params or {}).items():
        if key not in _MACHINE_DEFAULTS:
            raise ConfigError(
                f"Valid options for 'machine_open_params' are {sorted(_MACHINE_DEFAULTS)}. "
                f"Got {key!r}."
            )
        merged[key] = value
    _positive("max_delay_seconds", merged["max_delay_seconds"])
    _share("min_share", merged["min_share"])
    _positive("min_delivered", merged["min_delivered"])
    _positive("click_window_seconds", merged["click_window_seconds"], allow_zero=True)
    _share("max_fast_click_share", merged["max_fast_click_share"])
    patterns = merged["user_agent_patterns"]
    if patterns is None:
        patterns = list(PROXY_USER_AGENT_PATTERNS)
    elif isinstance(patterns, str):
        raise ConfigError(
            f"user_agent_patterns must be a list of regular expressions. Got {patterns!r}."
        )
    checker = None  # one connection for all patterns: opening one costs ~30 ms
    for p in patterns:
        if not isinstance(p, str):
            raise ConfigError(f"user_agent_patterns: expected text patterns. Got {p!r}.")
        checker = checker or duckdb.connect()
        try:  # the engine's dialect (RE2: no look-arounds or back-references)
            checker.execute("SELECT regexp_matches('', ?)", [p])
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0]
            raise ConfigError(
                f"user_agent_patterns: invalid regular expression {p!r} ({msg})."
            ) from None
    merged["user_agent_patterns"] = list(patterns)
    return merged


def _customers_at(store: Store, end: pd.Timestamp) -> Table:
    """Customers created before the window end; a DataError when there are none."""
    customers = store.table("customers")
    known = customers.filter(customers.created_at < _ts_literal(end))
    counts = _execute(
        customers.aggregate(
            n=customers.count(),
            n_known=(customers.created_at < _ts_literal(end)).sum(),
            first=customers.created_at.min(),
        )
    ).iloc[0]
    if int(counts["n"]) == 0:
        raise DataError("customers: table is empty (0 rows); nothing to score.")
    if int(counts["n_known"] or 0) == 0:
        raise DataError(
            f"customers.created_at: as_of window ends {end} but all {int(counts['n'])} rows "
            f"were created later (first on {counts['first']}); as_of is before all history."
        )
    return known


def _email_events(store: Store, end: pd.Timestamp) -> Table:
    ev = store.table("email_events")
    return ev.filter(ev.occurred_at < _ts_literal(end))


#: Email events few enough to be kept by a :func:`shared_machine_opens` block
#: (about 1% of the events): clicks and opt-outs are read by the machine-open
#: evidence, the engagement scores, the send times and the features, and each
#: read of the event files scans the type of every event to find them.
_RARE_EMAIL_EVENTS = ("click", "unsubscribe", "complaint")

#: Most email events (all types, the whole store) for which a
#: :func:`shared_machine_opens` block keeps each email's first send and
#: delivery (at 50M events, 20M emails and 0.6 GB of DuckDB's memory). Beyond,
#: the table would crowd DuckDB's memory limit out (at 10M customers, 200M
#: emails made the later queries spill over 40 GB to disk), and the queries
#: aggregate the events themselves.
SHARED_EMAILS_MAX_EVENTS = 100_000_000

#: The rare email events kept by the open blocks: (thread, store, window end, table).
_SHARED_RARE: list[tuple[int, Store, pd.Timestamp, Table]] = []


def _email_events_of(store: Store, end: pd.Timestamp, types: Sequence[str]) -> Table:
    """The email events of ``types`` before ``end``: ``customer_id``, ``campaign_id``,
    ``occurred_at`` and ``event_type``.

    Read from what a :func:`shared_machine_opens` block of this thread keeps
    when its window covers ``end`` and ``types`` are all rare events, else
    from the store. For queries run inside the block only: the kept table is
    dropped on exit, so a lazy table returned to a caller must not read it.
    """
    ev: Table | None = None
    if set(types) <= set(_RARE_EMAIL_EVENTS):
        thread = threading.get_ident()
        kept = [(e, t) for tid, st, e, t in _SHARED_RARE if tid == thread and st is store]
        kept = [(e, t) for e, t in kept if e >= end]
        if kept:
            ev = min(kept, key=lambda item: item[0])[1]
    if ev is None:
        ev = store.table("email_events")
    ev = ev.filter((ev.occurred_at < _ts_literal(end)) & ev.event_type.isin(list(types)))
    return ev.select("customer_id", "campaign_id", "occurred_at", "event_type")


# --------------------------------------------------------------------------- machine opens


class _Labelled(NamedTuple):
    """The machine-open evidence of a store at a window end, as Ibis tables."""

    #: Per customer with a delivered email: ``n_delivered``,
    #: ``n_fast_open_emails``, ``n_fast_clicked``, ``fast_open_share``,
    #: ``is_proxy_user``.
    evidence: Table
    #: Every open, labelled: the columns of :func:`flag_machine_opens` plus
    #: ``has_delivery`` (its email has a ``delivered`` event); inside
    #: :func:`shared_machine_opens` without ``variant``, ``user_agent``,
    #: ``delivered_at`` and ``delay_seconds``.
    opens: Table
    #: Inside :func:`shared_machine_opens`: the per-email table of
    #: :func:`_emails` the opens were timed with, kept by the engine (``None``
    #: past :data:`SHARED_EMAILS_MAX_EVENTS`, and outside a block).
    emails: Table | None = None


#: Labels computed once for the calls inside :func:`shared_machine_opens`, by
#: (store, window end, parameters); the store is held so its id stays its own.
_SHARED: dict[tuple[int, int, pd.Timestamp, str], tuple[Store, _Labelled]] = {}

#: The columns of the timed opens kept by :func:`shared_machine_opens`: what
#: the labels, scores and send times read.
_SHARED_OPEN_COLUMNS = (
    "customer_id",
    "campaign_id",
    "occurred_at",
    "machine_open",
    "is_fast",
    "has_delivery",
    "ua_machine",
)


def _shared_key(store: Store, end: pd.Timestamp, params: Mapping[str, Any]) -> tuple:
    def same(v: Any) -> Any:  # 10 and 10.0 are the same setting
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    # per thread: another thread's block may end (and drop its tables) at any time
    params_key = repr(sorted((k, same(v)) for k, v in params.items()))
    return (threading.get_ident(), id(store), end, params_key)


def _labels(store: Store, end: pd.Timestamp, params: Mapping[str, Any]) -> _Labelled:
    """The labels of :func:`shared_machine_opens` when inside one, else computed."""
    shared = _SHARED.get(_shared_key(store, end, params))
    return shared[1] if shared is not None else _label_opens(store, end, params)


#: Most distinct user agents matched one by one (a store holds a few hundred
#: at most: browsers and mail clients in a handful of versions each); with
#: more, every open's user agent is matched by the engine instead.
_MAX_DISTINCT_AGENTS = 20_000
#: Most machine user agents written into a query as a list.
_MAX_INLINE_AGENTS = 500


def _user_agent_rule(con: Any, opens: Table, patterns: Sequence[str]) -> ibis.Value:
    """Whether each open's user agent matches one of ``patterns`` (never null).

    Matching a regular expression costs far more than reading a column, and
    millions of opens carry a few distinct user agents; so the distinct agents
    are read first and matched once each, by the engine (its regular
    expression dialect), and the agents that match are written into the
    query as a list. With too many distinct agents or matches
    (:data:`_MAX_DISTINCT_AGENTS`, :data:`_MAX_INLINE_AGENTS`) every open is
    matched instead. The answer is the same.
    """
    regex = "|".join(f"(?:{p})" for p in patterns)
    if not regex:
        return ibis.literal(False)

    def matches(ua: ibis.Value) -> ibis.Value:
        return ua.strip().lower().re_search(regex).fill_null(False)

    agents = _execute(opens.select("user_agent").distinct().limit(_MAX_DISTINCT_AGENTS + 1))
    agents = [a for a in agents["user_agent"].tolist() if isinstance(a, str)]
    if len(agents) > _MAX_DISTINCT_AGENTS:
        return matches(opens.user_agent)
    if not agents:
        return ibis.literal(False)
    table = ibis.memtable(pd.DataFrame({"user_agent": agents}), schema={"user_agent": "string"})
    found = con.execute(table.filter(matches(table.user_agent)))["user_agent"].tolist()
    if len(found) > _MAX_INLINE_AGENTS:
        return matches(opens.user_agent)
    if not found:
        return ibis.literal(False)
    return opens.user_agent.isin(found).fill_null(False)


def _emails(store: Store, end: pd.Timestamp) -> Table:
    """One row per email sent or delivered before ``end``: its first ``sent`` and ``delivered``.

    Columns ``customer_id``, ``campaign_id``, ``delivered_at``, ``sent_at``
    (either missing when the email has no such event) and ``ref_at`` (the
    delivery, else the send: what an open's delay is measured from).
    """
    ev = _email_events(store, end)
    sd = ev.filter(ev.event_type.isin(["sent", "delivered"]))
    emails = sd.group_by("customer_id", "campaign_id").aggregate(
        delivered_at=sd.occurred_at.min(where=sd.event_type == "delivered"),
        sent_at=sd.occurred_at.min(where=sd.event_type == "sent"),
    )
    return emails.mutate(ref_at=_ref_at(emails))


def _ref_at(emails: Table) -> ibis.Value:
    """What an open's delay is measured from: the email's delivery, else its send."""
    return ibis.coalesce(emails.delivered_at, emails.sent_at)


def _open_timing(
    store: Store, end: pd.Timestamp, params: Mapping[str, Any], emails: Table | None = None
) -> tuple[Table, Table]:
    """Every open before ``end`` with its email's delivery and the rules that need no evidence.

    Returns the opens -- the columns of :func:`flag_machine_opens` up to
    ``is_fast``, plus ``has_delivery`` and ``ua_machine`` -- and the
    per-email table they were joined with (:func:`_emails`; ``emails`` when
    given, e.g. already kept by the engine). The work is one join of the
    opens with that table (and, when not given, the aggregation of the sent
    and delivered events per email that makes it).
    """
    ev = _email_events(store, end)
    keys = ["customer_id", "campaign_id"]
    if emails is None:
        emails = engine.reuse(_emails(store, end), store.con.name)  # read by opens and evidence

    opens = ev.filter(ev.event_type == "open")
    ua_machine = _user_agent_rule(store.con, opens, params["user_agent_patterns"])
    opens = opens.mutate(ua_machine=ua_machine)
    joined = opens.left_join(emails, keys)
    o = joined.select(
        customer_id=opens.customer_id,
        campaign_id=opens.campaign_id,
        variant=opens.variant,
        occurred_at=opens.occurred_at,
        user_agent=opens.user_agent,
        machine_open=opens.machine_open,
        delivered_at=emails.ref_at,
        has_delivery=emails.delivered_at.notnull(),
        ua_machine=opens.ua_machine,
    )
    max_delay = float(params["max_delay_seconds"])
    delay = _seconds_between(o.occurred_at, o.delivered_at)
    o = o.mutate(
        delay_seconds=delay,
        is_fast=delay.between(-max_delay, max_delay).fill_null(False),
        has_delivery=o.has_delivery.fill_null(False),
    )
    return o, emails


def _evidence(
    store: Store,
    end: pd.Timestamp,
    params: Mapping[str, Any],
    o: Table,
    emails: Table | None = None,
    clicks: Table | None = None,
) -> Table:
    """Per-customer proxy evidence from the timed opens ``o`` and emails of :func:`_open_timing`.

    Without ``emails`` the delivered emails are counted from the events;
    without ``clicks`` (the click events before ``end``) they are read from
    the store. The result stays lazy (:func:`labelled_opens` may return it),
    so nothing a shared block drops on exit is read unless passed in.
    """
    ev = _email_events(store, end)
    keys = ["customer_id", "campaign_id"]
    if emails is not None:
        has = emails.delivered_at.notnull()
        delivered = emails.filter(has).group_by("customer_id").aggregate(n_delivered=ibis._.count())
    else:
        # distinct campaigns, and the events without a campaign as one more
        # email (as the per-email grouping counts them)
        d = ev.filter(ev.event_type == "delivered")
        delivered = d.group_by("customer_id").aggregate(
            n_delivered=d.campaign_id.nunique() + d.campaign_id.isnull().any().cast(dt.int64)
        )
    # Emails with a fast open the ESP did not call human: counted per customer
    # (a distinct count, no table of all such emails), and for the few
    # emails also clicked, whether a click followed the first fast open
    # within the click window (an equality-only join, then the time condition).
    cand = o.filter(o.is_fast & o.has_delivery & o.machine_open.fill_null(True))
    fast_opened = cand.group_by("customer_id").aggregate(
        n_fast_open_emails=cand.campaign_id.nunique()
    )
    if clicks is None:
        clicks = ev.filter(ev.event_type == "click")
    clicks = clicks.select("customer_id", "campaign_id", click_at="occurred_at")
    clicked = cand.semi_join(clicks, keys)
    fast = clicked.group_by(keys).aggregate(first_fast_at=clicked.occurred_at.min())
    fc = fast.inner_join(clicks, keys)
    gap = _seconds_between(fc.click_at, fc.first_fast_at)
    window = float(params["click_window_seconds"])
    fc = fc.filter((gap >= 0) & (gap <= window))
    fast_clicked = fc.group_by("customer_id").aggregate(n_fast_clicked=fc.campaign_id.nunique())

    j = delivered.left_join(fast_opened, "customer_id").left_join(fast_clicked, "customer_id")
    evidence = j.select(
        customer_id=delivered.customer_id,
        n_delivered=delivered.n_delivered,
        n_fast_open_emails=fast_opened.n_fast_open_emails.fill_null(0),
        n_fast_clicked=fast_clicked.n_fast_clicked.fill_null(0),
    )
    share = evidence.n_fast_open_emails.cast(dt.float64) / evidence.n_delivered
    return evidence.mutate(
        fast_open_share=share,
        is_proxy_user=(
            (evidence.n_delivered >= int(params["min_delivered"]))
            & (share >= float(params["min_share"]))
            & (
                evidence.n_fast_clicked.cast(dt.float64)
                <= float(params["max_fast_click_share"]) * evidence.n_fast_open_emails
            )
        ),
    )


def _apply_labels(o: Table, evidence: Table) -> Table:
    """The timed opens ``o`` labelled by the first rule that applies."""
    proxy = evidence.select("customer_id", "is_proxy_user")
    lab = o.left_join(proxy, "customer_id")
    lab = lab.select(
        *[o[c] for c in o.columns if c not in ("ua_machine", "has_delivery")],
        ua_machine=o.ua_machine,
        is_proxy_user=proxy.is_proxy_user.fill_null(False),
        has_delivery=o.has_delivery,
    )
    timing = lab.is_proxy_user & lab.is_fast
    lab = lab.mutate(
        rule=ibis.cases(
            (lab.machine_open.notnull(), "flag"),
            (lab.ua_machine, "user_agent"),
            (timing, "timing"),
            else_="none",
        ),
        is_machine=ibis.cases(
            (lab.machine_open.notnull(), lab.machine_open),
            (lab.ua_machine, True),
            (timing, True),
            else_=False,
        ),
    ).drop("ua_machine")
    return lab.relocate("has_delivery", after="is_machine")


def _label_opens(store: Store, end: pd.Timestamp, params: Mapping[str, Any]) -> _Labelled:
    """Label every open before ``end`` and gather the per-customer proxy evidence."""
    o, emails = _open_timing(store, end, params)
    o = engine.reuse(o, store.con.name)  # read by the evidence and the labels
    evidence = engine.reuse(_evidence(store, end, params, o, emails), store.con.name)
    return _Labelled(evidence=evidence, opens=_apply_labels(o, evidence))


def labelled_opens(store: Any, as_of: object, **machine_open_params: Any) -> Table:
    """Every open before the end of ``as_of``, labelled, as a lazy table for other queries.

    The narrow form of :func:`flag_machine_opens` that feature queries join:
    ``customer_id``, ``campaign_id``, ``occurred_at``, ``machine_open``,
    ``is_fast``, ``rule`` and ``is_machine``. Inside
    :func:`shared_machine_opens` on the same store, ``as_of`` and parameters
    it reads the labels computed once for the block, instead of labelling
    every open again.
    """
    params = _machine_params(machine_open_params)
    store = open_store(store)
    opens = _labels(store, _window_end(as_of), params).opens
    return opens.select(
        "customer_id", "campaign_id", "occurred_at", "machine_open", "is_fast", "rule", "is_machine"
    )


def _covering_labels(store: Store, end: pd.Timestamp, params: Mapping[str, Any]) -> Table | None:
    """The opens before ``end`` as labelled by a shared block whose window ends at or after it.

    For a feature query whose cutoffs are all before a block's end (training
    cutoffs inside a scoring run): the per-open labels it reads -- the ESP
    flag, the user-agent rule, whether the open came fast after delivery --
    do not depend on the window end (the proxy verdict, which does, is taken
    per cutoff by the query itself), so the block's labels serve instead of
    labelling every open again. ``None`` outside such a block.
    """
    labels = _covering(store, end, params)
    if labels is None:
        return None
    opens = labels.opens
    return opens.filter(opens.occurred_at < _ts_literal(end)).select(
        "customer_id", "campaign_id", "occurred_at", "machine_open", "is_fast", "rule", "is_machine"
    )


def _covering_deliveries(
    store: Store, end: pd.Timestamp, params: Mapping[str, Any]
) -> Table | None:
    """Each email's first delivery before ``end``, from a shared block whose window covers it.

    ``customer_id``, ``campaign_id``, ``delivered_at``: one row per email
    delivered before ``end``, as aggregating its ``delivered`` events before
    ``end`` gives (the first delivery before the block's end is the first
    before ``end`` whenever it is before ``end``). ``None`` outside such a block.
    """
    labels = _covering(store, end, params)
    if labels is None or labels.emails is None:
        return None
    emails = labels.emails
    delivered = emails.delivered_at.notnull() & (emails.delivered_at < _ts_literal(end))
    return emails.filter(delivered).select("customer_id", "campaign_id", "delivered_at")


def _covering(store: Store, end: pd.Timestamp, params: Mapping[str, Any]) -> _Labelled | None:
    """This thread's shared labels of ``store`` whose window ends first at or after ``end``."""
    thread, key = threading.get_ident(), _shared_key(store, end, params)[3]
    found = [
        (e, labels)
        for (tid, _, e, pkey), (held, labels) in list(_SHARED.items())  # others' may change
        if tid == thread and held is store and pkey == key and e >= end
    ]
    return min(found, key=lambda item: item[0])[1] if found else None


def flag_machine_opens(
    store: Any,
    as_of: object,
    max_delay_seconds: float = 10,
    min_share: float = 0.8,
    min_delivered: int = 3,
    *,
    click_window_seconds: float = 60,
    max_fast_click_share: float = 0.0,
    user_agent_patterns: Sequence[str] | None = None,
    as_frame: bool = False,
) -> Table | pd.DataFrame:
    """Label every email open before ``as_of`` as a human or a machine open.

    The rules, applied in order, are described in the module docstring:
    the ESP's ``machine_open`` flag, a proxy user agent, then the per-customer
    timing pattern.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; events at or after the end of its window are ignored.
    max_delay_seconds : float
        An open within this many seconds of delivery (either side, for clock
        skew) is a *fast open*.
    min_share : float
        Share of a customer's delivered emails that must have a fast open
        for the customer to be a proxy user.
    min_delivered : int
        Fewer delivered emails than this is too little evidence: never a
        proxy user by timing.
    click_window_seconds : float
        A click on the same email within this many seconds after a fast open
        counts as "the fast open was followed by a click".
    max_fast_click_share : float
        Largest share of fast opens followed by a click a proxy user may
        have (0: never, as a proxy never clicks).
    user_agent_patterns : list of str, optional
        Regular expressions (RE2 syntax, as DuckDB runs them; Spark runs them
        as Java regular expressions, which read RE2's common syntax alike)
        matched against the lower-cased user agent;
        :data:`PROXY_USER_AGENT_PATTERNS` by default. ``[]`` disables the rule.
    as_frame : bool
        Execute and return a pandas DataFrame instead of a lazy Ibis table.

    Returns
    -------
    ibis Table or DataFrame
        One row per open event: ``customer_id``, ``campaign_id``,
        ``variant``, ``occurred_at``, ``user_agent``, ``machine_open`` (the
        input flag), ``delivered_at`` (first delivery of that email, or its
        send time when no delivery was recorded; null when neither was),
        ``delay_seconds`` (open minus ``delivered_at``; null without one),
        ``is_fast``, ``is_proxy_user``, ``rule`` (``flag``, ``user_agent``,
        ``timing`` or ``none``) and ``is_machine`` (bool, never null). An
        ``as_of`` before all history gives an empty table with these columns.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> store = simulate_store(n_customers=200, days=90, seed=1)
    >>> opens = flag_machine_opens(store, "2024-06-30", as_frame=True)
    >>> sorted(opens["rule"].unique())
    ['none', 'timing']
    >>> bool(opens.loc[opens["rule"] == "timing", "is_machine"].all())
    True
    """
    params = _machine_params(
        {
            "max_delay_seconds": max_delay_seconds,
            "min_share": min_share,
            "min_delivered": min_delivered,
            "click_window_seconds": click_window_seconds,
            "max_fast_click_share": max_fast_click_share,
            "user_agent_patterns": user_agent_patterns,
        }
    )
    store = open_store(store)
    labelled = _label_opens(store, _window_end(as_of), params).opens.drop("has_delivery")
    return _execute(labelled) if as_frame else labelled


def machine_open_customers(
    store: Any,
    as_of: object,
    max_delay_seconds: float = 10,
    min_share: float = 0.8,
    min_delivered: int = 3,
    *,
    click_window_seconds: float = 60,
    max_fast_click_share: float = 0.0,
    user_agent_patterns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-customer summary of the machine-open evidence.

    Parameters are those of :func:`flag_machine_opens`.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``, one row per customer created before the
        window end (also those without any email event): ``n_delivered``
        (distinct emails with a delivery), ``n_fast_open_emails`` (delivered
        emails with a fast open not flagged human by the ESP),
        ``fast_open_share`` (their share of ``n_delivered``; 0.0 when nothing
        was delivered), ``n_fast_clicked`` (fast-open emails clicked within
        the click window), ``n_machine_opens`` and ``n_human_opens`` (open
        events by the final label, every rule) and ``is_proxy_user`` (the
        timing pattern holds).

    Raises
    ------
    DataError
        If no customer was created before the window end.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> store = simulate_store(n_customers=200, days=90, seed=1)
    >>> proxies = machine_open_customers(store, "2024-06-30")
    >>> proxies.loc[proxies["is_proxy_user"], "fast_open_share"].min() >= 0.8
    np.True_
    """
    params = _machine_params(
        {
            "max_delay_seconds": max_delay_seconds,
            "min_share": min_share,
            "min_delivered": min_delivered,
            "click_window_seconds": click_window_seconds,
            "max_fast_click_share": max_fast_click_share,
            "user_agent_patterns": user_agent_patterns,
        }
    )
    store = open_store(store)
    end = _window_end(as_of)
    customers = _customers_at(store, end).select("customer_id")
    labels = _labels(store, end, params)
    labelled, evidence = labels.opens, labels.evidence
    counts = labelled.group_by("customer_id").aggregate(
        n_machine_opens=labelled.is_machine.cast(dt.int64).sum(),
        n_human_opens=(~labelled.is_machine).cast(dt.int64).sum(),
    )
    j = customers.left_join(evidence, "customer_id").left_join(counts, "customer_id")
    out = j.select(
        customer_id=customers.customer_id,
        n_delivered=evidence.n_delivered.fill_null(0),
        n_fast_open_emails=evidence.n_fast_open_emails.fill_null(0),
        fast_open_share=evidence.fast_open_share.fill_null(0.0),
        n_fast_clicked=evidence.n_fast_clicked.fill_null(0),
        n_machine_opens=counts.n_machine_opens.fill_null(0),
        n_human_opens=counts.n_human_opens.fill_null(0),
        is_proxy_user=evidence.is_proxy_user.fill_null(False),
    )
    df = _execute(out).set_index("customer_id").sort_index()
    ints = ["n_delivered", "n_fast_open_emails", "n_fast_clicked", "n_machine_opens"]
    df[ints + ["n_human_opens"]] = df[ints + ["n_human_opens"]].astype("int64")
    df["fast_open_share"] = df["fast_open_share"].astype("float64")
    df["is_proxy_user"] = df["is_proxy_user"].astype(bool)
    log.info(
        "machine opens: %d of %d customers are proxy users, %d machine opens",
        int(df["is_proxy_user"].sum()),
        len(df),
        int(df["n_machine_opens"].sum()),
    )
    return df


@contextlib.contextmanager
def shared_machine_opens(store: Any, as_of: object, **machine_open_params: Any) -> Iterator[Store]:
    """Label the opens once for every call inside the ``with`` block.

    :func:`engagement_scores`, :func:`preferred_send_time` and
    :func:`machine_open_customers` each label every open before they use it
    (:func:`flag_machine_opens`): an aggregation of the sent and delivered
    events per email and a join of every open with it, the costliest part of
    each. Inside this block, calls on the same store, ``as_of`` and machine
    open parameters (their defaults unless given here and to the calls alike)
    read the labels computed once on entry and kept by the engine (temporary
    tables: each email's first send and delivery (up to
    :data:`SHARED_EMAILS_MAX_EVENTS` email events), seven narrow columns per
    open -- the open, its delivery and the rules that need no evidence -- and
    the per-customer evidence, and the clicks and opt-outs, about 1% of the
    events), dropped on exit. Feature queries inside the block
    (:mod:`bmkt.features`) read the emails' deliveries and the clicks from it
    too. Results are those of the calls without the block. The store must
    not change inside the block.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date of the calls.
    **machine_open_params
        Keyword arguments of :func:`flag_machine_opens` (``max_delay_seconds``,
        ...), as the calls pass them in ``machine_open_params``.

    Yields
    ------
    Store
        The opened store: pass it to the calls (a path or mapping opened
        twice is two stores, which share nothing).

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> sim = simulate_store(n_customers=200, days=90, seed=1)
    >>> with shared_machine_opens(sim, "2024-06-30") as store:
    ...     scores = engagement_scores(store, "2024-06-30")
    ...     send = preferred_send_time(store, "2024-06-30")
    >>> scores.equals(engagement_scores(sim, "2024-06-30"))
    True
    """
    params = _machine_params(machine_open_params)
    store = open_store(store)
    end = _window_end(as_of)
    key = _shared_key(store, end, params)
    if key in _SHARED:  # nested: the outer block owns the tables
        yield store
        return
    made: list[str] = []  # the tables registered so far: dropped even if setup fails
    rare: tuple[int, Store, pd.Timestamp, Table] | None = None
    try:
        # reuse: on Spark, whose temporary "tables" are views, the data is cached
        backend = store.con.name
        made.append(ibis.util.gen_name("bmkt_open_rare_events"))
        ev = store.table("email_events")
        ev = ev.filter((ev.occurred_at < _ts_literal(end)) & ev.event_type.isin(_RARE_EMAIL_EVENTS))
        ev = ev.select("customer_id", "campaign_id", "occurred_at", "event_type")
        ev = engine.reuse(engine.register_table(store.con, made[-1], ev), backend)
        rare = (threading.get_ident(), store, end, ev)
        _SHARED_RARE.append(rare)
        emails: Table | None = None
        # (DuckDB counts Parquet files' rows from their metadata)
        if int(store.table("email_events").count().execute()) <= SHARED_EMAILS_MAX_EVENTS:
            made.append(ibis.util.gen_name("bmkt_open_emails"))
            emails = _emails(store, end).drop("ref_at")  # ref_at: computed where read
            emails = engine.register_table(store.con, made[-1], emails)
            emails = engine.reuse(emails.mutate(ref_at=_ref_at(emails)), backend)
        timing = _open_timing(store, end, params, emails)[0].select(*_SHARED_OPEN_COLUMNS)
        made.append(ibis.util.gen_name("bmkt_opens"))
        o = engine.reuse(engine.register_table(store.con, made[-1], timing), backend)
        evidence = _evidence(store, end, params, o, emails, _email_events_of(store, end, ["click"]))
        made.append(ibis.util.gen_name("bmkt_open_evidence"))
        evidence = engine.reuse(engine.register_table(store.con, made[-1], evidence), backend)
        labels = _Labelled(evidence=evidence, opens=_apply_labels(o, evidence), emails=emails)
        _SHARED[key] = (store, labels)
        log.info("machine opens as of %s: labelled once for the block", end)
        yield store
    finally:
        _SHARED.pop(key, None)
        if rare is not None:
            _SHARED_RARE.remove(rare)
        for name in made:
            _drop(store.con, name)


def _drop(con: Any, name: str) -> None:
    """Drop a table made by :func:`bmkt.engine.register_table` (a view on Spark)."""
    try:
        con.drop_table(name, force=True)
    except Exception:  # noqa: BLE001 - Spark's backend keeps it as a view
        con.drop_view(name, force=True)


# --------------------------------------------------------------------------- engagement


def engagement_scores(
    store: Any,
    as_of: object,
    half_life_days: float = 30,
    dormant_days: float = 90,
    *,
    active_days: float = 30,
    open_weight: float = 1.0,
    click_weight: float = 3.0,
    min_opens_no_click: int = 5,
    include_machine_opens: bool = False,
    machine_open_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Recency-weighted email engagement and engagement state per customer.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; events at or after the end of its window are ignored.
    half_life_days : float
        An engagement loses half its weight every ``half_life_days``.
    dormant_days : float
        No human open or click for more than this many days: ``dormant``.
    active_days : float
        A human open or click within this many days: ``active`` (between
        the two: ``lapsing``). See :data:`ENGAGEMENT_STATES`.
    open_weight, click_weight : float
        Score weight of an email's first human open and first click.
    min_opens_no_click : int
        ``opens_never_clicks`` needs at least this many emails opened.
    include_machine_opens : bool
        Count machine opens as opens too (what the ESP reports). The "human"
        columns then include machine opens.
    machine_open_params : dict, optional
        Keyword arguments of :func:`flag_machine_opens` (``max_delay_seconds``,
        ``min_share``, ...).

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``; every customer created before the window
        end, also those without any email event. Columns:

        ``engagement_score`` (float >= 0, the formula of the module
        docstring), ``last_human_open_at``, ``last_click_at``,
        ``last_engaged_at`` (latest of the two; ``NaT`` when none),
        ``days_since_engaged`` (float days from ``last_engaged_at`` to the
        window end; NaN exactly when ``state == 'never_engaged'``),
        ``n_delivered`` (distinct emails delivered), ``n_human_opens``,
        ``n_machine_opens``, ``n_clicks`` (events), ``n_opened_emails``,
        ``n_clicked_emails`` (distinct delivered emails with a human open /
        a click), ``human_open_rate`` = ``n_opened_emails / n_delivered``,
        ``click_rate`` = ``n_clicked_emails / n_delivered`` (both 0.0 when
        ``n_delivered == 0``: no delivered email, no evidence of engagement;
        tell "never emailed" apart by ``n_delivered``), ``is_proxy_user``,
        ``state`` (one of :data:`ENGAGEMENT_STATES`) and
        ``opens_never_clicks`` (at least ``min_opens_no_click`` emails opened
        by a human, no click ever).

        Behind a privacy proxy a person's own opens are mostly invisible (the
        proxy serves the cached pixel), so for ``is_proxy_user`` customers
        ``human_open_rate`` understates and the state rests on clicks.

    Raises
    ------
    DataError
        If no customer was created before the window end.
    ConfigError
        If a parameter is out of range.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> scores = engagement_scores(simulate_store(n_customers=200, days=90, seed=1), "2024-06-30")
    >>> list(scores.columns[:3])
    ['engagement_score', 'state', 'last_human_open_at']
    >>> set(scores["state"]) <= set(ENGAGEMENT_STATES)
    True
    """
    _positive("half_life_days", half_life_days)
    _positive("active_days", active_days)
    _positive("dormant_days", dormant_days)
    if not active_days < dormant_days:
        raise ConfigError(
            f"active_days must be less than dormant_days. Got {active_days} and {dormant_days}."
        )
    _positive("open_weight", open_weight, allow_zero=True)
    _positive("click_weight", click_weight, allow_zero=True)
    _positive("min_opens_no_click", min_opens_no_click)
    params = _machine_params(machine_open_params)
    store = open_store(store)
    end = _window_end(as_of)
    customers = _customers_at(store, end).select("customer_id")
    labels = _labels(store, end, params)
    labelled = labels.opens
    ev = _email_events(store, end)

    keys = ["customer_id", "campaign_id"]
    ln2 = math.log(2.0)

    def decay(ts: ibis.Value) -> ibis.Value:
        return (_age_days(ts, end) * (-ln2 / half_life_days)).exp()

    def same_email(a: Table, b: Table) -> list[ibis.Value]:
        # events without a campaign count as one email per customer (as a
        # group by does), so campaigns compare null-safe
        return [a.customer_id == b.customer_id, a.campaign_id.identical_to(b.campaign_id)]

    # Clicks per clicked email, with whether that email was delivered: only the
    # delivered events of clicked emails are read (a semi join).
    clicks = _email_events_of(store, end, ["click"])
    delivered = ev.filter(ev.event_type == "delivered")
    cd = clicks.select(*keys, ts=_ts(clicks.occurred_at), is_click=True).union(
        delivered.semi_join(clicks, same_email(delivered, clicks)).select(
            *keys, ts=_ts(delivered.occurred_at), is_click=False
        )
    )
    clicked = cd.group_by(keys).aggregate(
        first_click_at=cd.ts.min(where=cd.is_click),
        last_click_at=cd.ts.max(where=cd.is_click),
        n_clicks=cd.count(where=cd.is_click),
        delivered=(~cd.is_click).any(),
    )
    click_stats = clicked.group_by("customer_id").aggregate(
        click_score=(decay(clicked.first_click_at) * float(click_weight)).sum(),
        last_click_at=clicked.last_click_at.max(),
        n_clicks=clicked.n_clicks.sum(),
        n_clicked_emails=clicked.count(where=clicked.delivered),
    )
    # Opens without a campaign never join their email's delivery (a join
    # matches no null): whether that email was delivered is looked up here.
    null_campaign = delivered.filter(delivered.campaign_id.isnull())
    null_campaign = null_campaign.select("customer_id", null_campaign_delivered=True).distinct()
    # Per customer from the labelled opens: counts, and per email opened by a
    # person the first such open (each email counts once however often reopened).
    counted = (
        ibis.literal(True) if include_machine_opens else ~labelled.is_machine
    )  # opens that count as engagement
    lo = labelled.select(*keys, "has_delivery", ts=_ts(labelled.occurred_at), counted=counted)
    open_counts = lo.group_by("customer_id").aggregate(
        last_human_open_at=lo.ts.max(where=lo.counted),
        n_human_opens=lo.count(where=lo.counted),
        n_machine_opens=lo.count(where=~lo.counted),
    )
    human = lo.filter(lo.counted)
    opened = human.group_by(keys).aggregate(
        first_open_at=human.ts.min(), has_delivery=human.has_delivery.any()
    )
    open_scores = opened.group_by("customer_id").aggregate(
        open_score=(decay(opened.first_open_at).fill_null(0.0) * float(open_weight)).sum(),
        n_opened_emails=opened.count(where=opened.has_delivery),
        null_campaign_opened=opened.campaign_id.isnull().any(),
    )
    evidence = labels.evidence.select("customer_id", "n_delivered", "is_proxy_user")
    j = (
        customers.left_join(click_stats, "customer_id")
        .left_join(open_counts, "customer_id")
        .left_join(open_scores, "customer_id")
        .left_join(evidence, "customer_id")
        .left_join(null_campaign, "customer_id")
    )
    out = j.select(
        customer_id=customers.customer_id,
        engagement_score=(
            open_scores.open_score.fill_null(0.0) + click_stats.click_score.fill_null(0.0)
        ),
        last_human_open_at=open_counts.last_human_open_at,
        last_click_at=click_stats.last_click_at,
        n_delivered=evidence.n_delivered.fill_null(0),
        n_human_opens=open_counts.n_human_opens.fill_null(0),
        n_machine_opens=open_counts.n_machine_opens.fill_null(0),
        n_clicks=click_stats.n_clicks.fill_null(0),
        n_opened_emails=open_scores.n_opened_emails.fill_null(0)
        + (open_scores.null_campaign_opened & null_campaign.null_campaign_delivered)
        .fill_null(False)
        .cast(dt.int64),
        n_clicked_emails=click_stats.n_clicked_emails.fill_null(0),
        is_proxy_user=evidence.is_proxy_user.fill_null(False),
    )
    df = _execute(out).set_index("customer_id").sort_index()
    for c in ("last_human_open_at", "last_click_at"):
        df[c] = pd.to_datetime(df[c])
    ints = [c for c in df.columns if c.startswith("n_")]
    df[ints] = df[ints].astype("int64")
    df["engagement_score"] = df["engagement_score"].astype("float64")
    df["is_proxy_user"] = df["is_proxy_user"].astype(bool)

    df["last_engaged_at"] = df[["last_human_open_at", "last_click_at"]].max(axis=1)
    df["days_since_engaged"] = (end - df["last_engaged_at"]) / pd.Timedelta(days=1)
    delivered = df["n_delivered"].where(df["n_delivered"] > 0)
    df["human_open_rate"] = (df["n_opened_emails"] / delivered).fillna(0.0)
    df["click_rate"] = (df["n_clicked_emails"] / delivered).fillna(0.0)
    age = df["days_since_engaged"]
    state = np.select(
        [age.isna(), age <= active_days, age <= dormant_days],
        ["never_engaged", "active", "lapsing"],
        default="dormant",
    )
    df["state"] = pd.Categorical(state, categories=list(ENGAGEMENT_STATES))
    df["opens_never_clicks"] = (df["n_opened_emails"] >= min_opens_no_click) & (df["n_clicks"] == 0)
    order = [
        "engagement_score",
        "state",
        "last_human_open_at",
        "last_click_at",
        "last_engaged_at",
        "days_since_engaged",
        "n_delivered",
        "n_human_opens",
        "n_machine_opens",
        "n_clicks",
        "n_opened_emails",
        "n_clicked_emails",
        "human_open_rate",
        "click_rate",
        "opens_never_clicks",
        "is_proxy_user",
    ]
    log.info(
        "engagement as of %s: %s",
        end,
        df["state"].value_counts().to_dict(),
    )
    return df[order]


# --------------------------------------------------------------------------- send time


def _zone_map(customers: Table) -> dict[str, str]:
    """Map every time zone in ``customers`` to itself, unknown ones to 'UTC'."""
    zones = _execute(customers.select("timezone").distinct())["timezone"].dropna().tolist()
    known = zoneinfo.available_timezones()
    bad = sorted(z for z in zones if z not in known)
    if bad:
        log.warning(
            "customers.timezone: %d unknown time zones treated as missing, e.g. %s",
            len(bad),
            bad[:5],
        )
    return {z: (z if z in known else "UTC") for z in zones}


def _customer_zones(customers: Table, infer_timezone: bool, min_customers: int) -> Table:
    """``customer_id``, ``zone`` (never null) and ``zone_inferred`` per customer."""
    zone_map = _zone_map(customers)
    valid = {z: v for z, v in zone_map.items() if v != "UTC" or z == "UTC"}
    if valid:
        zone = customers.timezone.substitute(valid, else_=ibis.null(dt.string))
    else:
        zone = ibis.null(dt.string)
    c = customers.select("customer_id", "country", zone=zone)
    if infer_timezone and valid:
        known = c.filter(c.zone.notnull() & c.country.notnull())
        per = known.group_by(["country", "zone"]).aggregate(n=known.count())
        rank = ibis.row_number().over(
            group_by=per.country, order_by=[ibis.desc(per.n), ibis.asc(per.zone)]
        )
        total = per.n.sum().over(group_by=per.country)
        per = per.mutate(rank=rank, total=total)
        by_country = per.filter((per["rank"] == 0) & (per.total >= int(min_customers))).select(
            "country", country_zone="zone"
        )
        j = c.left_join(by_country, "country")
        c = j.select(
            c.customer_id,
            c.zone,
            country_zone=by_country.country_zone,
        )
    else:
        c = c.select("customer_id", "zone", country_zone=ibis.null(dt.string))
    return c.select(
        "customer_id",
        zone=ibis.coalesce(c.zone, c.country_zone, ibis.literal("UTC")),
        zone_inferred=c.zone.isnull() & c.country_zone.notnull(),
    )


def _gaussian_kernel(smoothing_hours: float) -> pd.DataFrame:
    if smoothing_hours == 0:
        return pd.DataFrame({"offset": [0], "k": [1.0]})
    reach = min(11, int(math.ceil(3 * smoothing_hours)))
    offsets = np.arange(-reach, reach + 1)
    k = np.exp(-0.5 * (offsets / smoothing_hours) ** 2)
    return pd.DataFrame({"offset": offsets.astype("int64"), "k": k / k.sum()})


def preferred_send_time(
    store: Any,
    as_of: object,
    min_events: int = 5,
    *,
    open_weight: float = 1.0,
    click_weight: float = 2.0,
    order_weight: float = 3.0,
    smoothing_hours: float = 1.0,
    peak_window_hours: float = 3.0,
    min_timezone_customers: int = 10,
    infer_timezone: bool = True,
    default_hour: int = 10,
    default_weekday: int = 1,
    include_machine_opens: bool = False,
    machine_open_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Preferred local send hour and weekday per customer.

    Every human open, click and order before the window end is placed on the
    customer's local clock (converted by the engine, daylight saving
    time included) and weighted: an open ``open_weight`` (1), a click
    ``click_weight`` (2, a deliberate act), an order ``order_weight`` (3,
    the customer was ready to buy). Each event goes to the *nearest* whole
    hour (08:40 and 09:20 both count for 9), so ``preferred_hour = h``
    means activity peaks around ``h:00``, the time to send. The weighted
    hour histogram is smoothed with a circular Gaussian kernel
    (``smoothing_hours``; 23:00 neighbours 00:00) and its mode located; the
    preferred hour is the weighted mean time of the events within
    ``peak_window_hours`` of that mode, rounded to the nearest hour (the
    mean is the more precise estimate of a peak; restricting it to the
    mode's neighbourhood keeps it robust: a customer who reads mail at 7 and
    at 21 is not best reached at 14, as a circular mean of all events would
    say). The preferred weekday is the mode of the weighted weekday
    histogram. Ties go to the earliest hour / weekday.

    Time zone: ``customers.timezone``; when it is null (or not a known IANA
    zone) and ``infer_timezone``, the most common zone among customers of
    the same ``country`` (at least ``min_timezone_customers`` of them with a
    known zone); otherwise UTC.

    Customers with fewer than ``min_events`` events get a fallback: the
    most common preferred hour (weekday) among customers with history in
    the same time zone when there are at least ``min_timezone_customers``
    of them, otherwise among all customers with history, otherwise
    ``default_hour`` / ``default_weekday`` (10:00 on Tuesday).

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; events at or after the end of its window are ignored.
    min_events : int
        Events needed for an estimate of one's own.
    open_weight, click_weight, order_weight : float
        Event weights.
    smoothing_hours : float
        Standard deviation of the Gaussian kernel in hours (0: none).
    peak_window_hours : float
        Half-width of the window round the mode whose mean time refines it.
    min_timezone_customers : int
        Customers a time zone (country) needs before its own fallback hour
        (most common zone) is used.
    infer_timezone : bool
        Infer a missing time zone from the country (see above).
    default_hour, default_weekday : int
        Fallback when no customer has history (0=Monday).
    include_machine_opens : bool
        Use machine opens as well (they tell when mail arrives, not when it
        is read; off by default).
    machine_open_params : dict, optional
        Keyword arguments of :func:`flag_machine_opens`.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``, every customer created before the window
        end: ``preferred_hour`` (0-23, local), ``preferred_weekday`` (0=Mon
        ... 6=Sun, local), ``n_events`` (events used), ``source``
        (``"history"`` or ``"fallback"``), ``timezone`` (the zone used,
        never null), ``timezone_inferred`` (from the country) and
        ``hour_concentration`` (mean resultant length of the weighted event
        times of day [2]_, 0 = spread round the clock, 1 = always the same
        time; 0.0 without events).

    Raises
    ------
    DataError
        If no customer was created before the window end.
    """
    _positive("min_events", min_events)
    for name, w in (
        ("open_weight", open_weight),
        ("click_weight", click_weight),
        ("order_weight", order_weight),
        ("smoothing_hours", smoothing_hours),
        ("peak_window_hours", peak_window_hours),
    ):
        _positive(name, w, allow_zero=True)
    _positive("min_timezone_customers", min_timezone_customers)
    if default_hour not in range(24):
        raise ConfigError(f"default_hour must be an hour 0-23. Got {default_hour!r}.")
    if default_weekday not in range(7):
        raise ConfigError(f"default_weekday must be 0 (Monday) to 6. Got {default_weekday!r}.")
    params = _machine_params(machine_open_params)
    store = open_store(store)
    end = _window_end(as_of)
    cust = _customer_zones(_customers_at(store, end), infer_timezone, min_timezone_customers)

    labelled = _labels(store, end, params).opens
    clicks = _email_events_of(store, end, ["click"])
    orders = store.table("orders")
    orders = orders.filter(orders.ordered_at < _ts_literal(end))
    opens = labelled if include_machine_opens else labelled.filter(~labelled.is_machine)
    events = (
        opens.select("customer_id", ts=_ts(opens.occurred_at), w=engine.float_literal(open_weight))
        .union(
            clicks.select(
                "customer_id", ts=_ts(clicks.occurred_at), w=engine.float_literal(click_weight)
            )
        )
        .union(
            orders.select(
                "customer_id", ts=_ts(orders.ordered_at), w=engine.float_literal(order_weight)
            )
        )
    )
    e = _local_clock(events.inner_join(cust, "customer_id"), store.con.name)
    e = e.select(
        "customer_id",
        "w",
        hour=((e.frac_hour + 0.5).floor().cast(dt.int64) % 24),
        frac_hour=e.frac_hour,
        weekday=e.weekday,
    )
    e = engine.reuse(e, store.con.name)  # read by four aggregations below
    angle = e.frac_hour * (2 * math.pi / 24)
    summary = e.group_by("customer_id").aggregate(
        n_events=e.count(),
        sum_w=e.w.sum(),
        sum_cos=(e.w * angle.cos()).sum(),
        sum_sin=(e.w * angle.sin()).sum(),
    )
    # The weighted hour and weekday histograms, one row per customer and
    # non-empty bin, pivoted to one row per customer (a column per bin, null
    # when empty) where smoothing and the mode are arithmetic on columns.
    hours = e.group_by(["customer_id", "hour"]).aggregate(w=e.w.sum())
    wide = hours.group_by("customer_id").aggregate(
        **{f"_h{h}": v for h, v in enumerate(_pivot(hours, "hour", "w", 24))}
    )
    smoothed = _smooth_circular(
        [wide[f"_h{h}"] for h in range(24)],
        _gaussian_kernel(float(smoothing_hours)),
        positive=min(open_weight, click_weight, order_weight) > 0,
    )
    wide = wide.select("customer_id", **{f"_s{h}": v for h, v in enumerate(smoothed)})
    mode_hour = _argmax_columns(wide, [f"_s{h}" for h in range(24)], "mode")
    # Refine: weighted mean time of the events within ``peak_window_hours`` of
    # the mode (offsets taken round the clock), rounded to the nearest hour.
    near = e.inner_join(mode_hour, "customer_id")
    diff = ((near.frac_hour - near.mode.cast(dt.float64) + 36.0) % 24.0) - 12.0
    near = near.mutate(diff=diff).filter(lambda t: t["diff"].abs() <= float(peak_window_hours))
    peak = near.group_by(["customer_id", "mode"]).aggregate(
        shift=(near.w * near["diff"]).sum() / near.w.sum()
    )
    best_hour = peak.select(
        "customer_id",
        hour=((peak.mode.cast(dt.float64) + peak.shift + 0.5).floor().cast(dt.int64) + 24) % 24,
    )
    days = e.group_by(["customer_id", "weekday"]).aggregate(w=e.w.sum())
    best_day = days.group_by("customer_id").aggregate(
        **{f"_d{d}": v for d, v in enumerate(_pivot(days, "weekday", "w", 7))}
    )
    best_day = _argmax_columns(best_day, [f"_d{d}" for d in range(7)], "weekday")

    j = (
        cust.left_join(summary, "customer_id")
        .left_join(best_hour, "customer_id")
        .left_join(best_day, "customer_id")
    )
    out = j.select(
        customer_id=cust.customer_id,
        timezone=cust.zone,
        timezone_inferred=cust.zone_inferred,
        n_events=summary.n_events.fill_null(0),
        sum_w=summary.sum_w,
        sum_cos=summary.sum_cos,
        sum_sin=summary.sum_sin,
        hist_hour=best_hour.hour,
        hist_weekday=best_day.weekday,
    )
    df = _execute(out).set_index("customer_id").sort_index()
    df["n_events"] = df["n_events"].astype("int64")
    df["timezone_inferred"] = df["timezone_inferred"].astype(bool)
    resultant = np.hypot(df["sum_cos"].astype(float), df["sum_sin"].astype(float))
    conc = (resultant / df["sum_w"].astype(float)).where(df["sum_w"] > 0)
    df["hour_concentration"] = conc.fillna(0.0).clip(0.0, 1.0).astype("float64")

    has_history = df["n_events"] >= min_events
    df["source"] = np.where(has_history, "history", "fallback")
    hist = df[has_history]
    for col, out_col, default in (
        ("hist_hour", "preferred_hour", default_hour),
        ("hist_weekday", "preferred_weekday", default_weekday),
    ):
        overall = _mode(hist[col], default)
        by_zone = hist.groupby("timezone")[col].agg(
            lambda s, overall=overall: (
                _mode(s, overall) if len(s) >= min_timezone_customers else overall
            )
        )
        fallback = df["timezone"].map(by_zone).fillna(overall)
        df[out_col] = df[col].where(has_history, fallback).astype("int64")
    log.info(
        "send time as of %s: %d of %d customers from their own history",
        end,
        int(has_history.sum()),
        len(df),
    )
    return df[
        [
            "preferred_hour",
            "preferred_weekday",
            "n_events",
            "source",
            "timezone",
            "timezone_inferred",
            "hour_concentration",
        ]
    ]


def _pivot(t: Table, key: str, value: str, n: int) -> list[ibis.Value]:
    """Reductions of ``t`` (one row per group and ``key``) giving ``value`` at keys ``0..n-1``.

    For an aggregation of ``t`` by its group: column ``i`` is the ``value``
    of the row whose ``key`` is ``i``, null when there is none.
    """
    return [ibis.ifelse(t[key] == i, t[value], ibis.null(dt.float64)).sum() for i in range(n)]


def _smooth_circular(
    values: Sequence[ibis.Value], kernel: pd.DataFrame, *, positive: bool = False
) -> list[ibis.Value]:
    """Circular convolution of a histogram held in columns (null: empty bin).

    Bin ``i`` becomes ``sum_o k[o] * values[(i - o) % n]`` over the kernel's
    offsets ``o``, null when every bin within the kernel's reach is null (as
    the long form, one row per non-empty bin, leaves such a bin out). With
    ``positive`` (every non-empty bin > 0) a sum of 0 is taken for null, a
    cheaper test that leaves the mode as it is: the largest bin is then > 0. The
    kernel is symmetric, so the two bins at offsets ``-o`` and ``+o`` are added
    before they are weighted: a histogram symmetric about two bins then
    smooths to exactly equal values, and ties go to the earlier bin whatever
    the order of summation.
    """
    n = len(values)
    weights = dict(zip(kernel["offset"].astype(int), kernel["k"].astype(float), strict=True))
    reach = max(abs(o) for o in weights)
    if any(weights.get(-o) != k for o, k in weights.items()) or 2 * reach >= n:
        raise ValueError("_smooth_circular needs a symmetric kernel shorter than the circle")
    filled = [v.fill_null(0.0) for v in values]
    out = []
    for i in range(n):
        total = filled[i] * engine.float_literal(weights[0])
        for o in range(1, reach + 1):
            pair = filled[(i - o) % n] + filled[(i + o) % n]
            total = total + pair * engine.float_literal(weights[o])
        if positive:
            out.append(total.nullif(0.0))
        else:
            near = [values[(i + o) % n].notnull() for o in range(-reach, reach + 1)]
            out.append(ibis.ifelse(ibis.or_(*near), total, ibis.null(dt.float64)))
    return out


def _argmax_columns(t: Table, columns: Sequence[str], name: str) -> Table:
    """``customer_id`` and ``name``: the position in ``columns`` of the largest non-null value.

    ``t`` has one row per customer. Ties go to the first column; null when
    all are null. Written as an aggregation so that the largest value is a
    column computed once, which the comparisons read (as expressions over
    ``t``'s columns, it would be repeated in every comparison).
    """
    top = t.group_by("customer_id").aggregate(
        _top=ibis.greatest(*[t[c].max() for c in columns]),
        **{f"_v{i}": t[c].max() for i, c in enumerate(columns)},
    )
    return top.select(
        "customer_id",
        **{
            name: ibis.cases(
                *[(top[f"_v{i}"] == top._top, i) for i in range(len(columns))],
                else_=ibis.null(dt.int64),
            )
        },
    )


def _mode(values: pd.Series, default: int) -> int:
    """Most common value (ties: smallest); ``default`` when empty."""
    counts = values.dropna().astype(int).value_counts()
    if counts.empty:
        return int(default)
    top = counts[counts == counts.max()]
    return int(min(top.index))


# --------------------------------------------------------------------------- affinities


def category_affinity(
    store: Any,
    as_of: object,
    top_n: int = 3,
    view_weight: float = 1,
    order_weight: float = 5,
) -> pd.DataFrame:
    """Top product categories per customer from product views and ordered lines.

    A category scores ``view_weight`` per ``product_view`` web event and
    ``order_weight`` per order line (per line, not per unit: ten socks are
    not ten times the interest) of an order with non-negative revenue
    (refunds, negative-revenue orders, are left out). Events and lines
    without a category are ignored. Shares are a category's score over the
    customer's total.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; events at or after the end of its window are ignored.
    top_n : int
        How many categories to return per customer.
    view_weight, order_weight : float
        Weight of a product view and of an ordered line.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``, every customer created before the window
        end: ``category_1`` ... ``category_<top_n>`` (best first; ties by
        name; null when the customer has fewer categories),
        ``category_1_share`` ... (0.0 where the category is null),
        ``n_product_views`` and ``n_order_lines`` (with a category).

    Raises
    ------
    DataError
        If no customer was created before the window end.
    """
    if not (isinstance(top_n, int) and top_n >= 1):
        raise ConfigError(f"top_n must be an integer >= 1. Got {top_n!r}.")
    _positive("view_weight", view_weight, allow_zero=True)
    _positive("order_weight", order_weight, allow_zero=True)
    store = open_store(store)
    end = _window_end(as_of)
    cust = _customers_at(store, end).select("customer_id")
    web = store.table("web_events")
    views = web.filter(
        (web.occurred_at < _ts_literal(end))
        & (web.event_type == "product_view")
        & web.category.notnull()
    ).select("customer_id", "category", is_view=True)
    orders = store.table("orders")
    orders = orders.filter((orders.ordered_at < _ts_literal(end)) & (orders.revenue >= 0))
    lines = store.table("order_lines")
    lines = lines.filter(lines.category.notnull())
    ol = lines.inner_join(orders, "order_id").select(
        orders.customer_id, lines.category, is_view=False
    )
    u = views.union(ol)
    per_cat = u.group_by(["customer_id", "category"]).aggregate(
        n_views=u.count(where=u.is_view), n_lines=u.count(where=~u.is_view)
    )
    # Weighted counts rather than sums of weights: the same score whatever the
    # order of summation. Ranked by the score rounded to 1e-9, so that scores
    # equal but for rounding (3 views at 0.1, 1 line at 0.3) tie, and go by name.
    per_cat = per_cat.mutate(
        score=per_cat.n_views.cast(dt.float64) * engine.float_literal(view_weight)
        + per_cat.n_lines.cast(dt.float64) * engine.float_literal(order_weight)
    )
    per_cat = per_cat.mutate(rank_score=per_cat.score.round(9))
    if top_n == 1:
        # The best category is the smallest name among those with the top
        # score: an aggregation and a join instead of ranking every category.
        per_cust = per_cat.group_by("customer_id").aggregate(
            total=per_cat.score.sum(),
            top=per_cat.rank_score.max(),
            n_product_views=per_cat.n_views.sum(),
            n_order_lines=per_cat.n_lines.sum(),
        )
        best = per_cat.inner_join(per_cust.select("customer_id", "top"), "customer_id")
        best = best.filter(best.rank_score == best.top)
        best = best.group_by("customer_id").aggregate(
            category_1=best.category.min(), score_1=best.score.argmin(best.category)
        )
        wj = per_cust.left_join(best, "customer_id")
        wide = wj.select(
            per_cust.customer_id,
            per_cust.n_product_views,
            per_cust.n_order_lines,
            category_1=best.category_1,
            category_1_share=ibis.ifelse(per_cust.total > 0, best.score_1 / per_cust.total, 0.0),
        )
    else:
        total = per_cat.score.sum().over(group_by=per_cat.customer_id)
        rank = ibis.row_number().over(
            group_by=per_cat.customer_id,
            order_by=[ibis.desc(per_cat.rank_score), ibis.asc(per_cat.category)],
        )
        ranked = per_cat.mutate(share=ibis.ifelse(total > 0, per_cat.score / total, 0.0), rank=rank)
        aggs: dict[str, Any] = {
            "n_product_views": ranked.n_views.sum(),
            "n_order_lines": ranked.n_lines.sum(),
        }
        for i in range(top_n):
            aggs[f"category_{i + 1}"] = ranked.category.max(where=ranked["rank"] == i)
            aggs[f"category_{i + 1}_share"] = ranked.share.max(where=ranked["rank"] == i)
        wide = ranked.group_by("customer_id").aggregate(**aggs)
    j = cust.left_join(wide, "customer_id")
    sel: dict[str, Any] = {"customer_id": cust.customer_id}
    for i in range(top_n):
        sel[f"category_{i + 1}"] = wide[f"category_{i + 1}"]
        sel[f"category_{i + 1}_share"] = wide[f"category_{i + 1}_share"].fill_null(0.0)
    sel["n_product_views"] = wide.n_product_views.fill_null(0)
    sel["n_order_lines"] = wide.n_order_lines.fill_null(0)
    df = _execute(j.select(**sel)).set_index("customer_id").sort_index()
    df[["n_product_views", "n_order_lines"]] = df[["n_product_views", "n_order_lines"]].astype(
        "int64"
    )
    for i in range(top_n):
        df[f"category_{i + 1}_share"] = df[f"category_{i + 1}_share"].astype("float64")
        df[f"category_{i + 1}"] = df[f"category_{i + 1}"].astype(object)
    return df


def discount_affinity(
    store: Any,
    as_of: object,
    *,
    min_orders: int = 3,
    prone_share: float = 0.5,
) -> pd.DataFrame:
    """How often each customer buys with a discount.

    Orders with negative revenue (refunds) are left out. An order counts as
    discounted when ``orders.discount > 0``; orders with a null discount are
    *unknown* and left out of the shares (they are not assumed
    undiscounted). When the store holds no discount at all (the optional
    column is absent or empty) a warning is logged and the shares are NaN.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp
        Run date; orders at or after the end of its window are ignored.
    min_orders : int
        Orders with a known discount needed for ``discount_prone``.
    prone_share : float
        ``discount_share`` at or above which a customer is discount prone.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``, every customer created before the window
        end: ``n_orders`` (non-refund orders), ``n_discount_known``,
        ``n_discounted``, ``discount_share`` (= ``n_discounted /
        n_discount_known``; **NaN when** ``n_discount_known == 0``),
        ``discount_depth`` (total discount over total gross value
        ``revenue + discount`` of the known orders; **NaN when** there is
        none) and ``discount_prone`` (bool, never null: at least
        ``min_orders`` known orders and ``discount_share >= prone_share``).

    Raises
    ------
    DataError
        If no customer was created before the window end.
    """
    _positive("min_orders", min_orders)
    _share("prone_share", prone_share)
    store = open_store(store)
    end = _window_end(as_of)
    cust = _customers_at(store, end).select("customer_id")
    orders = store.table("orders")
    o = orders.filter((orders.ordered_at < _ts_literal(end)) & (orders.revenue >= 0))
    known = o.discount.notnull()
    agg = o.group_by("customer_id").aggregate(
        n_orders=o.count(),
        n_discount_known=known.cast(dt.int64).sum(),
        n_discounted=(o.discount > 0).fill_null(False).cast(dt.int64).sum(),
        sum_discount=o.discount.sum(),
        sum_gross=(o.revenue + o.discount).sum(),
    )
    j = cust.left_join(agg, "customer_id")
    out = j.select(
        customer_id=cust.customer_id,
        n_orders=agg.n_orders.fill_null(0),
        n_discount_known=agg.n_discount_known.fill_null(0),
        n_discounted=agg.n_discounted.fill_null(0),
        sum_discount=agg.sum_discount,
        sum_gross=agg.sum_gross,
    )
    df = _execute(out).set_index("customer_id").sort_index()
    ints = ["n_orders", "n_discount_known", "n_discounted"]
    df[ints] = df[ints].astype("int64")
    if df["n_orders"].sum() > 0 and df["n_discount_known"].sum() == 0:
        log.warning("orders.discount: no order carries a discount; discount shares are NaN")
    known_n = df["n_discount_known"].where(df["n_discount_known"] > 0)
    df["discount_share"] = (df["n_discounted"] / known_n).astype("float64")
    gross = df["sum_gross"].astype(float)
    df["discount_depth"] = (df["sum_discount"].astype(float) / gross.where(gross > 0)).astype(
        "float64"
    )
    df["discount_prone"] = (df["n_discount_known"] >= min_orders) & (
        df["discount_share"].fillna(0.0) >= prone_share
    )
    return df[ints + ["discount_share", "discount_depth", "discount_prone"]]


def channel_preference(
    store: Any,
    as_of: object = None,
    *,
    engagement: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Which channel, email or SMS, each customer can and should be reached on.

    The contract records consent (``email_consent``, ``sms_consent``) and
    mailability (``email_status``, ``email``) but no SMS activity, so SMS
    preference cannot be learned from behaviour; what can be inferred:

    * ``email_reachable`` -- an address, ``email_consent`` and status
      ``subscribed``;
    * ``sms_reachable`` -- ``sms_consent`` is true (a null or absent
      ``sms_consent`` is no consent; the contract holds no phone number,
      the SMS provider is assumed to);
    * ``preferred_channel`` -- ``"none"`` when neither, the only one when
      one, and when both: ``"email"`` unless email engagement is
      ``dormant`` or ``never_engaged`` (then ``"sms"``). Without ``as_of``
      and ``engagement`` the tie goes to ``"email"``.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : str or Timestamp, optional
        Run date: only customers created before it, and (when
        ``engagement`` is not given) their :func:`engagement_scores` state
        decides between reachable channels.
    engagement : DataFrame, optional
        A result of :func:`engagement_scores` to use instead of computing it.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``: ``email_reachable``, ``sms_reachable``,
        ``sms_consent_known`` (the store says yes or no), ``email_state``
        (engagement state; null without ``as_of``/``engagement``) and
        ``preferred_channel`` (``email``, ``sms`` or ``none``).
    """
    store = open_store(store)
    if as_of is not None:
        end = _window_end(as_of)
        customers = _customers_at(store, end)
    else:
        customers = store.table("customers")
    c = customers
    out = c.select(
        "customer_id",
        email_reachable=(
            c.email.notnull() & c.email_consent.fill_null(False) & (c.email_status == "subscribed")
        ).fill_null(False),
        sms_reachable=c.sms_consent.fill_null(False),
        sms_consent_known=c.sms_consent.notnull(),
    )
    df = _execute(out).set_index("customer_id").sort_index()
    for col in ("email_reachable", "sms_reachable", "sms_consent_known"):
        df[col] = df[col].astype(bool)
    if engagement is None and as_of is not None:
        engagement = engagement_scores(store, as_of)
    if engagement is not None:
        state = engagement["state"].reindex(df.index).astype(object)
    else:
        state = pd.Series(None, index=df.index, dtype=object)
    df["email_state"] = state
    weak_email = state.isin(["dormant", "never_engaged"])
    df["preferred_channel"] = np.select(
        [
            df["email_reachable"] & df["sms_reachable"] & weak_email,
            df["email_reachable"],
            df["sms_reachable"],
        ],
        ["sms", "email", "sms"],
        default="none",
    )
    return df
