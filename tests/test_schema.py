"""Data contracts: their invariants, the as_of rule, and the README staying in sync."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bmkt.errors import ConfigError
from bmkt.schema import CONTRACTS, REQUIRED_TABLES, Column, contracts_markdown, parse_as_of

ROOT = Path(__file__).resolve().parents[1]


def test_required_tables_and_references_resolve() -> None:
    assert REQUIRED_TABLES == ("customers", "orders")
    for contract in CONTRACTS.values():
        for col, (table, target) in contract.references.items():
            assert col in contract.column_names
            assert target in CONTRACTS[table].key, f"{contract.name}.{col} -> {table}.{target}"
        for k in contract.key:
            assert not contract.column(k).nullable


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="Valid options for 'kind'.*Got 'decimal'"):
        Column("x", "decimal", "")


@pytest.mark.parametrize(
    ("as_of", "end"),
    [
        ("2024-06-30", "2024-07-01 00:00:00"),
        (pd.Timestamp("2024-06-30"), "2024-07-01 00:00:00"),
        ("2024-06-30 12:00", "2024-06-30 12:00:00.000001"),
        ("2024-06-30T12:00:00+02:00", "2024-06-30 10:00:00.000001"),
    ],
)
def test_as_of_means_through_the_end_of_that_day(as_of: object, end: str) -> None:
    assert parse_as_of(as_of) == pd.Timestamp(end)


def test_bad_as_of() -> None:
    with pytest.raises(ConfigError, match="as_of: cannot parse 'tomorrow-ish'"):
        parse_as_of("tomorrow-ish")


def test_readme_documents_the_current_contracts() -> None:
    readme = (ROOT / "README.md").read_text()
    assert contracts_markdown() in readme, "README contracts are stale: paste `bmkt contracts`"
