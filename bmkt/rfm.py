"""Recency, frequency and monetary value: the per-customer summary, scores and segments.

Three steps, each one function:

:func:`summarize`
    Orders -> one row per customer with the quantities the probability models
    of :mod:`bmkt.clv` need (``frequency``, ``recency``, ``T``,
    ``monetary_value``, in the conventions of the ``lifetimes`` package) and a
    few plain facts (first and last order, number of orders, net revenue).
    Computed in the engine: two grouped aggregations in DuckDB, and only the
    per-customer result crosses into pandas.
:func:`score`
    Summary -> R, F and M scores ``1..bins`` (higher is better) and the
    ``rfm_score`` code (``"545"``).
:func:`segment`
    Scores -> one named segment per customer, from a score map kept as data
    (``bmkt/resources/rfm_segments.yaml`` by default, replaceable).

Transactions
------------
The probability models count *transactions*, not orders. A transaction is a
calendar day (UTC) on which the customer bought:

* all of a customer's orders of one calendar day form one transaction, their
  revenue summed (several orders of one day are one purchase occasion, which is
  how the published CDNOW analyses and ``lifetimes`` count);
* refunds (orders with negative revenue) are netted into the day on which they
  happen;
* a day counts as a transaction when its net revenue is ``>= 0``. Free orders
  (revenue 0, e.g. the eight $0 purchases in the CDNOW sample) therefore count;
  a day holding only refunds, or refunds larger than that day's purchases, does
  not. Its (negative) revenue still counts in ``total_revenue`` but not in
  ``monetary_value``;
* customers without a single transaction day (every order a refund) are left
  out of the summary. Their number is logged and kept in
  ``summary.attrs["excluded"]``; no row with missing values is produced.

``as_of`` and ``calibration_end`` follow the project's run-date rule
(:func:`bmkt.schema.parse_as_of`): a date means *through the end of that day*.
Time (``recency``, ``T``) is measured between calendar days: ``T`` is the number
of days from the first transaction day to the ``as_of`` (or
``calibration_end``) day, as in ``lifetimes``.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
   Using Iso-Value Curves for Customer Base Analysis", Journal of Marketing
   Research, 42 (4), 415-430.
.. [2] Hughes, A. M. (1994), *Strategic Database Marketing*, Probus
   (the original RFM quintile scoring).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import yaml
from ibis.expr.types import Table

from bmkt import engine
from bmkt.errors import ConfigError, DataError, data_problem
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = [
    "PERIODS",
    "SUMMARY_COLUMNS",
    "summarize",
    "transactions",
    "repeat_transactions_by_day",
    "score",
    "segment",
    "load_segment_map",
]

#: Time units of ``recency`` and ``T``, as days per unit.
PERIODS: dict[str, float] = {"D": 1.0, "W": 7.0}

#: Columns of :func:`summarize`'s result, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "frequency",
    "recency",
    "T",
    "monetary_value",
    "first_order_at",
    "last_order_at",
    "n_orders",
    "total_revenue",
)

_REQUIRED = ("customer_id", "ordered_at", "revenue")
_DEFAULT_SEGMENT_MAP = "rfm_segments.yaml"
_CODE_PARTS = ("R", "F", "M", "FM")


# --------------------------------------------------------------------------- #
# summary
# --------------------------------------------------------------------------- #
def _check_period(period: str) -> float:
    if period not in PERIODS:
        raise ConfigError(
            f"Valid options for 'period' are {', '.join(repr(p) for p in PERIODS)}. Got {period!r}."
        )
    return PERIODS[period]


def _conform_frame(orders: pd.DataFrame) -> pd.DataFrame:
    """Return the three columns the summary needs, checked and typed.

    The input is never modified; a column is converted (into a new frame) only
    when it is not already of the contract's type.
    """
    n = len(orders)
    missing = [c for c in _REQUIRED if c not in orders.columns]
    if missing:
        raise data_problem(
            "orders",
            missing[0],
            n,
            f"lack required column(s) {missing}; columns present",
            [str(c) for c in orders.columns],
        )
    cid = orders["customer_id"]
    ts = orders["ordered_at"]
    rev = orders["revenue"]
    for name, col in (("customer_id", cid), ("ordered_at", ts), ("revenue", rev)):
        bad = col.isna()
        if bad.any():
            where = orders.index[bad.to_numpy()]
            raise data_problem(
                "orders", name, int(bad.sum()), "are null (row index shown)", list(where[:5])
            )
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(ts.dtype):
        parsed = pd.to_datetime(ts, errors="coerce", utc=True, format="mixed")
        bad = parsed.isna()
        if bad.any():
            raise data_problem(
                "orders",
                "ordered_at",
                int(bad.sum()),
                "are not timestamps",
                list(ts[bad].head(5)),
            )
        ts = parsed.dt.tz_localize(None)
    if not pd.api.types.is_numeric_dtype(rev.dtype) or pd.api.types.is_bool_dtype(rev.dtype):
        parsed = pd.to_numeric(rev, errors="coerce")
        bad = parsed.isna() | pd.api.types.is_bool_dtype(rev.dtype)
        if bad.any():
            raise data_problem(
                "orders", "revenue", int(bad.sum()), "are not numbers", list(rev[bad].head(5))
            )
        rev = parsed
    rev = rev.astype("float64", copy=False)
    if not np.isfinite(rev.to_numpy()).all():
        bad = ~np.isfinite(rev.to_numpy())
        raise data_problem(
            "orders", "revenue", int(bad.sum()), "are not finite", list(rev[bad].head(5))
        )
    if not (
        pd.api.types.is_integer_dtype(cid.dtype)
        or pd.api.types.is_string_dtype(cid.dtype)
        or pd.api.types.is_object_dtype(cid.dtype)
    ):
        raise data_problem(
            "orders",
            "customer_id",
            n,
            f"have dtype {cid.dtype}, expected integers or text",
            list(cid.head(5)),
        )
    # no copy: the frame only feeds the engine, which never writes to it
    return pd.DataFrame(
        {"customer_id": cid.to_numpy(), "ordered_at": ts.to_numpy(), "revenue": rev.to_numpy()},
        copy=False,
    )


def _check_table(orders: Table) -> Table:
    schema = orders.schema()
    missing = [c for c in _REQUIRED if c not in schema]
    if missing:
        n = int(orders.count().execute())
        raise data_problem(
            "orders",
            missing[0],
            n,
            f"lack required column(s) {missing}; columns present",
            list(schema.names),
        )
    if not schema["ordered_at"].is_timestamp():
        raise DataError(
            f"orders.ordered_at: has type {schema['ordered_at']}, expected a timestamp; "
            "load the table through bmkt.io to conform it to the contract."
        )
    if not schema["revenue"].is_numeric():
        raise DataError(
            f"orders.revenue: has type {schema['revenue']}, expected a number; "
            "load the table through bmkt.io to conform it to the contract."
        )
    nulls = orders.aggregate(
        n=orders.count(),
        **{f"null_{c}": orders[c].isnull().sum() for c in _REQUIRED},
    ).execute()
    for c in _REQUIRED:
        k = int(nulls[f"null_{c}"].iloc[0])
        if k:
            raise data_problem("orders", c, k, "are null")
    return orders.select(*_REQUIRED)


class _Orders:
    """Context manager: orders as an Ibis table; a registered frame is dropped on exit.

    :func:`bmkt.engine.as_table` registers a DataFrame as a view over an Ibis
    in-memory table, which DuckDB keeps (with a copy of the data) until the
    process ends. Both are dropped on exit so repeated calls do not pile up
    copies of the orders.
    """

    def __init__(self, orders: Table | pd.DataFrame) -> None:
        self.orders = orders
        self.view: str | None = None
        self.registered: set[str] = set()

    def __enter__(self) -> Table:
        if isinstance(self.orders, Table):
            return _check_table(self.orders)
        if not isinstance(self.orders, pd.DataFrame):
            raise DataError(
                "orders: expected a pandas DataFrame or an Ibis table, "
                f"got {type(self.orders).__name__}."
            )
        frame = _conform_frame(self.orders)
        con = engine.default_connection()
        before = set(con.list_tables())
        self.view = f"_bmkt_rfm_orders_{uuid.uuid4().hex}"
        table = engine.as_table(frame, con=con, name=self.view)
        self.registered = set(con.list_tables()) - before - {self.view}
        return table

    def __exit__(self, *exc: object) -> None:
        if self.view is None:
            return
        con = engine.default_connection()
        for name in [self.view, *sorted(self.registered)]:
            try:
                con.drop_view(name, force=True)
            except Exception:  # cleanup must not hide the real error
                log.debug("could not drop %s", name, exc_info=True)


def _day_end(value: Any, name: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(exclusive end, calendar day) of a run date, per :func:`bmkt.schema.parse_as_of`."""
    try:
        end = parse_as_of(value)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("as_of:", f"{name}:", 1)) from None
    day = (end - pd.Timedelta(microseconds=1)).normalize()
    return end, day


