"""Paths and defaults, defined in one place.

Every path can be overridden with an environment variable so scheduled runs
and tests can point bmkt elsewhere without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"

#: What marks a project root, besides its ``notebooks/`` folder (one of these).
PROJECT_MARKERS = ("data", "reports", "pyproject.toml", "environment.yml")


def find_project_dir(start: str | os.PathLike[str]) -> Path:
    """The project root for a process started in ``start``.

    The nearest of ``start`` and its parents that holds a ``notebooks/``
    folder and one of :data:`PROJECT_MARKERS` (as git finds its repository
    from a subfolder), so ``bmkt pipeline`` run from ``notebooks/`` or
    ``reports/`` works on the project it sits in; ``start`` itself when no
    folder up the tree looks like a project.
    """
    here = Path(start).resolve()
    if any((here / m).exists() for m in ("notebooks", *PROJECT_MARKERS)):
        return here  # a folder that looks like a project itself is one (never a parent)
    for folder in here.parents:
        if (folder / "notebooks").is_dir() and any((folder / m).exists() for m in PROJECT_MARKERS):
            return folder
    return here


#: Project root: the folder holding ``notebooks/``, ``data/`` and ``reports/``:
#: ``BMKT_HOME`` when set, else found from the working directory upwards
#: (:func:`find_project_dir`).
PROJECT_DIR = (
    Path(os.environ["BMKT_HOME"]).resolve()
    if os.environ.get("BMKT_HOME")
    else find_project_dir(os.getcwd())
)
DATA_DIR = Path(os.environ.get("BMKT_DATA_DIR", PROJECT_DIR / "data"))
REPORTS_DIR = Path(os.environ.get("BMKT_REPORTS_DIR", PROJECT_DIR / "reports"))
NOTEBOOKS_DIR = Path(os.environ.get("BMKT_NOTEBOOKS_DIR", PROJECT_DIR / "notebooks"))
DEFAULT_DB = Path(os.environ.get("BMKT_DB", DATA_DIR / "bmkt.duckdb"))

#: Default memory limit and temp folder handed to DuckDB (out-of-core work).
#: DuckDB shares the process with pandas and the models, so it gets half of an
#: 8 GiB budget: on 1M customers the whole job then peaks at 7.6 GiB in the same
#: time as with 8GB (benchmarks/README.md); larger aggregations spill to disk.
DUCKDB_MEMORY_LIMIT = os.environ.get("BMKT_DUCKDB_MEMORY_LIMIT", "4GB")
DUCKDB_TEMP_DIR = os.environ.get("BMKT_DUCKDB_TEMP_DIR")

#: File name of the forgotten-customer suppression list (next to the database):
#: written by ``bmkt forget``, honoured by every plan and every later ingest.
SUPPRESSION_FILENAME = "suppression_forgotten.csv"
