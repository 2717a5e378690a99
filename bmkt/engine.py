"""The query engine: Ibis expressions, executed by embedded DuckDB by default.

Feature code in bmkt is written as Ibis expressions over the contract tables,
so the same code runs on DuckDB (the default), on Spark through Ibis's PySpark
backend, or on a warehouse Ibis supports. This module owns the connection and
the two conversions at the edges: data in (:func:`as_table`) and the model
boundary out (:func:`to_pandas`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
from ibis.expr.types import Table

from bmkt import config

log = logging.getLogger(__name__)

__all__ = ["connect", "as_table", "to_pandas", "default_connection", "Table"]

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
    """Execute ``expr`` and return a pandas DataFrame (the model boundary)."""
    return expr.to_pandas(**kwargs)