def transactions(orders: Table | pd.DataFrame, end: pd.Timestamp) -> Table:
    """Per-customer transaction days of ``orders`` placed before ``end``, as an Ibis table.

    One row per customer and calendar day with any order, with columns
    ``customer_id``, ``day`` (date), ``revenue`` (net of the day),
    ``n_orders`` (orders with revenue >= 0) and ``is_transaction``
    (net revenue >= 0; see the module docstring).

    Parameters
    ----------
    orders : ibis.Table
        The orders table (already checked; see :func:`summarize`).
    end : pandas.Timestamp
        Exclusive upper bound on ``ordered_at``.

    Returns
    -------
    ibis.Table
    """
    t = orders.filter(orders.ordered_at < end.to_pydatetime())
    t = t.select(
        customer_id=t.customer_id, day=t.ordered_at.date(), revenue=t.revenue.cast("float64")
    )
    daily = t.group_by(["customer_id", "day"]).aggregate(
        revenue=t.revenue.sum(), n_orders=(t.revenue >= 0).cast("int64").sum()
    )
    return daily.mutate(is_transaction=daily.revenue >= 0)


def summarize(
    orders: Table | pd.DataFrame,
    as_of: Any,
    period: str = "D",
    calibration_end: Any = None,
) -> pd.DataFrame:
    """Summarize orders into one row per customer: frequency, recency, T, monetary value.

    Parameters
    ----------
    orders : pandas.DataFrame or ibis.Table
        The ``orders`` contract table; ``customer_id``, ``ordered_at`` (naive
        UTC, or zone-aware, or parseable text in a DataFrame) and ``revenue``
        are used. Not modified.
    as_of : date-like
        Run date. Orders after it are ignored; a date means through the end of
        that day (:func:`bmkt.schema.parse_as_of`).
    period : {"D", "W"}
        Unit of ``recency`` and ``T``: days, or weeks as fractional days / 7.
        Transactions are counted by calendar day in both cases (how the
        published CDNOW analyses were done).
    calibration_end : date-like, optional
        End of a calibration period (on or before ``as_of``). Only orders up to
        it count and ``T`` is measured to it. Customers whose first order comes
        later are not in the result.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``customer_id`` (sorted), columns:

        ``frequency``
            Number of repeat transactions (transaction days after the first).
        ``recency``
            Time from the first to the last transaction.
        ``T``
            Time from the first transaction to ``as_of`` (or ``calibration_end``).
        ``monetary_value``
            Mean revenue of the repeat transactions; 0 when ``frequency == 0``
            (the ``lifetimes`` convention).
        ``first_order_at``, ``last_order_at``
            First and last transaction day.
        ``n_orders``
            Orders with revenue >= 0 up to the cut-off.
        ``total_revenue``
            Net revenue of all orders up to the cut-off, refunds included.

        ``attrs`` holds ``period``, ``as_of``, ``calibration_end`` (the
        calendar days as ISO dates, or None) and ``excluded`` (customers with
        refunds only).

    Raises
    ------
    ConfigError
        On an invalid ``period`` or dates.
    DataError
        When a required column is missing, a value cannot be parsed, or no
        customer has a transaction on or before the cut-off.

    Examples
    --------
    >>> import pandas as pd
    >>> orders = pd.DataFrame({
    ...     "order_id": [1, 2, 3],
    ...     "customer_id": [7, 7, 7],
    ...     "ordered_at": pd.to_datetime(["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-11 12:00"]),
    ...     "revenue": [10.0, 5.0, 20.0],
    ... })
    >>> s = summarize(orders, as_of="2024-01-31")
    >>> s.loc[7, ["frequency", "recency", "T", "monetary_value"]].astype(float).tolist()
    [1.0, 10.0, 30.0, 20.0]
    """
    days_per_period = _check_period(period)
    end, as_of_day = _day_end(as_of, "as_of")
    horizon_day = as_of_day
    if calibration_end is not None:
        end_cal, cal_day = _day_end(calibration_end, "calibration_end")
        if end_cal > end:
            raise ConfigError(
                f"calibration_end ({cal_day.date()}) must be on or before as_of ({as_of_day.date()})."
            )
        end, horizon_day = end_cal, cal_day

    with _Orders(orders) as table:
        daily = transactions(table, end)
        txn = daily.is_transaction
        per_customer = daily.group_by("customer_id").aggregate(
            # timestamps, not dates: they reach pandas as datetime64, not Python objects
            first_day=daily.day.min(where=txn).cast("timestamp"),
            last_day=daily.day.max(where=txn).cast("timestamp"),
            n_transactions=daily.day.count(where=txn),
            transaction_revenue=daily.revenue.sum(where=txn),
            first_revenue=daily.revenue.argmin(daily.day, where=txn),
            n_orders=daily.n_orders.sum(),
            total_revenue=daily.revenue.sum(),
        )
        raw = engine.to_pandas(per_customer)

    no_txn = raw["first_day"].isna()
    n_excluded = int(no_txn.sum())
    if n_excluded:
        log.info(
            "summarize: %d customer(s) without a transaction day (refunds only) left out",
            n_excluded,
        )
        raw = raw.loc[~no_txn.to_numpy()]
    if raw.empty:
        raise DataError(
            f"orders: 0 customers with a purchase on or before {horizon_day.date()} "
            f"({n_excluded} with refunds only); check as_of / calibration_end."
        )

    first = pd.to_datetime(raw["first_day"]).astype("datetime64[ns]")
    last = pd.to_datetime(raw["last_day"]).astype("datetime64[ns]")
    day_ns = np.timedelta64(1, "D")
    recency_days = ((last - first).to_numpy() / day_ns).astype("float64")
    t_days = ((np.datetime64(horizon_day, "ns") - first.to_numpy()) / day_ns).astype("float64")
    frequency = raw["n_transactions"].to_numpy(dtype="int64") - 1
    repeat_revenue = raw["transaction_revenue"].to_numpy(dtype="float64") - raw[
        "first_revenue"
    ].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, repeat_revenue / np.maximum(frequency, 1), 0.0)

    out = pd.DataFrame(
        {
            "frequency": frequency,
            "recency": recency_days / days_per_period,
            "T": t_days / days_per_period,
            "monetary_value": monetary,
            "first_order_at": first.to_numpy(),
            "last_order_at": last.to_numpy(),
            "n_orders": raw["n_orders"].to_numpy(dtype="int64"),
            "total_revenue": raw["total_revenue"].to_numpy(dtype="float64"),
        },
        index=pd.Index(raw["customer_id"].to_numpy(), name="customer_id"),
    ).sort_index()
    # plain values (ISO dates), so that the frame still writes to Parquet
    out.attrs.update(
        {
            "period": period,
            "as_of": as_of_day.date().isoformat(),
            "calibration_end": horizon_day.date().isoformat()
            if calibration_end is not None
            else None,
            "excluded": n_excluded,
        }
    )
    return out


