"""Segmentation: rule parsing, safety, never-match warnings, assignment, migration."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmkt.errors import ConfigError, DataError
from bmkt.segments import GONE_LABEL, NEW_LABEL, RuleSet, assign_segments, migration, slugify

RFM_SEGMENTS = [
    "Champions",
    "Loyal Customers",
    "Potential Loyalist",
    "New Customers",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
]
ENGAGEMENT = ["active", "lapsing", "dormant", "never_engaged"]
TRIGGER_FLAGS = [
    "trg_cart_abandonment",
    "trg_browse_abandonment",
    "trg_welcome",
    "trg_post_purchase",
    "trg_reengagement",
    "trg_winback",
    "trg_anniversary",
    "trg_replenishment",
]


def simple_rules() -> dict:
    return {
        "segments": [
            {"name": "VIP", "description": "high value", "when": "clv >= 100 and p_alive > 0.5"},
            {"name": "Alive", "when": "p_alive > 0.5"},
            {"name": "Prospect", "when": "not is_buyer"},
            {"name": "Everyone else", "when": "true"},
        ]
    }


def frame(**cols: list) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    return pd.DataFrame(cols, index=pd.Index(range(1, n + 1), name="customer_id"))


def default_features(n: int = 6) -> pd.DataFrame:
    base = {
        "rfm_segment": ["Champions"] * n,
        "r_score": [5] * n,
        "f_score": [5] * n,
        "m_score": [5] * n,
        "clv": [10.0] * n,
        "p_alive": [0.9] * n,
        "churn_risk": [0.1] * n,
        "purchase_propensity": [0.1] * n,
        "engagement_state": ["active"] * n,
        "n_orders": [5] * n,
        "is_buyer": [True] * n,
    }
    base.update({f: [False] * n for f in TRIGGER_FLAGS})
    return frame(**base)


# --------------------------------------------------------------------------- assignment


def test_first_match_wins_and_memberships() -> None:
    rules = RuleSet.load(simple_rules())
    feats = frame(
        clv=[500.0, 5.0, 500.0, 0.0],
        p_alive=[0.9, 0.9, 0.1, 0.1],
        is_buyer=[True, True, True, False],
    )
    out = rules.assign(feats)
    assert out["segment"].tolist() == ["VIP", "Alive", "Everyone else", "Prospect"]
    assert list(out.columns) == [
        "segment",
        "in_vip",
        "in_alive",
        "in_prospect",
        "in_everyone_else",
    ]
    assert out["in_vip"].tolist() == [True, False, False, False]
    assert out["in_alive"].tolist() == [True, True, False, False]  # VIP is also Alive
    assert out["in_everyone_else"].all()
    assert out.index.equals(feats.index)
    assert list(out["segment"].cat.categories) == rules.names


def test_customer_id_column_is_used_as_index() -> None:
    feats = frame(clv=[500.0], p_alive=[0.9], is_buyer=[True]).reset_index()
    out = RuleSet.load(simple_rules()).assign(feats)
    assert out.index.tolist() == [1]
    assert out.index.name == "customer_id"


def test_missing_values_compare_false() -> None:
    rules = RuleSet.load(
        {
            "segments": [
                {"name": "Low", "when": "p_alive < 0.3"},
                {"name": "Not half", "when": "p_alive != 0.5"},
                {"name": "Listed", "when": "state in ['a'] or state not in ['a']"},
                {"name": "Negated", "when": "not (p_alive >= 0.3)"},
                {"name": "Flag", "when": "flag"},
                {"name": "Rest", "when": "true"},
            ]
        }
    )
    feats = frame(p_alive=[np.nan], state=[None], flag=[None])
    out = rules.assign(feats)
    assert out.loc[1, "segment"] == "Negated"  # documented: not(...) of a missing comparison
    assert not out.loc[1, ["in_low", "in_not_half", "in_listed", "in_flag"]].any()


def test_arithmetic_chains_and_literals() -> None:
    rules = RuleSet.load(
        {
            "segments": [
                {"name": "Avg", "when": "clv / n_orders > 10 and 0 < n_orders <= 5"},
                {"name": "Neg", "when": "-clv < -1 and label == 'x' and True"},
                {"name": "Rest", "catch_all": True},
            ]
        }
    )
    out = rules.assign(frame(clv=[100.0, 100.0, 5.0], n_orders=[2, 0, 1], label=["y", "x", "x"]))
    # n_orders == 0 gives clv / 0 = inf but the chain 0 < n_orders fails
    assert out["segment"].tolist() == ["Avg", "Neg", "Neg"]


def test_default_rules_load_cleanly_and_assign() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rules = RuleSet.default()
    assert rules.names[-1] == "Everyone else"
    feats = default_features(6)
    feats["m_score"] = [5, 5, 3, 1, 1, 2]
    feats["p_alive"] = [0.9, 0.2, 0.5, np.nan, np.nan, 0.5]
    feats["churn_risk"] = [0.1, 0.8, 0.2, np.nan, np.nan, 0.2]
    feats["rfm_segment"] = ["Champions", "At Risk", "Loyal Customers", None, None, "Promising"]
    feats["is_buyer"] = [True, True, True, False, False, True]
    feats["n_orders"] = [9, 4, 3, 0, 0, 2]
    feats["trg_cart_abandonment"] = [True, False, False, True, False, False]
    feats["engagement_state"] = ["active", "lapsing", "active", "active", "never_engaged", "active"]
    out = rules.assign(feats)
    assert out["segment"].tolist() == [
        "VIP",
        "At-risk high value",
        "Loyal",
        "Hot prospects",
        "Never engaged",
        "Everyone else",
    ]
    assert out.loc[1, "in_loyal"]  # a VIP Champion is also a Loyal member


def test_assign_segments_default_and_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "segments:\n  - {name: Big, when: 'clv > 10'}\n  - {name: Rest, when: true}\n",
        encoding="utf-8",
    )
    out = assign_segments(frame(clv=[20.0, 1.0]), path)
    assert out["segment"].tolist() == ["Big", "Rest"]
    assert assign_segments(default_features(2))["segment"].tolist() == ["VIP", "VIP"]


def test_inputs_not_mutated() -> None:
    feats = default_features(4)
    before = feats.copy(deep=True)
    spec = simple_rules()
    spec_copy = {"segments": [dict(r) for r in spec["segments"]]}
    RuleSet.load(spec).assign(frame(clv=[1.0], p_alive=[0.9], is_buyer=[True]))
    RuleSet.default().assign(feats)
    pd.testing.assert_frame_equal(feats, before)
    assert spec == spec_copy


def test_duplicate_customers_rejected() -> None:
    feats = pd.DataFrame({"clv": [1.0, 2.0], "p_alive": [0.1, 0.2], "is_buyer": [True, True]})
    feats.index = pd.Index([7, 7], name="customer_id")
    with pytest.raises(DataError, match=r"1 customers appear more than once, e.g. \[7\]"):
        RuleSet.load(simple_rules()).assign(feats)


# --------------------------------------------------------------------------- validation


def test_catch_all_required() -> None:
    spec = {"segments": [{"name": "A", "when": "clv > 1"}, {"name": "B", "when": "clv > 0"}]}
    with pytest.raises(ConfigError, match=r"no catch-all rule.*last rule is 'B'"):
        RuleSet.load(spec)


def test_catch_all_flag_with_condition_rejected() -> None:
    spec = {"segments": [{"name": "A", "when": "clv > 1", "catch_all": True}]}
    with pytest.raises(ConfigError, match=r"segment 'A': a catch-all matches everyone"):
        RuleSet.load(spec)


def test_unknown_feature_named_with_suggestion() -> None:
    rules = RuleSet.load(
        {"segments": [{"name": "VIP", "when": "clvv > 100"}, {"name": "Rest", "when": "true"}]}
    )
    with pytest.raises(
        ConfigError, match=r"segment 'VIP': unknown feature 'clvv'.*\(did you mean 'clv'\?\)"
    ):
        rules.check(["clv", "p_alive"])
    with pytest.raises(ConfigError, match=r"unknown feature 'clvv'"):
        rules.assign(frame(clv=[1.0]))


def test_unknown_feature_against_catalogue_at_load() -> None:
    spec = {
        "features": {"p_alive": {"type": "number"}},
        "segments": [{"name": "Alive", "when": "p_alvie > 0.5"}, {"name": "Rest", "when": "true"}],
    }
    with pytest.raises(
        ConfigError, match=r"segment 'Alive': unknown feature 'p_alvie'.*did you mean 'p_alive'"
    ):
        RuleSet.load(spec)


def test_default_rules_check_the_feature_frame() -> None:
    columns = [c for c in default_features(1).columns if c != "churn_risk"] + ["churn_rsk"]
    with pytest.raises(
        ConfigError,
        match=r"segment 'At-risk high value': unknown feature 'churn_risk'.*'churn_rsk'",
    ):
        RuleSet.default().check(columns)


def test_syntax_error_names_rule_and_expression() -> None:
    spec = {"segments": [{"name": "Bad", "when": "clv >"}, {"name": "Rest", "when": "true"}]}
    with pytest.raises(ConfigError, match=r"segment 'Bad': cannot parse when: 'clv >'"):
        RuleSet.load(spec)


@pytest.mark.parametrize(
    ("expr", "what"),
    [
        ("__import__('os')", "a function call"),
        ("clv.real > 1", "attribute access"),
        ("tags[0] == 'a'", "a subscript"),
        ("(lambda: 1)()", "a function call"),
        ("[x for x in clv]", "a comprehension"),
        ("clv if p_alive else 0", "an if-expression"),
        ("clv is None", "the operator Is"),
        ("clv == None", "the literal None"),
        ("clv in other", "'in' with something other than a list"),
        ("clv in [p_alive]", "the name 'p_alive' inside a list"),
        ("clv & 1", "the operator BitAnd"),
        ("(x := 1)", "an assignment"),
    ],
)
def test_forbidden_constructs_rejected(expr: str, what: str) -> None:
    spec = {"segments": [{"name": "Evil", "when": expr}, {"name": "Rest", "when": "true"}]}
    with pytest.raises(ConfigError, match=r"segment 'Evil': when: .* uses " + _re(what)):
        RuleSet.load(spec)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_malformed_rule_sets() -> None:
    with pytest.raises(ConfigError, match=r"'segments' must be a non-empty list"):
        RuleSet.load({"segments": []})
    with pytest.raises(ConfigError, match=r"unknown keys \['whenn'\]"):
        RuleSet.load({"segments": [{"name": "A", "whenn": "true"}]})
    with pytest.raises(ConfigError, match=r"segment #1: 'name' is required"):
        RuleSet.load({"segments": [{"when": "true"}]})
    with pytest.raises(ConfigError, match=r"clashes with 'At risk'"):
        RuleSet.load([{"name": "At risk", "when": "a > 1"}, {"name": "At-risk", "when": "true"}])
    with pytest.raises(ConfigError, match=r"segment rules file not found"):
        RuleSet.load(Path("/nonexistent/rules.yaml"))
    with pytest.raises(ConfigError, match=r"valid options for 'type'"):
        RuleSet.load({"features": {"x": {"type": "text"}}, "segments": [{"name": "R", "when": 1}]})


def test_type_error_at_evaluation_is_config_error() -> None:
    rules = RuleSet.load([{"name": "A", "when": "label > 3"}, {"name": "Rest", "when": "true"}])
    with pytest.raises(ConfigError, match=r"segment 'A': cannot evaluate when: 'label > 3'"):
        rules.assign(frame(label=["x", "y"]))


# --------------------------------------------------------------------------- never-match warnings


def test_warns_rule_after_catch_all() -> None:
    spec = [{"name": "All", "when": "true"}, {"name": "Late", "when": "clv > 1"}]
    with pytest.warns(UserWarning, match=r"segment 'Late' can never match: .*after the catch-all"):
        RuleSet.load(spec)


def test_warns_identical_earlier_condition() -> None:
    spec = [
        {"name": "A", "when": "clv > 1 and p_alive < 0.5"},
        {"name": "B", "when": "clv>1   and p_alive<0.5"},
        {"name": "Rest", "when": "true"},
    ]
    with pytest.warns(UserWarning, match=r"segment 'B' can never match: the earlier segment 'A'"):
        RuleSet.load(spec)


@pytest.mark.parametrize(
    "expr",
    [
        "p_alive > 0.8 and p_alive < 0.2",
        "p_alive >= 0.5 and p_alive < 0.5",
        "0.8 < p_alive < 0.2",
        "clv > 1 and (p_alive == 0.1 and p_alive == 0.2)",
        "state == 'a' and state in ['b', 'c']",
        "n > 5 and n in [1, 2]",
    ],
)
def test_warns_contradictory_bounds(expr: str) -> None:
    spec = [{"name": "Never", "when": expr}, {"name": "Rest", "when": "true"}]
    with pytest.warns(UserWarning, match=r"segment 'Never' can never match: the conditions on"):
        RuleSet.load(spec)


def test_no_warning_for_satisfiable_bounds() -> None:
    spec = [
        {"name": "A", "when": "p_alive >= 0.5 and p_alive <= 0.5"},
        {"name": "B", "when": "p_alive > 0.8 or p_alive < 0.2"},
        {"name": "C", "when": "n in [1, 2] and n > 1"},
        {"name": "Rest", "when": "true"},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RuleSet.load(spec)


def test_warns_outside_catalogue_range() -> None:
    spec = {
        "features": {"p_alive": {"type": "number", "min": 0, "max": 1}},
        "segments": [{"name": "Sure", "when": "p_alive > 1"}, {"name": "Rest", "when": "true"}],
    }
    with pytest.warns(UserWarning, match=r"segment 'Sure' can never match: .*outside its range"):
        RuleSet.load(spec)


def test_warns_unknown_category_value() -> None:
    spec = [{"name": "Champs", "when": "rfm_segment == 'Champion'"}, {"name": "R", "when": "true"}]
    rules = RuleSet.load(spec)  # no catalogue of values: no warning
    with pytest.warns(
        UserWarning, match=r"segment 'Champs': rfm_segment is compared with 'Champion'.*'Champions'"
    ):
        rules.check(["rfm_segment"], values={"rfm_segment": RFM_SEGMENTS})
    catalogue = {"features": {"rfm_segment": {"type": "category", "values": RFM_SEGMENTS}}}
    with pytest.warns(UserWarning, match=r"compared with 'Champion'"):
        RuleSet.load({**catalogue, "segments": spec})


# --------------------------------------------------------------------------- properties


FEATURE_STRATEGIES = {
    "rfm_segment": st.sampled_from([*RFM_SEGMENTS, None]),
    "r_score": st.sampled_from([1, 2, 3, 4, 5, np.nan]),
    "f_score": st.sampled_from([1, 2, 3, 4, 5, np.nan]),
    "m_score": st.sampled_from([1, 2, 3, 4, 5, np.nan]),
    "clv": st.one_of(st.floats(0, 5000, allow_nan=False), st.just(np.nan)),
    "p_alive": st.one_of(st.floats(0, 1), st.just(np.nan)),
    "churn_risk": st.one_of(st.floats(0, 1), st.just(np.nan)),
    "purchase_propensity": st.one_of(st.floats(0, 1), st.just(np.nan)),
    "engagement_state": st.sampled_from([*ENGAGEMENT, None]),
    "n_orders": st.integers(0, 30),
    "is_buyer": st.booleans(),
    **{f: st.booleans() for f in TRIGGER_FLAGS},
}
feature_rows = st.fixed_dictionaries(FEATURE_STRATEGIES)

DEFAULT_RULES = RuleSet.default()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(feature_rows, min_size=0, max_size=25))
def test_property_exactly_one_primary_segment(rows: list[dict]) -> None:
    feats = pd.DataFrame(rows, columns=list(FEATURE_STRATEGIES))
    feats.index = pd.Index(range(len(feats)), name="customer_id")
    out = DEFAULT_RULES.assign(feats)
    assert len(out) == len(feats)
    assert out["segment"].notna().all()
    members = out[DEFAULT_RULES.columns].to_numpy()
    codes = out["segment"].cat.codes.to_numpy()
    # the primary segment's membership is true, and no earlier rule matched
    assert members[np.arange(len(out)), codes].all()
    for i, code in enumerate(codes):
        assert not members[i, :code].any()
    assert out["in_everyone_else"].all()


# --------------------------------------------------------------------------- migration


def test_migration_counts_and_shares() -> None:
    before = pd.Series(["A", "A", "B", "B"], index=[1, 2, 3, 4])
    after = pd.Series(["A", "B", "B", "A"], index=[1, 2, 3, 5])
    m = migration(before, after)
    assert m.counts.index.tolist() == ["A", "B", NEW_LABEL]
    assert m.counts.columns.tolist() == ["A", "B", GONE_LABEL]
    assert m.counts.loc["A"].tolist() == [1, 1, 0]
    assert m.counts.loc["B"].tolist() == [0, 1, 1]
    assert m.counts.loc[NEW_LABEL].tolist() == [1, 0, 0]
    assert m.n_customers == 5
    assert m.shares.loc["A"].tolist() == [0.5, 0.5, 0.0]
    np.testing.assert_allclose(m.shares.sum(axis=1), 1.0)


def test_migration_from_assignments_keeps_rule_order() -> None:
    rules = RuleSet.load(simple_rules())
    a1 = rules.assign(frame(clv=[500.0, 5.0], p_alive=[0.9, 0.9], is_buyer=[True, True]))
    a2 = rules.assign(frame(clv=[500.0, 5.0], p_alive=[0.1, 0.9], is_buyer=[True, True]))
    before1, before2 = a1.copy(), a2.copy()
    m = migration(a1, a2)
    assert m.counts.index.tolist() == rules.names  # empty segments kept, in rule order
    assert m.counts.loc["VIP", "Everyone else"] == 1
    assert m.counts.loc["Alive", "Alive"] == 1
    assert m.counts.to_numpy().sum() == 2
    assert m.shares.loc["Prospect"].sum() == 0.0
    pd.testing.assert_frame_equal(a1, before1)
    pd.testing.assert_frame_equal(a2, before2)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.integers(0, 30), st.sampled_from("ABC"), max_size=20),
    st.dictionaries(st.integers(0, 30), st.sampled_from("ABCD"), max_size=20),
)
def test_property_migration_counts_sum_to_customers(b: dict, a: dict) -> None:
    m = migration(pd.Series(b, dtype=object), pd.Series(a, dtype=object))
    assert m.counts.to_numpy().sum() == len(set(b) | set(a))
    assert m.counts.get(GONE_LABEL, pd.Series(dtype=int)).sum() == len(set(b) - set(a))


def test_migration_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"no 'segment' column"):
        migration(pd.DataFrame({"x": [1]}), pd.Series(["A"]))


def test_slugify() -> None:
    assert slugify("At-risk high value") == "at_risk_high_value"
    assert slugify("Can't Lose Them") == "can_t_lose_them"
