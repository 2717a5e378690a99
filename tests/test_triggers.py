"""Triggers: every window edge, cooldowns, empty data, future events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmkt import triggers as trg
from bmkt.errors import ConfigError
from bmkt.io import open_store

AS_OF = "2024-06-30"  # now = end = 2024-07-01 00:00
NOW = pd.Timestamp("2024-07-01 00:00")
SEC = pd.Timedelta(seconds=1)


# --------------------------------------------------------------------------- fixtures


def customers(ids: list[int], created: str = "2024-01-01", **overrides: list) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"c{i}@example.com" for i in ids],
            "created_at": pd.Timestamp(created),
            "email_status": "subscribed",
            "email_consent": True,
        }
    )
    for col, values in overrides.items():
        frame[col] = values
    return frame


def to_ts(values: pd.Series) -> pd.Series:
    return pd.Series([pd.Timestamp(v) for v in values], index=values.index, dtype="datetime64[ns]")


def orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, customer_id, ordered_at[, revenue])."""
    rows = [r if len(r) == 4 else (*r, 10.0) for r in rows]
    frame = pd.DataFrame(rows, columns=["order_id", "customer_id", "ordered_at", "revenue"])
    frame["ordered_at"] = to_ts(frame["ordered_at"])
    return frame


def web(rows: list[tuple]) -> pd.DataFrame:
    """rows: (customer_id, occurred_at, event_type, product_id, category)."""
    frame = pd.DataFrame(
        rows, columns=["customer_id", "occurred_at", "event_type", "product_id", "category"]
    )
    frame["occurred_at"] = to_ts(frame["occurred_at"])
    return frame


def emails(rows: list[tuple]) -> pd.DataFrame:
    """rows: (customer_id, campaign_id, occurred_at, event_type[, machine_open])."""
    rows = [r if len(r) == 5 else (*r, None) for r in rows]
    frame = pd.DataFrame(
        rows, columns=["customer_id", "campaign_id", "occurred_at", "event_type", "machine_open"]
    )
    frame["occurred_at"] = to_ts(frame["occurred_at"])
    frame["machine_open"] = frame["machine_open"].astype("boolean")
    return frame


def campaigns(rows: list[tuple]) -> pd.DataFrame:
    """rows: (campaign_id, name, kind)."""
    frame = pd.DataFrame(rows, columns=["campaign_id", "name", "kind"])
    frame["sent_at"] = pd.Timestamp("2024-01-01")
    return frame