def repeat_transactions_by_day(
    orders: Table | pd.DataFrame, as_of: Any, cohort_end: Any = None
) -> pd.Series:
    """Number of repeat transactions per calendar day, for a cohort of customers.

    Transactions follow the same day-level rule as :func:`summarize`; a
    repeat transaction is any transaction day after the customer's first.
    Used for the cumulative tracking comparison of :func:`bmkt.clv.evaluate`.

    Parameters
    ----------
    orders : pandas.DataFrame or ibis.Table
        The ``orders`` table. Not modified.
    as_of : date-like
        Orders after it are ignored.
    cohort_end : date-like, optional
        Only customers whose first transaction is on or before this day count
        (the calibration cohort); everyone when ``None``.

    Returns
    -------
    pandas.Series
        Indexed by day (``datetime64``, ascending), named ``repeat_transactions``;
        days without repeat transactions are absent.
    """
    end, _ = _day_end(as_of, "as_of")
    cohort_day = _day_end(cohort_end, "cohort_end")[1] if cohort_end is not None else None
    with _Orders(orders) as table:
        daily = transactions(table, end)
        daily = daily.filter(daily.is_transaction)
        daily = daily.mutate(first_day=daily.day.min().over(group_by=daily.customer_id))
        keep = daily.day > daily.first_day
        if cohort_day is not None:
            keep &= daily.first_day <= cohort_day.date()
        per_day = daily.filter(keep).group_by("day").aggregate(repeat_transactions=ibis._.count())
        raw = engine.to_pandas(per_day)
    out = pd.Series(
        raw["repeat_transactions"].to_numpy(dtype="int64"),
        index=pd.DatetimeIndex(pd.to_datetime(raw["day"]), name="day"),
        name="repeat_transactions",
    )
    return out.sort_index()


