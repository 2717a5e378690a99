"""Campaign metrics, lift and the HTML report on stores whose answers are known by construction."""

from __future__ import annotations

import math
import re
import time

import ibis
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy import stats

from bmkt.errors import ConfigError, DataError
from bmkt.io import open_store
from bmkt.report import (
    INCREMENTALITY_COLUMNS,
    METRIC_COLUMNS,
    NO_HOLDOUT_NOTE,
    Section,
    campaign_metrics,
    cohort_retention,
    engagement_over_time,
    incrementality,
    plot_campaign_metrics,
    plot_cohort_retention,
    plot_engagement,
    plot_incrementality,
    render_html_report,
)
from tests.test_validate import make_store

T = pd.Timestamp
AS_OF = "2024-06-30"


def build_store(
    events: list[tuple],
    orders: list[tuple] = (),
    campaigns: list[tuple] = ((100, "spring", "2024-03-01 09:00"),),
    n_customers: int = 40,
) -> dict[str, pd.DataFrame]:
    """A store from (customer, campaign, variant, at, type[, machine]) events and
    (customer, at, revenue) orders."""
    customers = pd.DataFrame(
        {
            "customer_id": range(1, n_customers + 1),
            "email": [f"c{i}@example.com" for i in range(1, n_customers + 1)],
            "created_at": T("2024-01-01"),
            "email_status": "subscribed",
            "email_consent": True,
        }
    )
    ev = pd.DataFrame(
        [(*e, None) if len(e) == 5 else e for e in events],
        columns=["customer_id", "campaign_id", "variant", "occurred_at", "event_type", "mo"],
    )
    ev["occurred_at"] = pd.to_datetime(ev["occurred_at"], format="ISO8601")
    ev["machine_open"] = ev.pop("mo").astype("boolean")
    ev = ev.astype(
        {
            "customer_id": "int64",
            "campaign_id": "int64",
            "variant": "string",
            "event_type": "string",
        }
    )
    od = pd.DataFrame(list(orders), columns=["customer_id", "ordered_at", "revenue"])
    od.insert(0, "order_id", range(1, len(od) + 1))
    od["ordered_at"] = pd.to_datetime(od["ordered_at"], format="ISO8601")
    od = od.astype({"customer_id": "int64", "revenue": "float64"})
    camp = pd.DataFrame(list(campaigns), columns=["campaign_id", "name", "sent_at"])
    camp["kind"] = "promotional"
    camp["sent_at"] = pd.to_datetime(camp["sent_at"])
    return {"customers": customers, "orders": od, "campaigns": camp, "email_events": ev}


def sends(customers, campaign=100, at="2024-03-01 09:00", variant=None, delivered=True):
    out = []
    for c in customers:
        out.append((c, campaign, variant, at, "sent"))
        if delivered:
            out.append((c, campaign, variant, at, "delivered"))
    return out


# --------------------------------------------------------------------------- campaign_metrics


def engagement_store() -> dict[str, pd.DataFrame]:
    ev = sends(range(1, 6), variant="A") + sends(range(6, 11), variant="B")
    ev += [
        (1, 100, None, "2024-03-01 09:30", "open", False),  # human
        (1, 100, None, "2024-03-01 10:00", "click"),
        (2, 100, None, "2024-03-01 12:00", "open", False),  # human
        (3, 100, None, "2024-03-01 09:00:05", "open", True),  # machine only
        (4, 100, None, "2024-03-01 09:00:05", "open", True),  # machine ...
        (4, 100, None, "2024-03-02 08:00", "click"),  # ... but clicked: a human opener
        (6, 100, None, "2024-03-01 18:00", "open"),  # flag unknown: human
        (6, 100, None, "2024-03-01 18:01", "open"),  # opened twice: counted once
        (7, 100, None, "2024-03-01 09:00:03", "open", True),
        (7, 100, None, "2024-03-01 19:00", "open", False),  # machine and human
        (8, 100, None, "2024-03-01 19:00", "unsubscribe"),
        (9, 100, None, "2024-03-01 19:00", "complaint"),
        (10, 100, None, "2024-03-01 09:00", "bounce"),
        (30, 100, None, "2024-03-01 19:00", "open", False),  # never sent: ignored
    ]
    ev = [e for e in ev if not (e[0] == 10 and e[4] == "delivered")]
    return build_store(ev)


