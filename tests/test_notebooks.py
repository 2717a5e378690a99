"""Every notebook executed end to end through papermill on a small simulated store."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bmkt.io import ingest
from bmkt.runner import PIPELINE, NotebookFailed, run_notebook, run_pipeline
from bmkt.simulate import simulate_store, write_store

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
AS_OF = "2024-06-30"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    write_store(simulate_store(n_customers=1200, days=400, seed=5, end=AS_OF), folder / "store")
    path = folder / "bmkt.duckdb"
    ingest(folder / "store", path, as_of=AS_OF)
    return path


@pytest.fixture(scope="module")
def pipeline_run(db: Path, tmp_path_factory: pytest.TempPathFactory):
    reports = tmp_path_factory.mktemp("reports")
    return run_pipeline(AS_OF, {"source": str(db)}, run_id="t1", reports_dir=reports)


def test_notebooks_are_committed_clean() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(["01_explore_segments.ipynb", *PIPELINE])
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        for line in tagged[0].source.splitlines():  # typed, commented defaults
            assert "#" in line, f"{path.name}: parameter without a comment: {line}"


def test_pipeline_publishes_segments_send_lists_report_and_health(pipeline_run, db: Path) -> None:
    out = pipeline_run.out_dir
    for nb in PIPELINE:
        assert (out / nb).exists() and (out / nb).with_suffix(".html").exists()
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 1200
    seg = json.loads((out / "segments" / "datapackage.json").read_text())
    assert seg["row_counts"]["assignment.csv"] == 1200
    sizes = pd.read_csv(out / "segments" / "segment_sizes.csv")
    assert sizes["customers"].sum() == 1200
    manifest = json.loads((out / "send_lists" / "manifest.json").read_text())
    assert manifest["run_id"] == "t1" and manifest["as_of"] == AS_OF
    sends = [r for r in manifest["resources"] if r["path"].startswith("send_")]
    assert sends and all(
        r["rows"] == len(pd.read_csv(out / "send_lists" / r["path"])) for r in sends
    )
    assert sum(manifest["exclusions_by_reason"].values()) > 0
    assert "store" in manifest["inputs"]
    customers = pd.read_parquet(db.parent / "store" / "customers.parquet")
    bad = set(customers.loc[customers.email_status != "subscribed", "customer_id"])
    for r in sends:
        assert not bad & set(pd.read_csv(out / "send_lists" / r["path"]).customer_id)
    assert (out / "performance_report.html").stat().st_size > 100_000
    inc = pd.read_csv(out / "performance_incrementality.csv")
    assert len(inc) > 0 and {"n_treated", "n_holdout"} <= set(inc.columns)
    health = json.loads((out / "model_health.json").read_text())
    assert health["clv"]["mae"] > 0
    assert health["churn"]["model"]["roc_auc"] > 0.6
    html = (out / "10_segment_lists.html").read_text()
    assert "score_customers(" not in html  # code hidden in the HTML export
    assert "plotly-graph-div" in (out / "40_model_health.html").read_text()  # figures render


def test_explore_notebook_runs(db: Path, tmp_path: Path) -> None:
    res = run_notebook(
        "01_explore_segments",
        {"source": str(db), "as_of": AS_OF, "churn": False},
        run_id="e1",
        reports_dir=tmp_path,
    )
    assert (res.out_dir / "01_explore_segments.html").exists()


def test_failing_run_publishes_nothing(db: Path, tmp_path: Path, pipeline_run) -> None:
    bad_store = tmp_path / "bad"
    tables = simulate_store(n_customers=200, days=100, seed=1, end=AS_OF)
    tables["orders"].loc[0, "customer_id"] = 999_999  # an order of an unknown customer
    write_store(tables, bad_store)
    with pytest.raises(NotebookFailed, match=r"10_segment_lists.ipynb failed .*ValidationError"):
        run_pipeline(AS_OF, {"source": str(bad_store)}, run_id="t2", reports_dir=tmp_path)
    assert not (tmp_path / "t2").exists()
    assert (tmp_path / "_failed" / "t2" / "10_segment_lists.ipynb").exists()


def test_model_health_measures_drift_and_migration_against_a_previous_run(
    db: Path, tmp_path: Path, pipeline_run
) -> None:
    res = run_notebook(
        "40_model_health",
        {"source": str(db), "as_of": "2024-05-31", "previous_scores": str(pipeline_run.out_dir)},
        run_id="h1",
        reports_dir=tmp_path,
    )
    health = json.loads((res.out_dir / "model_health.json").read_text())
    assert set(health["drift"]) >= {"clv", "p_alive", "rfm_segment"}
    assert health["drift"]["clv"] >= 0 and health["drift"]["p_alive"] >= 0
    html = (res.out_dir / "40_model_health.html").read_text()
    assert "Segment migration" in html and "no previous run given" not in html
