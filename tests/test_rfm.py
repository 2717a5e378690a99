"""RFM: the per-customer summary, scores and named segments."""

from __future__ import annotations

import re
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmkt import datasets, rfm
from bmkt.errors import ConfigError, DataError

AS_OF = "2024-03-31"


def orders_frame(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    """An orders table from (customer_id, ordered_at, revenue) rows."""
    frame = pd.DataFrame(rows, columns=["customer_id", "ordered_at", "revenue"])
    frame.insert(0, "order_id", range(1, len(frame) + 1))
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"], format="ISO8601")
    frame["channel"] = "web"
    return frame


@pytest.fixture()
def orders() -> pd.DataFrame:
    return orders_frame(
        [
            # customer 1: two orders on day 0 (one transaction), a repeat on day 10,
            # a refund-only day 12, a day whose refund exceeds its purchase (day 20),
            # and an order after as_of
            (1, "2024-01-01 09:00", 10.0),
            (1, "2024-01-01 18:30", 5.0),
            (1, "2024-01-11 12:00", 20.0),
            (1, "2024-01-13 08:00", -5.0),
            (1, "2024-01-21 10:00", 30.0),
            (1, "2024-01-21 11:00", -40.0),
            (1, "2024-04-01 00:00", 99.0),
            # customer 2: refunds only -> not in the summary
            (2, "2024-02-01", -15.0),
            # customer 3: a free order, then two repeats, the second netted with a refund
            (3, "2024-02-01", 0.0),
            (3, "2024-02-15", 12.0),
            (3, "2024-03-01 10:00", 30.0),
            (3, "2024-03-01 23:59", -10.0),
            # customer 4: one order on the as_of day itself
            (4, "2024-03-31 23:00", 50.0),
        ]
    )


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    return datasets.load_cdnow()


# --------------------------------------------------------------------------- #
# summarize
# --------------------------------------------------------------------------- #
def test_summary_known_answers(orders: pd.DataFrame) -> None:
    s = rfm.summarize(orders, as_of=AS_OF)
    assert list(s.columns) == list(rfm.SUMMARY_COLUMNS)
    assert s.index.name == "customer_id"
    assert s.index.tolist() == [1, 3, 4]

    c1 = s.loc[1]
    assert c1.frequency == 1  # day 0 (10 + 5) and day 10; day 12 and day 20 net < 0
    assert c1.recency == 10
    assert c1["T"] == (pd.Timestamp(AS_OF) - pd.Timestamp("2024-01-01")).days == 90
    assert c1.monetary_value == 20.0
    assert c1.first_order_at == pd.Timestamp("2024-01-01")
    assert c1.last_order_at == pd.Timestamp("2024-01-11")
    assert c1.n_orders == 4  # purchases up to as_of, refunds not counted
    assert c1.total_revenue == pytest.approx(10 + 5 + 20 - 5 + 30 - 40)

    c3 = s.loc[3]
    assert c3.frequency == 2  # the free first order counts
    assert c3.recency == 29
    assert c3.monetary_value == pytest.approx((12 + 20) / 2)
    assert c3.total_revenue == pytest.approx(32.0)

    c4 = s.loc[4]
    assert (c4.frequency, c4.recency, c4["T"], c4.monetary_value) == (0, 0, 0, 0)
    assert s.attrs == {"period": "D", "as_of": AS_OF, "calibration_end": None, "excluded": 1}


def test_types(orders: pd.DataFrame) -> None:
    s = rfm.summarize(orders, as_of=AS_OF)
    assert s["frequency"].dtype == "int64"
    assert s["n_orders"].dtype == "int64"
    for c in ("recency", "T", "monetary_value", "total_revenue"):
        assert s[c].dtype == "float64"
    assert s["first_order_at"].dtype == "datetime64[ns]"
    assert not s.isna().any().any()


def test_refund_only_customers_are_counted_and_logged(
    orders: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="bmkt.rfm"):
        s = rfm.summarize(orders, as_of=AS_OF)
    assert 2 not in s.index
    assert s.attrs["excluded"] == 1
    assert "1 customer(s) without a transaction day" in caplog.text


def test_orders_after_as_of_are_ignored(orders: pd.DataFrame) -> None:
    early = rfm.summarize(orders, as_of="2024-02-29")
    assert early.index.tolist() == [1, 3]  # customer 4 buys later
    assert early.loc[3].frequency == 1
    assert early.loc[1]["T"] == 59
    # a time of day on as_of is honoured: 23:00 on the as_of day is after 12:00
    assert 4 not in rfm.summarize(orders, as_of="2024-03-31 12:00").index
    assert 4 in rfm.summarize(orders, as_of="2024-03-31").index


def test_calibration_end(orders: pd.DataFrame) -> None:
    s = rfm.summarize(orders, as_of=AS_OF, calibration_end="2024-02-10")
    assert s.index.tolist() == [1, 3]  # customer 4's first order is after calibration_end
    assert s.loc[1]["T"] == (pd.Timestamp("2024-02-10") - pd.Timestamp("2024-01-01")).days
    assert s.loc[3].frequency == 0 and s.loc[3]["T"] == 9
    assert s.attrs["calibration_end"] == "2024-02-10" and s.attrs["as_of"] == AS_OF
    same = rfm.summarize(orders, as_of="2024-02-10")
    pd.testing.assert_frame_equal(s, same, check_like=True)


def test_calibration_end_after_as_of_is_rejected(orders: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"calibration_end \(2024-05-01\) must be on or before"):
        rfm.summarize(orders, as_of=AS_OF, calibration_end="2024-05-01")


def test_period_weeks(orders: pd.DataFrame) -> None:
    d = rfm.summarize(orders, as_of=AS_OF)
    w = rfm.summarize(orders, as_of=AS_OF, period="W")
    pd.testing.assert_series_equal(w["frequency"], d["frequency"])
    np.testing.assert_allclose(w["recency"], d["recency"] / 7)
    np.testing.assert_allclose(w["T"], d["T"] / 7)
    pd.testing.assert_series_equal(w["monetary_value"], d["monetary_value"])
    assert w.attrs["period"] == "W"


def test_invalid_period(orders: pd.DataFrame) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("Valid options for 'period' are 'D', 'W'. Got 'M'.")
    ):
        rfm.summarize(orders, as_of=AS_OF, period="M")


