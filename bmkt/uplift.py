"""Uplift models from past campaigns with a randomised holdout, and their evaluation.

Data
----
:func:`uplift_dataset` turns past campaigns into one row per ``(campaign,
customer)`` of its audience: **treatment** 1 for a 'sent' event, 0 for a
'holdout' event (the randomised control group, never mailed), so the
comparison is intention-to-treat (a bounced send is still treated). The
**outcome** is a purchase (an order with revenue >= 0) within
``window_days`` (5) after the campaign's ``sent_at``, for both groups alike.
The **features** are :func:`bmkt.features.build_features_at` at the
campaign's ``sent_at`` (events strictly before it, so the campaign's own
'sent'/'holdout' rows never leak the treatment), computed for every campaign
in one engine query. Only campaigns whose response window has closed by the
end of ``as_of`` are used.

Models
------
:class:`TwoModelUplift` (T-learner)
    One classifier on the treated rows, one on the control rows; the uplift
    is ``P(y | x, T=1) - P(y | x, T=0)`` [3]_.
:class:`ClassTransformationUplift`
    Jaskowski & Jaroszewicz's class variable transformation [2]_:
    ``Z = Y T + (1 - Y)(1 - T)`` and ``uplift = 2 P(Z=1 | x) - 1``. That
    identity needs ``P(T=1) = 1/2``; holdouts are usually far smaller (10%),
    so rows are weighted by ``1 / (2 e)`` (treated) and ``1 / (2 (1 - e))``
    (control), ``e`` the treatment propensity (the campaign's treated share),
    which makes the weighted treatment share exactly one half whatever ``e``
    is. Then ``2 P_w(Z=1 | x) - 1 = P(y | x, T=1) - P(y | x, T=0)``.

Both follow the scikit-learn contract with ``fit(X, treatment, y)`` and
``predict(X)``, plus ``fit_from_store(store, as_of)`` and
``score(store, as_of)``.

Evaluation
----------
Predicted uplift cannot be checked per customer (nobody is both mailed and
held out), only per group. :func:`qini_curve` (Radcliffe [1]_, in the form of
Gutierrez & Gérardy [3]_): customers sorted by decreasing predicted uplift;
after the top ``k``,

.. math:: g(k) = R_T(k) - R_C(k) \\frac{N_T(k)}{N_C(k)}

incremental responders (``R`` responders, ``N`` customers of each group in
the top ``k``; the second term is 0 while ``N_C(k) = 0``), reported divided
by the total number of treated ``N_T`` (incremental response per treated
customer). Tied predictions are one step: the curve is only evaluated after
a whole group of ties, so their order does not matter. The random-targeting
line joins ``(0, 0)`` to ``(1, g(N) / N_T)``. :func:`qini_coefficient` is
the area between the curve and that line over the fraction targeted
(trapezoids): 0 for random ranking, positive when the model puts the
persuadable first. :func:`uplift_at_k` is the difference in response rates,
treated minus control, in the top ``k`` fraction.

References
----------
.. [1] Radcliffe, N. J. (2007). Using control groups to target on predicted
   lift: Building and assessing uplift models. *Direct Marketing Analytics
   Journal*, 1(3), 14-21.
.. [2] Jaskowski, M., & Jaroszewicz, S. (2012). Uplift modeling for clinical
   trial data. *ICML 2012 Workshop on Clinical Data Analysis*.
.. [3] Gutierrez, P., & Gérardy, J.-Y. (2017). Causal inference and uplift
   modelling: A review of the literature. *Proceedings of Machine Learning
   Research*, 67, 1-13 (PAPIs 2016).
.. [4] Radcliffe, N. J., & Surry, P. D. (2011). Real-world uplift modelling
   with significance-based uplift trees. Stochastic Solutions white paper.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import ibis
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from bmkt import engine
from bmkt.errors import ConfigError, DataError, ModelError, NotFittedError
from bmkt.features import FEATURES, build_features, build_features_at, cutoff_end
from bmkt.io import Store, open_store

log = logging.getLogger(__name__)

__all__ = [
    "TwoModelUplift",
    "ClassTransformationUplift",
    "uplift_dataset",
    "qini_curve",
    "qini_coefficient",
    "uplift_at_k",
    "plot_qini",
    "default_uplift_classifier",
]

#: Fewest rows per group (treated, control) and per outcome within a group to fit.
MIN_ROWS_PER_GROUP = 50


def default_uplift_classifier(random_state: int | None = 0) -> HistGradientBoostingClassifier:
    """Heavily regularised boosted trees: uplift is a small difference of noisy rates."""
    return HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=200,
        max_leaf_nodes=8,
        min_samples_leaf=200,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=20,
        random_state=random_state,
    )


# --------------------------------------------------------------------------- data


def _campaign_frame(
    store: Store, end: pd.Timestamp, window: pd.Timedelta, campaigns: Any
) -> pd.DataFrame:
    """Campaigns to learn from, with audience counts per group; checks holdouts."""
    c = store.table("campaigns")
    ev = store.table("email_events")
    aud = ev.filter(ev.event_type.isin(["sent", "holdout"]))
    counts = aud.group_by("campaign_id").aggregate(
        n_sent=(aud.event_type == "sent").cast("int64").sum(),
        n_holdout=(aud.event_type == "holdout").cast("int64").sum(),
    )
    j = c.left_join(counts, "campaign_id").select(
        c.campaign_id,
        c.sent_at,
        c.kind,
        n_sent=counts.n_sent.fill_null(0),
        n_holdout=counts.n_holdout.fill_null(0),
    )
    df = engine.to_pandas(j).sort_values(["sent_at", "campaign_id"]).reset_index(drop=True)
    if campaigns is not None:
        if isinstance(campaigns, str | int | np.integer):
            campaigns = [campaigns]
        wanted = list(campaigns)
        unknown = [x for x in wanted if x not in set(df["campaign_id"])]
        if unknown:
            raise DataError(
                f"campaigns.campaign_id: {len(unknown)} requested campaign(s) not in the store, "
                f"e.g. {unknown[:5]}"
            )
        df = df[df["campaign_id"].isin(wanted)]
        no_holdout = df.loc[df["n_holdout"] == 0, "campaign_id"].tolist()
        if no_holdout:
            raise DataError(
                f"email_events: campaign(s) {no_holdout[:5]} have no 'holdout' events, so their "
                "lift cannot be measured; uplift models need a randomised holdout."
            )
        late = df.loc[df["sent_at"] + window > end, "campaign_id"].tolist()
        if late:
            raise DataError(
                f"campaigns.sent_at: campaign(s) {late[:5]} have a response window "
                f"({window.days} days) that ends after as_of ({end}); outcomes are not known yet."
            )
    else:
        closed = df["sent_at"] + window <= end
        with_holdout = df["n_holdout"] > 0
        n_skipped = int((closed & ~with_holdout).sum())
        if n_skipped:
            log.info("uplift: %d campaign(s) without a holdout left out", n_skipped)
        df = df[closed & with_holdout]
        if df.empty:
            raise DataError(
                f"email_events: no campaign with a 'holdout' group and a response window closed "
                f"by {end}; uplift models need past campaigns with a randomised holdout."
            )
    return df.reset_index(drop=True)


def uplift_dataset(
    store: Any,
    as_of: object,
    campaigns: Sequence[Any] | None = None,
    window_days: float = 5,
    *,
    machine_open_params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Rows ``(campaign, customer)`` of past campaigns with treatment, outcome and features.

    Parameters
    ----------
    store : Store, path or mapping
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : date-like
        Run date; only campaigns whose response window ends by the end of
        that day are used.
    campaigns : sequence, optional
        Campaign ids to use (all campaigns with a holdout by default).
    window_days : float
        Outcome window after ``sent_at``.
    machine_open_params : dict, optional
        Passed to :func:`bmkt.features.build_features_at`.

    Returns
    -------
    pandas.DataFrame
        ``campaign_id``, ``customer_id``, ``sent_at``, ``treatment`` (1 sent,
        0 holdout), ``treatment_share`` (the campaign's treated share),
        ``y`` (purchase in the window) and every column of
        :data:`bmkt.features.FEATURES`.

    Raises
    ------
    DataError
        If a requested campaign has no holdout, is unknown or its window is
        still open, or no campaign qualifies.
    """
    store = open_store(store)
    end = cutoff_end(as_of)
    if (
        isinstance(window_days, bool)
        or not isinstance(window_days, int | float)
        or window_days <= 0
    ):
        raise ConfigError(f"window_days must be a number of days > 0. Got {window_days!r}.")
    window = pd.Timedelta(days=float(window_days))
    camps = _campaign_frame(store, end, window, campaigns)

    ev = store.table("email_events")
    cid = camps["campaign_id"].tolist()
    aud = ev.filter(ev.event_type.isin(["sent", "holdout"]) & ev.campaign_id.isin(cid))
    rows = engine.to_pandas(
        aud.group_by(["campaign_id", "customer_id"]).aggregate(
            sent=(aud.event_type == "sent").any(), holdout=(aud.event_type == "holdout").any()
        )
    )
    both = rows["sent"].astype(bool) & rows["holdout"].astype(bool)
    if both.any():
        ex = rows.loc[both, ["campaign_id", "customer_id"]].head(5).to_records(index=False).tolist()
        raise DataError(
            f"email_events: {int(both.sum())} (campaign, customer) pairs are both 'sent' and "
            f"'holdout', e.g. {ex}; the holdout must be disjoint from the send."
        )
    rows = rows.merge(camps[["campaign_id", "sent_at"]], on="campaign_id")
    rows["treatment"] = rows["sent"].astype(bool).astype("int64")
    rows["sent_at"] = pd.to_datetime(rows["sent_at"]).astype("datetime64[ns]")

    # outcome: a purchase in [sent_at, sent_at + window)
    o = store.table("orders")
    o = o.filter(o.revenue >= 0).select("customer_id", "ordered_at")
    pts = _register(store, rows[["campaign_id", "customer_id", "sent_at"]])
    try:
        j = pts.inner_join(o, "customer_id")
        j = j.filter(
            (j.ordered_at >= j.sent_at)
            & (j.ordered_at < j.sent_at + ibis.interval(seconds=int(window.total_seconds())))
        )
        bought = engine.to_pandas(j.select("campaign_id", "customer_id").distinct())
    finally:
        store.con.drop_table(pts.get_name(), force=True)
    bought["y"] = 1
    rows = rows.merge(bought, on=["campaign_id", "customer_id"], how="left")
    rows["y"] = rows["y"].fillna(0).astype("int64")
    rows["treatment_share"] = rows.groupby("campaign_id")["treatment"].transform("mean")

    feats = build_features_at(
        store,
        rows[["customer_id", "sent_at"]].rename(columns={"sent_at": "cutoff"}),
        machine_open_params=machine_open_params,
    ).rename(columns={"cutoff": "sent_at"})
    out = rows.merge(feats, on=["customer_id", "sent_at"], how="inner")
    out = out[
        ["campaign_id", "customer_id", "sent_at", "treatment", "treatment_share", "y", *FEATURES]
    ]
    out = out.sort_values(["sent_at", "campaign_id", "customer_id"]).reset_index(drop=True)
    log.info(
        "uplift data: %d campaigns, %d rows (%d treated, %d control), response %.4f vs %.4f",
        len(camps), len(out), int(out["treatment"].sum()), int((1 - out["treatment"]).sum()),
        out.loc[out["treatment"] == 1, "y"].mean(), out.loc[out["treatment"] == 0, "y"].mean(),
    )  # fmt: skip
    return out


