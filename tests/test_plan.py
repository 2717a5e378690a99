"""Send plans: suppression, caps, holdouts, arms, send times, personalisation, config."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmkt.errors import ConfigError, DataError
from bmkt.io import open_store
from bmkt.plan import (
    EXCLUSION_REASONS,
    FORMULA_PREFIXES,
    SEND_COLUMNS,
    Campaign,
    _prepare_customers,
    _prepare_triggers,
    _recommendation_columns,
    _to_frame,
    build_plan,
    id_strings,
    load_campaigns,
    local_to_utc,
    render_preview,
    slugify,
    stable_uniform,
)
from bmkt.schema import EMAIL_REGEX

AS_OF = "2024-06-30"
END = pd.Timestamp("2024-07-01")


def camp(cid: str = "c1", **kw: Any) -> dict[str, Any]:
    """A campaign mapping with sensible test defaults."""
    base: dict[str, Any] = {
        "campaign_id": cid,
        "template": "<p>{{ customer_id }} {{ variant }} {{ offer }}</p>",
        "audience": {"segments": ["Champions"]},
        "holdout_share": 0.0,
    }
    base.update(kw)
    return base


def customers(n: int, **cols: Any) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "email": [f"c{i}@example.com" for i in range(1, n + 1)],
            "email_status": "subscribed",
            "email_consent": True,
            "timezone": "UTC",
        }
    )
    for k, v in cols.items():
        frame[k] = v
    return frame


def assignment(ids: Any, segment: Any = "Champions") -> pd.DataFrame:
    ids = list(ids)
    seg = segment if isinstance(segment, list) else [segment] * len(ids)
    return pd.DataFrame(
        {"segment": seg, "in_champions": [s == "Champions" for s in seg]},
        index=pd.Index(ids, name="customer_id"),
    )


def plan_for(cust: pd.DataFrame, campaigns: list[dict[str, Any]], **kw: Any) -> Any:
    assign = kw.pop("assign", assignment(cust["customer_id"]))
    trig = kw.pop("triggers", None)
    kw.setdefault("forgotten", None)
    return build_plan(cust, assign, trig, load_campaigns({"campaigns": campaigns}), AS_OF, **kw)


# --------------------------------------------------------------------------- properties

EMAIL_KINDS = ["ok", "ok", "ok", "none", "bad", "formula", "shared", "shared_upper", "blank"]
STATUSES = ["subscribed", "subscribed", "subscribed", "unsubscribed", "bounced", "complained", None]


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 25))
    ids = list(range(1, n + 1))
    kinds = draw(st.lists(st.sampled_from(EMAIL_KINDS), min_size=n, max_size=n))
    emails = {
        "ok": lambda i: f"c{i}@example.com",
        "none": lambda i: None,
        "bad": lambda i: f"c{i}-at-example.com",
        "formula": lambda i: f"=c{i}@example.com",
        "shared": lambda i: "shared@example.com",
        "shared_upper": lambda i: "Shared@Example.com",
        "blank": lambda i: "  ",
    }
    cust = pd.DataFrame(
        {
            "customer_id": ids,
            "email": [emails[k](i) for k, i in zip(kinds, ids, strict=True)],
            "email_status": draw(st.lists(st.sampled_from(STATUSES), min_size=n, max_size=n)),
            "email_consent": draw(
                st.lists(st.sampled_from([True, True, False, None]), min_size=n, max_size=n)
            ),
            "timezone": draw(
                st.lists(
                    st.sampled_from(["Europe/Berlin", "America/New_York", None, "Bad/Zone"]),
                    min_size=n,
                    max_size=n,
                )
            ),
        }
    )
    segs = draw(st.lists(st.sampled_from(["Champions", "At Risk", "Lost"]), min_size=n, max_size=n))
    assign = pd.DataFrame(
        {
            "segment": segs,
            "in_champions": [s == "Champions" for s in segs],
            "in_at_risk": [s == "At Risk" for s in segs],
            "in_lost": [s == "Lost" for s in segs],
        },
        index=pd.Index(ids, name="customer_id"),
    )
    trig_rows = []
    for i in ids + [n + 1]:  # n + 1 is not a customer
        for t in draw(st.sets(st.sampled_from(["cart_abandonment", "welcome"]))):
            days = draw(st.integers(0, 9))
            trig_rows.append((i, t, END - pd.Timedelta(days=days, hours=1), [i * 10]))
    triggers = pd.DataFrame(
        trig_rows, columns=["customer_id", "trigger", "triggered_at", "products"]
    )
    hist_rows = []
    for i in ids:
        for _ in range(draw(st.integers(0, 3))):
            hist_rows.append(
                (i, 100, END - pd.Timedelta(hours=draw(st.integers(1, 24 * 9))), "sent")
            )
    history = pd.DataFrame(
        hist_rows, columns=["customer_id", "campaign_id", "occurred_at", "event_type"]
    )
    n_camp = draw(st.integers(1, 4))
    campaigns = []
    for k in range(n_camp):
        audience = draw(
            st.sampled_from(
                [
                    {"segments": ["Champions"]},
                    {"segments": ["At Risk", "Lost"]},
                    {"triggers": ["cart_abandonment"]},
                    {"triggers": ["welcome", "cart_abandonment"], "trigger_within_days": 5},
                    {"segments": ["Champions"], "triggers": ["welcome"]},
                    {"all": True},
                ]
            )
        )
        campaigns.append(
            camp(
                f"c{k}",
                audience=audience,
                priority=draw(st.integers(0, 2)),
                holdout_share=draw(st.sampled_from([0.0, 0.1, 0.5])),
                variants=draw(st.sampled_from([{"A": 1}, {"A": 1, "B": 2}])),
                send_date=draw(st.sampled_from([None, "2024-07-01", "2024-07-02"])),
            )
        )
    return {
        "cust": cust,
        "assign": assign,
        "triggers": triggers,
        "history": history,
        "campaigns": campaigns,
        "suppression": draw(st.lists(st.sampled_from(ids), max_size=3)),
        "max_per_day": draw(st.integers(1, 2)),
        "frequency_cap": draw(st.integers(0, 4)),
        "cap_days": draw(st.integers(1, 7)),
        "global_control_share": draw(st.sampled_from([0.0, 0.3])),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_invariants(s: dict[str, Any]) -> None:
    cust = s["cust"]
    before = cust.copy()
    plan = build_plan(
        cust,
        s["assign"],
        s["triggers"],
        load_campaigns({"campaigns": s["campaigns"]}),
        AS_OF,
        email_events=s["history"],
        suppression=s["suppression"],
        global_control_share=s["global_control_share"],
        max_per_day=s["max_per_day"],
        frequency_cap=s["frequency_cap"],
        cap_days=s["cap_days"],
        forgotten=None,
    )
    pd.testing.assert_frame_equal(cust, before)  # inputs are not mutated
    sends = plan.sends
    assert list(sends.columns) == list(SEND_COLUMNS)

    # 1. no suppressed customer is ever in a send list
    c = cust.set_index("customer_id")
    addr = c["email"].str.strip().str.lower()
    opted_out = set(addr[c["email_status"].isin(["unsubscribed", "bounced", "complained"])])
    gc = stable_uniform(c.index, "bmkt", "global_control") < s["global_control_share"]
    for cid, email in zip(sends["customer_id"], sends["email"], strict=True):
        row = c.loc[cid]
        assert row["email_status"] == "subscribed"
        assert row["email_consent"] is True or row["email_consent"] is np.True_
        assert email == row["email"] and re.match(EMAIL_REGEX, email)
        assert not email.startswith(FORMULA_PREFIXES)
        assert cid not in s["suppression"]
        assert email.strip().lower() not in opted_out
        assert not gc[c.index.get_loc(cid)]

    # 2. at most max_per_day per recipient address and (local) send day
    if len(sends):
        send_date = {x["campaign_id"]: x["send_date"] or "2024-07-01" for x in s["campaigns"]}
        per_day = sends.assign(
            addr=sends["email"].str.lower(), day=sends["campaign_id"].map(send_date)
        ).groupby(["addr", "day"])
        assert per_day.size().max() <= s["max_per_day"]
        assert (
            sends.groupby(["customer_id", sends["campaign_id"].map(send_date)]).size().max()
            <= s["max_per_day"]
        )

    # 3. frequency cap including history (per address, so also per customer)
    h = s["history"]
    window = h[h["occurred_at"] >= END - pd.Timedelta(days=s["cap_days"])]
    hist_addr = window["customer_id"].map(c["email"].str.strip().str.lower()).value_counts()
    planned = sends["email"].str.lower().value_counts()
    for a, k in planned.items():
        assert k + hist_addr.get(a, 0) <= s["frequency_cap"]

    # 4. holdout and treatment never overlap; nobody appears twice in a campaign
    both = sends.merge(plan.holdouts, on=["campaign_id", "customer_id"])
    assert both.empty
    all_rows = pd.concat(
        [
            sends[["campaign_id", "customer_id"]],
            plan.holdouts[["campaign_id", "customer_id"]],
            plan.exclusions.rows[["campaign_id", "customer_id"]],
        ]
    )
    assert not all_rows.duplicated().any()
    summary = plan.summary()
    assert (summary["audience"] == summary[["excluded", "holdout", "sent"]].sum(axis=1)).all()
    # holdouts are eligible customers only
    for cid in plan.holdouts["customer_id"]:
        assert c.loc[cid, "email_status"] == "subscribed" and bool(
            c.loc[cid, "email_consent"] is True or c.loc[cid, "email_consent"] is np.True_
        )
    assert set(plan.exclusions.rows["reason"]) <= set(EXCLUSION_REASONS)
    assert "email" not in plan.holdouts.columns and "email" not in plan.exclusions.rows.columns


def test_arm_and_holdout_shares_converge_to_configuration() -> None:
    """With n customers a share p has sd sqrt(p(1-p)/n); 4 sd bounds a false alarm at ~6e-5."""
    n = 100_000
    cust = customers(n)
    assign = assignment(cust["customer_id"])
    campaigns = [
        camp("spring", holdout_share=0.1, variants={"A": 5, "B": 3, "C": 2}),
        camp("summer", holdout_share=0.2, priority=-1),
    ]
    plan = plan_for(cust, campaigns, assign=assign, max_per_day=2, global_control_share=0.05)

    def within(share: float, p: float, m: int) -> bool:
        return abs(share - p) <= 4 * math.sqrt(p * (1 - p) / m)

    assert within(len(plan.global_control) / n, 0.05, n)
    eligible = n - len(plan.global_control)
    held = plan.holdouts.groupby("campaign_id").size()
    assert within(held["spring"] / eligible, 0.1, eligible)
    assert within(held["summer"] / eligible, 0.2, eligible)
    # holdouts of different campaigns are independent draws
    spring = set(plan.holdouts.loc[plan.holdouts.campaign_id == "spring", "customer_id"])
    summer = set(plan.holdouts.loc[plan.holdouts.campaign_id == "summer", "customer_id"])
    assert within(len(spring & summer) / eligible, 0.02, eligible)
    arms = plan.sends[plan.sends.campaign_id == "spring"]["variant"].value_counts()
    m = int(arms.sum())
    assert m == eligible - held["spring"]
    for arm, p in {"A": 0.5, "B": 0.3, "C": 0.2}.items():
        assert within(arms[arm] / m, p, m), (arm, arms[arm] / m)


def test_reruns_are_identical_and_salt_reshuffles() -> None:
    cust = customers(2_000)
    campaigns = [camp("c1", holdout_share=0.3, variants={"A": 1, "B": 1})]
    a = plan_for(cust, campaigns)
    b = plan_for(cust.sample(frac=1, random_state=1), campaigns)  # row order does not matter
    pd.testing.assert_frame_equal(a.sends, b.sends)
    pd.testing.assert_frame_equal(a.holdouts, b.holdouts)
    c = plan_for(cust, campaigns, salt="other")
    assert set(c.holdouts["customer_id"]) != set(a.holdouts["customer_id"])
    merged = a.sends.merge(c.sends, on="customer_id")
    assert (merged["variant_x"] != merged["variant_y"]).any()


def test_stable_uniform_is_a_documented_formula() -> None:
    import hashlib

    def blake64(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    u = stable_uniform(pd.Series([42, 7]), "s", "holdout", "c1")
    m = 2**64 - 1
    x = blake64("s\x1f42") ^ blake64("s\x1fholdout\x1fc1")
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & m
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & m
    x ^= x >> 33
    assert u[0] == (x >> 11) / 2**53
    # ids of any dtype that mean the same customer hash the same
    assert (stable_uniform(["42", "7"], "s", "holdout", "c1") == u).all()
    assert (stable_uniform(pd.Series([42.0, 7.0]), "s", "holdout", "c1") == u).all()
    assert id_strings(pd.Series([1, None, "x"], dtype=object)).tolist() == ["1", None, "x"]
    for ints in (
        np.array([0, -5, 2**63 - 1, -(2**63)], dtype=np.int64),
        np.array([0, 2**64 - 1, 10], dtype=np.uint64),
        np.array([-128, 127], dtype=np.int8),
    ):
        s = pd.Series(ints, index=np.arange(len(ints))[::-1] + 3, name="customer_id")
        got = id_strings(s)
        assert got.tolist() == [str(v) for v in ints.tolist()]
        assert got.dtype == object and got.index.equals(s.index) and got.name == s.name


def test_plan_uses_stable_uniform_and_unknown_ids_do_not_disturb_it() -> None:
    cust = customers(300)
    a = plan_for(cust, [camp(holdout_share=0.3)])
    expected = set(
        cust["customer_id"][stable_uniform(cust["customer_id"], "bmkt", "holdout", "c1") < 0.3]
    )
    assert set(a.holdouts["customer_id"]) == expected
    b = plan_for(cust, [camp(holdout_share=0.3)], assign=assignment(list(range(1, 301)) + [999]))
    assert set(b.holdouts["customer_id"]) == expected


# --------------------------------------------------------------------------- suppression


def test_every_suppression_reason_with_precedence(tmp_path: Path) -> None:
    cust = customers(
        12,
        email=[
            "ok@example.com",  # 1 sent
            "u@example.com",  # 2 unsubscribed
            "b@example.com",  # 3 bounced
            "c@example.com",  # 4 complained
            "n@example.com",  # 5 no consent
            None,  # 6 missing
            "not an address",  # 7 invalid
            "list@example.com",  # 8 on the suppression list (and unsubscribed)
            "U@Example.com",  # 9 same address as 2 -> address suppressed
            "+1@example.com",  # 10 formula-like -> invalid
            "forgot@example.com",  # 11 forgotten
            "byaddress@example.com",  # 12 suppressed by address
        ],
        email_status=["subscribed", "unsubscribed", "bounced", "complained"]
        + ["subscribed"] * 3
        + ["unsubscribed"]
        + ["subscribed"] * 4,
        email_consent=[True, True, True, True, False, True, True, False, True, True, True, True],
    )
    forgotten = tmp_path / "suppression_forgotten.csv"
    forgotten.write_text("customer_id,forgotten_at\n11,2024-06-01\n")
    plan = plan_for(cust, [camp()], suppression=[8, "ByAddress@example.com"], forgotten=forgotten)
    assert plan.sends["customer_id"].tolist() == [1]
    rows = plan.exclusions.rows.set_index("customer_id")
    assert rows["reason"].to_dict() == {
        2: "unsubscribed",
        3: "bounced",
        4: "complained",
        5: "no_consent",
        6: "missing_email",
        7: "invalid_email",
        8: "suppression_list",
        9: "address_suppressed",
        10: "invalid_email",
        11: "forgotten",
        12: "suppression_list",
    }
    assert rows.loc[8, "reasons"] == "suppression_list;unsubscribed;no_consent"
    assert plan.exclusions.by_reason()["invalid_email"] == 2
    assert list(plan.exclusions.by_reason()) == [
        r for r in EXCLUSION_REASONS if r in set(rows["reason"])
    ]  # precedence order
    assert plan.params["suppression_list"] == {"source": "iterable", "ids": 1, "addresses": 1}
    assert "example.com" not in str(plan.params)


def test_suppression_list_from_files(tmp_path: Path) -> None:
    cust = customers(4)
    text = tmp_path / "ids.txt"
    text.write_text("# do not mail\n2\n\n 3 \n")
    csv = tmp_path / "ids.csv"
    csv.write_text("email,customer_id\n,4\nc1@EXAMPLE.com,\n")
    assert set(plan_for(cust, [camp()], suppression=text).sends["customer_id"]) == {1, 4}
    assert set(plan_for(cust, [camp()], suppression=csv).sends["customer_id"]) == {2, 3}
    with pytest.raises(ConfigError, match="suppression list .*no such file"):
        plan_for(cust, [camp()], suppression=tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="forgotten-customer suppression file"):
        plan_for(cust, [camp()], forgotten=tmp_path / "missing.csv")


def test_consent_must_be_exactly_true() -> None:
    cust = customers(4, email_consent=pd.Series([True, "true", 1, None], dtype=object))
    plan = plan_for(cust, [camp()])
    assert plan.sends["customer_id"].tolist() == [1]


def test_unknown_audience_members_and_duplicates() -> None:
    cust = customers(2)
    plan = plan_for(cust, [camp()], assign=assignment([1, 2, 99]))
    assert plan.exclusions.rows.set_index("customer_id").loc[99, "reason"] == "unknown_customer"
    dup = pd.concat([cust, cust.iloc[[0]]])
    with pytest.raises(DataError, match=r"customers.customer_id: 2 rows is duplicated, e.g. \[1\]"):
        plan_for(dup, [camp()])
    with pytest.raises(DataError, match="customers.email_consent: required column is missing"):
        plan_for(cust.drop(columns="email_consent"), [camp()])


# --------------------------------------------------------------------------- arbitration


def test_priority_daily_limit_and_frequency_cap_with_history() -> None:
    cust = customers(4)
    campaigns = [
        camp("b_low", priority=1),
        camp("a_tie", priority=5),
        camp("b_tie", priority=5),
        camp("later", priority=0, send_date="2024-07-03"),
    ]
    history = pd.DataFrame(
        {
            "customer_id": [2, 2, 3, 3, 3, 4, 4, 4],
            "campaign_id": 100,
            "occurred_at": [END - pd.Timedelta(days=d) for d in (1, 2, 1, 2, 3, 1, 2, 8)],
            "event_type": ["sent"] * 7 + ["sent"],
        }
    )
    plan = plan_for(cust, campaigns, email_events=history, frequency_cap=3, cap_days=7)
    got = plan.sends.groupby("customer_id")["campaign_id"].apply(list).to_dict()
    # a_tie beats b_tie on the tie (campaign id), b_low loses the day; `later` is another day
    assert got[1] == ["a_tie", "later"]
    assert got[2] == ["a_tie"]  # 2 in history + 1 planned = cap
    assert 3 not in got  # 3 in history: capped
    assert got[4] == ["a_tie"]  # the event 8 days ago is outside the window
    reasons = plan.exclusions.rows.groupby(["customer_id", "campaign_id"])["reason"].first()
    assert reasons[(1, "b_low")] == "daily_limit"
    assert reasons[(1, "b_tie")] == "daily_limit"
    assert reasons[(2, "later")] == "frequency_cap"
    assert reasons[(3, "a_tie")] == "frequency_cap"


def test_shared_address_counts_as_one_recipient() -> None:
    cust = customers(2, email=["same@example.com", "SAME@example.com"])
    plan = plan_for(cust, [camp()])
    assert len(plan.sends) == 1
    assert plan.exclusions.rows["reason"].tolist() == ["daily_limit"]


def test_both_arms_lose_customers_to_arbitration_alike() -> None:
    """A held-out customer takes the day's slot "as if sent".

    Otherwise a campaign's holdout would receive other campaigns the same day
    while its treated customers could not, and the measured lift would be
    biased; and a lower-priority campaign would keep held-out customers that
    its treated arm loses to arbitration.
    """
    cust = customers(500)
    plan = plan_for(
        cust, [camp("high", priority=2, holdout_share=0.5), camp("low", holdout_share=0.5)]
    )
    held_high = set(plan.holdouts.loc[plan.holdouts.campaign_id == "high", "customer_id"])
    sent_high = set(plan.sends.loc[plan.sends.campaign_id == "high", "customer_id"])
    assert 200 < len(held_high) < 300 and len(held_high) + len(sent_high) == 500
    # nobody held out of "high" is mailed "low" instead, and "low" keeps no arm at all
    assert (plan.sends.campaign_id == "low").sum() == 0
    assert (plan.holdouts.campaign_id == "low").sum() == 0
    lost = plan.exclusions.rows
    assert (lost.loc[lost.campaign_id == "low", "reason"] == "daily_limit").sum() == 500


# --------------------------------------------------------------------------- targeting


def test_triggers_segments_and_personalisation() -> None:
    cust = customers(4)
    assign = assignment([1, 2, 3, 4], ["Champions", "Can't Lose Them", "Lost", "Champions"])
    assign["in_cant_lose_them"] = [False, True, False, False]
    triggers = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3, 4],
            "trigger": [
                "cart_abandonment",
                "cart_abandonment",
                "cart_abandonment",
                "welcome",
                "cart_abandonment",
            ],
            "triggered_at": [
                pd.Timestamp(t)
                for t in (
                    "2024-06-28",
                    "2024-06-29 12:00",
                    "2024-06-20",
                    "2024-06-29",
                    "2024-07-02",
                )
            ],
            "products": [[1], [101, 102], [7], None, [9]],
            "categories": [["shoes"], ["=evil", "hats"], None, None, None],
        }
    )
    recs = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 1, 2],
            "rank": [3, 1, 2, 4, 1],
            "product_id": [30, 10, 20, 40, 11],
            "score": [0.1, 0.9, 0.5, 0.0, 1.0],
        }
    )
    campaigns = [
        camp(
            "cart",
            audience={"triggers": ["cart_abandonment"], "trigger_within_days": 3},
            offer="Free shipping",
            priority=9,
        ),
        camp("vip", audience={"segments": ["Can't Lose Them", "Lost"]}),
    ]
    plan = plan_for(cust, campaigns, assign=assign, triggers=triggers, recommendations=recs)
    s = plan.sends.set_index("customer_id")
    assert s.loc[1, "campaign_id"] == "cart"  # 4's trigger is after as_of; 2's is too old
    assert s.loc[1, "abandoned_products"] == "101|102"  # most recent trigger
    assert s.loc[1, "trigger_categories"] == "=evil|hats"
    assert s.loc[1, "triggered_at"] == pd.Timestamp("2024-06-29 12:00")
    assert (s.loc[1, ["rec_1", "rec_2", "rec_3"]] == ["10", "20", "30"]).all()
    assert s.loc[1, "offer"] == "Free shipping" and s.loc[1, "segment"] == "Champions"
    assert s.loc[2, "campaign_id"] == "vip" and s.loc[2, "rec_1"] == "11"
    assert pd.isna(s.loc[2, "rec_2"]) and pd.isna(s.loc[2, "abandoned_products"])
    assert s.loc[3, "campaign_id"] == "vip"  # primary segment "Lost" without an in_ column
    assert 4 not in s.index
    assert slugify("Can't Lose Them") == "cant_lose_them"


def test_segments_and_triggers_together_mean_both() -> None:
    cust = customers(3)
    triggers = pd.DataFrame(
        {"customer_id": [1, 3], "trigger": "welcome", "triggered_at": pd.Timestamp("2024-06-29")}
    )
    assign = assignment([1, 2, 3], ["Champions", "Champions", "Lost"])
    campaigns = [camp(audience={"segments": ["Champions"], "triggers": ["welcome"]})]
    plan = plan_for(cust, campaigns, assign=assign, triggers=triggers)
    assert plan.sends["customer_id"].tolist() == [1]


def test_uplift_top_share_after_holdout() -> None:
    n = 1_000
    cust = customers(n)
    features = pd.DataFrame({"uplift": np.linspace(0, 1, n)}, index=cust["customer_id"])
    plan = plan_for(cust, [camp(holdout_share=0.2, uplift_top_share=0.3)], features=features)
    sent = plan.sends["customer_id"]
    assert sent.min() > 0.7 * n - 1  # only the top 30% by uplift (ids follow uplift)
    held = plan.holdouts
    assert 0.15 < len(held) / n < 0.25  # holdout drawn from the whole audience
    assert held["uplift_top"].sum() == (held["customer_id"] > 0.7 * n).sum()
    reasons = plan.exclusions.by_reason()
    assert reasons["uplift_below_top"] + len(held) + len(sent) == n
    with pytest.raises(ConfigError, match="'uplift_top_share' needs an 'uplift' column"):
        plan_for(cust, [camp(uplift_top_share=0.3)])


# --------------------------------------------------------------------------- send times


@pytest.mark.parametrize(
    ("tz", "pref", "day", "expected"),
    [
        ("Europe/Berlin", 9, "2024-07-01", "2024-07-01 07:00"),  # CEST, UTC+2
        ("Europe/Berlin", 9, "2024-01-15", "2024-01-15 08:00"),  # CET, UTC+1
        ("Europe/Berlin", 2, "2024-03-31", "2024-03-31 01:00"),  # 02:xx does not exist
        ("Europe/Berlin", 10, "2024-03-31", "2024-03-31 08:00"),  # after the switch
        ("America/New_York", 1, "2024-11-03", "2024-11-03 06:00"),  # ambiguous: standard time
        (None, 9, "2024-07-01", "2024-07-01 09:00"),  # no zone: UTC
        ("Mars/Olympus", 9, "2024-07-01", "2024-07-01 09:00"),  # unknown zone: UTC
        ("Europe/Berlin", None, "2024-07-01", "2024-07-01 12:00"),  # campaign default 14h
        ("Europe/Berlin", 99, "2024-07-01", "2024-07-01 12:00"),  # not an hour: default
        ("Europe/Berlin", 9.75, "2024-07-01", "2024-07-01 07:00"),  # whole hours
        ("Europe/Berlin", 23, "2024-07-01", "2024-07-01 18:00"),  # window [0, 20]: clamped
    ],
)
def test_send_time(tz: str | None, pref: float | None, day: str, expected: str) -> None:
    cust = customers(1, timezone=[tz])
    features = pd.DataFrame({"preferred_hour": [pref]}, index=[1])
    as_of = (pd.Timestamp(day) - pd.Timedelta(days=1)).date().isoformat()
    campaigns = load_campaigns(
        {"campaigns": [camp(send_hour=14, send_window=[0, 20], send_date=day)]}
    )
    plan = build_plan(
        cust, assignment([1]), None, campaigns, as_of, features=features, forgotten=None
    )
    assert plan.sends["send_at_utc"].tolist() == [pd.Timestamp(expected)]


def test_send_times_never_before_as_of_and_local_to_utc() -> None:
    cust = customers(1)
    plan = build_plan(
        cust,
        assignment([1]),
        None,
        load_campaigns({"campaigns": [camp(send_hour=6)]}),
        "2024-06-30 08:30",
        forgotten=None,
    )
    # 06:00 on the as_of day has passed at 08:30: same local hour the next day,
    # never a burst at the moment the window closes
    assert plan.sends["send_at_utc"].tolist() == [pd.Timestamp("2024-07-01 06:00")]
    out = local_to_utc(
        pd.Series(pd.to_datetime(["2024-07-01 09:00", "2024-07-01 09:00"])),
        pd.Series(["Asia/Kolkata", "UTC"]),
    )
    assert out.tolist() == [pd.Timestamp("2024-07-01 03:30"), pd.Timestamp("2024-07-01 09:00")]


# --------------------------------------------------------------------------- inputs


def test_store_input_reads_customers_and_history() -> None:
    from tests.test_validate import make_store

    store = open_store(make_store())
    plan = build_plan(
        store,
        assignment([1, 2, 3]),
        None,
        [camp()],
        "2024-03-02",
        frequency_cap=1,
        forgotten=None,
    )
    assert plan.sends.empty  # 1 was sent on 2024-03-01 (cap 1); 2 unsubscribed; 3 bounced
    assert plan.exclusions.rows.set_index("customer_id")["reason"].to_dict() == {
        1: "frequency_cap",
        2: "unsubscribed",
        3: "bounced",
    }
    assert plan.params["history_sent_events"] == 1


# --------------------------------------------------------------------------- configuration


def test_bundled_config_loads() -> None:
    campaigns = load_campaigns()
    assert {c.campaign_id for c in campaigns} >= {"cart_recovery", "winback_at_risk"}
    assert all(isinstance(c, Campaign) and c.kind == "marketing" for c in campaigns)
    cart = next(c for c in campaigns if c.campaign_id == "cart_recovery")
    assert cart.variants == (("A", 0.5), ("B", 0.5)) and cart.send_window == (8, 20)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"holdout": 0.1},
            r"campaign 'c1': unknown field 'holdout'. Valid options for campaign fields are \[.*\]. Got 'holdout'",
        ),
        (
            {"variants": {"A": 1, "B": 0}},
            r"campaign 'c1': variant weights must be positive numbers. Got 'B': 0",
        ),
        ({"variants": {"A": -1}}, "variant weights must be positive"),
        ({"variants": {"A": True}}, "variant weights must be positive"),
        ({"holdout_share": 1.0}, r"'holdout_share' must be a number in \[0, 1\). Got 1.0"),
        ({"holdout_share": -0.1}, r"'holdout_share' must be a number in \[0, 1\)"),
        (
            {"audience": {"triggers": ["cart_abandon"]}},
            r"Valid options for 'audience.triggers' are \[.*\]. Got 'cart_abandon'",
        ),
        (
            {"audience": {"segment": ["x"]}},
            r"unknown field 'segment'. Valid options for 'audience'",
        ),
        ({"audience": {}}, "the audience is empty"),
        (
            {"kind": "transactional"},
            r"Valid options for 'kind' are \['marketing'\]. Got 'transactional'",
        ),
        ({"campaign_id": "bad id"}, "'campaign_id' is required"),
        ({"send_hour": 24}, "'send_hour' must be a whole hour 0-23"),
        ({"send_window": [9, 8]}, "'send_window' must be"),
        ({"uplift_top_share": 0}, r"'uplift_top_share' must be a number in \(0, 1\]"),
        ({"send_date": "next week"}, "'send_date' must be a date"),
        ({"template": None}, "'template' is required"),
    ],
)
def test_bad_config(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_campaigns({"campaigns": [camp(**change)]})


def test_bad_config_file_and_segments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        load_campaigns([camp(), camp()])
    bad = tmp_path / "c.yaml"
    bad.write_text("campaigns: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_campaigns(bad)
    with pytest.raises(ConfigError, match="unknown field 'campaign'"):
        load_campaigns({"campaign": []})
    with pytest.raises(
        ConfigError, match=r"Valid options for 'audience.segments' are \['Champions'\]"
    ):
        load_campaigns(
            {"campaigns": [camp(audience={"segments": ["Champs"]})]}, known_segments=["Champions"]
        )
    # unknown segment names are an error at planning time too (a typo would send nothing)
    with pytest.raises(
        ConfigError,
        match=r"campaign 'c1': Valid options for 'audience.segments' are \['Champions'\] "
        r"\(the segments of the assignment\). Got 'Champs'",
    ):
        plan_for(customers(2), [camp(audience={"segments": ["Champs"]})])
    with pytest.raises(ConfigError, match="targets segments but no segment assignment"):
        plan_for(customers(2), [camp()], assign=None)
    with pytest.raises(ConfigError, match="'send_date' 2024-06-01 is before"):
        plan_for(customers(2), [camp(send_date="2024-06-01")])
    with pytest.raises(ConfigError, match="max_per_day must be a whole number >= 1. Got 0"):
        plan_for(customers(2), [camp()], max_per_day=0)
    with pytest.raises(ConfigError, match=r"global_control_share must be a number in \[0, 1\)"):
        plan_for(customers(2), [camp()], global_control_share=1)
    defaults = load_campaigns(
        {"defaults": {"priority": 3}, "campaigns": [camp(), camp("c2", priority=1)]}
    )
    assert [c.priority for c in defaults] == [3, 1]
    disabled = plan_for(customers(2), [camp(enabled=False), camp("c2")])
    assert set(disabled.sends["campaign_id"]) == {"c2"}


# --------------------------------------------------------------------------- preview


def test_preview_escapes_and_shows_no_addresses(tmp_path: Path) -> None:
    cust = customers(20)
    campaigns = load_campaigns(
        {
            "campaigns": [
                camp(
                    offer="<script>alert(1)</script>",
                    variants={"A": 1, "B": 1},
                    subject="Hi {{ segment }}",
                ),
                camp("c2", template="welcome.html.j2", priority=-1, audience={"all": True}),
            ]
        }
    )
    plan = build_plan(
        cust, assignment(cust["customer_id"]), None, campaigns, AS_OF, forgotten=None, max_per_day=2
    )
    out = render_preview(plan, campaigns, tmp_path / "preview.html", n_per_variant=2)
    html = out.read_text()
    assert "example.com" not in html
    assert "<script>alert" not in html  # escaped twice: in the email, then in srcdoc
    assert html.count("<article>") == 2 * 2 + 2
    assert "Subject:</strong> Hi Champions" in html
    bad = load_campaigns({"campaigns": [camp(template="missing.html.j2")]})
    with pytest.raises(ConfigError, match="campaign 'c1': template 'missing.html.j2' not found"):
        render_preview(plan, bad, tmp_path / "x.html")
    leaky = load_campaigns({"campaigns": [camp(template="{{ first_name }}")]})
    with pytest.raises(ConfigError, match="failed to render: 'first_name' is undefined"):
        render_preview(plan, leaky, tmp_path / "x.html")


def test_inferred_zone_and_fallback_hours_from_features() -> None:
    cust = customers(3)
    cust["timezone"] = [None, None, "Europe/Berlin"]
    feats = pd.DataFrame(
        {
            "preferred_hour": [7, 21, 21],
            "send_timezone": ["Australia/Sydney", None, "Europe/Berlin"],
            "send_time_source": ["history", "history", "fallback"],
        },
        index=pd.Index(cust.customer_id, name="customer_id"),
    )
    plan = plan_for(cust, [camp("c", holdout_share=0.0, send_hour=10)], features=feats)
    at = plan.sends.set_index("customer_id")["send_at_utc"]
    ids = cust.customer_id.tolist()
    # 07:00 in Sydney (zone inferred by the send-time model, +10:00 in July); 07:00 on
    # the send day (1 July) was 21:00Z on 30 June, before the data window closed, so
    # it goes out at 07:00 local the next day
    assert at[ids[0]] == pd.Timestamp("2024-07-01 21:00")
    # no zone at all: UTC; a population fallback hour gives way to send_hour
    assert at[ids[1]] == pd.Timestamp("2024-07-01 21:00")
    assert at[ids[2]] == pd.Timestamp("2024-07-01 08:00")  # 10:00 Berlin (+02:00)


def test_suppression_ids_written_as_text_still_suppress(tmp_path) -> None:
    cust = customers(4)
    ids = cust.customer_id.tolist()
    listing = tmp_path / "suppress.csv"
    listing.write_text(f"customer_id\n{ids[0]:05d}\n{float(ids[1])}\n")  # "00001", "2.0"
    plan = plan_for(cust, [camp()], suppression=listing)
    sent = set(plan.sends.customer_id)
    assert ids[0] not in sent and ids[1] not in sent and {ids[2], ids[3]} <= sent


def _customers_reference(
    customers: pd.DataFrame,
) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Address and status checks written with pandas string methods (the definition)."""
    email = customers["email"].astype(object)
    text = pd.Series(
        np.where(email.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool), email, None)
    ).astype("string")
    present = (text.str.strip().str.len() > 0).fillna(False).astype(bool)
    valid = (
        present
        & text.str.match(EMAIL_REGEX).fillna(False).astype(bool)
        & ~text.str.startswith(FORMULA_PREFIXES).fillna(False).astype(bool)
    )
    addr = text.str.strip().str.lower().where(valid).astype(object)
    status = customers["email_status"].astype("string").str.strip().str.lower().astype(object)
    return present, valid, addr.where(addr.notna(), None), status.where(status.notna(), None)


