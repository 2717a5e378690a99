"""Validation: every contract violation is reported with table, column, rows, examples."""

from __future__ import annotations

import pandas as pd
import pytest

from bmkt.errors import ValidationError
from bmkt.validate import validate


def make_store() -> dict[str, pd.DataFrame]:
    """A small store that satisfies every contract."""
    customers = pd.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "email": ["a@example.com", "b@example.com", None],
            "created_at": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "timezone": ["Europe/Berlin", None, "America/New_York"],
            "email_status": ["subscribed", "unsubscribed", "bounced"],
            "email_consent": [True, False, True],
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": [10, 11, 12],
            "customer_id": [1, 1, 2],
            "ordered_at": pd.to_datetime(
                ["2024-02-01 10:00", "2024-03-01 00:00", "2024-03-02 00:00"]
            ),
            "revenue": [20.0, -5.0, 12.5],
        }
    )
    campaigns = pd.DataFrame(
        {
            "campaign_id": [100],
            "name": ["spring"],
            "kind": ["promotional"],
            "sent_at": pd.to_datetime(["2024-03-01 09:00"]),
        }
    )
    email_events = pd.DataFrame(
        {
            "customer_id": [1, 1, 2],
            "campaign_id": [100, 100, 100],
            "occurred_at": pd.to_datetime(
                ["2024-03-01 09:00", "2024-03-01 09:01", "2024-03-01 00:00"]
            ),
            "event_type": ["sent", "open", "holdout"],
        }
    )
    return {
        "customers": customers,
        "orders": orders,
        "campaigns": campaigns,
        "email_events": email_events,
    }


def problems_of(store: dict[str, pd.DataFrame], **kw: object) -> list[str]:
    return [str(p) for p in validate(store, **kw).problems]


def test_valid_store_has_no_problems() -> None:
    report = validate(make_store(), as_of="2024-06-30")
    assert report.ok, str(report)
    assert report.row_counts == {"customers": 3, "campaigns": 1, "orders": 3, "email_events": 3}
    assert "OK: no problems found." in str(report)
    report.raise_if_failed()


def test_missing_table_and_column() -> None:
    store = make_store()
    del store["orders"]
    store["customers"] = store["customers"].drop(columns=["email_status"])
    assert problems_of(store) == [
        "orders: required table is missing (0 rows)",
        "customers.email_status: required column is missing (3 rows)",
    ]


def test_campaigns_required_when_email_events_present() -> None:
    store = make_store()
    del store["campaigns"]
    assert problems_of(store) == [
        "campaigns: table is missing (email_events refers to it) (0 rows)"
    ]


def test_unparseable_timestamps_and_wrong_numbers() -> None:
    store = make_store()
    store["orders"]["ordered_at"] = ["2024-02-01", "yesterday", "2024-13-45"]
    store["orders"]["revenue"] = ["20", "abc", "12.5"]
    assert problems_of(store) == [
        "orders.ordered_at: unparseable timestamp (2 rows), e.g. ['2024-13-45', 'yesterday']",
        "orders.revenue: not a number (1 row), e.g. ['abc']",
    ]


def test_wrong_type_names_expected_and_actual() -> None:
    store = make_store()
    store["orders"]["ordered_at"] = [1.5, 2.5, 3.5]
    store["customers"]["customer_id"] = [True, False, True]
    problems = problems_of(store)
    assert (
        "customers.customer_id: expected an integer or text identifier, got boolean (3 rows)"
        in problems
    )
    assert "orders.ordered_at: expected a timestamp, got float64 (3 rows)" in problems


def test_null_and_duplicate_keys() -> None:
    store = make_store()
    store["orders"]["order_id"] = [10, 10, None]
    store["orders"]["customer_id"] = [1, None, 2]
    problems = problems_of(store)
    assert (
        "orders.order_id: null where a value is required (1 row), e.g. customer_id [2]" in problems
    )
    assert (
        "orders.customer_id: null where a value is required (1 row), e.g. order_id [10]" in problems
    )
    assert (
        "orders.order_id: duplicate key (1 value(s) occur more than once) (2 rows), e.g. [10]"
        in problems
    )


