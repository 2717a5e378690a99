"""The engine's model boundary: :func:`bmkt.engine.to_pandas` gives what Ibis gives."""

from __future__ import annotations

import ibis
import numpy as np
import pandas as pd
import pytest

from bmkt import engine

#: DuckDB column types and a non-null value of each (SQL literals).
TYPES = {
    "big": ("BIGINT", "9007199254740993"),  # 2**53 + 1: not a float64
    "int": ("INTEGER", "-7"),
    "small": ("SMALLINT", "3"),
    "tiny": ("TINYINT", "-1"),
    "utiny": ("UTINYINT", "200"),
    "ubig": ("UBIGINT", "18446744073709551615"),
    "dbl": ("DOUBLE", "0.1"),
    "flt": ("FLOAT", "0.1"),
    "nan": ("DOUBLE", "'NaN'"),
    "bool": ("BOOLEAN", "true"),
    "text": ("VARCHAR", "'=1+1'"),
    "ts": ("TIMESTAMP", "TIMESTAMP '2024-06-30 23:59:59.123456'"),
    "ts_s": ("TIMESTAMP_S", "TIMESTAMP_S '2024-06-30 01:02:03'"),
    "ts_ms": ("TIMESTAMP_MS", "TIMESTAMP_MS '2024-06-30 01:02:03.004'"),
    "ts_ns": ("TIMESTAMP_NS", "TIMESTAMP_NS '2024-06-30 01:02:03.000004005'"),
    "tstz": ("TIMESTAMPTZ", "TIMESTAMPTZ '2024-06-30 01:02:03+02'"),
    "date": ("DATE", "DATE '2024-02-29'"),
    "dec": ("DECIMAL(10, 2)", "12.34"),
    "huge": ("HUGEINT", "12345678901234567890123"),
    "list": ("INTEGER[]", "[1, 2]"),
    "struct": ("STRUCT(a INTEGER, b VARCHAR)", "{'a': 1, 'b': 'x'}"),
    "enum": ("ENUM('a', 'b')", "'b'"),
}


def _table(con: object, nulls: str, n: int = 5) -> ibis.Table:
    """A table of every type in ``TYPES`` with no, some, or only nulls."""
    cols = []
    for name, (sql_type, value) in TYPES.items():
        if nulls == "none":
            expr = value
        elif nulls == "all":
            expr = "NULL"
        else:  # every other row
            expr = f"CASE WHEN i % 2 = 0 THEN {value} ELSE NULL END"
        cols.append(f"CAST({expr} AS {sql_type}) AS {name}")
    sql = f"SELECT i, {', '.join(cols)} FROM range({n}) t(i) ORDER BY i"
    con.raw_sql(f"CREATE OR REPLACE TABLE t_{nulls} AS {sql}")  # type: ignore[attr-defined]
    return con.table(f"t_{nulls}")  # type: ignore[attr-defined]


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal frames, dtypes equal, and the same Python type in every object cell (None vs NaN)."""
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    for name in want.columns:
        if want[name].dtype == object:
            kinds = [type(v) for v in got[name]]
            assert kinds == [type(v) for v in want[name]], name


@pytest.mark.parametrize("nulls", ["none", "some", "all"])
def test_to_pandas_equals_ibis_for_every_type(nulls: str) -> None:
    con = ibis.duckdb.connect()
    table = _table(con, nulls)
    want = table.execute()
    got = engine.to_pandas(table)
    _same(got, want)
    if nulls == "some":  # the cases the fast path converts: a null in a column that has values
        assert np.isnan(got.loc[1, "big"]) and got.loc[0, "big"] == float(2**53 + 1)
        assert got["ts"].dtype == "datetime64[ns]" and got.loc[1, "ts"] is pd.NaT
        assert got.loc[1, "bool"] is None and got.loc[1, "text"] is None


def test_to_pandas_of_no_rows_a_column_and_a_filtered_table() -> None:
    con = ibis.duckdb.connect()
    table = _table(con, "some", n=40)
    for expr in (
        table.filter(table.i < 0),  # no rows
        table.filter(table.i % 3 == 0).select("i", "big", "ts", "text"),
        table.group_by("bool").aggregate(n=table.count(), last=table.ts.max()).order_by("bool"),
        # sums of integers: DuckDB's HUGEINT (decimal128(38, 0)), int64 for Ibis
        table.group_by("bool").aggregate(s=table.int.sum(), t=table.tiny.sum()).order_by("bool"),
        table.aggregate(s=table.int.sum(), over=table.big.sum() * 2000),  # over: no int64
        table.filter(table.i < 0).aggregate(s=table.int.sum()),  # a null sum
    ):
        _same(engine.to_pandas(expr), expr.execute())
    column = table.big
    pd.testing.assert_series_equal(engine.to_pandas(column), column.execute())
    assert engine.to_pandas(table.big.max()) == table.big.max().execute()


def test_to_pandas_of_timestamps_outside_the_nanosecond_range() -> None:
    # sentinel dates and year typos: pandas keeps such timestamps as objects
    con = ibis.duckdb.connect()
    con.raw_sql(
        "CREATE TABLE c AS SELECT * FROM (VALUES (1, TIMESTAMP '2024-03-01 09:00'), (2, NULL),"
        " (3, TIMESTAMP '0202-04-01 09:00'), (4, TIMESTAMP '9999-12-31 00:00')) t(id, sent_at)"
    )
    table = con.table("c")
    for expr in (table, table.filter(table.id != 2), table.filter(table.id <= 2)):
        _same(engine.to_pandas(expr), expr.execute())


def test_to_pandas_of_a_memtable_and_with_arguments_is_ibis_s() -> None:
    frame = pd.DataFrame({"a": [1, None, 3], "b": ["x", None, "z"]})
    mem = ibis.memtable(frame)  # bound to no backend: Ibis's default
    _same(engine.to_pandas(mem), mem.execute())
    con = ibis.duckdb.connect()
    table = _table(con, "some", n=8)
    _same(engine.to_pandas(table, limit=3), table.execute(limit=3))
