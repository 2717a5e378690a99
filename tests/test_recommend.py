"""Item-to-item recommendations: co-purchase/co-view similarity, exclusions, fallback, ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmkt.errors import ConfigError, NotFittedError
from bmkt.recommend import RECOMMEND_COLUMNS, ItemSimilarity, _histories
from bmkt.schema import parse_as_of

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


def reference_histories(store: dict[str, pd.DataFrame], as_of: str) -> pd.DataFrame:
    """Every customer's (product, bought) history, most recent first, computed plainly."""
    cutoff = parse_as_of(as_of)
    orders = store["orders"]
    orders = orders[(orders["ordered_at"] < cutoff) & (orders["revenue"] >= 0)]
    buys = orders.merge(store["order_lines"], on="order_id")
    bought = buys.groupby(["customer_id", "product_id"], as_index=False)["ordered_at"].max()
    bought = bought.rename(columns={"ordered_at": "at"}).assign(bought=True)
    frames = [bought]
    if "web_events" in store:
        ev = store["web_events"]
        ev = ev[(ev["event_type"] == "product_view") & (ev["occurred_at"] < cutoff)]
        viewed = ev.groupby(["customer_id", "product_id"], as_index=False)["occurred_at"].max()
        viewed = viewed.rename(columns={"occurred_at": "at"}).assign(bought=False)
        seen = viewed.merge(bought[["customer_id", "product_id"]], how="left", indicator=True)
        frames.append(viewed[(seen["_merge"] == "left_only").to_numpy()])
    hist = pd.concat(frames, ignore_index=True)
    hist = hist.sort_values(["customer_id", "at", "product_id"], ascending=[True, False, True])
    return hist[["customer_id", "product_id", "bought"]].reset_index(drop=True)


def fitted_histories(model: ItemSimilarity) -> pd.DataFrame:
    """The model's histories, customers in id order (factorised ids come in any order)."""
    h = model.histories_
    rows = np.repeat(np.arange(len(h.ids)), np.diff(h.indptr))
    frame = pd.DataFrame(
        {
            "customer_id": h.ids[rows],
            "product_id": h.product_ids[h.products],
            "bought": h.bought,
        }
    )
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)


def random_store(rng: np.random.Generator, n_customers: int, id_scale: int) -> dict:
    """Purchases and views at coarse times (many ties), some bought products viewed later."""
    n_orders, n_views = 6 * n_customers, 12 * n_customers
    base = pd.Timestamp("2024-01-01")
    ids = np.arange(1, n_customers + 1) * id_scale
    orders = pd.DataFrame(
        {
            "order_id": np.arange(1, n_orders + 1),
            "customer_id": rng.choice(ids, n_orders),
            "ordered_at": base + pd.to_timedelta(rng.integers(0, 300, n_orders), unit="h"),
            "revenue": rng.choice([10.0, -5.0], n_orders, p=[0.9, 0.1]),
        }
    )
    n_lines = 2 * n_orders
    lines = pd.DataFrame(
        {
            "order_id": rng.integers(1, n_orders + 1, n_lines),
            "product_id": rng.integers(1, 15, n_lines),
            "category": "cat",
            "quantity": 1,
            "price": 1.0,
        }
    )
    views = pd.DataFrame(
        {
            "customer_id": rng.choice(ids, n_views),
            "occurred_at": base + pd.to_timedelta(rng.integers(0, 300 * 60, n_views), unit="min"),
            "event_type": rng.choice(["product_view", "page_view"], n_views, p=[0.8, 0.2]),
            "product_id": rng.integers(1, 15, n_views),
            "category": "cat",
        }
    )
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"c{i}@example.com" for i in ids],
            "created_at": base,
            "email_status": "subscribed",
            "email_consent": True,
        }
    )
    return {"customers": customers, "orders": orders, "order_lines": lines, "web_events": views}


