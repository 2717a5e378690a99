"""Notebook runs: parameters injected, artifacts published atomically, failures publish nothing."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from bmkt.errors import ConfigError
from bmkt.runner import NotebookFailed, new_run_id, run_notebook, run_notebooks

pytestmark = pytest.mark.notebooks


def make_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'as_of = "2024-06-30"  # run date\noutput_dir = "."  # where artifacts go\nrun_id = ""\nfactor = 1'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


WRITE = (
    "from pathlib import Path\n"
    "Path(output_dir, 'out_' + str(factor) + '.txt').write_text(as_of + ' ' + run_id)\n"
)


def test_run_id_from_as_of() -> None:
    from datetime import UTC, datetime

    assert new_run_id("2024-06-30", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2024-06-30_20260102T030405"
    )


def test_run_publishes_notebook_html_and_artifacts(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "ok.ipynb", WRITE)
    res = run_notebook(
        nb, {"as_of": "2024-05-31", "factor": 3}, run_id="r1", reports_dir=tmp_path / "rep"
    )
    out = tmp_path / "rep" / "r1"
    assert res.out_dir == out
    assert (out / "out_3.txt").read_text() == "2024-05-31 r1"
    assert (out / "ok.ipynb").exists()
    html = (out / "ok.html").read_text()
    assert "write_text" not in html  # code hidden
    assert (out / "run.json").exists()
    assert not (tmp_path / "rep" / ".staging" / "r1").exists()


def test_failure_publishes_nothing_and_keeps_previous_run(tmp_path: Path) -> None:
    ok = make_notebook(tmp_path / "ok.ipynb", WRITE)
    bad = make_notebook(tmp_path / "bad.ipynb", "raise ValueError('segment file is empty')")
    reports = tmp_path / "rep"
    run_notebook(ok, {"factor": 1}, run_id="r1", reports_dir=reports)
    before = sorted(p.name for p in (reports / "r1").iterdir())
    with pytest.raises(
        NotebookFailed, match=r"bad.ipynb failed in cell \[\d+\] `raise ValueError"
    ) as info:
        run_notebooks([ok, bad], {"factor": 2}, run_id="r1", reports_dir=reports)
    assert "ValueError: segment file is empty" in str(info.value)
    assert sorted(p.name for p in (reports / "r1").iterdir()) == before
    assert not (reports / "r1" / "out_2.txt").exists()
    assert not (reports / ".staging" / "r1").exists()
    assert (reports / "_failed" / "r1" / "bad.ipynb").exists()


def test_unknown_parameter_and_notebook(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "ok.ipynb", WRITE)
    with pytest.raises(
        ConfigError, match="ok.ipynb has no parameter\\(s\\) colour. Valid options are"
    ):
        run_notebook(nb, {"colour": "red"}, run_id="r2", reports_dir=tmp_path)
    with pytest.raises(ConfigError, match="notebook 'nope' not found"):
        run_notebook("nope", {}, run_id="r3", reports_dir=tmp_path)


def test_cli_run_exits_non_zero_on_failure(tmp_path: Path) -> None:
    from bmkt.cli import cli

    bad = make_notebook(tmp_path / "bad.ipynb", "1/0")
    res = CliRunner().invoke(
        cli, ["run", str(bad), "-p", "factor", "2", "--run-id", "x", "--reports", str(tmp_path)]
    )
    assert res.exit_code == 1
    assert "ZeroDivisionError" in res.stderr
    assert "Traceback" not in res.stderr
    ok = make_notebook(tmp_path / "ok.ipynb", WRITE)
    res = CliRunner().invoke(
        cli, ["run", str(ok), "-p", "factor", "5", "--run-id", "y", "--reports", str(tmp_path)]
    )
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "y" / "out_5.txt").exists()
    assert str(tmp_path / "y") in res.stdout