def test_prepared_customers_match_the_string_method_definition() -> None:
    emails = [
        "a@example.com",
        " B@Example.COM ",
        "",
        "   ",
        None,
        np.nan,
        42,
        "no-at-sign",
        "=cmd@example.com",
        "-x@example.com",
        "x@example.com\n",
        "ünï@example.com",
        "a@b",
        "\tq@example.com",
    ]
    statuses = [
        "subscribed",
        " Subscribed ",
        "UNSUBSCRIBED",
        None,
        np.nan,
        "complained",
        "bounced",
        "weird",
        3,
        "subscribed",
        "subscribed",
        "subscribed",
        "subscribed",
        "subscribed",
    ]
    customers = pd.DataFrame(
        {
            "customer_id": range(1, len(emails) + 1),
            "email": pd.Series(emails, dtype=object),
            "email_status": pd.Series(statuses, dtype=object),
            "email_consent": True,
        }
    )
    cust = _prepare_customers(customers, set(), set(), set())
    present, valid, addr, status = _customers_reference(customers)
    assert cust["_addr"].tolist() == addr.tolist()
    reasons = cust["reasons"].fillna("")
    assert reasons.str.contains("missing_email").tolist() == (~present).tolist()
    assert reasons.str.contains("invalid_email").tolist() == (present & ~valid).tolist()
    unknown = ~status.isin(["subscribed", "complained", "unsubscribed", "bounced"])
    assert cust["reasons"].fillna("").str.contains("email_status_unknown").tolist() == (
        unknown.tolist()
    )