def test_campaign_metrics_counts_and_rates() -> None:
    store = engagement_store()
    before = {k: v.copy() for k, v in store.items()}
    m = campaign_metrics(store, AS_OF)
    for k, v in before.items():
        pd.testing.assert_frame_equal(store[k], v)  # inputs untouched
    assert list(m.columns) == [
        "campaign_id",
        "campaign_name",
        "sent_at",
        "variant",
        *METRIC_COLUMNS,
    ]
    a = m.set_index("variant").loc["A"]
    b = m.set_index("variant").loc["B"]
    assert a["campaign_name"] == "spring" and a["sent_at"] == T("2024-03-01 09:00")
    assert (a["sent"], a["delivered"], a["bounces"]) == (5, 5, 0)
    # A: humans 1, 2; 4 via its click; 3 machine only. Machine openers 3, 4.
    assert (a["human_opens"], a["machine_opens"], a["clicks"]) == (3, 2, 2)
    assert a["open_rate"] == pytest.approx(3 / 5)
    assert a["click_rate"] == pytest.approx(2 / 5)
    assert a["click_to_open_rate"] == pytest.approx(2 / 3)
    assert not a["delivered_inferred"]
    # B: 10 bounced; humans 6, 7; machine 7; unsubscribe 8, complaint 9
    assert (b["sent"], b["delivered"], b["bounces"]) == (5, 4, 1)
    assert (b["human_opens"], b["machine_opens"], b["clicks"]) == (2, 1, 0)
    assert b["open_rate"] == pytest.approx(2 / 4)
    assert b["bounce_rate"] == pytest.approx(1 / 5)
    assert b["unsubscribe_rate"] == pytest.approx(1 / 4)
    assert b["complaint_rate"] == pytest.approx(1 / 4)
    assert b["click_to_open_rate"] == 0.0


def test_machine_opens_given_as_events_or_per_customer_flag() -> None:
    store = engagement_store()
    # ignore the contract flag: the opens of 1 and 2 are machine opens by a separate list
    mo = pd.DataFrame(
        {
            "customer_id": [1, 2],
            "campaign_id": [100, 100],
            "occurred_at": pd.to_datetime(["2024-03-01 09:30", "2024-03-01 12:00"]),
        }
    )
    a = campaign_metrics(store, AS_OF, machine_opens=mo).set_index("variant").loc["A"]
    # human: 1 (its click), 3 and 4 (their flagged opens now count as human); machine: 1, 2
    assert (a["human_opens"], a["machine_opens"]) == (3, 2)
    # per-customer proxy flag: every open of 2 and 7 is a machine open
    flag = pd.Series([True, True, False], index=[2, 7, 3])
    m = campaign_metrics(store, AS_OF, machine_opens=flag).set_index("variant")
    assert (m.loc["A", "human_opens"], m.loc["A", "machine_opens"]) == (3, 1)  # 1, 3, 4 | 2
    assert (m.loc["B", "human_opens"], m.loc["B", "machine_opens"]) == (1, 1)
    # the same flag as an Ibis table with a machine_open column
    table = ibis.memtable(pd.DataFrame({"customer_id": [2, 7], "machine_open": [True, True]}))
    m2 = campaign_metrics(store, AS_OF, machine_opens=table).set_index("variant")
    pd.testing.assert_frame_equal(m, m2)
    with pytest.raises(DataError, match=r"machine_opens: expected machine-open events"):
        campaign_metrics(store, AS_OF, machine_opens=pd.DataFrame({"customer_id": [1]}))