@pytest.mark.parametrize("id_scale", [1, 10**9])  # compact ids (offsets) and sparse ids (codes)
def test_fitted_histories_match_a_plain_computation(id_scale: int) -> None:
    rng = np.random.default_rng(id_scale)
    store = random_store(rng, 40, id_scale)
    as_of = "2024-01-10"  # some events after it
    model = ItemSimilarity(min_support=1).fit(store, as_of)
    pd.testing.assert_frame_equal(
        fitted_histories(model), reference_histories(store, as_of), check_dtype=False
    )
    no_views = ItemSimilarity(min_support=1, view_weight=0.0).fit(store, as_of)
    buys_only = {k: v for k, v in store.items() if k != "web_events"}
    pd.testing.assert_frame_equal(
        fitted_histories(no_views), reference_histories(buys_only, as_of), check_dtype=False
    )


def test_seeds_are_the_most_recent_products() -> None:
    # customer 9 bought A long ago, viewed B, then bought C; last view of A is the most
    # recent event but A counts at its purchase time; with n_seeds=1, C is the only seed
    baskets = {1: ["A", "D"], 2: ["A", "D"], 3: ["C", "E"], 4: ["C", "E"], 5: ["B", "F"]}
    baskets |= {6: ["B", "F"], 9: ["A"]}
    views = [(9, "B", "2024-04-01"), (9, "A", "2024-06-01")]
    store = build_store(baskets, views=views)
    store["orders"] = pd.concat(
        [
            store["orders"],
            pd.DataFrame(
                {
                    "order_id": [10],
                    "customer_id": [9],
                    "ordered_at": [pd.Timestamp("2024-05-01")],
                    "revenue": [10.0],
                }
            ),
        ],
        ignore_index=True,
    )
    store["order_lines"] = pd.concat(
        [
            store["order_lines"],
            pd.DataFrame([(10, pid("C"), "cat", 1, 1.0)], columns=store["order_lines"].columns),
        ],
        ignore_index=True,
    )
    model = ItemSimilarity(min_support=2, n_seeds=1).fit(store, AS_OF)
    assert fitted_histories(model).query("customer_id == 9")["product_id"].tolist() == [
        pid("C"),
        pid("B"),
        pid("A"),
    ]
    assert products(model.recommend([9], n=1), 9) == [pid("E")]
    model.n_seeds = 2  # B (viewed) joins the seeds: F at half weight comes after E
    assert products(model.recommend([9], n=2), 9) == [pid("E"), pid("F")]


def test_text_customer_ids() -> None:
    baskets = {1: ["A", "B"], 2: ["A", "B"], 3: ["A", "C"], 4: ["A"]}
    store = build_store(baskets, views=[(4, "C", "2024-05-01")])
    as_text = {k: v.copy() for k, v in store.items()}
    for name in ("customers", "orders", "web_events"):
        as_text[name]["customer_id"] = "c" + as_text[name]["customer_id"].astype(str)
    recs = ItemSimilarity(min_support=1).fit(store, AS_OF).recommend([4, 3, 77], n=2)
    text = ItemSimilarity(min_support=1).fit(as_text, AS_OF).recommend(["c4", "c3", "c77"], n=2)
    expected = recs.assign(customer_id="c" + recs["customer_id"].astype(str))
    pd.testing.assert_frame_equal(text, expected)


def test_histories_with_times_too_far_apart_for_offsets() -> None:
    # offsets of 1 and 2**62 cannot be packed with the product: ranks are used instead
    times = np.array([0, 1, 2**62, 5, 2**62], dtype=np.int64)
    rows = np.array([0, 0, 0, 1, 1])
    prods = np.array([2, 1, 0, 1, 0])
    bought = np.array([True, False, False, False, True])
    indptr, order, was_bought = _histories(rows, prods, times, bought, 2, 3)
    assert indptr.tolist() == [0, 3, 5]
    assert order.tolist() == [0, 1, 2, 0, 1]
    assert was_bought.tolist() == [False, False, True, True, False]


