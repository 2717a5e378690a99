"""The per-customer score table: every score of every customer in one frame.

:func:`score_customers` runs the scoring stage of the main job on a store:

1. RFM summary in the engine (:func:`bmkt.rfm.summarize`), R/F/M scores and
   the named RFM segment;
2. lifetime value: BG/NBD (P(alive), expected purchases) and Gamma-Gamma
   (expected spend), combined into a discounted CLV (:mod:`bmkt.clv`);
3. email engagement with machine opens kept out, preferred send hour in the
   customer's time zone, category and discount affinity
   (:mod:`bmkt.engagement`);
4. churn risk and purchase propensity from models trained on the store's own
   past with a temporal split (:mod:`bmkt.churn`, :mod:`bmkt.propensity`),
   when asked for;
5. behavioral triggers and their flags (:mod:`bmkt.triggers`).

The result has one row per customer who signed up by ``as_of`` and the
column names the default segment rules read (``rfm_segment``, ``r_score``,
``p_alive``, ``clv``, ``churn_risk``, ``engagement_state``, ``trg_*``...).
It carries customer ids, never email addresses.

Customers who never bought
--------------------------
RFM and CLV describe buyers. For customers without an order ``is_buyer`` is
False, ``n_orders`` 0, ``clv`` 0.0 and ``expected_purchases`` 0.0, while
``p_alive``, ``r_score``/``f_score``/``m_score`` and ``rfm_segment`` are
missing (NaN / "Prospect"): a segment rule comparing them is False.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bmkt import clv as clv_models
from bmkt import engagement, engine, rfm, triggers
from bmkt.errors import DataError
from bmkt.io import Store, open_store
from bmkt.schema import parse_as_of

log = logging.getLogger(__name__)

__all__ = ["Scores", "score_customers", "PROSPECT"]

#: ``rfm_segment`` of customers without an order.
PROSPECT = "Prospect"


@dataclass
class Scores:
    """What :func:`score_customers` produced.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per customer (index ``customer_id``), every score.
    triggers : pandas.DataFrame
        The long trigger frame (one row per customer and trigger, with context).
    models : dict
        The fitted models by name (``bgnbd``, ``gamma_gamma``, and ``churn``,
        ``purchase`` when trained).
    summary : pandas.DataFrame
        The RFM summary of buyers (period days).
    params : dict
        The parameters of the run.
    """

    table: pd.DataFrame
    triggers: pd.DataFrame
    models: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``scores.parquet``, ``triggers.parquet`` and ``scores.json`` (parameters)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.table.to_parquet(folder / "scores.parquet")
        self.triggers.to_parquet(folder / "triggers.parquet", index=False)
        params = {**self.params, "models": {k: _describe(m) for k, m in self.models.items()}}
        (folder / "scores.json").write_text(json.dumps(params, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Scores:
        """Read what :meth:`save` wrote (models are not stored, only described)."""
        folder = Path(folder)
        path = folder / "scores.parquet"
        if not path.is_file():
            raise DataError(f"{path}: no saved scores (run the segment-lists step first).")
        params = json.loads((folder / "scores.json").read_text())
        return cls(
            table=pd.read_parquet(path),
            triggers=pd.read_parquet(folder / "triggers.parquet"),
            params=params,
        )


def _describe(model: Any) -> dict[str, Any]:
    params = getattr(model, "params_", None)
    out: dict[str, Any] = {"class": type(model).__name__}
    if isinstance(params, pd.Series):
        out["params"] = {k: float(v) for k, v in params.items()}
    metrics = getattr(model, "metrics_", None)
    if isinstance(metrics, Mapping):
        out["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    return out


def _customers(store: Store, end: pd.Timestamp) -> pd.DataFrame:
    c = store.table("customers")
    c = c.filter(c.created_at < end.to_pydatetime())
    frame = c.select("customer_id", "created_at", "timezone", "email_status", "email_consent")
    out = engine.to_pandas(frame).set_index("customer_id").sort_index()
    if out.empty:
        raise DataError(f"customers: no customer signed up before {end} (as_of); nothing to score.")
    return out


def _value_scores(
    summary: pd.DataFrame,
    horizon_months: int,
    discount_rate: float,
    sample_size: int | None,
    random_state: int | None = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """RFM scores and segments, P(alive), expected purchases and CLV of buyers."""
    scores = rfm.segment(rfm.score(summary))
    out = pd.DataFrame(index=summary.index)
    out["r_score"] = scores["R"].astype("Int64")
    out["f_score"] = scores["F"].astype("Int64")
    out["m_score"] = scores["M"].astype("Int64")
    out["rfm_score"] = scores["rfm_score"].astype(str)
    out["rfm_segment"] = scores["segment"].astype(str)
    models: dict[str, Any] = {}
    bg = clv_models.BetaGeo(sample_size=sample_size, random_state=random_state).fit(summary)
    models["bgnbd"] = bg
    out["p_alive"] = bg.p_alive(summary)
    out["expected_purchases_90d"] = bg.predict_purchases(summary, 90)
    repeat = summary[(summary.frequency > 0) & (summary.monetary_value > 0)]
    if len(repeat) >= 10:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clv_models.check_gamma_gamma_assumption(summary)
        for w in caught:
            log.warning("%s", w.message)
        gg = clv_models.GammaGamma(sample_size=sample_size, random_state=random_state).fit(summary)
        models["gamma_gamma"] = gg
        out["expected_spend"] = gg.expected_spend(summary)
        out["clv"] = clv_models.clv(
            bg, gg, summary, horizon=horizon_months, discount_rate=discount_rate, period="D"
        )
    else:
        log.warning("fewer than 10 repeat buyers: no Gamma-Gamma fit, clv is missing")
        out["expected_spend"] = np.nan
        out["clv"] = np.nan
    return out, models


def score_customers(
    store: Any,
    as_of: Any,
    *,
    horizon_months: int = 12,
    discount_rate: float = 0.01,
    churn: bool = True,
    churn_horizon_days: int = 90,
    purchase_horizon_days: int = 30,
    sample_size: int | None = 200_000,
    trigger_config: Mapping[str, Any] | None = None,
    random_state: int | None = 0,
    progress: bool = False,
) -> Scores:
    """Score every customer of a store as of a date.

    Parameters
    ----------
    store : Store or source
        Anything :func:`bmkt.io.open_store` accepts.
    as_of : date-like
        Run date (through the end of that day).
    horizon_months, discount_rate : int, float
        CLV horizon in months and monthly discount rate.
    churn : bool
        Train churn and purchase-propensity models on the store's own past
        (features at ``as_of - horizon``, labels observed by ``as_of``) and
        score everyone at ``as_of``. Skipped with a warning when the history
        is too short. When False (or skipped), ``churn_risk`` and
        ``purchase_propensity`` are NaN for everyone.
    churn_horizon_days, purchase_horizon_days : int
        Label horizons of the two models.
    sample_size : int, optional
        Fit the CLV models on a random sample of this many customers (every
        customer is scored); ``None`` fits on all.
    trigger_config : mapping, optional
        Per-trigger parameters for :func:`bmkt.triggers.detect_triggers`.
    random_state : int, optional
        Seed of the CLV fitting sample and of the churn / propensity models.
    progress : bool
        Show a progress bar over the steps.

    Returns
    -------
    Scores
    """
    from tqdm.auto import tqdm

    store = open_store(store)
    end = parse_as_of(as_of)
    steps = tqdm(total=6, desc="scoring", disable=not progress)
    timings: dict[str, float] = {}
    clock = {"name": "", "t": time.perf_counter()}

    def step(name: str) -> None:
        now = time.perf_counter()
        if clock["name"]:
            timings[clock["name"]] = now - clock["t"]
        clock.update(name=name, t=now)
        steps.set_postfix_str(name)
        log.info("scoring: %s", name)

    step("customers")
    table = _customers(store, end)
    steps.update()

    step("rfm + clv")
    summary = rfm.summarize(store.table("orders"), as_of, period="D")
    value, models = _value_scores(summary, horizon_months, discount_rate, sample_size, random_state)
    table["is_buyer"] = table.index.isin(summary.index)
    table["n_orders"] = summary["n_orders"].reindex(table.index).fillna(0).astype("int64")
    table["total_revenue"] = summary["total_revenue"].reindex(table.index).fillna(0.0)
    table["frequency"] = summary["frequency"].reindex(table.index)
    table["recency_days"] = ((end - summary["last_order_at"]).dt.total_seconds() / 86400).reindex(
        table.index
    )
    table["tenure_days"] = (end - table["created_at"]).dt.total_seconds() / 86400
    table = table.join(value)
    table["rfm_segment"] = table["rfm_segment"].fillna(PROSPECT)
    table["rfm_score"] = table["rfm_score"].fillna("")
    for col in ("clv", "expected_purchases_90d"):
        table.loc[~table["is_buyer"], col] = 0.0
    steps.update()

    step("engagement")
    # the opens are labelled (machine or human) once for engagement, send times and features
    with engagement.shared_machine_opens(store, as_of) as store:
        table = _behavior_steps(
            store, as_of, table, step, steps, churn, churn_horizon_days,
            purchase_horizon_days, random_state, models,
        )  # fmt: skip

    step("triggers")
    trig = triggers.detect_triggers(
        store,
        as_of,
        scores=table[[c for c in ("p_alive", "churn_risk") if c in table]],
        config=trigger_config,
    )
    flags = triggers.wide_flags(trig, table.index)
    table = table.join(flags)
    steps.update()
    step("")
    steps.close()
    table.index.name = "customer_id"
    params = {
        "as_of": str(as_of),
        "horizon_months": horizon_months,
        "discount_rate": discount_rate,
        "churn": churn,
        "churn_horizon_days": churn_horizon_days,
        "purchase_horizon_days": purchase_horizon_days,
        "sample_size": sample_size,
        "random_state": random_state,
    }
    return Scores(
        table=table, triggers=trig, models=models, summary=summary, params=params, timings=timings
    )


def _behavior_steps(
    store: Store,
    as_of: Any,
    table: pd.DataFrame,
    step: Any,
    steps: Any,
    churn: bool,
    churn_horizon_days: int,
    purchase_horizon_days: int,
    random_state: int | None,
    models: dict[str, Any],
) -> pd.DataFrame:
    """The engagement and churn + propensity steps of :func:`score_customers`."""
    eng = engagement.engagement_scores(store, as_of)
    table["engagement_state"] = eng["state"].reindex(table.index).fillna("never_engaged")
    table["engagement_score"] = eng["engagement_score"].reindex(table.index).fillna(0.0)
    table["opens_never_clicks"] = eng["opens_never_clicks"].reindex(table.index).fillna(False)
    table["is_proxy_user"] = eng["is_proxy_user"].reindex(table.index).fillna(False)
    table["human_open_rate"] = eng["human_open_rate"].reindex(table.index).fillna(0.0)
    send = engagement.preferred_send_time(store, as_of)
    table["preferred_hour"] = send["preferred_hour"].reindex(table.index)
    table["preferred_weekday"] = send["preferred_weekday"].reindex(table.index)
    table["send_time_source"] = send["source"].reindex(table.index)
    # the zone the hour is in: customers.timezone, or inferred from the country
    table["send_timezone"] = send["timezone"].reindex(table.index)
    cat = engagement.category_affinity(store, as_of, top_n=1)
    table["top_category"] = cat["category_1"].reindex(table.index) if "category_1" in cat else None
    disc = engagement.discount_affinity(store, as_of)
    table["discount_share"] = disc["discount_share"].reindex(table.index)
    steps.update()

    step("churn + propensity")
    if churn:
        table, fitted = _behavior_scores(
            store, as_of, table, churn_horizon_days, purchase_horizon_days, random_state
        )
        models.update(fitted)
    else:  # not scored: the columns exist (NaN) so rules reading them stay valid
        table["churn_risk"] = np.nan
        table["purchase_propensity"] = np.nan
    steps.update()

    return table


def _behavior_scores(
    store: Store,
    as_of: Any,
    table: pd.DataFrame,
    churn_horizon_days: int,
    purchase_horizon_days: int,
    random_state: int | None = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train churn and purchase models on the past and score everyone at as_of.

    The features of every cutoff (each model's training cutoff, and as_of for
    scoring with both) are built once, in one engine query, and shared.
    """
    from bmkt.errors import BmktError

    fitted: dict[str, Any] = {}
    try:
        from bmkt.churn import ChurnModel
        from bmkt.features import cutoff_end
        from bmkt.propensity import PurchasePropensity
    except ImportError:  # pragma: no cover - modules ship with the package
        log.warning("churn models unavailable; churn_risk not scored")
        return table, fitted
    end = parse_as_of(as_of)
    jobs = []
    for name, model, column in (
        (
            "churn",
            ChurnModel(horizon_days=churn_horizon_days, random_state=random_state),
            "churn_risk",
        ),
        (
            "purchase",
            PurchasePropensity(horizon_days=purchase_horizon_days, random_state=random_state),
            "purchase_propensity",
        ),
    ):
        cutoff = (end - pd.Timedelta(days=model.horizon_days) - pd.Timedelta(days=1)).date()
        jobs.append((name, model, column, cutoff))
    chunked = len(table) > SCORING_CHUNK
    try:
        shared = _shared_features(
            store,
            table,
            [cutoff_end(cutoff) for *_, cutoff in jobs],
            end,
            random_state,
            score_everyone=not chunked,
        )
    except BmktError as exc:  # e.g. no history before a training cutoff: each model says why
        log.info("shared feature build skipped (%s); each model builds its own", exc)
        shared = {}
    scoring = []
    for name, model, column, cutoff in jobs:
        try:
            model.fit(store, cutoff, features=shared.get(cutoff_end(cutoff)))
            if not chunked:
                scored = model.score(store, as_of, features=shared.get(end))
        except BmktError as exc:
            log.warning("%s model not trained (%s); %s left missing", name, exc, column)
            table[column] = np.nan
            continue
        fitted[name] = model
        if chunked:
            scoring.append((model, column))
            continue
        if "customer_id" in scored.columns:
            scored = scored.set_index("customer_id")
        table[column] = scored[column].reindex(table.index)
    if scoring:
        for column, values in _score_in_chunks(store, as_of, table, end, scoring).items():
            table[column] = values
    return table, fitted


