"""Publishing a send plan: the files the sending step picks up.

:func:`publish_plan` writes ``<out_dir>/<run_id>/send_lists/``:

``send_<campaign_id>.csv``
    One row per email: :data:`bmkt.plan.SEND_COLUMNS`. The **only** files that
    carry email addresses.
``holdout_<campaign_id>.csv``
    The campaign's control group (:data:`bmkt.plan.HOLDOUT_COLUMNS`), never sent.
``exclusions.csv``
    Excluded customers per campaign and first reason (counts only).
``exclusions_detail.csv``
    One row per excluded (customer, campaign) with the first and all reasons
    (customer ids only), for audits ("why did customer 42 get nothing?").
``global_control.csv``
    Customers in the global control group (ids only).
``datapackage.json``
    A `Frictionless Data Package`_ descriptor (profile ``tabular-data-package``):
    per resource its ``path``, ``schema`` (fields and types), ``hash``
    (``"sha256:<hex>"``), ``bytes`` and ``rows``; plus the bmkt fields
    ``run_id``, ``as_of``, ``parameters``, ``plan_parameters``, ``inputs``
    (input fingerprints), ``row_counts``, ``exclusions_by_reason`` and
    ``package_versions``. **It is the run's manifest**; ``manifest.json`` is
    a byte-identical copy for tools that look for that name.

Guarantees
----------
Atomic
    Everything is written into a temporary sibling folder
    (``.send_lists.tmp-*``), each file fsync'ed; only when all succeeded does
    the folder take the place of ``send_lists`` (the previous one is renamed to
    ``.send_lists.old``, the new one moved in, the old one deleted; on failure
    the old one is moved back). A failure leaves the previous publication
    untouched and no temporary folder behind. A crash between the two renames
    is repaired by the next call. Two processes must not publish the same
    ``run_id`` at the same time.
Deterministic
    Same plan and parameters give byte-identical files: rows sorted, fixed
    column order, UTF-8 without BOM, ``\\n`` line endings, timestamps as
    ISO 8601 with ``Z``, floats with ``%.10g``. The descriptor holds no
    wall-clock time.
Spreadsheet-safe
    Following OWASP's CSV-injection advice, text cells that begin with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return are prefixed with a single
    quote ``'``, so a spreadsheet shows them as text instead of running them
    as formulas. Identifier columns (``customer_id``, ``campaign_id``, product
    ids ``rec_1``..``rec_3``, ``abandoned_products``, ``trigger_products``) and
    numbers are written untouched: they are keys the sending step must match
    exactly (the plan already refuses addresses that start with such a
    character).
Private
    Email addresses appear only in the send files; publication fails if one
    shows up anywhere else.

.. _Frictionless Data Package: https://specs.frictionlessdata.io/data-package/
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bmkt import config
from bmkt.errors import BmktError, ConfigError, PublishError
from bmkt.plan import (
    EXCLUSION_COLUMNS,
    FORMULA_PREFIXES,
    HOLDOUT_COLUMNS,
    SEND_COLUMNS,
    SendPlan,
    find_emails,
)
from bmkt.schema import EMAIL_REGEX

log = logging.getLogger(__name__)

__all__ = ["publish_plan", "neutralise_formula", "package_versions", "SEND_LISTS"]

#: Name of the published folder inside ``<out_dir>/<run_id>/``.
SEND_LISTS = "send_lists"

#: Columns written untouched (identifiers the sending step must match exactly).
ID_COLUMNS = frozenset(
    {
        "customer_id",
        "campaign_id",
        "rec_1",
        "rec_2",
        "rec_3",
        "abandoned_products",
        "trigger_products",
    }
)
_DATETIME_COLUMNS = frozenset({"send_at_utc", "triggered_at"})
_PACKAGES = {
    "bmkt": "bmkt",
    "pandas": "pandas",
    "numpy": "numpy",
    "duckdb": "duckdb",
    "ibis": "ibis-framework",
}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def neutralise_formula(value: Any) -> Any:
    """Prefix text that a spreadsheet would read as a formula with ``'``.

    Examples
    --------
    >>> neutralise_formula("=HYPERLINK(\\"http://x\\")")
    '\\'=HYPERLINK("http://x")'
    >>> neutralise_formula("10% off"), neutralise_formula(-5)
    ('10% off', -5)
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def package_versions() -> dict[str, str]:
    """Installed versions of bmkt and the libraries that shape its outputs."""
    out = {}
    for name, dist in _PACKAGES.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "unknown"))
    return out


