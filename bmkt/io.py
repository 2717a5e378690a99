"""Loading the contract tables and ingesting them into the embedded store.

Four kinds of source are accepted everywhere a store is expected:

* a **folder** holding ``<table>.parquet``, ``<table>.csv`` (``.csv.gz``) or a
  ``<table>/`` folder of (hive-partitioned) Parquet files,
* a **DuckDB file** (``data/bmkt.duckdb``, as written by :func:`ingest`),
* a **dict of pandas DataFrames** keyed by table name,
* an **Ibis connection** (a warehouse, Spark) holding the contract tables.

:func:`open_store` reads any of them lazily: files become views on the
connection (embedded DuckDB by default, or Spark: :func:`bmkt.engine.connect_spark`),
nothing is materialised in pandas. :class:`Store` then hands out the tables *as read*
(:meth:`Store.raw`, what validation inspects) or *conformed* to the contract
(:meth:`Store.table`: canonical types, UTC timestamps, optional columns added
as nulls), which is what feature code uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import pandas as pd
from ibis.backends import BaseBackend
from ibis.expr.types import Table

from bmkt import config, engine
from bmkt.errors import ConfigError, DataError
from bmkt.schema import CONTRACTS, Column, TableContract

log = logging.getLogger(__name__)

__all__ = ["Store", "open_store", "ingest", "fingerprint", "TRUE_STRINGS", "FALSE_STRINGS"]

#: Text accepted as booleans (case-insensitive) in CSV files.
TRUE_STRINGS = ("true", "t", "yes", "y", "1")
FALSE_STRINGS = ("false", "f", "no", "n", "0")

#: Which table decides the type of an identifier shared by several tables.
ID_OWNERS = {
    "customer_id": ("customers", "customer_id"),
    "order_id": ("orders", "order_id"),
    "campaign_id": ("campaigns", "campaign_id"),
}

_FILE_SUFFIXES = (".parquet", ".csv", ".csv.gz")
_IGNORED_STEMS = {"truth"}  # the simulator's ground truth sits beside the store


@dataclass
class Store:
    """The contract tables of one source, as lazy Ibis tables.

    Parameters
    ----------
    con : ibis backend
        The connection the tables live on.
    raw_tables : dict
        Table name -> Ibis table exactly as read.
    source : str
        Where the tables came from (for messages and manifests).
    files : dict
        Table name -> the file or folder it was read from (folder sources).
    """

    con: Any
    raw_tables: dict[str, Table]
    source: str
    files: dict[str, Path] = field(default_factory=dict)
    _conformed: dict[str, Table] = field(default_factory=dict, repr=False)
    #: Facts computed from the tables (e.g. the latest event), keyed by what they read.
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __contains__(self, name: object) -> bool:
        return name in self.raw_tables

    @property
    def names(self) -> list[str]:
        """Names of the contract tables present, in contract order."""
        return [n for n in CONTRACTS if n in self.raw_tables]

    def raw(self, name: str) -> Table:
        """The table ``name`` as read, before any normalisation."""
        if name not in self.raw_tables:
            raise DataError(
                f"{name}: table is missing from {self.source} "
                f"(found: {', '.join(self.names) or 'none'})"
            )
        return self.raw_tables[name]

    def table(self, name: str) -> Table:
        """The table ``name`` conformed to its contract (see :func:`conform_table`).

        Missing optional tables come back empty with the contract's columns.
        """
        if name not in self._conformed:
            contract = CONTRACTS[name]
            if name in self.raw_tables:
                self._conformed[name] = conform_table(
                    self.raw_tables[name], contract, self.id_types()
                )
            elif contract.required:
                self.raw(name)  # raises a DataError naming the table
            else:
                self._conformed[name] = empty_table(contract, self.id_types())
        return self._conformed[name]

    def id_types(self) -> dict[str, dt.DataType]:
        """The canonical type of every identifier column name.

        ``customer_id``, ``order_id`` and ``campaign_id`` take the type of their
        owning table's key; any other id is an integer if every table holds it
        as an integer, text otherwise.
        """
        types: dict[str, dt.DataType] = {}
        for col_name, (owner, owner_col) in ID_OWNERS.items():
            if owner in self.raw_tables and owner_col in self.raw_tables[owner].columns:
                types[col_name] = _id_type(self.raw_tables[owner][owner_col].type())
        for contract in CONTRACTS.values():
            for col in contract.columns:
                if col.kind != "id" or col.name in types:
                    continue
                found = [
                    self.raw_tables[t.name][col.name].type()
                    for t in CONTRACTS.values()
                    if t.name in self.raw_tables and col.name in self.raw_tables[t.name].columns
                ]
                all_int = all(f.is_integer() or f.is_floating() for f in found)
                types[col.name] = dt.int64 if all_int else dt.string
        return types

    def row_counts(self) -> dict[str, int]:
        """Number of rows of every table present."""
        return {n: int(self.raw_tables[n].count().execute()) for n in self.names}


def _id_type(t: dt.DataType) -> dt.DataType:
    # floats: pandas turns integer ids with nulls into floats
    return dt.int64 if (t.is_integer() or t.is_floating()) else dt.string


def _find_table_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in CONTRACTS:
        candidates = [folder / f"{name}{s}" for s in _FILE_SUFFIXES]
        part_dir = folder / name
        if part_dir.is_dir():
            candidates.append(part_dir)
        present = [c for c in candidates if c.exists()]
        if len(present) > 1:
            raise ConfigError(
                f"{name}: more than one file for the table in {folder}: "
                f"{', '.join(p.name for p in present)}. Keep one."
            )
        if present:
            found[name] = present[0]
    known = set(found.values())
    for entry in sorted(folder.iterdir()):
        stem = entry.name.split(".")[0]
        if entry not in known and stem not in _IGNORED_STEMS and not entry.name.startswith("."):
            log.info("ignoring %s: not a contract table", entry)
    return found


def _read_file(con: Any, name: str, path: Path) -> Table:
    if path.is_dir():
        if con.name != "duckdb":  # Spark reads a folder, discovering hive partitions itself
            return con.read_parquet(str(path), table_name=name)
        pattern = str(path / "**" / "*.parquet")
        return con.read_parquet(pattern, table_name=name, hive_partitioning=True)
    if path.name.endswith(".parquet"):
        return con.read_parquet(str(path), table_name=name)
    return con.read_csv(str(path), table_name=name)


def open_store(
    source: str | os.PathLike[str] | Mapping[str, pd.DataFrame] | Store | BaseBackend,
    con: Any = None,
    *,
    read_only: bool = True,
) -> Store:
    """Open a store from a folder, a DuckDB file, a dict of DataFrames or a connection.

    Parameters
    ----------
    source : path-like, mapping, Store or ibis backend
        See the module docstring. An Ibis connection (a warehouse, Spark,
        DuckDB) stands for the contract tables already in it, by their names
        (``customers``, ``orders``, ...; others are ignored).
    con : ibis backend, optional
        Connection to register files or frames on (a new in-memory DuckDB
        connection by default), e.g. Spark's from
        :func:`bmkt.engine.connect_spark`. Ignored for DuckDB files. Tables
        are registered under fixed names (``orders``, ``_raw_orders``, ...):
        a second store of the same kind opened on one connection replaces
        the first one's tables.
    read_only : bool
        Open a DuckDB file read-only (default).

    Returns
    -------
    Store

    Raises
    ------
    ConfigError
        If the source does not exist or is of an unknown kind.
    """
    if isinstance(source, Store):
        return source
    if isinstance(source, BaseBackend):
        present = set(source.list_tables())
        tables = {n: source.table(n) for n in CONTRACTS if n in present}
        return Store(con=source, raw_tables=tables, source=f"{source.name} connection")
    if isinstance(source, Mapping):
        con = con if con is not None else engine.connect()
        tables: dict[str, Table] = {}
        for name, frame in source.items():
            if name not in CONTRACTS:
                if name not in _IGNORED_STEMS:
                    log.info("ignoring frame %r: not a contract table", name)
                continue
            if not isinstance(frame, pd.DataFrame):
                raise ConfigError(
                    f"{name}: expected a pandas DataFrame, got {type(frame).__name__}."
                )
            expr = ibis.memtable(frame)
            # all-null object columns (e.g. an empty frame) have no type: take the contract's
            untyped = {c: t for c, t in expr.schema().items() if t.is_null()}
            if untyped:
                kinds = {c.name: c for c in CONTRACTS[name].columns}
                expr = expr.mutate(
                    **{
                        c: expr[c].cast(_kind_type(kinds[c], {}) if c in kinds else dt.string)
                        for c in untyped
                    }
                )
            tables[name] = engine.register_table(con, f"_raw_{name}", expr)
        return Store(con=con, raw_tables=tables, source="DataFrames")
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder.")
    if path.is_dir():
        con = con if con is not None else engine.connect()
        files = _find_table_files(path)
        tables = {name: _read_file(con, name, p) for name, p in files.items()}
        return Store(con=con, raw_tables=tables, source=str(path), files=files)
    if path.suffix in (".duckdb", ".db", ".ddb"):
        con = engine.connect(path, read_only=read_only)
        present = set(con.list_tables())
        tables = {n: con.table(n) for n in CONTRACTS if n in present}
        return Store(con=con, raw_tables=tables, source=str(path))
    raise ConfigError(f"{path}: expected a folder of CSV/Parquet files or a DuckDB file (.duckdb).")


# --------------------------------------------------------------------------- conforming


def parse_timestamp(col: ibis.Value) -> ibis.Value:
    """Normalise a column to naive UTC timestamps (the documented rule).

    Zone-aware values are converted to UTC; naive values are taken as UTC;
    text is parsed (ISO 8601, with or without an offset); unparseable text
    becomes null (validation reports it before this ever runs).
    """
    t = col.type()
    if t.is_timestamp():
        return col.cast(dt.Timestamp()) if t.timezone is not None else col
    if t.is_date():
        return col.cast(dt.Timestamp())
    if t.is_string():
        return col.try_cast(dt.Timestamp(timezone="UTC")).cast(dt.Timestamp())
    return col.try_cast(dt.Timestamp())


def parse_bool(col: ibis.Value) -> ibis.Value:
    """Normalise a column to booleans (text: true/false, yes/no, 1/0, t/f, y/n)."""
    t = col.type()
    if t.is_boolean():
        return col
    if t.is_string():
        low = col.strip().lower()
        return ibis.cases(
            (low.isin(TRUE_STRINGS), ibis.literal(True)),
            (low.isin(FALSE_STRINGS), ibis.literal(False)),
            else_=ibis.null(dt.boolean),
        )
    if t.is_numeric():
        return ibis.cases((col == 1, True), (col == 0, False), else_=ibis.null(dt.boolean))
    return col.try_cast(dt.boolean)


def _conform_column(
    col: ibis.Value, spec: Column, id_types: Mapping[str, dt.DataType]
) -> ibis.Value:
    kind = spec.kind
    if kind == "timestamp":
        return parse_timestamp(col)
    if kind == "bool":
        return parse_bool(col)
    if kind == "float":
        return col.try_cast(dt.float64) if col.type().is_string() else col.cast(dt.float64)
    if kind == "int":
        return col.try_cast(dt.int64) if col.type().is_string() else col.cast(dt.int64)
    if kind == "id":
        target = id_types.get(spec.name, _id_type(col.type()))
        if target.is_integer():
            return col.try_cast(dt.int64) if col.type().is_string() else col.cast(dt.int64)
        return col.cast(dt.string)
    return col.cast(dt.string)


def _kind_type(spec: Column, id_types: Mapping[str, dt.DataType]) -> dt.DataType:
    return {
        "timestamp": dt.Timestamp(),
        "bool": dt.boolean,
        "float": dt.float64,
        "int": dt.int64,
        "string": dt.string,
    }.get(spec.kind) or id_types.get(spec.name, dt.int64)


def conform_table(
    table: Table, contract: TableContract, id_types: Mapping[str, dt.DataType]
) -> Table:
    """Select the contract's columns from ``table`` with canonical types.

    Missing optional columns are added as typed nulls; columns outside the
    contract are dropped. Validate first: values that cannot be converted
    become null here.
    """
    exprs = {}
    for spec in contract.columns:
        if spec.name in table.columns:
            exprs[spec.name] = _conform_column(table[spec.name], spec, id_types)
        elif spec.required:
            raise DataError(
                f"{contract.name}.{spec.name}: required column is missing "
                f"(columns present: {', '.join(table.columns)})"
            )
        else:
            exprs[spec.name] = ibis.null(_kind_type(spec, id_types))
    return table.select(**exprs)


def empty_table(contract: TableContract, id_types: Mapping[str, dt.DataType]) -> Table:
    """An empty table with the contract's columns and canonical types."""
    schema = ibis.schema({c.name: _kind_type(c, id_types) for c in contract.columns})
    return ibis.memtable(pd.DataFrame(columns=list(schema.names)), schema=schema)


