"""The command line: readable messages and exit codes, never tracebacks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bmkt.cli import cli
from tests.test_io import write_folder
from tests.test_validate import make_store


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_ok_and_failing(tmp_path: Path) -> None:
    good = write_folder(make_store(), tmp_path / "good")
    code, out, _ = run("validate", str(good), "--as-of", "2024-06-30")
    assert code == 0
    assert "OK: no problems found." in out

    store = make_store()
    store["orders"]["ordered_at"] = ["2024-02-01", "soon", "2024-03-01"]
    store["orders"]["customer_id"] = [1, 1, 42]
    bad = write_folder(store, tmp_path / "bad")
    code, out, err = run("validate", str(bad))
    assert code == 1
    assert "orders.ordered_at: unparseable timestamp (1 row), e.g. ['soon']" in err
    assert (
        "orders.customer_id: unknown customer: not in customers.customer_id (1 row), e.g. [42]"
        in err
    )
    assert "Traceback" not in err + out


def test_ingest_twice_and_refuse_bad(tmp_path: Path) -> None:
    folder = write_folder(make_store(), tmp_path / "store")
    db = tmp_path / "x.duckdb"
    for _ in range(2):
        code, out, _ = run("ingest", str(folder), "--db", str(db))
        assert code == 0, out
        assert "orders                   3 rows" in out
    store = make_store()
    store["customers"]["email_status"] = ["subscribed", "maybe", "subscribed"]
    bad = write_folder(store, tmp_path / "bad")
    code, _, err = run("ingest", str(bad), "--db", str(db))
    assert code == 1
    assert "customers.email_status: unexpected value" in err
    assert "validation failed" in err


def test_errors_are_one_line_messages(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = run("validate", str(tmp_path / "notes.txt"))
    assert code == 1
    assert err.strip().startswith("error: ")
    assert "Traceback" not in err
    code, _, err = run("validate", "--as-of", "someday", str(tmp_path))
    assert code == 1
    assert "as_of: cannot parse 'someday'" in err


def test_contracts_prints_every_table() -> None:
    code, out, _ = run("contracts")
    assert code == 0
    for name in ("customers", "orders", "order_lines", "web_events", "email_events", "campaigns"):
        assert f"### `{name}`" in out
    assert "| `machine_open` | bool | no | yes |" in out


def test_forget_removes_and_reports(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    assert run("ingest", str(write_folder(make_store(), tmp_path / "s")), "--db", str(db))[0] == 0
    code, out, err = run("forget", "1", "--db", str(db))
    assert code == 0, err
    assert "customers                1 rows removed" in out
    assert "orders                   2 rows removed" in out
    code, _, err = run("forget", "--db", str(db))
    assert code == 1 and "give customer ids or --from-file" in err


def test_simulate_small_and_in_blocks(tmp_path: Path) -> None:
    import pandas as pd

    code, out, _ = run(
        "simulate", "--customers", "300", "--days", "60", "--out", str(tmp_path / "a")
    )
    assert code == 0 and "orders" in out
    assert len(pd.read_parquet(tmp_path / "a" / "customers.parquet")) == 300
    code, out, _ = run(
        "simulate", "--customers", "300", "--days", "60", "--block-size", "120",
        "--dropout-at-first-purchase", "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert code == 0
    assert len(list((tmp_path / "b" / "orders").glob("part-*.parquet"))) == 3
    truth = pd.read_parquet(tmp_path / "b" / "truth")
    assert truth["customer_id"].tolist() == list(range(1, 301))


def test_project_root_is_found_from_a_subfolder(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from bmkt.config import find_project_dir

    project = tmp_path / "shop"
    (project / "notebooks").mkdir(parents=True)
    (project / "reports" / "run-1").mkdir(parents=True)
    deep = project / "reports" / "run-1"
    assert find_project_dir(deep) == project.resolve()
    assert find_project_dir(project / "notebooks") == project.resolve()
    # a folder with notebooks/ but nothing else of a project is not taken for one
    lone = tmp_path / "other" / "notebooks"
    lone.mkdir(parents=True)
    assert find_project_dir(lone.parent) == lone.parent.resolve()
    assert find_project_dir(tmp_path) == tmp_path.resolve()
    # a folder with data/ of its own is its own project, even under one with notebooks/
    own = project / "client"
    (own / "data").mkdir(parents=True)
    assert find_project_dir(own) == own.resolve()
    # the paths a process started in a subfolder uses (what `bmkt pipeline` reads), and
    # BMKT_HOME still wins
    code = "import bmkt.config as c; print(c.PROJECT_DIR); print(c.NOTEBOOKS_DIR)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMKT_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=deep, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(project.resolve()), str(project.resolve() / "notebooks")]
    env["BMKT_HOME"] = str(lone.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=deep, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == str(lone.parent.resolve())
