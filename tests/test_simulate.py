"""Tests of :mod:`bmkt.simulate`: contracts, determinism and the known ground truth."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bmkt.errors import ConfigError, PublishError
from bmkt.schema import CONTRACTS, EMAIL_REGEX, EMAIL_STATUSES
from bmkt.simulate import (
    CATEGORIES,
    HUMAN_USER_AGENTS,
    PROXY_USER_AGENT,
    RESPONSE_TYPES,
    TABLES,
    TIMEZONES,
    TRUTH_COLUMNS,
    SimulationParams,
    simulate_store,
    simulate_to_folder,
    write_store,
)

END = pd.Timestamp("2024-06-30")
WINDOW_END = END + pd.Timedelta(days=1)  # exclusive
DAY = pd.Timedelta(days=1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store() -> dict[str, pd.DataFrame]:
    """A small store with every table filled."""
    return simulate_store(n_customers=3000, days=730, seed=7, end=END)


@pytest.fixture(scope="module")
def bg() -> dict[str, pd.DataFrame]:
    """A pure BG/NBD store (no email, no web) large enough for statistics."""
    return simulate_store(n_customers=20_000, days=730, seed=11, email=False, web=False)


@pytest.fixture(scope="module")
def mail() -> dict[str, pd.DataFrame]:
    """A store with campaigns, large enough for uplift and engagement checks."""
    return simulate_store(n_customers=20_000, days=730, seed=5, web=False)


@pytest.fixture(scope="module")
def flagged() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=1500, days=200, seed=3, web=False, flag_machine_opens=True)


def _buyer_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per buyer: first purchase, observed window T (days) and the truth."""
    orders = tables["orders"]
    pos = orders[orders["revenue"] > 0]
    g = pos.groupby("customer_id")["ordered_at"].agg(["min", "max", "count"])
    truth = tables["truth"].set_index("customer_id")
    out = truth[truth["is_buyer"]].join(g, how="left")
    out["T"] = (WINDOW_END - out["min"]) / DAY
    return out


def _z(observed: float, expected: float, variance: float) -> float:
    return (observed - expected) / np.sqrt(variance)


# --------------------------------------------------------------------------- contracts


def test_returns_every_table(store):
    assert tuple(store) == TABLES


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_tables_have_exactly_the_contract_columns_and_kinds(store, name):
    frame, contract = store[name], CONTRACTS[name]
    assert tuple(frame.columns) == contract.column_names
    for col in contract.columns:
        s = frame[col.name]
        if col.kind == "id":
            assert pd.api.types.is_integer_dtype(s.dtype), col.name
            assert s.dtype in (np.dtype("int64"), pd.Int64Dtype()), col.name
        elif col.kind == "timestamp":
            assert s.dtype == np.dtype("datetime64[ns]"), col.name
        elif col.kind == "bool":
            assert s.dtype in (np.dtype(bool), pd.BooleanDtype()), col.name
        elif col.kind == "float":
            assert s.dtype == np.dtype("float64"), col.name
        elif col.kind == "int":
            assert s.dtype == np.dtype("int64"), col.name
        elif col.kind == "string":
            assert pd.api.types.is_string_dtype(s.dtype), col.name
        if not col.nullable:
            assert s.notna().all(), f"{name}.{col.name} has nulls"
        if col.values is not None:
            assert set(s.dropna().unique()) <= set(col.values), col.name
        assert len(frame) > 0


def test_truth_columns(store):
    truth = store["truth"]
    assert tuple(truth.columns) == TRUTH_COLUMNS
    assert truth["customer_id"].tolist() == store["customers"]["customer_id"].tolist()
    assert truth["dropout_at"].dtype == np.dtype("datetime64[ns]")
    for col in ("is_buyer", "alive_at_end", "privacy_proxy"):
        assert truth[col].dtype == bool
    assert set(truth["response_type"]) <= set(RESPONSE_TYPES)
    assert set(truth["timezone"]) <= set(TIMEZONES)
    assert set(truth["favourite_category"]) <= set(CATEGORIES)
    assert truth["preferred_hour"].between(0, 23).all()


def test_keys_unique_and_references_resolve(store):
    for name, contract in CONTRACTS.items():
        frame = store[name]
        if contract.key:
            assert not frame.duplicated(list(contract.key)).any(), name
        for col, (ref_table, ref_col) in contract.references.items():
            known = set(store[ref_table][ref_col])
            assert set(frame[col].dropna()) <= known, f"{name}.{col}"
    customers = store["customers"]
    assert customers["customer_id"].tolist() == list(range(1, len(customers) + 1))


