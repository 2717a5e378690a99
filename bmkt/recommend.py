"""Item-to-item recommendations from co-purchases and co-views.

:class:`ItemSimilarity` counts how often two products occur together:

* **co-purchase**: the number of customers who bought both (order lines of
  purchases, i.e. orders with ``revenue >= 0``, placed before ``as_of``);
* **co-view**: the number of *view sessions* in which both were viewed, a
  view session being one customer's ``product_view`` events on one calendar
  day (the contract has no session id).

Each count is cosine-normalised, ``c(i, j) / sqrt(n(i) * n(j))`` with
``n(i)`` the number of customers (sessions) holding ``i``, after dropping
pairs seen fewer than ``min_support`` times, and the two are combined::

    score(i, j) = (cos_purchase(i, j) + view_weight * cos_view(i, j)) / (1 + view_weight)

so scores lie in ``[0, 1]``. The ``top_k`` most similar products of every
product are kept (ties: smaller product id first).

The engine filters the order lines and product views (one pass over both);
the counts are then sparse matrix products ``X'X`` of the binary basket x
product (session x product) matrices, so no table of product pairs is ever
built. The same pass gives every customer's history (distinct products, most
recent first, and which were bought), which :meth:`ItemSimilarity.fit` keeps
in compact arrays (CSR layout, about 5 bytes per customer and product) for
:meth:`ItemSimilarity.recommend`.

:meth:`ItemSimilarity.recommend` scores candidate products for a customer by
summing, over the customer's *seeds*, ``weight(seed) * score(seed,
candidate)``. Seeds are the ``n_seeds`` most recent distinct products the
customer bought (weight 1) or viewed without buying (weight
``view_weight``), plus any ``seed_products`` given (weight ``seed_weight``,
e.g. the items of an abandoned cart). Candidates already bought (with
``exclude_purchased``) and the seeds given explicitly are never recommended.
Customers with too few candidates -- in particular those without history --
are topped up with the most popular products (most distinct buyers before
``as_of``; ties by product id), skipping excluded products; those rows have
``source == "popular"`` and ``score == 0``. Seeds and exclusions come from
the histories kept by ``fit`` (``recommend`` reads no events); the candidate
scores are the sparse product of the customer x seed weights and the product
x product similarities, a chunk of customers at a time.

References
----------
.. [1] Linden, G., Smith, B., & York, J. (2003). Amazon.com recommendations:
   Item-to-item collaborative filtering. IEEE Internet Computing, 7(1), 76-80.
.. [2] Sarwar, B., Karypis, G., Konstan, J., & Riedl, J. (2001). Item-based
   collaborative filtering recommendation algorithms. WWW '01, 285-295.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ibis
import numpy as np
import pandas as pd
import scipy.sparse as sp
from ibis.expr.types import Table

from bmkt import engine
from bmkt.errors import ConfigError, NotFittedError
from bmkt.io import Store, open_store
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = ["ItemSimilarity", "RECOMMEND_COLUMNS"]

#: Columns of :meth:`ItemSimilarity.recommend`.
RECOMMEND_COLUMNS = ("customer_id", "rank", "product_id", "score", "source")


def _ts(value: pd.Timestamp) -> ibis.Value:
    return ibis.literal(value.to_pydatetime(), type="timestamp")


def _fetch(con: Any, expr: Table) -> dict[str, np.ndarray]:
    """Run ``expr`` and return its columns as numpy arrays (through Arrow, no pandas frame)."""
    table = con.to_pyarrow(expr)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _dense_int_range(values: np.ndarray, n: int) -> tuple[int, int] | None:
    """``(min, max)`` of integer ``values`` when a lookup table over that range is cheap."""
    if values.dtype.kind not in "iu" or not len(values):
        return None
    lo, hi = int(values.min()), int(values.max())
    return (lo, hi) if hi - lo < max(4 * n, 1 << 20) else None


def _factorize_into(values: np.ndarray, universe: pd.Index) -> np.ndarray:
    """Positions of ``values`` in ``universe`` (every value must be in it)."""
    if not len(values):
        return np.zeros(0, dtype=np.intp)
    span = _dense_int_range(values, len(values))
    if span is not None and universe.dtype.kind in "iu":
        lut = np.full(span[1] - span[0] + 1, -1, dtype=np.intp)
        inside = (universe >= span[0]) & (universe <= span[1])
        lut[universe[inside].to_numpy() - span[0]] = np.flatnonzero(inside)
        return lut[values - span[0]]
    codes, uniques = pd.factorize(values)
    return universe.get_indexer(uniques)[codes]


def _row_codes(values: np.ndarray) -> np.ndarray:
    """Row index per customer id: the id's offset when ids are compact integers, else a code."""
    span = _dense_int_range(values, len(values))
    if span is not None:
        return values - span[0]
    return pd.factorize(values)[0]


def _universe(*parts: np.ndarray) -> pd.Index:
    """Sorted distinct values of ``parts`` (the product code space: code order = id order)."""
    uniques = [pd.unique(p) for p in parts if len(p)]
    if not uniques:
        return pd.Index(parts[0][:0]) if parts else pd.Index([])
    return pd.Index(np.unique(np.concatenate(uniques)))