def test_delivered_inferred_when_esp_reports_no_deliveries() -> None:
    ev = sends(range(1, 5), delivered=False) + [
        (4, 100, None, "2024-03-01 09:00", "bounce"),
        (1, 100, None, "2024-03-01 10:00", "open"),
    ]
    m = campaign_metrics(build_store(ev), AS_OF).iloc[0]
    assert (m["sent"], m["delivered"], m["delivered_inferred"]) == (4, 3, True)
    assert m["open_rate"] == pytest.approx(1 / 3)


def attribution_store() -> dict[str, pd.DataFrame]:
    ev = sends(range(1, 7)) + [
        (1, 100, None, "2024-03-01 10:00", "click"),
        (2, 100, None, "2024-03-01 12:00", "open", False),
        (3, 100, None, "2024-03-01 09:00:05", "open", True),
        (4, 100, None, "2024-03-01 10:00", "click"),
        (5, 100, None, "2024-03-01 10:00", "click"),
        (6, 100, None, "2024-03-01 10:00", "click"),
    ]
    ev += sends([5], campaign=200, at="2024-03-02 09:00")
    ev += [(5, 200, None, "2024-03-02 10:00", "open", False)]
    orders = [
        (1, "2024-03-06 10:00:00", 40.0),  # exactly 5 days after the click: attributed
        (2, "2024-03-06 12:00:01", 30.0),  # 5 days and 1 s after the open: not attributed
        (3, "2024-03-02 09:00:00", 25.0),  # after a machine open only: not attributed
        (4, "2024-03-01 09:59:59", 10.0),  # before the click: not attributed
        (4, "2024-03-01 10:00:00", 20.0),  # at the click: attributed
        (4, "2024-03-03 10:00:00", -20.0),  # refund: never attributed
        (5, "2024-03-03 10:00:00", 60.0),  # last touch is campaign 200's open
        (6, "2024-07-02 10:00:00", 99.0),  # after as_of: ignored
    ]
    campaigns = [(100, "spring", "2024-03-01 09:00"), (200, "follow-up", "2024-03-02 09:00")]
    return build_store(ev, orders, campaigns)


def test_attribution_window_edges_and_last_touch() -> None:
    m = campaign_metrics(attribution_store(), AS_OF, by=("campaign_id",)).set_index("campaign_id")
    assert m.loc[100, "attributed_conversions"] == 2  # customers 1 and 4
    assert m.loc[100, "attributed_orders"] == 2
    assert m.loc[100, "attributed_revenue"] == pytest.approx(60.0)
    assert m.loc[100, "conversion_rate"] == pytest.approx(2 / 6)
    assert m.loc[100, "revenue_per_recipient"] == pytest.approx(60.0 / 6)
    assert m.loc[200, "attributed_revenue"] == pytest.approx(60.0)
    assert m.loc[200, "attributed_conversions"] == 1
    # a longer window takes in customer 2's order
    m6 = campaign_metrics(attribution_store(), AS_OF, attribution_days=6, by=("campaign_id",))
    assert m6.set_index("campaign_id").loc[100, "attributed_revenue"] == pytest.approx(90.0)
    # as_of cuts events and orders: before the campaign nothing is sent
    assert campaign_metrics(attribution_store(), "2024-02-28").empty