# --------------------------------------------------------------------------- #
# scores
# --------------------------------------------------------------------------- #
def _quantile_score(values: np.ndarray, bins: int, ties: str, higher_is_better: bool) -> np.ndarray:
    """Scores 1..bins from ranks: equal-frequency bins of the mid-rank percentile."""
    x = values if higher_is_better else -values
    s = pd.Series(x)
    n = len(s)
    rank = s.rank(method=ties).to_numpy()  # 1..n
    pct = (rank - 0.5) / n  # mid-rank percentile in (0, 1)
    return np.clip(np.floor(pct * bins).astype("int64") + 1, 1, bins)


def score(
    summary: pd.DataFrame,
    bins: int = 5,
    *,
    monetary: str = "total_revenue",
    ties: str = "average",
) -> pd.DataFrame:
    """Score recency, frequency and monetary value ``1..bins`` (higher is better).

    Each score is the customer's equal-frequency bin (quintile for
    ``bins=5``) of the mid-rank percentile ``(rank - 0.5) / n`` of:

    * R: days since the last transaction (``T - recency``), *fewer* is better;
    * F: ``frequency`` (repeat transactions);
    * M: the ``monetary`` column, by default ``total_revenue`` (net revenue,
      which, unlike ``monetary_value``, is not 0 for one-time buyers).

    Parameters
    ----------
    summary : pandas.DataFrame
        The result of :func:`summarize` (or any frame with ``frequency``,
        ``recency``, ``T`` and the ``monetary`` column). Not modified.
    bins : int
        Number of score levels, 2..9 (one digit each in ``rfm_score``).
    monetary : str
        Column scored as M.
    ties : {"average", "first"}
        ``"average"`` (default): equal values get equal scores, so customers
        with identical behaviour are never split, and bins may be uneven when
        many values tie (most customers with ``frequency`` 0 share one F
        score). ``"first"``: ties are broken by row order (the summary's
        customer order), which gives bins of equal size.
        Either way one customer, or all-equal values, score the middle level
        (3 of 5).

    Returns
    -------
    pandas.DataFrame
        Same index; integer columns ``R``, ``F``, ``M`` and the string
        ``rfm_score`` (e.g. ``"545"``). ``attrs["bins"]`` records ``bins``.

    Raises
    ------
    ConfigError
        On invalid ``bins``, ``ties`` or ``monetary``.
    DataError
        When a needed column is missing or holds missing values.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or not 2 <= bins <= 9:
        raise ConfigError(f"'bins' must be an integer from 2 to 9. Got {bins!r}.")
    if ties not in ("average", "first"):
        raise ConfigError(f"Valid options for 'ties' are 'average', 'first'. Got {ties!r}.")
    if not isinstance(monetary, str):
        raise ConfigError(f"'monetary' must be a column name. Got {monetary!r}.")
    needed = ["frequency", "recency", "T", monetary]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise data_problem(
            "summary",
            missing[0],
            len(summary),
            f"lack required column(s) {missing}; columns present",
            [str(c) for c in summary.columns],
        )
    cols = {}
    for c in needed:
        v = pd.to_numeric(summary[c], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isfinite(v)
        if bad.any():
            raise data_problem(
                "summary",
                c,
                int(bad.sum()),
                "are missing or not finite",
                list(summary.index[bad][:5]),
            )
        cols[c] = v
    idle = cols["T"] - cols["recency"]
    r = _quantile_score(idle, bins, ties, higher_is_better=False)
    f = _quantile_score(cols["frequency"], bins, ties, higher_is_better=True)
    m = _quantile_score(cols[monetary], bins, ties, higher_is_better=True)
    code = _digits(r * 100 + f * 10 + m)
    out = pd.DataFrame({"R": r, "F": f, "M": m, "rfm_score": code}, index=summary.index)
    out.attrs["bins"] = int(bins)
    return out


def _digits(num: np.ndarray) -> np.ndarray:
    """Integers as decimal strings (object array), converting each distinct value once."""
    position, distinct = pd.factorize(np.asarray(num))
    text = np.array([str(v) for v in distinct], dtype=object)
    return text[position] if len(text) else np.array([], dtype=object)


# --------------------------------------------------------------------------- #
# segments
# --------------------------------------------------------------------------- #
def load_segment_map(segment_map: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load and validate an RFM segment map.

    A segment map is data (YAML): which score code it matches (``code``: a
    list of ``R``, ``F``, ``M`` and ``FM``, the latter being ``(F + M) / 2``
    rounded half up), for which ``bins``, an ordered list of ``segments``
    (``name``, regular expression ``pattern`` matched against the whole code,
    optional ``description`` and ``action``; the first match wins), and a
    catch-all ``default`` segment for codes no pattern matches. See
    ``bmkt/resources/rfm_segments.yaml``.

    Parameters
    ----------
    segment_map : path, mapping or None
        A YAML file, an already-parsed mapping, or ``None`` for the bundled map.

    Returns
    -------
    dict
        The validated map, with compiled patterns under ``"_compiled"``.

    Raises
    ------
    ConfigError
        When the file cannot be read or parsed, a key is unknown, a pattern is
        not a valid regular expression, or the map has no catch-all.
    """
    if segment_map is None:
        text = resources.files("bmkt").joinpath("resources", _DEFAULT_SEGMENT_MAP).read_text()
        source = f"bmkt/resources/{_DEFAULT_SEGMENT_MAP}"
        raw = _parse_yaml(text, source)
    elif isinstance(segment_map, Mapping):
        raw, source = dict(segment_map), "segment map"
    else:
        path = Path(segment_map)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"segment map {str(path)!r}: cannot read ({exc}).") from None
        raw, source = _parse_yaml(text, str(path)), str(path)

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level.")
    known = {"version", "description", "bins", "code", "segments", "default"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}. Valid keys are {sorted(known)}.")
    if "default" not in raw:
        raise ConfigError(
            f"{source}: no catch-all. Add a 'default' segment (e.g. 'default: {{name: Other}}') "
            "so that every customer gets exactly one segment."
        )
    bins = raw.get("bins", 5)
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 9:
        raise ConfigError(f"{source}: 'bins' must be an integer from 2 to 9. Got {bins!r}.")
    code = raw.get("code", ["R", "F"])
    if isinstance(code, str):
        code = [code]
    if not code or any(part not in _CODE_PARTS for part in code):
        raise ConfigError(
            f"{source}: Valid options for 'code' parts are {list(_CODE_PARTS)}. Got {code!r}."
        )
    default = raw["default"]
    if isinstance(default, str):
        default = {"name": default}
    if not isinstance(default, Mapping) or not isinstance(default.get("name"), str):
        raise ConfigError(f"{source}: 'default' must be a segment name or a mapping with 'name'.")
    segments = raw.get("segments")
    if not isinstance(segments, list) or not segments:
        raise ConfigError(f"{source}: 'segments' must be a non-empty list.")
    compiled: list[tuple[str, re.Pattern[str]]] = []
    seg_keys = {"name", "pattern", "description", "action"}
    for i, seg in enumerate(segments):
        if not isinstance(seg, Mapping):
            raise ConfigError(f"{source}: segment #{i + 1} must be a mapping, got {seg!r}.")
        bad = sorted(set(seg) - seg_keys)
        if bad:
            raise ConfigError(
                f"{source}: segment #{i + 1} has unknown key(s) {bad}. Valid keys are {sorted(seg_keys)}."
            )
        name, pattern = seg.get("name"), seg.get("pattern")
        if not isinstance(name, str) or not isinstance(pattern, str | int):
            raise ConfigError(
                f"{source}: segment #{i + 1} needs a 'name' and a 'pattern' (regular expression)."
            )
        try:
            compiled.append((name, re.compile(str(pattern))))
        except re.error as exc:
            raise ConfigError(
                f"{source}: segment {name!r} has an invalid pattern {pattern!r} ({exc})."
            ) from None
    out = dict(raw)
    out.update(bins=bins, code=list(code), default=dict(default), _compiled=compiled)
    return out


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc}).") from None