# --------------------------------------------------------------------------- files


def _field_type(name: str, s: pd.Series) -> str:
    if name in _DATETIME_COLUMNS:
        return "datetime"
    kind = s.dtype.kind
    if isinstance(s.dtype, pd.BooleanDtype) or kind == "b":
        return "boolean"
    if kind in "iu" or (name == "customer_id" and len(s) and _all_ints(s)):
        return "integer"
    if kind == "f":
        return "number"
    return "string"


def _all_ints(s: pd.Series) -> bool:
    return bool(s.map(lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool)).all())


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Format timestamps and neutralise formula-like text (a copy)."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if col in _DATETIME_COLUMNS or s.dtype.kind == "M":
            ts = pd.to_datetime(s)
            out[col] = ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").where(ts.notna(), None)
        elif col not in ID_COLUMNS and s.dtype.kind == "O":
            out[col] = s.map(neutralise_formula)
    return out


_NEEDS_QUOTES = re.compile(r'[,"\n]')


def _quote(cells: list[str]) -> list[str]:
    """CSV-quote the cells that need it, as the ``csv`` module does (QUOTE_MINIMAL, ``\\n``)."""
    if not _NEEDS_QUOTES.search("".join(cells)):
        return cells
    search = _NEEDS_QUOTES.search
    return ['"' + c.replace('"', '""') + '"' if search(c) else c for c in cells]


def _column_cells(name: Any, s: pd.Series) -> list[str] | None:
    """The CSV cells of one column exactly as ``_prepare(frame).to_csv`` writes them.

    ``None`` for a dtype this fast path does not cover (the caller falls back
    to pandas).
    """
    dtype = s.dtype
    if name in _DATETIME_COLUMNS or dtype.kind == "M":
        if not (isinstance(dtype, np.dtype) and dtype.kind == "M"):
            return None
        values = s.to_numpy()
        text = np.datetime_as_string(values, unit="s").astype(object) + "Z"
        text[np.isnat(values)] = ""
        return text.tolist()
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return np.array(["False", "True"], dtype=object)[s.to_numpy().view(np.uint8)].tolist()
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":  # Arrow's decimal text: str(int)
        return pa.array(s.to_numpy()).cast(pa.string()).to_numpy(zero_copy_only=False).tolist()
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        values = s.to_numpy()
        cells = list(map("%.10g".__mod__, values.tolist()))
        nan = np.isnan(values)
        if nan.any():
            cells = ["" if m else c for c, m in zip(cells, nan.tolist(), strict=True)]
        return cells
    neutralise = name not in ID_COLUMNS and dtype.kind == "O"
    if isinstance(dtype, pd.CategoricalDtype):
        # render each category once
        categories = _object_cells(np.asarray(dtype.categories, dtype=object), neutralise)
        lookup = np.asarray([*categories, ""], dtype=object)
        return lookup[s.cat.codes.to_numpy()].tolist()
    plain = isinstance(dtype, np.dtype) and dtype.kind == "O"
    if plain or isinstance(dtype, pd.BooleanDtype | pd.StringDtype):
        values = np.asarray(s.to_numpy() if plain else s.astype(object), dtype=object)
        if pd.api.types.infer_dtype(values, skipna=True) == "string":
            # text (and nulls) only: render each distinct value once
            missing = pd.isna(values)
            codes, uniques = pd.factorize(values)
            codes[missing] = -1
            lookup = np.asarray(
                [*_object_cells(uniques.astype(object), neutralise), ""], dtype=object
            )
            return lookup[codes].tolist()
        if neutralise:
            # as _prepare: Series.map infers a dtype (numbers only -> float64, ...)
            mapped = s.map(neutralise_formula)
            if isinstance(mapped.dtype, np.dtype) and mapped.dtype.kind in "iufb":
                return _column_cells(name, mapped)
            if not (isinstance(mapped.dtype, np.dtype) and mapped.dtype.kind == "O"):
                return None
            values = np.asarray(mapped.to_numpy(), dtype=object)
        return _object_cells(values, neutralise=False)
    return None


