"""Validation of a store against the data contracts.

:func:`validate` checks every table of a store at once and reports **every**
problem, each naming the table, the column, the number of rows and up to five
examples. Nothing is fixed or dropped silently: a store with problems is not
ingested, and the CLI exits non-zero.

Checks
------
missing tables and columns; wrong types (text that is not a number, an
integer, a boolean or a timestamp); nulls where the contract forbids them;
duplicate keys; values outside the allowed set; identifiers that do not
resolve (orders of unknown customers, events of unknown campaigns);
timestamps after the run's ``as_of``; malformed email addresses; unknown IANA
time zones; non-positive quantities and negative prices or discounts.

The counting runs in the engine (one aggregate query per table, then one
small query per problem for its examples), so it works on tables far larger
than memory.

Privacy: problems in ``customers.email`` are illustrated with customer ids,
never with the addresses.
"""

from __future__ import annotations

import logging
import os
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import pandas as pd
from ibis.expr.types import Table

from bmkt.errors import ValidationError, format_examples
from bmkt.io import (
    FALSE_STRINGS,
    TRUE_STRINGS,
    Store,
    _conform_column,
    open_store,
    parse_timestamp,
)
from bmkt.schema import CONTRACTS, EMAIL_REGEX, Column, TableContract, parse_as_of

log = logging.getLogger(__name__)

__all__ = ["Problem", "ValidationReport", "validate"]

N_EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """One contract violation.

    Attributes
    ----------
    table, column : str
        Where (``column`` is None for table-level problems).
    check : str
        Machine-readable name of the check (``"unparseable_timestamp"``, ...).
    n_rows : int
        How many rows are affected.
    message : str
        What is wrong, in words.
    examples : tuple
        Up to five offending values (or identifiers of offending rows).
    example_label : str
        What the examples are, when they are not the column's values.
    """

    table: str
    column: str | None
    check: str
    n_rows: int
    message: str
    examples: tuple[Any, ...] = ()
    example_label: str = ""

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        noun = "row" if self.n_rows == 1 else "rows"
        text = f"{where}: {self.message} ({self.n_rows:,} {noun})"
        if self.examples:
            label = f"{self.example_label} " if self.example_label else ""
            text += f", e.g. {label}{format_examples(self.examples, N_EXAMPLES)}"
        return text


