"""bmkt — a workbench for behavioral marketing analytics.

Data flows one way: store -> features (engine) -> per-customer table (pandas)
-> scores -> segments -> plan -> files -> report.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