#: Above this many customers, everyone is scored at as_of in chunks of this
#: many (consecutive customer ids): one feature query per chunk, so the
#: per-customer features of a chunk are all that is held in memory at once.
SCORING_CHUNK = 2_000_000


def _score_in_chunks(
    store: Store,
    as_of: Any,
    table: pd.DataFrame,
    end: pd.Timestamp,
    models: list[tuple[Any, str]],
) -> dict[str, np.ndarray]:
    """Score every customer of ``table`` with each fitted model, chunk by chunk.

    As in the one-query path, what cannot be scored is left missing with a
    message (a chunk without buyers has no churn scores: INFO; a model that
    scores no chunk at all: WARNING).
    """
    from bmkt.errors import BmktError
    from bmkt.features import build_features_at

    ids = np.sort(table.index.to_numpy())
    out = {column: np.full(len(table), np.nan) for _, column in models}
    scored_chunks = dict.fromkeys(out, 0)
    n_chunks = -(-len(ids) // SCORING_CHUNK)
    for k, start in enumerate(range(0, len(ids), SCORING_CHUNK), start=1):
        chunk = ids[start : start + SCORING_CHUNK]
        try:
            X = build_features_at(store, pd.DataFrame({"customer_id": chunk, "cutoff": end}))
        except BmktError as exc:
            log.warning("chunk %d of %d: features not built (%s); left missing", k, n_chunks, exc)
            continue
        X = X.drop(columns="cutoff").set_index("customer_id")
        X.attrs["cutoff"] = end.isoformat()
        for model, column in models:
            try:
                scored = model.score(store, as_of, features=X)
            except BmktError as exc:  # e.g. no buyer among these customers
                log.info("chunk %d of %d: %s not scored (%s)", k, n_chunks, column, exc)
                continue
            where = table.index.get_indexer(scored["customer_id"].to_numpy())
            known = where >= 0
            out[column][where[known]] = scored[column].to_numpy(dtype="float64")[known]
            scored_chunks[column] += 1
        log.info("scored chunk %d of %d (%s customers)", k, n_chunks, f"{len(chunk):,}")
        del X
    for column, n in scored_chunks.items():
        if n == 0:
            log.warning("%s: no chunk of customers could be scored; left missing", column)
    return out


#: Customers whose features are built at a training cutoff (a uniform random
#: sample when there are more): the models train on at most their
#: ``sample_size`` (200,000) rows anyway, and everyone is still scored.
TRAINING_CUSTOMERS = 200_000


def _shared_features(
    store: Store,
    table: pd.DataFrame,
    train_ends: list[pd.Timestamp],
    end: pd.Timestamp,
    random_state: int | None,
    *,
    score_everyone: bool = True,
) -> dict[pd.Timestamp, pd.DataFrame]:
    """Features of a sample at each training cutoff and of everyone at ``end``, in one query.

    Without ``score_everyone`` only the training cutoffs are built (everyone
    is then scored in chunks, :func:`_score_in_chunks`).
    """
    from bmkt.features import _features_at, build_features_before_many

    if len(table) <= TRAINING_CUSTOMERS:
        return build_features_before_many(
            store, [*train_ends, end] if score_everyone else train_ends
        )
    rng = np.random.default_rng(random_state)
    created = table["created_at"]
    points = []
    for train_end in sorted(set(train_ends)):
        known = table.index[(created < train_end).to_numpy()].to_numpy()
        if len(known) > TRAINING_CUSTOMERS:
            known = np.sort(rng.choice(known, TRAINING_CUSTOMERS, replace=False))
        points.append(pd.DataFrame({"customer_id": known, "cutoff": train_end}))
    if score_everyone:
        points.append(pd.DataFrame({"customer_id": table.index.to_numpy(), "cutoff": end}))
    frames = _features_at(store, pd.concat(points, ignore_index=True), split=True)
    log.info(
        "features for training on %s customers at %d cutoff(s)%s",
        f"{TRAINING_CUSTOMERS:,}", len(train_ends), f", and for everyone at {end}" * score_everyone,
    )  # fmt: skip
    return frames