def test_by_and_segments() -> None:
    store = engagement_store()
    total = campaign_metrics(store, AS_OF, by=())
    assert len(total) == 1 and total.loc[0, "sent"] == 10
    assert "campaign_id" not in total.columns
    seg = pd.Series(["vip", "vip", "new"], index=[1, 6, 7])
    m = campaign_metrics(store, AS_OF, segments=seg)
    assert list(m.columns[:5]) == ["campaign_id", "campaign_name", "sent_at", "segment", "variant"]
    got = m.set_index(["segment", "variant"])["sent"].to_dict()
    assert got == {
        ("new", "B"): 1,
        ("unassigned", "A"): 4,
        ("unassigned", "B"): 3,
        ("vip", "A"): 1,
        ("vip", "B"): 1,
    }
    frame = pd.DataFrame({"customer_id": [1, 6, 7], "segment": ["vip", "vip", "new"]})
    pd.testing.assert_frame_equal(campaign_metrics(store, AS_OF, segments=frame), m)
    with pytest.raises(
        ConfigError, match=r"Valid options for 'by' are \('campaign_id', 'variant'\)"
    ):
        campaign_metrics(store, AS_OF, by=("kind",))
    with pytest.raises(DataError, match=r"segments: missing column\(s\) 'segment'"):
        campaign_metrics(store, AS_OF, segments=pd.DataFrame({"customer_id": [1]}))
    with pytest.raises(DataError, match=r"segments: 1 customer ids appear more than once"):
        campaign_metrics(store, AS_OF, segments=pd.Series(["a", "b"], index=[1, 1]))
    dup = ibis.memtable(pd.DataFrame({"customer_id": [1, 1], "segment": ["a", "b"]}))
    with pytest.raises(DataError, match=r"segments: 1 rows repeat a customer id"):
        campaign_metrics(store, AS_OF, segments=dup)
    with pytest.raises(ConfigError, match=r"attribution_days must be a positive number of days"):
        campaign_metrics(store, AS_OF, attribution_days=0)


def test_works_on_a_duckdb_file(tmp_path) -> None:
    from bmkt.io import ingest

    db = tmp_path / "bmkt.duckdb"
    ingest(attribution_store(), db, as_of="2024-07-31")
    store = open_store(db)  # read-only connection
    seg = pd.Series(["vip"], index=[1])
    got = campaign_metrics(store, AS_OF, by=("campaign_id",), segments=seg)
    assert got["attributed_revenue"].sum() == pytest.approx(120.0)


# --------------------------------------------------------------------------- incrementality


def lift_store() -> dict[str, pd.DataFrame]:
    """10 sent, 10 held out; 4 treated and 1 held-out customers buy 50 in the window."""
    ev = sends(range(1, 11))
    ev += [(c, 100, None, "2024-03-01 09:00", "holdout") for c in range(11, 21)]
    ev += [(c, 100, None, "2024-03-01 10:00", "click") for c in (1, 2)]
    ev += sends(range(21, 26), campaign=200, at="2024-04-01 09:00")  # no holdout
    orders = [
        (1, "2024-03-01 11:00", 50.0),
        (2, "2024-03-02 09:00", 50.0),
        (3, "2024-03-04 09:00", 50.0),
        (4, "2024-03-06 09:00", 50.0),  # exactly sent_at + 5 days: in the window
        (5, "2024-03-06 09:00:01", 50.0),  # just after: out
        (6, "2024-03-01 08:59", 50.0),  # before the send: out
        (11, "2024-03-03 09:00", 50.0),
        (12, "2024-03-08 09:00", 50.0),  # out
        (21, "2024-04-02 09:00", 20.0),
    ]
    campaigns = [(100, "spring", "2024-03-01 09:00"), (200, "no-holdout", "2024-04-01 09:00")]
    return build_store(ev, orders, campaigns)