def _object_cells(values: np.ndarray, neutralise: bool) -> list[str]:
    """CSV cells of an object array: nulls empty, ``str`` of the rest, formula-like text quoted."""
    missing = pd.isna(values).tolist()
    out = []
    for v, m in zip(values.tolist(), missing, strict=True):
        if m:
            out.append("")
        elif isinstance(v, str):
            out.append("'" + v if neutralise and v.startswith(FORMULA_PREFIXES) else v)
        else:
            out.append(str(v))
    return out


def _csv_parts(frame: pd.DataFrame) -> tuple[str, list[str]] | None:
    """Header line and row lines of ``frame`` as written by :func:`_csv_text`, or ``None``.

    ``None`` when a column has a dtype the fast path does not cover or the
    frame has a single column (the ``csv`` module writes an empty single field
    as ``""``).
    """
    if frame.shape[1] < 2 or not frame.columns.is_unique:
        return None
    columns = []
    for name in frame.columns:
        s = frame[name]
        cells = _column_cells(name, s)
        if cells is None:
            return None
        # numbers, flags and timestamps never hold a comma, a quote or a line break
        plain = isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufbM"
        columns.append(cells if plain else _quote(cells))
    header = ",".join(_quote([str(c) for c in frame.columns]))
    return header, list(map(",".join, zip(*columns, strict=True)))


def _csv_text(frame: pd.DataFrame) -> str:
    """The CSV text of a published frame.

    Byte for byte what ``_prepare(frame).to_csv(index=False, lineterminator="\\n",
    float_format="%.10g")`` writes (pandas' ``to_csv`` goes through the
    ``csv`` module cell by cell and is several times slower); frames this fast
    path does not cover are written by pandas.
    """
    parts = _csv_parts(frame)
    if parts is None:
        return _prepare(frame).to_csv(index=False, lineterminator="\n", float_format="%.10g")
    header, rows = parts
    return "\n".join([header, *rows]) + "\n"