def test_timestamps_are_normalised(orders: pd.DataFrame) -> None:
    expected = rfm.summarize(orders, as_of=AS_OF)
    as_text = orders.assign(ordered_at=orders["ordered_at"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    pd.testing.assert_frame_equal(rfm.summarize(as_text, as_of=AS_OF), expected)
    # zone-aware values are converted to UTC: 01:00 in Berlin on Jan 2 is Jan 2 00:00 UTC
    aware = orders_frame([(1, "2024-01-02 01:00", 10.0), (1, "2024-01-05", 5.0)])
    aware["ordered_at"] = aware["ordered_at"].dt.tz_localize("Europe/Berlin")
    s = rfm.summarize(aware, as_of="2024-01-10")
    assert s.loc[1].first_order_at == pd.Timestamp("2024-01-02")
    # 00:30 in Berlin on Jan 2 is still Jan 1 in UTC
    aware.loc[0, "ordered_at"] = pd.Timestamp("2024-01-02 00:30", tz="Europe/Berlin")
    assert rfm.summarize(aware, as_of="2024-01-10").loc[1].first_order_at == pd.Timestamp(
        "2024-01-01"
    )


def test_input_not_mutated(orders: pd.DataFrame) -> None:
    before = orders.copy(deep=True)
    rfm.summarize(orders, as_of=AS_OF, period="W", calibration_end="2024-03-01")
    text = orders.assign(ordered_at=orders["ordered_at"].astype(str))
    text_before = text.copy(deep=True)
    rfm.summarize(text, as_of=AS_OF)
    pd.testing.assert_frame_equal(orders, before)
    pd.testing.assert_frame_equal(text, text_before)


def test_ibis_table_input(orders: pd.DataFrame) -> None:
    expected = rfm.summarize(orders, as_of=AS_OF)
    got = rfm.summarize(ibis.memtable(orders), as_of=AS_OF)
    pd.testing.assert_frame_equal(got, expected)


def test_missing_column(orders: pd.DataFrame) -> None:
    with pytest.raises(
        DataError,
        match=re.escape("orders.revenue: 13 rows lack required column(s) ['revenue']"),
    ):
        rfm.summarize(orders.drop(columns="revenue"), as_of=AS_OF)


def test_unparseable_timestamp(orders: pd.DataFrame) -> None:
    bad = orders.assign(ordered_at=orders["ordered_at"].astype(str))
    bad.loc[[2, 5], "ordered_at"] = ["yesterday", "31/31/2024"]
    with pytest.raises(
        DataError,
        match=re.escape(
            "orders.ordered_at: 2 rows are not timestamps, e.g. ['yesterday', '31/31/2024']"
        ),
    ):
        rfm.summarize(bad, as_of=AS_OF)


def test_non_numeric_revenue(orders: pd.DataFrame) -> None:
    bad = orders.assign(revenue=orders["revenue"].astype(object))
    bad.loc[0, "revenue"] = "ten"
    with pytest.raises(
        DataError, match=re.escape("orders.revenue: 1 row are not numbers, e.g. ['ten']")
    ):
        rfm.summarize(bad, as_of=AS_OF)


def test_null_values(orders: pd.DataFrame) -> None:
    bad = orders.copy()
    bad.loc[3, "customer_id"] = None
    with pytest.raises(
        DataError, match=re.escape("orders.customer_id: 1 row are null (row index shown), e.g. [3]")
    ):
        rfm.summarize(bad, as_of=AS_OF)


def test_nothing_before_as_of(orders: pd.DataFrame) -> None:
    with pytest.raises(
        DataError, match="orders: 0 customers with a purchase on or before 2023-12-31"
    ):
        rfm.summarize(orders, as_of="2023-12-31")


def test_unparseable_as_of(orders: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="calibration_end: cannot parse 'soon'"):
        rfm.summarize(orders, as_of=AS_OF, calibration_end="soon")


def test_not_a_table() -> None:
    with pytest.raises(DataError, match="expected a pandas DataFrame or an Ibis table, got list"):
        rfm.summarize([1, 2], as_of=AS_OF)


def test_agrees_with_lifetimes_on_cdnow(cdnow: pd.DataFrame) -> None:
    from lifetimes.utils import summary_data_from_transaction_data

    for end in ("1997-09-30", "1998-06-30"):
        ours = rfm.summarize(cdnow, as_of=end)
        theirs = summary_data_from_transaction_data(
            cdnow,
            "customer_id",
            "ordered_at",
            monetary_value_col="revenue",
            observation_period_end=end,
            freq="D",
        )
        assert ours.index.tolist() == theirs.index.tolist()
        for col in ("frequency", "recency", "T"):
            np.testing.assert_array_equal(ours[col].to_numpy(), theirs[col].to_numpy())
        np.testing.assert_allclose(
            ours["monetary_value"], theirs["monetary_value"], rtol=1e-12, atol=1e-9
        )


def test_cdnow_published_calibration_summary(cdnow: pd.DataFrame) -> None:
    """The 39-week calibration summary matches Hardie's (rounded to 2 decimals)."""
    from importlib import resources

    path = resources.files("lifetimes").joinpath(
        "datasets/cdnow_customers_summary_with_transactions.csv"
    )
    published = pd.read_csv(str(path)).set_index("ID")
    ours = rfm.summarize(cdnow, as_of="1998-06-30", calibration_end="1997-09-30", period="W")
    assert (ours["frequency"] == published["x"]).all()
    np.testing.assert_allclose(ours["recency"].round(2), published["t_x"], atol=1e-9)
    np.testing.assert_allclose(ours["T"].round(2), published["T"], atol=1e-9)
    np.testing.assert_allclose(ours["monetary_value"], published["zbar"], atol=0.0051)


def test_repeat_transactions_by_day(orders: pd.DataFrame, cdnow: pd.DataFrame) -> None:
    per_day = rfm.repeat_transactions_by_day(orders, as_of=AS_OF)
    assert per_day.to_dict() == {
        pd.Timestamp("2024-01-11"): 1,
        pd.Timestamp("2024-02-15"): 1,
        pd.Timestamp("2024-03-01"): 1,
    }
    full = rfm.summarize(cdnow, as_of="1998-06-30")
    assert (
        rfm.repeat_transactions_by_day(cdnow, as_of="1998-06-30").sum() == full["frequency"].sum()
    )
    cohort = rfm.repeat_transactions_by_day(cdnow, as_of="1998-06-30", cohort_end="1997-01-31")
    in_cohort = full[full["first_order_at"] <= "1997-01-31"]
    assert cohort.sum() == in_cohort["frequency"].sum()


# --------------------------------------------------------------------------- #
# score
# --------------------------------------------------------------------------- #
def summary_frame(frequency, recency, T, total_revenue) -> pd.DataFrame:
    n = len(frequency)
    return pd.DataFrame(
        {
            "frequency": frequency,
            "recency": recency,
            "T": T,
            "monetary_value": np.zeros(n),
            "total_revenue": total_revenue,
        },
        index=pd.RangeIndex(1, n + 1, name="customer_id"),
    )


def test_scores_of_distinct_values() -> None:
    s = summary_frame(
        frequency=[0, 1, 2, 3, 4],
        recency=[0, 10, 20, 30, 40],
        T=[100, 100, 100, 100, 100],  # days since last order: 100, 90, 80, 70, 60
        total_revenue=[50, 40, 30, 20, 10],
    )
    sc = rfm.score(s)
    assert sc["R"].tolist() == [1, 2, 3, 4, 5]
    assert sc["F"].tolist() == [1, 2, 3, 4, 5]
    assert sc["M"].tolist() == [5, 4, 3, 2, 1]
    assert sc["rfm_score"].tolist() == ["115", "224", "333", "442", "551"]
    assert sc.attrs["bins"] == 5


def test_quintiles_are_equal_sized() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    s = summary_frame(
        rng.integers(0, 1000, n), np.zeros(n), rng.uniform(0, 1, n), rng.normal(size=n)
    )
    sc = rfm.score(s, ties="first")
    for col in ("R", "F", "M"):
        assert sc[col].value_counts().tolist() == [200] * 5


def test_ties_share_a_score() -> None:
    s = summary_frame([0, 0, 0, 0, 5, 6], [0] * 6, [10] * 6, [1, 1, 2, 3, 4, 5])
    sc = rfm.score(s)
    assert sc["F"].tolist()[:4] == [sc["F"].iloc[0]] * 4  # the four one-time buyers tie
    assert sc["F"].iloc[0] == 2 and sc["F"].iloc[-1] == 5
    assert sc["M"].iloc[0] == sc["M"].iloc[1]
    by_order = rfm.score(s, ties="first")
    assert by_order["F"].tolist() == [1, 2, 3, 3, 4, 5]  # row order breaks the tie


@pytest.mark.parametrize("bins", [2, 3, 5, 9])
def test_single_customer_and_all_equal_get_the_middle(bins: int) -> None:
    middle = bins // 2 + 1
    one = rfm.score(summary_frame([3], [5], [10], [7.0]), bins=bins)
    assert one[["R", "F", "M"]].iloc[0].tolist() == [middle] * 3
    same = rfm.score(summary_frame([2] * 7, [5] * 7, [10] * 7, [7.0] * 7), bins=bins)
    assert (same[["R", "F", "M"]] == middle).all().all()


def test_score_validation() -> None:
    s = summary_frame([1], [1], [2], [3.0])
    with pytest.raises(
        ConfigError, match=re.escape("'bins' must be an integer from 2 to 9. Got 10.")
    ):
        rfm.score(s, bins=10)
    with pytest.raises(
        ConfigError, match=re.escape("Valid options for 'ties' are 'average', 'first'. Got 'min'.")
    ):
        rfm.score(s, ties="min")
    with pytest.raises(
        DataError, match=re.escape("summary.spend: 1 row lack required column(s) ['spend']")
    ):
        rfm.score(s, monetary="spend")
    with pytest.raises(
        DataError, match=re.escape("summary.total_revenue: 1 row are missing or not finite")
    ):
        rfm.score(s.assign(total_revenue=np.nan))


def test_score_does_not_mutate(cdnow: pd.DataFrame) -> None:
    s = rfm.summarize(cdnow, as_of="1998-06-30")
    before = s.copy()
    sc = rfm.score(s)
    pd.testing.assert_frame_equal(s, before)
    assert sc.index.equals(s.index)


# --------------------------------------------------------------------------- #
# segment
# --------------------------------------------------------------------------- #
GRID = {  # R -> segment by F, from the comment table of rfm_segments.yaml
    5: ["New Customers", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"],
    4: [
        "Promising",
        "Potential Loyalist",
        "Potential Loyalist",
        "Loyal Customers",
        "Loyal Customers",
    ],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
    1: ["Lost", "Lost", "At Risk", "At Risk", "Can't Lose Them"],
}


def test_default_map_grid() -> None:
    cells = [(r, f) for r in range(1, 6) for f in range(1, 6)]
    scores = pd.DataFrame({"R": [c[0] for c in cells], "F": [c[1] for c in cells], "M": 3})
    seg = rfm.segment(scores)
    for (r, f), name in zip(cells, seg["segment"], strict=True):
        assert name == GRID[r][f - 1], (r, f)
    assert set(seg["segment"]) == {n for row in GRID.values() for n in row}  # 11 segments
    assert seg["segment_code"].tolist()[:3] == ["11", "12", "13"]


def test_segment_on_cdnow(cdnow: pd.DataFrame) -> None:
    seg = rfm.segment(rfm.score(rfm.summarize(cdnow, as_of="1998-06-30")))
    assert seg["segment"].notna().all()
    assert (seg["segment"] != "Other").all()
    assert list(seg.columns) == ["R", "F", "M", "rfm_score", "segment_code", "segment"]


def write_map(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_custom_map_from_file_and_dict(tmp_path: Path) -> None:
    data = {
        "bins": 5,
        "code": ["R", "FM"],
        "segments": [{"name": "Best", "pattern": "5[45]"}, {"name": "Gone", "pattern": "1."}],
        "default": {"name": "Rest"},
    }
    scores = pd.DataFrame({"R": [5, 1, 3, 5], "F": [5, 2, 3, 3], "M": [4, 1, 3, 3]})
    for smap in (write_map(tmp_path, data), data):
        seg = rfm.segment(scores, smap)
        # FM = (F + M) / 2 rounded half up: 4.5 -> 5, 1.5 -> 2
        assert seg["segment_code"].tolist() == ["55", "12", "33", "53"]
        assert seg["segment"].tolist() == ["Best", "Gone", "Rest", "Rest"]
        assert list(seg["segment"].cat.categories) == ["Best", "Gone", "Rest"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default": None}, "no catch-all"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        (
            {"segments": [{"name": "A", "pattern": "[1-"}]},
            "segment 'A' has an invalid pattern '[1-'",
        ),
        ({"segments": [{"name": "A", "regex": "1"}]}, "segment #1 has unknown key(s) ['regex']"),
        ({"segments": [{"name": "A"}]}, "segment #1 needs a 'name' and a 'pattern'"),
        ({"segments": []}, "'segments' must be a non-empty list"),
        (
            {"code": ["R", "X"]},
            "Valid options for 'code' parts are ['R', 'F', 'M', 'FM']. Got ['R', 'X'].",
        ),
        ({"bins": 12}, "'bins' must be an integer from 2 to 9. Got 12."),
    ],
)
def test_invalid_maps(tmp_path: Path, change: dict, message: str) -> None:
    data = {
        "bins": 5,
        "code": ["R", "F"],
        "segments": [{"name": "A", "pattern": "5."}],
        "default": "B",
    }
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    scores = pd.DataFrame({"R": [5], "F": [5], "M": [5]})
    with pytest.raises(ConfigError, match=re.escape(message)):
        rfm.segment(scores, write_map(tmp_path, data))


def test_unreadable_maps(tmp_path: Path) -> None:
    scores = pd.DataFrame({"R": [5], "F": [5], "M": [5]})
    with pytest.raises(ConfigError, match="cannot read"):
        rfm.segment(scores, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segments: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        rfm.segment(scores, bad)


def test_bins_mismatch_and_bad_scores() -> None:
    s = summary_frame([0, 1, 2], [0, 1, 2], [3, 3, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="written for bins=5, the scores have bins=3"):
        rfm.segment(rfm.score(s, bins=3))
    with pytest.raises(
        DataError, match=re.escape("scores.R: 1 row are not integer scores 1..5, e.g. [7]")
    ):
        rfm.segment(pd.DataFrame({"R": [7, 1], "F": [1, 1], "M": [1, 1]}))
    with pytest.raises(DataError, match=re.escape("scores.F: 1 row lack score column(s) ['F']")):
        rfm.segment(pd.DataFrame({"R": [1]}))


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #
summaries = st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 20), min_size=n, max_size=n),
        st.lists(st.floats(0, 1), min_size=n, max_size=n),
        st.lists(st.floats(0, 500), min_size=n, max_size=n),
        st.lists(st.floats(-100, 1000, allow_nan=False), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=summaries, bins=st.integers(2, 9), ties=st.sampled_from(["average", "first"]))
def test_scores_within_bins(data: tuple, bins: int, ties: str) -> None:
    freq, share, T, money = data
    T = np.asarray(T)
    s = summary_frame(freq, T * np.asarray(share), T, money)
    sc = rfm.score(s, bins=bins, ties=ties)
    for col in ("R", "F", "M"):
        assert sc[col].between(1, bins).all()
        assert sc[col].dtype == "int64"
    assert sc["rfm_score"].str.len().eq(3).all()
    # more frequent never scores lower (with ties sharing scores)
    if ties == "average":
        order = np.argsort(s["frequency"].to_numpy(), kind="stable")
        assert (np.diff(sc["F"].to_numpy()[order]) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(
    r=st.lists(st.integers(1, 5), min_size=1, max_size=50),
    data=st.data(),
)
def test_every_customer_exactly_one_segment(r: list[int], data: st.DataObject) -> None:
    n = len(r)
    f = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    m = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    scores = pd.DataFrame({"R": r, "F": f, "M": m})
    seg = rfm.segment(scores)
    assert len(seg) == n
    assert seg["segment"].notna().all()
    assert seg["segment"].isin(list(seg["segment"].cat.categories)).all()
    assert (seg["segment"] != "Other").all()  # the default grid covers every cell
