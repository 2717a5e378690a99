"""Features: a hand-built store with known values, leakage, consistency with engagement.

The hand-built store (:func:`hand_tables`) has one busy customer (1), one with
no activity at all (2), one recent buyer who was held out of a campaign (3)
and one who signs up after the cutoff (4). Expected values are computed from
the explicit timestamps below, so each assertion reads as the feature's
definition.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from bmkt.engagement import engagement_scores
from bmkt.errors import ConfigError, DataError
from bmkt.features import (
    FEATURES,
    NULLABLE_FEATURES,
    build_features,
    build_features_at,
    build_features_before,
    build_features_before_many,
    cutoff_end,
)
from bmkt.io import open_store
from bmkt.simulate import simulate_store

AS_OF = "2024-06-30"
END = pd.Timestamp("2024-07-01")  # exclusive end of the AS_OF window
DAY = pd.Timedelta(days=1)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
APPLE_WEBKIT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
T = pd.Timestamp

ORDERS = [  # order_id, customer, ordered_at, revenue, discount
    (1, 1, "2024-01-02 10:00", 100.0, 10.0),
    (2, 1, "2024-01-02 15:00", 50.0, 0.0),
    (3, 1, "2024-03-15 12:00", 80.0, None),
    (4, 1, "2024-05-01 12:00", 40.0, 0.0),
    (5, 1, "2024-05-10 12:00", -20.0, 0.0),  # refund
    (6, 1, "2024-06-20 12:00", 60.0, 5.0),
    (7, 1, "2024-07-01 00:00", 999.0, 0.0),  # at the cutoff: not before it
    (8, 1, "2024-06-30 23:00", 30.0, 0.0),
    (9, 3, "2024-06-16 09:00", 20.0, 0.0),
]
CAMPAIGNS = [  # campaign_id, sent_at
    (10, "2024-04-29 08:00"),
    (11, "2024-06-01 08:00"),
    (12, "2024-06-17 08:00"),
    (13, "2024-06-28 08:00"),
    (14, "2024-07-02 08:00"),
]


def hand_tables() -> dict[str, pd.DataFrame]:
    customers = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "email": ["a@x.com", "b@x.com", "c@x.com", "d@x.com"],
            "created_at": pd.to_datetime(["2024-01-01", "2024-03-01", "2024-06-15", "2024-07-02"]),
            "email_status": "subscribed",
            "email_consent": True,
        }
    )
    orders = pd.DataFrame(
        ORDERS, columns=["order_id", "customer_id", "ordered_at", "revenue", "discount"]
    )
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"])
    lines = pd.DataFrame(
        {
            "order_id": [1, 1, 3, 6, 7],
            "product_id": [1, 2, 3, 4, 5],
            "category": ["apparel", "shoes", "apparel", "books", "electronics"],
            "quantity": 1,
            "price": [50.0, 50.0, 80.0, 60.0, 999.0],
        }
    )
    web = pd.DataFrame(
        [
            (1, "2024-05-20 10:00", "search", None),
            (1, "2024-06-20 11:30", "page_view", None),
            (1, "2024-06-20 11:40", "product_view", "home"),
            (1, "2024-06-20 11:50", "add_to_cart", "home"),  # bought at 12:00
            (1, "2024-06-25 20:00", "product_view", "beauty"),
            (1, "2024-06-25 20:05", "add_to_cart", "beauty"),  # abandoned
            (1, "2024-06-30 20:00", "add_to_cart", "beauty"),  # < 1 day old: not judged
            (1, "2024-07-01 05:00", "product_view", "toys"),  # after the cutoff
        ],
        columns=["customer_id", "occurred_at", "event_type", "category"],
    )
    web["occurred_at"] = pd.to_datetime(web["occurred_at"])
    web["product_id"] = pd.array([None, None, 7, 7, 8, 8, 8, 9], dtype="Int64")
    web = web[["customer_id", "occurred_at", "event_type", "product_id", "category"]]
    s = pd.Timedelta(seconds=1)
    email = [  # customer, campaign, at, type, user agent
        (1, 11, T("2024-06-01 08:00") + 10 * s, "sent", None),
        (1, 11, T("2024-06-01 08:00") + 20 * s, "delivered", None),
        (1, 11, T("2024-06-01 19:00"), "open", CHROME),
        (1, 11, T("2024-06-01 19:01"), "click", CHROME),
        (1, 12, T("2024-06-17 08:00") + 10 * s, "sent", None),
        (1, 12, T("2024-06-17 08:00") + 20 * s, "delivered", None),
        (1, 12, T("2024-06-17 08:00") + 25 * s, "open", APPLE_WEBKIT),  # fast, one of three
        (1, 13, T("2024-06-28 08:00") + 10 * s, "sent", None),
        (1, 13, T("2024-06-28 08:00") + 20 * s, "delivered", None),
        (1, 14, T("2024-07-02 08:00") + 10 * s, "sent", None),  # after the cutoff
        (1, 14, T("2024-07-02 08:00") + 20 * s, "delivered", None),
        (1, 14, T("2024-07-02 09:00"), "open", CHROME),
        (3, 13, T("2024-06-28 08:00"), "holdout", None),
    ]
    email_events = pd.DataFrame(
        email, columns=["customer_id", "campaign_id", "occurred_at", "event_type", "user_agent"]
    )
    campaigns = pd.DataFrame(CAMPAIGNS, columns=["campaign_id", "sent_at"])
    campaigns["sent_at"] = pd.to_datetime(campaigns["sent_at"])
    campaigns["name"] = "c" + campaigns["campaign_id"].astype(str)
    campaigns["kind"] = "promotional"
    return {
        "customers": customers,
        "orders": orders,
        "order_lines": lines,
        "web_events": web,
        "email_events": email_events,
        "campaigns": campaigns[["campaign_id", "name", "kind", "sent_at"]],
    }


def days(a: str | pd.Timestamp, b: str | pd.Timestamp = END) -> float:
    return (pd.Timestamp(b) - pd.Timestamp(a)) / DAY


@pytest.fixture(scope="module")
def hand() -> pd.DataFrame:
    return build_features(hand_tables(), AS_OF)


@pytest.fixture(scope="module")
def sim() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=1500, days=400, seed=5)


@pytest.fixture(scope="module")
def sim_store(sim):
    return open_store(sim)


# --------------------------------------------------------------------------- catalogue


def test_columns_are_the_catalogue_and_only_documented_columns_are_nan(hand, sim_store) -> None:
    X = build_features(sim_store, "2024-05-31")
    for frame in (hand, X):
        assert list(frame.columns) == list(FEATURES)
        assert frame.index.name == "customer_id"
        assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns)
        nan_cols = set(frame.columns[frame.isna().any()])
        assert nan_cols <= set(NULLABLE_FEATURES)
    for name in NULLABLE_FEATURES:
        assert "NaN" in FEATURES[name], name
    assert set(NULLABLE_FEATURES) <= set(FEATURES)


def test_customers_created_after_the_cutoff_are_left_out(hand) -> None:
    assert list(hand.index) == [1, 2, 3]
    assert hand.attrs["cutoff"] == END.isoformat()


# --------------------------------------------------------------------------- known values


def test_rfm_features_of_the_busy_customer(hand) -> None:
    r = hand.loc[1]
    # purchases: orders 1, 2, 3, 4, 6, 8 (5 is a refund, 7 is at the cutoff)
    assert r["n_orders"] == 6
    assert r["frequency"] == 4  # purchase days 01-02, 03-15, 05-01, 06-20, 06-30
    assert r["recency_days"] == pytest.approx(days("2024-06-30 23:00"))
    assert r["T_days"] == pytest.approx(days("2024-01-02 10:00"))
    assert r["purchase_span_days"] == pytest.approx(days("2024-01-02 10:00", "2024-06-30 23:00"))
    assert r["mean_gap_days"] == pytest.approx(r["purchase_span_days"] / 4)
    assert r["recency_gap_ratio"] == pytest.approx(r["recency_days"] / r["mean_gap_days"])
    assert r["monetary"] == pytest.approx(360 / 6)
    assert r["total_revenue"] == pytest.approx(340.0)  # refund netted
    # last 90 days: from 2024-04-02; previous 90: 2024-01-03 .. 2024-04-02
    assert r["orders_last_90d"] == 3
    assert r["orders_prev_90d"] == 1
    assert r["order_trend_90d"] == 2
    assert r["revenue_last_90d"] == pytest.approx(40 - 20 + 60 + 30)
    assert r["revenue_prev_90d"] == pytest.approx(80.0)
    assert r["revenue_trend_90d"] == pytest.approx(30.0)
    assert r["discount_share"] == pytest.approx(2 / 5)  # order 3's discount is unknown
    assert r["n_categories_bought"] == 3  # apparel, shoes, books (order 7 is too late)
    assert r["tenure_days"] == pytest.approx(days("2024-01-01"))


def test_web_features_of_the_busy_customer(hand) -> None:
    r = hand.loc[1]
    assert r["page_views_30d"] == 1
    assert r["product_views_30d"] == 2
    assert r["searches_30d"] == 0  # 2024-05-20 is 41 days back
    assert r["cart_adds_30d"] == 3
    assert r["abandoned_carts_30d"] == 1  # 06-20 was bought, 06-30 not judged yet
    assert r["n_sessions"] == 4
    assert r["sessions_30d"] == 3
    assert r["sessions_90d"] == 4
    assert r["days_since_last_visit"] == pytest.approx(days("2024-06-30 20:00"))
    assert r["n_categories_viewed"] == 2  # home, beauty (toys is after the cutoff)


def test_email_features_of_the_busy_customer(hand) -> None:
    r = hand.loc[1]
    assert r["n_delivered"] == 3  # campaign 14 is after the cutoff
    assert r["delivered_30d"] == 3
    assert r["n_human_opens"] == 2  # one fast open out of three emails is no proxy pattern
    assert r["n_machine_opens"] == 0
    assert r["is_proxy_user"] == 0
    assert r["human_opens_30d"] == 2
    assert r["n_clicks"] == 1
    assert r["human_open_rate"] == pytest.approx(2 / 3)
    assert r["click_rate"] == pytest.approx(1 / 3)
    assert r["days_since_human_open"] == pytest.approx(days(T("2024-06-17 08:00:25")))
    assert r["days_since_click"] == pytest.approx(days("2024-06-01 19:01"))
    assert r["email_opted_out"] == 0
    # campaigns sent before 06-26 (5 days before the cutoff): 10 (not mailed, order 4
    # within 5 days), 11 (mailed, no order), 12 (mailed, order 6 within 5 days)
    assert r["email_order_rate"] == pytest.approx(1 / 2)
    assert r["unmailed_order_rate"] == pytest.approx(1.0)
    assert r["email_lift_history"] == pytest.approx(-0.5)


def test_customer_without_any_event_has_zero_counts_and_documented_nans(hand) -> None:
    r = hand.loc[2]
    nan = {c for c in FEATURES if pd.isna(r[c])}
    assert nan == {
        "recency_days", "T_days", "purchase_span_days", "mean_gap_days", "recency_gap_ratio",
        "monetary", "discount_share", "human_open_rate", "click_rate", "days_since_human_open",
        "days_since_click", "email_order_rate", "email_lift_history", "days_since_last_visit",
    }  # fmt: skip
    counts = [c for c in FEATURES if c.startswith("n_") or c.endswith(("_30d", "_90d"))]
    assert (r[counts] == 0).all()
    assert r["frequency"] == 0 and r["total_revenue"] == 0.0
    assert r["unmailed_order_rate"] == 0.0  # campaigns 10, 11, 12: not mailed, no order


def test_holdout_customer(hand) -> None:
    r = hand.loc[3]
    assert r["n_orders"] == 1 and r["frequency"] == 0
    assert np.isnan(r["mean_gap_days"])
    assert r["n_delivered"] == 0  # a holdout is no delivery
    assert r["unmailed_order_rate"] == 0.0  # campaign 12 after signup; the order came before it
    assert np.isnan(r["email_order_rate"])


def test_cutoff_is_the_end_of_the_as_of_day(hand) -> None:
    # order 8 at 23:00 on the as_of day counts, order 7 at 00:00 the next day does not
    assert cutoff_end(AS_OF) == END
    earlier = build_features(hand_tables(), "2024-06-30 22:00")
    assert earlier.loc[1, "n_orders"] == 5
    assert hand.loc[1, "n_orders"] == 6


# --------------------------------------------------------------------------- leakage


def _plant_future(tables: dict[str, pd.DataFrame], customer: int, after: pd.Timestamp) -> dict:
    """Copy of ``tables`` with events of ``customer`` at and after ``after``."""
    t = copy.deepcopy(tables)
    at = [after, after + pd.Timedelta(hours=3), after + pd.Timedelta(days=2)]
    new_order = int(t["orders"]["order_id"].max()) + 1
    t["orders"] = pd.concat(
        [
            t["orders"],
            pd.DataFrame(
                {
                    "order_id": [new_order, new_order + 1],
                    "customer_id": customer,
                    "ordered_at": [at[0], at[2]],
                    "revenue": [55.0, -5.0],
                    "discount": [3.0, 0.0],
                }
            ),
        ],
        ignore_index=True,
    )
    t["order_lines"] = pd.concat(
        [
            t["order_lines"],
            pd.DataFrame(
                {"order_id": [new_order], "product_id": [1], "category": ["sports"],
                 "quantity": [1], "price": [55.0]}
            ),
        ],
        ignore_index=True,
    )  # fmt: skip
    web = pd.DataFrame(
        {
            "customer_id": customer,
            "occurred_at": at,
            "event_type": ["product_view", "add_to_cart", "search"],
            "product_id": pd.array([1, 1, None], dtype="Int64"),
            "category": ["sports", "sports", None],
        }
    )
    t["web_events"] = pd.concat(
        [t["web_events"], web.reindex(columns=t["web_events"].columns)], ignore_index=True
    )
    camp = int(t["campaigns"]["campaign_id"].max()) + 1
    t["campaigns"] = pd.concat(
        [
            t["campaigns"],
            pd.DataFrame({"campaign_id": [camp], "name": ["future"], "kind": ["promotional"],
                          "sent_at": [at[0]]}),
        ],
        ignore_index=True,
    )  # fmt: skip
    ev = pd.DataFrame(
        {
            "customer_id": customer,
            "campaign_id": camp,
            "occurred_at": [at[0], at[0] + pd.Timedelta(seconds=5), at[1], at[1], at[2]],
            "event_type": ["sent", "delivered", "open", "click", "unsubscribe"],
            "user_agent": [None, None, CHROME, CHROME, None],
        }
    )
    t["email_events"] = pd.concat(
        [t["email_events"], ev.reindex(columns=t["email_events"].columns)], ignore_index=True
    )
    return t


def test_future_events_do_not_change_features_hand(hand) -> None:
    planted = _plant_future(hand_tables(), customer=2, after=END)
    pd.testing.assert_frame_equal(build_features(planted, AS_OF), hand)


def test_future_events_do_not_change_features_simulated(sim, sim_store) -> None:
    cutoff = "2024-04-30"
    end = cutoff_end(cutoff)
    before = build_features(sim_store, cutoff)
    # a buyer, a never-buyer and the customer with the most email events
    buyers = before.index[before["n_orders"] > 0]
    never = before.index[before["n_orders"] == 0]
    busiest = int(sim["email_events"]["customer_id"].value_counts().index[0])
    planted = sim
    for c in {int(buyers[0]), int(never[0]), busiest}:
        planted = _plant_future(planted, customer=c, after=end)
    after = build_features(planted, cutoff)
    pd.testing.assert_frame_equal(after, before)


def test_batched_points_see_only_their_own_past(sim) -> None:
    """Events between two cutoffs change the later points, never the earlier ones."""
    early, late = cutoff_end("2024-03-31"), cutoff_end("2024-05-31")
    ids = sim["customers"]["customer_id"].iloc[:400]
    points = pd.DataFrame(
        {"customer_id": np.r_[ids, ids], "cutoff": np.r_[[early] * 400, [late] * 400]}
    )
    base = build_features_at(sim, points)
    planted = _plant_future(sim, customer=int(ids.iloc[0]), after=early + pd.Timedelta(days=1))
    moved = build_features_at(planted, points)
    pd.testing.assert_frame_equal(moved[moved["cutoff"] == early], base[base["cutoff"] == early])
    changed = moved[moved["cutoff"] == late].set_index("customer_id").loc[int(ids.iloc[0])]
    assert (
        changed["n_orders"]
        == base[base["cutoff"] == late].set_index("customer_id").loc[int(ids.iloc[0]), "n_orders"]
        + 1
    )


def test_batched_points_equal_single_cutoff_features(sim_store) -> None:
    end = cutoff_end("2024-05-31")
    single = build_features_before(sim_store, end)
    ids = single.index[::7]
    batch = build_features_at(sim_store, pd.DataFrame({"customer_id": ids, "cutoff": end}))
    batch = batch.drop(columns="cutoff").set_index("customer_id")
    pd.testing.assert_frame_equal(batch, single.loc[ids], check_names=False)


def test_several_cutoffs_in_one_query_equal_single_builds(sim_store) -> None:
    ends = [cutoff_end(d) for d in ("2024-05-31", "2024-03-31", "2024-04-30 13:30")]
    frames = build_features_before_many(sim_store, [*ends, ends[0]])
    assert list(frames) == sorted(set(ends))
    for end in ends:
        single = build_features_before(sim_store, end)
        assert frames[end].attrs == single.attrs
        pd.testing.assert_frame_equal(frames[end], single)


def test_split_frames_equal_the_long_frame_whatever_order_the_engine_returns(sim_store) -> None:
    """Scoring takes one frame per cutoff straight from the engine's rows.

    Those frames must equal the long frame's rows of their cutoff, and the
    frames must not depend on the order in which an engine (Spark, a
    warehouse) returns the rows.
    """
    import pyarrow as pa

    from bmkt import features as F

    ends = [cutoff_end("2024-03-31"), cutoff_end("2024-05-31")]
    ids = sim_store.table("customers").customer_id.to_pyarrow().to_numpy()[::3]
    points = pd.DataFrame({"customer_id": np.r_[ids, ids], "cutoff": np.repeat(ends, len(ids))})
    verdicts: list[bool] = []
    real_is_sorted = F._is_sorted

    def is_sorted(cutoff: np.ndarray, ids: np.ndarray) -> bool:
        verdicts.append(real_is_sorted(cutoff, ids))
        return verdicts[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "_is_sorted", is_sorted)
        long = F.build_features_at(sim_store, points)
        frames = F._features_at(sim_store, points, split=True)
    # DuckDB returns the rows in the frames' order: no re-sort (the fast path)
    assert verdicts == [True, True]
    assert list(frames) == ends
    for end, X in frames.items():
        want = long[long["cutoff"] == end].drop(columns="cutoff").set_index("customer_id")
        assert X.attrs["cutoff"] == end.isoformat()
        pd.testing.assert_frame_equal(X, want)
        assert X.index.is_monotonic_increasing and len(X) > 0

    captured = []
    real = F._finish

    def shuffled(raw: pa.Table, split: bool = False):
        captured.append(raw.num_rows)
        order = np.random.default_rng(3).permutation(raw.num_rows)
        return real(raw.take(pa.array(order)), split)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "_finish", shuffled)
        pd.testing.assert_frame_equal(F.build_features_at(sim_store, points), long)
        again = F._features_at(sim_store, points, split=True)
    assert captured and captured[0] == len(long)
    assert not real_is_sorted(long["cutoff"].to_numpy()[::-1], long["customer_id"].to_numpy()[::-1])
    for end in ends:
        pd.testing.assert_frame_equal(again[end], frames[end])


def test_sessions_and_last_visit_match_a_brute_force_count(sim) -> None:
    # the engine reads only session starts, long silences and the last month of events
    web = sim["web_events"].sort_values(["customer_id", "occurred_at"], kind="stable")
    ends = [cutoff_end("2024-02-29"), cutoff_end("2024-05-31"), pd.Timestamp("2024-04-15 12:34")]
    frames = build_features_before_many(sim, ends)
    for end in ends:
        w = web[web["occurred_at"] < end]
        gap = w.groupby("customer_id")["occurred_at"].diff()
        start = gap.isna() | (gap > pd.Timedelta(minutes=30))
        age = (end - w["occurred_at"]) / pd.Timedelta(days=1)
        got = frames[end]
        want = pd.DataFrame(
            {
                "n_sessions": start.groupby(w["customer_id"]).sum(),
                "sessions_30d": (start & (age < 30)).groupby(w["customer_id"]).sum(),
                "sessions_90d": (start & (age < 90)).groupby(w["customer_id"]).sum(),
                "days_since_last_visit": age.groupby(w["customer_id"]).min(),
            }
        ).reindex(got.index)
        want[["n_sessions", "sessions_30d", "sessions_90d"]] = (
            want[["n_sessions", "sessions_30d", "sessions_90d"]].fillna(0).astype("int64")
        )
        pd.testing.assert_frame_equal(got[list(want.columns)], want, check_names=False)
        assert (got["days_since_last_visit"] > 31).any()  # long silences are exercised


def test_abandoned_carts_match_a_brute_force_count(sim) -> None:
    # the engine matches carts to purchases on (customer, UTC day); here every pair is tried
    web = sim["web_events"]
    adds = web.loc[web["event_type"] == "add_to_cart", ["customer_id", "occurred_at"]]
    adds = adds.reset_index(drop=True).rename_axis("add").reset_index()
    o = sim["orders"]
    buys = o.loc[o["revenue"] >= 0, ["customer_id", "ordered_at"]]
    pairs = adds.merge(buys, on="customer_id")
    lag = pairs["ordered_at"] - pairs["occurred_at"]
    hit = pairs[(lag >= pd.Timedelta(0)) & (lag < pd.Timedelta(hours=24))]
    adds["bought"] = adds["add"].isin(hit["add"])
    # purchases on the next UTC day (or at the 24 h edge, not counted) are exercised
    next_day = hit["ordered_at"].dt.floor("D") > hit["occurred_at"].dt.floor("D")
    assert next_day.any() and (~next_day).any()
    ends = [cutoff_end("2024-02-29"), cutoff_end("2024-05-31"), pd.Timestamp("2024-04-15 12:34")]
    frames = build_features_before_many(sim, ends)
    for end in ends:
        age = end - adds["occurred_at"]
        judged = (age >= pd.Timedelta(hours=24)) & (age < pd.Timedelta(days=30))
        want = (judged & ~adds["bought"]).groupby(adds["customer_id"]).sum()
        got = frames[end]["abandoned_carts_30d"]
        want = want.reindex(got.index, fill_value=0).astype("int64")
        pd.testing.assert_series_equal(got, want, check_names=False)
        assert (got > 0).sum() >= 5  # abandoned carts exist at every cutoff


def test_several_cutoffs_need_at_least_one() -> None:
    with pytest.raises(ConfigError, match="ends: at least one cutoff is required"):
        build_features_before_many(hand_tables(), [])
    with pytest.raises(DataError, match=r"customers\.created_at: all 4 rows signed up"):
        build_features_before_many(hand_tables(), [END, pd.Timestamp("2023-07-01")])


# --------------------------------------------------------------------------- consistency


def test_email_counts_match_engagement_scores(sim_store) -> None:
    X = build_features(sim_store, "2024-05-31")
    e = engagement_scores(sim_store, "2024-05-31")
    assert (X.index == e.index).all()
    for col in ("n_delivered", "n_human_opens", "n_machine_opens", "n_clicks"):
        np.testing.assert_array_equal(X[col].to_numpy(), e[col].to_numpy(), err_msg=col)
    np.testing.assert_array_equal(X["is_proxy_user"].to_numpy(), e["is_proxy_user"].astype(int))
    assert X["is_proxy_user"].sum() > 0  # the simulated store has proxy users


def test_campaign_response_rates_match_a_brute_force_count(sim) -> None:
    end = cutoff_end("2024-05-31")
    X = build_features_before(sim, end)
    win = pd.Timedelta(days=5)
    cust = sim["customers"][["customer_id", "created_at"]]
    camps = sim["campaigns"][["campaign_id", "sent_at"]]
    pairs = cust.merge(camps, how="cross")
    pairs = pairs[(pairs["sent_at"] >= pairs["created_at"]) & (pairs["sent_at"] < end - win)]
    ev = sim["email_events"]
    delivered = ev[(ev["event_type"] == "delivered") & (ev["occurred_at"] < end)]
    delivered = delivered[["customer_id", "campaign_id"]].drop_duplicates().assign(mailed=True)
    pairs = pairs.merge(delivered, how="left", on=["customer_id", "campaign_id"])
    pairs["mailed"] = pairs["mailed"].notna()
    o = sim["orders"]
    o = o[o["revenue"] >= 0][["customer_id", "ordered_at"]]
    hit = pairs.merge(o, on="customer_id")
    hit = hit[(hit["ordered_at"] >= hit["sent_at"]) & (hit["ordered_at"] < hit["sent_at"] + win)]
    hit = hit[["customer_id", "campaign_id"]].drop_duplicates().assign(responded=1)
    pairs = pairs.merge(hit, how="left", on=["customer_id", "campaign_id"])
    pairs["responded"] = pairs["responded"].fillna(0)
    rates = pairs.groupby(["customer_id", "mailed"])["responded"].mean().unstack()
    exp_mailed = rates[True].reindex(X.index)
    exp_unmailed = rates[False].reindex(X.index)
    np.testing.assert_allclose(X["email_order_rate"], exp_mailed, equal_nan=True)
    np.testing.assert_allclose(X["unmailed_order_rate"], exp_unmailed, equal_nan=True)


# --------------------------------------------------------------------------- errors, inputs


def test_cutoff_before_all_history_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"customers\.created_at: all 4 rows signed up on or after"):
        build_features(hand_tables(), "2023-06-30")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="cannot parse"):
        build_features(hand_tables(), "not a date")
    with pytest.raises(ConfigError, match="Valid options for 'machine_open_params'"):
        build_features(hand_tables(), AS_OF, machine_open_params={"bogus": 1})
    with pytest.raises(DataError, match=r"points\.cutoff: 1 row lack required column"):
        build_features_at(hand_tables(), pd.DataFrame({"customer_id": [1]}))


def test_inputs_are_not_modified() -> None:
    tables = hand_tables()
    snapshot = copy.deepcopy(tables)
    build_features(tables, AS_OF)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, snapshot[name])


def test_missing_optional_tables_give_zero_counts() -> None:
    tables = {k: v for k, v in hand_tables().items() if k in ("customers", "orders")}
    X = build_features(tables, AS_OF)
    assert (X[["n_delivered", "n_sessions", "n_categories_bought"]] == 0).all().all()
    assert X.loc[1, "n_orders"] == 6
    assert X["unmailed_order_rate"].isna().all()  # no campaigns at all


def test_features_read_the_opens_labelled_once_for_a_shared_block(sim_store, monkeypatch) -> None:
    """Inside ``engagement.shared_machine_opens`` the feature query labels no open again."""
    from bmkt import engagement
    from bmkt import features as F

    plain = build_features(sim_store, AS_OF)
    deliveries = []  # the emails' deliveries the query was given (None: aggregated itself)
    real = F._covering_deliveries
    monkeypatch.setattr(
        F, "_covering_deliveries", lambda *a: deliveries.append(real(*a)) or deliveries[-1]
    )
    with engagement.shared_machine_opens(sim_store, AS_OF) as store:

        def relabel(*args, **kwargs):
            raise AssertionError("opens labelled again inside the shared block")

        monkeypatch.setattr(engagement, "_label_opens", relabel)
        shared = build_features(store, AS_OF)
    pd.testing.assert_frame_equal(shared, plain)
    assert len(deliveries) == 1 and deliveries[0] is not None  # read from the block
    # outside the block (or at another as_of) the labels are computed as usual
    with pytest.raises(AssertionError, match="labelled again"):
        build_features(sim_store, AS_OF)


def test_revenue_sums_do_not_depend_on_the_order_of_addition() -> None:
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 added left to right and 0.6 right to left: the
    # engine adds in parallel in no fixed order, so unrounded sums (and the models' trees
    # split on them) could change from run to run
    tables = hand_tables()
    orders = tables["orders"]
    extra = pd.DataFrame(
        {
            "order_id": [21, 22, 23],
            "customer_id": 2,
            "ordered_at": pd.to_datetime(["2024-06-01", "2024-06-02", "2024-06-03"]),
            "revenue": [0.1, 0.2, 0.3],
            "discount": 0.0,
        }
    )
    tables["orders"] = pd.concat([orders, extra], ignore_index=True)
    X = build_features_before(tables, END)
    for col in ("total_revenue", "revenue_last_90d"):
        assert X.loc[2, col] == 0.6, col  # exactly: not 0.6000000000000001
    assert X.loc[2, "monetary"] == pytest.approx(0.2)
    assert X.loc[2, "revenue_prev_90d"] == 0.0
