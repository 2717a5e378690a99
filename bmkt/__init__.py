"""bmkt — a workbench for behavioral marketing analytics.

Data flows one way: store -> features (engine) -> per-customer table (pandas)
-> scores -> segments -> plan -> files -> report.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


from bmkt.memory import hugepages_off_unless_asked, keep_freed_memory, release_memory  # noqa: E402

hugepages_off_unless_asked()
keep_freed_memory()

__all__ = ["__version__", "release_memory"]