def _write_csv(
    frame: pd.DataFrame, path: Path, writer: _Writer, text: str | None = None
) -> dict[str, Any]:
    """Render one CSV deterministically and queue it on ``writer``; return its stats and text.

    The file is written and fsync'ed by the writer's thread (done when its
    ``with`` block ends).
    """
    text = _csv_text(frame) if text is None else text
    data = text.encode("utf-8")
    writer.write(path, data)
    return {"bytes": len(data), "hash": "sha256:" + hashlib.sha256(data).hexdigest(), "text": text}


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class _Writer:
    """Writes and fsyncs files in a second thread while the caller renders the next ones.

    Copying a file into the page cache and syncing it release the GIL (about a
    third of a publication's time: 3 s for the 210 MB of a 1M-customer run),
    so they overlap the rendering of the next file; at most
    ``max_pending_bytes`` wait to be written (besides the one being queued), so
    a large publication holds little more than its text. A failed write is
    raised by the next :meth:`write` that finds it (rendering stops there) or
    when the ``with`` block ends, which waits for every write. When the block
    ends on an error (or is interrupted while waiting) the writes not started
    are cancelled and the one running is waited for, so that nothing writes
    into the folder once the caller removes it; the block's error is raised.
    """

    def __init__(self, max_pending_bytes: int = 256 * 2**20) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmkt-publish")
        self._pending: list[Future[None]] = []
        self._queued: list[tuple[Future[None], int]] = []  # not known to be written yet
        self._max_pending = max_pending_bytes

    def write(self, path: Path, data: bytes) -> None:
        """Queue ``data`` for ``path``; first wait while more than the limit is unwritten."""
        # finished writes leave the queue, and a failed one is raised now
        self._queued = [(f, n) for f, n in self._queued if not f.done() or _raise_from(f)]
        while self._queued and sum(n for _, n in self._queued) + len(data) > self._max_pending:
            _raise_from(self._queued.pop(0)[0])  # waits for the oldest write
        done = self._pool.submit(_write_bytes, path, data)
        self._pending.append(done)
        self._queued.append((done, len(data)))

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        cancel = exc_type is not None
        interrupted: BaseException | None = None
        while True:
            try:
                self._pool.shutdown(wait=True, cancel_futures=cancel)
                break
            except BaseException as err:  # noqa: BLE001 - e.g. Ctrl-C: cancel, wait, re-raise
                interrupted = interrupted or err
                cancel = True
        if interrupted is not None:
            raise interrupted
        if exc_type is None:
            for done in self._pending:
                done.result()


def _raise_from(done: Future[None]) -> bool:
    """Wait for ``done`` and raise its error; False when it succeeded."""
    error = done.exception()
    if error is not None:
        raise error
    return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _resource(
    name: str, path: str, frame: pd.DataFrame, stats: Mapping[str, Any], key: list[str]
) -> dict[str, Any]:
    fields = [{"name": c, "type": _field_type(c, frame[c])} for c in frame.columns]
    for f in fields:
        if f["type"] == "datetime":
            f["format"] = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "name": name,
        "path": path,
        "profile": "tabular-data-resource",
        "format": "csv",
        "mediatype": "text/csv",
        "encoding": "utf-8",
        "dialect": {"delimiter": ",", "lineTerminator": "\n", "header": True},
        "hash": stats["hash"],
        "bytes": stats["bytes"],
        "rows": len(frame),
        "schema": {"fields": fields, "primaryKey": key, "missingValues": [""]},
    }