def test_orders_of_unknown_customers() -> None:
    store = make_store()
    store["orders"]["customer_id"] = [1, 7, 9]
    assert problems_of(store) == [
        "orders.customer_id: unknown customer: not in customers.customer_id (2 rows), e.g. [7, 9]"
    ]


def test_events_of_unknown_campaigns() -> None:
    store = make_store()
    store["email_events"]["campaign_id"] = [100, 101, 101]
    assert problems_of(store) == [
        "email_events.campaign_id: unknown campaign: not in campaigns.campaign_id (2 rows), e.g. [101]"
    ]


def test_timestamps_after_as_of() -> None:
    store = make_store()
    assert problems_of(store, as_of="2024-03-01") == [
        "orders.ordered_at: timestamp after as_of (data must end before 2024-03-02 00:00:00) "
        "(1 row), e.g. ['2024-03-02 00:00:00']"
    ]
    # the whole as_of day is inside the window
    assert problems_of(store, as_of="2024-03-02") == []


def test_malformed_email_shows_ids_not_addresses() -> None:
    store = make_store()
    store["customers"]["email"] = ["a@example.com", "not an email", "x@y"]
    problems = problems_of(store)
    assert problems == [
        "customers.email: malformed email address (2 rows), e.g. customer_id [2, 3]"
    ]
    assert "not an email" not in problems[0]


def test_unexpected_values_and_timezones() -> None:
    store = make_store()
    store["customers"]["email_status"] = ["subscribed", "gone", "gone"]
    store["customers"]["timezone"] = ["Europe/Berlin", "Mars/Olympus", "CEST"]
    assert problems_of(store) == [
        "customers.email_status: unexpected value (allowed: subscribed, unsubscribed, bounced, "
        "complained) (2 rows), e.g. ['gone']",
        "customers.timezone: not an IANA time zone name (2 rows), e.g. ['CEST', 'Mars/Olympus']",
    ]


def test_boolean_text_and_integer_ids_as_text() -> None:
    store = make_store()
    store["customers"]["email_consent"] = ["yes", "maybe", "FALSE"]
    store["orders"]["customer_id"] = ["1", "x1", "2"]
    problems = problems_of(store)
    assert "customers.email_consent: not a boolean (true/false) (1 row), e.g. ['maybe']" in problems
    assert (
        "orders.customer_id: text identifier where customers.customer_id holds integers (1 row), "
        "e.g. ['x1']" in problems
    )


def test_every_problem_reported_at_once_and_raised() -> None:
    store = make_store()
    store["orders"]["revenue"] = ["x", "y", "1"]
    store["customers"]["email"] = ["bad", "b@example.com", None]
    store["email_events"]["event_type"] = ["sent", "opened", "holdout"]
    report = validate(store)
    assert {p.check for p in report.problems} == {
        "not_numeric",
        "malformed_email",
        "unexpected_value",
    }
    with pytest.raises(ValidationError, match=r"3 problem\(s\)") as info:
        report.raise_if_failed()
    assert info.value.report is report
    frame = report.to_frame()
    assert list(frame.columns) == ["table", "column", "check", "n_rows", "message", "examples"]
    assert frame.n_rows.tolist() == [1, 2, 1] or sorted(frame.n_rows.tolist()) == [1, 1, 2]


def test_validation_does_not_mutate_inputs() -> None:
    store = make_store()
    store["orders"]["ordered_at"] = ["2024-02-01", "bad", "2024-02-03"]
    before = {k: v.copy() for k, v in store.items()}
    validate(store, as_of="2024-06-30")
    for name, frame in store.items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_timezone_aware_timestamps_are_normalised_to_utc() -> None:
    store = make_store()
    store["orders"]["ordered_at"] = ["2024-03-02T01:30:00+02:00", "2024-03-01", "2024-03-01"]
    # 01:30 at +02:00 is 23:30 UTC on 1 March: inside an as_of of 1 March
    assert problems_of(store, as_of="2024-03-01") == []
    # Berlin is at +01:00 in March: 00:30 local is 23:30 UTC the day before
    store["orders"]["ordered_at"] = pd.to_datetime(
        ["2024-03-02 00:30", "2024-03-01 00:00", "2024-03-01 00:00"]
    ).tz_localize("Europe/Berlin")
    assert problems_of(store, as_of="2024-03-01") == []