def _incidence(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Binary basket x product matrix (duplicate pairs count once)."""
    n_rows = int(rows.max()) + 1 if len(rows) else 0
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _session_incidence(
    customers: np.ndarray, days: np.ndarray, products: np.ndarray, n_products: int
) -> sp.csr_matrix:
    """Binary view session x product matrix, a session being one customer's calendar day.

    Built as a customer x (day, product) matrix: sorting each customer's row
    lays its days out in runs, and every run is one session (no hashing of
    (customer, day) pairs).
    """
    if not len(customers):
        return sp.csr_matrix((0, n_products), dtype=np.int32)
    rows = _row_codes(customers)
    d = days.astype("datetime64[D]").astype(np.int64)
    d -= d.min()
    by_customer = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, d * n_products + products)),
        shape=(int(rows.max()) + 1, (int(d.max()) + 1) * n_products),
    )
    by_customer.sum_duplicates()  # distinct (customer, day, product), sorted within each row
    cols = by_customer.indices
    session = cols // n_products
    new = np.ones(len(cols), dtype=bool)
    new[1:] = session[1:] != session[:-1]
    new[by_customer.indptr[:-1][np.diff(by_customer.indptr) > 0]] = True  # a new customer
    starts = np.flatnonzero(new)
    indptr = np.append(starts, len(cols))
    indices = (cols % n_products).astype(np.int32)
    return sp.csr_matrix(
        (np.ones(len(cols), dtype=np.int32), indices, indptr), shape=(len(starts), n_products)
    )


def _customer_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Row code of every customer id, the id of every code, and the first id of a range.

    Compact integer ids are offsets from the smallest (the ids are then the
    range ``first, first + 1, ...``: the third value); others are factorised.
    """
    span = _dense_int_range(values, len(values))
    if span is not None:
        ids = np.arange(span[0], span[1] + 1, dtype=values.dtype)
        return (values - span[0]).astype(np.int64, copy=False), ids, span[0]
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), np.asarray(uniques), None


@dataclass(frozen=True)
class _Histories:
    """Every customer's distinct products before ``as_of``, most recent first (CSR layout).

    Customer ``ids[r]`` holds ``products[indptr[r]:indptr[r + 1]]`` (codes into
    ``product_ids``), ordered by last purchase -- last view for a product never
    bought -- descending, then by product id; ``bought`` flags purchased products.
    ``first_id`` is set when ``ids`` is the integer range from it.
    """

    ids: np.ndarray
    first_id: int | None
    indptr: np.ndarray
    products: np.ndarray
    bought: np.ndarray
    product_ids: np.ndarray

    @classmethod
    def concat(cls, parts: list[_Histories]) -> _Histories:
        """The histories of disjoint chunks of customers, in order, as one.

        The ids stay one integer range (``first_id``) when each chunk covers
        the range that follows the one before it.
        """
        if len(parts) == 1:
            return parts[0]
        ids = np.concatenate([p.ids for p in parts])
        contiguous = all(p.first_id is not None for p in parts) and all(
            a.ids[-1] + 1 == b.ids[0] for a, b in zip(parts[:-1], parts[1:], strict=True)
        )
        offsets = np.cumsum([0] + [len(p.products) for p in parts[:-1]])
        indptr = np.concatenate(
            [parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets, strict=True)]
        )
        return cls(
            ids,
            parts[0].first_id if contiguous else None,
            indptr,
            np.concatenate([p.products for p in parts]),
            np.concatenate([p.bought for p in parts]),
            parts[0].product_ids,
        )

    def rows_of(self, customer_ids: np.ndarray) -> np.ndarray:
        """Row of each customer id, ``-1`` for a customer without history."""
        values = np.asarray(customer_ids)
        if not len(self.ids) or not len(values):
            return np.full(len(values), -1, dtype=np.int64)
        if self.first_id is not None and values.dtype.kind in "iu":
            lo, hi = self.first_id, self.first_id + len(self.ids) - 1
            inside = (values >= lo) & (values <= hi)
            rows = np.full(len(values), -1, dtype=np.int64)
            rows[inside] = values[inside].astype(np.int64) - lo
            return rows
        return pd.Index(self.ids).get_indexer(values).astype(np.int64, copy=False)