def test_all_timestamps_within_the_window(store):
    start = WINDOW_END - pd.Timedelta(days=730)
    for name, frame in store.items():
        for col in frame.columns:
            if frame[col].dtype == np.dtype("datetime64[ns]"):
                s = frame[col].dropna()
                assert (s >= start).all() and (s < WINDOW_END).all(), f"{name}.{col}"


def test_customer_fields(store):
    c = store["customers"]
    assert c["email"].str.match(EMAIL_REGEX).all()
    assert (c["email"] == "customer" + c["customer_id"].astype(str) + "@example.com").all()
    assert c["timezone"].isna().mean() == pytest.approx(0.1, abs=0.03)
    assert set(c["timezone"].dropna()) <= set(TIMEZONES)
    assert c["email_status"].eq("subscribed").mean() > 0.8
    assert set(c["email_status"]) == set(EMAIL_STATUSES)
    assert c["email_consent"].mean() > 0.8
    assert 0.2 < c["sms_consent"].mean() < 0.5
    # withdrawn mailability means withdrawn consent
    assert not c.loc[c["email_status"].isin(["unsubscribed", "complained"]), "email_consent"].any()
    # nobody orders before signing up
    first = store["orders"].groupby("customer_id")["ordered_at"].min()
    created = c.set_index("customer_id")["created_at"].reindex(first.index)
    assert (first >= created).all()


def test_orders_refunds_discounts_and_lines(store):
    orders, lines = store["orders"], store["order_lines"]
    refunds = orders[orders["revenue"] < 0]
    assert 0.005 < len(refunds) / len(orders) < 0.04
    assert (orders["discount"] >= 0).all()
    assert 0.15 < (orders["discount"] > 0).mean() < 0.35
    assert set(orders["channel"]) == {"web", "app", "store"}
    assert orders["ordered_at"].is_monotonic_increasing
    # lines only for purchases; 1-4 per order; they add up to the revenue to the cent
    purchases = orders[orders["revenue"] > 0].set_index("order_id")
    assert set(lines["order_id"]) == set(purchases.index)
    per_order = lines.groupby("order_id").size()
    assert per_order.between(1, 4).all()
    assert (lines["quantity"] >= 1).all() and (lines["price"] > 0).all()
    total = (lines["quantity"] * lines["price"]).groupby(lines["order_id"]).sum()
    diff = (total - purchases["revenue"].reindex(total.index)).abs()
    assert (diff <= 0.005 * lines.groupby("order_id")["quantity"].sum() + 1e-9).all()
    assert set(lines["category"]) <= set(CATEGORIES)


def test_favourite_category_is_bought_most(store):
    lines = store["order_lines"].merge(store["orders"][["order_id", "customer_id"]])
    top = lines.groupby("customer_id")["category"].agg(lambda s: s.value_counts().index[0])
    counts = lines.groupby("customer_id").size()
    fav = store["truth"].set_index("customer_id")["favourite_category"]
    many = counts[counts >= 6].index
    assert (top[many] == fav[many]).mean() > 0.6


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_tables():
    a = simulate_store(n_customers=600, days=200, seed=42)
    b = simulate_store(n_customers=600, days=200, seed=42)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_different_seed_gives_different_tables():
    a = simulate_store(n_customers=600, days=200, seed=1)
    b = simulate_store(n_customers=600, days=200, seed=2)
    assert not a["orders"].equals(b["orders"])
    assert not a["truth"]["purchase_rate"].equals(b["truth"]["purchase_rate"])


def test_email_switch_keeps_the_purchase_process():
    with_email = simulate_store(n_customers=800, days=300, seed=9)
    without = simulate_store(n_customers=800, days=300, seed=9, email=False)
    assert without["email_events"].empty and without["campaigns"].empty
    assert tuple(without["email_events"].columns) == CONTRACTS["email_events"].column_names
    assert tuple(without["campaigns"].columns) == CONTRACTS["campaigns"].column_names
    cols = ["is_buyer", "alive_at_end", "dropout_at", "purchase_rate",
            "n_repeat_purchases_simulated", "engagement"]  # fmt: skip
    pd.testing.assert_frame_equal(with_email["truth"][cols], without["truth"][cols])
    # campaign-driven orders come on top of the BG/NBD purchases, and are few
    n_with = (with_email["orders"]["revenue"] > 0).sum()
    n_without = (without["orders"]["revenue"] > 0).sum()
    assert n_without <= n_with < 1.2 * n_without


def test_web_switch_and_end_normalisation():
    t = simulate_store(n_customers=300, days=60, seed=1, web=False, end="2024-01-31T15:30:00+02:00")
    assert t["web_events"].empty
    assert tuple(t["web_events"].columns) == CONTRACTS["web_events"].column_names
    assert t["orders"]["ordered_at"].max() < pd.Timestamp("2024-02-01")
    assert t["customers"]["created_at"].min() >= pd.Timestamp("2024-02-01") - pd.Timedelta(days=60)