@pytest.mark.parametrize(
    ("id_scale", "min_support"), [(1, 1), (1, 2), (10**9, 1), (10**16 + 1, 2)]
)  # compact, sparse, and ids past 2**53 (where float chunk edges would lose customers)
def test_fit_in_chunks_of_customers_gives_the_same_model(
    id_scale: int, min_support: int, monkeypatch
) -> None:
    """Past _CHUNK_EVENTS events, fit reads customers chunk by chunk: the same model."""
    from bmkt import recommend

    rng = np.random.default_rng(7 + id_scale % 1000)
    store = random_store(rng, 60, id_scale)
    as_of = "2024-01-10"
    whole = ItemSimilarity(min_support=min_support).fit(store, as_of)
    monkeypatch.setattr(recommend, "_CHUNK_EVENTS", 150)
    ranges = recommend._customer_ranges(whole.store_, views=True)
    assert len(ranges) > 3  # really in chunks
    ids = store["customers"]["customer_id"].to_numpy()
    assert ranges[0][0] == ids.min() and ranges[-1][1] == ids.max()  # every customer in one
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
    chunked = ItemSimilarity(min_support=min_support).fit(store, as_of)
    pd.testing.assert_frame_equal(chunked.similar_items_, whole.similar_items_)
    pd.testing.assert_frame_equal(chunked.popularity_, whole.popularity_)
    pd.testing.assert_frame_equal(fitted_histories(chunked), fitted_histories(whole))
    pd.testing.assert_frame_equal(
        fitted_histories(chunked), reference_histories(store, as_of), check_dtype=False
    )
    pd.testing.assert_frame_equal(chunked.recommend(ids, n=3), whole.recommend(ids, n=3))


@pytest.mark.parametrize(
    ("id_scale", "chunk_events"), [(1, None), (10**9, None), (10**16 + 1, None), (1, 400)]
)  # compact and sparse ids, ids past 2**53; slices of one chunk and of several
def test_fit_in_slices_of_customers_gives_the_same_model(
    id_scale: int, chunk_events: int | None, monkeypatch
) -> None:
    """Past _SLICE_EVENTS read events, fit lays them out slice by slice: the same model."""
    from bmkt import recommend

    rng = np.random.default_rng(17 + id_scale % 1000)
    store = random_store(rng, 60, id_scale)
    as_of = "2024-01-10"
    whole = ItemSimilarity(min_support=1).fit(store, as_of)
    if chunk_events is not None:
        monkeypatch.setattr(recommend, "_CHUNK_EVENTS", chunk_events)
    seen: list[int] = []
    slices = recommend._customer_slices

    def counted(ev, span):  # every event is in exactly one slice, every slice has events
        pieces = list(slices(ev, span))
        assert sum(len(p["customer_id"]) for p, _ in pieces) == len(ev["customer_id"])
        assert all(len(p["customer_id"]) for p, _ in pieces)
        seen.append(len(pieces))
        return iter(pieces)

    monkeypatch.setattr(recommend, "_SLICE_EVENTS", 40)
    monkeypatch.setattr(recommend, "_customer_slices", counted)
    sliced = ItemSimilarity(min_support=1).fit(store, as_of)
    assert sum(seen) > 3 and (chunk_events is None) == (len(seen) == 1)
    pd.testing.assert_frame_equal(sliced.similar_items_, whole.similar_items_)
    pd.testing.assert_frame_equal(sliced.popularity_, whole.popularity_)
    pd.testing.assert_frame_equal(fitted_histories(sliced), fitted_histories(whole))
    pd.testing.assert_frame_equal(
        fitted_histories(sliced), reference_histories(store, as_of), check_dtype=False
    )
    ids = store["customers"]["customer_id"].to_numpy()
    pd.testing.assert_frame_equal(sliced.recommend(ids, n=3), whole.recommend(ids, n=3))


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_slices_are_even_when_customer_ids_cluster(dtype, monkeypatch) -> None:
    from bmkt import recommend

    rng = np.random.default_rng(5)
    # most events on 900 adjacent ids, a few on ids far away (up to the dtype's end)
    far = [np.iinfo(dtype).max - 1, np.iinfo(dtype).max] if dtype is np.uint64 else [10**15]
    ids = np.concatenate(
        [rng.integers(1000, 1900, 5000).astype(dtype), np.repeat(np.array(far, dtype=dtype), 3)]
    )
    assert int(ids.max()) == far[-1]
    ev = {"customer_id": ids, "at": np.arange(len(ids))}
    monkeypatch.setattr(recommend, "_SLICE_EVENTS", 500)
    pieces = list(recommend._customer_slices(ev, None))
    sizes = [len(p["customer_id"]) for p, _ in pieces]
    assert sum(sizes) == len(ids) and len(pieces) >= 10
    assert max(sizes) <= 2 * 500  # equal-width ranges would put ~all in the first
    spans = [span for _, span in pieces]
    assert spans[0][0] == int(ids.min()) and spans[-1][1] == int(ids.max())
    assert all(a[1] + 1 == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))
    for piece, (a, b) in pieces:  # each slice holds exactly the events of its range
        inside = (ids >= a) & (ids <= b)
        assert np.array_equal(piece["customer_id"], ids[inside])
        assert np.array_equal(piece["at"], ev["at"][inside])


