"""The query engine: Ibis expressions, executed by embedded DuckDB by default.

Feature code in bmkt is written as Ibis expressions over the contract tables,
so the same code runs on DuckDB (the default), on Spark through Ibis's PySpark
backend (:func:`connect_spark`), or on a warehouse Ibis supports. This module
owns the connections and the two conversions at the edges: data in
(:func:`as_table`, :func:`register_table`) and the model boundary out
(:func:`to_pandas`). What is not the same on every engine lives here too, in
one place: the time-zone conversion (:func:`wall_time`, by backend), caching
of shared intermediate results on Spark (:func:`reuse`), and Spark's
distributed map over partitions (:func:`map_partitions`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.types as pat
from ibis.expr.types import Table

from bmkt import config
from bmkt.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "connect",
    "connect_spark",
    "as_table",
    "register_table",
    "reuse",
    "to_spark",
    "map_partitions",
    "epoch_us",
    "float_literal",
    "wall_time",
    "WALL_TIME",
    "to_pandas",
    "default_connection",
    "Table",
]

_DEFAULT: Any = None


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> Any:
    """Open an embedded DuckDB connection through Ibis.

    Every connection runs in UTC (``SET TimeZone='UTC'``) so that timestamp
    normalisation does not depend on the machine's zone.

    Parameters
    ----------
    path : path-like, optional
        DuckDB database file; ``None`` for an in-memory database.
    read_only : bool
        Open the file read-only (several readers may share it).
    memory_limit : str, optional
        DuckDB ``memory_limit`` (e.g. ``"8GB"``); beyond it DuckDB spills to
        ``temp_dir``. Defaults to :data:`bmkt.config.DUCKDB_MEMORY_LIMIT`.
    temp_dir : path-like, optional
        Where DuckDB spills when out of memory.
    threads : int, optional
        Worker threads; DuckDB's default (all cores) when ``None``.

    Returns
    -------
    ibis.backends.duckdb.Backend
    """
    kwargs: dict[str, Any] = {}
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["database"] = str(path)
        kwargs["read_only"] = read_only
    con = ibis.duckdb.connect(**kwargs)
    con.raw_sql("SET TimeZone='UTC'")
    try:  # bmkt shows its own progress; inside Jupyter DuckDB may refuse the change
        con.raw_sql("SET enable_progress_bar=false")
    except Exception as exc:  # noqa: BLE001 - duckdb raises InvalidInputException
        log.debug("DuckDB progress bar setting left as is: %s", exc)
    con.raw_sql(f"SET memory_limit='{memory_limit or config.DUCKDB_MEMORY_LIMIT}'")
    tmp = temp_dir or config.DUCKDB_TEMP_DIR
    if tmp:
        con.raw_sql(f"SET temp_directory='{Path(tmp).as_posix()}'")
    if threads:
        con.raw_sql(f"SET threads={int(threads)}")
    return con


def connect_spark(
    master: str | None = "local[2]",
    *,
    session: Any = None,
    app_name: str = "bmkt",
    shuffle_partitions: int | None = None,
    **conf: str | int | bool,
) -> Any:
    """Open an Ibis connection on Apache Spark (Ibis's PySpark backend).

    The same feature code that runs on DuckDB runs on the result: open a
    store on it with :func:`bmkt.io.open_store` (``con=``). The session runs
    in UTC (``spark.sql.session.timeZone=UTC``), like :func:`connect`, so
    naive timestamps keep meaning UTC. Needs the ``spark`` extra
    (``pip install 'bmkt[spark]'``) and Java 17 or later.

    Parameters
    ----------
    master : str, optional
        Spark master URL: ``"local[2]"`` (default: two local cores, what the
        tests use), ``"local[*]"``, ``"spark://host:7077"``, ``"yarn"``,
        ``"k8s://..."``. ``None`` leaves it to ``spark-submit`` or
        ``SPARK_HOME``'s defaults.
    session : pyspark.sql.SparkSession, optional
        An existing session to use instead of building one (on Databricks,
        the ``spark`` object). ``master``, ``app_name`` and the local
        defaults are then ignored; the UTC time zone, ``shuffle_partitions``
        and ``conf`` are applied (runtime properties only).
    app_name : str
        Application name shown by the cluster manager.
    shuffle_partitions : int, optional
        ``spark.sql.shuffle.partitions``. Local masters default to 4: the
        per-customer tables bmkt builds are small, and Spark's default of 200
        partitions spends most of a local run scheduling empty tasks. A
        cluster keeps its own default unless this is given.
    **conf
        Further Spark properties, e.g.
        ``**{"spark.driver.memory": "8g"}``; they win over the defaults here.

    Returns
    -------
    ibis.backends.pyspark.Backend

    Raises
    ------
    ConfigError
        If PySpark is not installed.

    Examples
    --------
    >>> con = connect_spark("local[2]")  # doctest: +SKIP
    >>> store = bmkt.io.open_store("data/demo_store", con=con)  # doctest: +SKIP
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "Spark needs PySpark: pip install 'bmkt[spark]' (and Java 17 or later)."
        ) from None
    props: dict[str, str] = {"spark.sql.session.timeZone": "UTC"}
    if session is None:
        props |= {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",  # no progress bars in bmkt's output
            # pandas <-> Spark through Arrow: frames in, per-customer tables out
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        }
        if master is not None and master.startswith("local"):
            props |= {
                "spark.sql.shuffle.partitions": "4",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.host": "127.0.0.1",
            }
    if shuffle_partitions:
        props["spark.sql.shuffle.partitions"] = str(int(shuffle_partitions))
    props |= {k: _spark_value(v) for k, v in conf.items()}
    if session is None:
        if master is not None and master.startswith("local"):
            # local Python workers run this interpreter, which has bmkt and its
            # dependencies (mapInPandas scoring); PySpark reads only the variable
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(app_name)
        if master is not None:
            builder = builder.master(master)
        for key, value in props.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        log.info("Spark %s session on %s", session.version, session.sparkContext.master)
    # static properties were given to the builder; a running session takes runtime ones only
    runtime = {k: v for k, v in props.items() if not k.startswith(_STATIC_SPARK_PREFIXES)}
    return ibis.pyspark.connect(session, **runtime)


