"""bmkt — a workbench for behavioral marketing analytics.

Data flows one way: store -> features (engine) -> per-customer table (pandas)
-> scores -> segments -> plan -> files -> report.
"""

from __future__ import annotations

import logging
import os

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _hugepages_off_unless_asked() -> None:
    """Stop numpy asking the kernel for transparent huge pages, unless the user chose.

    numpy marks every array of 4 MB or more with ``madvise(MADV_HUGEPAGE)``.
    Where the kernel's THP ``defrag`` setting is ``madvise`` (the common
    default) and memory is fragmented (virtual machines that return free
    pages to the host), each such page fault waits on direct compaction: on
    the benchmark VM, allocating 2 GB took 29 s instead of 0.8 s, and the 1M
    customer job ran 320 s instead of 265 s. bmkt builds many large
    per-customer arrays, so it turns the advice off. Export
    ``NUMPY_MADVISE_HUGEPAGE=1`` to keep numpy's default; the setting is also
    put in the environment so that processes started afterwards (papermill
    kernels, a local Spark session's Python workers) get the same. Executors
    of a Spark cluster need it in ``spark.executorEnv``.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return  # the user chose; numpy read it at import
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    from numpy._core import multiarray  # numpy >= 2 (pyproject)

    setter = getattr(multiarray, "_set_madvise_hugepage", None)  # private: may go away
    if setter is not None:
        setter(False)


_hugepages_off_unless_asked()

__all__ = ["__version__"]