# --------------------------------------------------------------------------- BG/NBD truth


def test_purchases_follow_the_drawn_bgnbd_process(bg):
    s = _buyer_summary(bg)
    # every buyer's purchases: the first one plus the simulated repeats
    assert (s["count"] == 1 + s["n_repeat_purchases_simulated"]).all()
    lam, p, T = s["purchase_rate"], s["dropout_p"], s["T"]
    x = s["n_repeat_purchases_simulated"]
    # E[X(T) | lambda, p] = (1 - exp(-lambda p T)) / p   (Fader, Hardie & Lee 2005, eq. 7)
    expected = (1 - np.exp(-lam * p * T)) / p
    resid = x - expected
    assert abs(resid.sum() / np.sqrt((resid**2).sum())) < 4
    # alive customers never dropped out: X ~ Poisson(lambda (1 - p) T) given alive
    alive = s["alive_at_end"]
    m = (lam * (1 - p) * T)[alive]
    assert abs(_z(x[alive].sum(), m.sum(), m.sum())) < 4
    # within purchase-rate bins as well (Poisson variance)
    bins = pd.qcut(lam[alive], 5)
    for _, grp in x[alive].groupby(bins, observed=True):
        mm = m[grp.index]
        assert abs(_z(grp.sum(), mm.sum(), mm.sum())) < 4


def test_share_alive_matches_bgnbd_expectation(bg):
    s = _buyer_summary(bg)
    # P(alive at T | lambda, p) = exp(-lambda p T)
    prob = np.exp(-s["purchase_rate"] * s["dropout_p"] * s["T"])
    assert abs(_z(s["alive_at_end"].sum(), prob.sum(), (prob * (1 - prob)).sum())) < 4
    # alive <=> no dropout time; dropouts happen at the last purchase
    assert (s["alive_at_end"] == s["dropout_at"].isna()).all()
    dropped = s[~s["alive_at_end"]]
    assert (dropped["dropout_at"] == dropped["max"]).all()
    assert (dropped["n_repeat_purchases_simulated"] >= 1).all()


def test_dropout_at_first_purchase_follows_mbgnbd():
    """MBG/NBD: a buyer may also drop out right after the first purchase.

    The share gone at the first purchase is E[p] = a / (a + b); alive at the
    end with probability (1 - p) exp(-lambda p T) (both from the drawn p, lambda).
    """
    t = simulate_store(
        n_customers=20_000, days=730, seed=11, email=False, web=False,
        dropout_at_first_purchase=True,
    )  # fmt: skip
    s = _buyer_summary(t)
    prm = SimulationParams()
    gone_first = (s["n_repeat_purchases_simulated"] == 0) & ~s["alive_at_end"]
    expected = prm.a / (prm.a + prm.b)
    n = len(s)
    assert abs(_z(gone_first.sum(), n * expected, n * expected * (1 - expected))) < 4
    prob = (1 - s["dropout_p"]) * np.exp(-s["purchase_rate"] * s["dropout_p"] * s["T"])
    assert abs(_z(s["alive_at_end"].sum(), prob.sum(), (prob * (1 - prob)).sum())) < 4
    # those gone at the first purchase drop out at it and never buy again
    assert (s.loc[gone_first, "dropout_at"] == s.loc[gone_first, "min"]).all()
    assert (s.loc[gone_first, "count"] == 1).all()
    # the default stays BG/NBD: nobody drops out at the first purchase
    b = _buyer_summary(simulate_store(n_customers=3000, days=365, seed=2, email=False, web=False))
    assert not ((b["n_repeat_purchases_simulated"] == 0) & ~b["alive_at_end"]).any()


def test_no_purchase_after_dropout(mail):
    orders = mail["orders"]
    pos = orders[orders["revenue"] > 0].merge(mail["truth"][["customer_id", "dropout_at"]])
    assert not (pos["ordered_at"] > pos["dropout_at"]).any()


def test_population_parameters_are_recoverable(bg):
    prm = SimulationParams()
    buyers = bg["truth"][bg["truth"]["is_buyer"]]
    n = len(buyers)
    assert buyers["is_buyer"].size / len(bg["truth"]) == pytest.approx(0.7, abs=0.02)
    lam = buyers["purchase_rate"]
    assert abs(_z(lam.mean(), prm.r / prm.alpha, prm.r / prm.alpha**2 / n)) < 4
    a, b = prm.a, prm.b
    var_p = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(_z(buyers["dropout_p"].mean(), a / (a + b), var_p / n)) < 4
    nu = prm.p / buyers["expected_spend"]
    assert abs(_z(nu.mean(), prm.q / prm.gamma, prm.q / prm.gamma**2 / n)) < 4


