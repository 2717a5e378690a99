"""Arm comparisons against textbook formulas, published outputs and simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bmkt.errors import ConfigError, DataError
from bmkt.experiments import (
    RESULT_COLUMNS,
    compare_arms,
    fieller_ratio_ci,
    holm,
    minimum_detectable_effect,
    proportion_test,
    sample_size,
    welch_test,
)

# --------------------------------------------------------------------------- z-test


def test_two_proportion_z_by_hand() -> None:
    # 150/1000 treated vs 120/1000 control
    p1, p0, n = 0.15, 0.12, 1000
    pooled = (150 + 120) / 2000
    z = (p1 - p0) / math.sqrt(pooled * (1 - pooled) * (2 / n))
    se_unpooled = math.sqrt(p1 * (1 - p1) / n + p0 * (1 - p0) / n)
    r = proportion_test(150, 1000, 120, 1000)
    assert float(r["statistic"]) == pytest.approx(z, rel=1e-12)
    assert float(r["statistic"]) == pytest.approx(1.96304, abs=1e-5)
    assert float(r["p_value"]) == pytest.approx(2 * stats.norm.sf(z), rel=1e-12)
    assert float(r["p_value"]) == pytest.approx(0.04964, abs=1e-5)
    # the CI uses the unpooled standard error
    assert float(r["diff_ci_low"]) == pytest.approx(0.03 - 1.959964 * se_unpooled, abs=1e-6)
    assert float(r["diff_ci_high"]) == pytest.approx(0.03 + 1.959964 * se_unpooled, abs=1e-6)
    assert float(r["lift"]) == pytest.approx(0.25)


def test_pooled_z_squared_is_pearson_chi_square() -> None:
    # z**2 of the pooled test equals Pearson's X**2 of the 2x2 table (no Yates)
    for x1, n1, x0, n0 in [(150, 1000, 120, 1000), (37, 250, 58, 310), (5, 40, 1, 45)]:
        chi2, p, *_ = stats.chi2_contingency([[x1, n1 - x1], [x0, n0 - x0]], correction=False)
        r = proportion_test(x1, n1, x0, n0)
        assert float(r["statistic"]) ** 2 == pytest.approx(chi2, rel=1e-10)
        assert float(r["p_value"]) == pytest.approx(p, rel=1e-10)


def test_two_proportion_published_worked_example() -> None:
    # Worked example (homeworksource.com/p/1008622): 140/200 vs 255/340,
    # pooled p = 0.7314815, SE = 0.03949401, z = -1.266015 (its p-value uses a t
    # reference with 538 df, so only z is compared).
    r = proportion_test(140, 200, 255, 340)
    assert float(r["statistic"]) == pytest.approx(-1.266015, abs=1e-6)
    assert float(r["diff"]) / float(r["statistic"]) == pytest.approx(0.03949401, abs=1e-8)


def test_proportion_degenerate_and_vectorised() -> None:
    r = proportion_test([0, 10, 3], [50, 50, 0], [0, 0, 1], [50, 50, 10])
    assert r["statistic"][0] == 0.0 and r["p_value"][0] == 1.0  # nobody converted anywhere
    assert np.isnan(r["lift"][1])  # control rate 0: lift undefined
    assert np.isnan(r["p_value"][2])  # empty arm


# --------------------------------------------------------------------------- Welch


def test_welch_matches_published_r_output() -> None:
    # R: t.test(ts1, ts2) -> t = -1.8325, df = 17.9, p-value = 0.08356,
    # 95 percent confidence interval: -2.1469104 0.1469104
    ts1 = np.array([11, 9, 10, 11, 10, 12, 9, 11, 12, 9], dtype=float)
    ts2 = np.array([11, 13, 10, 13, 12, 9, 11, 12, 12, 11], dtype=float)
    r = welch_test(ts1.mean(), ts1.var(ddof=1), 10, ts2.mean(), ts2.var(ddof=1), 10)
    assert float(r["statistic"]) == pytest.approx(-1.8325, abs=5e-5)
    assert float(r["df"]) == pytest.approx(17.9, abs=0.05)
    assert float(r["p_value"]) == pytest.approx(0.08356, abs=5e-6)
    assert float(r["diff_ci_low"]) == pytest.approx(-2.1469104, abs=1e-6)
    assert float(r["diff_ci_high"]) == pytest.approx(0.1469104, abs=1e-6)


def test_welch_by_hand() -> None:
    # mean 10, var 4, n 20 vs mean 8, var 9, n 30:
    # v1 = 0.2, v0 = 0.3, t = 2 / sqrt(0.5), df = 0.25 / (0.04/19 + 0.09/29)
    r = welch_test(10.0, 4.0, 20, 8.0, 9.0, 30)
    assert float(r["statistic"]) == pytest.approx(2 / math.sqrt(0.5), rel=1e-12)
    assert float(r["df"]) == pytest.approx(0.25 / (0.04 / 19 + 0.09 / 29), rel=1e-12)


def test_welch_matches_scipy_on_random_samples() -> None:
    rng = np.random.default_rng(3)
    for n1, n0 in [(12, 40), (200, 150), (5, 5)]:
        a = rng.lognormal(3, 1, n1)
        b = rng.lognormal(2.8, 0.5, n0)
        ref = stats.ttest_ind(a, b, equal_var=False)
        ci = ref.confidence_interval(0.9)
        r = welch_test(a.mean(), a.var(ddof=1), n1, b.mean(), b.var(ddof=1), n0, alpha=0.1)
        assert float(r["statistic"]) == pytest.approx(ref.statistic, rel=1e-10)
        assert float(r["p_value"]) == pytest.approx(ref.pvalue, rel=1e-10)
        assert float(r["df"]) == pytest.approx(ref.df, rel=1e-10)
        assert float(r["diff_ci_low"]) == pytest.approx(ci.low, rel=1e-10)
        assert float(r["diff_ci_high"]) == pytest.approx(ci.high, rel=1e-10)


def test_fieller_by_hand_and_unbounded() -> None:
    # m1 = 12, m0 = 10, v1 = v0 = 1, c = 2: roots of (100-4) r^2 - 240 r + (144-4) = 0
    lo, hi = fieller_ratio_ci(12.0, 1.0, 10.0, 1.0, 2.0)
    a, b, c = 96.0, -240.0, 140.0
    disc = math.sqrt(b * b - 4 * a * c)
    assert float(lo) == pytest.approx((-b - disc) / (2 * a))
    assert float(hi) == pytest.approx((-b + disc) / (2 * a))
    lo, hi = fieller_ratio_ci(1.0, 1.0, 1.0, 1.0, 1.96)  # control mean ~ 0
    assert np.isnan(lo) and np.isnan(hi)


# --------------------------------------------------------------------------- Holm


def test_holm_hand_worked_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan() -> None:
    out = holm([0.5, np.nan, 0.4])
    np.testing.assert_allclose(out, [0.8, np.nan, 0.8])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    np.testing.assert_allclose(holm([0.02, 0.9]), [0.04, 0.9])
    assert holm([]).size == 0


@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_properties(ps: list[float]) -> None:
    adj = holm(ps)
    p = np.asarray(ps)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
    assert np.all(adj <= np.minimum(1, len(p) * p) + 1e-15)  # never worse than Bonferroni
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in p


# --------------------------------------------------------------------------- compare_arms


def ab_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arm": ["control"] * 1000 + ["B"] * 1000 + ["C"] * 1000,
            "converted": [1] * 120 + [0] * 880 + [1] * 150 + [0] * 850 + [1] * 130 + [0] * 870,
            "clicked": np.tile([True, False, False, False], 750),
            "spend": np.r_[np.arange(1000) % 7, np.arange(1000) % 9, np.arange(1000) % 5] * 1.5,
        }
    )


def test_compare_arms_columns_and_values() -> None:
    frame = ab_frame()
    before = frame.copy()
    res = compare_arms(frame, "arm", "control", ["converted", "clicked", "spend"])
    pd.testing.assert_frame_equal(frame, before)  # input not mutated
    assert tuple(res.columns) == RESULT_COLUMNS
    assert len(res) == 6
    assert res["arm"].tolist() == ["B", "C"] * 3
    conv_b = res.query("metric == 'converted' and arm == 'B'").iloc[0]
    assert conv_b["kind"] == "proportion" and conv_b["test"] == "two-proportion z"
    assert conv_b["n"] == 1000 and conv_b["n_control"] == 1000
    assert conv_b["mean"] == pytest.approx(0.15) and conv_b["mean_control"] == pytest.approx(0.12)
    assert conv_b["statistic"] == pytest.approx(1.96304, abs=1e-5)
    assert np.isnan(conv_b["df"])
    assert res.query("metric == 'clicked'")["kind"].eq("proportion").all()  # bools detected
    spend_c = res.query("metric == 'spend' and arm == 'C'").iloc[0]
    a = frame.loc[frame.arm == "C", "spend"]
    b = frame.loc[frame.arm == "control", "spend"]
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert spend_c["test"] == "Welch t"
    assert spend_c["statistic"] == pytest.approx(ref.statistic)
    assert spend_c["df"] == pytest.approx(ref.df)
    np.testing.assert_allclose(res["p_adjusted"], holm(res["p_value"]))
    assert (res["significant"] == (res["p_adjusted"] < 0.05)).all()
    # p = 0.0496 alone, but not after adjusting for six comparisons
    assert conv_b["p_value"] < 0.05 and not conv_b["significant"]


def test_compare_arms_binary_override() -> None:
    res = compare_arms(ab_frame(), "arm", "control", ["converted"], binary=[])
    assert res["test"].eq("Welch t").all()
    frame = ab_frame()
    with pytest.raises(DataError, match=r"frame\.spend: listed in 'binary' but 2\d\d\d rows"):
        compare_arms(frame, "arm", "control", ["spend"], binary=["spend"])
    with pytest.raises(ConfigError, match=r"Valid options for 'binary' are the metrics"):
        compare_arms(frame, "arm", "control", ["spend"], binary=["nope"])


def test_compare_arms_errors() -> None:
    frame = ab_frame()
    with pytest.raises(
        ConfigError, match=r"Valid options for 'control' are \['B', 'C', 'control'\]. Got 'A'."
    ):
        compare_arms(frame, "arm", "A", "converted")
    with pytest.raises(DataError, match=r"frame: missing column\(s\) 'revenue'"):
        compare_arms(frame, "arm", "control", ["converted", "revenue"])
    with pytest.raises(DataError, match=r"missing column\(s\) 'group'"):
        compare_arms(frame, "group", "control", "converted")
    extra = pd.DataFrame({"arm": ["D"], "converted": [1], "clicked": [True], "spend": [1.0]})
    tiny = pd.concat([frame, extra], ignore_index=True)
    with pytest.raises(DataError, match=r"arm\(s\) \['D'\] have fewer than 2 customers \('D': 1\)"):
        compare_arms(tiny, "arm", "control", "converted")
    text = frame.assign(spend=frame["spend"].astype(str).where(frame.index > 0, "n/a"))
    with pytest.raises(
        DataError, match=r"frame\.spend: outcome is not numeric .* e\.g\. \['n/a'\]"
    ):
        compare_arms(text, "arm", "control", "spend")
    nulls = frame.assign(spend=frame["spend"].where(frame.index > 2))
    with pytest.raises(DataError, match=r"frame\.spend: 3 rows with a null outcome"):
        compare_arms(nulls, "arm", "control", "spend")
    with pytest.raises(DataError, match=r"frame\.arm: 1 row without an arm"):
        compare_arms(frame.assign(arm=frame["arm"].where(frame.index > 0)), "arm", "B", "spend")
    with pytest.raises(DataError, match=r"only the control arm 'B' is present"):
        compare_arms(frame[frame.arm == "B"], "arm", "B", "spend")
    with pytest.raises(ConfigError, match=r"metrics: give at least one"):
        compare_arms(frame, "arm", "control", [])
    with pytest.raises(ConfigError, match=r"alpha must be a number strictly between 0 and 1"):
        compare_arms(frame, "arm", "control", "spend", alpha=5)


# --------------------------------------------------------------------------- coverage


def test_ci_coverage_proportions_and_ab_false_positives() -> None:
    rng = np.random.default_rng(11)
    draws, n1, n0, p1, p0 = 4000, 1500, 1500, 0.13, 0.10
    x1, x0 = rng.binomial(n1, p1, draws), rng.binomial(n0, p0, draws)
    r = proportion_test(x1, n1, x0, n0)
    covered = (r["diff_ci_low"] <= p1 - p0) & (p1 - p0 <= r["diff_ci_high"])
    assert covered.mean() == pytest.approx(0.95, abs=0.015)
    lift = p1 / p0 - 1
    covered = (r["lift_ci_low"] <= lift) & (lift <= r["lift_ci_high"])
    assert covered.mean() == pytest.approx(0.95, abs=0.015)
    # A/A: the pooled test rejects about alpha of the time
    a, b = rng.binomial(n1, p0, draws), rng.binomial(n0, p0, draws)
    assert (proportion_test(a, n1, b, n0)["p_value"] < 0.05).mean() == pytest.approx(
        0.05, abs=0.012
    )


def test_agresti_caffo_keeps_coverage_for_a_small_holdout() -> None:
    # 300 treated at 5 %, 30 held out at 3 %: the holdout often has no conversion
    rng = np.random.default_rng(2)
    draws, n1, n0, p1, p0 = 4000, 300, 30, 0.05, 0.03
    x1, x0 = rng.binomial(n1, p1, draws), rng.binomial(n0, p0, draws)

    def coverage(ci: str) -> float:
        r = proportion_test(x1, n1, x0, n0, ci=ci)
        return float(((r["diff_ci_low"] <= p1 - p0) & (p1 - p0 <= r["diff_ci_high"])).mean())

    assert coverage("wald") < 0.8  # the Wald interval collapses when x0 == 0
    assert coverage("agresti-caffo") >= 0.95
    # by hand: one success and one failure added to each arm
    r = proportion_test(15, 300, 0, 30, ci="agresti-caffo")
    a1, a0 = 16 / 302, 1 / 32
    se = math.sqrt(a1 * (1 - a1) / 302 + a0 * (1 - a0) / 32)
    assert float(r["diff"]) == pytest.approx(0.05)
    assert float(r["diff_ci_low"]) == pytest.approx(a1 - a0 - stats.norm.ppf(0.975) * se)
    with pytest.raises(
        ConfigError, match=r"Valid options for 'ci' are \('wald', 'agresti-caffo'\)"
    ):
        proportion_test(1, 2, 1, 2, ci="exact")


def test_ci_coverage_welch_on_skewed_spend() -> None:
    rng = np.random.default_rng(5)
    draws, n1, n0 = 2000, 400, 300
    # zero-inflated lognormal spend; true means known in closed form
    mu1, mu0 = 0.3 * math.exp(3.2 + 0.5), 0.25 * math.exp(3.0 + 0.5)
    a = rng.lognormal(3.2, 1.0, (draws, n1)) * (rng.random((draws, n1)) < 0.3)
    b = rng.lognormal(3.0, 1.0, (draws, n0)) * (rng.random((draws, n0)) < 0.25)
    r = welch_test(a.mean(1), a.var(1, ddof=1), n1, b.mean(1), b.var(1, ddof=1), n0, alpha=0.05)
    covered = (r["diff_ci_low"] <= mu1 - mu0) & (mu1 - mu0 <= r["diff_ci_high"])
    assert covered.mean() == pytest.approx(0.95, abs=0.02)
    lift = mu1 / mu0 - 1
    covered = (r["lift_ci_low"] <= lift) & (lift <= r["lift_ci_high"])
    assert covered.mean() == pytest.approx(0.95, abs=0.02)


# --------------------------------------------------------------------------- planning


def test_sample_size_classic_formula() -> None:
    # Fleiss (pooled variance under H0, unpooled under H1), 10% -> 12%:
    # (1.959964 sqrt(2 * .11 * .89) + 0.841621 sqrt(.1*.9 + .12*.88))^2 / .02^2 = 3840.8
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    by_hand = (z_a * math.sqrt(2 * 0.11 * 0.89) + z_b * math.sqrt(0.09 + 0.1056)) ** 2 / 0.0004
    assert by_hand == pytest.approx(3840.85, abs=0.01)
    assert sample_size(0.10, 0.02) == 3841
    assert sample_size(0.10, 0.2, relative=True) == 3841
    assert sample_size(0.10, -0.02) == math.ceil(
        (z_a * math.sqrt(2 * 0.09 * 0.91) + z_b * math.sqrt(0.09 + 0.08 * 0.92)) ** 2 / 0.0004
    )
    # one-sided needs fewer, higher power needs more
    assert sample_size(0.10, 0.02, two_sided=False) < 3841 < sample_size(0.10, 0.02, power=0.9)


def test_sample_size_reaches_the_power() -> None:
    # analytic power of the pooled z-test at the planned sizes
    for p0, d, k in [(0.1, 0.02, 1.0), (0.3, -0.05, 2.0), (0.02, 0.005, 0.5)]:
        n0 = sample_size(p0, d, ratio=k)
        n1 = k * n0
        p1 = p0 + d
        pbar = (p0 * n0 + p1 * n1) / (n0 + n1)
        s_null = math.sqrt(pbar * (1 - pbar) * (1 / n0 + 1 / n1))
        s_alt = math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
        power = stats.norm.cdf((abs(d) - 1.959964 * s_null) / s_alt)
        assert 0.8 <= power < 0.801


def test_sample_size_means() -> None:
    # n = 2 (z_a + z_b)^2 sd^2 / d^2 = 2 * 7.8489 * 400 / 25 = 251.2 -> 252
    assert sample_size(50.0, 5.0, kind="mean", sd=20.0) == 252
    assert sample_size(50.0, 0.1, kind="mean", sd=20.0, relative=True) == 252
    assert sample_size(50.0, 5.0, kind="mean", sd=20.0, ratio=3) == math.ceil(
        (1.959964 + 0.841621) ** 2 * 400 * (1 + 1 / 3) / 25
    )


@settings(max_examples=60, deadline=None)
@given(
    baseline=st.floats(0.01, 0.9),
    n=st.integers(50, 10**6),
    ratio=st.sampled_from([0.5, 1.0, 3.0]),
    power=st.sampled_from([0.8, 0.9]),
)
def test_sample_size_and_mde_round_trip(
    baseline: float, n: int, ratio: float, power: float
) -> None:
    try:
        mde = minimum_detectable_effect(n, baseline, power=power, ratio=ratio)
    except ConfigError:
        return  # n too small for any rise from this baseline
    assert sample_size(baseline, mde, power=power, ratio=ratio) == n
    rel = minimum_detectable_effect(n, baseline, power=power, ratio=ratio, relative=True)
    assert rel == pytest.approx(mde / baseline)
    mde_mean = minimum_detectable_effect(n, 40.0, kind="mean", sd=25.0, ratio=ratio)
    assert sample_size(40.0, mde_mean, kind="mean", sd=25.0, ratio=ratio) == n


def test_mde_of_planned_size_is_at_most_the_target() -> None:
    n = sample_size(0.10, 0.02)
    assert minimum_detectable_effect(n, 0.10) <= 0.02
    assert minimum_detectable_effect(n - 1, 0.10) > 0.02


def test_planning_errors() -> None:
    with pytest.raises(ConfigError, match=r"Valid options for 'kind' are \('proportion', 'mean'\)"):
        sample_size(0.1, 0.02, kind="ratio")
    with pytest.raises(ConfigError, match=r"baseline must be a proportion strictly between"):
        sample_size(1.5, 0.02)
    with pytest.raises(ConfigError, match=r"baseline \+ effect must stay strictly between 0 and 1"):
        sample_size(0.95, 0.1)
    with pytest.raises(ConfigError, match=r"sd: kind='mean' needs a positive standard deviation"):
        sample_size(10.0, 1.0, kind="mean")
    with pytest.raises(ConfigError, match=r"mde must be a non-zero finite number"):
        sample_size(0.1, 0.0)
    with pytest.raises(ConfigError, match=r"power must be a number strictly between 0 and 1"):
        sample_size(0.1, 0.02, power=80)
    with pytest.raises(ConfigError, match=r"ratio must be a positive number"):
        sample_size(0.1, 0.02, ratio=0)
    with pytest.raises(ConfigError, match=r"n_per_arm=2 is too small"):
        minimum_detectable_effect(2, 0.5)
    with pytest.raises(ConfigError, match=r"n_per_arm must be a positive number"):
        minimum_detectable_effect(-5, 0.5)