@dataclass
class ValidationReport:
    """Every problem found in a store, plus its row counts."""

    source: str
    as_of: pd.Timestamp | None
    row_counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __str__(self) -> str:
        counts = ", ".join(f"{n}={c:,}" for n, c in self.row_counts.items())
        head = f"{self.source}: {counts or 'no tables'}"
        if self.ok:
            return f"{head}\nOK: no problems found."
        lines = [head, f"{len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """The problems as a DataFrame (one row each)."""
        cols = ["table", "column", "check", "n_rows", "message", "examples"]
        return pd.DataFrame(
            [
                (p.table, p.column, p.check, p.n_rows, p.message, list(p.examples))
                for p in self.problems
            ],
            columns=cols,
        )

    def raise_if_failed(self) -> ValidationReport:
        """Raise :class:`~bmkt.errors.ValidationError` when there are problems."""
        if not self.ok:
            raise ValidationError(self)
        return self


@dataclass
class _Check:
    """A row-level check: rows where ``bad`` is true are problems."""

    column: str | None
    check: str
    message: str
    bad: ibis.BooleanValue
    example: ibis.Value
    example_label: str = ""


def _type_name(t: dt.DataType) -> str:
    return str(t).replace("!", "")


def _row_label(contract: TableContract, table: Table, column: str) -> list[str]:
    """Columns that identify a row in examples of a null or masked value."""
    keys = [k for k in contract.key if k != column and k in table.columns]
    if keys:
        return keys
    return [c for c in ("customer_id", "order_id") if c != column and c in table.columns][:1]


def _identify(values: Mapping[str, ibis.Value], cols: list[str]) -> tuple[ibis.Value, str]:
    if len(cols) == 1:
        return values[cols[0]], cols[0]
    return ibis.struct({c: values[c] for c in cols}), "(" + ", ".join(cols) + ")"


def _type_checks(
    table: Table,
    contract: TableContract,
    spec: Column,
    problems: list[Problem],
    checks: list[_Check],
    n: int,
) -> ibis.Value | None:
    """Check the column's type; return its value in canonical form (or None)."""
    col = table[spec.name]
    t = col.type()
    where = (contract.name, spec.name)
    not_null = col.notnull()

    def wrong_type(expected: str) -> None:
        problems.append(
            Problem(*where, "wrong_type", n, f"expected {expected}, got {_type_name(t)}")
        )

    if spec.kind == "id":
        if t.is_integer() or t.is_string():
            return col
        if t.is_floating():  # pandas turns integer columns with nulls into floats
            checks.append(
                _Check(
                    spec.name,
                    "not_integer",
                    "not an integer identifier",
                    not_null & (col != col.round(0)),
                    col,
                )
            )
            return col.cast(dt.int64)
        wrong_type("an integer or text identifier")
        return None
    if spec.kind == "string":
        return col.cast(dt.string)
    if spec.kind == "timestamp":
        if t.is_timestamp() or t.is_date():
            return parse_timestamp(col)
        if t.is_string():
            parsed = parse_timestamp(col)
            checks.append(
                _Check(
                    spec.name,
                    "unparseable_timestamp",
                    "unparseable timestamp",
                    not_null & parsed.isnull(),
                    col,
                )
            )
            return parsed
        wrong_type("a timestamp")
        return None
    if spec.kind in ("float", "int"):
        target = dt.float64 if spec.kind == "float" else dt.int64
        what = "a number" if spec.kind == "float" else "an integer"
        if t.is_string():
            parsed = col.try_cast(target)
            checks.append(
                _Check(spec.name, "not_numeric", f"not {what}", not_null & parsed.isnull(), col)
            )
            return parsed
        if spec.kind == "int" and t.is_floating():
            checks.append(
                _Check(
                    spec.name,
                    "not_integer",
                    "not an integer",
                    not_null & (col != col.round(0)),
                    col,
                )
            )
            return col
        if t.is_numeric():
            return col
        wrong_type(what)
        return None
    if spec.kind == "bool":
        if t.is_boolean():
            return col
        if t.is_string():
            low = col.strip().lower()
            ok = low.isin(TRUE_STRINGS + FALSE_STRINGS)
            checks.append(
                _Check(spec.name, "not_boolean", "not a boolean (true/false)", not_null & ~ok, col)
            )
            return low.isin(TRUE_STRINGS)
        if t.is_integer():
            checks.append(
                _Check(
                    spec.name,
                    "not_boolean",
                    "not a boolean (1/0)",
                    not_null & ~col.isin([0, 1]),
                    col,
                )
            )
            return col == 1
        wrong_type("a boolean")
        return None
    raise AssertionError(spec.kind)  # pragma: no cover - kinds are checked in schema


def _collect_examples(table: Table, chk: _Check) -> tuple[Any, ...]:
    ex = (
        table.filter(chk.bad)
        .select(_ex=chk.example)
        .distinct()
        .order_by("_ex")
        .limit(N_EXAMPLES)
        .to_pandas()["_ex"]
    )
    return tuple(_plain(v) for v in ex)


def _plain(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _validate_table(
    store: Store,
    contract: TableContract,
    cutoff: pd.Timestamp | None,
    id_types: Mapping[str, dt.DataType],
    problems: list[Problem],
) -> int:
    table = store.raw(contract.name)
    n = int(table.count().execute())
    checks: list[_Check] = []
    values: dict[str, ibis.Value] = {}
    present = []
    for spec in contract.columns:
        if spec.name not in table.columns:
            if spec.required:
                problems.append(
                    Problem(
                        contract.name, spec.name, "missing_column", n, "required column is missing"
                    )
                )
            continue
        value = _type_checks(table, contract, spec, problems, checks, n)
        if value is not None:
            values[spec.name] = value
            present.append(spec)
    for spec in present:
        value = values[spec.name]
        col = table[spec.name]
        if not spec.nullable:
            ident_cols = [c for c in _row_label(contract, table, spec.name) if c in values]
            ident, label = _identify(values, ident_cols) if ident_cols else (col, "")
            checks.append(
                _Check(
                    spec.name, "null", "null where a value is required", col.isnull(), ident, label
                )
            )
        if spec.values:
            checks.append(
                _Check(
                    spec.name,
                    "unexpected_value",
                    f"unexpected value (allowed: {', '.join(spec.values)})",
                    col.notnull() & ~value.isin(spec.values),
                    col,
                )
            )
        if spec.kind == "timestamp" and cutoff is not None:
            checks.append(
                _Check(
                    spec.name,
                    "after_as_of",
                    f"timestamp after as_of (data must end before {cutoff})",
                    value >= ibis.literal(cutoff.to_pydatetime()),
                    value.cast(dt.string),
                )
            )
        if (
            spec.kind == "id"
            and spec.name in id_types
            and id_types[spec.name].is_integer()
            and col.type().is_string()
        ):
            owner = next(
                (f"{t}.{c}" for name, (t, c) in contract.references.items() if name == spec.name),
                "the other tables",
            )
            checks.append(
                _Check(
                    spec.name,
                    "id_kind",
                    f"text identifier where {owner} holds integers",
                    col.notnull() & col.try_cast(dt.int64).isnull(),
                    col,
                )
            )
    if contract.name == "customers" and "email" in values and "customer_id" in table.columns:
        email = values["email"]
        checks.append(
            _Check(
                "email",
                "malformed_email",
                "malformed email address",
                email.notnull() & ~email.re_search(EMAIL_REGEX),
                table.customer_id,
                "customer_id",
            )
        )
    for name, message, bad in (
        ("quantity", "quantity below 1", lambda v: v < 1),
        ("price", "negative price", lambda v: v < 0),
        ("discount", "negative discount", lambda v: v < 0),
    ):
        if name in values and contract.column(name).kind in ("int", "float"):
            checks.append(
                _Check(
                    name,
                    f"out_of_range_{name}",
                    message,
                    bad(values[name]).fill_null(False),
                    table[name],
                )
            )
    _run_checks(table, contract, checks, problems)
    _check_keys(table.mutate(**values), contract, problems)
    if contract.name == "customers" and "timezone" in table.columns:
        _check_timezones(table, problems)
    return n


def _run_checks(
    table: Table, contract: TableContract, checks: list[_Check], problems: list[Problem]
) -> None:
    if not checks:
        return
    counts = (
        table.aggregate(
            **{
                f"c{i}": chk.bad.fill_null(False).cast(dt.int64).sum()
                for i, chk in enumerate(checks)
            }
        )
        .to_pandas()
        .iloc[0]
    )
    for i, chk in enumerate(checks):
        k = int(counts[f"c{i}"] or 0)
        if k:
            problems.append(
                Problem(
                    contract.name,
                    chk.column,
                    chk.check,
                    k,
                    chk.message,
                    _collect_examples(table, chk),
                    chk.example_label,
                )
            )


def _check_keys(table: Table, contract: TableContract, problems: list[Problem]) -> None:
    key = [k for k in contract.key if k in table.columns]
    if not key or len(key) != len(contract.key):
        return
    dup = (
        table.filter(*[table[k].notnull() for k in key])
        .group_by(key)
        .aggregate(_n=lambda t: t.count())
        .filter(lambda t: t._n > 1)
    )
    stats = dup.aggregate(rows=dup._n.sum(), keys=dup.count()).to_pandas().iloc[0]
    rows = int(stats["rows"] or 0)
    if rows:
        ex = dup.order_by(key).limit(N_EXAMPLES).to_pandas()
        examples = tuple(_plain(v) for v in (ex[key[0]] if len(key) == 1 else ex[key].values))
        problems.append(
            Problem(
                contract.name,
                ",".join(key),
                "duplicate_key",
                rows,
                f"duplicate key ({int(stats['keys'])} value(s) occur more than once)",
                examples,
            )
        )


def _check_timezones(table: Table, problems: list[Problem]) -> None:
    col = table.timezone
    found = (
        table.filter(col.notnull())
        .group_by(tz=col.cast(dt.string))
        .aggregate(_n=lambda t: t.count())
        .to_pandas()
    )
    valid = zoneinfo.available_timezones()
    bad = found[~found.tz.isin(valid)].sort_values("tz")
    if len(bad):
        problems.append(
            Problem(
                "customers",
                "timezone",
                "unknown_timezone",
                int(bad._n.sum()),
                "not an IANA time zone name",
                tuple(bad.tz.head(N_EXAMPLES)),
            )
        )


def _check_references(
    store: Store,
    contract: TableContract,
    id_types: Mapping[str, dt.DataType],
    problems: list[Problem],
    failed: set[tuple[str, str]],
) -> None:
    for col, (target, target_col) in contract.references.items():
        if target not in store or col not in store.raw(contract.name).columns:
            continue
        if (contract.name, col) in failed or (target, target_col) in failed:
            continue
        if target_col not in store.raw(target).columns:
            continue
        if target_col not in store.raw(target).columns:
            continue
        child_raw, parent_raw = store.raw(contract.name), store.raw(target)
        child = child_raw.select(_k=_conform_column(child_raw[col], contract.column(col), id_types))
        parent = parent_raw.select(
            _k=_conform_column(
                parent_raw[target_col], CONTRACTS[target].column(target_col), id_types
            )
        )
        orphans = child.filter(child._k.notnull()).anti_join(parent, "_k").rename({col: "_k"})
        n = int(orphans.count().execute())
        if n:
            ex = (
                orphans.select(v=orphans[col])
                .distinct()
                .order_by("v")
                .limit(N_EXAMPLES)
                .to_pandas()["v"]
            )
            noun = target[:-1] if target.endswith("s") else target
            problems.append(
                Problem(
                    contract.name,
                    col,
                    "unknown_reference",
                    n,
                    f"unknown {noun}: not in {target}.{target_col}",
                    tuple(_plain(v) for v in ex),
                )
            )


def validate(
    source: str | os.PathLike[str] | Mapping[str, pd.DataFrame] | Store,
    as_of: str | pd.Timestamp | None = None,
) -> ValidationReport:
    """Check a store against the data contracts and report every problem.

    Parameters
    ----------
    source : path-like, mapping of DataFrames, or Store
        A folder of CSV/Parquet files, a DuckDB file, or DataFrames by name
        (see :func:`bmkt.io.open_store`).
    as_of : str or Timestamp, optional
        The run date. Timestamps after it are reported (a date means through
        the end of that day; see :func:`bmkt.schema.parse_as_of`).

    Returns
    -------
    ValidationReport
        ``report.ok`` is True when nothing was found; ``str(report)`` lists
        every problem; ``report.raise_if_failed()`` raises
        :class:`~bmkt.errors.ValidationError`.

    Examples
    --------
    >>> import pandas as pd
    >>> customers = pd.DataFrame({"customer_id": [1, 1], "email": ["a@x.com", "nope"],
    ...     "created_at": ["2024-01-01", "2024-01-02"], "email_status": ["subscribed"] * 2,
    ...     "email_consent": [True, True]})
    >>> orders = pd.DataFrame({"order_id": [1], "customer_id": [2],
    ...     "ordered_at": ["2024-02-01"], "revenue": [10.0]})
    >>> print(validate({"customers": customers, "orders": orders}))  # doctest: +ELLIPSIS
    DataFrames: customers=2, orders=1
    3 problem(s):
      - customers.email: malformed email address (1 row), e.g. customer_id [1]
      - customers.customer_id: duplicate key (1 value(s) occur more than once) (2 rows), e.g. [1]
      - orders.customer_id: unknown customer: not in customers.customer_id (1 row), e.g. [2]
    """
    store = open_store(source)
    cutoff = parse_as_of(as_of) if as_of is not None else None
    report = ValidationReport(source=store.source, as_of=cutoff)
    problems = report.problems
    for name, contract in CONTRACTS.items():
        if name not in store:
            if contract.required:
                problems.append(
                    Problem(name, None, "missing_table", 0, "required table is missing")
                )
            elif name == "campaigns" and "email_events" in store:
                problems.append(
                    Problem(
                        name,
                        None,
                        "missing_table",
                        0,
                        "table is missing (email_events refers to it)",
                    )
                )
    id_types = store.id_types()
    for name, contract in CONTRACTS.items():
        if name in store:
            report.row_counts[name] = _validate_table(store, contract, cutoff, id_types, problems)
    failed = {
        (p.table, p.column)
        for p in problems
        if p.check in ("wrong_type", "missing_column", "id_kind") and p.column
    }
    for name, contract in CONTRACTS.items():
        if name in store:
            _check_references(store, contract, id_types, problems, failed)
    log.info("validated %s: %d problem(s)", store.source, len(problems))
    return report