def _histories(
    rows: np.ndarray,
    products: np.ndarray,
    times: np.ndarray,
    bought: np.ndarray,
    n_rows: int,
    n_products: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per customer row: distinct products, most recent first, and whether each was bought.

    ``rows``, ``products``, ``times`` (int64) and ``bought`` describe events
    (purchases and views). A product's time is its last purchase if it was
    bought, else its last view; products are ordered by that time descending,
    then by product code. Returns the CSR ``(indptr, products, bought)``.

    Two sorts within customer rows (CSR construction: a counting sort by row,
    then short per-row sorts) stand in for a global sort: the first orders a
    customer's events by (product, bought, time), so the last event of each
    product is the one that counts; the second orders those by time
    descending, then product.
    """
    if not len(rows):
        return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
    # times as small integers in the same order: offsets divided by their gcd, or ranks
    t = times - times.min()
    step = int(np.gcd.reduce(t)) or 1
    if step > 1:
        t //= step
    span = int(t.max()) + 1
    if span > (1 << 61) // (2 * n_products):
        _, t = np.unique(times, return_inverse=True)
        span = int(t.max()) + 1
    width = 2 * span
    col = (products.astype(np.int64, copy=False) * 2 + bought) * span + t
    del t
    events = sp.csr_matrix(
        (np.ones(len(col), dtype=bool), (rows, col)), shape=(n_rows, n_products * width)
    )
    del col
    events.sum_duplicates()
    col = events.indices
    prod = col // width
    last = np.ones(len(col), dtype=bool)  # the last event of each (customer, product)
    last[:-1] = prod[1:] != prod[:-1]
    starts = events.indptr[1:-1]
    last[starts[(starts > 0) & (starts < len(col))] - 1] = True
    ends = np.flatnonzero(last)
    indptr = np.searchsorted(ends, events.indptr)
    col, prod = col[ends], prod[ends]
    del events, last, ends
    was_bought = (col // span) % 2 == 1
    recent = (span - 1) - col % span  # 0 = most recent
    del col
    ordered = sp.csr_matrix(
        (was_bought.astype(np.int8) + 1, recent * n_products + prod, indptr),
        shape=(n_rows, span * n_products),
    )
    ordered.sort_indices()
    return (
        ordered.indptr.astype(np.int64, copy=False),
        (ordered.indices % n_products).astype(np.int32),
        ordered.data == 2,
    )


def _co_counts(x: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Co-occurrence counts ``X'X`` and column counts of a binary basket matrix.

    Both are sums over the baskets (rows), so the baskets of disjoint groups
    of customers can be counted apart and added (:func:`_sum_counts`).
    """
    return (x.T.tocsr() @ x).tocsr(), np.asarray(x.sum(axis=0), dtype=np.int64).ravel()


def _sum_counts(
    counts: list[tuple[sp.csr_matrix, np.ndarray]], n_cols: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The sum of several :func:`_co_counts` over the same columns."""
    if len(counts) == 1:  # one chunk: nothing to add
        return counts[0]
    co = sp.csr_matrix((n_cols, n_cols), dtype=np.int64)
    n = np.zeros(n_cols, dtype=np.int64)
    for c, k in counts:
        co = co + c.astype(np.int64)
        n += k
    return co.tocsr(), n


def _pairs(
    co: sp.csr_matrix, n: np.ndarray, min_support: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosine-normalised co-occurrence pairs from (summed) :func:`_co_counts`.

    Returns ``(item, other, count, cosine)`` over the pairs ``item != other``
    seen in at least ``min_support`` baskets, ``cosine = c(i, j) / sqrt(n(i) n(j))``.
    """
    co = co.tocoo()
    i, j = co.row.astype(np.int64), co.col.astype(np.int64)
    count = co.data.astype(np.int64)
    keep = (i != j) & (count >= min_support)
    i, j, count = i[keep], j[keep], count[keep]
    cos = count.astype(np.float64) / np.sqrt((n[i] * n[j]).astype(np.float64))
    return i, j, count, cos


def _group_starts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start of each run of equal values in ``sorted_keys`` and each element's rank in its run."""
    n = len(sorted_keys)
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(first)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
    return starts, rank


def _top_n_per_row(
    m: sp.csr_matrix, valid: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` largest valid entries of every row (ties: smaller column first).

    Returns ``(row, column, value, rank)`` with ``rank`` 1-based (rank-major order).
    """
    counts = np.diff(m.indptr)
    n_valid = np.bincount(np.repeat(np.arange(m.shape[0]), counts)[valid], minlength=m.shape[0])
    nonempty = counts > 0
    starts = m.indptr[:-1][nonempty]
    seg = counts[nonempty]
    rows_ne = np.flatnonzero(nonempty)
    vals = np.where(valid, m.data, -np.inf)
    cols = m.indices.astype(np.int64)
    big = np.int64(m.shape[1])
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(n):
        live = n_valid[rows_ne] > k
        if not live.any():
            break
        best = np.maximum.reduceat(vals, starts)
        is_best = vals == np.repeat(best, seg)
        col = np.minimum.reduceat(np.where(is_best, cols, big), starts)
        chosen = is_best & (cols == np.repeat(col, seg))
        vals[chosen] = -np.inf
        out.append((rows_ne[live], col[live], best[live], np.full(int(live.sum()), k + 1)))
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), empty
    row, col, val, rank = (np.concatenate(parts) for parts in zip(*out, strict=True))
    return row, col, val, rank


#: Threads of :meth:`ItemSimilarity.recommend` (its chunks of customers) and of
#: :meth:`ItemSimilarity.fit` (co-views beside the histories): the cores, at most 4.
_WORKERS = max(
    1,
    min(
        4,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    ),
)


def _submit(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` run in ``pool`` when there is a second core, else now (a finished future)."""
    if _WORKERS > 1:
        return pool.submit(fn, *args)
    done: Future = Future()
    done.set_result(fn(*args))
    return done


def _co_view_counts(
    customers: np.ndarray, days: np.ndarray, products: np.ndarray, n_products: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """:func:`_co_counts` of the view sessions (:func:`_session_incidence`)."""
    return _co_counts(_session_incidence(customers, days, products, n_products))


#: Most events of a chunk whose co-views :meth:`ItemSimilarity.fit` counts beside its
#: histories (larger chunks count them first: at 100M events, several GB apart).
_OVERLAP_EVENTS = 60_000_000


#: Customers scored at a time in :meth:`ItemSimilarity.recommend` (bounds memory).
_CHUNK_ROWS = 65_536
#: Customers whose seeds and exclusions :meth:`ItemSimilarity.recommend` lays out
#: at once; more are recommended for in slices of this many (the same result).
_RECOMMEND_CUSTOMERS = 2_000_000


def _recommend_rows(
    seeds: sp.csr_matrix,
    similar: sp.csr_matrix,
    excluded: sp.csr_matrix,
    start: int,
    n: int,
    exact_pattern: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``n`` candidates of the customers ``start:start + _CHUNK_ROWS``."""
    stop = min(start + _CHUNK_ROWS, seeds.shape[0])
    s = seeds[start:stop]
    scores = s @ similar
    if exact_pattern:  # the product drops zero sums: rebuild the candidate pattern apart
        ones_s = sp.csr_matrix((np.ones(s.nnz), s.indices, s.indptr), shape=s.shape)
        ones_m = sp.csr_matrix(
            (np.ones(similar.nnz), similar.indices, similar.indptr), shape=similar.shape
        )
        pattern = ones_s @ ones_m
        pattern.sort_indices()
        scores.sort_indices()
        n_cols = similar.shape[1]
        key_p = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr)) * n_cols
        key_s = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr)) * n_cols
        values = np.zeros(pattern.nnz)
        values[np.searchsorted(key_p + pattern.indices, key_s + scores.indices)] = scores.data
        scores = sp.csr_matrix((values, pattern.indices, pattern.indptr), shape=pattern.shape)
    marker = sp.csr_matrix(
        (np.arange(1, scores.nnz + 1, dtype=np.float64), scores.indices, scores.indptr),
        shape=scores.shape,
    )
    hit = excluded[start:stop].multiply(marker).tocsr()
    valid = np.ones(scores.nnz, dtype=bool)
    valid[hit.data.astype(np.int64) - 1] = False
    row, col, val, rank = _top_n_per_row(scores, valid, n)
    return row + start, col, val, rank


