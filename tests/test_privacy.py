"""Forgetting customers: rows removed everywhere, suppression that outlives re-ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

import bmkt.privacy as privacy
from bmkt.errors import ConfigError
from bmkt.io import ingest, open_store
from bmkt.plan import build_plan, load_campaigns
from bmkt.privacy import default_suppression_path, forget, read_suppression
from tests.test_validate import make_store


def full_store() -> dict[str, pd.DataFrame]:
    """The validation test store plus order lines and web events."""
    store = make_store()
    store["customers"].loc[2, ["email", "email_status"]] = ["c@example.com", "subscribed"]
    store["order_lines"] = pd.DataFrame(
        {
            "order_id": [10, 10, 11, 12],
            "product_id": [1, 2, 3, 4],
            "category": ["a", "b", "a", "c"],
            "quantity": [1, 2, 1, 1],
            "price": [10.0, 5.0, 5.0, 12.5],
        }
    )
    store["web_events"] = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3],
            "occurred_at": pd.to_datetime(["2024-03-01"] * 4),
            "event_type": ["page_view", "add_to_cart", "page_view", "search"],
            "product_id": [None, 1, None, None],
            "category": [None, "a", None, None],
        }
    )
    return store


def counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        tables = ["customers", "orders", "order_lines", "web_events", "email_events", "derived"]
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "bmkt.duckdb"
    ingest(full_store(), path)
    with duckdb.connect(str(path)) as con:  # a later stage's table keyed by customer
        con.execute("create table derived as select customer_id, 1 as score from customers")
    return path


def plan(source: Any, forgotten: Path) -> Any:
    campaigns = load_campaigns(
        {
            "campaigns": [
                {
                    "campaign_id": "all",
                    "template": "x.html",
                    "audience": {"segments": ["x"]},
                    "holdout_share": 0.0,
                }
            ]
        }
    )
    assignment = pd.DataFrame({"segment": "x"}, index=pd.Index([1, 2, 3], name="customer_id"))
    return build_plan(source, assignment, None, campaigns, "2024-06-30", forgotten=forgotten)


def test_forget_removes_rows_and_suppresses(db: Path) -> None:
    assert counts(db) == {
        "customers": 3,
        "orders": 3,
        "order_lines": 4,
        "web_events": 4,
        "email_events": 3,
        "derived": 3,
    }
    removed = forget(db, [1])
    assert removed == {
        "order_lines": 3,
        "orders": 2,
        "web_events": 2,
        "email_events": 2,
        "customers": 1,
        "derived": 1,
    }
    assert counts(db) == {
        "customers": 2,
        "orders": 1,
        "order_lines": 1,
        "web_events": 2,
        "email_events": 1,
        "derived": 2,
    }
    supp = default_suppression_path(db)
    assert supp == db.parent / "suppression_forgotten.csv"
    assert read_suppression(supp) == ["1"]
    assert supp.read_text().startswith("customer_id,forgotten_at\n1,")

    # the next plan excludes them: 1 is gone from the store but still in the assignment
    p = plan(open_store(db), supp)
    assert set(p.sends["customer_id"]) == {3}
    reasons = p.exclusions.rows.set_index("customer_id")
    assert reasons.loc[1, "reason"] == "forgotten"
    assert reasons.loc[1, "reasons"] == "forgotten;unknown_customer"
    assert p.params["forgotten"] == {"source": str(supp), "ids": 1}

    # ... even after the source is ingested again and the customer is back
    ingest(full_store(), db)
    p = plan(open_store(db), supp)
    assert set(p.sends["customer_id"]) == {3}
    assert p.exclusions.rows.set_index("customer_id").loc[1, "reason"] == "forgotten"


def test_forget_is_idempotent_and_reads_id_files(db: Path, tmp_path: Path) -> None:
    ids = tmp_path / "erase.txt"
    ids.write_text("# erasure requests\n3\n1\n")
    supp = tmp_path / "elsewhere" / "forgotten.csv"
    assert forget(db, ids, suppression_path=supp)["customers"] == 2
    again = forget(db, ["1", 3.0, 42], suppression_path=supp)
    assert set(again.values()) == {0}
    assert read_suppression(supp) == ["3", "1", "42"]  # unknown ids are suppressed too
    assert not default_suppression_path(db).exists()


def test_forget_rejects_bad_input(db: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such DuckDB file"):
        forget(tmp_path / "missing.duckdb", [1])
    with pytest.raises(ConfigError, match="no customer ids given"):
        forget(db, [])
    with pytest.raises(
        ConfigError,
        match=r"customers.customer_id is BIGINT but 1 ids are not whole numbers, e.g. \['abc'\]",
    ):
        forget(db, [1, "abc"])
    with pytest.raises(ConfigError, match="expects customer ids, not email addresses"):
        forget(db, ["a@example.com"])
    assert counts(db)["customers"] == 3
    assert not default_suppression_path(db).exists()


def test_failed_forget_deletes_nothing_but_keeps_the_suppression(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = privacy._delete
    calls = {"n": 0}

    def flaky(con: Any, sql: str) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(con, sql)

    monkeypatch.setattr(privacy, "_delete", flaky)
    before = counts(db)
    with pytest.raises(RuntimeError, match="boom"):
        forget(db, [1])
    assert counts(db) == before  # one transaction: rolled back
    assert read_suppression(default_suppression_path(db)) == ["1"]  # safe side


def test_read_suppression_formats(tmp_path: Path) -> None:
    assert read_suppression(tmp_path / "none.csv") == []
    text = tmp_path / "ids.txt"
    text.write_text("7\n 8 \n\n7\n")
    assert read_suppression(text) == ["7", "8"]
    csv = tmp_path / "ids.csv"
    csv.write_text("customer_id,forgotten_at\nA-1,2024-01-01\nB-2,2024-01-02\n")
    assert read_suppression(csv) == ["A-1", "B-2"]


def test_reingest_does_not_bring_forgotten_customers_back(tmp_path) -> None:
    from bmkt.io import ingest
    from bmkt.privacy import forget
    from tests.test_validate import make_store

    db = tmp_path / "bmkt.duckdb"
    ingest(make_store(), db)
    forget(db, [1])
    counts = ingest(make_store(), db)  # the old export still holds customer 1
    assert counts["customers"] == 2 and counts["orders"] == 1 and counts["email_events"] == 1
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        assert (
            con.execute("select count(*) from customers where customer_id = 1").fetchone()[0] == 0
        )


def test_reingest_of_a_folder_after_forget(tmp_path) -> None:
    """A folder source registers views named like the tables; erasure must hit the tables."""
    from bmkt.io import ingest
    from bmkt.privacy import forget
    from tests.test_io import write_folder
    from tests.test_validate import make_store

    folder = write_folder(make_store(), tmp_path / "store")
    db = tmp_path / "bmkt.duckdb"
    ingest(folder, db)
    forget(db, [1])
    counts = ingest(folder, db)
    assert counts["customers"] == 2 and counts["orders"] == 1


def test_forget_writes_canonical_integer_ids(tmp_path) -> None:
    from bmkt.io import ingest
    from bmkt.privacy import default_suppression_path, forget, read_suppression
    from tests.test_validate import make_store

    db = tmp_path / "bmkt.duckdb"
    ingest(make_store(), db)
    removed = forget(db, ["0001"])
    assert removed["customers"] == 1
    assert read_suppression(default_suppression_path(db)) == ["1"]
    counts = ingest(make_store(), db)  # so a re-ingest keeps customer 1 out
    assert counts["customers"] == 2
