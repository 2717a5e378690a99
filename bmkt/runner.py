"""Running parameterized notebooks with papermill, publishing runs atomically.

A *run* executes one or more notebooks on one ``run_id``. Each notebook gets
the parameters it was given plus ``output_dir`` (where it writes its
artifacts) and ``run_id``. Everything is first written into a staging folder
``reports/.staging/<run_id>/``; only when every notebook succeeded is the
staging folder moved to ``reports/<run_id>/`` in one rename, together with
each executed notebook and an HTML export with the code hidden.

When a cell fails, nothing is published: the previous run of the same id (if
any) is left untouched, the staging folder is removed, and the failed
executed notebook is kept for inspection under
``reports/_failed/<run_id>/``. :class:`NotebookFailed` says which notebook,
which cell and why; the CLI turns it into a non-zero exit.

The engine knows nothing of marketing: it runs notebooks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bmkt import config
from bmkt.errors import BmktError, ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "NotebookFailed",
    "RunResult",
    "PIPELINE",
    "new_run_id",
    "run_notebooks",
    "run_notebook",
    "run_pipeline",
]

#: The notebooks ``bmkt pipeline`` runs, in order.
PIPELINE: tuple[str, ...] = (
    "10_segment_lists.ipynb",
    "20_send_plan.ipynb",
    "30_performance_report.ipynb",
    "40_model_health.ipynb",
)

STAGING = ".staging"
FAILED = "_failed"


class NotebookFailed(BmktError, RuntimeError):
    """A notebook cell raised; nothing of the run was published."""

    def __init__(
        self, notebook: str, cell: int | None, source: str, ename: str, evalue: str, kept: Path
    ):
        self.notebook, self.cell, self.source = notebook, cell, source
        self.ename, self.evalue, self.kept = ename, evalue, kept
        where = f"cell [{cell}]" if cell is not None else "a cell"
        first = next((ln for ln in source.splitlines() if ln.strip()), "")
        super().__init__(
            f"{notebook} failed in {where} `{first[:80]}`: {ename}: {evalue}\n"
            f"nothing was published; the failed notebook is kept at {kept}"
        )


@dataclass
class RunResult:
    """What a successful run published."""

    run_id: str
    out_dir: Path
    notebooks: list[Path] = field(default_factory=list)
    html: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)


def new_run_id(as_of: Any, now: datetime | None = None) -> str:
    """A run id from the run date and a UTC timestamp: ``2024-06-30_20261123T151600``."""
    now = now or datetime.now(UTC)
    return f"{pd.Timestamp(as_of):%Y-%m-%d}_{now:%Y%m%dT%H%M%S}"


def _check_run_id(run_id: str) -> None:
    if not run_id or run_id.startswith(".") or run_id == FAILED or any(c in run_id for c in "/\\"):
        raise ConfigError(f"run_id: {run_id!r} is not a valid folder name.")


def _resolve_notebook(notebook: str | os.PathLike[str]) -> Path:
    path = Path(notebook)
    candidates = [path, config.NOTEBOOKS_DIR / path]
    if path.suffix != ".ipynb":
        candidates += [c.with_suffix(".ipynb") for c in candidates]
        candidates += sorted(config.NOTEBOOKS_DIR.glob(f"*{path.name}*.ipynb"))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"notebook {str(notebook)!r} not found (looked in . and {config.NOTEBOOKS_DIR})."
    )


def _export_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    ).from_notebook_node(nb)
    out = executed.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _publish(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing a previous run only at the end."""
    backup = target.with_name(f".{target.name}.old")
    if backup.exists():
        shutil.rmtree(backup)
    if target.exists():
        target.rename(backup)
    try:
        staging.rename(target)
    except BaseException:
        if backup.exists():
            backup.rename(target)
        raise
    if backup.exists():
        shutil.rmtree(backup)