def test_order_values_match_expected_spend(bg):
    orders = bg["orders"]
    pos = orders[orders["revenue"] > 0].merge(bg["truth"][["customer_id", "expected_spend"]])
    ratio = pos["revenue"] / pos["expected_spend"]  # Gamma(p, p): mean 1, variance 1 / p
    p = SimulationParams().p
    assert abs(_z(ratio.mean(), 1.0, 1 / p / len(ratio))) < 4
    assert 45 < pos["revenue"].mean() < 80


def test_lifetimes_recovers_bgnbd_and_gamma_gamma_parameters(bg):
    lifetimes = pytest.importorskip("lifetimes")
    orders = bg["orders"]
    pos = orders[orders["revenue"] > 0].sort_values(["customer_id", "ordered_at"])
    g = pos.groupby("customer_id")["ordered_at"].agg(["min", "max", "count"])
    freq = g["count"] - 1
    rec = (g["max"] - g["min"]) / DAY
    T = (WINDOW_END - g["min"]) / DAY
    fit = lifetimes.BetaGeoFitter().fit(freq, rec, T).params_
    prm = SimulationParams()
    assert fit["r"] / fit["alpha"] == pytest.approx(prm.r / prm.alpha, rel=0.1)
    assert fit["a"] / (fit["a"] + fit["b"]) == pytest.approx(prm.a / (prm.a + prm.b), rel=0.1)
    repeat = pos[pos["customer_id"].duplicated()].groupby("customer_id")["revenue"].mean()
    gg = lifetimes.GammaGammaFitter().fit(freq[repeat.index], repeat).params_
    mean_spend = gg["p"] * gg["v"] / (gg["q"] - 1)
    assert mean_spend == pytest.approx(prm.p * prm.gamma / (prm.q - 1), rel=0.1)


# --------------------------------------------------------------------------- email


def _opened(events: pd.DataFrame) -> pd.DataFrame:
    opens = events.loc[events["event_type"] == "open", ["customer_id", "campaign_id"]]
    return opens.drop_duplicates().assign(opened=True)


def test_campaigns(mail):
    camp = mail["campaigns"]
    assert len(camp) == round(730 / 7)
    assert set(camp["kind"]) == {"promotional", "newsletter"}
    assert camp["sent_at"].is_monotonic_increasing
    assert camp["name"].is_unique


def test_privacy_proxy_opens_every_delivered_email_within_seconds(mail):
    e = mail["email_events"]
    proxy = set(mail["truth"].loc[mail["truth"]["privacy_proxy"], "customer_id"])
    delivered = e[(e["event_type"] == "delivered") & e["customer_id"].isin(proxy)]
    opens = e[(e["event_type"] == "open") & e["customer_id"].isin(proxy)]
    both = delivered.merge(opens, on=["customer_id", "campaign_id"], suffixes=("_d", "_o"))
    assert len(both) >= 0.999 * len(delivered)
    lag = (both["occurred_at_o"] - both["occurred_at_d"]).dt.total_seconds()
    assert lag.between(0, 10).all()
    assert (both["user_agent_o"] == PROXY_USER_AGENT).all()
    assert both["machine_open_o"].isna().all()  # not flagged by default
    # proxy customers show exactly one open per delivered email (human opens are hidden)
    assert len(opens) == len(opens.drop_duplicates(["customer_id", "campaign_id"]))


def test_human_opens_have_human_agents_and_cluster_at_the_preferred_hour(mail):
    e, truth = mail["email_events"], mail["truth"].set_index("customer_id")
    human = e[(e["event_type"] == "open") & ~e["customer_id"].map(truth["privacy_proxy"])]
    assert len(human) > 1000
    assert human["user_agent"].isin(HUMAN_USER_AGENTS).all()
    assert human["machine_open"].isna().all()
    local = [
        g["occurred_at"].dt.tz_localize("UTC").dt.tz_convert(tz).dt.hour
        for tz, g in human.groupby(human["customer_id"].map(truth["timezone"]))
    ]
    hour = pd.concat(local).reindex(human.index)
    pref = human["customer_id"].map(truth["preferred_hour"])
    dist = np.abs((hour - pref + 12) % 24 - 12)
    assert (dist <= 3).mean() > 0.85


