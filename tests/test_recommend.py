"""Item-to-item recommendations: co-purchase/co-view similarity, exclusions, fallback, ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmkt.errors import ConfigError, NotFittedError
from bmkt.recommend import RECOMMEND_COLUMNS, ItemSimilarity

AS_OF = "2024-06-30"


def build_store(
    baskets: dict[int, list[str]],
    views: list[tuple[int, str, str]] | None = None,
    n_customers: int | None = None,
    when: str = "2024-03-01",
) -> dict[str, pd.DataFrame]:
    """One order per customer holding the products of ``baskets[customer]``.

    Products are letters mapped to ids (A=1, B=2, ...) to keep tests readable.
    """
    n = n_customers or max([*baskets, *(v[0] for v in views or [])])
    customers = pd.DataFrame(
        {
            "customer_id": list(range(1, n + 1)),
            "email": [f"c{i}@example.com" for i in range(1, n + 1)],
            "created_at": pd.Timestamp("2024-01-01"),
            "email_status": "subscribed",
            "email_consent": True,
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": list(baskets),
            "customer_id": list(baskets),
            "ordered_at": pd.Timestamp(when),
            "revenue": 10.0,
        }
    )
    lines = pd.DataFrame(
        [(c, pid(p), "cat", 1, 1.0) for c, items in baskets.items() for p in items],
        columns=["order_id", "product_id", "category", "quantity", "price"],
    )
    store = {"customers": customers, "orders": orders, "order_lines": lines}
    if views:
        store["web_events"] = pd.DataFrame(
            {
                "customer_id": [v[0] for v in views],
                "occurred_at": [pd.Timestamp(v[2]) for v in views],
                "event_type": "product_view",
                "product_id": [pid(v[1]) for v in views],
                "category": "cat",
            }
        )
    return store


def pid(letter: str) -> int:
    return ord(letter) - ord("A") + 1


def products(recs: pd.DataFrame, customer: int) -> list[int]:
    return recs.loc[recs["customer_id"] == customer, "product_id"].tolist()


def test_always_bought_together_is_recommended() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["A", "B", "C"], 4: ["A"], 5: ["C", "D"]})
    model = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    sims = model.similar_items_
    assert list(sims.columns[:3]) == ["product_id", "similar_product_id", "score"]
    top_of_a = sims[sims["product_id"] == pid("A")].iloc[0]
    assert top_of_a["similar_product_id"] == pid("B")
    assert top_of_a["co_purchases"] == 3
    # cosine: 3 co-buyers / sqrt(4 buyers of A * 3 buyers of B)
    assert top_of_a["score"] == pytest.approx(3 / np.sqrt(12))
    assert pid("C") not in sims.loc[sims["product_id"] == pid("A"), "similar_product_id"].tolist()

    recs = model.recommend([4], n=1)
    assert list(recs.columns) == list(RECOMMEND_COLUMNS)
    assert recs.iloc[0][["customer_id", "rank", "product_id", "source"]].tolist() == [
        4,
        1,
        pid("B"),
        "similar",
    ]


def test_already_bought_items_are_excluded() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["A", "B", "C"], 4: ["A", "C"]})
    model = ItemSimilarity(min_support=1, view_weight=0.0).fit(store, AS_OF)
    recs = model.recommend([3, 4], n=5)
    assert not set(products(recs, 3)) & {pid("A"), pid("B"), pid("C")}
    assert products(recs, 4) == [pid("B")]  # catalogue exhausted: only B left
    kept = model.recommend([4], n=5, exclude_purchased=False)
    assert pid("C") in products(kept, 4)  # own purchases allowed back when asked


def test_ties_sorted_by_score_then_product_id() -> None:
    # D is bought with B and with C equally often: B and C tie as candidates for a D buyer
    store = build_store({1: ["D", "C"], 2: ["D", "B"], 3: ["D", "C"], 4: ["D", "B"], 5: ["D"]})
    model = ItemSimilarity(min_support=1, view_weight=0.0).fit(store, AS_OF)
    recs = model.recommend([5], n=2)
    assert products(recs, 5) == [pid("B"), pid("C")]
    assert recs["score"].iloc[0] == recs["score"].iloc[1]
    assert recs["rank"].tolist() == [1, 2]
    sims = model.similar_items_
    d = sims[sims["product_id"] == pid("D")]
    assert d["similar_product_id"].tolist() == [pid("B"), pid("C")]


def test_min_support_and_top_k() -> None:
    store = build_store({1: ["A", "B", "C"], 2: ["A", "B"]})
    sims = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF).similar_items_
    assert set(zip(sims["product_id"], sims["similar_product_id"], strict=True)) == {(1, 2), (2, 1)}
    top1 = ItemSimilarity(min_support=1, top_k=1, view_weight=0.0).fit(store, AS_OF)
    assert top1.similar_items_.groupby("product_id").size().max() == 1


def test_co_views_within_a_day_count() -> None:
    views = [
        (1, "E", "2024-05-01 10:00"),
        (1, "F", "2024-05-01 18:00"),  # same customer, same day: co-view
        (2, "E", "2024-05-02 10:00"),
        (2, "F", "2024-05-02 11:00"),
        (3, "E", "2024-05-03 10:00"),
        (3, "G", "2024-05-04 10:00"),  # next day: not a co-view
        (3, "G", "2024-07-01 00:00"),  # after as_of: ignored
    ]
    store = build_store({1: ["A"], 2: ["A"], 3: ["A"], 4: ["E"]}, views=views)
    model = ItemSimilarity(min_support=2, view_weight=0.5).fit(store, AS_OF)
    sims = model.similar_items_.set_index(["product_id", "similar_product_id"])
    assert sims.loc[(pid("E"), pid("F")), "co_views"] == 2
    # cos_view = 2 / sqrt(3 * 2), combined with weight 0.5 and no co-purchases
    assert sims.loc[(pid("E"), pid("F")), "score"] == pytest.approx(0.5 * 2 / np.sqrt(6) / 1.5)
    assert (pid("E"), pid("G")) not in sims.index
    recs = model.recommend([4], n=1)
    assert products(recs, 4) == [pid("F")]
    no_views = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    assert no_views.similar_items_.empty


def test_fallback_to_popular_for_customers_without_history() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["A", "C"], 4: ["C"]}, n_customers=6)
    model = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    assert model.popularity_["product_id"].tolist() == [pid("A"), pid("B"), pid("C")]
    recs = model.recommend([6, 999], n=2)
    assert products(recs, 6) == [pid("A"), pid("B")]
    assert products(recs, 999) == [pid("A"), pid("B")]  # unknown customer: popular too
    assert set(recs["source"]) == {"popular"}
    assert (recs["score"] == 0.0).all()
    # customer 4 bought C only: no similar items for C, popular fill skips C
    topped = model.recommend([4], n=3)
    assert products(topped, 4) == [pid("A"), pid("B")]


def test_partial_fill_keeps_similar_first() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["C"], 4: ["C"], 5: ["A"]})
    model = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    recs = model.recommend([5], n=2)
    assert recs["source"].tolist() == ["similar", "popular"]
    assert products(recs, 5) == [pid("B"), pid("C")]
    assert recs["rank"].tolist() == [1, 2]


def test_seed_products_from_a_cart_frame() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["C", "D"], 4: ["C", "D"]}, n_customers=5)
    model = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    cart = pd.DataFrame({"customer_id": [5], "products": [[pid("C")]]})
    recs = model.recommend([5], n=1, seed_products=cart)
    assert products(recs, 5) == [pid("D")]
    as_mapping = model.recommend([5], n=1, seed_products={5: [pid("A")]})
    assert products(as_mapping, 5) == [pid("B")]
    with pytest.raises(ConfigError, match=r"seed_products: missing column"):
        model.recommend([5], seed_products=pd.DataFrame({"customer_id": [5], "sku": [1]}))


def test_purchases_after_as_of_are_ignored() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["A"]})
    store["orders"].loc[store["orders"]["customer_id"] == 2, "ordered_at"] = pd.Timestamp(
        "2024-07-01"
    )
    model = ItemSimilarity(min_support=2, view_weight=0.0).fit(store, AS_OF)
    assert model.similar_items_.empty  # only one co-buyer before as_of


def test_validation_and_not_fitted() -> None:
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        ItemSimilarity().recommend([1])
    store = build_store({1: ["A"]})
    with pytest.raises(ConfigError, match=r"'min_support' must be an integer >= 1. Got 0"):
        ItemSimilarity(min_support=0).fit(store, AS_OF)
    with pytest.raises(ConfigError, match=r"'view_weight' must be a number >= 0"):
        ItemSimilarity(view_weight=-1).fit(store, AS_OF)
    model = ItemSimilarity().fit(store, AS_OF)
    with pytest.raises(ConfigError, match=r"'n' must be an integer >= 1"):
        model.recommend([1], n=0)
    assert model.recommend([]).empty
    assert list(model.recommend([]).columns) == list(RECOMMEND_COLUMNS)


def test_inputs_not_mutated() -> None:
    store = build_store({1: ["A", "B"], 2: ["A", "B"], 3: ["A"]})
    copies = {k: v.copy(deep=True) for k, v in store.items()}
    model = ItemSimilarity(min_support=1).fit(store, AS_OF)
    seeds = pd.DataFrame({"customer_id": [3], "products": [[pid("A")]]})
    seeds_copy = seeds.copy(deep=True)
    model.recommend([3], seed_products=seeds)
    for k, v in store.items():
        pd.testing.assert_frame_equal(v, copies[k])
    pd.testing.assert_frame_equal(seeds, seeds_copy)