def test_to_frame_from_ibis_matches_to_pandas() -> None:
    import ibis

    con = ibis.duckdb.connect()
    df = pd.DataFrame(
        {
            "customer_id": pd.array([1, None, 3], dtype="Int64"),
            "email": ["a@example.com", None, "c@example.com"],
            "email_status": ["subscribed", "bounced", None],
            "email_consent": pd.array([True, None, False], dtype="boolean"),
            "timezone": [None, "Europe/Berlin", "UTC"],
        }
    )
    table = con.create_table("customers", df)
    pd.testing.assert_frame_equal(_to_frame(table, "customers"), table.to_pandas())


def test_recommendation_columns_order_nulls_last() -> None:
    recs = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 1, 2, 2, 2, None],
            "rank": [np.nan, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0],
            "product_id": [10, 11, 12, 13, 20, 21, 20, 30],
            "score": [0.9, np.nan, 0.1, 0.5, 0.3, 0.3, 0.9, 0.1],
        }
    )
    wide = _recommendation_columns(recs).set_index("_key")
    assert wide.loc["1"].tolist() == ["11", "13", "12"]
    assert wide.loc["2"].tolist()[:2] == ["20", "21"]  # 20 counted once, at its best row
    assert "30" not in wide.to_numpy()


def test_triggers_most_recent_first_then_by_name() -> None:
    t = pd.Timestamp("2024-06-01")
    triggers = pd.DataFrame(
        {
            "customer_id": [7, 5, 7, 7, 5],
            "trigger": ["winback", "welcome", "cart_abandonment", "welcome", None],
            "triggered_at": [t, t, t, t + pd.Timedelta(hours=1), t],
        }
    )
    out = _prepare_triggers(triggers, pd.Timestamp("2024-07-01"))
    by_customer = {k: g["trigger"].tolist() for k, g in out.groupby("_key", sort=False)}
    assert by_customer == {"7": ["welcome", "cart_abandonment", "winback"], "5": ["welcome", None]}


