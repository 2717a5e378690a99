"""One exception hierarchy for everything a user can act on.

Every error bmkt raises on purpose derives from :class:`BmktError`, so the
CLI can turn it into one readable message and a non-zero exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BmktError(Exception):
    """Base class of every error bmkt raises on purpose."""


class ConfigError(BmktError, ValueError):
    """A parameter, option or configuration file is invalid."""


class DataError(BmktError, ValueError):
    """Input data break the contract (wrong columns, types, keys or values)."""


class ValidationError(DataError):
    """Validation found problems; ``report`` holds every one of them."""

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__(str(report))


class ModelError(BmktError, RuntimeError):
    """A model could not be fitted or used (e.g. did not converge, not fitted)."""


class NotFittedError(ModelError, AttributeError):
    """An estimator was used before ``fit``."""


class PublishError(BmktError, RuntimeError):
    """Outputs could not be published; nothing partial was left behind."""


def format_examples(values: Sequence[Any], limit: int = 5) -> str:
    """Render up to ``limit`` example values for an error message."""
    shown = [repr(v) for v in list(values)[:limit]]
    return "[" + ", ".join(shown) + "]"


def data_problem(
    table: str,
    column: str | None,
    n_rows: int,
    what: str,
    examples: Sequence[Any] = (),
) -> DataError:
    """Build a :class:`DataError` naming the table, column, row count and examples.

    Examples
    --------
    >>> str(data_problem("orders", "revenue", 3, "is not numeric", ["a", "b"]))
    "orders.revenue: 3 rows is not numeric, e.g. ['a', 'b']"
    """
    where = f"{table}.{column}" if column else table
    noun = "row" if n_rows == 1 else "rows"
    msg = f"{where}: {n_rows} {noun} {what}"
    if len(examples):
        msg += f", e.g. {format_examples(examples)}"
    return DataError(msg)