def _register(store: Store, frame: pd.DataFrame) -> Any:
    """Register ``frame`` as a temporary table on the store's connection (caller drops it)."""
    name = f"_bmkt_uplift_{uuid.uuid4().hex}"
    return store.con.create_table(name, ibis.memtable(frame), temp=True, overwrite=True)


# --------------------------------------------------------------------------- estimators


def _check_xty(
    X: Any, treatment: Any, y: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    names = [str(c) for c in X.columns] if isinstance(X, pd.DataFrame) else None
    Xa = np.asarray(X, dtype="float64")
    t = np.asarray(treatment)
    ya = np.asarray(y)
    if Xa.ndim != 2:
        raise ConfigError(f"X must be 2-dimensional. Got shape {Xa.shape}.")
    if not (len(Xa) == len(t) == len(ya)):
        raise ConfigError(
            f"X, treatment and y must have the same length. Got {len(Xa)}, {len(t)}, {len(ya)}."
        )
    for name, arr in (("treatment", t), ("y", ya)):
        bad = ~np.isin(arr, (0, 1, True, False))
        if bad.any():
            raise ConfigError(
                f"{name} must hold 0/1 values; {int(bad.sum())} rows do not, e.g. "
                f"{list(arr[bad][:5])}."
            )
    return Xa, t.astype("int64"), ya.astype("int64"), names


def _check_groups(t: np.ndarray, y: np.ndarray, min_rows: int, who: str) -> None:
    for grp, name in ((1, "treated"), (0, "control")):
        sel = t == grp
        n, pos = int(sel.sum()), int(y[sel].sum())
        if n < min_rows:
            raise ModelError(
                f"{who}: {n} {name} rows ({int((t == 1).sum())} treated, "
                f"{int((t == 0).sum())} control); at least {min_rows} per group are needed. "
                "Use more campaigns or a larger holdout."
            )
        if pos == 0 or pos == n:
            raise ModelError(
                f"{who}: the outcome of the {n} {name} rows has a single class "
                f"({pos} with a purchase, {n - pos} without); both are needed."
            )


class _UpliftModel(BaseEstimator):
    """Shared parts: validation, fitted checks, store helpers."""

    def __init__(
        self,
        estimator: Any = None,
        min_rows_per_group: int = MIN_ROWS_PER_GROUP,
        random_state: int | None = 0,
        n_threads: int | None = None,
    ) -> None:
        self.estimator = estimator
        self.min_rows_per_group = min_rows_per_group
        self.random_state = random_state
        self.n_threads = n_threads

    def _threads(self) -> Any:
        """Limit OpenMP threads of the boosting to ``n_threads`` (None: no limit)."""
        n = getattr(self, "n_threads", None)
        if n is None:
            return contextlib.nullcontext()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n_threads must be an integer >= 1 or None. Got {n!r}.")
        return threadpool_limits(n, user_api="openmp")

    def _base(self) -> Any:
        if self.estimator is not None:
            return clone(self.estimator)
        return default_uplift_classifier(self.random_state)

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "n_features_in_")
        except SklearnNotFittedError:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit or fit_from_store first."
            ) from None

    def _matrix(self, X: Any) -> np.ndarray:
        self._check_fitted()
        if isinstance(X, pd.DataFrame) and self.feature_names_in_ is not None:
            missing = [c for c in self.feature_names_in_ if c not in X.columns]
            if missing:
                raise ModelError(f"{type(self).__name__}: X lacks feature column(s) {missing}.")
            X = X[self.feature_names_in_]
        Xa = np.asarray(X, dtype="float64")
        if Xa.ndim != 2 or Xa.shape[1] != self.n_features_in_:
            raise ModelError(
                f"{type(self).__name__}: X has {Xa.shape[-1] if Xa.ndim else 0} features, "
                f"the model was fitted on {self.n_features_in_}."
            )
        return Xa

    def _record(self, t: np.ndarray, names: list[str] | None, n_features: int) -> None:
        self.n_features_in_ = n_features
        self.feature_names_in_ = names
        self.n_treated_ = int((t == 1).sum())
        self.n_control_ = int((t == 0).sum())

    def fit(self, X: Any, treatment: Any, y: Any) -> _UpliftModel:  # pragma: no cover
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def fit_from_store(
        self,
        store: Any,
        as_of: object,
        campaigns: Sequence[Any] | None = None,
        window_days: float = 5,
    ) -> _UpliftModel:
        """Fit on the past campaigns of a store (see :func:`uplift_dataset`).

        Parameters
        ----------
        store : Store, path or mapping
            Anything :func:`bmkt.io.open_store` accepts.
        as_of : date-like
            Run date; campaigns whose response window closed by then are used.
        campaigns : sequence, optional
            Campaign ids (default: every campaign with a holdout).
        window_days : float
            Outcome window after each send.

        Returns
        -------
        self
        """
        data = uplift_dataset(store, as_of, campaigns=campaigns, window_days=window_days)
        self._fit_data(data)
        self.campaigns_ = sorted(data["campaign_id"].unique().tolist())
        self.as_of_ = cutoff_end(as_of)
        self.window_days_ = float(window_days)
        return self

    def _fit_data(self, data: pd.DataFrame) -> None:
        self.fit(data[list(FEATURES)], data["treatment"], data["y"])

    def score(self, store: Any, as_of: object) -> pd.DataFrame:  # type: ignore[override]
        """Predicted uplift of every customer at ``as_of``.

        Returns
        -------
        pandas.DataFrame
            ``customer_id`` and ``uplift`` (change in the probability of a
            purchase within the window if mailed), sorted by ``customer_id``.
        """
        self._check_fitted()
        X = build_features(open_store(store), as_of)
        cols = self.feature_names_in_ or list(FEATURES)
        return pd.DataFrame({"customer_id": X.index.to_numpy(), "uplift": self.predict(X[cols])})