# --------------------------------------------------------------------------- ingest


def fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of every file below a folder (names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _erase_forgotten(con: Any, path: Path, counts: dict[str, int]) -> dict[str, int]:
    """Delete rows of customers on the forgotten list from freshly loaded tables.

    Right to erasure survives re-ingesting an old export: customers ``bmkt
    forget`` removed are removed again. Returns rows removed per table (and
    lowers ``counts`` accordingly).
    """
    if not path.is_file():
        return {}
    p = path.as_posix().replace("'", "''")
    ids = (
        f"SELECT CAST(customer_id AS VARCHAR) FROM read_csv('{p}', header=true, "
        "all_varchar=true) WHERE customer_id IS NOT NULL"
    )
    # qualified names: a folder source registers temporary views of the same names
    db = con.con.execute("SELECT current_database()").fetchone()[0]

    def q(name: str) -> str:
        return f'"{db}".main."{name}"'

    removed: dict[str, int] = {}
    if "order_lines" in counts and "orders" in counts:
        n = con.con.execute(
            f"DELETE FROM {q('order_lines')} WHERE order_id IN (SELECT order_id FROM "
            f"{q('orders')} WHERE CAST(customer_id AS VARCHAR) IN ({ids}))"
        ).fetchone()[0]
        removed["order_lines"] = int(n)
    for name in ("orders", "web_events", "email_events", "customers"):
        if name in counts:
            n = con.con.execute(
                f"DELETE FROM {q(name)} WHERE CAST(customer_id AS VARCHAR) IN ({ids})"
            ).fetchone()[0]
            removed[name] = int(n)
    for name, n in removed.items():
        counts[name] -= n
    return {k: v for k, v in removed.items() if v}


def ingest(
    source: str | os.PathLike[str] | Mapping[str, pd.DataFrame],
    db_path: str | os.PathLike[str],
    *,
    as_of: str | pd.Timestamp | None = None,
    validate: bool = True,
) -> dict[str, int]:
    """Load a folder (or DataFrames) into the DuckDB store, conformed to the contract.

    Idempotent: every table is replaced (``CREATE OR REPLACE``), so running it
    twice leaves the same data, not doubled rows. Tables absent from the source
    are left as they are in the database. The load runs in one transaction:
    when it fails, the database keeps its previous contents. Customers on the
    forgotten list next to the database (``bmkt forget``) are left out again,
    and how many rows that removed is logged.

    Parameters
    ----------
    source : path-like or mapping
        Folder of CSV/Parquet files, or dict of DataFrames.
    db_path : path-like
        The DuckDB file to write (created if missing).
    as_of : str or Timestamp, optional
        Run date handed to validation (timestamps after it are errors).
    validate : bool
        Validate before loading (default). With problems, nothing is loaded
        and :class:`~bmkt.errors.ValidationError` is raised.

    Returns
    -------
    dict
        Rows loaded per table.
    """
    from bmkt.validate import validate as run_validation

    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = engine.connect(db_path, read_only=False)
    try:
        store = open_store(source, con=con)
        if validate:
            run_validation(store, as_of=as_of).raise_if_failed()
        if not store.names:
            raise DataError(f"{store.source}: no contract tables found to ingest.")
        counts: dict[str, int] = {}
        con.raw_sql("BEGIN TRANSACTION")
        try:
            for name in store.names:
                expr = store.table(name)
                con.raw_sql(f'CREATE OR REPLACE TABLE "{name}" AS {con.compile(expr)}')
                counts[name] = int(
                    con.con.execute(f'SELECT count(*) FROM main."{name}"').fetchone()[0]
                )
            erased = _erase_forgotten(con, db_path.parent / config.SUPPRESSION_FILENAME, counts)
            meta = pd.DataFrame(
                {
                    "table_name": list(counts),
                    "rows": list(counts.values()),
                    "source": store.source,
                    "fingerprint": [
                        fingerprint(store.files[n]) if n in store.files else None for n in counts
                    ],
                    "ingested_at": datetime.now(UTC).replace(tzinfo=None),
                }
            )
            con.raw_sql(
                "CREATE TABLE IF NOT EXISTS _bmkt_ingest (table_name VARCHAR PRIMARY KEY, "
                "rows BIGINT, source VARCHAR, fingerprint VARCHAR, ingested_at TIMESTAMP)"
            )
            con.con.register("_bmkt_ingest_new", meta)
            con.raw_sql("INSERT OR REPLACE INTO _bmkt_ingest SELECT * FROM _bmkt_ingest_new")
            con.con.unregister("_bmkt_ingest_new")
            con.raw_sql("COMMIT")
        except BaseException:
            con.raw_sql("ROLLBACK")
            raise
        if erased:
            log.warning(
                "left out customers forgotten earlier (%s): %s",
                config.SUPPRESSION_FILENAME,
                json.dumps(erased),
            )
        log.info("ingested %s into %s: %s", store.source, db_path, json.dumps(counts))
        return counts
    finally:
        con.disconnect()
