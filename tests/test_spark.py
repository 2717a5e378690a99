"""The feature code on Apache Spark (Ibis's PySpark backend) gives DuckDB's results.

One local Spark session (``local[2]``) for the module. The same simulated
store is opened on DuckDB and on Spark; every per-customer feature table
must be equal: counts, flags, text and timestamps exactly, floats to a
relative 1e-9 (sums may add up in another order). Then scoring as a
distributed map (``mapInPandas``) must equal local scoring.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import ibis
import pandas as pd
import pytest

from bmkt import clv, engagement, engine, features, rfm, triggers
from bmkt.errors import ConfigError, DataError, NotFittedError
from bmkt.io import Store, open_store
from bmkt.simulate import simulate_store

pytestmark = pytest.mark.spark

_MISSING = [
    what
    for what, ok in (
        ("pyspark (pip install -e '.[spark]')", importlib.util.find_spec("pyspark") is not None),
        (
            "Java 17+ (java on PATH or JAVA_HOME)",
            bool(shutil.which("java") or os.environ.get("JAVA_HOME")),
        ),
    )
    if not ok
]
if _MISSING:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the Spark tests, but this machine lacks {_MISSING}.")
    pytest.skip(f"Spark tests need {' and '.join(_MISSING)}", allow_module_level=True)

AS_OF = "2024-06-30"

#: A short-lived session on tiny data spends its time warming up, not computing
#: (measured: the first run of each query took 3-5x its second). So: no code
#: generation (compiling it dominated; the internal factory mode switches it
#: off for expressions too), no adaptive execution (a job per stage), and a JVM
#: that compiles fast rather than well. Halves the module's run time.
_QUICK_LOCAL = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.sql.adaptive.enabled": "false",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="module")
def spark():
    con = engine.connect_spark("local[2]", **_QUICK_LOCAL)
    yield con
    con.disconnect()


@pytest.fixture(scope="module")
def sim() -> dict[str, pd.DataFrame]:
    return simulate_store(n_customers=500, days=200, seed=11)


@pytest.fixture(scope="module")
def duck(sim: dict[str, pd.DataFrame]) -> Store:
    return open_store(sim)


@pytest.fixture(scope="module")
def on_spark(sim: dict[str, pd.DataFrame], spark) -> Store:
    return open_store(sim, con=spark)


def assert_same(spark_result: pd.DataFrame, duck_result: pd.DataFrame) -> None:
    """Equal frames: floats to rtol 1e-9, everything else (counts, text, times) exactly."""
    assert spark_result.index.equals(duck_result.index)
    floats = [c for c in duck_result.columns if pd.api.types.is_float_dtype(duck_result[c])]
    pd.testing.assert_frame_equal(
        spark_result.drop(columns=floats), duck_result.drop(columns=floats), check_exact=True
    )
    pd.testing.assert_frame_equal(
        spark_result[floats], duck_result[floats], check_exact=False, rtol=1e-9, atol=1e-12
    )


def test_store_on_spark_runs_on_spark(on_spark: Store, duck: Store) -> None:
    assert on_spark.con.name == "pyspark" and duck.con.name == "duckdb"
    assert on_spark.row_counts() == duck.row_counts()
    for name in duck.names:  # the same contract types (timestamp precision aside)
        kinds = {c: type(t) for c, t in on_spark.table(name).schema().items()}
        assert kinds == {c: type(t) for c, t in duck.table(name).schema().items()}, name


def test_rfm_summary(on_spark: Store, duck: Store) -> None:
    got = rfm.summarize(on_spark.table("orders"), AS_OF)
    want = rfm.summarize(duck.table("orders"), AS_OF)
    assert len(want) > 100
    assert_same(got, want)
    assert got.attrs == want.attrs


def test_engagement_scores(on_spark: Store, duck: Store) -> None:
    want = engagement.engagement_scores(duck, AS_OF)
    assert want["is_proxy_user"].any() and want["n_clicks"].sum() > 0
    assert_same(engagement.engagement_scores(on_spark, AS_OF), want)


def test_machine_opens(on_spark: Store, duck: Store) -> None:
    keys = ["customer_id", "campaign_id", "occurred_at", "rule"]

    def opens(store: Store) -> pd.DataFrame:
        df = engagement.flag_machine_opens(store, AS_OF, as_frame=True)
        # the raw Ibis result: DuckDB hands timestamps over in us, Spark in ns
        df = df.astype({c: "datetime64[ns]" for c in ("occurred_at", "delivered_at")})
        return df.sort_values(keys).reset_index(drop=True)

    want = opens(duck)
    assert set(want["rule"]) >= {"none", "timing"}
    assert_same(opens(on_spark), want)
    assert_same(
        engagement.machine_open_customers(on_spark, AS_OF),
        engagement.machine_open_customers(duck, AS_OF),
    )


def test_preferred_send_time(on_spark: Store, duck: Store) -> None:
    want = engagement.preferred_send_time(duck, AS_OF)
    assert (want["source"] == "history").sum() > 50 and want["timezone"].nunique() > 3
    assert_same(engagement.preferred_send_time(on_spark, AS_OF), want)


def test_affinities(on_spark: Store, duck: Store) -> None:
    assert_same(
        engagement.category_affinity(on_spark, AS_OF), engagement.category_affinity(duck, AS_OF)
    )
    assert_same(
        engagement.discount_affinity(on_spark, AS_OF), engagement.discount_affinity(duck, AS_OF)
    )


def test_triggers(on_spark: Store, duck: Store) -> None:
    want = triggers.detect_triggers(duck, AS_OF)
    assert want["trigger"].nunique() >= 4
    assert_same(triggers.detect_triggers(on_spark, AS_OF), want)


def test_build_features(on_spark: Store, duck: Store, sim: dict[str, pd.DataFrame]) -> None:
    want = features.build_features(duck, AS_OF)
    assert_same(features.build_features(on_spark, AS_OF), want)
    # many cutoffs in one query: each campaign's audience at its send time (uplift)
    ev, camps = sim["email_events"], sim["campaigns"]
    points = ev.loc[ev["event_type"] == "sent", ["customer_id", "campaign_id"]].merge(
        camps[["campaign_id", "sent_at"]].tail(8), on="campaign_id"
    )
    points = points.rename(columns={"sent_at": "cutoff"})[["customer_id", "cutoff"]]
    want = features.build_features_at(duck, points)
    assert len(want) > 100 and want["cutoff"].nunique() == 8
    assert_same(features.build_features_at(on_spark, points), want)


def test_parquet_folder_with_a_partitioned_table(
    sim: dict[str, pd.DataFrame], spark, tmp_path: Path
) -> None:
    # Spark reads Parquet timestamps in micro- or milliseconds, not pandas' nanoseconds
    us = {"coerce_timestamps": "us", "allow_truncated_timestamps": True, "index": False}
    folder = tmp_path / "store"
    folder.mkdir()
    for name, frame in sim.items():
        if name not in ("truth", "orders"):
            frame.to_parquet(folder / f"{name}.parquet", **us)
    orders = sim["orders"]
    for month, part in orders.groupby(orders.ordered_at.dt.month):
        (folder / "orders" / f"month={month}").mkdir(parents=True)
        part.to_parquet(folder / "orders" / f"month={month}" / "part.parquet", **us)
    from_files = open_store(folder, con=spark)
    duck_files = open_store(folder)
    assert from_files.con is spark and from_files.names == duck_files.names
    assert from_files.row_counts() == duck_files.row_counts()
    from_con = open_store(spark)  # the same tables, found on the connection by name
    assert from_con.con is spark and from_con.names == from_files.names
    assert_same(
        rfm.summarize(from_files.table("orders"), AS_OF),
        rfm.summarize(duck_files.table("orders"), AS_OF),
    )
    assert_same(
        engagement.discount_affinity(from_files, AS_OF),
        engagement.discount_affinity(duck_files, AS_OF),
    )


def test_wall_time_and_epoch_agree_with_zoneinfo(spark, duck: Store) -> None:
    # DST switches (Berlin, New York, Lord Howe's half hour), fixed :30 and :45
    # offsets, microseconds
    cases = pd.DataFrame(
        {
            "ts": pd.to_datetime(
                [
                    "2024-03-31 00:59:59.999999",
                    "2024-03-31 01:00:00",
                    "2024-11-03 05:59:59",
                    "2024-11-03 06:00:00.000001",
                    "2024-04-06 14:59:59",
                    "2024-04-06 15:00:00",
                    "2024-01-01 00:00:00.123456",
                    "1969-12-31 23:59:59.5",
                ],
                format="ISO8601",
            ),
            "zone": [
                "Europe/Berlin",
                "Europe/Berlin",
                "America/New_York",
                "America/New_York",
                "Australia/Lord_Howe",
                "Australia/Lord_Howe",
                "Asia/Kathmandu",
                "Asia/Kolkata",
            ],
        }
    ).reset_index()
    want_wall = [
        ts.tz_localize("UTC").tz_convert(z).tz_localize(None)
        for ts, z in zip(cases["ts"], cases["zone"], strict=True)
    ]
    want_us = (cases["ts"] - pd.Timestamp("1970-01-01")) // pd.Timedelta(microseconds=1)
    for con in (spark, duck.con):
        t = engine.as_table(cases, con=con, name="_wall_time_cases")
        out = t.select(
            "index",
            wall=engine.wall_time(t.ts, t.zone, con.name),
            us=engine.epoch_us(t.ts),
        ).to_pandas()
        out = out.sort_values("index").reset_index(drop=True)
        assert out["wall"].astype("datetime64[ns]").tolist() == want_wall, con.name
        assert out["us"].tolist() == want_us.tolist(), con.name


def test_wall_time_names_the_supported_backends() -> None:
    t = ibis.table({"ts": "timestamp", "zone": "string"}, name="t")
    with pytest.raises(ConfigError, match=r"'sqlite' backend is not supported: valid backends"):
        engine.wall_time(t.ts, t.zone, "sqlite")


# --------------------------------------------------------------------------- distributed scoring


def test_score_spark_equals_local_scoring(spark, duck: Store) -> None:
    summary = rfm.summarize(duck.table("orders"), AS_OF)
    model = clv.BetaGeo().fit(summary)
    cols = ["customer_id", "frequency", "recency", "T"]
    frame = engine.to_spark(ibis.memtable(summary.reset_index()[cols]), spark).repartition(3)
    assert frame.rdd.getNumPartitions() == 3  # a map over three partitions
    scored = clv.score_spark(model, frame, horizon=30)
    assert scored.columns == ["customer_id", "p_alive", "predicted_purchases"]
    got = scored.toPandas().set_index("customer_id").sort_index()
    want = pd.DataFrame(
        {
            "p_alive": model.p_alive(summary),
            "predicted_purchases": model.predict_purchases(summary, 30),
        }
    )
    assert_same(got, want)


def test_score_spark_checks_its_inputs(spark) -> None:
    frame = spark.raw_sql("SELECT 1 AS customer_id, 0.0 AS frequency, 0.0 AS recency")
    summary = pd.DataFrame(
        {"frequency": [0, 1, 2], "recency": [0.0, 5.0, 9.0], "T": [10.0, 20.0, 30.0]}
    )
    with pytest.raises(NotFittedError):
        clv.score_spark(clv.BetaGeo(), frame)
    with pytest.raises(ConfigError, match="'model' must be a BetaGeo"):
        clv.score_spark(clv.GammaGamma(), frame)
    model = clv.BetaGeo().fit(summary)
    with pytest.raises(DataError, match=r"summary\.T: score_spark needs the column\(s\) \['T'\]"):
        clv.score_spark(model, frame)
    with pytest.raises(ConfigError, match="'horizon' must be a number of periods"):
        clv.score_spark(model, frame, horizon=-1)
