"""Reference data bundled with the stack: the CDNOW purchase log.

CDNOW is the public log of every purchase, from January 1997 to June 1998, of
the 23,570 customers who made their first purchase at the online music store
CDNOW in the first quarter of 1997; the "sample" is a random 1/10th of them
(2,357 customers). It is the data of the BG/NBD and Gamma-Gamma papers, so
fitting those models to it must give the published parameters.

The files ship inside the ``lifetimes`` package (``lifetimes/datasets``);
nothing is downloaded.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting Your
   Customers the Easy Way: An Alternative to the Pareto/NBD Model",
   Marketing Science, 24 (2), 275-284.
.. [2] Fader, P. S. and Hardie, B. G. S. (2001), "Forecasting Repeat Sales at
   CDNOW: A Case Study", Interfaces, 31 (3), S94-S107.
.. [3] Hardie, B. G. S., CDNOW dataset, http://www.brucehardie.com/datasets/
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bmkt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["load_cdnow", "cdnow_path"]

_FILES = {True: "CDNOW_sample.txt", False: "CDNOW_master.txt"}


def cdnow_path(sample: bool = True) -> Path:
    """Path of the CDNOW log shipped inside ``lifetimes``.

    Parameters
    ----------
    sample : bool
        ``True`` for the 1/10th sample, ``False`` for the master file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    DataError
        When ``lifetimes`` is not installed or the file is missing.
    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("CDNOW: the 'lifetimes' package, which ships the data, is not installed.")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / _FILES[bool(sample)]
    if not path.is_file():
        raise DataError(f"CDNOW: {path} not found in the installed 'lifetimes' package.")
    return path


def load_cdnow(sample: bool = True) -> pd.DataFrame:
    """Load the CDNOW purchase log as an ``orders`` table.

    Parameters
    ----------
    sample : bool
        ``True`` (default): the 1/10th sample, 2,357 customers and 6,919 log
        lines. ``False``: the master file, 23,570 customers and 69,659 lines.

    Returns
    -------
    pandas.DataFrame
        One row per log line (the file's order), in the ``orders`` contract:

        ``order_id``
            1..n in file order.
        ``customer_id``
            For the sample, the sample's own id ``1..2357`` (the ``ID`` of the
            published summaries, e.g. ``lifetimes``' ``cdnow_customers_summary``);
            for the master file, the master id ``1..23570``.
        ``ordered_at``
            The purchase date at midnight (the log has no time of day).
        ``revenue``
            Dollar value (eight lines of the sample are $0.00 purchases).
        ``quantity``
            Number of CDs.
        ``master_customer_id``
            The master-file id (sample only), to join the two files.

    Raises
    ------
    DataError
        When the file is missing or not in the expected layout.

    Examples
    --------
    >>> orders = load_cdnow()
    >>> len(orders), orders["customer_id"].nunique()
    (6919, 2357)
    """
    path = cdnow_path(sample)
    if sample:
        names = ["master_customer_id", "customer_id", "date", "quantity", "revenue"]
        raw = pd.read_csv(path, sep=r"\s+", header=None, names=names, dtype={"date": str})
    else:
        names = ["customer_id", "date", "quantity", "revenue"]
        raw = pd.read_csv(path, sep=r"\s+", header=0, names=names, dtype={"date": str})
    ordered_at = pd.to_datetime(raw["date"], format="%Y%m%d", errors="coerce")
    if ordered_at.isna().any() or raw[["customer_id", "quantity", "revenue"]].isna().any().any():
        bad = raw[ordered_at.isna() | raw.isna().any(axis=1)]
        raise DataError(
            f"CDNOW: {path.name}: {len(bad)} line(s) not in the expected layout, "
            f"e.g. {bad.head(3).to_dict('records')}"
        )
    out = pd.DataFrame(
        {
            "order_id": np.arange(1, len(raw) + 1, dtype="int64"),
            "customer_id": raw["customer_id"].astype("int64"),
            "ordered_at": ordered_at.astype("datetime64[ns]"),
            "revenue": raw["revenue"].astype("float64"),
            "quantity": raw["quantity"].astype("int64"),
        }
    )
    if sample:
        out["master_customer_id"] = raw["master_customer_id"].astype("int64")
    log.debug("loaded %s: %d lines, %d customers", path.name, len(out), out.customer_id.nunique())
    return out
