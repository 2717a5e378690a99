"""Paths and defaults, defined in one place.

Every path can be overridden with an environment variable so scheduled runs
and tests can point bmkt elsewhere without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"

#: Project root: the folder holding ``data/`` and ``reports/`` (the current
#: working directory unless ``BMKT_HOME`` says otherwise).
PROJECT_DIR = Path(os.environ.get("BMKT_HOME", os.getcwd())).resolve()
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
