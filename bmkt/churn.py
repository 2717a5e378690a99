"""Churn risk: will a buyer make no purchase in the next ``horizon_days``?

:class:`ChurnModel` labels every customer with at least one purchase (an
order with revenue >= 0) before the cutoff: churned (1) when they make no
purchase in the ``horizon_days`` (90 by default) after it, retained (0)
otherwise. Never-buyers are neither labelled nor scored: they have nothing to
churn from (see :class:`bmkt.propensity.PurchasePropensity` for them).

The machinery -- features from :mod:`bmkt.features`, a calibrated
gradient-boosting classifier, the temporal backtest, persistence and plots --
is shared with the propensity models and documented in
:mod:`bmkt.propensity`. The backtest baseline is BG/NBD's ``1 - P(alive)``
[1]_ [2]_ on the same customers.

Why a classifier can beat ``P(alive)``
--------------------------------------
BG/NBD reads only the purchase history (frequency, recency, T). Customers
about to drop out usually *fade* first -- fewer opens, clicks and visits --
which the behavioural features see and the purchase history does not.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S., & Lee, K. L. (2005). "Counting your
   customers" the easy way: An alternative to the Pareto/NBD model.
   *Marketing Science*, 24(2), 275-284.
.. [2] Fader, P. S., Hardie, B. G. S., & Lee, K. L. (2008). Computing P(alive)
   using the BG/NBD model. http://brucehardie.com/notes/021/
.. [3] Neslin, S. A., Gupta, S., Kamakura, W., Lu, J., & Mason, C. H. (2006).
   Defection detection: Measuring and understanding the predictive accuracy
   of customer churn models. *Journal of Marketing Research*, 43(2), 204-211.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from bmkt.errors import DataError
from bmkt.io import Store
from bmkt.propensity import (
    Backtest,
    OutcomeModel,
    fit_bgnbd,
    plot_calibration,
    plot_lift,
    plot_roc,
    purchases_between,
)

log = logging.getLogger(__name__)

__all__ = [
    "ChurnModel",
    "Backtest",
    "backtest",
    "load",
    "plot_roc",
    "plot_calibration",
    "plot_lift",
]


class ChurnModel(OutcomeModel):
    """Probability that a buyer makes no purchase in the ``horizon_days`` after the cutoff.

    Parameters
    ----------
    horizon_days : float, default 90
        Churn horizon in days.
    estimator, calibration, cv, random_state, machine_open_params, n_threads
        As in :class:`bmkt.propensity.OutcomeModel`.

    Attributes
    ----------
    model_ : classifier
        The fitted (calibrated) classifier.
    features_ : list of str
        Feature columns, in order.
    cutoff_ : pandas.Timestamp
        Exclusive end of the training features.
    n_train_, class_counts_, calibration_method_, metrics_
        Training rows, label counts, calibration used, backtest metrics.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> store = simulate_store(n_customers=1500, days=400, seed=2)
    >>> model = ChurnModel(horizon_days=90).fit(store, "2024-03-31")
    >>> list(model.predict_proba(store, "2024-06-30").columns)
    ['customer_id', 'churn_risk']
    """

    target = "churn_risk"
    positive_label = "churned"
    negative_label = "retained"

    def __init__(
        self,
        horizon_days: float = 90,
        estimator: Any = None,
        calibration: str = "auto",
        cv: int | float | str = "auto",
        random_state: int | None = 0,
        machine_open_params: dict[str, Any] | None = None,
        n_threads: int | None = None,
        sample_size: int | None = 200_000,
    ) -> None:
        super().__init__(
            horizon_days=horizon_days,
            estimator=estimator,
            calibration=calibration,
            cv=cv,
            random_state=random_state,
            machine_open_params=machine_open_params,
            n_threads=n_threads,
            sample_size=sample_size,
        )

    def _population(self, store: Store, end: pd.Timestamp, X: pd.DataFrame) -> pd.DataFrame:
        buyers = X[X["n_orders"] > 0]
        if buyers.empty:
            raise DataError(
                f"orders: 0 of {len(X)} customers made a purchase before the cutoff {end}; "
                "churn is defined for buyers only. Use a later cutoff."
            )
        return buyers

    def _labels(
        self, store: Store, end: pd.Timestamp, X: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.Series]:
        buyers = self._population(store, end, X)
        n = purchases_between(store, end, end + self._horizon())
        y = (n.reindex(buyers.index, fill_value=0) == 0).astype("int64").rename("churned")
        return buyers, y

    def _baseline(
        self, store: Store, end: pd.Timestamp, X: pd.DataFrame
    ) -> tuple[pd.Series, pd.Series, str]:
        summary, bg = fit_bgnbd(store, end)
        risk = 1.0 - bg.p_alive(summary)
        risk = risk.reindex(X.index)
        return risk, risk, "BG/NBD 1 - P(alive)"


def backtest(store: Any, as_of: object, horizon_days: float = 90, **params: Any) -> Backtest:
    """Temporal backtest of :class:`ChurnModel`; see :meth:`~bmkt.propensity.OutcomeModel.backtest`.

    Examples
    --------
    >>> from bmkt.simulate import simulate_store
    >>> bt = backtest(simulate_store(n_customers=2000, days=500, seed=3), "2024-06-30")
    >>> list(bt.metrics.index)
    ['model', 'baseline']
    """
    return ChurnModel(horizon_days=horizon_days, **params).backtest(store, as_of)


def load(path: str | os.PathLike[str]) -> ChurnModel:
    """Load a :class:`ChurnModel` written by :meth:`~bmkt.propensity.OutcomeModel.save`."""
    return ChurnModel.load(path)  # type: ignore[return-value]