#: Spark properties fixed when the session starts (cannot be set on a running one).
_STATIC_SPARK_PREFIXES = ("spark.ui.", "spark.driver.", "spark.pyspark.", "spark.executor.")


def _spark_value(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def default_connection() -> Any:
    """A process-wide in-memory DuckDB connection for ad-hoc frames."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = connect()
    return _DEFAULT


def as_table(data: Table | pd.DataFrame, con: Any = None, name: str | None = None) -> Table:
    """Return ``data`` as an Ibis table.

    An Ibis table is returned unchanged; a pandas DataFrame is registered on
    ``con`` (the default in-memory DuckDB connection when ``None``) without
    being copied into the database.
    """
    if isinstance(data, Table):
        return data
    if isinstance(data, pd.DataFrame):
        con = con if con is not None else default_connection()
        return con.create_view(
            name or f"_bmkt_frame_{id(data):x}", ibis.memtable(data), overwrite=True
        )
    raise TypeError(f"Expected an Ibis table or a pandas DataFrame, got {type(data).__name__}.")


def to_pandas(expr: Table, **kwargs: Any) -> pd.DataFrame:
    """Execute ``expr`` and return a pandas DataFrame (the model boundary).

    The same frame as ``expr.to_pandas()``, dtypes included. On DuckDB it is
    built faster: Ibis 12 turns every column holding a null into a Python
    list (``to_pylist``) and lets pandas infer its dtype again, which cost
    about 8 s of one core at a million customers in the engagement scores
    alone; here such columns of the common types go through Arrow's
    conversion to the dtype pandas would infer (:func:`_arrow_column`).
    Other backends, and any call with keyword arguments, use Ibis's own.
    """
    if kwargs:
        return expr.to_pandas(**kwargs)
    try:
        backend = expr._find_backend(use_default=True)
    except Exception:  # noqa: BLE001 - whatever Ibis says, its own path says it again
        return expr.to_pandas()
    if getattr(backend, "name", None) != "duckdb" or not hasattr(backend, "_to_duckdb_relation"):
        return expr.to_pandas()
    from ibis.backends.duckdb.converter import DuckDBPandasData

    # what DuckDB's Ibis backend executes (ibis/backends/duckdb/__init__.py, execute)
    arrow = backend._to_duckdb_relation(expr).to_arrow_table()
    schema = expr.as_table().schema()
    df = pd.DataFrame(
        {
            name: _arrow_column(_whole_numbers(col, schema[name]))
            for name, col in zip(arrow.column_names, arrow.columns, strict=True)
        }
    )
    df = DuckDBPandasData.convert_table(df, schema)
    return expr.__pandas_result__(df)


def _whole_numbers(col: Any, dtype: dt.DataType) -> Any:
    """DuckDB's ``HUGEINT`` sums of integers as the integer type Ibis declares for them.

    They arrive as ``decimal128(38, 0)``, which pandas holds as ``Decimal``
    objects until Ibis casts them to integers (1.5 s for five columns of a
    million rows); cast in Arrow instead when there is no null and every value
    fits (a safe cast raises otherwise, and the column is left to Ibis).
    """
    if not (pat.is_decimal(col.type) and col.type.scale == 0 and dtype.is_integer()):
        return col
    if col.null_count:
        return col
    try:
        return col.cast(dtype.to_pyarrow())
    except (pa.ArrowInvalid, NotImplementedError):
        return col


def _arrow_column(col: Any) -> Any:
    """A column for ``pd.DataFrame``, as Ibis passes it (``to_pylist`` when it holds a null).

    Where the column holds a null, pandas infers the dtype of the Python list
    Ibis passes: float64 for integers and floats (nulls NaN), object for
    booleans and text (nulls None), datetime64[ns] for timestamps (nulls NaT;
    objects when one is outside that range), object when every value is null.
    Those types are converted by Arrow straight to that result; any other
    type still goes through the list.
    """
    t = col.type
    if pat.is_nested(t) or pat.is_dictionary(t):
        return col.to_pylist()
    if not col.null_count:
        return col.to_pandas()
    if col.null_count == len(col):
        return np.full(len(col), None, dtype=object)
    if pat.is_floating(t) or (pat.is_integer(t) and t != pa.uint64()):  # uint64: maybe object
        return col.to_pandas().astype("float64")
    if pat.is_boolean(t) or pat.is_string(t) or pat.is_large_string(t):
        return col.to_pandas()  # object, nulls None
    if pat.is_timestamp(t) and t.tz is None:
        try:
            return col.to_pandas().astype("datetime64[ns]")
        except pd.errors.OutOfBoundsDatetime:  # e.g. 9999-12-31: pandas keeps the objects
            return col.to_pylist()
    return col.to_pylist()


def register_table(con: Any, name: str, obj: Table) -> Table:
    """Materialise ``obj`` on ``con`` as ``name`` for this session, and return it.

    A temporary table where the backend has them (DuckDB, most warehouses);
    a temporary view on Spark, whose Ibis backend has no temporary tables
    (the data of an in-memory table then lives in the session's plan).
    """
    try:
        return con.create_table(name, obj, temp=True, overwrite=True)
    except NotImplementedError:  # Ibis's PySpark backend: no temporary tables
        return con.create_view(name, obj, overwrite=True)


def reuse(table: Table, backend: str) -> Table:
    """Compute an intermediate result once when later steps read it several times.

    Spark inlines every common table expression of Ibis's SQL, so a result
    read ``k`` times is computed ``k`` times, and nested reuse multiplies
    (the send-time query grew to 99 scans of its inputs). On Spark the table
    is cached (:meth:`ibis.expr.types.Table.cache`, released when the
    expression is garbage-collected); other engines plan shared results
    themselves and get ``table`` back unchanged.

    Parameters
    ----------
    table : ibis.Table
        The shared intermediate result.
    backend : str
        The Ibis backend it will run on (``con.name``).
    """
    return table.cache() if backend == "pyspark" else table


# --------------------------------------------------------------------------- portable time

_EPOCH = datetime(1970, 1, 1)


def epoch_us(ts: ibis.Value) -> ibis.Value:
    """Microseconds since 1970-01-01 of a naive (UTC) timestamp, as int64.

    Written as a timestamp difference (``TimestampDelta``), which every SQL
    backend of Ibis compiles (``date_diff`` on DuckDB, ``datediff`` on Spark),
    and exact to the microsecond, unlike ``epoch_seconds()`` (whole seconds
    on Spark).
    """
    return ts.delta(ibis.literal(_EPOCH, type=dt.Timestamp()), unit="microsecond")


def float_literal(value: float) -> ibis.Value:
    """A float64 constant that every engine reads as a double.

    Ibis writes float literals as bare numbers (``1.0``), which DuckDB and
    Spark both read as DECIMAL. Next to a double column that does not matter,
    but a column made of such constants alone (an event weight) stays
    DECIMAL, and on Spark a decimal times a double is rounded to the
    decimal's scale (a send-time concentration off by 1e-3). Written as a
    cast of text, the value is exactly ``float(value)`` everywhere.
    """
    return ibis.literal(repr(float(value))).cast(dt.float64)


@ibis.udf.scalar.builtin(name="timezone")
def _timezone_at(zone: str, ts: dt.Timestamp()) -> dt.Timestamp(timezone="UTC"):  # type: ignore[valid-type]
    """DuckDB (ICU) / PostgreSQL: a naive timestamp read as wall time in ``zone``."""


@ibis.udf.scalar.builtin(name="timezone")
def _timezone_wall(zone: str, ts: dt.Timestamp(timezone="UTC")) -> dt.Timestamp():  # type: ignore[valid-type]
    """DuckDB (ICU) / PostgreSQL: wall-clock time in ``zone`` of an instant."""


@ibis.udf.scalar.builtin(name="from_utc_timestamp")
def _from_utc_timestamp(ts: dt.Timestamp(), zone: str) -> dt.Timestamp():  # type: ignore[valid-type]
    """Spark: wall-clock time in ``zone`` of a UTC timestamp."""


@ibis.udf.scalar.builtin(name="convert_timezone")
def _convert_timezone(source: str, target: str, ts: dt.Timestamp()) -> dt.Timestamp():  # type: ignore[valid-type]
    """Snowflake: a TIMESTAMP_NTZ moved from zone ``source`` to ``target`` wall time."""


#: Backend name (``con.name``) -> ``f(ts, zone)`` giving the wall-clock time in
#: IANA ``zone`` of naive-UTC ``ts``, daylight saving time included. Ibis has no
#: portable operation for a per-row zone, so this is the one place where bmkt
#: calls engine functions by name; add an entry to run :func:`wall_time` on
#: another backend. DuckDB and Spark are tested; PostgreSQL has DuckDB's
#: function, Snowflake's follows its documentation.
WALL_TIME: dict[str, Callable[[ibis.Value, ibis.Value], ibis.Value]] = {
    "duckdb": lambda ts, zone: _timezone_wall(zone, _timezone_at("UTC", ts)),
    "postgres": lambda ts, zone: _timezone_wall(zone, _timezone_at("UTC", ts)),
    "pyspark": lambda ts, zone: _from_utc_timestamp(ts, zone),
    "databricks": lambda ts, zone: _from_utc_timestamp(ts, zone),
    "snowflake": lambda ts, zone: _convert_timezone("UTC", zone, ts),
}


def wall_time(ts: ibis.Value, zone: ibis.Value | str, backend: str) -> ibis.Value:
    """Local wall-clock time in IANA ``zone`` of naive-UTC ``ts``, by the engine.

    Parameters
    ----------
    ts : ibis timestamp value
        Naive timestamps, UTC by the project's rule.
    zone : ibis string value or str
        IANA zone names (``"Europe/Berlin"``).
    backend : str
        The Ibis backend the expression will run on (``con.name``).

    Returns
    -------
    ibis timestamp value
        Naive local times.

    Raises
    ------
    ConfigError
        For a backend without an entry in :data:`WALL_TIME`.
    """
    try:
        convert = WALL_TIME[backend]
    except KeyError:
        raise ConfigError(
            f"Local time on the {backend!r} backend is not supported: valid backends are "
            f"{', '.join(repr(b) for b in WALL_TIME)}. Add its time-zone conversion to "
            "bmkt.engine.WALL_TIME."
        ) from None
    return convert(ts, ibis.literal(zone) if isinstance(zone, str) else zone)


# --------------------------------------------------------------------------- Spark DataFrames


def to_spark(expr: Table, con: Any) -> Any:
    """The Ibis table ``expr`` as a (lazy) Spark DataFrame of the Spark connection ``con``.

    For steps Ibis does not express, such as :func:`map_partitions`. The
    expression is registered as a temporary view, so nothing is computed.
    """
    if con.name != "pyspark":
        raise ConfigError(f"to_spark: needs a Spark connection (connect_spark), got {con.name!r}.")
    name = ibis.util.gen_name("bmkt_spark")
    con.create_view(name, expr, overwrite=True)
    return con.raw_sql(f"SELECT * FROM `{name}`")


def map_partitions(
    frame: Any,
    fn: Callable[[pd.DataFrame, Any], pd.DataFrame],
    schema: Any,
    payload: Any = None,
) -> Any:
    """Apply ``fn`` to every partition of a Spark DataFrame, in pandas, on the executors.

    A distributed map with Spark's ``mapInPandas``: each partition arrives
    as pandas DataFrames (Arrow batches, ``spark.sql.execution.arrow.maxRecordsPerBatch``
    rows at most), ``fn(batch, payload)`` returns the rows to emit. ``payload``
    (a fitted model, say) is broadcast: shipped once to each executor, not
    with every task. Nothing runs until the result is used.

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        The input, e.g. from :func:`to_spark` or ``spark.read.parquet``.
    fn : callable
        ``fn(batch: pandas.DataFrame, payload) -> pandas.DataFrame``; pure,
        picklable (module-level or a closure over picklable values). Empty
        batches are skipped.
    schema : pyspark.sql.types.StructType or str
        Schema of what ``fn`` returns (DDL string like ``"customer_id bigint,
        p_alive double"`` or a StructType).
    payload : object, optional
        Read-only object handed to every call of ``fn``; its class must be
        importable on the executors (install bmkt there).

    Returns
    -------
    pyspark.sql.DataFrame
    """
    shared, broadcast = _broadcast(frame, payload)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        value = shared.value if broadcast else shared
        for batch in batches:
            if len(batch):
                yield fn(batch, value)

    return frame.mapInPandas(run, schema)


def _broadcast(frame: Any, payload: Any) -> tuple[Any, bool]:
    """(a Spark broadcast of ``payload``, True), or (``payload``, False) where there is none."""
    if payload is None:
        return None, False
    try:
        context = frame.sparkSession.sparkContext
    except Exception:  # Spark Connect sessions have no SparkContext: ship with the function
        return payload, False
    return context.broadcast(payload), True