def test_arbitration_matches_the_frame_definition() -> None:
    from bmkt.plan import _arbitrate, _arbitrate_frames

    rng = np.random.default_rng(3)
    addrs = [f"a{i}@example.com" for i in range(5)]
    for _ in range(100):
        n, m = int(rng.integers(1, 40)), int(rng.integers(0, 30))
        cand = pd.DataFrame(
            {
                "_priority": rng.integers(0, 3, n),
                "campaign_id": rng.choice(["c1", "c2", "c10"], n),
                "_key": [str(x) for x in rng.integers(1, 30, n)],
                "_addr": rng.choice(addrs, n),
                "_day": rng.choice(pd.to_datetime(["2024-07-01", "2024-07-02"]), n),
            }
        ).drop_duplicates(["campaign_id", "_key"])
        history = pd.DataFrame(
            {
                "_addr": rng.choice([*addrs, "other@example.com"], m),
                "_day": rng.choice(pd.to_datetime(["2024-07-01", "2024-06-30"]), m),
            }
        )
        for max_per_day, cap in ((1, 3), (2, 1), (1, 0)):
            assert list(_arbitrate(cand, history, max_per_day, cap)) == list(
                _arbitrate_frames(cand, history, max_per_day, cap)
            )


def test_left_join_is_the_merge() -> None:
    from bmkt.plan import _left_join

    rng = np.random.default_rng(5)
    for i in range(100):
        n, m = int(rng.integers(0, 8)), int(rng.integers(0, 8))
        keys = pd.Series([str(x) for x in rng.integers(0, 10, n)], dtype=object)
        left = pd.DataFrame({"_key": keys, "a": rng.random(n)}, index=rng.permutation(n) + 5)
        right = pd.DataFrame(
            {
                "_key": pd.Series([str(x) for x in rng.permutation(10)[:m]], dtype=object),
                "i": rng.integers(0, 5, m),
                "f": rng.random(m),
                "o": pd.Series([None, "x", np.nan, "y"] * 2, dtype=object)[:m].to_numpy(),
                "b": rng.random(m) < 0.5,
                "t": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 5, m), unit="D"),
            }
        )
        if i % 5 == 0:
            right = pd.DataFrame(columns=["_key", "x", "y"])
        pd.testing.assert_frame_equal(
            _left_join(left, right), left.merge(right, on="_key", how="left"), check_exact=True
        )