class TwoModelUplift(_UpliftModel):
    """T-learner: separate outcome classifiers for treated and control rows [3]_.

    Parameters
    ----------
    estimator : classifier, optional
        Unfitted scikit-learn classifier used for both groups;
        :func:`default_uplift_classifier` when None.
    min_rows_per_group : int
        Fewest treated and control rows accepted.
    random_state : int, optional
        Seed of the default classifier.
    n_threads : int, optional
        OpenMP threads of the boosting (None: all cores; 1 is often faster on
        a busy machine).

    Attributes
    ----------
    model_treated_, model_control_ : classifier
        Fitted on the treated and on the control rows.
    n_treated_, n_control_ : int
    n_features_in_ : int
    feature_names_in_ : list of str or None

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(4000, 2)); t = rng.integers(0, 2, 4000)
    >>> y = (rng.random(4000) < 0.2 + 0.15 * t * (X[:, 0] > 0)).astype(int)
    >>> m = TwoModelUplift().fit(X, t, y)
    >>> bool(m.predict([[2.0, 0.0]])[0] > m.predict([[-2.0, 0.0]])[0])
    True
    """

    def fit(self, X: Any, treatment: Any, y: Any) -> TwoModelUplift:
        """Fit the two classifiers.

        Parameters
        ----------
        X : array-like of shape (n, p)
        treatment : array-like of {0, 1}
        y : array-like of {0, 1}

        Returns
        -------
        self

        Raises
        ------
        ModelError
            With fewer than ``min_rows_per_group`` rows in a group, or a
            single outcome class within a group.
        """
        Xa, t, ya, names = _check_xty(X, treatment, y)
        _check_groups(t, ya, int(self.min_rows_per_group), type(self).__name__)
        with self._threads():
            self.model_treated_ = self._base().fit(Xa[t == 1], ya[t == 1])
            self.model_control_ = self._base().fit(Xa[t == 0], ya[t == 0])
        self._record(t, names, Xa.shape[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted uplift ``P(y | x, T=1) - P(y | x, T=0)`` per row."""
        Xa = self._matrix(X)
        with self._threads():
            p_t = self.model_treated_.predict_proba(Xa)[:, 1]
            p_c = self.model_control_.predict_proba(Xa)[:, 1]
        return p_t - p_c


class ClassTransformationUplift(_UpliftModel):
    """Class variable transformation with a propensity correction [2]_.

    One classifier learns ``Z = Y T + (1 - Y)(1 - T)`` with sample weights
    ``1 / (2 e)`` for treated and ``1 / (2 (1 - e))`` for control rows
    (module docstring); ``uplift = 2 P(Z=1 | x) - 1``.

    Parameters
    ----------
    estimator : classifier, optional
        Unfitted scikit-learn classifier accepting ``sample_weight``;
        :func:`default_uplift_classifier` when None.
    min_rows_per_group : int
        Fewest treated and control rows accepted.
    random_state : int, optional
        Seed of the default classifier.
    n_threads : int, optional
        OpenMP threads of the boosting (None: all cores; 1 is often faster on
        a busy machine).

    Attributes
    ----------
    model_ : classifier
        Fitted on ``Z``.
    treatment_share_ : float
        Mean propensity ``e`` of the training rows.
    n_treated_, n_control_, n_features_in_, feature_names_in_

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(6000, 2)); t = (rng.random(6000) < 0.8).astype(int)
    >>> y = (rng.random(6000) < 0.2 + 0.15 * t * (X[:, 0] > 0)).astype(int)
    >>> m = ClassTransformationUplift().fit(X, t, y)
    >>> bool(m.predict([[2.0, 0.0]])[0] > m.predict([[-2.0, 0.0]])[0])
    True
    """

    def fit(
        self, X: Any, treatment: Any, y: Any, propensity: float | Any | None = None
    ) -> ClassTransformationUplift:
        """Fit the classifier on the transformed class.

        Parameters
        ----------
        X : array-like of shape (n, p)
        treatment : array-like of {0, 1}
        y : array-like of {0, 1}
        propensity : float or array-like, optional
            Probability of treatment per row (or one for all); the observed
            treated share when None (right for one randomised experiment; pass
            per-row shares when campaigns held out different shares).

        Returns
        -------
        self
        """
        Xa, t, ya, names = _check_xty(X, treatment, y)
        _check_groups(t, ya, int(self.min_rows_per_group), type(self).__name__)
        e = (
            np.full(len(t), t.mean())
            if propensity is None
            else np.broadcast_to(np.asarray(propensity, dtype="float64"), t.shape)
        )
        if not np.all((e > 0) & (e < 1)):
            raise ConfigError("propensity must be strictly between 0 and 1 for every row.")
        z = (ya * t + (1 - ya) * (1 - t)).astype("int64")
        w = np.where(t == 1, 0.5 / e, 0.5 / (1.0 - e))
        with self._threads():
            self.model_ = self._base().fit(Xa, z, sample_weight=w)
        self.treatment_share_ = float(np.mean(e))
        self._record(t, names, Xa.shape[1])
        return self

    def _fit_data(self, data: pd.DataFrame) -> None:
        self.fit(
            data[list(FEATURES)], data["treatment"], data["y"], propensity=data["treatment_share"]
        )

    def predict(self, X: Any) -> np.ndarray:
        """Predicted uplift ``2 P(Z=1 | x) - 1`` per row."""
        Xa = self._matrix(X)
        with self._threads():
            return 2.0 * self.model_.predict_proba(Xa)[:, 1] - 1.0


# --------------------------------------------------------------------------- evaluation


def _eval_arrays(uplift: Any, treatment: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.asarray(uplift, dtype="float64")
    t = np.asarray(treatment)
    ya = np.asarray(y)
    if not (u.ndim == t.ndim == ya.ndim == 1 and len(u) == len(t) == len(ya)):
        raise ConfigError(
            f"uplift, treatment and y must be 1-d of equal length. Got {u.shape}, {t.shape}, {ya.shape}."
        )
    if not np.isfinite(u).all():
        raise ConfigError(
            f"uplift holds {int((~np.isfinite(u)).sum())} missing or infinite values."
        )
    for name, arr in (("treatment", t), ("y", ya)):
        if not np.isin(arr, (0, 1, True, False)).all():
            raise ConfigError(f"{name} must hold 0/1 values.")
    t, ya = t.astype("int64"), ya.astype("int64")
    if not (t == 1).any() or not (t == 0).any():
        raise ConfigError(
            f"treatment must hold both groups ({int((t == 1).sum())} treated, "
            f"{int((t == 0).sum())} control)."
        )
    return u, t, ya


def qini_curve(uplift: Any, treatment: Any, y: Any) -> pd.DataFrame:
    """The Qini curve of predicted uplift (Radcliffe 2007; see the module docstring).

    Parameters
    ----------
    uplift : array-like
        Predicted uplift (higher = target first).
    treatment : array-like of {0, 1}
    y : array-like of {0, 1}

    Returns
    -------
    pandas.DataFrame
        One row per cut, starting at ``(0, 0)``: ``n_targeted``,
        ``fraction``, ``n_treated``, ``n_control``, ``responders_treated``,
        ``responders_control``, ``qini`` (``g(k) / N_T``) and ``random``.

    Examples
    --------
    >>> q = qini_curve([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1])
    >>> q["qini"].tolist()
    [0.0, 0.5, 0.5, 0.5, 0.0]
    """
    u, t, ya = _eval_arrays(uplift, treatment, y)
    order = np.argsort(-u, kind="stable")
    u, t, ya = u[order], t[order], ya[order]
    nt = np.cumsum(t)
    nc = np.cumsum(1 - t)
    rt = np.cumsum(ya * t)
    rc = np.cumsum(ya * (1 - t))
    last_of_tie = np.r_[u[1:] != u[:-1], True]  # evaluate only after whole groups of ties
    idx = np.flatnonzero(last_of_tie)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = rt[idx] - np.where(nc[idx] > 0, rc[idx] * nt[idx] / np.maximum(nc[idx], 1), 0.0)
    n = len(u)
    total_t = nt[-1]
    k = idx + 1
    curve = pd.DataFrame(
        {
            "n_targeted": np.r_[0, k],
            "fraction": np.r_[0.0, k / n],
            "n_treated": np.r_[0, nt[idx]],
            "n_control": np.r_[0, nc[idx]],
            "responders_treated": np.r_[0, rt[idx]],
            "responders_control": np.r_[0, rc[idx]],
            "qini": np.r_[0.0, g / total_t],
        }
    )
    curve["random"] = curve["fraction"] * curve["qini"].iloc[-1]
    return curve


def qini_coefficient(uplift: Any, treatment: Any, y: Any) -> float:
    """Area between the Qini curve and random targeting (0 = random, > 0 = better).

    Trapezoidal area over the fraction targeted of ``qini - random`` from
    :func:`qini_curve`; in units of incremental response per treated
    customer.

    Examples
    --------
    >>> qini_coefficient([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1])
    0.375
    """
    c = qini_curve(uplift, treatment, y)
    d = (c["qini"] - c["random"]).to_numpy()
    x = c["fraction"].to_numpy()
    return float(np.sum(np.diff(x) * (d[1:] + d[:-1]) / 2.0))


def uplift_at_k(uplift: Any, treatment: Any, y: Any, k: float = 0.1) -> float:
    """Response rate of the treated minus that of the control in the top ``k`` by uplift.

    The top ``ceil(k * n)`` rows by predicted uplift are taken (ties keep
    their input order). NaN, with a log message, when the top rows hold no
    treated or no control row.

    Examples
    --------
    >>> uplift_at_k([4, 3, 2, 1], [1, 0, 1, 0], [1, 0, 0, 1], k=0.5)
    1.0
    """
    u, t, ya = _eval_arrays(uplift, treatment, y)
    if not (isinstance(k, int | float) and not isinstance(k, bool) and 0 < k <= 1):
        raise ConfigError(f"k must be a fraction in (0, 1]. Got {k!r}.")
    n_top = max(int(np.ceil(k * len(u) - 1e-9)), 1)
    top = np.argsort(-u, kind="stable")[:n_top]
    tt, yt = t[top], ya[top]
    if not (tt == 1).any() or not (tt == 0).any():
        log.info("uplift_at_k: the top %d rows hold only one group; result is NaN", n_top)
        return float("nan")
    return float(yt[tt == 1].mean() - yt[tt == 0].mean())


def plot_qini(uplift: Any, treatment: Any, y: Any, ax: Any = None, name: str = "model") -> Any:
    """Qini curve against random targeting.

    Parameters
    ----------
    uplift, treatment, y : array-like
        As :func:`qini_curve`.
    ax : plotly.graph_objects.Figure, optional
        Figure to draw into (e.g. to compare two models); a new one when None.
    name : str
        Legend name of the curve.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    if ax is None:
        fig = go.Figure()
    elif isinstance(ax, go.Figure):
        fig = ax
    else:
        raise ConfigError(
            f"'ax' must be a plotly Figure to draw into (matplotlib is not installed), got {type(ax).__name__}."
        )
    c = qini_curve(uplift, treatment, y)
    q = qini_coefficient(uplift, treatment, y)
    fig.add_trace(
        go.Scatter(x=c["fraction"], y=c["qini"], mode="lines", name=f"{name} (Qini {q:.4f})")
    )
    if not any(tr.name == "random" for tr in fig.data):
        fig.add_trace(
            go.Scatter(
                x=c["fraction"], y=c["random"], mode="lines", name="random",
                line={"dash": "dot", "color": "grey"},
            )
        )  # fmt: skip
    fig.update_layout(
        title="Qini curve",
        xaxis_title="fraction targeted (by decreasing predicted uplift)",
        yaxis_title="incremental responders per treated customer",
    )
    return fig