def segment(
    scores: pd.DataFrame, segment_map: str | Path | Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Name each customer's RFM segment from a score map.

    Parameters
    ----------
    scores : pandas.DataFrame
        The result of :func:`score` (columns ``R``, ``F``, ``M``). Not modified.
    segment_map : path, mapping or None
        The map (see :func:`load_segment_map`); ``None`` uses the bundled
        ``bmkt/resources/rfm_segments.yaml``: the widely published grid of
        R and F quintiles (Champions, Loyal Customers, ..., Lost).

    Returns
    -------
    pandas.DataFrame
        ``scores`` with two more columns: ``segment_code`` (the code the map
        matches, e.g. ``"54"``) and ``segment`` (an ordered categorical in the
        map's order, catch-all last). Every customer gets exactly one segment.

    Raises
    ------
    ConfigError
        When the map is invalid or was written for another number of bins.
    DataError
        When score columns are missing or outside ``1..bins``.

    Examples
    --------
    >>> s = pd.DataFrame({"R": [5, 1], "F": [5, 1], "M": [4, 2]}, index=[1, 2])
    >>> segment(s)["segment"].tolist()
    ['Champions', 'Lost']
    """
    smap = load_segment_map(segment_map)
    bins = smap["bins"]
    got = scores.attrs.get("bins")
    if got is not None and got != bins:
        raise ConfigError(
            f"the segment map is written for bins={bins}, the scores have bins={got}; "
            "score with the map's bins or pass a map for yours."
        )
    letters = {p for part in smap["code"] for p in part}
    missing = sorted(c for c in letters if c not in scores.columns)
    if missing:
        raise data_problem(
            "scores",
            missing[0],
            len(scores),
            f"lack score column(s) {missing}; columns present",
            [str(c) for c in scores.columns],
        )
    parts: dict[str, np.ndarray] = {}
    for c in sorted(letters):
        v = pd.to_numeric(scores[c], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isfinite(v) | (v < 1) | (v > bins) | (v != np.round(v))
        if bad.any():
            raise data_problem(
                "scores",
                c,
                int(bad.sum()),
                f"are not integer scores 1..{bins}",
                list(scores[c][bad].head(5)),
            )
        parts[c] = v.astype("int64")
    if "FM" in smap["code"]:
        parts["FM"] = np.floor((parts["F"] + parts["M"]) / 2 + 0.5).astype("int64")
    num = np.zeros(len(scores), dtype="int64")
    for part in smap["code"]:
        num = num * 10 + parts[part]
    codes = _digits(num)

    names = list(dict.fromkeys(name for name, _ in smap["_compiled"]))
    default_name = smap["default"]["name"]
    categories = list(dict.fromkeys([*names, default_name]))
    # match each distinct code once (at most bins ** len(code) of them), then spread
    position, distinct = pd.factorize(codes)
    matched = [
        next((name for name, pat in smap["_compiled"] if pat.fullmatch(c)), default_name)
        for c in distinct
    ]
    which = np.array([categories.index(name) for name in matched], dtype="int64")
    out = scores.copy()
    out["segment_code"] = codes
    out["segment"] = pd.Categorical.from_codes(
        which[position] if len(which) else np.zeros(0, "int64"), categories=categories, ordered=True
    )
    counts = out["segment"].value_counts()
    if counts.get(default_name, 0):
        log.info(
            "segment: %d customer(s) fell to the catch-all %r", counts[default_name], default_name
        )
    return out