def test_incrementality_known_by_construction() -> None:
    inc = incrementality(lift_store(), AS_OF, ci="wald")
    assert list(inc.columns) == list(INCREMENTALITY_COLUMNS)
    r = inc.set_index("campaign_id").loc[100]
    assert (r["n_treated"], r["n_holdout"]) == (10, 10)
    assert r["conversion_rate_treated"] == pytest.approx(0.4)
    assert r["conversion_rate_holdout"] == pytest.approx(0.1)
    assert r["conversion_rate_diff"] == pytest.approx(0.3)
    se = math.sqrt(0.4 * 0.6 / 10 + 0.1 * 0.9 / 10)
    z = stats.norm.ppf(0.975)
    assert r["conversion_rate_diff_ci_low"] == pytest.approx(0.3 - z * se)
    assert r["incremental_conversions"] == pytest.approx(3.0)
    assert r["incremental_conversions_ci_low"] == pytest.approx(10 * (0.3 - z * se))
    assert r["incremental_conversions_ci_high"] == pytest.approx(10 * (0.3 + z * se))
    assert r["conversion_lift"] == pytest.approx(3.0)
    # revenue per recipient: 20 vs 5, Welch on the per-customer values
    treated = np.array([50.0] * 4 + [0.0] * 6)
    held = np.array([50.0] + [0.0] * 9)
    ref = stats.ttest_ind(treated, held, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r["revenue_per_recipient_treated"] == pytest.approx(20.0)
    assert r["revenue_per_recipient_holdout"] == pytest.approx(5.0)
    assert r["revenue_per_recipient_diff"] == pytest.approx(15.0)
    assert r["revenue_p_value"] == pytest.approx(ref.pvalue)
    assert r["revenue_per_recipient_diff_ci_low"] == pytest.approx(ci.low)
    assert r["incremental_revenue"] == pytest.approx(150.0)
    assert r["incremental_revenue_ci_high"] == pytest.approx(10 * ci.high)
    assert r["revenue_lift"] == pytest.approx(3.0)
    # attribution sees only the two clickers' orders: not the lift
    assert r["attributed_conversions"] == 2
    assert r["attributed_revenue"] == pytest.approx(100.0)
    assert r["note"] == ""


def test_incrementality_agresti_caffo_default() -> None:
    r = incrementality(lift_store(), AS_OF).set_index("campaign_id").loc[100]
    a1, a0 = 5 / 12, 2 / 12
    se = math.sqrt(a1 * (1 - a1) / 12 + a0 * (1 - a0) / 12)
    z = stats.norm.ppf(0.975)
    assert r["conversion_rate_diff"] == pytest.approx(0.3)  # point estimate unchanged
    assert r["conversion_rate_diff_ci_low"] == pytest.approx(a1 - a0 - z * se)
    assert r["conversion_rate_diff_ci_high"] == pytest.approx(a1 - a0 + z * se)


def test_campaign_without_holdout_gets_a_note_not_a_crash() -> None:
    inc = incrementality(lift_store(), AS_OF).set_index("campaign_id")
    r = inc.loc[200]
    assert r["note"] == NO_HOLDOUT_NOTE
    assert (r["n_treated"], r["n_holdout"]) == (5, 0)
    assert r["conversion_rate_treated"] == pytest.approx(0.2)
    assert r["revenue_per_recipient_treated"] == pytest.approx(4.0)
    lift_cols = [c for c in INCREMENTALITY_COLUMNS if "diff" in c or "lift" in c]
    lift_cols += [c for c in INCREMENTALITY_COLUMNS if c.startswith("incremental")]
    assert r[lift_cols].isna().all()
    assert r["attributed_conversions"] == 0


def test_incrementality_notes() -> None:
    store = lift_store()
    ev = store["email_events"]
    both = ev[(ev.customer_id == 11) & (ev.event_type == "holdout")].assign(event_type="sent")
    store["email_events"] = pd.concat([ev, both], ignore_index=True)
    inc = incrementality(store, "2024-04-03").set_index("campaign_id")
    assert inc.loc[100, "n_holdout"] == 9 and inc.loc[100, "n_treated"] == 10
    assert "1 customers both sent and held out were excluded" in inc.loc[100, "note"]
    assert inc.loc[200, "note"] == (
        f"{NO_HOLDOUT_NOTE}; window incomplete: ends after as_of (2024-04-04 00:00)"
    )
    with pytest.raises(ConfigError, match=r"window_days must be a positive number of days"):
        incrementality(store, AS_OF, window_days=-1)
    with pytest.raises(
        ConfigError, match=r"Valid options for 'ci' are \('wald', 'agresti-caffo'\)"
    ):
        incrementality(store, AS_OF, ci="exact")


def test_tiny_store_from_test_validate() -> None:
    inc = incrementality(make_store(), AS_OF)
    assert inc.loc[0, "note"] == "fewer than 2 customers in an arm: lift not measurable"
    assert np.isnan(inc.loc[0, "conversion_rate_diff"])


# --------------------------------------------------------------------------- trends


def test_engagement_over_time_weekly() -> None:
    ev = sends(range(1, 5), at="2024-03-05 09:00")  # Tuesday
    ev += sends(range(5, 7), campaign=200, at="2024-03-12 09:00")
    ev += [
        (1, 100, None, "2024-03-05 10:00", "open", False),
        (2, 100, None, "2024-03-05 10:00", "open", True),
        (5, 200, None, "2024-03-12 10:00", "click"),
    ]
    campaigns = [(100, "a", "2024-03-05 09:00"), (200, "b", "2024-03-12 09:00")]
    eng = engagement_over_time(build_store(ev, campaigns=campaigns), AS_OF)
    assert eng["period"].tolist() == [T("2024-03-04"), T("2024-03-11")]
    assert eng["sent"].tolist() == [4, 2]
    assert eng["open_rate"].tolist() == [0.25, 0.5]
    assert eng["machine_opens"].tolist() == [1, 0]
    assert eng["click_rate"].tolist() == [0.0, 0.5]
    monthly = engagement_over_time(build_store(ev, campaigns=campaigns), AS_OF, freq="M")
    assert monthly["sent"].tolist() == [6]
    with pytest.raises(ConfigError, match=r"Valid options for 'freq' are \('D', 'W', 'M'\)"):
        engagement_over_time(build_store(ev, campaigns=campaigns), AS_OF, freq="Y")


def test_cohort_retention_by_hand() -> None:
    orders = [
        (1, "2024-01-05", 10.0),
        (1, "2024-02-20", 10.0),
        (1, "2024-02-25", 10.0),  # twice in month 1: counted once
        (2, "2024-01-31 23:59", 10.0),
        (2, "2024-03-01", -10.0),  # refund: not a purchase
        (3, "2024-02-01", 10.0),
        (3, "2024-03-15", 10.0),
        (4, "2024-04-01", 10.0),  # after as_of
    ]
    ret = cohort_retention(build_store([], orders), "2024-03-31")
    got = ret.set_index(["cohort", "periods_since"])
    assert got.loc[(T("2024-01-01"), 0), "cohort_size"] == 2
    assert got["retention"].to_dict() == {
        (T("2024-01-01"), 0): 1.0,
        (T("2024-01-01"), 1): 0.5,
        (T("2024-01-01"), 2): 0.0,
        (T("2024-02-01"), 0): 1.0,
        (T("2024-02-01"), 1): 1.0,
    }
    with pytest.raises(ConfigError, match=r"Valid options for 'freq' are \('W', 'M'\)"):
        cohort_retention(build_store([], orders), AS_OF, freq="D")


def test_plots_return_figures() -> None:
    store = engagement_store()
    figs = [
        plot_campaign_metrics(campaign_metrics(store, AS_OF)),
        plot_incrementality(incrementality(lift_store(), AS_OF)),
        plot_engagement(engagement_over_time(store, AS_OF)),
        plot_cohort_retention(cohort_retention(lift_store(), AS_OF)),
    ]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)
    fig = go.Figure()
    assert plot_engagement(engagement_over_time(store, AS_OF), fig=fig) is fig
    with pytest.raises(ConfigError, match=r"Valid options for 'metric' are"):
        plot_campaign_metrics(campaign_metrics(store, AS_OF), metric="opens")