def test_machine_opens_do_not_generate_clicks(mail):
    e, truth = mail["email_events"], mail["truth"].set_index("customer_id")
    is_proxy = e["customer_id"].map(truth["privacy_proxy"])
    delivered = e["event_type"] == "delivered"
    clicks = e["event_type"] == "click"
    opens = e["event_type"] == "open"
    # proxy customers open everything, yet click as often as everybody else
    open_rate_proxy = (opens & is_proxy).sum() / (delivered & is_proxy).sum()
    open_rate_human = (opens & ~is_proxy).sum() / (delivered & ~is_proxy).sum()
    assert open_rate_proxy > 0.99 and open_rate_human < 0.35
    click_proxy = (clicks & is_proxy).sum() / (delivered & is_proxy).sum()
    click_human = (clicks & ~is_proxy).sum() / (delivered & ~is_proxy).sum()
    assert 0.75 < click_proxy / click_human < 1.33
    # a non-proxy click always follows a human open of the same email
    ev = e[~is_proxy]
    c = ev[ev["event_type"] == "click"].merge(
        ev[ev["event_type"] == "open"], on=["customer_id", "campaign_id"], suffixes=("", "_open")
    )
    assert len(c) == (clicks & ~is_proxy).sum()
    assert (c["occurred_at_open"] < c["occurred_at"]).all()


def test_flag_machine_opens(flagged):
    e = flagged["email_events"]
    opens = e[e["event_type"] == "open"]
    assert opens["machine_open"].notna().all()
    assert (opens["machine_open"] == (opens["user_agent"] == PROXY_USER_AGENT)).all()
    assert opens["machine_open"].any() and not opens["machine_open"].all()
    assert e.loc[e["event_type"] != "open", "machine_open"].isna().all()


def test_holdouts_are_never_mailed(mail):
    e = mail["email_events"]
    hold = e.loc[e["event_type"] == "holdout", ["customer_id", "campaign_id"]]
    other = e.loc[e["event_type"] != "holdout", ["customer_id", "campaign_id"]].drop_duplicates()
    assert hold.merge(other).empty
    n_sent = (e["event_type"] == "sent").sum()
    assert len(hold) / (len(hold) + n_sent) == pytest.approx(0.10, abs=0.005)
    assert e.loc[e["event_type"] == "holdout", "variant"].isna().all()
    sent = e[e["event_type"] == "sent"]
    assert sent["variant"].value_counts(normalize=True)["A"] == pytest.approx(0.5, abs=0.01)
    # deliveries ~98% of sends
    assert (e["event_type"] == "delivered").sum() / n_sent == pytest.approx(0.98, abs=0.01)


def test_audience_is_mailable_and_signed_up(mail):
    e = mail["email_events"]
    aud = e[e["event_type"].isin(["sent", "holdout"])].merge(
        mail["campaigns"][["campaign_id", "sent_at"]]
    )
    created = aud["customer_id"].map(mail["customers"].set_index("customer_id")["created_at"])
    assert (created < aud["sent_at"]).all()
    share = aud.groupby("campaign_id").size() / aud.groupby("campaign_id")["customer_id"].nunique()
    assert (share == 1).all()


def test_email_status_reflects_events(mail):
    e, c = mail["email_events"], mail["customers"].set_index("customer_id")
    status = c["email_status"]
    unsub = e.loc[e["event_type"] == "unsubscribe", "customer_id"]
    complaint = e.loc[e["event_type"] == "complaint", "customer_id"]
    assert len(unsub) > 0 and len(complaint) > 0
    assert (status[unsub] == "unsubscribed").all()
    assert (status[complaint] == "complained").all()
    bounced = e.loc[e["event_type"] == "bounce", "customer_id"]
    bounced = bounced[~bounced.isin(unsub) & ~bounced.isin(complaint)]
    assert status[bounced].isin(["subscribed", "bounced"]).all()
    assert (status[bounced] == "bounced").any()
    # after leaving the list, nobody gets mailed again
    stop = pd.concat(
        [
            e.loc[e["event_type"].isin(["unsubscribe", "complaint"]), ["customer_id", "occurred_at"]],
            e.loc[(e["event_type"] == "bounce") & (status.reindex(e["customer_id"]).to_numpy() == "bounced"),
                  ["customer_id", "occurred_at"]],
        ]
    ).groupby("customer_id")["occurred_at"].min()  # fmt: skip
    sent = e[e["event_type"] == "sent"]
    later = sent["occurred_at"] > sent["customer_id"].map(stop)
    assert not later.any()
    # the initially unmailable never get anything
    never = c.index[~c["email_consent"] & c["email_status"].eq("subscribed")]
    assert not e["customer_id"].isin(never).any()