def run_notebooks(
    notebooks: Sequence[str | os.PathLike[str]],
    parameters: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    reports_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    kernel_name: str | None = None,
    execution_timeout: int | None = None,
) -> RunResult:
    """Execute notebooks in order on one run id and publish the run atomically.

    Parameters
    ----------
    notebooks : sequence of path-like
        Notebook files, or names found in :data:`bmkt.config.NOTEBOOKS_DIR`
        (``"10_segment_lists"`` is enough).
    parameters : mapping, optional
        Injected into each notebook's cell tagged ``parameters`` (a notebook
        receives only the names it declares, plus ``run_id`` and
        ``output_dir``, which every notebook declares).
    run_id : str, optional
        Defaults to :func:`new_run_id` from ``parameters["as_of"]`` (or today).
    reports_dir : path-like, optional
        Defaults to :data:`bmkt.config.REPORTS_DIR`.
    progress : bool
        Show papermill's cell progress bar.

    Returns
    -------
    RunResult

    Raises
    ------
    NotebookFailed
        When a cell raises; nothing is published.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    params = dict(parameters or {})
    reports = Path(reports_dir or config.REPORTS_DIR)
    run_id = run_id or new_run_id(params.get("as_of", datetime.now(UTC).date()))
    _check_run_id(run_id)
    paths = [_resolve_notebook(nb) for nb in notebooks]
    staging = reports / STAGING / run_id
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    target = reports / run_id
    result = RunResult(run_id=run_id, out_dir=target)
    try:
        for nb in paths:
            executed = staging / nb.name
            declared = pm.inspect_notebook(str(nb))
            injected = {k: v for k, v in params.items() if k in declared}
            unknown = sorted(set(params) - set(declared) - {"run_id", "output_dir"})
            if unknown and len(paths) == 1:
                raise ConfigError(
                    f"{nb.name} has no parameter(s) {', '.join(unknown)}. "
                    f"Valid options are: {', '.join(sorted(declared))}."
                )
            injected.update(run_id=run_id, output_dir=str(staging))
            log.info("running %s with %s", nb.name, injected)
            try:
                pm.execute_notebook(
                    str(nb),
                    str(executed),
                    parameters=injected,
                    cwd=str(config.PROJECT_DIR),
                    progress_bar=progress,
                    kernel_name=kernel_name,
                    execution_timeout=execution_timeout,
                )
            except PapermillExecutionError as exc:
                kept = _keep_failed(executed, reports, run_id)
                raise NotebookFailed(
                    nb.name, exc.exec_count, exc.source, exc.ename, exc.evalue, kept
                ) from None
            result.notebooks.append(target / nb.name)
            result.html.append(target / _export_html(executed).name)
        (staging / "run.json").write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "notebooks": [p.name for p in paths],
                    "parameters": {k: str(v) for k, v in params.items()},
                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
        )
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    result.artifacts = sorted(p for p in target.rglob("*") if p.is_file())
    log.info("published run %s to %s", run_id, target)
    return result


def _keep_failed(executed: Path, reports: Path, run_id: str) -> Path:
    keep_dir = reports / FAILED / run_id
    keep_dir.mkdir(parents=True, exist_ok=True)
    kept = keep_dir / executed.name
    if executed.exists():
        shutil.copy2(executed, kept)
    return kept


def run_notebook(
    notebook: str | os.PathLike[str], parameters: Mapping[str, Any] | None = None, **kwargs: Any
) -> RunResult:
    """Execute one notebook and publish its run (see :func:`run_notebooks`)."""
    return run_notebooks([notebook], parameters, **kwargs)


def run_pipeline(
    as_of: Any, parameters: Mapping[str, Any] | None = None, **kwargs: Any
) -> RunResult:
    """Run :data:`PIPELINE` (10 -> 20 -> 30 -> 40) on one run id."""
    params = {"as_of": str(pd.Timestamp(as_of).date()), **(parameters or {})}
    return run_notebooks(PIPELINE, params, **kwargs)
