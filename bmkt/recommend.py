"""Item-to-item recommendations from co-purchases and co-views.

:class:`ItemSimilarity` counts, in the engine, how often two products occur
together:

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
``source == "popular"`` and ``score == 0``.

References
----------
.. [1] Linden, G., Smith, B., & York, J. (2003). Amazon.com recommendations:
   Item-to-item collaborative filtering. IEEE Internet Computing, 7(1), 76-80.
.. [2] Sarwar, B., Karypis, G., Konstan, J., & Riedl, J. (2001). Item-based
   collaborative filtering recommendation algorithms. WWW '01, 285-295.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import ibis
import numpy as np
import pandas as pd
from ibis.expr.types import Table

from bmkt.errors import ConfigError, NotFittedError
from bmkt.io import Store, open_store
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = ["ItemSimilarity", "RECOMMEND_COLUMNS"]

#: Columns of :meth:`ItemSimilarity.recommend`.
RECOMMEND_COLUMNS = ("customer_id", "rank", "product_id", "score", "source")


def _ts(value: pd.Timestamp) -> ibis.Value:
    return ibis.literal(value.to_pydatetime(), type="timestamp")


def _cooccurrence(baskets: Table, keys: list[str], min_support: int, prefix: str) -> Table:
    """Cosine-normalised co-occurrence of products within baskets identified by ``keys``."""
    a = baskets.select(*keys, item=baskets.product_id)
    b = baskets.select(**{f"_{k}": baskets[k] for k in keys}, other=baskets.product_id)
    preds = [a[k] == b[f"_{k}"] for k in keys] + [a.item != b.other]
    pairs = a.join(b, preds)
    co = pairs.group_by("item", "other").agg(co=pairs.count())
    co = co.filter(co.co >= min_support)
    n = baskets.group_by(pid=baskets.product_id).agg(n=baskets.count())
    ni = n.select(pid_i=n.pid, n_i=n.n)
    nj = n.select(pid_j=n.pid, n_j=n.n)
    co = co.join(ni, co.item == ni.pid_i).join(nj, co.other == nj.pid_j)
    return co.select(
        "item",
        "other",
        **{
            f"co_{prefix}": co.co.cast("int64"),
            f"cos_{prefix}": co.co.cast("float64") / (co.n_i * co.n_j).cast("float64").sqrt(),
        },
    )


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
        The store fitted on; :meth:`recommend` reads customers' histories
        (before ``as_of_``) from it.

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

        buys = self._purchases()
        baskets = buys.select("customer_id", "product_id").distinct()
        sim = _cooccurrence(baskets, ["customer_id"], self.min_support, "purchases")
        if self.view_weight > 0:
            views = self._views()
            sessions = views.select(
                "customer_id", "product_id", view_day=views.at.date()
            ).distinct()
            vsim = _cooccurrence(sessions, ["customer_id", "view_day"], self.min_support, "views")
            vsim = vsim.select(
                v_item=vsim.item,
                v_other=vsim.other,
                co_views=vsim.co_views,
                cos_views=vsim.cos_views,
            )
            j = sim.outer_join(vsim, (sim.item == vsim.v_item) & (sim.other == vsim.v_other))
            sim = j.select(
                item=ibis.coalesce(j.item, j.v_item),
                other=ibis.coalesce(j.other, j.v_other),
                co_purchases=j.co_purchases.fill_null(0),
                co_views=j.co_views.fill_null(0),
                cos_purchases=j.cos_purchases.fill_null(0.0),
                cos_views=j.cos_views.fill_null(0.0),
            )
        else:
            sim = sim.mutate(co_views=ibis.literal(0, "int64"), cos_views=ibis.literal(0.0))
        w = float(self.view_weight)
        scored = sim.mutate(score=(sim.cos_purchases + w * sim.cos_views) / (1.0 + w))
        rank = ibis.row_number().over(
            group_by=scored.item, order_by=[ibis.desc(scored.score), scored.other]
        )
        top = scored.mutate(_rank=rank)
        top = top.filter(top._rank < self.top_k).select(
            product_id=top.item,
            similar_product_id=top.other,
            score=top.score,
            co_purchases=top.co_purchases.cast("int64"),
            co_views=top.co_views.cast("int64"),
        )
        items = con.execute(top)
        self.similar_items_ = items.sort_values(
            ["product_id", "score", "similar_product_id"],
            ascending=[True, False, True],
            kind="stable",
        ).reset_index(drop=True)
        pop = baskets.group_by("product_id").agg(n_buyers=baskets.count())
        pop = con.execute(pop)
        pop["n_buyers"] = pop["n_buyers"].astype("int64")
        self.popularity_ = pop.sort_values(
            ["n_buyers", "product_id"], ascending=[False, True], kind="stable"
        ).reset_index(drop=True)
        log.info(
            "item similarity: %d pairs over %d products (%d purchased)",
            len(self.similar_items_),
            self.similar_items_["product_id"].nunique(),
            len(self.popularity_),
        )
        return self

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
        con = self.store_.con
        id_type = self.store_.table("orders").customer_id.type()
        wanted = ibis.memtable(pd.DataFrame({"want_id": ids.to_numpy()})).select(
            want_id=ibis._.want_id.cast(id_type)
        )

        buys = self._purchases()
        buys = buys.join(wanted, buys.customer_id == wanted.want_id).select(
            "customer_id", "product_id", "at"
        )
        bought = buys.group_by("customer_id", "product_id").agg(at=buys.at.max())
        events = bought.mutate(weight=ibis.literal(1.0))
        if self.view_weight > 0:
            views = self._views()
            views = views.join(wanted, views.customer_id == wanted.want_id)
            viewed = views.group_by("customer_id", "product_id").agg(at=views.at.max())
            viewed = viewed.anti_join(
                bought,
                (viewed.customer_id == bought.customer_id)
                & (viewed.product_id == bought.product_id),
            )
            events = events.union(viewed.mutate(weight=ibis.literal(float(self.view_weight))))
        order = ibis.row_number().over(
            group_by=events.customer_id, order_by=[ibis.desc(events.at), events.product_id]
        )
        seeds = events.mutate(_r=order)
        seeds = seeds.filter(seeds._r < self.n_seeds).select("customer_id", "product_id", "weight")

        explicit = self._explicit_seeds(seed_products, ids)
        if len(explicit):
            ex = ibis.memtable(explicit.assign(weight=float(seed_weight)))
            ex = ex.select(
                customer_id=ex.customer_id.cast(id_type),
                product_id=ex.product_id.cast(seeds.product_id.type()),
                weight=ex.weight,
            )
            seeds = seeds.union(ex)

        sims = self.similar_items_[["product_id", "similar_product_id", "score"]]
        sim_t = ibis.memtable(sims.rename(columns={"product_id": "seed_id"}))
        sim_t = sim_t.select(
            seed_id=sim_t.seed_id.cast(seeds.product_id.type()),
            similar_product_id=sim_t.similar_product_id.cast(seeds.product_id.type()),
            score=sim_t.score.cast("float64"),
        )
        cand = seeds.join(sim_t, seeds.product_id == sim_t.seed_id)
        cand = cand.group_by("customer_id", product_id=cand.similar_product_id).agg(
            score=(cand.weight * cand.score).sum()
        )
        if exclude_purchased:
            cand = cand.anti_join(
                bought,
                (cand.customer_id == bought.customer_id) & (cand.product_id == bought.product_id),
            )
        if len(explicit):
            cand = cand.anti_join(
                ex, (cand.customer_id == ex.customer_id) & (cand.product_id == ex.product_id)
            )
        rank = ibis.row_number().over(
            group_by=cand.customer_id, order_by=[ibis.desc(cand.score), cand.product_id]
        )
        cand = cand.mutate(rank=rank + 1)
        cand = cand.filter(cand["rank"] <= n)
        recs = con.execute(cand.select("customer_id", "rank", "product_id", "score"))
        recs["source"] = "similar"

        have = recs.groupby("customer_id").size().reindex(ids, fill_value=0)
        short = have[have < n]
        if len(short):
            fill = self._popular_fill(short, recs, bought, explicit, n, exclude_purchased)
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

    def _popular_fill(
        self,
        short: pd.Series,
        recs: pd.DataFrame,
        bought: Table,
        explicit: pd.DataFrame,
        n: int,
        exclude_purchased: bool,
    ) -> pd.DataFrame:
        """Top up customers with fewer than ``n`` recommendations from popularity."""
        taken: dict[Any, set[Any]] = {c: set() for c in short.index}
        for c, p in recs[["customer_id", "product_id"]].itertuples(index=False):
            if c in taken:
                taken[c].add(p)
        for c, p in explicit.itertuples(index=False):
            if c in taken:
                taken[c].add(p)
        if exclude_purchased:
            need = ibis.memtable(pd.DataFrame({"need_id": short.index.to_numpy()}))
            need = need.select(need_id=need.need_id.cast(bought.customer_id.type()))
            owned = bought.join(need, bought.customer_id == need.need_id)
            owned = self.store_.con.execute(owned.select("customer_id", "product_id"))
            for c, p in owned.itertuples(index=False):
                taken[c].add(p)
        popular = self.popularity_["product_id"].tolist()
        rows = []
        for c, have in short.items():
            rank = int(have)
            for p in popular:
                if rank >= n:
                    break
                if p in taken[c]:
                    continue
                rank += 1
                rows.append((c, rank, p, 0.0, "popular"))
        return pd.DataFrame(rows, columns=list(RECOMMEND_COLUMNS))

    def __repr__(self) -> str:
        return (
            f"ItemSimilarity(min_support={self.min_support}, top_k={self.top_k}, "
            f"view_weight={self.view_weight}, n_seeds={self.n_seeds})"
        )
