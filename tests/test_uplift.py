"""Uplift: Qini and uplift@k on hand-made examples, the two learners, and simulated campaigns.

The simulated stores use a stronger, easier-to-measure email effect than the
simulator's defaults (more persuadables with a larger effect, a 50% holdout):
with the defaults the average lift is about 0.4 points on a 4% response rate
and a 10% holdout, so even the *true* uplift ranks campaigns with a Qini of
only 0.001-0.002, within the sampling noise of a few thousand control rows.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy.stats import spearmanr

from bmkt.errors import ConfigError, DataError, ModelError, NotFittedError
from bmkt.features import FEATURES, build_features_at
from bmkt.simulate import simulate_store
from bmkt.uplift import (
    ClassTransformationUplift,
    TwoModelUplift,
    plot_qini,
    qini_coefficient,
    qini_curve,
    uplift_at_k,
    uplift_dataset,
)

log = logging.getLogger(__name__)

AS_OF = "2024-06-30"
STRONG = {
    "holdout_share": 0.5,
    "response_shares": (0.4, 0.1, 0.45, 0.05),
    "persuadable_a": 4.0,
    "persuadable_b": 16.0,
}
FAST = {"n_threads": 1}


# --------------------------------------------------------------------------- Qini, uplift@k


def test_qini_curve_hand_example() -> None:
    # sorted: treated buyer, control non-buyer, treated non-buyer, control buyer
    q = qini_curve([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1])
    assert q["n_targeted"].tolist() == [0, 1, 2, 3, 4]
    assert q["fraction"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # g(k) = R_T(k) - R_C(k) N_T(k) / N_C(k), over N_T = 2
    assert q["qini"].tolist() == [0.0, 0.5, 0.5, 0.5, 0.0]
    assert q["random"].tolist() == [0.0] * 5
    # trapezoids: 0.25 * (0.25 + 0.5 + 0.5 + 0.25)
    assert qini_coefficient([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1]) == pytest.approx(0.375)


def test_qini_end_point_is_the_average_effect_and_ties_are_one_step() -> None:
    t = [1, 1, 1, 1, 0, 0, 0, 0]
    y = [1, 1, 0, 0, 1, 0, 0, 0]
    flat = qini_curve(np.zeros(8), t, y)
    assert flat["n_targeted"].tolist() == [0, 8]  # all tied: one step
    assert flat["qini"].iloc[-1] == pytest.approx(0.5 - 0.25)  # treated minus control rate
    assert qini_coefficient(np.zeros(8), t, y) == pytest.approx(0.0)
    # order within ties does not matter
    u = [1, 1, 0, 0, 1, 0, 0, 0]
    a = qini_coefficient(u, t, y)
    perm = [7, 6, 5, 4, 3, 2, 1, 0]
    b = qini_coefficient(np.take(u, perm), np.take(t, perm), np.take(y, perm))
    assert a == pytest.approx(b)


def test_good_ranking_beats_random_and_reversed() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.random(n)
    t = rng.integers(0, 2, n)
    y = (rng.random(n) < 0.1 + 0.2 * t * x).astype(int)  # uplift 0.2 x, x ~ U(0, 1)
    # targeting the top fraction f gains int_{1-f}^1 0.2 x dx = 0.1 (1 - (1 - f)^2) per
    # customer; minus the random line 0.1 f, integrated over f: 0.1 (2/3 - 1/2) = 1/60
    assert qini_coefficient(x, t, y) == pytest.approx(1 / 60, abs=0.004)
    assert qini_coefficient(-x, t, y) == pytest.approx(-1 / 60, abs=0.004)
    assert abs(qini_coefficient(rng.random(n), t, y)) < 0.004


def test_uplift_at_k_hand_example() -> None:
    u, t, y = [4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1]
    assert uplift_at_k(u, t, y, k=0.5) == pytest.approx(1.0 - 0.0)
    assert uplift_at_k(u, t, y, k=1.0) == pytest.approx(0.5 - 0.5)
    assert np.isnan(uplift_at_k(u, t, y, k=0.25))  # the top row is treated only
    with pytest.raises(ConfigError, match=r"k must be a fraction in \(0, 1\]"):
        uplift_at_k(u, t, y, k=0)


def test_evaluation_input_checks() -> None:
    with pytest.raises(ConfigError, match="treatment must hold both groups"):
        qini_curve([1, 2], [1, 1], [0, 1])
    with pytest.raises(ConfigError, match="y must hold 0/1 values"):
        qini_curve([1, 2], [1, 0], [0, 2])
    with pytest.raises(ConfigError, match="equal length"):
        qini_coefficient([1, 2, 3], [1, 0], [0, 1])
    with pytest.raises(ConfigError, match="uplift holds 1 missing"):
        qini_curve([1, np.nan], [1, 0], [0, 1])


def test_plot_qini_returns_a_figure() -> None:
    fig = plot_qini([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1])
    assert isinstance(fig, go.Figure)
    assert [tr.name for tr in fig.data] == ["model (Qini 0.3750)", "random"]
    same = plot_qini([1, 2, 3, 4], [1, 0, 1, 0], [1, 0, 0, 1], ax=fig, name="other")
    assert same is fig and len(fig.data) == 3
    with pytest.raises(ConfigError, match="'ax' must be a plotly Figure"):
        plot_qini([1, 2], [1, 0], [0, 1], ax=object())


# --------------------------------------------------------------------------- learners


def _synthetic(n: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    t = (rng.random(n) < share).astype(int)
    p = 0.3 + 0.2 * t * (X[:, 0] > 0)  # uplift 0.2 where x0 > 0, else 0
    return X, t, (rng.random(n) < p).astype(int)


@pytest.mark.parametrize("model", [TwoModelUplift(**FAST), ClassTransformationUplift(**FAST)])
def test_learners_recover_a_known_effect_with_unbalanced_treatment(model) -> None:
    X, t, y = _synthetic(20_000, share=0.85)
    u = model.fit(X, t, y).predict(X)
    pos = X[:, 0] > 0
    assert u[pos].mean() == pytest.approx(0.2, abs=0.05)
    assert u[~pos].mean() == pytest.approx(0.0, abs=0.05)
    assert model.n_treated_ + model.n_control_ == len(y)


def test_class_transformation_needs_the_propensity_correction() -> None:
    """Without it (pretending P(T=1) = 1/2) a 85% treated share biases every prediction."""
    X, t, y = _synthetic(20_000, share=0.85)
    naive = ClassTransformationUplift(**FAST).fit(X, t, y, propensity=0.5).predict(X)
    fixed = ClassTransformationUplift(**FAST).fit(X, t, y).predict(X)
    none = X[:, 0] <= 0
    assert naive[none].mean() < -0.2  # 2 (0.85 * 0.3 + 0.15 * 0.7) - 1 = -0.28
    assert abs(fixed[none].mean()) < 0.05


def test_learner_errors() -> None:
    X, t, y = _synthetic(400, share=0.95)
    n_control = int((t == 0).sum())
    with pytest.raises(ModelError, match=f"{n_control} control rows .* at least 50 per group"):
        TwoModelUplift().fit(X, t, y)
    y0 = np.where(t == 0, 0, y)
    with pytest.raises(ModelError, match=r"outcome of the \d+ control rows has a single class"):
        ClassTransformationUplift(min_rows_per_group=10).fit(X, t, y0)
    with pytest.raises(ConfigError, match="treatment must hold 0/1 values"):
        TwoModelUplift().fit(X, t * 2, y)
    with pytest.raises(ConfigError, match="propensity must be strictly between 0 and 1"):
        ClassTransformationUplift(min_rows_per_group=10).fit(X, t, y, propensity=1.0)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        TwoModelUplift().predict(X)
    fitted = TwoModelUplift(min_rows_per_group=10, **FAST).fit(
        pd.DataFrame(X, columns=list("abc")), t, y
    )
    with pytest.raises(ModelError, match=r"X lacks feature column\(s\) \['c'\]"):
        fitted.predict(pd.DataFrame(X[:, :2], columns=list("ab")))


# --------------------------------------------------------------------------- simulated campaigns


SEEDS = (31, 32)


@pytest.fixture(scope="module")
def simulated() -> dict[int, tuple[dict[str, pd.DataFrame], pd.DataFrame]]:
    """Per seed, built on first use: the tables and their uplift data set."""

    class Lazy(dict):
        def __missing__(self, seed: int) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
            tables = simulate_store(n_customers=3000, days=450, seed=seed, **STRONG)
            self[seed] = (tables, uplift_dataset(tables, AS_OF))
            return self[seed]

    return Lazy()


@pytest.fixture(scope="module")
def campaigns(simulated) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    return simulated[SEEDS[0]]


def test_uplift_dataset_rows(campaigns) -> None:
    tables, data = campaigns
    assert {"campaign_id", "customer_id", "sent_at", "treatment", "y", *FEATURES} <= set(data)
    ev = tables["email_events"]
    audience = ev[ev["event_type"].isin(["sent", "holdout"])]
    used = audience[audience["campaign_id"].isin(data["campaign_id"].unique())]
    assert len(data) == len(used[["campaign_id", "customer_id"]].drop_duplicates())
    assert (
        data.loc[data["treatment"] == 0]
        .merge(used[used["event_type"] == "holdout"], on=["campaign_id", "customer_id"])
        .shape[0]
        == (data["treatment"] == 0).sum()
    )
    # the response window of every campaign used has closed by the as_of
    assert (data["sent_at"] + pd.Timedelta(days=5) <= pd.Timestamp("2024-07-01")).all()
    # the email works on average
    rates = data.groupby("treatment")["y"].mean()
    assert rates[1] > rates[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("learner", [TwoModelUplift, ClassTransformationUplift])
def test_uplift_beats_random_on_later_campaigns_and_tracks_truth(simulated, seed, learner) -> None:
    """Train on the first 70% of campaigns, evaluate on the rest (held out in time).

    Spearman tolerance: with about 2,800 customers scored, the sampling sd of
    Spearman's rho under no association is 1/sqrt(n) ~ 0.02, so rho > 0.1
    is five sd from zero (and p < 0.001 is asked for on top).
    """
    tables, data = simulated[seed]
    split = data["sent_at"].quantile(0.7)
    train, test = data[data["sent_at"] < split], data[data["sent_at"] >= split]
    model = learner(**FAST)
    if learner is ClassTransformationUplift:
        model.fit(train[list(FEATURES)], train["treatment"], train["y"], train["treatment_share"])
    else:
        model.fit(train[list(FEATURES)], train["treatment"], train["y"])
    u = model.predict(test[list(FEATURES)])
    q = qini_coefficient(u, test["treatment"], test["y"])
    at10 = uplift_at_k(u, test["treatment"], test["y"], k=0.1)
    ate = test.groupby("treatment")["y"].mean().diff().iloc[-1]
    scores = model.score(tables, AS_OF)
    truth = tables["truth"].set_index("customer_id").loc[scores["customer_id"], "true_uplift"]
    rho, p = spearmanr(scores["uplift"], truth)
    log.info(
        "%s: held-out Qini %.4f, uplift@10%% %.3f (average effect %.3f), Spearman %.3f",
        learner.__name__, q, at10, ate, rho,
    )  # fmt: skip
    assert q > 0.002
    assert at10 > ate
    assert rho > 0.1 and p < 1e-3
    assert list(scores.columns) == ["customer_id", "uplift"]


def test_fit_from_store_and_score(campaigns) -> None:
    tables, data = campaigns
    some = sorted(data["campaign_id"].unique())[-4:]
    model = TwoModelUplift(**FAST).fit_from_store(tables, AS_OF, campaigns=some)
    assert model.campaigns_ == some
    assert model.feature_names_in_ == list(FEATURES)
    scores = model.score(tables, "2024-06-15")
    assert scores["uplift"].between(-1, 1).all()
    assert len(scores) == (tables["customers"]["created_at"] < pd.Timestamp("2024-06-16")).sum()


def test_features_at_send_time_do_not_see_the_campaign(campaigns) -> None:
    """A campaign's own 'sent'/'holdout'/'delivered' rows come at or after sent_at."""
    tables, data = campaigns
    cid = data["campaign_id"].iloc[len(data) // 2]
    rows = data[data["campaign_id"] == cid]
    points = rows[["customer_id", "sent_at"]].rename(columns={"sent_at": "cutoff"})
    without = copy.deepcopy(tables)
    ev = without["email_events"]
    without["email_events"] = ev[ev["campaign_id"] != cid].reset_index(drop=True)
    a = build_features_at(tables, points)
    b = build_features_at(without, points)
    pd.testing.assert_frame_equal(a, b)
    # and the features of treated and control rows agree in distribution (randomised)
    assert abs(rows.groupby("treatment")["n_delivered"].mean().diff().iloc[-1]) < 2.0


# --------------------------------------------------------------------------- store errors


def test_campaign_without_holdout_is_a_data_error(campaigns) -> None:
    tables, data = campaigns
    cid = int(data["campaign_id"].iloc[0])
    t = dict(tables)
    ev = t["email_events"]
    t["email_events"] = ev[~((ev["campaign_id"] == cid) & (ev["event_type"] == "holdout"))]
    with pytest.raises(DataError, match=rf"campaign\(s\) \[{cid}\] have no 'holdout' events"):
        uplift_dataset(t, AS_OF, campaigns=[cid])
    t["email_events"] = ev[ev["event_type"] != "holdout"]
    with pytest.raises(DataError, match="no campaign with a 'holdout' group"):
        TwoModelUplift().fit_from_store(t, AS_OF)
    with pytest.raises(DataError, match=r"1 requested campaign\(s\) not in the store"):
        uplift_dataset(tables, AS_OF, campaigns=[cid, 999_999])
    with pytest.raises(DataError, match="response window .* ends after as_of"):
        uplift_dataset(tables, "2023-12-31", campaigns=[int(data["campaign_id"].iloc[-1])])


def test_too_few_rows_from_the_store_is_a_model_error(campaigns) -> None:
    tables, data = campaigns
    first = [int(data["campaign_id"].iloc[0])]
    with pytest.raises(
        ModelError, match=r"rows \(\d+ treated, \d+ control\); at least 5000 per group"
    ):
        TwoModelUplift(min_rows_per_group=5000).fit_from_store(tables, AS_OF, campaigns=first)