# --------------------------------------------------------------------------- HTML


def test_html_report_is_self_contained_and_escaped(tmp_path) -> None:
    store = lift_store()
    evil = "<script>alert('x')</script>"
    store["campaigns"].loc[0, "name"] = evil
    metrics = campaign_metrics(store, AS_OF, by=("campaign_id",))
    inc = incrementality(store, AS_OF)
    fig1 = plot_incrementality(inc)
    fig2 = plot_campaign_metrics(metrics)
    sections = [
        Section("Incrementality", ["Lift is measured against the holdout.", inc, fig1]),
        {"title": f"Campaigns {evil}", "items": [metrics, fig2]},
    ]
    out = render_html_report(
        sections,
        tmp_path / "sub" / "report.html",
        title="Weekly <b>report</b>",
        run_info={"run_id": "r1", "as_of": AS_OF, "params": {"window_days": 5}},
    )
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?https?:", html, flags=re.IGNORECASE)
    assert html.count("* plotly.js v") == 1  # the library, inlined once for two figures
    assert html.count("Plotly.newPlot(") == 2
    assert "alert('x')</script>" not in html and "alert(\\'x\\')" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Weekly &lt;b&gt;report&lt;/b&gt;" in html
    assert "&#34;window_days&#34;: 5" in html
    assert not list(out.parent.glob(".*tmp"))  # written atomically, nothing left behind


