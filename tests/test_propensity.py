"""Purchase and click propensity, and the shared metric helpers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bmkt import propensity
from bmkt.errors import ConfigError, DataError
from bmkt.features import build_features_before, build_features_before_many, cutoff_end
from bmkt.io import open_store
from bmkt.propensity import (
    ClickPropensity,
    PurchasePropensity,
    calibration_table,
    classification_metrics,
    lift_table,
)
from bmkt.simulate import simulate_store

log = logging.getLogger(__name__)

AS_OF = "2024-06-30"
END = pd.Timestamp("2024-07-01")
FAST = {"n_threads": 1}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=5000, days=540, seed=21)


@pytest.fixture(scope="module")
def store(tables):
    return open_store(tables)


@pytest.fixture(scope="module")
def bt(store):
    return propensity.backtest(store, AS_OF, horizon_days=30, kind="purchase", **FAST)


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_hand_example() -> None:
    y = [0, 0, 1, 1, 0, 0, 0, 0, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.2, 0.1, 0.3, 0.05, 0.15, 0.9]
    m = classification_metrics(y, s)
    assert m["n"] == 10 and m["n_positive"] == 3
    assert m["base_rate"] == pytest.approx(0.3)
    # 21 positive-negative pairs; 0.35 loses to 0.4 only: 20 / 21
    assert m["roc_auc"] == pytest.approx(20 / 21)
    # positives at ranks 1, 2, 4: AP = (1/1 + 2/2 + 3/4) / 3
    assert m["pr_auc"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert m["brier"] == pytest.approx(np.mean((np.array(s) - np.array(y)) ** 2))
    assert m["top_decile_lift"] == pytest.approx(1 / 0.3)  # the top 1 of 10 is a positive
    single = classification_metrics([1, 1], [0.2, 0.3])
    assert np.isnan(single["roc_auc"]) and single["top_decile_lift"] == pytest.approx(1.0)


def test_calibration_and_lift_tables_hand_example() -> None:
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    p = [0.1, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9]
    cal = calibration_table(y, p, n_bins=4)
    assert cal["n"].tolist() == [2, 2, 2, 2]
    assert cal["mean_predicted"].tolist() == pytest.approx([0.1, 0.25, 0.65, 0.85])
    assert cal["observed_rate"].tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0])
    lift = lift_table(y, p, n_bins=4)
    assert lift["rate"].tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert lift["lift"].tolist() == pytest.approx([2.0, 1.0, 1.0, 0.0])
    assert lift["cumulative_capture"].tolist() == pytest.approx([0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ConfigError, match="y must hold 0/1 labels"):
        lift_table([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="equal length"):
        calibration_table([0, 1], [0.1])


# --------------------------------------------------------------------------- purchase


def test_purchase_propensity_backtest(bt, tables) -> None:
    m, b = bt.metrics.loc["model"], bt.metrics.loc["baseline"]
    log.info("purchase backtest: model %s / baseline %s", m.to_dict(), b.to_dict())
    assert bt.baseline_name == "BG/NBD expected purchases"
    assert m["roc_auc"] > 0.75  # clearly better than a coin
    assert m["roc_auc"] > b["roc_auc"] - 0.02  # at least on a par with BG/NBD
    assert m["top_decile_lift"] > 2.5
    assert m["brier"] < m["base_rate"] * (1 - m["base_rate"])  # beats the constant forecast
    # every customer known at t - H is evaluated, never-buyers included (baseline 0)
    n_known = (tables["customers"]["created_at"] < bt.eval_cutoff).sum()
    assert m["n"] == n_known
    assert list(bt.scores.columns) == ["customer_id", "purchase_propensity"]
    assert len(bt.scores) == (tables["customers"]["created_at"] < END).sum()


def test_purchase_propensity_ranks_true_purchase_rate(bt, tables) -> None:
    truth = tables["truth"].set_index("customer_id")
    s = bt.scores.set_index("customer_id")["purchase_propensity"]
    active = truth.loc[s.index, "is_buyer"] & truth.loc[s.index, "alive_at_end"]
    assert roc_auc_score(active, s) > 0.8


def test_save_load_round_trip_and_dispatch(bt, store, tmp_path) -> None:
    folder = bt.model.save(tmp_path / "purchase")
    loaded = propensity.load(folder)
    assert isinstance(loaded, PurchasePropensity)
    pd.testing.assert_frame_equal(
        loaded.predict_proba(store, "2024-06-15"), bt.model.predict_proba(store, "2024-06-15")
    )


# --------------------------------------------------------------------------- click


def test_click_propensity_learns_from_the_next_campaigns(store, tables) -> None:
    bt = propensity.backtest(store, AS_OF, horizon_days=28, kind="click", n_campaigns=None, **FAST)
    m, b = bt.metrics.loc["model"], bt.metrics.loc["baseline"]
    log.info("click backtest: model %s / baseline %s", m.to_dict(), b.to_dict())
    assert bt.baseline_name == "past click rate"
    assert m["n_positive"] > 100
    assert m["roc_auc"] > 0.6
    assert list(bt.scores.columns) == ["customer_id", "click_propensity"]
    truth = tables["truth"].set_index("customer_id")
    s = bt.scores.set_index("customer_id")["click_propensity"]
    rho = pd.Series(s).corr(
        truth.loc[s.index, "engagement"] * truth.loc[s.index, "click_propensity"], method="spearman"
    )
    assert rho > 0.2


def test_click_labels_are_the_recipients_of_the_next_campaign(store, tables) -> None:
    model = ClickPropensity(horizon_days=7)
    end = pd.Timestamp("2024-05-01")
    camps = model.next_campaigns(store, end)
    assert len(camps) == 1
    c = tables["campaigns"]
    first = c[(c["sent_at"] >= end) & (c["sent_at"] < end + pd.Timedelta(days=7))]
    assert camps["campaign_id"].iloc[0] == first.sort_values("sent_at")["campaign_id"].iloc[0]
    X = build_features_before(store, end)
    rows, y = model._labels(store, end, X)
    ev = tables["email_events"]
    ev = ev[ev["campaign_id"] == camps["campaign_id"].iloc[0]]
    # recipients who signed up before the cutoff (later signups have no features yet)
    sent = set(ev.loc[ev["event_type"] == "sent", "customer_id"]) & set(X.index)
    clicked = set(ev.loc[ev["event_type"] == "click", "customer_id"])
    assert set(rows.index) == sent
    assert set(y.index[y == 1]) == clicked & sent


def test_click_without_a_campaign_in_the_horizon_is_a_data_error(tables) -> None:
    no_mail = {k: v for k, v in tables.items() if k not in ("campaigns", "email_events")}
    with pytest.raises(DataError, match=r"campaigns: 0 campaigns sent in \[2024-05-01"):
        ClickPropensity().fit(no_mail, "2024-04-30")
    with pytest.raises(ConfigError, match="n_campaigns must be an integer >= 1 or None"):
        ClickPropensity(n_campaigns=0).fit(tables, "2024-04-30")


def test_backtest_kind_is_checked(store) -> None:
    with pytest.raises(ConfigError, match="Valid options for 'kind' are 'purchase', 'click'"):
        propensity.backtest(store, AS_OF, kind="churn")


# --------------------------------------------------------------------------- shared features


def test_features_built_once_give_the_same_model_and_scores(store) -> None:
    train, score = cutoff_end("2024-05-30"), END
    shared = build_features_before_many(store, [train, score])
    plain = PurchasePropensity(horizon_days=30, **FAST).fit(store, "2024-05-30")
    given = PurchasePropensity(horizon_days=30, **FAST).fit(
        store, "2024-05-30", features=shared[train]
    )
    assert given.n_train_ == plain.n_train_ and given.class_counts_ == plain.class_counts_
    pd.testing.assert_frame_equal(
        given.score(store, AS_OF, features=shared[score]), plain.score(store, AS_OF)
    )


def test_features_of_another_cutoff_are_refused(store) -> None:
    X = build_features_before(store, END)
    with pytest.raises(ConfigError, match=r"features: built at cutoff 2024-07-01T00:00:00 but"):
        PurchasePropensity(horizon_days=30, **FAST).fit(store, "2024-05-30", features=X)
    partial = X.drop(columns="n_orders")
    partial.attrs = {}  # no cutoff recorded: taken as the right one
    with pytest.raises(ConfigError, match=r"features: lacks column\(s\) \['n_orders'\]"):
        PurchasePropensity(horizon_days=30, **FAST).fit(store, "2024-05-30", features=partial)


def test_calibration_on_a_held_out_share_and_the_auto_switch(store, monkeypatch) -> None:
    """One model calibrated on a held-out share: about as good as 3 averaged folds.

    ``cv="auto"`` folds below ``MIN_ROWS_ONE_MODEL`` training rows and holds a
    quarter out from there on (lowered here so that this small store crosses it).
    Both are judged on the next month, whose labels are observed by the end.
    """
    from sklearn.frozen import FrozenEstimator

    train, test = cutoff_end("2024-04-30"), cutoff_end("2024-05-30")
    shared = build_features_before_many(store, [train, test])
    fits = {
        cv: PurchasePropensity(horizon_days=30, cv=cv, **FAST).fit(
            store, "2024-04-30", features=shared[train]
        )
        for cv in (3, 0.25, "auto")
    }
    assert fits[3].cv_ == 3 and len(fits[3].model_.calibrated_classifiers_) == 3
    assert fits[0.25].cv_ == 0.25 and len(fits[0.25].model_.calibrated_classifiers_) == 1
    assert isinstance(fits[0.25].model_.estimator, FrozenEstimator)
    assert fits[3].n_train_ < propensity.MIN_ROWS_ONE_MODEL and fits["auto"].cv_ == 3
    _, y = fits[3]._labels(store, test, shared[test])
    metrics = {}
    for cv in (3, 0.25):
        p = fits[cv].predict_proba(store, "2024-05-30", features=shared[test])
        p = p.set_index("customer_id")["purchase_propensity"].reindex(y.index)
        metrics[cv] = propensity.classification_metrics(y, p)
    log.info("3 folds %s; held-out quarter %s", metrics[3], metrics[0.25])
    assert metrics[0.25]["roc_auc"] > 0.75
    assert metrics[0.25]["roc_auc"] > metrics[3]["roc_auc"] - 0.03
    assert metrics[0.25]["brier"] < metrics[3]["brier"] + 0.01
    monkeypatch.setattr(propensity, "MIN_ROWS_ONE_MODEL", 100)
    auto = PurchasePropensity(horizon_days=30, **FAST).fit(
        store, "2024-04-30", features=shared[train]
    )
    assert auto.cv_ == 0.25


def test_data_end_is_the_latest_event_and_is_read_once_per_store(tables, monkeypatch) -> None:
    from bmkt import engine

    latest = max(
        tables["orders"]["ordered_at"].max(),
        tables["web_events"]["occurred_at"].max(),
        tables["email_events"]["occurred_at"].max(),
    )
    fresh = open_store(tables)
    calls = []
    real = engine.to_pandas
    monkeypatch.setattr(engine, "to_pandas", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert propensity.data_end(fresh) == pd.Timestamp(latest)
    assert len(calls) == 3  # one scan per event table
    # each model fitted in a run checks its label window: the scans are not repeated
    assert propensity.data_end(fresh) == pd.Timestamp(latest)
    assert len(calls) == 3
    # another store (here: without web events after the first half) is read afresh
    cut = dict(tables, orders=tables["orders"][tables["orders"]["ordered_at"] < "2024-01-01"])
    cut["web_events"] = tables["web_events"].iloc[:0]
    cut["email_events"] = tables["email_events"].iloc[:0]
    assert propensity.data_end(open_store(cut)) == cut["orders"]["ordered_at"].max()
    assert len(calls) == 6