def test_recommend_for_many_customers_in_slices_gives_the_same_result(monkeypatch) -> None:
    from bmkt import recommend

    rng = np.random.default_rng(3)
    store = random_store(rng, 50, 1)
    model = ItemSimilarity(min_support=1).fit(store, "2024-01-10")
    ids = np.concatenate([store["customers"]["customer_id"].to_numpy()[::-1], [10**6]])
    cart = pd.DataFrame({"customer_id": ids[:20], "products": [[1, 2]] * 20})
    whole = model.recommend(ids, n=4, seed_products=cart)
    monkeypatch.setattr(recommend, "_RECOMMEND_CUSTOMERS", 7)
    sliced = model.recommend(ids, n=4, seed_products=cart)
    pd.testing.assert_frame_equal(sliced, whole)
    unknown = whole[whole["customer_id"] == 10**6]
    assert len(unknown) == 4 and (unknown["source"] == "popular").all()


def test_threads_give_the_same_model_and_recommendations(monkeypatch) -> None:
    """Co-views beside the histories, and chunks of customers, on threads: as in one."""
    from bmkt import recommend

    rng = np.random.default_rng(11)
    store = random_store(rng, 80, 1)
    ids = store["customers"]["customer_id"].to_numpy()
    monkeypatch.setattr(recommend, "_CHUNK_ROWS", 9)  # many chunks of customers
    monkeypatch.setattr(recommend, "_WORKERS", 1)
    alone = ItemSimilarity(min_support=1).fit(store, "2024-01-10")
    expected = alone.recommend(ids, n=3)
    monkeypatch.setattr(recommend, "_WORKERS", 3)
    threaded = ItemSimilarity(min_support=1).fit(store, "2024-01-10")
    assert len(threaded.similar_items_) > 0 and threaded.similar_items_["co_views"].gt(0).any()
    pd.testing.assert_frame_equal(threaded.similar_items_, alone.similar_items_)
    pd.testing.assert_frame_equal(fitted_histories(threaded), fitted_histories(alone))
    got = threaded.recommend(ids, n=3)
    assert (got["source"] == "similar").sum() > 9  # rows from several chunks
    pd.testing.assert_frame_equal(got, expected)
    # a chunk too large to hold both at once: co-views first, then the histories
    monkeypatch.setattr(recommend, "_OVERLAP_EVENTS", 10)
    in_turn = ItemSimilarity(min_support=1).fit(store, "2024-01-10")
    pd.testing.assert_frame_equal(in_turn.similar_items_, alone.similar_items_)
    pd.testing.assert_frame_equal(fitted_histories(in_turn), fitted_histories(alone))