def test_engagement_fades_before_dropout(mail):
    e, truth = mail["email_events"], mail["truth"]
    dropped = truth[truth["dropout_at"].notna() & ~truth["privacy_proxy"]]
    d = e[e["event_type"] == "delivered"].merge(dropped[["customer_id", "dropout_at"]])
    d = d.merge(_opened(e), how="left", on=["customer_id", "campaign_id"])
    opened = d["opened"].notna()
    before = (d["dropout_at"] - d["occurred_at"]) / DAY
    late = opened[(before >= 0) & (before < 30)]
    early = opened[(before >= 90) & (before < 180)]
    after = opened[before < 0]
    assert len(late) > 500 and len(early) > 500
    assert late.mean() < 0.5 * early.mean()
    assert after.mean() < 0.25 * early.mean()


def _order_within_5_days(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Treated ('sent') and held-out customers per campaign, with an order flag."""
    e, orders = tables["email_events"], tables["orders"]
    arm = e.loc[
        e["event_type"].isin(["sent", "holdout"]), ["customer_id", "campaign_id", "event_type"]
    ]
    arm = arm.merge(tables["campaigns"][["campaign_id", "sent_at"]]).sort_values("sent_at")
    pos = orders.loc[orders["revenue"] > 0, ["customer_id", "ordered_at"]].sort_values("ordered_at")
    m = pd.merge_asof(
        arm, pos, left_on="sent_at", right_on="ordered_at", by="customer_id",
        direction="forward", allow_exact_matches=False,
    )  # fmt: skip
    m["treated"] = m["event_type"] == "sent"
    m["y"] = (m["ordered_at"] - m["sent_at"]) <= pd.Timedelta(days=5)
    return m.merge(tables["truth"][["customer_id", "response_type", "true_uplift"]])


def test_true_uplift_is_measurable_against_holdouts(mail):
    m = _order_within_5_days(mail)
    lift = {}
    for rtype, g in m.groupby("response_type"):
        y1, y0 = g.loc[g["treated"], "y"], g.loc[~g["treated"], "y"]
        se = np.sqrt(y1.var() / len(y1) + y0.var() / len(y0))
        lift[rtype] = (y1.mean() - y0.mean(), se)
    diff, se = lift["persuadable"]
    assert diff > 5 * se and diff > 0.02
    diff, se = lift["lost_cause"]
    assert abs(diff) < 4 * se
    diff, se = lift["sure_thing"]
    assert abs(diff) < 4 * se
    assert lift["sleeping_dog"][0] < 0


def test_realised_lift_matches_true_uplift_while_alive_and_engaged(mail):
    # true_uplift is the effect on an alive, fully engaged customer: the lift
    # realised at a campaign is true_uplift * fade(sent_at) * alive(sent_at)
    m = _order_within_5_days(mail)
    truth = mail["truth"].set_index("customer_id")
    orders = mail["orders"]
    first = orders[orders["revenue"] > 0].groupby("customer_id")["ordered_at"].min()
    dropout = m["customer_id"].map(truth["dropout_at"])
    left = (dropout - m["sent_at"]) / DAY
    prm = SimulationParams()
    fade = np.where(
        dropout.isna(),
        1.0,
        prm.fade_floor + (1 - prm.fade_floor) * np.clip(left / prm.fade_days, 0, 1),
    )
    alive = (m["customer_id"].map(first) < m["sent_at"]) & (
        dropout.isna() | (dropout > m["sent_at"])
    )
    m["expected"] = m["true_uplift"] * fade * alive
    for rtype in ("persuadable", "sleeping_dog"):
        g = m[m["response_type"] == rtype]
        y1, y0 = g.loc[g["treated"], "y"], g.loc[~g["treated"], "y"]
        se = np.sqrt(y1.var() / len(y1) + y0.var() / len(y0))
        expected = g.loc[g["treated"], "expected"].mean()
        assert abs((y1.mean() - y0.mean()) - expected) < 3 * se, rtype


def test_true_uplift_in_truth(mail):
    t = mail["truth"]
    assert (t.loc[t["response_type"] == "persuadable", "true_uplift"] > 0).all()
    assert (t.loc[t["response_type"] == "sleeping_dog", "true_uplift"] < 0).all()
    assert (t.loc[t["response_type"].isin(["lost_cause", "sure_thing"]), "true_uplift"] == 0).all()
    assert (t.loc[~t["is_buyer"], "response_type"] == "lost_cause").all()
    shares = t.loc[t["is_buyer"], "response_type"].value_counts(normalize=True)
    assert shares["persuadable"] == pytest.approx(0.2, abs=0.02)
    assert shares["sleeping_dog"] == pytest.approx(0.05, abs=0.01)
    assert t["privacy_proxy"].mean() == pytest.approx(0.4, abs=0.02)


def test_privacy_proxy_share_parameter():
    t = simulate_store(n_customers=2000, days=60, seed=1, privacy_proxy_share=0.0, web=False)
    e = t["email_events"]
    assert not t["truth"]["privacy_proxy"].any()
    assert not (e["user_agent"] == PROXY_USER_AGENT).any()


# --------------------------------------------------------------------------- web


def test_every_purchase_follows_an_add_to_cart(store):
    w, orders = store["web_events"], store["orders"]
    pos = orders.loc[orders["revenue"] > 0, ["customer_id", "ordered_at"]].sort_values("ordered_at")
    carts = w.loc[w["event_type"] == "add_to_cart", ["customer_id", "occurred_at"]]
    m = pd.merge_asof(
        pos, carts.sort_values("occurred_at"), left_on="ordered_at", right_on="occurred_at",
        by="customer_id", direction="backward",
    )  # fmt: skip
    assert ((m["ordered_at"] - m["occurred_at"]) < pd.Timedelta(hours=1)).all()
    # ... and abandoned carts exist: add to cart with no order within a day
    m2 = pd.merge_asof(
        carts.sort_values("occurred_at"), pos, left_on="occurred_at", right_on="ordered_at",
        by="customer_id", direction="forward",
    )  # fmt: skip
    abandoned = ~((m2["ordered_at"] - m2["occurred_at"]) < DAY)
    assert 0.05 < abandoned.mean() < 0.5


def test_web_events_content_and_volume(store):
    w, c, t = store["web_events"], store["customers"], store["truth"]
    assert set(w["event_type"]) == {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "checkout_start",
    }
    has_product = w["event_type"].isin(["product_view", "add_to_cart", "checkout_start"])
    assert w.loc[has_product, "product_id"].notna().all()
    assert w.loc[~has_product, "product_id"].isna().all()
    assert w.loc[w["event_type"] == "search", "query"].notna().all()
    assert w.loc[w["event_type"] != "search", "query"].isna().all()
    assert w["occurred_at"].is_monotonic_increasing
    created = w["customer_id"].map(c.set_index("customer_id")["created_at"])
    assert (w["occurred_at"] >= created).all()
    years = (WINDOW_END - c["created_at"]) / pd.Timedelta(days=365)
    per_buyer_year = len(w) / years[t["is_buyer"]].sum()
    assert 20 <= per_buyer_year <= 45
    # browse sessions repeat views of a product
    views = w[w["event_type"] == "product_view"]
    assert views.duplicated(["customer_id", "product_id"]).mean() > 0.2


def test_web_activity_fades_after_dropout(store):
    w, t = store["web_events"], store["truth"]
    gone = t[t["dropout_at"].notna() & (t["dropout_at"] < WINDOW_END - pd.Timedelta(days=120))]
    ev = w.merge(gone[["customer_id", "dropout_at"]])
    rel = (ev["occurred_at"] - ev["dropout_at"]) / DAY
    before = ((rel > -240) & (rel <= -120)).sum()
    after = ((rel > 0) & (rel <= 120)).sum()
    assert after < 0.2 * before


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_customers": 0}, "Valid values for 'n_customers' are integers >= 1. Got 0."),
        ({"days": 0}, "Valid values for 'days' are integers >= 1. Got 0."),
        ({"days": 1.5}, "Valid values for 'days' are integers >= 1. Got 1.5."),
        (
            {"privacy_proxy_share": 1.5},
            "Valid values for 'privacy_proxy_share' are between 0 and 1. Got 1.5.",
        ),
        (
            {"nonbuyer_share": -0.1},
            "Valid values for 'nonbuyer_share' are between 0 and 1. Got -0.1.",
        ),
        ({"campaigns_per_week": -1}, "Valid values for 'campaigns_per_week' are >= 0. Got -1."),
        ({"alpha": 0}, "Valid values for 'alpha' are > 0. Got 0."),
        ({"end": "not a date"}, "Valid values for 'end' are dates"),
        ({"seed": -3}, "Valid values for 'seed' are integers >= 0. Got -3."),
        (
            {"response_shares": (0.5, 0.5, 0.5, 0.0)},
            "Valid values for 'response_shares' are 4 shares",
        ),
        ({"n_products": 3}, "Valid values for 'n_products' are integers >= 8. Got 3."),
        ({"audience_share_range": (0.8, 0.2)}, "Valid values for 'audience_share_range'"),
        ({"no_such_param": 1}, r"Got unknown \['no_such_param'\]"),
        (
            {"dropout_at_first_purchase": "yes"},
            "Valid values for 'dropout_at_first_purchase' are True or False. Got 'yes'.",
        ),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    args = {"n_customers": 10, "days": 10, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message) if "\\" not in message else message):
        simulate_store(**args)


def test_params_validate_on_construction():
    with pytest.raises(ConfigError, match="Valid values for 'holdout_share' are between 0 and 1"):
        SimulationParams(holdout_share=2)


def test_tiny_and_campaign_free_stores():
    t = simulate_store(n_customers=1, days=1, seed=0)
    assert len(t["customers"]) == 1 and len(t["truth"]) == 1
    t = simulate_store(n_customers=50, days=30, seed=0, campaigns_per_week=0)
    assert t["campaigns"].empty and t["email_events"].empty


def test_progress_bar(capsys):
    simulate_store(n_customers=50, days=30, seed=0, progress=True)
    assert "simulate_store" in capsys.readouterr().err


# --------------------------------------------------------------------------- writing


@pytest.fixture(scope="module")
def small() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=300, days=90, seed=4)


def test_write_store_round_trips(small, tmp_path):
    paths = write_store(small, tmp_path / "store")
    assert set(paths) == set(TABLES)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(
        f"{n}.parquet" for n in TABLES
    )
    for name, path in paths.items():
        assert path == tmp_path / "store" / f"{name}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(path), small[name])
    # replacing an existing store works and leaves no temporary folders
    write_store(small, tmp_path / "store")
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def _failing_writer(monkeypatch, fail_on: int) -> None:
    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)


def test_write_store_leaves_nothing_when_it_fails(small, tmp_path, monkeypatch):
    _failing_writer(monkeypatch, fail_on=3)
    with pytest.raises(PublishError, match="disk full"):
        write_store(small, tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_write_store_keeps_the_old_store_when_it_fails(small, tmp_path, monkeypatch):
    out = tmp_path / "store"
    write_store(small, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = simulate_store(n_customers=50, days=30, seed=99)
    _failing_writer(monkeypatch, fail_on=5)
    with pytest.raises(PublishError):
        write_store(other, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_write_store_refuses_to_replace_foreign_folders(small, tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files that are not store tables"):
        write_store(small, out)
    assert (out / "notes.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="are folders"):
        write_store(small, f)
    assert isinstance(Path(f), Path)


# --------------------------------------------------------------------------- blocks


def test_simulate_to_folder_one_block_equals_simulate_store(tmp_path):
    paths = simulate_to_folder(tmp_path / "s", 400, block_size=1000, days=200, seed=4)
    direct = simulate_store(n_customers=400, days=200, seed=4)
    for name in TABLES:
        got = pd.read_parquet(paths[name])
        pd.testing.assert_frame_equal(got, direct[name], check_dtype=False, obj=name)


def test_simulate_to_folder_blocks_share_campaigns_and_keep_ids_unique(tmp_path):
    from bmkt.io import open_store
    from bmkt.validate import validate

    out = tmp_path / "big"
    paths = simulate_to_folder(out, 2500, block_size=1000, days=200, seed=4)
    assert sorted(p.name for p in paths["orders"].iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"
    ]  # fmt: skip
    t = {name: pd.read_parquet(paths[name]) for name in TABLES}
    assert t["customers"]["customer_id"].tolist() == list(range(1, 2501))
    # one address per customer across blocks (a plan sends once per address)
    assert t["customers"]["email"].tolist() == [f"customer{i}@example.com" for i in range(1, 2501)]
    assert t["truth"]["customer_id"].tolist() == list(range(1, 2501))
    assert t["orders"]["order_id"].is_unique
    assert set(t["order_lines"]["order_id"]) <= set(t["orders"]["order_id"])
    # a block's orders and lines belong to that block's customers
    own = t["orders"].merge(t["customers"][["customer_id", "created_at"]], on="customer_id")
    assert len(own) == len(t["orders"]) and (own["ordered_at"] >= own["created_at"]).all()
    # one campaign table; every block mails from it (customers of every block are mailed)
    assert len(t["campaigns"]) == round(200 / 7)
    assert set(t["email_events"]["campaign_id"]) <= set(t["campaigns"]["campaign_id"])
    mailed = t["email_events"]["customer_id"]
    assert mailed.min() <= 1000 and mailed.max() > 2000
    # the blocks differ (own seeds) and the folder reads and validates as a store
    o = t["orders"]
    first = o[o.customer_id <= 1000]
    second = o[(o.customer_id > 1000) & (o.customer_id <= 2000)]
    assert not np.array_equal(first["revenue"].to_numpy()[:50], second["revenue"].to_numpy()[:50])
    assert validate(open_store(out), "2024-06-30").ok
    # rerun replaces the folder atomically; a folder with foreign files is refused
    simulate_to_folder(out, 1200, block_size=1000, days=30, seed=1, email=False, web=False)
    assert len(pd.read_parquet(out / "customers")) == 1200
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not store tables"):
        simulate_to_folder(tmp_path / "other", 10, block_size=5, days=10)