#: Events (order lines and product views) fetched at a time by :meth:`ItemSimilarity.fit`:
#: more are read in chunks of customers (consecutive ids), so memory stays bounded.
_CHUNK_EVENTS = 100_000_000


#: Events laid out at a time by :meth:`ItemSimilarity.fit` once read: a chunk with more
#: is split into slices of consecutive customer ids (the same model). The sorts and
#: sparse layouts hold about ten temporaries the size of their events; slices keep
#: those small and reuse one another's memory: at 1M customers (49M events) the fit
#: took 12 s in the whole job instead of 32 s, nearly all of the difference the
#: kernel zeroing fresh pages.
_SLICE_EVENTS = 8_000_000
#: Events whose ids place the slices' edges (a strided sample of a chunk's events).
_EDGE_SAMPLE = 1_000_000


def _customer_slices(
    ev: dict[str, np.ndarray], span: tuple[int, int] | None
) -> Iterator[tuple[dict[str, np.ndarray], tuple[int, int] | None]]:
    """The events ``ev`` of a chunk in slices of about :data:`_SLICE_EVENTS`, by customer id.

    Yields ``(events, span)``: consecutive ranges of integer customer ids
    covering ``span`` (the ids' range when ``None``), split at quantiles of
    the events' ids (taken from a strided sample, so customers whose ids
    cluster still make even slices; every customer in one slice), each with
    its events in their order, and no slice without events. One slice,
    ``ev`` itself, when the events are few or the ids are not integers.
    """
    ids = ev["customer_id"]
    n = len(ids)
    if n <= _SLICE_EVENTS or ids.dtype.kind not in "iu":
        yield ev, span
        return
    lo, hi = span if span is not None else (int(ids.min()), int(ids.max()))
    k = -(-n // _SLICE_EVENTS)
    sample = np.sort(ids[:: max(1, n // _EDGE_SAMPLE)])
    # Python integers (exact past 2**53 and at the dtype's ends)
    inner = sorted({int(sample[len(sample) * i // k]) for i in range(1, k)})
    edges = [lo, *[e for e in inner if lo < e <= hi], hi + 1]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        at = np.flatnonzero((ids >= a) & (ids <= b - 1))
        if len(at):
            yield {name: values[at] for name, values in ev.items()}, (a, b - 1)


def _customer_ranges(store: Store, views: bool) -> list[tuple[int, int] | None]:
    """Customer-id ranges splitting the events of a fit into chunks of about :data:`_CHUNK_EVENTS`.

    The events are counted from above by the rows of ``order_lines`` (and
    ``web_events`` with ``views``), which engines know without a scan.
    ``[None]`` (one chunk: everything) when they fit, or when customer ids
    are not integers; else ranges of equal width over the customer ids of
    the orders and web events (equal in width, not in events: customers whose
    ids cluster make uneven chunks).
    """
    tables = [store.table("orders")]
    lines = store.table("order_lines")
    n = int(engine.to_pandas(lines.aggregate(n=lines.count()))["n"].iloc[0])
    if views and "web_events" in store:
        web = store.table("web_events")
        tables.append(web)
        n += int(engine.to_pandas(web.aggregate(n=web.count()))["n"].iloc[0])
    if n <= _CHUNK_EVENTS or not all(t.customer_id.type().is_integer() for t in tables):
        return [None]
    bounds = [
        engine.to_pandas(t.aggregate(lo=t.customer_id.min(), hi=t.customer_id.max())).iloc[0]
        for t in tables
    ]
    lo = min(int(b["lo"]) for b in bounds if pd.notna(b["lo"]))
    hi = max(int(b["hi"]) for b in bounds if pd.notna(b["hi"]))
    k = -(-n // _CHUNK_EVENTS)
    # integer edges (float ones round ids past 2**53: customers would fall between chunks)
    edges = [lo + (hi + 1 - lo) * i // k for i in range(k + 1)]
    return [(a, b - 1) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class ItemSimilarity:
    """Item-to-item similarity from co-purchases and co-views.

    Parameters
    ----------
    min_support : int
        Minimum co-occurrence count (customers for purchases, sessions for
        views) for a pair to count (default 2).
    top_k : int
        Similar products kept per product (default 20).
    view_weight : float
        Weight of co-views relative to co-purchases (0 ignores views),
        also the weight of a viewed-only seed (default 0.5).
    n_seeds : int
        Most recent distinct products of a customer used as seeds (default 10).

    Attributes
    ----------
    similar_items_ : DataFrame
        ``product_id``, ``similar_product_id``, ``score``, ``co_purchases``,
        ``co_views``; sorted by product, score descending, similar product.
    popularity_ : DataFrame
        ``product_id``, ``n_buyers``; most popular first.
    as_of_ : Timestamp
        Exclusive end of the data the model was fitted on.
    store_ : Store
        The store fitted on (:meth:`recommend` casts ids to its types).
    histories_ : object
        Every customer's distinct products bought or viewed before
        ``as_of_``, most recent first (last purchase, else last view), with
        which were bought: the seeds and exclusions of :meth:`recommend`.

    Examples
    --------
    >>> model = ItemSimilarity(min_support=1).fit(store, "2024-06-30")  # doctest: +SKIP
    >>> model.recommend([1, 2], n=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        min_support: int = 2,
        top_k: int = 20,
        view_weight: float = 0.5,
        n_seeds: int = 10,
    ) -> None:
        self.min_support = min_support
        self.top_k = top_k
        self.view_weight = view_weight
        self.n_seeds = n_seeds

    def _validate_params(self) -> None:
        for name in ("min_support", "top_k", "n_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be an integer >= 1. Got {value!r}.")
        w = self.view_weight
        if not isinstance(w, int | float | np.integer | np.floating) or not w >= 0:
            raise ConfigError(f"'view_weight' must be a number >= 0. Got {w!r}.")

    # ------------------------------------------------------------------ data

    def _purchases(self) -> Table:
        orders = self.store_.table("orders")
        lines = self.store_.table("order_lines")
        buys = orders.filter(
            orders.ordered_at < _ts(self.as_of_),
            orders.revenue >= 0,
            orders.customer_id.notnull(),
        ).select("order_id", "customer_id", "ordered_at")
        lines = lines.filter(lines.product_id.notnull()).select(
            line_order=lines.order_id, product_id=lines.product_id
        )
        j = buys.join(lines, buys.order_id == lines.line_order)
        return j.select("customer_id", "product_id", at=j.ordered_at.cast("timestamp"))

    def _views(self) -> Table:
        ev = self.store_.table("web_events")
        views = ev.filter(
            ev.event_type == "product_view",
            ev.product_id.notnull(),
            ev.customer_id.notnull(),
            ev.occurred_at < _ts(self.as_of_),
        )
        return views.select("customer_id", "product_id", at=views.occurred_at.cast("timestamp"))

    # ------------------------------------------------------------------ fit

    def fit(self, store: Store | Mapping[str, pd.DataFrame], as_of: object) -> ItemSimilarity:
        """Compute item-to-item similarities from the data before ``as_of``.

        Parameters
        ----------
        store : Store or dict of DataFrames
            Needs ``orders`` and ``order_lines``; ``web_events`` when
            ``view_weight > 0`` (an empty or missing table is fine).
        as_of : str or Timestamp
            Run date (:func:`bmkt.schema.parse_as_of`).

        Returns
        -------
        ItemSimilarity
            ``self``.
        """
        self._validate_params()
        self.store_ = store if isinstance(store, Store) else open_store(store)
        self.as_of_ = parse_as_of(as_of)
        con = self.store_.con
        w = float(self.view_weight)

        # one pass over the order lines and the product views: the customers' histories
        # (kept for recommend) and co-occurrences as sparse products X'X of binary
        # basket x product (session x product) matrices, no pair explosion in SQL
        events = self._purchases().mutate(bought=ibis.literal(True))
        if w > 0:
            events = events.union(self._views().mutate(bought=ibis.literal(False)))
        parts = []  # per chunk of customers: histories and co-occurrence counts
        universe: pd.Index | None = None
        ranges = _customer_ranges(self.store_, w > 0)
        if len(ranges) > 1:  # one product code space for every chunk
            universe = _universe(_fetch(con, events.select("product_id").distinct())["product_id"])
            log.info("item similarity: events read in %d chunks of customers", len(ranges))
        for span in ranges:
            chunk = events if span is None else events.filter(events.customer_id.between(*span))
            ev = _fetch(con, chunk)
            if universe is None:  # one product code space for every slice
                universe = _universe(ev["product_id"])
            for piece, piece_span in _customer_slices(ev, span):
                parts.append(self._fit_chunk(piece, universe, piece_span))
            del ev  # the chunk's events, before the next is read
        n_products = len(universe)
        self.histories_ = _Histories.concat([p.pop("histories") for p in parts])
        co_basket, n_buyers = _sum_counts([p.pop("baskets") for p in parts], n_products)
        i, j, co_p, cos_p = _pairs(co_basket, n_buyers, self.min_support)
        if w > 0:
            co_session, n_sessions = _sum_counts([p.pop("sessions") for p in parts], n_products)
            vi, vj, co_v, cos_v = _pairs(co_session, n_sessions, self.min_support)
            # outer join of the two pair sets on (item, other)
            kp, kv = i * n_products + j, vi * n_products + vj
            keys = np.union1d(kp, kv)
            at_p, at_v = np.searchsorted(keys, kp), np.searchsorted(keys, kv)
            i, j = keys // n_products, keys % n_products
            co_purchases = np.zeros(len(keys), dtype=np.int64)
            co_purchases[at_p] = co_p
            co_views = np.zeros(len(keys), dtype=np.int64)
            co_views[at_v] = co_v
            cos_purchases = np.zeros(len(keys))
            cos_purchases[at_p] = cos_p
            cos_views = np.zeros(len(keys))
            cos_views[at_v] = cos_v
        else:
            co_purchases, cos_purchases = co_p, cos_p
            co_views, cos_views = np.zeros(len(i), dtype=np.int64), np.zeros(len(i))
        score = (cos_purchases + w * cos_views) / (1.0 + w)
        # the top_k of every product: score descending, then smaller similar product id
        order = np.lexsort((j, -score, i))
        _, rank = _group_starts(i[order])
        order = order[rank < self.top_k]
        products = universe.to_numpy()
        self.similar_items_ = pd.DataFrame(
            {
                "product_id": products[i[order]],
                "similar_product_id": products[j[order]],
                "score": score[order],
                "co_purchases": co_purchases[order],
                "co_views": co_views[order],
            }
        )
        bought = np.flatnonzero(n_buyers > 0)
        bought = bought[np.lexsort((bought, -n_buyers[bought]))]
        self.popularity_ = pd.DataFrame(
            {"product_id": products[bought], "n_buyers": n_buyers[bought]}
        )
        log.info(
            "item similarity: %d pairs over %d products (%d purchased)",
            len(self.similar_items_),
            self.similar_items_["product_id"].nunique(),
            len(self.popularity_),
        )
        return self

    def _fit_chunk(
        self,
        ev: dict[str, np.ndarray],
        universe: pd.Index,
        span: tuple[int, int] | None,
    ) -> dict[str, Any]:
        """Histories and co-occurrence counts of one slice of customers' events.

        ``universe``: the product ids of every slice (codes are positions in it).
        """
        n_products = len(universe)
        values = ev.pop("customer_id")
        if span is not None and span[1] - span[0] < max(4 * len(values), 1 << 20):
            # the chunk's whole id range: compact chunks then add up to one range
            rows = (values - span[0]).astype(np.int64, copy=False)
            customer_ids = np.arange(span[0], span[1] + 1, dtype=values.dtype)
            first_id = span[0]
        else:
            rows, customer_ids, first_id = _customer_codes(values)
        del values
        prods = _factorize_into(ev.pop("product_id"), universe)
        times, bought = ev.pop("at"), ev.pop("bought").astype(bool, copy=False)
        part: dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=1) as pool:
            # the co-views in a second thread while this one lays out the histories:
            # numpy's sorts and scipy's sparse kernels release the GIL (18 s -> 11 s at 1M);
            # one after the other in a chunk larger than _OVERLAP_EVENTS (memory: both
            # hold their temporaries at once)
            sessions = None
            if self.view_weight > 0:
                view = ~bought
                args = (rows[view], times[view], prods[view], n_products)
                del view
                if len(rows) <= _OVERLAP_EVENTS:
                    sessions = _submit(pool, _co_view_counts, *args)
                else:
                    part["sessions"] = _co_view_counts(*args)
                del args
            indptr, h_prod, h_bought = _histories(
                rows, prods, times.view(np.int64), bought, len(customer_ids), n_products
            )
            if sessions is not None:
                part["sessions"] = sessions.result()
        del rows, prods, times, bought, sessions
        part["histories"] = _Histories(
            customer_ids, first_id, indptr, h_prod, h_bought, universe.to_numpy()
        )
        h_rows = np.repeat(np.arange(len(customer_ids)), np.diff(indptr))
        part["baskets"] = _co_counts(_incidence(h_rows[h_bought], h_prod[h_bought], n_products))
        return part

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "similar_items_"):
            raise NotFittedError(
                "This ItemSimilarity instance is not fitted yet. Call 'fit' with a store "
                "and as_of before 'recommend'."
            )

    # ------------------------------------------------------------------ recommend

    def recommend(
        self,
        customer_ids: Iterable[Any],
        n: int = 3,
        exclude_purchased: bool = True,
        seed_products: pd.DataFrame | Mapping[Any, Iterable[Any]] | None = None,
        seed_weight: float = 1.0,
    ) -> pd.DataFrame:
        """Top-``n`` products for each customer.

        Parameters
        ----------
        customer_ids : iterable
            Customers to recommend for (unknown ids get popular products).
        n : int
            Recommendations per customer (default 3).
        exclude_purchased : bool
            Never recommend what the customer already bought (default).
        seed_products : DataFrame or mapping, optional
            Extra seeds per customer: a mapping ``{customer_id: [product_id,
            ...]}`` or a frame with ``customer_id`` and ``product_id`` (one
            per row) or ``products`` (lists, e.g. the cart abandonment
            trigger frame). Seeds are never recommended back.
        seed_weight : float
            Weight of an explicit seed (default 1, as a purchase).

        Returns
        -------
        DataFrame
            ``customer_id``, ``rank`` (1 = best), ``product_id``, ``score``,
            ``source`` (``"similar"`` or ``"popular"``); sorted by customer and
            rank; ties broken by product id. Fewer than ``n`` rows for a
            customer only when the catalogue runs out.
        """
        self._check_is_fitted()
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"'n' must be an integer >= 1. Got {n!r}.")
        ids = pd.Index(pd.unique(pd.Series(list(customer_ids))), name="customer_id")
        if len(ids) == 0:
            return self._empty()
        if len(ids) > _RECOMMEND_CUSTOMERS:  # bounded memory: customers are independent
            parts = [
                self.recommend(
                    ids[start : start + _RECOMMEND_CUSTOMERS],
                    n,
                    exclude_purchased,
                    seed_products,
                    seed_weight,
                )
                for start in range(0, len(ids), _RECOMMEND_CUSTOMERS)
            ]
            recs = pd.concat(parts, ignore_index=True)
            return recs.sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
        con = self.store_.con
        id_type = self.store_.table("orders").customer_id.type()
        product_type = self.store_.table("order_lines").product_id.type()
        # the ids as the store spells them (output ids of "similar" rows)
        given = ids.to_numpy()
        if given.dtype == id_type.to_numpy() and given.dtype.kind in "iu":
            engine_ids = given
        else:
            wanted = ibis.memtable(
                pd.DataFrame({"want_id": given, "_pos": np.arange(len(ids), dtype=np.int64)})
            )
            wanted = wanted.select(want_id=wanted.want_id.cast(id_type), _pos=wanted._pos)
            engine_ids = (
                con.to_pyarrow(wanted.order_by("_pos")).column("want_id").to_pandas().to_numpy()
            )
        explicit = self._explicit_seeds(seed_products, ids)

        # histories kept by fit: every product bought or viewed before as_of, most recent
        # first; the first n_seeds of a customer are its seeds
        hist = self.histories_
        h_of = hist.rows_of(engine_ids)
        known = np.flatnonzero(h_of >= 0)
        first = hist.indptr[h_of[known]]
        length = hist.indptr[h_of[known] + 1] - first
        if not exclude_purchased:  # bought products beyond the seeds are not needed
            length = np.minimum(length, self.n_seeds)
        h_row = np.repeat(known, length)
        at = np.arange(len(h_row)) - np.repeat(np.cumsum(length) - length, length)
        take = np.repeat(first, length) + at

        # product codes: position in the sorted ids of every product in play
        sims = self.similar_items_
        pop_products = self.popularity_["product_id"].to_numpy()
        ex_products = np.zeros(0)
        if len(explicit):
            ex = ibis.memtable(explicit[["product_id"]].reset_index(drop=True))
            ex_products = _fetch(con, ex.select(product_id=ex.product_id.cast(product_type)))[
                "product_id"
            ]
        universe = _universe(
            sims["product_id"].to_numpy(),
            sims["similar_product_id"].to_numpy(),
            pop_products,
            hist.product_ids,
            ex_products,
        )
        n_products, n_rows = len(universe), len(ids)
        products = universe.to_numpy()
        h_prod = _factorize_into(hist.product_ids, universe)[hist.products[take]]
        h_bought = hist.bought[take]
        seed = at < self.n_seeds
        seed_w = np.where(h_bought[seed], 1.0, float(self.view_weight))
        ex_row = ids.get_indexer(explicit["customer_id"]) if len(explicit) else np.zeros(0, int)
        ex_prod = _factorize_into(ex_products, universe)
        weights = np.concatenate([seed_w, np.full(len(ex_row), float(seed_weight))])
        seeds = sp.csr_matrix(
            (
                weights,
                (np.concatenate([h_row[seed], ex_row]), np.concatenate([h_prod[seed], ex_prod])),
            ),
            shape=(n_rows, n_products),
        )
        similar = sp.csr_matrix(
            (
                sims["score"].to_numpy(dtype=float),
                (
                    _factorize_into(sims["product_id"].to_numpy(), universe),
                    _factorize_into(sims["similar_product_id"].to_numpy(), universe),
                ),
            ),
            shape=(n_products, n_products),
        )
        owned = h_bought if exclude_purchased else np.zeros(len(h_row), dtype=bool)
        o_row = np.concatenate([h_row[owned], ex_row])
        o_prod = np.concatenate([h_prod[owned], ex_prod])
        excluded = sp.csr_matrix(
            (np.ones(len(o_row), dtype=np.int8), (o_row, o_prod)), shape=(n_rows, n_products)
        )
        excluded.data[:] = 1
        # scores: seeds x similarities, summed per (customer, candidate); zero-weight seeds
        # still make candidates, so then the pattern is computed apart from the values
        exact_pattern = not (weights > 0).all()
        # chunks of customers on the cores (in order: the same rows as one by one)
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            found = list(
                pool.map(
                    lambda start: _recommend_rows(
                        seeds, similar, excluded, start, n, exact_pattern
                    ),
                    range(0, n_rows, _CHUNK_ROWS),
                )
            )
        row, col, score, rank = (np.concatenate(parts) for parts in zip(*found, strict=True))
        recs = pd.DataFrame(
            {
                "customer_id": engine_ids[row],
                "rank": rank,
                "product_id": products[col],
                "score": score,
                "source": "similar",
            }
        )

        have = np.bincount(row, minlength=n_rows)
        short = np.flatnonzero(have < n)
        if len(short):
            taken_row = np.concatenate([row, ex_row, h_row[owned]])
            taken_prod = np.concatenate([col, ex_prod, h_prod[owned]])
            fill = self._popular_fill(
                ids, short, have, taken_row, taken_prod, universe, pop_products, n
            )
            recs = pd.concat([f for f in (recs, fill) if len(f)] or [fill], ignore_index=True)
        recs["rank"] = recs["rank"].astype("int64")
        recs["score"] = recs["score"].astype(float)
        recs = recs.sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
        return recs[list(RECOMMEND_COLUMNS)]

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": pd.Series(dtype=object),
                "rank": pd.Series(dtype="int64"),
                "product_id": pd.Series(dtype=object),
                "score": pd.Series(dtype=float),
                "source": pd.Series(dtype=object),
            }
        )

    @staticmethod
    def _explicit_seeds(
        seed_products: pd.DataFrame | Mapping[Any, Iterable[Any]] | None, ids: pd.Index
    ) -> pd.DataFrame:
        cols = ["customer_id", "product_id"]
        if seed_products is None:
            return pd.DataFrame(columns=cols)
        if isinstance(seed_products, pd.DataFrame):
            frame = seed_products
            if "customer_id" not in frame.columns:
                frame = frame.reset_index()
            if "product_id" not in frame.columns and "products" in frame.columns:
                frame = frame[["customer_id", "products"]].explode("products")
                frame = frame.rename(columns={"products": "product_id"})
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise ConfigError(
                    f"seed_products: missing column(s) {missing}; expected 'customer_id' with "
                    f"'product_id' or 'products' (columns: {', '.join(map(str, frame.columns))})."
                )
            pairs = frame[cols]
        elif isinstance(seed_products, Mapping):
            pairs = pd.DataFrame(
                [(c, p) for c, prods in seed_products.items() for p in prods], columns=cols
            )
        else:
            raise ConfigError(
                "seed_products: expected a DataFrame or a mapping customer_id -> products, "
                f"got {type(seed_products).__name__}."
            )
        pairs = pairs.dropna()
        return pairs[pairs["customer_id"].isin(ids)].drop_duplicates().reset_index(drop=True)

    @staticmethod
    def _popular_fill(
        ids: pd.Index,
        short: np.ndarray,
        have: np.ndarray,
        taken_row: np.ndarray,
        taken_prod: np.ndarray,
        universe: pd.Index,
        pop_products: np.ndarray,
        n: int,
    ) -> pd.DataFrame:
        """Top up customers with fewer than ``n`` recommendations from popularity.

        ``short`` are positions in ``ids``; ``taken_row``/``taken_prod`` the
        (position, product code) pairs a customer may not get (already
        recommended, explicit seeds, owned).
        """
        n_products = len(universe)
        is_short = np.zeros(len(ids), dtype=bool)
        is_short[short] = True
        keep = is_short[taken_row]
        taken = np.unique(taken_row[keep].astype(np.int64) * n_products + taken_prod[keep])
        n_taken = np.bincount(taken // n_products, minlength=len(ids))
        need = n - have[short]
        # the first need + (taken) popular products always hold enough untaken ones
        length = np.minimum(len(pop_products), need + n_taken[short])
        group = np.repeat(np.arange(len(short)), length)
        offset = np.cumsum(length) - length
        j = np.arange(len(group)) - np.repeat(offset, length)
        key = (
            short[group].astype(np.int64) * n_products + _factorize_into(pop_products, universe)[j]
        )
        free = ~np.isin(key, taken, assume_unique=True)
        counted = np.cumsum(free)
        first = offset[length > 0]
        before = np.repeat(counted[first] - free[first], length[length > 0])
        k = counted - before  # 1-based number of the free product within its customer
        take = free & (k <= need[group])
        if not take.any():
            return pd.DataFrame([], columns=list(RECOMMEND_COLUMNS))
        return pd.DataFrame(
            {
                "customer_id": ids.to_numpy()[short[group[take]]],
                "rank": have[short][group[take]] + k[take],
                "product_id": pop_products[j[take]],
                "score": 0.0,
                "source": "popular",
            }
        )

    def __repr__(self) -> str:
        return (
            f"ItemSimilarity(min_support={self.min_support}, top_k={self.top_k}, "
            f"view_weight={self.view_weight}, n_seeds={self.n_seeds})"
        )