def make(**tables: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A store dict; customers default to those referenced, orders to none."""
    ids: set[int] = set()
    for t in tables.values():
        if "customer_id" in t.columns:
            ids |= set(t["customer_id"])
    tables.setdefault("customers", customers(sorted(ids) or [1]))
    empty = orders([]).astype({"order_id": "int64", "customer_id": "int64", "revenue": float})
    tables.setdefault("orders", empty)
    return tables


def ids(frame: pd.DataFrame) -> list[int]:
    return frame["customer_id"].tolist()


# --------------------------------------------------------------------------- clock


def test_clock_date_and_instant() -> None:
    ck = trg.clock("2024-06-30")
    assert (ck.end, ck.now, ck.day) == (NOW, NOW, pd.Timestamp("2024-06-30"))
    ck = trg.clock("2024-06-30 12:00")
    assert ck.now == pd.Timestamp("2024-06-30 12:00")
    assert ck.end == pd.Timestamp("2024-06-30 12:00:00.000001")
    assert ck.day == pd.Timestamp("2024-06-30")


# --------------------------------------------------------------------------- cart abandonment


def test_cart_abandonment_window_edges() -> None:
    events = web(
        [
            (1, NOW - pd.Timedelta(hours=24), "add_to_cart", 10, "shoes"),  # exactly 24h: yes
            (2, NOW - pd.Timedelta(hours=24) + SEC, "add_to_cart", 10, "shoes"),  # too young
            (3, NOW - pd.Timedelta(days=7), "add_to_cart", 10, "shoes"),  # lookback edge: yes
            (4, NOW - pd.Timedelta(days=7) - SEC, "add_to_cart", 10, "shoes"),  # too old
            (5, "2024-06-28 10:00", "add_to_cart", 10, "shoes"),  # ordered 1h later
            (6, "2024-06-28 10:00", "add_to_cart", 10, "shoes"),  # ordered before: yes
            (7, "2024-06-28 10:00", "add_to_cart", 10, "shoes"),  # ordered at the same instant
            (8, "2024-06-28 10:00", "add_to_cart", 10, "shoes"),  # refund after: yes
            (9, "2024-06-28 10:00", "product_view", 10, "shoes"),  # not an add
            (10, "2024-06-28 10:00", "add_to_cart", 10, "shoes"),  # ordered 3 days later
        ]
    )
    ords = orders(
        [
            (1, 5, "2024-06-28 11:00"),
            (2, 6, "2024-06-20 10:00"),
            (3, 7, "2024-06-28 10:00"),
            (4, 8, "2024-06-29 10:00", -10.0),
            (5, 10, "2024-06-30 23:59:59"),
        ]
    )
    out = trg.cart_abandonment(make(web_events=events, orders=ords), AS_OF)
    assert ids(out) == [1, 3, 6, 8]
    assert list(out.columns) == [
        "customer_id",
        "trigger",
        "triggered_at",
        "products",
        "categories",
        "n_products",
    ]
    assert (out["trigger"] == "cart_abandonment").all()
    assert out.loc[0, "triggered_at"] == NOW - pd.Timedelta(hours=24)


def test_cart_abandonment_products_most_recent_first() -> None:
    events = web(
        [
            (1, "2024-06-25 10:00", "add_to_cart", 30, "bags"),
            (1, "2024-06-26 10:00", "add_to_cart", 10, "shoes"),
            (1, "2024-06-27 10:00", "add_to_cart", 20, "shoes"),
            (1, "2024-06-28 10:00", "add_to_cart", 30, "bags"),  # re-added: most recent
            (1, "2024-06-30 23:00", "add_to_cart", 40, "hats"),  # too young: not listed
        ]
    )
    out = trg.cart_abandonment(make(web_events=events), AS_OF)
    row = out.iloc[0]
    assert row["products"] == [30, 20, 10]
    assert row["categories"] == ["bags", "shoes"]
    assert row["n_products"] == 3
    assert row["triggered_at"] == pd.Timestamp("2024-06-28 10:00")


def test_cart_abandonment_ignores_future_events() -> None:
    events = web([(1, "2024-06-29 08:00", "add_to_cart", 10, "shoes")])
    ords = orders([(1, 1, "2024-06-30 12:00:01")])  # after the as_of instant
    store = make(web_events=events, orders=ords)
    assert ids(trg.cart_abandonment(store, "2024-06-30 12:00")) == [1]
    assert ids(trg.cart_abandonment(store, "2024-06-30 12:00:01")) == []
    # an add after as_of is not seen even with hours=0
    late = make(web_events=web([(1, "2024-07-01 00:00", "add_to_cart", 10, "shoes")]))
    assert trg.cart_abandonment(late, AS_OF, hours=0).empty


# --------------------------------------------------------------------------- browse abandonment


def views(cust: int, product: int, times: list, category: str = "shoes") -> list[tuple]:
    return [(cust, t, "product_view", product, category) for t in times]


def test_browse_abandonment_edges() -> None:
    start = NOW - pd.Timedelta(days=3)
    rows = (
        views(1, 10, [start, "2024-06-29", "2024-06-30 10:00"])  # first view on the edge: yes
        + views(2, 10, [start - SEC, "2024-06-29", "2024-06-30 10:00"])  # only 2 in window
        + views(3, 10, ["2024-06-28 10:00", "2024-06-29", "2024-06-30 10:00"])
        + [(3, "2024-06-29 12:00", "add_to_cart", 10, "shoes")]  # added it: no
        + views(4, 10, ["2024-06-28 10:00", "2024-06-29", "2024-06-30 10:00"])  # ordered: no
        + views(5, 10, ["2024-06-28 10:00", "2024-06-29", "2024-06-30 10:00"])
        + [(5, "2024-06-29 12:00", "add_to_cart", 99, "shoes")]  # other product: still yes
        + views(6, 10, ["2024-06-28 10:00", "2024-06-29", "2024-07-01 00:00"])  # future view
    )
    ords = orders([(1, 4, "2024-06-30 11:00")])
    out = trg.browse_abandonment(make(web_events=web(rows), orders=ords), AS_OF)
    assert ids(out) == [1, 5]
    assert out.loc[0, "product_id"] == 10
    assert out.loc[0, "category"] == "shoes"
    assert out.loc[0, "n_views"] == 3
    assert out.loc[0, "triggered_at"] == pd.Timestamp("2024-06-30 10:00")


def test_browse_abandonment_picks_most_viewed_and_by_category() -> None:
    rows = views(1, 10, ["2024-06-29 01:00"] * 3) + views(
        1, 20, ["2024-06-29 02:00"] * 4, category="bags"
    )
    rows += views(2, 30, ["2024-06-29 01:00"]) + views(2, 31, ["2024-06-29 02:00", "2024-06-29"])
    store = make(web_events=web(rows))
    out = trg.browse_abandonment(store, AS_OF)
    assert ids(out) == [1]
    assert out.loc[0, "product_id"] == 20
    by_cat = trg.browse_abandonment(store, AS_OF, by="category")
    assert ids(by_cat) == [1, 2]
    assert by_cat.set_index("customer_id").loc[2, "product_id"] == 31  # most recent in category
    with pytest.raises(ConfigError, match=r"Valid options for 'by' are"):
        trg.browse_abandonment(store, AS_OF, by="brand")


# --------------------------------------------------------------------------- welcome


def test_welcome_edges() -> None:
    start = NOW - pd.Timedelta(days=14)
    cust = customers([1, 2, 3, 4, 5])
    cust["created_at"] = [start, start - SEC, pd.Timestamp("2024-06-25"), NOW, start]
    ords = orders([(1, 3, "2024-06-26")])
    out = trg.welcome(make(customers=cust, orders=ords), AS_OF)
    assert ids(out) == [1, 5]
    assert out["days_since_signup"].tolist() == [13, 13]
    assert out["triggered_at"].tolist() == [start, start]


# --------------------------------------------------------------------------- post purchase


def test_post_purchase_calendar_day_edges() -> None:
    ords = orders(
        [
            (1, 1, "2024-06-23 00:00:00"),  # first instant of the day: yes
            (2, 2, "2024-06-23 23:59:59"),  # last second: yes
            (3, 3, "2024-06-22 23:59:59"),  # the day before: no
            (4, 4, "2024-06-24 00:00:00"),  # the day after: no
            (5, 1, "2024-06-23 12:00:00"),  # second order the same day
            (6, 5, "2024-06-23 12:00:00", -5.0),  # refund: no
        ]
    )
    lines = pd.DataFrame(
        {
            "order_id": [1, 1, 5, 3],
            "product_id": [10, 11, 12, 13],
            "category": ["shoes", "bags", "shoes", "hats"],
            "quantity": [1, 1, 1, 1],
            "price": [1.0, 1.0, 1.0, 1.0],
        }
    )
    out = trg.post_purchase(make(orders=ords, order_lines=lines), AS_OF)
    assert ids(out) == [1, 2]
    first = out.iloc[0]
    assert first["order_ids"] == [1, 5]
    assert first["categories"] == ["bags", "shoes"]
    assert first["revenue"] == 20.0
    assert first["triggered_at"] == pd.Timestamp("2024-06-23 12:00")
    assert out.iloc[1]["categories"] == []  # no order lines


# --------------------------------------------------------------------------- re-engagement


def test_reengagement_edges() -> None:
    since = NOW - pd.Timedelta(days=90)
    sent_at = pd.Timestamp("2024-06-01")
    cust = customers(
        list(range(1, 11)),
        email_status=["subscribed"] * 4 + ["unsubscribed"] + ["subscribed"] * 5,
        email_consent=[True] * 5 + [False] + [True] * 4,
    )
    ev = [(c, 100, sent_at, "sent") for c in range(1, 11) if c != 8]
    ev += [
        (2, 100, since, "open"),  # open exactly at the window start: engaged
        (3, 100, since - SEC, "open"),  # a second earlier: not engaged
        (4, 100, "2024-06-02", "open", True),  # machine open only
        (7, 100, "2024-06-02", "click"),
        (8, 100, since - SEC, "sent"),  # no email in the window
        (9, 100, "2024-07-01 00:00", "open"),  # future open: ignored
        (10, 100, "2024-06-02", "open", False),
    ]
    store = make(customers=cust, email_events=emails(ev), campaigns=campaigns([(100, "x", "n")]))
    out = trg.reengagement(store, AS_OF)
    assert ids(out) == [1, 3, 4, 9]
    row = out.set_index("customer_id").loc[3]
    assert row["last_engaged_at"] == since - SEC
    assert row["emails_received"] == 1
    assert row["triggered_at"] == sent_at
    assert pd.isna(out.set_index("customer_id").loc[1, "last_engaged_at"])
    assert ids(trg.reengagement(store, AS_OF, exclude_machine=False)) == [1, 3, 9]
    assert ids(trg.reengagement(store, AS_OF, min_emails=2)) == []


# --------------------------------------------------------------------------- winback


def test_winback_thresholds_are_strict() -> None:
    scores = pd.DataFrame(
        {"p_alive": [0.29, 0.3, None, 0.9], "churn_risk": [0.1, 0.7, 0.71, None]},
        index=pd.Index([1, 2, 3, 4], name="customer_id"),
    )
    before = scores.copy()
    out = trg.winback(scores, AS_OF)
    assert ids(out) == [1, 3]
    assert out["reason"].tolist() == ["p_alive", "churn_risk"]
    assert (out["triggered_at"] == pd.Timestamp("2024-06-30")).all()  # inside the window
    at_noon = trg.winback(scores, "2024-06-30 12:00")
    assert (at_noon["triggered_at"] == pd.Timestamp("2024-06-30 12:00")).all()
    pd.testing.assert_frame_equal(scores, before)
    only_churn = trg.winback(scores[["churn_risk"]].reset_index(), AS_OF)
    assert ids(only_churn) == [3]
    with pytest.raises(ConfigError, match=r"winback: scores need a 'p_alive' or 'churn_risk'"):
        trg.winback(pd.DataFrame({"clv": [1.0]}), AS_OF)


# --------------------------------------------------------------------------- anniversary


def test_anniversary_and_feb_29() -> None:
    ords = orders(
        [
            (1, 1, "2024-02-29 10:00"),  # leap-day first order
            (2, 2, "2023-02-28 09:00"),
            (3, 3, "2025-02-28 09:00"),  # this year: not an anniversary
            (4, 4, "2023-01-10"),  # first order another day
            (5, 4, "2024-02-28"),
            (6, 5, "2020-02-29"),
        ]
    )
    store = make(orders=ords)
    out = trg.anniversary(store, "2025-02-28")  # non-leap year: Feb 29 celebrated on Feb 28
    assert ids(out) == [1, 2, 5]
    assert out["years"].tolist() == [1, 2, 5]
    assert out.loc[0, "first_order_at"] == pd.Timestamp("2024-02-29 10:00")
    assert ids(trg.anniversary(store, "2028-02-28")) == [2, 3]  # leap year: not on the 28th
    assert ids(trg.anniversary(store, "2028-02-29")) == [1, 5]


# --------------------------------------------------------------------------- replenishment


def test_replenishment_overdue_edge() -> None:
    ords = orders(
        [
            (1, 1, "2024-06-01"),
            (2, 1, "2024-06-11"),
            (3, 1, "2024-06-21"),
            (4, 1, "2024-06-21 15:00"),  # same day: one purchase occasion
            (5, 2, "2024-06-01"),
            (6, 2, "2024-06-11"),  # only two purchase days
        ]
    )
    store = make(orders=ords)
    # last order 2024-06-21 15:00, median gap 10 days: overdue at 2024-07-06 15:00
    assert ids(trg.replenishment(store, "2024-07-06 14:59:59")) == []
    out = trg.replenishment(store, "2024-07-06 15:00")
    assert ids(out) == [1]
    row = out.iloc[0]
    assert row["n_orders"] == 3
    assert row["median_gap_days"] == 10.0
    assert row["due_at"] == pd.Timestamp("2024-07-01 15:00")
    assert row["overdue_at"] == pd.Timestamp("2024-07-06 15:00")
    assert ids(trg.replenishment(store, "2024-07-06 15:00", min_orders=2)) == [1, 2]
    assert ids(trg.replenishment(store, "2024-07-01 15:00", grace=1.0)) == [1]
    with pytest.raises(ConfigError, match=r"'min_orders' must be an integer >= 2"):
        trg.replenishment(store, AS_OF, min_orders=1)


# --------------------------------------------------------------------------- empty data


@pytest.mark.parametrize("name", [t for t in trg.TRIGGERS if t != "winback"])
def test_no_data_gives_empty_frame_with_columns(name: str) -> None:
    store = make()  # customers and one old order; no web or email tables at all
    out = getattr(trg, name)(store, "2001-06-30")
    assert out.empty
    assert list(out.columns) == [*trg.BASE_COLUMNS, *trg.CONTEXT_COLUMNS[name]]


def test_winback_empty_scores() -> None:
    empty = pd.DataFrame({"p_alive": pd.Series(dtype=float)})
    out = trg.winback(empty, AS_OF)
    assert out.empty
    assert list(out.columns) == [*trg.BASE_COLUMNS, *trg.CONTEXT_COLUMNS["winback"]]


# --------------------------------------------------------------------------- cooldown


def cooldown_store() -> dict[str, pd.DataFrame]:
    limit = NOW - pd.Timedelta(days=10)
    ev = emails(
        [
            (1, 100, limit, "sent"),  # exactly at the cooldown edge: blocked
            (2, 100, limit - SEC, "sent"),  # a second earlier: free
            (3, 100, "2024-06-29", "holdout"),  # held out recently: blocked
            (4, 200, "2024-06-29", "sent"),  # promotional campaign of the same name
            (5, 300, "2024-06-29", "sent"),  # a different trigger's message
            (6, 100, "2024-07-01 00:00", "sent"),  # future: ignored
        ]
    )
    camps = campaigns(
        [
            (100, "welcome", "triggered"),
            (200, "welcome", "promotional"),
            (300, "post_purchase", "triggered"),
        ]
    )
    return make(email_events=ev, campaigns=camps, customers=customers([1, 2, 3, 4, 5, 6]))


def triggered_frame(ids_: list[int], trigger: str = "welcome") -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": ids_, "trigger": trigger, "triggered_at": NOW, "days_since_signup": 1}
    )


def test_cooldown_edges() -> None:
    frame = triggered_frame([1, 2, 3, 4, 5, 6])
    before = frame.copy()
    out = trg.apply_cooldown(frame, cooldown_store(), AS_OF, cooldown_days={"welcome": 10})
    assert ids(out) == [2, 4, 5, 6]
    pd.testing.assert_frame_equal(frame, before)
    off = trg.apply_cooldown(frame, cooldown_store(), AS_OF, cooldown_days={"welcome": 0})
    assert ids(off) == [1, 2, 3, 4, 5, 6]


def test_cooldown_campaign_name_mapping() -> None:
    frame = triggered_frame([1, 3, 5], trigger="post_purchase")
    store = cooldown_store()
    assert ids(trg.apply_cooldown(frame, store, AS_OF)) == [1, 3]
    # customer 1's welcome message is 10 days old: outside post_purchase's 7-day cooldown
    mapped = trg.apply_cooldown(frame, store, AS_OF, campaign_names={"post_purchase": ["welcome"]})
    assert ids(mapped) == [1, 5]


# --------------------------------------------------------------------------- all together


def test_detect_triggers_and_wide_flags() -> None:
    cust = customers([1, 2, 3])
    cust["created_at"] = [
        pd.Timestamp("2024-06-25"),
        pd.Timestamp("2024-06-26"),
        pd.Timestamp("2023-01-01"),
    ]
    events = web([(3, "2024-06-28 10:00", "add_to_cart", 10, "shoes")])
    ev = emails([(2, 100, "2024-06-27", "sent")])
    camps = campaigns([(100, "welcome", "triggered")])
    store = open_store(make(customers=cust, web_events=events, email_events=ev, campaigns=camps))
    scores = pd.DataFrame({"p_alive": [0.1]}, index=pd.Index([3], name="customer_id"))
    out = trg.detect_triggers(store, AS_OF, scores=scores)
    assert list(zip(out["trigger"], out["customer_id"], strict=True)) == [
        ("cart_abandonment", 3),
        ("welcome", 1),  # customer 2 got the welcome message two days ago
        ("reengagement", 2),
        ("winback", 3),
    ]
    assert list(out.columns[:3]) == list(trg.BASE_COLUMNS)
    assert out.loc[out["trigger"] == "cart_abandonment", "products"].iloc[0] == [10]
    no_cd = trg.detect_triggers(store, AS_OF, config={"reengagement": False}, cooldown=False)
    assert sorted(no_cd.loc[no_cd["trigger"] == "welcome", "customer_id"]) == [1, 2]
    assert "reengagement" not in set(no_cd["trigger"])
    assert "winback" not in set(no_cd["trigger"])  # no scores
    custom = trg.detect_triggers(store, AS_OF, config={"welcome": {"days": 5}}, cooldown=False)
    assert ids(custom[custom["trigger"] == "welcome"]) == [2]

    flags = trg.wide_flags(out, cust)
    assert list(flags.columns) == [f"trg_{t}" for t in trg.TRIGGERS]
    assert flags.index.tolist() == [1, 2, 3]
    assert flags.loc[3, "trg_cart_abandonment"] and flags.loc[3, "trg_winback"]
    assert not flags.loc[2, "trg_welcome"]
    assert flags.dtypes.eq(bool).all()


def test_detect_triggers_config_errors_and_empty() -> None:
    store = make()
    with pytest.raises(ConfigError, match=r"unknown trigger 'welcom' \(did you mean 'welcome'\?\)"):
        trg.detect_triggers(store, AS_OF, config={"welcom": {}})
    with pytest.raises(ConfigError, match=r"triggers config: welcome: .*'hours'"):
        trg.detect_triggers(store, AS_OF, config={"welcome": {"hours": 3}})
    out = trg.detect_triggers(store, "2001-06-30")
    assert out.empty
    assert list(out.columns) == list(trg.empty_frame().columns)
    assert trg.wide_flags(out, [1, 2]).to_numpy().sum() == 0


def test_per_group_lists_match_pandas_groupby() -> None:
    from bmkt.triggers import _ordered_unique, _per_group

    keys = pd.Series([1, 1, 2, 4, 4, 4, np.nan], name="customer_id")
    values = pd.Series(["b", "a", None, "c", "c", "a", "z"], name="category")
    for fn in (list, _ordered_unique):
        got = _per_group(keys.iloc[:-1].astype("int64"), values.iloc[:-1], fn)
        want = values.iloc[:-1].groupby(keys.iloc[:-1].astype("int64"), sort=True).agg(fn)
        assert got.index.equals(want.index) and got.tolist() == want.tolist()
    # numbers come as Python scalars, as pandas' agg(list) gives them (the lists are published)
    ids = pd.Series([10, 11, 12], dtype="int64")
    got = _per_group(pd.Series([1, 1, 2]), ids).tolist()
    want = ids.groupby(pd.Series([1, 1, 2])).agg(list).tolist()
    assert got == want and [type(x) for g in got for x in g] == [type(x) for g in want for x in g]
    # null keys are left out, as pandas' groupby does
    got = _per_group(keys, values)
    assert got.index.tolist() == [1.0, 2.0, 4.0] and got.tolist()[-1] == ["c", "c", "a"]
    assert _per_group(keys.iloc[:0], values.iloc[:0]).empty
    with pytest.raises(ValueError, match="sorted"):
        _per_group(keys.iloc[::-1], values)
