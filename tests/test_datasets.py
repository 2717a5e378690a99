"""The bundled CDNOW log, loaded as an ``orders`` table."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from bmkt import datasets
from bmkt.errors import DataError
from bmkt.schema import ORDERS


def _data_lines(sample: bool) -> list[list[str]]:
    """The file's data lines split on whitespace, read independently of pandas."""
    text = datasets.cdnow_path(sample).read_text()
    lines = [line.split() for line in text.splitlines() if line.strip()]
    return lines if sample else lines[1:]  # the master file has a header line


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return datasets.load_cdnow()


@pytest.fixture(scope="module")
def master() -> pd.DataFrame:
    return datasets.load_cdnow(sample=False)


def test_sample_counts_match_the_file(sample: pd.DataFrame) -> None:
    lines = _data_lines(True)
    assert len(sample) == len(lines) == 6919
    assert sample["customer_id"].nunique() == len({line[1] for line in lines}) == 2357
    assert sample["master_customer_id"].nunique() == 2357


def test_master_counts_match_the_file(master: pd.DataFrame) -> None:
    lines = _data_lines(False)
    assert len(master) == len(lines) == 69659
    assert master["customer_id"].nunique() == len({line[0] for line in lines}) == 23570


@pytest.mark.parametrize("fixture", ["sample", "master"])
def test_fits_the_orders_contract(fixture: str, request: pytest.FixtureRequest) -> None:
    orders = request.getfixturevalue(fixture)
    for name in ORDERS.required_columns:
        assert name in orders.columns
        assert orders[name].notna().all()
    assert orders["order_id"].tolist() == list(range(1, len(orders) + 1))
    assert pd.api.types.is_integer_dtype(orders["customer_id"])
    assert orders["ordered_at"].dtype == "datetime64[ns]"
    assert (orders["ordered_at"] == orders["ordered_at"].dt.normalize()).all()
    assert orders["ordered_at"].min() == pd.Timestamp("1997-01-01")
    assert orders["ordered_at"].max() == pd.Timestamp("1998-06-30")
    assert orders["revenue"].dtype == "float64"
    assert (orders["revenue"] >= 0).all()
    assert (orders["quantity"] > 0).all()


def test_values_match_the_file(sample: pd.DataFrame) -> None:
    lines = _data_lines(True)
    first, last = lines[0], lines[-1]
    row = sample.iloc[0]
    assert (row.master_customer_id, row.customer_id) == (int(first[0]), int(first[1]))
    assert row.ordered_at == pd.Timestamp(first[2])
    assert (row.quantity, row.revenue) == (int(first[3]), float(first[4]))
    assert sample.iloc[-1].revenue == float(last[4])
    assert sample["revenue"].sum() == pytest.approx(sum(float(line[4]) for line in lines))
    # the eight $0.00 purchases are kept as orders
    assert (sample["revenue"] == 0).sum() == 8


def test_sample_is_a_subset_of_master(sample: pd.DataFrame, master: pd.DataFrame) -> None:
    cols = ["customer_id", "ordered_at", "quantity", "revenue"]
    from_master = master[master["customer_id"].isin(sample["master_customer_id"])][cols]
    mine = sample.assign(customer_id=sample["master_customer_id"])[cols]

    def canonical(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(cols, kind="stable").reset_index(drop=True)

    pd.testing.assert_frame_equal(canonical(mine), canonical(from_master), check_dtype=False)


def test_sample_ids_are_the_published_summary_ids(sample: pd.DataFrame) -> None:
    assert sorted(sample["customer_id"].unique()) == list(range(1, 2358))


def test_missing_lifetimes_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lifetimes" else real(name, *a),
    )
    with pytest.raises(DataError, match="'lifetimes' package, which ships the data"):
        datasets.load_cdnow()
