"""Drift: PSI on known distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmkt.drift import psi, score_drift
from bmkt.errors import ConfigError, DataError


def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(size=20_000))
    b = pd.Series(rng.normal(size=20_000))
    assert psi(a, a) == pytest.approx(0, abs=1e-12)
    assert psi(a, b) < 0.01  # same distribution, sampling noise only
    small, large = psi(a, b + 0.2), psi(a, b + 1.0)
    assert 0.02 < small < large and large > 0.25


def test_psi_matches_the_formula_on_categories() -> None:
    ref = pd.Series(["a"] * 50 + ["b"] * 50)
    cur = pd.Series(["a"] * 80 + ["b"] * 20)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(ref, cur) == pytest.approx(expected)


def test_score_drift_flags_and_errors() -> None:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"clv": rng.gamma(2, 10, 5000), "segment": ["x", "y"] * 2500})
    cur = pd.DataFrame({"clv": rng.gamma(2, 20, 5000), "segment": ["x", "y"] * 2500})
    d = score_drift(ref, cur)
    assert d.loc["clv", "status"] == "major" and d.loc["segment", "status"] == "stable"
    assert d.loc["clv", "ks"] > 0.2
    with pytest.raises(DataError, match=r"column\(s\) \['p_alive'\] are not in both runs"):
        score_drift(ref, cur, ["p_alive"])
    with pytest.raises(ConfigError, match="'bins' must be at least 2"):
        psi(ref.clv, cur.clv, bins=1)


def test_a_score_missing_in_one_run_is_reported_not_raised() -> None:
    ref = pd.DataFrame({"clv": [1.0, 2.0, 3.0], "churn_risk": [0.1, 0.2, 0.3]})
    cur = pd.DataFrame({"clv": [1.0, 2.0, 3.5], "churn_risk": [np.nan] * 3})
    d = score_drift(ref, cur)
    assert d.loc["churn_risk", "status"] == "not scored" and np.isnan(d.loc["churn_risk", "psi"])
    assert d.loc["clv", "status"] in ("stable", "moderate", "major")
