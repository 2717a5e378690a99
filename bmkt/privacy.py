"""Erasure ("right to be forgotten") and the suppression list that makes it stick.

:func:`forget` deletes a customer's rows from the DuckDB store and records the
id in a **forgotten-customer suppression file**. Deleting is not enough on
its own: the next ingest of the source files, or a segment assignment computed
before the erasure, could bring the customer back. The suppression file is
what every later :func:`bmkt.plan.build_plan` reads (by default from
:func:`default_suppression_path`) so that a forgotten customer is never
emailed again.

The file is a CSV, ``customer_id,forgotten_at`` (UTC date of the erasure),
one id per line, next to the database: ``data/suppression_forgotten.csv`` for
``data/bmkt.duckdb``. It holds ids only, no addresses or other personal data.

Order of operations: the ids are written to the suppression file **before**
the rows are deleted, so a failure in between leaves a customer suppressed
but not yet deleted (safe; rerun :func:`forget`), never deleted but mailable.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bmkt import config
from bmkt.errors import ConfigError, DataError, format_examples

log = logging.getLogger(__name__)

__all__ = [
    "SUPPRESSION_FILENAME",
    "default_suppression_path",
    "read_suppression",
    "forget",
]

#: File name of the forgotten-customer suppression list (next to the database).
SUPPRESSION_FILENAME = config.SUPPRESSION_FILENAME

#: Tables cleared by :func:`forget`, children before parents.
_CONTRACT_TABLES = ("order_lines", "orders", "web_events", "email_events", "customers")


def default_suppression_path(db_path: str | os.PathLike[str] | None = None) -> Path:
    """Where the forgotten-customer suppression file lives: next to the database.

    Parameters
    ----------
    db_path : path-like, optional
        The DuckDB store; :data:`bmkt.config.DEFAULT_DB` when ``None``
        (so ``data/suppression_forgotten.csv`` by default).
    """
    return Path(db_path or config.DEFAULT_DB).parent / SUPPRESSION_FILENAME


def read_suppression(path: str | os.PathLike[str]) -> list[str]:
    """Read a suppression file: ids in file order, canonical text, duplicates dropped.

    Accepts the CSV written by :func:`forget` (a ``customer_id`` column) or a
    plain text file with one id per line (``#`` comments and blank lines are
    ignored). A missing file is an empty list.

    Returns
    -------
    list of str
        Ids as text (``"42"``), as :func:`bmkt.plan.id_strings` writes them.
    """
    from bmkt.plan import read_id_list

    path = Path(path)
    if not path.exists():
        return []
    return list(dict.fromkeys(read_id_list(path)))


def _ids_from(customer_ids: Iterable[Any] | str | os.PathLike[str]) -> list[str]:
    from bmkt.plan import id_strings, read_id_list

    if isinstance(customer_ids, str | os.PathLike):
        path = Path(customer_ids)
        if not path.is_file():
            raise ConfigError(f"customer id list {str(path)!r}: no such file.")
        values: list[Any] = read_id_list(path)
    else:
        values = list(customer_ids)
    keys = id_strings(pd.Series(values, dtype=object)).tolist()
    ids = [k.strip() for k in keys if k is not None and k.strip()]
    if any("@" in k for k in ids):
        raise ConfigError(
            "forget: expects customer ids, not email addresses. "
            f"Got {format_examples([k for k in ids if '@' in k][:1])}."
        )
    return list(dict.fromkeys(ids))


def _append_suppression(path: Path, ids: list[str]) -> int:
    """Add ``ids`` not yet in the file; write atomically. Returns how many were added."""
    existing = set(read_suppression(path))
    new = [i for i in ids if i not in existing]
    if not new:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b"customer_id,forgotten_at\n"
    if old and not old.endswith(b"\n"):
        old += b"\n"
    today = datetime.now(UTC).date().isoformat()
    frame = pd.DataFrame({"customer_id": new, "forgotten_at": today})
    added = frame.to_csv(index=False, header=False, lineterminator="\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(old + added)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(new)


def forget(
    db_path: str | os.PathLike[str],
    customer_ids: Iterable[Any] | str | os.PathLike[str],
    suppression_path: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Erase customers from the store and suppress them in every later plan.

    Deletes, in one transaction, the customers' rows from ``customers``,
    ``orders`` (and those orders' ``order_lines``), ``web_events`` and
    ``email_events``, plus their rows in any other table of the database that
    has a ``customer_id`` column (derived tables written by later stages).
    The ids are first appended to the suppression file (see the module
    docstring), also ids not found in the store: they may arrive with the
    next ingest.

    Parameters
    ----------
    db_path : path-like
        The DuckDB store (must exist).
    customer_ids : iterable or path-like
        Ids, or a file of ids (CSV with a ``customer_id`` column, or one per line).
    suppression_path : path-like, optional
        Default: :func:`default_suppression_path` of ``db_path``. Pass the same
        file to :func:`bmkt.plan.build_plan` (``forgotten=``) when it is not the
        default location.

    Returns
    -------
    dict
        Rows removed per table (``{"customers": 1, "orders": 3, ...}``).

    Raises
    ------
    ConfigError
        When the database does not exist, ids are missing, or an id cannot be
        an id of this store (text ids for an integer-keyed store).
    """
    import duckdb

    db_path = Path(db_path)
    if not db_path.is_file():
        raise ConfigError(f"{db_path}: no such DuckDB file.")
    ids = _ids_from(customer_ids)
    if not ids:
        raise ConfigError("forget: no customer ids given.")
    supp = Path(suppression_path) if suppression_path else default_suppression_path(db_path)

    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        raise ConfigError(f"{db_path}: cannot open the store for writing ({exc}).") from None
    try:
        tables = {
            r[0]: r[1]
            for r in con.execute(
                "SELECT c.table_name, c.data_type FROM information_schema.columns c "
                "JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) "
                "WHERE c.column_name = 'customer_id' AND c.table_schema = 'main' "
                "AND t.table_type = 'BASE TABLE'"
            ).fetchall()
        }
        present = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        if "customers" not in tables:
            raise DataError(f"{db_path}: no customers table to forget customers from.")
        key_type = tables["customers"].upper()
        if any(t in key_type for t in ("INT", "DECIMAL", "NUMERIC")):
            bad = [i for i in ids if not i.lstrip("-").isdigit()]
            if bad:
                raise ConfigError(
                    f"forget: customers.customer_id is {key_type} but {len(bad)} ids are not "
                    f"whole numbers, e.g. {format_examples(bad)}."
                )
            ids = list(dict.fromkeys(str(int(i)) for i in ids))  # "0007" is customer 7
            id_frame = pd.DataFrame({"customer_id": pd.array([int(i) for i in ids], "Int64")})
        else:
            id_frame = pd.DataFrame({"customer_id": ids})

        added = _append_suppression(supp, ids)
        log.info("added %d ids to the suppression list %s", added, supp)

        con.register("_bmkt_forget", id_frame)
        counts: dict[str, int] = {}
        con.execute("BEGIN TRANSACTION")
        try:
            if "order_lines" in present and "orders" in tables:
                counts["order_lines"] = _delete(
                    con,
                    "DELETE FROM order_lines WHERE order_id IN (SELECT order_id FROM orders "
                    "WHERE customer_id IN (SELECT customer_id FROM _bmkt_forget))",
                )
            others = sorted(t for t in tables if t not in _CONTRACT_TABLES)
            for name in [t for t in _CONTRACT_TABLES if t in tables] + others:
                counts[name] = _delete(
                    con,
                    f'DELETE FROM "{name}" WHERE CAST(customer_id AS VARCHAR) IN '
                    "(SELECT CAST(customer_id AS VARCHAR) FROM _bmkt_forget)",
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_bmkt_forget")
    finally:
        con.close()
    ordered = {t: counts[t] for t in _CONTRACT_TABLES if t in counts}
    ordered.update({t: n for t, n in counts.items() if t not in ordered})
    log.info("forgot %d customers in %s: %s", len(ids), db_path, ordered)
    return ordered


def _delete(con: Any, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0
