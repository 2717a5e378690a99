"""The per-customer score table on a simulated store with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bmkt.errors import DataError
from bmkt.scoring import PROSPECT, score_customers
from bmkt.segments import RuleSet
from bmkt.simulate import simulate_store

AS_OF = "2024-06-30"


@pytest.fixture(scope="module")
def store() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=3000, days=540, seed=11, end=AS_OF)


@pytest.fixture(scope="module")
def scores(store: dict[str, pd.DataFrame]):
    return score_customers(store, AS_OF, churn=False)


def test_one_row_per_customer_and_no_addresses(store, scores) -> None:
    table = scores.table
    assert table.index.is_unique
    assert set(table.index) == set(store["customers"].customer_id)
    assert not [
        c for c in table.columns if "email" in c and c not in ("email_status", "email_consent")
    ]
    assert not table.astype(str).apply(lambda s: s.str.contains("@example.com")).any().any()


def test_buyers_and_prospects_follow_the_documented_rule(store, scores) -> None:
    table = scores.table
    buyers = set(store["orders"].loc[store["orders"].revenue > 0, "customer_id"])
    assert set(table.index[table.is_buyer]) == buyers
    prospects = table[~table.is_buyer]
    assert (prospects.rfm_segment == PROSPECT).all()
    assert (prospects.clv == 0).all() and prospects.p_alive.isna().all()
    b = table[table.is_buyer]
    for col in ("p_alive", "clv", "r_score", "expected_purchases_90d"):
        assert b[col].notna().all(), col
    assert b.p_alive.between(0, 1).all()
    for col in ("engagement_state", "engagement_score", "preferred_hour", "is_proxy_user"):
        assert table[col].notna().all(), col


def test_p_alive_tracks_the_simulated_truth(store, scores) -> None:
    truth = store["truth"].set_index("customer_id")
    b = scores.table[scores.table.is_buyer & (scores.table.frequency > 0)]
    alive = truth.loc[b.index, "alive_at_end"]
    # the BG/NBD fitted on the store ranks truly-alive buyers above dropped-out ones
    assert roc_auc_score(alive, b.p_alive) > 0.8


def test_clv_ranks_by_true_value(store, scores) -> None:
    truth = store["truth"].set_index("customer_id")
    b = scores.table[scores.table.is_buyer]
    true_value = (truth.purchase_rate * truth.expected_spend * truth.alive_at_end).loc[b.index]
    rho = pd.Series(b.clv).rank().corr(true_value.rank())
    assert rho > 0.5


def test_default_segments_assign_everyone(scores) -> None:
    table = scores.table.assign(churn_risk=1 - scores.table.p_alive, purchase_propensity=np.nan)
    assignment = RuleSet.default().assign(table)
    assert len(assignment) == len(table)
    assert assignment.segment.notna().all()


def test_no_customer_before_as_of(store) -> None:
    with pytest.raises(DataError, match="customers: no customer signed up before"):
        score_customers(store, "2000-01-01", churn=False)


def test_save_and_load_round_trip(scores, tmp_path) -> None:
    from bmkt.scoring import Scores

    scores.save(tmp_path)
    back = Scores.load(tmp_path)
    pd.testing.assert_frame_equal(back.table, scores.table)
    assert len(back.triggers) == len(scores.triggers)
    assert back.params["models"]["bgnbd"]["class"] == "BetaGeo"
    with pytest.raises(DataError, match="no saved scores"):
        Scores.load(tmp_path / "nope")


def test_explore_figures_and_summary(scores) -> None:
    from bmkt import explore

    table = scores.table
    assignment = RuleSet.default().assign(
        table.assign(churn_risk=1 - table.p_alive, purchase_propensity=np.nan)
    )
    summary = explore.segment_summary(assignment, table)
    assert summary["customers"].sum() == len(table)
    assert summary["share"].sum() == pytest.approx(1.0)
    grid = explore.rfm_grid(table)
    assert grid["customers"].sum() == int(table.is_buyer.sum())
    assert grid["revenue"].sum() == pytest.approx(table.loc[table.is_buyer, "total_revenue"].sum())
    for fig in (
        explore.plot_rfm_heatmap(table),
        explore.plot_segment_summary(summary),
        explore.plot_distributions(table),
        explore.plot_by_segment(assignment, table.assign(churn_risk=1 - table.p_alive)),
        explore.plot_engagement_states(table),
        explore.plot_category_affinity(table),
    ):
        assert len(fig.data) >= 1
    with pytest.raises(DataError, match="needs column"):
        explore.rfm_grid(table.drop(columns=["r_score"]))


def test_churn_and_propensity_land_on_the_right_customers(store) -> None:
    from bmkt.churn import ChurnModel

    scores = score_customers(store, AS_OF, churn=True)
    table = scores.table
    model = scores.models["churn"]
    assert isinstance(model, ChurnModel)
    direct = model.score(store, AS_OF).set_index("customer_id")["churn_risk"]
    pd.testing.assert_series_equal(table.loc[direct.index, "churn_risk"], direct, check_names=False)
    buyers = table[table.is_buyer]
    assert buyers.churn_risk.notna().all()  # every buyer is scored ...
    assert table.loc[~table.is_buyer, "churn_risk"].isna().all()  # ... and only buyers
    assert table.purchase_propensity.notna().all()
    truth = store["truth"].set_index("customer_id")
    repeat = buyers[buyers.frequency > 0]
    alive = truth.loc[repeat.index, "alive_at_end"]
    assert roc_auc_score(~alive, repeat.churn_risk) > 0.75


def test_models_train_on_a_sample_of_customers_when_there_are_many(store, monkeypatch) -> None:
    """Above TRAINING_CUSTOMERS, features at the training cutoffs are built for a sample.

    Everyone is still scored, with the very features a full build gives; the
    models still rank the truly gone first.
    """
    from bmkt import scoring
    from bmkt.features import build_features_before, build_features_before_many
    from bmkt.io import open_store

    opened = open_store(store)
    base = score_customers(opened, AS_OF, churn=False).table
    end = pd.Timestamp("2024-07-01")
    train = [end - pd.Timedelta(days=91), end - pd.Timedelta(days=31)]
    monkeypatch.setattr(scoring, "TRAINING_CUSTOMERS", 1200)
    frames = scoring._shared_features(opened, base, train, end, random_state=3)
    full = build_features_before_many(opened, [*train, end])
    assert sorted(frames) == sorted(full)
    pd.testing.assert_frame_equal(frames[end], build_features_before(opened, end))
    for cutoff in train:
        X = frames[cutoff]
        assert len(X) == 1200 and X.index.is_unique and X.index.is_monotonic_increasing
        assert X.attrs["cutoff"] == cutoff.isoformat()
        pd.testing.assert_frame_equal(X, full[cutoff].loc[X.index])
    # the two training samples are drawn independently, reproducibly
    assert not frames[train[0]].index.equals(frames[train[1]].index)
    again = scoring._shared_features(opened, base, train, end, random_state=3)
    assert again[train[0]].index.equals(frames[train[0]].index)

    sampled = score_customers(opened, AS_OF, churn=True)
    assert sampled.models["churn"].n_train_ <= 1200
    table = sampled.table
    assert table.loc[table.is_buyer, "churn_risk"].notna().all()
    truth = store["truth"].set_index("customer_id")
    repeat = table[table.is_buyer & (table.frequency > 0)]
    assert roc_auc_score(~truth.loc[repeat.index, "alive_at_end"], repeat.churn_risk) > 0.75


def test_many_customers_are_scored_in_chunks_with_the_same_result(store, monkeypatch) -> None:
    """Above SCORING_CHUNK, everyone is scored chunk by chunk: same models, same scores.

    Each chunk's feature query reads only its customers' events (a customer-id
    range), so the scores must equal those of one query over everyone.
    """
    from bmkt import scoring
    from bmkt.features import _features_at, build_features_at, build_features_before
    from bmkt.io import open_store

    opened = open_store(store)
    monkeypatch.setattr(scoring, "TRAINING_CUSTOMERS", 1000)  # as at scale: a training sample
    whole = score_customers(opened, AS_OF, churn=True).table
    monkeypatch.setattr(scoring, "SCORING_CHUNK", 700)  # 3000 customers: 5 chunks
    calls = []
    real = _features_at

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    # every points query (the public build_features_at goes through it)
    monkeypatch.setattr("bmkt.features._features_at", counting)
    chunked = score_customers(opened, AS_OF, churn=True).table
    # the training sample at two cutoffs, then everyone in chunks
    assert calls == [2000, 700, 700, 700, 700, len(whole) - 2800]
    for column in ("churn_risk", "purchase_propensity"):
        pd.testing.assert_series_equal(chunked[column], whole[column])
    assert chunked["purchase_propensity"].notna().all()
    assert chunked.loc[chunked.is_buyer, "churn_risk"].notna().all()
    assert chunked.loc[~chunked.is_buyer, "churn_risk"].isna().all()
    # a chunk's features are those of the whole build, for its customers only
    end = pd.Timestamp("2024-07-01")
    ids = whole.index[1000:1700]
    part = build_features_at(opened, pd.DataFrame({"customer_id": ids, "cutoff": end}))
    full = build_features_before(opened, end)
    part = part.drop(columns="cutoff").set_index("customer_id")
    pd.testing.assert_frame_equal(part, full.loc[part.index], check_like=False)


def test_features_of_a_sparse_sample_read_only_its_customers(store, monkeypatch) -> None:
    """A sample spread over all ids (a training sample) reads only its customers' events.

    The semi join before the sessions and per-email work must not change a
    feature: the sample's rows equal those of the whole build.
    """
    from bmkt import features
    from bmkt.features import build_features_at, build_features_before
    from bmkt.io import open_store

    opened = open_store(store)
    end = pd.Timestamp("2024-07-01")
    full = build_features_before(opened, end)
    sample = np.sort(np.random.default_rng(5).choice(full.index.to_numpy(), 300, replace=False))
    seen = []
    real = features._feature_query

    def spy(*args, **kwargs):
        seen.append(args[6])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_feature_query", spy)
    part = build_features_at(opened, pd.DataFrame({"customer_id": sample, "cutoff": end}))
    assert seen == [True]  # the sparse path ran
    part = part.drop(columns="cutoff").set_index("customer_id")
    assert part.index.equals(pd.Index(sample, name="customer_id"))
    pd.testing.assert_frame_equal(part, full.loc[sample])


def test_features_at_earlier_cutoffs_reuse_a_run_s_machine_open_labels(store, monkeypatch) -> None:
    """Inside shared_machine_opens(as_of), features at earlier cutoffs read the block's labels.

    Labelling every open again at the cutoff would give the same features; the
    block's labels serve instead (the opens are not labelled a second time).
    """
    from bmkt import engagement, features
    from bmkt.features import build_features_at
    from bmkt.io import open_store

    opened = open_store(store)
    ids = np.sort(opened.table("customers").customer_id.to_pandas().to_numpy())[::7]
    points = pd.concat(
        [
            pd.DataFrame({"customer_id": ids, "cutoff": pd.Timestamp(c)})
            for c in ("2024-03-15", "2024-05-20 12:00")
        ]
    )
    outside = build_features_at(opened, points)
    calls = []
    real = engagement.labelled_opens

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "labelled_opens", spy)
    with engagement.shared_machine_opens(opened, AS_OF) as inside_store:
        inside = build_features_at(inside_store, points)
    assert calls == []  # the block's labels were read
    pd.testing.assert_frame_equal(inside, outside)
    build_features_at(opened, points)  # outside a block the opens are labelled at the cutoff
    assert len(calls) == 1