def test_html_report_carries_no_emails(tmp_path) -> None:
    table = pd.DataFrame(
        {"customer_id": [1, 2], "email": ["a@example.com", "b@example.com"], "x": [1.5, 2]}
    )
    text = "Questions to someone@example.org please."
    out = render_html_report([Section("People", [text, table])], tmp_path / "r.html", "t")
    html = out.read_text(encoding="utf-8")
    assert "@example" not in html
    assert "[email removed]" in html and ">customer_id<" in html
    assert "plotly" not in html.lower()  # no figure: no library
    fig = go.Figure(go.Bar(x=["a@example.com"], y=[1]))
    with pytest.raises(DataError, match=r"section 'People', item 0: the figure carries email"):
        render_html_report([Section("People", [fig])], tmp_path / "r2.html", "t")
    with pytest.raises(ConfigError, match=r"expected text, a pandas DataFrame or a plotly Figure"):
        render_html_report([Section("People", [42])], tmp_path / "r3.html", "t")


# --------------------------------------------------------------------------- simulator


def test_incrementality_ci_covers_simulated_true_uplift() -> None:
    simulate = pytest.importorskip("bmkt.simulate")
    started = time.perf_counter()
    coverage = []
    for seed in (1, 2, 3):
        tables = simulate.simulate_store(n_customers=3000, days=200, seed=seed, web=False)
        tables.pop("web_events", None)  # not needed here
        inc = incrementality(tables, "2024-06-30").dropna(subset=["conversion_rate_diff_ci_low"])
        truth = tables["truth"].set_index("customer_id")["true_uplift"]
        ev = tables["email_events"]
        sent = ev.loc[ev["event_type"] == "sent", ["campaign_id", "customer_id"]].drop_duplicates()
        true_mean = (
            sent.assign(u=truth.reindex(sent["customer_id"]).to_numpy())
            .groupby("campaign_id")["u"]
            .mean()
        )
        t = true_mean.reindex(inc["campaign_id"]).to_numpy()
        covered = (inc["conversion_rate_diff_ci_low"] <= t) & (
            t <= inc["conversion_rate_diff_ci_high"]
        )
        assert len(covered) >= 10
        coverage.append(covered.mean())
    assert min(coverage) >= 0.8, coverage
    assert np.mean(coverage) >= 0.88, coverage
    assert time.perf_counter() - started < 30


def test_clv_over_time_and_migration_plot() -> None:
    from bmkt.report import clv_over_time, plot_clv_over_time, plot_migration
    from bmkt.segments import migration
    from bmkt.simulate import simulate_store

    tables = simulate_store(n_customers=1500, days=400, seed=2, email=False, web=False)
    frame = clv_over_time(tables, "2024-06-30", months=3)
    assert list(frame["as_of"].dt.strftime("%Y-%m-%d")) == [
        "2024-03-31",
        "2024-04-30",
        "2024-05-31",
        "2024-06-30",
    ]
    assert frame["buyers"].is_monotonic_increasing  # buyers only accumulate
    assert (frame["total_clv"] > 0).all()
    assert (frame["expected_active"] <= frame["buyers"]).all()
    assert len(plot_clv_over_time(frame).data) == 2
    before = pd.Series(["a", "a", "b"], index=[1, 2, 3])
    after = pd.Series(["a", "b", "b"], index=[1, 2, 4])
    fig = plot_migration(migration(before, after))
    assert fig.data[0].z.shape[0] == 3  # a, b, (new)
    with pytest.raises(ConfigError, match="'months' must be a positive integer"):
        clv_over_time(tables, "2024-06-30", months=0)