# --------------------------------------------------------------------------- scale


def _base_for_parts(n: int = 1200, seed: int = 3) -> dict[str, Any]:
    """A base where parts must not change anything: shared addresses (written
    differently), opted-out addresses shared with subscribers, sends in the cap
    window, triggers and segments of unknown customers, recommendations."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(10, 10 + 3 * n, 3))[:n]  # unordered, gaps
    email = [f"c{i}@example.com" for i in ids]
    for i in rng.choice(n, n // 5, replace=False):  # a fifth share someone's address
        j = int(rng.integers(n))
        email[i] = f"  {email[j].upper()} " if i % 2 else email[j]
    for i in rng.choice(n, 20, replace=False):  # no address, or not a valid one
        email[i] = [None, "", "n/a", "=cmd@x.org"][i % 4]
    status = rng.choice(["subscribed"] * 8 + ["unsubscribed", "bounced"], n)
    cust = pd.DataFrame(
        {
            "customer_id": ids,
            "email": email,
            "email_status": status,
            "email_consent": rng.random(n) < 0.95,
            "timezone": rng.choice(["Europe/Berlin", "America/New_York", None], n),
        }
    )
    unknown = np.array([7, 8])  # in the assignment and triggers, not a customer
    all_ids = np.concatenate([ids, unknown])
    seg = rng.choice(["Champions", "At Risk", "Loyal"], len(all_ids))
    assign = pd.DataFrame(
        {"segment": seg, "in_loyal": seg == "Loyal"},
        index=pd.Index(all_ids, name="customer_id"),
    )
    k = n // 2
    trig_ids = np.concatenate([rng.choice(ids, k), unknown])
    triggers = pd.DataFrame(
        {
            "customer_id": trig_ids.astype(float),  # ids as floats match integer ids
            "trigger": rng.choice(["cart_abandonment", "winback", "welcome"], len(trig_ids)),
            "triggered_at": pd.Timestamp("2024-06-20")
            + pd.to_timedelta(rng.integers(0, 10 * 24, len(trig_ids)), unit="h"),
            "products": [[int(p)] for p in rng.integers(1, 50, len(trig_ids))],
        }
    )
    features = pd.DataFrame(
        {
            "preferred_hour": rng.choice([np.nan, 8.0, 19.0, 23.0], n),
            "send_timezone": "Europe/London",
            "send_time_source": rng.choice(["own", "fallback"], n),
        },
        index=pd.Index(ids, name="customer_id"),
    )
    recs = pd.DataFrame(
        {
            "customer_id": np.repeat(ids[: n // 2], 3),
            "rank": np.tile([1, 2, 3], n // 2),
            "product_id": rng.integers(1, 99, 3 * (n // 2)),
            "score": rng.random(3 * (n // 2)),
        }
    )
    m = 2 * n  # sends in the cap window count towards the caps
    history = pd.DataFrame(
        {
            "customer_id": rng.choice(ids, m),
            "occurred_at": (  # as text, as a CSV export has it
                pd.Timestamp("2024-06-22") + pd.to_timedelta(rng.integers(0, 9 * 24, m), unit="h")
            ).strftime("%Y-%m-%d %H:%M:%S"),
            "event_type": rng.choice(["sent", "open"], m),
        }
    )
    campaigns = load_campaigns(
        {
            "campaigns": [
                camp("cart", audience={"triggers": ["cart_abandonment"]}, priority=9),
                camp(
                    "winback",
                    audience={"triggers": ["winback"], "segments": ["At Risk"]},
                    priority=5,
                    variants={"A": 1, "B": 2},
                ),  # fmt: skip
                camp("loyal", audience={"segments": ["Loyal"]}, priority=5, holdout_share=0.3),
                camp("news", audience={"all": True}, send_date="2024-07-02"),
                camp("news2", audience={"all": True}, priority=1),
            ]
        }
    )
    return {
        "customers": cust, "assignment": assign, "triggers": triggers,
        "campaigns": campaigns, "features": features, "recommendations": recs,
        "email_events": history,
    }  # fmt: skip


def _plan_of(base: dict[str, Any], **kw: Any) -> Any:
    return build_plan(
        base["customers"], base["assignment"], base["triggers"], base["campaigns"], AS_OF,
        email_events=base["email_events"], features=base["features"],
        recommendations=base["recommendations"], forgotten=None, global_control_share=0.05,
        frequency_cap=2, suppression=(i for i in base["customers"]["customer_id"].iloc[:50]),
        **kw,
    )  # fmt: skip


def test_plan_in_parts_equals_one_part(monkeypatch: pytest.MonkeyPatch) -> None:
    import bmkt.plan as plan_module

    base = _base_for_parts()
    whole = _plan_of(base)
    calls = []
    real = plan_module._plan

    def counted(*a: Any, **kw: Any) -> Any:
        calls.append(len(a[0]))
        return real(*a, **kw)

    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 300)
    monkeypatch.setattr(plan_module, "_plan", counted)
    parts = _plan_of(base)
    assert len(calls) == 4 and sum(calls) == len(base["customers"])  # 4 parts of the base
    # what the parts must get right: per-address caps across customers, shared-address
    # opt-outs, unknown audience members, global control
    reasons = whole.exclusions.by_reason()
    for r in ("daily_limit", "frequency_cap", "address_suppressed", "unknown_customer",
              "global_control", "suppression_list"):  # fmt: skip
        assert reasons.get(r, 0) > 0, r
    assert len(whole.sends) > 300 and whole.sends["rec_1"].notna().any()
    eq = pd.testing.assert_frame_equal
    eq(parts.sends, whole.sends, check_exact=True)
    eq(parts.holdouts, whole.holdouts, check_exact=True)
    eq(parts.exclusions.rows, whole.exclusions.rows, check_exact=True)
    eq(parts.exclusions.suppressed, whole.exclusions.suppressed, check_exact=True)
    eq(parts.global_control, whole.global_control, check_exact=True)
    assert parts.params == whole.params
    # a suppression list given as a generator is read once, for every part
    assert parts.params["suppression_list"]["ids"] == 50
    assert not parts.sends["customer_id"].isin(base["customers"]["customer_id"].iloc[:50]).any()


def test_plan_in_parts_reports_bad_input_as_one_part(monkeypatch: pytest.MonkeyPatch) -> None:
    import bmkt.plan as plan_module

    base = _base_for_parts(600)
    feats = base["features"]
    base["features"] = pd.concat([feats, feats.iloc[-40:]])  # 40 ids twice, in any part
    with pytest.raises(DataError) as one:
        _plan_of(base)
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 100)
    with pytest.raises(DataError) as parts:
        _plan_of(base)
    assert str(parts.value) == str(one.value) and "80 rows" in str(one.value)


def test_plan_ranking_the_whole_audience_stays_in_one_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bmkt.plan as plan_module

    base = _base_for_parts(400)
    base["features"]["uplift"] = np.linspace(-1, 1, len(base["features"]))
    base["campaigns"] = load_campaigns(
        {"campaigns": [camp("top", audience={"all": True}, uplift_top_share=0.25)]}
    )
    whole = _plan_of(base)
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 100)
    parts = _plan_of(base)
    # the top quarter of the whole eligible audience, not of each part
    pd.testing.assert_frame_equal(parts.sends, whole.sends)
    assert whole.exclusions.by_reason()["uplift_below_top"] > 0


def test_plan_in_parts_reads_a_store_history_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import bmkt.plan as plan_module
    from tests.test_validate import make_store

    store = open_store(make_store())

    def run() -> Any:
        return build_plan(
            store, assignment([1, 2, 3]), None, [camp()], "2024-03-02", frequency_cap=1,
            forgotten=None,
        )  # fmt: skip

    whole = run()
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 1)
    parts = run()
    # customer 1 was sent on 2024-03-01 (cap 1): the history reaches its part
    assert parts.exclusions.rows.set_index("customer_id")["reason"].to_dict()[1] == "frequency_cap"
    pd.testing.assert_frame_equal(parts.exclusions.rows, whole.exclusions.rows)
    assert parts.params == whole.params and parts.params["history_sent_events"] == 1


def test_plan_in_parts_keeps_recommendation_columns_as_one_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bmkt.plan as plan_module

    base = _base_for_parts(600)
    recs = base["recommendations"]
    # recommendations for three customers who get a send, at most two each: most parts
    # have no recommendation at all, and nobody has a third
    sent = _plan_of(base).sends["customer_id"].drop_duplicates().iloc[:3]
    few = recs[recs["customer_id"].isin(sent) & (recs["rank"] <= 2)]
    base["recommendations"] = few
    whole = _plan_of(base)
    assert whole.sends["rec_1"].notna().sum() >= 3 and whole.sends["rec_3"].isna().all()
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 100)
    parts = _plan_of(base)
    pd.testing.assert_frame_equal(parts.sends, whole.sends, check_exact=True)
    # and with no recommendations at all: the columns are there, empty, of one dtype
    base["recommendations"] = None
    parts = _plan_of(base)
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 10**9)
    whole = _plan_of(base)
    assert whole.sends["rec_1"].isna().all()
    pd.testing.assert_frame_equal(parts.sends, whole.sends, check_exact=True)


def test_rows_with_mixed_text_and_large_integer_ids_sort_numbers_first_exactly() -> None:
    # ids past 2**53 differ as integers but not as floats; text ids come after numbers
    ids = [2**53 + 3, "b7", 2**53 + 1, -4, "a2", 2**53 + 2, 17]
    cust = customers(len(ids))
    cust["customer_id"] = pd.Series(ids, dtype=object)
    cust["email_status"] = ["subscribed", "unsubscribed"] * 3 + ["subscribed"]
    plan = plan_for(cust, [camp()])
    expected = [-4, 17, 2**53 + 1, 2**53 + 2, 2**53 + 3, "a2", "b7"]
    sent = list(plan.sends["customer_id"])
    excluded = list(plan.exclusions.rows["customer_id"])
    assert sorted(sent + excluded, key=expected.index) == expected
    assert sent == [i for i in expected if i in sent] and len(sent) == 4
    assert excluded == [i for i in expected if i in excluded] and len(excluded) == 3


_ADDRESS_PIECES = st.sampled_from(
    ["a", "B", "x.y", "@", ".", "com", " ", "\t", "\n", "\v", "\r", "\x1c", "\xa0", "\u2003"]
    + ["É", "ß", "=", "+", "-", "'", ",", '"', "\x00", "~", "İ"]
)
_ADDRESS_VALUES = (
    st.emails().map(str)
    | st.builds(
        lambda a, b, c, up: f"{a}@{b}.{c}".upper() if up else f"{a}@{b}.{c}",
        st.text(min_size=1, max_size=6),
        st.text(min_size=1, max_size=6),
        st.text(min_size=1, max_size=4),
        st.booleans(),
    )
    | st.lists(_ADDRESS_PIECES, max_size=8).map("".join)
    | st.none()
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_ADDRESS_VALUES, max_size=30),
    st.sampled_from([None, float("nan"), 5, b"a@b.co", pd.NA]),
    st.booleans(),
)
def test_addresses_are_read_as_one_by_one(values: list[Any], odd: Any, with_odd: bool) -> None:
    # the Arrow path for printable ASCII gives what the per-value rules give, for any mix
    import bmkt.plan as plan_module

    if with_odd:
        values = [*values, odd]
    present, valid, addr = plan_module._addresses(pd.Series(values, dtype=object))
    want = [plan_module._address_of(v) for v in values]
    assert present.tolist() == [w[0] for w in want]
    assert valid.tolist() == [w[1] for w in want]
    assert addr.tolist() == [w[2] for w in want]


def test_addresses_fast_path_reads_the_usual_cases() -> None:
    import bmkt.plan as plan_module

    values = ["Ann@Example.COM", " ann@x.io", "ann@x.io\n", "=a@b.co", "a@b", "", "   ", None]
    values += ["ann@exämple.de", "a@b.co\v", "-a@b.co", "a b@c.de", "x@y.z"]
    present, valid, addr = plan_module._addresses(pd.Series(values, dtype=object))
    # a leading blank or a trailing \v fails the pattern; Python's $ allows one final \n
    assert addr.tolist() == [
        *["ann@example.com", None, "ann@x.io", None, None, None, None, None],
        *["ann@exämple.de", None, None, None, "x@y.z"],
    ]
    assert present.tolist() == [True] * 5 + [False, False, False] + [True] * 5