def _descriptor(
    kind: str,
    run_id: str,
    resources: list[dict[str, Any]],
    as_of: Any,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A Frictionless tabular data package descriptor plus bmkt's run fields."""
    return {
        "profile": "tabular-data-package",
        "name": f"bmkt-{kind}-" + re.sub(r"[^a-z0-9._-]+", "-", run_id.lower()),
        "title": f"bmkt {kind.replace('-', ' ')}, run {run_id}",
        "resources": resources,
        "run_id": run_id,
        "as_of": _jsonable(as_of) if not isinstance(as_of, str) else as_of,
        "parameters": dict(parameters),
        "inputs": dict(inputs),
        "row_counts": {r["path"]: r["rows"] for r in resources},
        **extra,
        "package_versions": package_versions(),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, Path):
        return v.as_posix()
    if isinstance(v, set | frozenset | tuple):
        return sorted(v, key=str) if isinstance(v, set | frozenset) else list(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


# --------------------------------------------------------------------------- checks


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise ConfigError(
            f"run_id must be letters, digits and '_ . : + -' (a folder name). Got {run_id!r}."
        )


def _check_plan(plan: SendPlan) -> None:
    """Last line of defence before files reach the sending step."""
    s = plan.sends
    missing = [c for c in SEND_COLUMNS if c not in s.columns]
    if missing:
        raise PublishError(f"send plan: sends lack columns {missing}; nothing was published.")
    bad = ~s["email"].astype("string").str.match(EMAIL_REGEX).fillna(False).astype(bool)
    bad |= s["email"].map(lambda e: isinstance(e, str) and e.startswith(FORMULA_PREFIXES))
    if bad.any():
        raise PublishError(
            f"send plan: {int(bad.sum())} sends have a missing or malformed email, "
            f"e.g. customer_id {s.loc[bad, 'customer_id'].head(3).tolist()}; nothing was published."
        )
    dup = s.duplicated(["campaign_id", "customer_id"])
    if dup.any():
        raise PublishError(
            f"send plan: {int(dup.sum())} customers appear twice in one campaign, "
            f"e.g. {s.loc[dup, 'customer_id'].head(3).tolist()}; nothing was published."
        )
    both = s.merge(plan.holdouts, on=["campaign_id", "customer_id"], how="inner")
    if len(both):
        raise PublishError(
            f"send plan: {len(both)} customers are both held out and sent, "
            f"e.g. {both['customer_id'].head(3).tolist()}; nothing was published."
        )
    for name, frame in (
        ("holdouts", plan.holdouts),
        ("exclusions", plan.exclusions.rows),
        ("global_control", plan.global_control),
    ):
        if "email" in frame.columns:
            raise PublishError(f"send plan: {name} carries email addresses; nothing was published.")
    ids = plan.params.get("campaign_ids") or sorted(s["campaign_id"].unique())
    lower = [str(c).lower() for c in ids]
    if len(set(lower)) != len(lower):
        raise PublishError(
            f"campaign ids {ids} differ only in case: their files would collide; "
            "nothing was published."
        )


# --------------------------------------------------------------------------- publication


def _recover(target: Path) -> None:
    """Repair a crash of an earlier publication and drop its leftovers."""
    backup = target.with_name(f".{target.name}.old")
    if backup.exists():
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(backup, target)
            log.warning("restored %s from an interrupted publication", target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    backup = target.with_name(f".{target.name}.old")
    had_old = target.exists()
    if had_old:
        os.rename(target, backup)
    try:
        os.rename(new, target)
    except BaseException:
        if had_old and not target.exists():
            os.rename(backup, target)
        raise
    if had_old:
        shutil.rmtree(backup, ignore_errors=True)
    _fsync_dir(target.parent)


def _publish_folder(target: Path, write: Any, what: str) -> None:
    """Run ``write(tmp)`` into a temporary sibling of ``target``, then swap it in."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise PublishError(f"cannot prepare {target} ({exc}); nothing was published.") from exc
    try:
        write(tmp)
        _fsync_dir(tmp)
        _swap(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, BmktError) or not isinstance(exc, Exception):
            raise
        raise PublishError(
            f"publishing {what} failed ({type(exc).__name__}: {exc}); "
            "nothing was published and the previous publication is untouched."
        ) from exc


def publish_plan(
    plan: SendPlan,
    out_dir: str | os.PathLike[str] | None,
    run_id: str,
    as_of: Any,
    parameters: Mapping[str, Any] | None = None,
    inputs_fingerprints: Mapping[str, Any] | None = None,
) -> Path:
    """Publish a send plan atomically to ``<out_dir>/<run_id>/send_lists/``.

    See the module docstring for the files and the guarantees.

    Parameters
    ----------
    plan : SendPlan
        From :func:`bmkt.plan.build_plan`.
    out_dir : path-like or None
        The reports folder (:data:`bmkt.config.REPORTS_DIR` when ``None``).
        Inside a notebook run by :mod:`bmkt.runner`, pass the parent of the
        notebook's ``output_dir`` so the lists land in the run's staging folder.
    run_id : str
        The run the lists belong to (a folder name).
    as_of : date-like
        The run date, recorded in the descriptor.
    parameters : mapping, optional
        The run's parameters as the user gave them (JSON-serialisable).
    inputs_fingerprints : mapping, optional
        ``{input name: fingerprint}`` (e.g. :func:`bmkt.io.fingerprint`).

    Returns
    -------
    Path
        The published ``send_lists`` folder.

    Raises
    ------
    PublishError
        Anything failed; nothing was published and the previous publication
        of ``run_id`` is untouched.
    ConfigError
        ``run_id`` is not a valid folder name.
    """
    _check_run_id(run_id)
    _check_plan(plan)
    target = Path(out_dir if out_dir is not None else config.REPORTS_DIR) / run_id / SEND_LISTS
    _publish_folder(
        target,
        lambda tmp: _write_all(
            plan, tmp, run_id, as_of, parameters or {}, inputs_fingerprints or {}
        ),
        f"the send lists of run {run_id!r}",
    )
    log.info("published %d send rows to %s", len(plan.sends), target)
    return target


def _write_all(
    plan: SendPlan,
    folder: Path,
    run_id: str,
    as_of: Any,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Any],
) -> None:
    campaign_ids = list(
        plan.params.get("campaign_ids") or sorted(plan.sends["campaign_id"].unique())
    )
    files: list[tuple[str, str, pd.DataFrame, list[str]]] = []
    for cid in campaign_ids:
        sends = plan.sends.loc[plan.sends["campaign_id"] == cid, list(SEND_COLUMNS)]
        files.append((f"send_{cid}", f"send_{cid}.csv", sends, ["customer_id"]))
    for cid in campaign_ids:
        held = plan.holdouts.loc[plan.holdouts["campaign_id"] == cid, list(HOLDOUT_COLUMNS)]
        files.append((f"holdout_{cid}", f"holdout_{cid}.csv", held, ["customer_id"]))
    counts = plan.exclusions.counts
    files.append(("exclusions", "exclusions.csv", counts, ["campaign_id", "reason"]))
    detail = plan.exclusions.rows.loc[:, list(EXCLUSION_COLUMNS)]
    files.append(
        ("exclusions_detail", "exclusions_detail.csv", detail, ["customer_id", "campaign_id"])
    )
    gc = plan.global_control.loc[:, ["customer_id", "segment"]]
    files.append(("global_control", "global_control.csv", gc, ["customer_id"]))

    emails = plan.sends["email"].dropna().tolist()
    with _Writer() as writer:
        resources = []
        for name, path, frame, key in files:
            frame = frame.reset_index(drop=True)
            stats = _write_csv(frame, folder / path, writer)
            if not name.startswith("send_"):
                leaked = find_emails(stats.pop("text"), emails)
                if leaked:
                    raise PublishError(
                        f"{path}: {len(leaked)} email addresses outside a send file; "
                        "nothing was published."
                    )
            resources.append(_resource(name.lower(), path, frame, stats, key))

        descriptor = _descriptor(
            "send-lists",
            run_id,
            resources,
            as_of,
            parameters,
            inputs,
            plan_parameters=plan.params,
            exclusions_by_reason=plan.exclusions.by_reason(),
        )
        text = json.dumps(
            descriptor, indent=2, sort_keys=True, ensure_ascii=False, default=_jsonable
        )
        leaked = find_emails(text, emails)
        if leaked:
            raise PublishError(
                f"datapackage.json: {len(leaked)} email addresses in the parameters; "
                "nothing was published."
            )
        data = (text + "\n").encode("utf-8")
        writer.write(folder / "datapackage.json", data)
        writer.write(folder / "manifest.json", data)


SEGMENTS = "segments"
_ANY_ADDRESS = re.compile(r"[^\s,@\"']+@[^\s,@\"']+\.[A-Za-z]{2,}")


def _has_address(text: str) -> bool:
    """Whether ``text`` holds something like an email address (:data:`_ANY_ADDRESS`).

    A match never spans a line break, so only lines with an ``@`` are searched.
    """
    if "@" not in text:
        return False
    return any(_ANY_ADDRESS.search(line) for line in text.split("\n") if "@" in line)


#: Score columns written beside each segment list (ids and scores, never addresses).
SEGMENT_LIST_COLUMNS = (
    "segment",
    "rfm_segment",
    "clv",
    "p_alive",
    "churn_risk",
    "purchase_propensity",
    "engagement_state",
    "preferred_hour",
    "top_category",
)


def publish_segments(
    assignment: pd.DataFrame,
    scores: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    run_id: str,
    as_of: Any,
    parameters: Mapping[str, Any] | None = None,
    inputs_fingerprints: Mapping[str, Any] | None = None,
) -> Path:
    """Publish the segment assignment and one list per segment, atomically.

    Writes ``<out_dir>/<run_id>/segments/``: ``assignment.csv`` (customer_id,
    primary segment, one membership column per rule), ``segment_<slug>.csv``
    per segment (customer_id and the scores of :data:`SEGMENT_LIST_COLUMNS`
    present), ``segment_sizes.csv`` and a ``datapackage.json`` descriptor
    (sha256, rows, schema, run id, parameters, versions). Customer ids only:
    an email address anywhere aborts the publication. Same guarantees as
    :func:`publish_plan` (temporary folder, swap, byte-identical reruns).

    Parameters
    ----------
    assignment : DataFrame
        From :meth:`bmkt.segments.RuleSet.assign` (index ``customer_id``).
    scores : DataFrame
        The per-customer score table (index ``customer_id``).
    out_dir, run_id, as_of, parameters, inputs_fingerprints
        As for :func:`publish_plan`.

    Returns
    -------
    Path
        The published ``segments`` folder.
    """
    from bmkt.segments import slugify

    _check_run_id(run_id)
    if "segment" not in assignment.columns:
        raise PublishError("segment assignment has no 'segment' column; nothing was published.")
    target = Path(out_dir) / run_id / SEGMENTS
    assign = assignment.copy()
    assign.index.name = "customer_id"
    assign = assign.sort_index().reset_index()
    assign["segment"] = assign["segment"].astype(str)
    extra = [c for c in SEGMENT_LIST_COLUMNS if c in scores.columns and c != "segment"]
    listed = assign[["customer_id", "segment"]].join(
        scores[extra].reset_index(drop=False).set_index(scores.index.name or "customer_id"),
        on="customer_id",
    )

    def write(tmp: Path) -> None:
        files: list[tuple[str, str, pd.DataFrame, list[str], str | None]] = [
            ("assignment", "assignment.csv", assign, ["customer_id"], None)
        ]
        sizes = assign.groupby("segment", sort=True).size().rename("customers").reset_index()
        files.append(("segment_sizes", "segment_sizes.csv", sizes, ["segment"], None))
        # the segment lists share one rendering of the listed rows, split by segment
        parts = _csv_parts(listed)
        lines = np.asarray(parts[1], dtype=object) if parts is not None else None
        segment = listed["segment"].to_numpy()
        for name in sorted(assign["segment"].unique()):
            slug = slugify(name)
            mask = segment == name
            rows = listed[mask]
            text = None
            if parts is not None:
                text = "\n".join([parts[0], *lines[mask].tolist()]) + "\n"
            files.append((f"segment_{slug}", f"segment_{slug}.csv", rows, ["customer_id"], text))
        resources = []
        with _Writer() as writer:
            for name, path, frame, key, text in files:
                frame = frame.reset_index(drop=True)
                stats = _write_csv(frame, tmp / path, writer, text)
                if _has_address(stats.pop("text")):
                    raise PublishError(
                        f"{path}: email addresses in a segment file; nothing was published."
                    )
                resources.append(_resource(name.lower(), path, frame, stats, key))
            descriptor = _descriptor(
                "segments", run_id, resources, as_of, parameters or {}, inputs_fingerprints or {}
            )
            text = json.dumps(
                descriptor, indent=2, sort_keys=True, ensure_ascii=False, default=_jsonable
            )
            writer.write(tmp / "datapackage.json", (text + "\n").encode("utf-8"))

    _publish_folder(target, write, f"the segments of run {run_id!r}")
    log.info(
        "published %d customers in %d segments to %s",
        len(assign),
        assign["segment"].nunique(),
        target,
    )
    return target
