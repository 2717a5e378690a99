"""Loading sources, conforming to the contract, and idempotent ingest."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from bmkt import engine
from bmkt.errors import ConfigError, DataError, ValidationError
from bmkt.io import fingerprint, ingest, open_store
from tests.test_validate import make_store


def write_folder(store: dict[str, pd.DataFrame], folder: Path, fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in store.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def db_rows(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        return {n: con.execute(f'select count(*) from "{n}"').fetchone()[0] for n in sorted(names)}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_folder_is_read_and_conformed(tmp_path: Path, fmt: str) -> None:
    folder = write_folder(make_store(), tmp_path / "store", fmt)
    store = open_store(folder)
    assert store.names == ["customers", "campaigns", "orders", "email_events"]
    orders = store.table("orders").to_pandas()
    assert list(orders.columns) == [
        "order_id",
        "customer_id",
        "ordered_at",
        "revenue",
        "discount",
        "channel",
    ]
    assert orders.ordered_at.dtype.kind == "M" and orders.ordered_at.dt.tz is None
    assert orders.order_id.dtype == "int64"
    assert orders.discount.isna().all()  # optional column added as nulls
    # optional tables absent from the folder come back empty with contract columns
    lines = store.table("order_lines").to_pandas()
    assert len(lines) == 0 and "quantity" in lines.columns


def test_partitioned_parquet_folder(tmp_path: Path) -> None:
    folder = write_folder(make_store(), tmp_path / "store", "parquet")
    (folder / "orders.parquet").unlink()
    orders = make_store()["orders"]
    for month, part in orders.groupby(orders.ordered_at.dt.month):
        d = folder / "orders" / f"month={month}"
        d.mkdir(parents=True)
        part.to_parquet(d / "part.parquet", index=False)
    store = open_store(folder)
    assert int(store.table("orders").count().execute()) == 3


def test_timestamps_follow_the_utc_rule(tmp_path: Path) -> None:
    store = make_store()
    store["orders"]["ordered_at"] = [
        "2024-02-01T10:00:00+02:00",  # aware: converted to UTC
        "2024-02-01 10:00:00",  # naive: taken as UTC
        "2024-02-01T10:00:00Z",
    ]
    got = open_store(store).table("orders").to_pandas().ordered_at.tolist()
    assert got == [
        pd.Timestamp("2024-02-01 08:00"),
        pd.Timestamp("2024-02-01 10:00"),
        pd.Timestamp("2024-02-01 10:00"),
    ]


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    folder = write_folder(make_store(), tmp_path / "store")
    db = tmp_path / "bmkt.duckdb"
    first = ingest(folder, db)
    rows_once = db_rows(db)
    second = ingest(folder, db)
    assert first == second == {"customers": 3, "campaigns": 1, "orders": 3, "email_events": 3}
    assert db_rows(db) == rows_once
    assert rows_once["_bmkt_ingest"] == 4
    # the DuckDB file is itself a valid source
    store = open_store(db)
    assert store.names == ["customers", "campaigns", "orders", "email_events"]
    assert store.row_counts()["orders"] == 3


def test_ingest_refuses_invalid_data_and_keeps_previous_contents(tmp_path: Path) -> None:
    db = tmp_path / "bmkt.duckdb"
    ingest(make_store(), db)
    before = db_rows(db)
    bad = make_store()
    bad["orders"]["customer_id"] = [1, 2, 99]
    with pytest.raises(ValidationError, match=r"orders.customer_id: unknown customer"):
        ingest(bad, db)
    assert db_rows(db) == before


def test_ingest_failure_midway_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bmkt.duckdb"
    ingest(make_store(), db)
    with duckdb.connect(str(db)) as con:
        before = con.execute("select * from orders order by order_id").df()
    changed = make_store()
    changed["orders"]["revenue"] = [1.0, 2.0, 3.0]
    import bmkt.io as bio

    real = bio.Store.table
    calls = {"n": 0}

    def flaky(self: bio.Store, name: str):  # fail on the third table
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(self, name)

    monkeypatch.setattr(bio.Store, "table", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(changed, db, validate=False)
    with duckdb.connect(str(db)) as con:
        after = con.execute("select * from orders order by order_id").df()
    pd.testing.assert_frame_equal(before, after)


def test_bad_sources_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or folder"):
        open_store(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match="expected a folder of CSV/Parquet files"):
        open_store(tmp_path / "x.txt")
    folder = write_folder(make_store(), tmp_path / "dup")
    make_store()["orders"].to_parquet(folder / "orders.parquet")
    with pytest.raises(ConfigError, match="orders: more than one file"):
        open_store(folder)
    with pytest.raises(DataError, match="orders: table is missing"):
        open_store({"customers": make_store()["customers"]}).table("orders")
    with pytest.raises(ValidationError, match="customers: required table is missing"):
        ingest({}, tmp_path / "empty.duckdb")
    with pytest.raises(DataError, match="no contract tables found"):
        ingest({}, tmp_path / "empty.duckdb", validate=False)


def test_a_connection_holding_the_tables_is_a_store() -> None:
    con = engine.connect()
    for name, frame in make_store().items():
        con.create_table(name, frame)
    con.create_table("not_a_contract_table", pd.DataFrame({"a": [1]}))
    store = open_store(con)
    assert store.con is con
    assert store.names == ["customers", "campaigns", "orders", "email_events"]
    pd.testing.assert_frame_equal(
        store.table("orders").to_pandas(), open_store(make_store()).table("orders").to_pandas()
    )


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    folder = write_folder(make_store(), tmp_path / "store")
    a = fingerprint(folder)
    assert a == fingerprint(folder)
    (folder / "orders.csv").write_text(
        (folder / "orders.csv").read_text() + "13,1,2024-03-03,1.0\n"
    )
    assert fingerprint(folder) != a


def test_empty_frames_with_untyped_columns_load(tmp_path: Path) -> None:
    store = make_store()
    store["web_events"] = pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype="int64"),
            "occurred_at": pd.Series([], dtype="datetime64[ns]"),
            "event_type": pd.Series([], dtype=object),
            "product_id": pd.Series([], dtype="Int64"),
            "category": pd.Series([], dtype=object),
        }
    )
    opened = open_store(store)
    assert opened.table("web_events").count().execute() == 0
    assert validate_ok(store)


def validate_ok(store: dict[str, pd.DataFrame]) -> bool:
    from bmkt.validate import validate

    return validate(store).ok
