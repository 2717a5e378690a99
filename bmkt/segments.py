"""Rule-based segmentation: declarative rule sets evaluated over per-customer features.

A rule set is data (YAML or a dict), not code. It holds an ordered list of
segments, each with a ``name``, a ``description`` and a ``when`` condition over
per-customer feature columns::

    name: my-rules
    features:                       # optional catalogue of known features
      p_alive: {type: number, min: 0, max: 1}
      engagement_state: {type: category, values: [active, lapsing, dormant]}
    segments:
      - name: VIP
        description: High value and still alive.
        when: "clv >= 1000 and p_alive >= 0.7"
      - name: Everyone else
        description: Catch-all.
        when: "true"

Every customer gets exactly one **primary segment**, the first rule that
matches (first match wins), plus a boolean ``in_<slug>`` membership column for
every rule, true wherever the rule matches. The last-resort rule (the
*catch-all*, ``when: "true"`` or ``catch_all: true``) is required, so no
customer is ever left without a segment. The default rule set ships as
``bmkt/resources/segments.yaml`` (:meth:`RuleSet.default`).

Condition language
------------------
A safe subset of Python expressions, parsed with :mod:`ast` and evaluated
vectorised over a DataFrame (nothing is ever passed to ``eval``):

* feature names (columns of the feature frame),
* literals: numbers, strings (``'Champions'``), ``true``/``false``
  (``True``/``False`` also work), and lists/tuples of literals after ``in``,
* comparisons ``== != < <= > >=`` (chains such as ``0.2 < p_alive <= 0.8``
  included), ``in [...]`` and ``not in [...]``,
* ``and``, ``or``, ``not``, parentheses,
* arithmetic ``+ - * / // % **`` and unary minus.

Anything else (function calls, attribute access, subscripts, lambdas,
comprehensions, ``None``, ...) is rejected with a :class:`~bmkt.errors.ConfigError`
when the rule set is loaded.

Missing values
--------------
A comparison involving a missing value (NaN, None, NaT) is **False**,
whatever the operator: ``p_alive < 0.3`` and ``p_alive != 0.3`` are both
False where ``p_alive`` is missing, and so are ``in`` and ``not in``.
``and``/``or``/``not`` then combine ordinary booleans, so
``not (p_alive >= 0.3)`` is True where ``p_alive`` is missing -- write
``p_alive < 0.3`` when a missing value must not match. A bare feature used as
a condition (``trg_welcome``, ``not is_buyer``) is True where the value is
true or non-zero and False where it is missing. Arithmetic propagates
missing values (NaN) into the comparison, which is then False.

Never-matching rules
--------------------
Loading or checking a rule set warns (:class:`UserWarning`) about rules that
can never be a customer's primary segment: rules after the catch-all or after
an identical earlier condition (*shadowed*), rules whose numeric bounds on one
feature contradict each other or the catalogue's ``min``/``max``
(``p_alive > 0.8 and p_alive < 0.2``), and comparisons of a category feature
with a value outside its known values (usually a typo).
"""

from __future__ import annotations

import ast
import difflib
import importlib.resources
import logging
import math
import operator
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bmkt.errors import ConfigError, DataError, format_examples

log = logging.getLogger(__name__)

__all__ = [
    "Rule",
    "RuleSet",
    "Migration",
    "assign_segments",
    "migration",
    "slugify",
    "DEFAULT_RULES",
    "NEW_LABEL",
    "GONE_LABEL",
]

#: Resource file holding the default rule set.
DEFAULT_RULES = "segments.yaml"
#: Row label of customers present only in the later assignment.
NEW_LABEL = "(new)"
#: Column label of customers present only in the earlier assignment.
GONE_LABEL = "(gone)"

_TRUE_NAMES = {"true": True, "True": True, "false": False, "False": False}
_FEATURE_TYPES = ("number", "category", "bool")
_RULE_KEYS = {"name", "description", "when", "catch_all"}

_COMPARE_OPS: dict[type, Any] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_BIN_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FORBIDDEN_NAMES = {
    ast.Call: "a function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "a subscript",
    ast.Lambda: "a lambda",
    ast.IfExp: "an if-expression",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.NamedExpr: "an assignment",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.JoinedStr: "an f-string",
    ast.Starred: "a starred expression",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "a slice",
}
_ALLOWED_HINT = (
    "Allowed: feature names, numbers, strings, true/false, comparisons, "
    "in [...], and/or/not, parentheses and arithmetic."
)


def slugify(name: str) -> str:
    """Return the snake_case slug of a segment name (``"At-risk VIP"`` -> ``"at_risk_vip"``)."""
    slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    return slug or "segment"


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- parsing


def _parse(rule_name: str, text: str) -> ast.Expression:
    """Parse ``text`` and check that it only uses the allowed constructs."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(
            f"segment {rule_name!r}: cannot parse when: {text!r} ({exc.msg}). {_ALLOWED_HINT}"
        ) from None
    _check_node(rule_name, text, tree.body, in_list=False)
    return tree


def _check_node(rule: str, text: str, node: ast.AST, *, in_list: bool) -> None:
    def bad(what: str) -> ConfigError:
        return ConfigError(
            f"segment {rule!r}: when: {text!r} uses {what}, which is not allowed. {_ALLOWED_HINT}"
        )

    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check_node(rule, text, v, in_list=False)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            raise bad("the operator " + type(node.op).__name__)
        _check_node(rule, text, node.operand, in_list=False)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BIN_OPS:
            raise bad("the operator " + type(node.op).__name__)
        _check_node(rule, text, node.left, in_list=False)
        _check_node(rule, text, node.right, in_list=False)
    elif isinstance(node, ast.Compare):
        _check_node(rule, text, node.left, in_list=False)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(comp, ast.List | ast.Tuple):
                    raise bad("'in' with something other than a list of literals")
                for elt in comp.elts:
                    _check_node(rule, text, elt, in_list=True)
            elif type(op) in _COMPARE_OPS:
                _check_node(rule, text, comp, in_list=False)
            else:
                raise bad("the operator " + type(op).__name__)
    elif isinstance(node, ast.Constant):
        if node.value is None or not isinstance(node.value, bool | int | float | str):
            raise bad(f"the literal {node.value!r}")
    elif isinstance(node, ast.Name):
        if in_list and node.id not in _TRUE_NAMES:
            raise bad(f"the name {node.id!r} inside a list (lists hold literals only)")
    elif isinstance(node, ast.List | ast.Tuple):
        raise bad("a list outside 'in [...]'")
    else:
        raise bad(_FORBIDDEN_NAMES.get(type(node), type(node).__name__))


def _feature_names(tree: ast.AST) -> list[str]:
    """Feature names used in a parsed condition, in order of appearance."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _TRUE_NAMES and node.id not in names:
            names.append(node.id)
    return names


def _is_true_literal(tree: ast.Expression) -> bool:
    body = tree.body
    if isinstance(body, ast.Constant):
        return body.value is True
    return isinstance(body, ast.Name) and _TRUE_NAMES.get(body.id) is True


def _canonical(tree: ast.AST) -> str:
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


# --------------------------------------------------------------------------- evaluation


def _missing(value: Any) -> Any:
    if isinstance(value, pd.Series):
        return value.isna()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _truth(value: Any, index: pd.Index) -> pd.Series:
    """Boolean Series of a value used as a condition (missing -> False)."""
    if isinstance(value, pd.Series):
        if value.dtype == bool:
            return value
        missing = value.isna()
        filled = value.where(~missing, False)
        return filled.astype(bool) & ~missing
    flag = False if _missing(value) else bool(value)
    return pd.Series(flag, index=index, dtype=bool)


class _Evaluator:
    """Evaluate a checked condition tree over a feature frame."""

    def __init__(self, frame: pd.DataFrame, rule: str, text: str) -> None:
        self.frame = frame
        self.rule = rule
        self.text = text

    def condition(self, tree: ast.Expression) -> pd.Series:
        try:
            return _truth(self.value(tree.body), self.frame.index)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise ConfigError(
                f"segment {self.rule!r}: cannot evaluate when: {self.text!r} ({exc}). "
                "Check that numbers are compared with numbers and text with text."
            ) from None

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _TRUE_NAMES:
                return _TRUE_NAMES[node.id]
            return self.frame[node.id]
        if isinstance(node, ast.BoolOp):
            parts = [_truth(self.value(v), self.frame.index) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return ~_truth(operand, self.frame.index)
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp):
            left, right = self.value(node.left), self.value(node.right)
            # pandas turns division by zero into inf/NaN; between two literals
            # Python raises ZeroDivisionError, reported as a ConfigError.
            with np.errstate(all="ignore"):
                return _BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover

    def compare(self, node: ast.Compare) -> pd.Series:
        index = self.frame.index
        out = pd.Series(True, index=index, dtype=bool)
        left = self.value(node.left)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                options = [self.value(e) for e in comp.elts]  # type: ignore[attr-defined]
                series = left if isinstance(left, pd.Series) else pd.Series(left, index=index)
                hit = series.isin(options)
                res = hit if isinstance(op, ast.In) else ~hit
                res = res & ~series.isna()
                right = left
            else:
                right = self.value(comp)
                res = _COMPARE_OPS[type(op)](left, right)
                if not isinstance(res, pd.Series):
                    res = pd.Series(bool(res), index=index)
                res = res.fillna(False).astype(bool)
                for side in (left, right):
                    miss = _missing(side)
                    if isinstance(miss, pd.Series):
                        res = res & ~miss
                    elif miss:
                        res = pd.Series(False, index=index)
            out = out & res
            left = right
        return out


# --------------------------------------------------------------------------- static checks


@dataclass
class _Bounds:
    lo: float = -math.inf
    lo_incl: bool = True
    hi: float = math.inf
    hi_incl: bool = True
    equal: set[Any] | None = None
    not_equal: set[Any] = field(default_factory=set)

    def add(self, op: str, value: Any) -> None:
        if op in ("==", "in"):
            values = set(value) if op == "in" else {value}
            self.equal = values if self.equal is None else self.equal & values
        elif op in ("!=", "not in"):
            self.not_equal |= set(value) if op == "not in" else {value}
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return
        elif op in (">", ">="):
            if value > self.lo or (value == self.lo and op == ">"):
                self.lo, self.lo_incl = float(value), op == ">="
        elif op in ("<", "<="):
            if value < self.hi or (value == self.hi and op == "<"):
                self.hi, self.hi_incl = float(value), op == "<="

    def _inside(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return self.lo == -math.inf and self.hi == math.inf
        above = v > self.lo or (v == self.lo and self.lo_incl)
        below = v < self.hi or (v == self.hi and self.hi_incl)
        return above and below

    def empty(self) -> bool:
        if self.equal is not None:
            return not any(self._inside(v) and v not in self.not_equal for v in self.equal)
        if self.lo > self.hi:
            return True
        return self.lo == self.hi and not (self.lo_incl and self.hi_incl)


_OP_TEXT = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _literal(node: ast.AST) -> tuple[bool, Any]:
    if isinstance(node, ast.Constant):
        return True, node.value
    if isinstance(node, ast.Name) and node.id in _TRUE_NAMES:
        return True, _TRUE_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        ok, v = _literal(node.operand)
        if ok and isinstance(v, int | float) and not isinstance(v, bool):
            return True, -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.List | ast.Tuple):
        vals = [_literal(e) for e in node.elts]
        if all(ok for ok, _ in vals):
            return True, [v for _, v in vals]
    return False, None


def _simple_comparisons(node: ast.AST) -> list[tuple[str, str, Any]]:
    """``(feature, op, literal)`` triples of a Compare node, normalised to feature-first."""
    out: list[tuple[str, str, Any]] = []
    if not isinstance(node, ast.Compare):
        return out
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        a, b = operands[i], operands[i + 1]
        text = _OP_TEXT[type(op)]
        if isinstance(a, ast.Name) and a.id not in _TRUE_NAMES:
            ok, v = _literal(b)
            if ok:
                out.append((a.id, text, v))
        elif isinstance(b, ast.Name) and b.id not in _TRUE_NAMES and text in _FLIP:
            ok, v = _literal(a)
            if ok:
                out.append((b.id, _FLIP[text], v))
    return out


def _conjuncts(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [c for v in node.values for c in _conjuncts(v)]
    return [node]


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One segment of a rule set.

    Parameters
    ----------
    name : str
        Segment name (the primary-segment label).
    when : str
        The condition, as written.
    description : str
        What the segment is for.
    catch_all : bool
        Whether the rule matches every customer.
    tree : ast.Expression
        The parsed, checked condition.
    """

    name: str
    when: str
    description: str
    catch_all: bool
    tree: ast.Expression = field(repr=False, compare=False)

    @property
    def slug(self) -> str:
        """snake_case name used in the ``in_<slug>`` membership column."""
        return slugify(self.name)

    @property
    def column(self) -> str:
        """Name of the membership column."""
        return f"in_{self.slug}"

    @property
    def features(self) -> list[str]:
        """Feature names the condition reads."""
        return _feature_names(self.tree)


class RuleSet:
    """An ordered, validated list of segment rules.

    Build one with :meth:`load` (a YAML file, a dict or a list of rule
    dicts) or :meth:`default`; then :meth:`assign` segments to a feature
    frame.

    Parameters
    ----------
    rules : sequence of Rule
        The rules, in priority order; one must be a catch-all.
    features : mapping, optional
        Catalogue of known features: ``{name: {"type": "number" | "category" |
        "bool", "values": [...], "min": .., "max": .., "description": ..}}``.
        When given, rules may only use catalogued features.
    name : str
        Name of the rule set (for messages and manifests).

    Raises
    ------
    ConfigError
        On duplicate segment names, a missing catch-all, or features outside
        the catalogue.

    Examples
    --------
    >>> rules = RuleSet.load({"segments": [
    ...     {"name": "Alive", "when": "p_alive >= 0.5"},
    ...     {"name": "Everyone else", "when": "true"}]})
    >>> frame = pd.DataFrame({"p_alive": [0.9, 0.1]}, index=pd.Index([1, 2], name="customer_id"))
    >>> rules.assign(frame)["segment"].tolist()
    ['Alive', 'Everyone else']
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        features: Mapping[str, Mapping[str, Any]] | None = None,
        name: str = "rules",
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.features: dict[str, dict[str, Any]] = {
            k: dict(v or {}) for k, v in (features or {}).items()
        }
        self.name = name
        self._validate_structure()
        if self.features:
            self._check_known(self.features, what="the rule set's feature catalogue")
        self._warn_never_match(self._catalogue_values())

    # ---------------------------------------------------------------- building

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]) -> RuleSet:
        """Load and validate a rule set.

        Parameters
        ----------
        source : path-like, mapping or sequence
            A YAML file path, a dict with a ``segments`` list (and optional
            ``name`` and ``features``), or the list of segment dicts itself.

        Returns
        -------
        RuleSet

        Raises
        ------
        ConfigError
            If the file is missing or unreadable, a rule is malformed, a
            condition does not parse or uses a forbidden construct, or there
            is no catch-all.
        """
        name = "rules"
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"{path}: segment rules file not found.")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
            name = path.stem
        else:
            data = source
        if isinstance(data, Sequence) and not isinstance(data, str):
            data = {"segments": list(data)}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"segment rules: expected a mapping with a 'segments' list, got {type(data).__name__}."
            )
        unknown = set(data) - {"name", "description", "features", "segments", "version"}
        if unknown:
            raise ConfigError(
                f"segment rules: unknown top-level keys {sorted(unknown)}. "
                "Valid keys are 'name', 'description', 'version', 'features', 'segments'."
            )
        segments = data.get("segments")
        if not isinstance(segments, Sequence) or isinstance(segments, str) or not segments:
            raise ConfigError("segment rules: 'segments' must be a non-empty list of rules.")
        features = data.get("features") or {}
        if not isinstance(features, Mapping):
            raise ConfigError("segment rules: 'features' must be a mapping of feature -> spec.")
        for feat, spec in features.items():
            spec = spec or {}
            if not isinstance(spec, Mapping):
                raise ConfigError(f"feature {feat!r}: expected a mapping, got {spec!r}.")
            ftype = spec.get("type", "number")
            if ftype not in _FEATURE_TYPES:
                raise ConfigError(
                    f"feature {feat!r}: valid options for 'type' are {_FEATURE_TYPES}. "
                    f"Got {ftype!r}."
                )
        rules = [_rule_from_dict(i, r) for i, r in enumerate(segments)]
        return cls(rules, features=features, name=str(data.get("name", name)))

    @classmethod
    def default(cls) -> RuleSet:
        """The rule set shipped with bmkt (``bmkt/resources/segments.yaml``)."""
        resource = importlib.resources.files("bmkt") / "resources" / DEFAULT_RULES
        with importlib.resources.as_file(resource) as path:
            return cls.load(path)

    # ---------------------------------------------------------------- checks

    def _validate_structure(self) -> None:
        seen: dict[str, str] = {}
        for rule in self.rules:
            if rule.slug in seen:
                raise ConfigError(
                    f"segment {rule.name!r}: name clashes with {seen[rule.slug]!r} "
                    f"(both give the column {rule.column!r}). Segment names must be unique."
                )
            seen[rule.slug] = rule.name
        if not any(r.catch_all for r in self.rules):
            raise ConfigError(
                f"segment rules {self.name!r}: no catch-all rule. Add a last rule such as "
                "{name: 'Everyone else', when: 'true'} so every customer gets a segment "
                f"(last rule is {self.rules[-1].name!r}: {self.rules[-1].when!r})."
            )

    def _catalogue_values(self) -> dict[str, list[Any]]:
        return {k: list(v["values"]) for k, v in self.features.items() if v.get("values")}

    def _check_known(self, known: Iterable[str], what: str) -> None:
        known = list(known)
        known_set = set(known)
        for rule in self.rules:
            for feat in rule.features:
                if feat not in known_set:
                    raise ConfigError(
                        f"segment {rule.name!r}: unknown feature {feat!r} in when: "
                        f"{rule.when!r}{_did_you_mean(feat, known)}. "
                        f"Known features ({what}): {', '.join(sorted(known_set)) or 'none'}."
                    )

    def check(
        self,
        columns: Iterable[str] | pd.DataFrame,
        values: Mapping[str, Iterable[Any]] | None = None,
    ) -> None:
        """Check the rules against the features available, before touching data.

        Parameters
        ----------
        columns : iterable of str or DataFrame
            Names of the available feature columns (a DataFrame's columns,
            its index name included).
        values : mapping, optional
            Known values of category features, ``{feature: [values]}``;
            comparisons with other values raise a never-match warning.

        Raises
        ------
        ConfigError
            Naming the rule and the unknown feature, with a suggestion.
        """
        if isinstance(columns, pd.DataFrame):
            names = [str(c) for c in columns.columns]
            names += [str(n) for n in columns.index.names if n is not None]
        else:
            names = [str(c) for c in columns]
        self._check_known(names, what="columns of the feature frame")
        if values:
            self._warn_never_match({k: list(v) for k, v in values.items()}, structural=False)

    def _warn_never_match(self, values: Mapping[str, list[Any]], structural: bool = True) -> None:
        for message in self.never_match(values, structural=structural):
            warnings.warn(message, UserWarning, stacklevel=3)

    def never_match(
        self, values: Mapping[str, list[Any]] | None = None, *, structural: bool = True
    ) -> list[str]:
        """Describe the rules that can never match (see the module docstring).

        Parameters
        ----------
        values : mapping, optional
            Known values of category features (the catalogue's by default).
        structural : bool
            Include shadowed rules and contradictory bounds (not only unknown
            category values).

        Returns
        -------
        list of str
            One message per problem, naming the rule.
        """
        values = self._catalogue_values() if values is None else values
        messages: list[str] = []
        first_catch_all: Rule | None = None
        seen: dict[str, Rule] = {}
        for rule in self.rules:
            if structural:
                key = _canonical(rule.tree)
                if first_catch_all is not None:
                    messages.append(
                        f"segment {rule.name!r} can never match: it comes after the catch-all "
                        f"{first_catch_all.name!r}."
                    )
                elif key in seen:
                    messages.append(
                        f"segment {rule.name!r} can never match: the earlier segment "
                        f"{seen[key].name!r} has the same condition {rule.when!r}."
                    )
                seen.setdefault(key, rule)
                if rule.catch_all and first_catch_all is None:
                    first_catch_all = rule
                contradiction = self._contradiction(rule)
                if contradiction:
                    messages.append(
                        f"segment {rule.name!r} can never match: {contradiction} in {rule.when!r}."
                    )
            for node in ast.walk(rule.tree):
                for feat, op, lit in _simple_comparisons(node):
                    if feat not in values or op not in ("==", "!=", "in", "not in"):
                        continue
                    known = values[feat]
                    for v in lit if isinstance(lit, list) else [lit]:
                        if v not in known:
                            hint = _did_you_mean(str(v), [str(k) for k in known])
                            messages.append(
                                f"segment {rule.name!r}: {feat} is compared with {v!r}, "
                                f"which is not one of its known values{hint}; "
                                f"that comparison can never be true. Known values: "
                                f"{format_examples(known, limit=20)}."
                            )
        return messages

    def _contradiction(self, rule: Rule) -> str | None:
        bounds: dict[str, _Bounds] = {}
        for conj in _conjuncts(rule.tree.body):
            for feat, op, lit in _simple_comparisons(conj):
                bounds.setdefault(feat, _Bounds()).add(op, lit)
        for feat, b in bounds.items():
            spec = self.features.get(feat, {})
            if b.empty():
                return f"the conditions on {feat!r} contradict each other"
            lo, hi = spec.get("min"), spec.get("max")
            if lo is not None:
                b.add(">=", lo)
            if hi is not None:
                b.add("<=", hi)
            if b.empty():
                return f"the conditions on {feat!r} fall outside its range [{lo}, {hi}]"
        return None

    # ---------------------------------------------------------------- applying

    @property
    def names(self) -> list[str]:
        """Segment names in priority order."""
        return [r.name for r in self.rules]

    @property
    def columns(self) -> list[str]:
        """Membership column names in priority order."""
        return [r.column for r in self.rules]

    def assign(self, features: pd.DataFrame) -> pd.DataFrame:
        """Assign every customer its primary segment and its memberships.

        Parameters
        ----------
        features : DataFrame
            One row per customer, indexed by ``customer_id`` (a
            ``customer_id`` column is used as the index instead when
            present). Not modified.

        Returns
        -------
        DataFrame
            Indexed like ``features`` (``customer_id``), with ``segment``
            (ordered categorical, categories in rule order: the first rule
            that matches) and a boolean ``in_<slug>`` column per rule.

        Raises
        ------
        ConfigError
            If a rule reads an unknown feature or cannot be evaluated.
        DataError
            If customer ids are duplicated.
        """
        frame = features
        if "customer_id" in frame.columns and frame.index.name != "customer_id":
            frame = frame.set_index("customer_id")
        self.check(frame)
        if not frame.index.is_unique:
            dups = frame.index[frame.index.duplicated()].unique()
            raise DataError(
                f"features.customer_id: {len(dups)} customers appear more than once, "
                f"e.g. {format_examples(dups)}. Pass one row per customer."
            )
        members: dict[str, pd.Series] = {}
        for rule in self.rules:
            if rule.catch_all:
                hit = pd.Series(True, index=frame.index, dtype=bool)
            else:
                hit = _Evaluator(frame, rule.name, rule.when).condition(rule.tree)
            members[rule.column] = hit.astype(bool)
        matrix = np.column_stack([m.to_numpy() for m in members.values()])
        first = matrix.argmax(axis=1) if len(frame) else np.array([], dtype=int)
        segment = pd.Categorical.from_codes(first, categories=self.names, ordered=True)
        out = pd.DataFrame({"segment": segment}, index=frame.index.copy())
        for col, hit in members.items():
            out[col] = hit.to_numpy()
        out.index.name = "customer_id"
        counts = out["segment"].value_counts(sort=False)
        log.info("assigned %d customers to segments: %s", len(out), counts.to_dict())
        return out

    def summary(self) -> pd.DataFrame:
        """The rules as a table: ``segment``, ``column``, ``when``, ``description``."""
        return pd.DataFrame(
            {
                "segment": self.names,
                "column": self.columns,
                "when": [r.when for r in self.rules],
                "description": [r.description for r in self.rules],
                "catch_all": [r.catch_all for r in self.rules],
            }
        )

    def __repr__(self) -> str:
        return f"RuleSet(name={self.name!r}, segments={self.names!r})"


def _rule_from_dict(position: int, spec: Any) -> Rule:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"segment #{position + 1}: expected a mapping, got {spec!r}.")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"segment #{position + 1}: 'name' is required (got {name!r}).")
    unknown = set(spec) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"segment {name!r}: unknown keys {sorted(unknown)}. "
            f"Valid keys are {sorted(_RULE_KEYS)}."
        )
    catch_all = bool(spec.get("catch_all", False))
    when = spec.get("when", "true" if catch_all else None)
    if isinstance(when, bool):
        when = "true" if when else "false"
    if isinstance(when, int | float) and not isinstance(when, bool):
        when = str(when)
    if not isinstance(when, str) or not when.strip():
        raise ConfigError(f"segment {name!r}: 'when' is required (got {when!r}).")
    tree = _parse(name, when)
    if catch_all and not _is_true_literal(tree):
        raise ConfigError(
            f"segment {name!r}: a catch-all matches everyone; drop its 'when' "
            f"or set it to 'true' (got {when!r})."
        )
    return Rule(
        name=name.strip(),
        when=when.strip(),
        description=str(spec.get("description", "") or "").strip(),
        catch_all=catch_all or _is_true_literal(tree),
        tree=tree,
    )


def assign_segments(
    features: pd.DataFrame,
    rules: RuleSet | str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Assign segments with ``rules`` (the default rule set when ``None``).

    See :meth:`RuleSet.assign` for the returned frame.
    """
    if rules is None:
        ruleset = RuleSet.default()
    elif isinstance(rules, RuleSet):
        ruleset = rules
    else:
        ruleset = RuleSet.load(rules)
    return ruleset.assign(features)


# --------------------------------------------------------------------------- migration


@dataclass(frozen=True)
class Migration:
    """Segment migration between two assignments.

    Attributes
    ----------
    counts : DataFrame
        Customers per (segment before, segment after); rows are the earlier
        segments plus ``"(new)"``, columns the later ones plus ``"(gone)"``.
    shares : DataFrame
        ``counts`` divided by its row totals (each row sums to 1; rows with
        no customers are 0).
    """

    counts: pd.DataFrame
    shares: pd.DataFrame

    @property
    def n_customers(self) -> int:
        """Customers in either assignment."""
        return int(self.counts.to_numpy().sum())


def _labels(assignment: pd.Series | pd.DataFrame, which: str) -> pd.Series:
    if isinstance(assignment, pd.DataFrame):
        frame = assignment
        if "customer_id" in frame.columns and frame.index.name != "customer_id":
            frame = frame.set_index("customer_id")
        if "segment" not in frame.columns:
            raise ConfigError(
                f"migration: the {which} assignment has no 'segment' column "
                f"(columns: {', '.join(map(str, frame.columns))})."
            )
        series = frame["segment"]
    elif isinstance(assignment, pd.Series):
        series = assignment
    else:
        raise ConfigError(
            f"migration: expected a Series or an assignment DataFrame for {which}, "
            f"got {type(assignment).__name__}."
        )
    if not series.index.is_unique:
        dups = series.index[series.index.duplicated()].unique()
        raise DataError(
            f"migration: {len(dups)} customers appear more than once in the {which} "
            f"assignment, e.g. {format_examples(dups)}."
        )
    return series.dropna()


def _order(series: pd.Series) -> list[Any]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    return sorted(series.unique(), key=str)


def migration(before: pd.Series | pd.DataFrame, after: pd.Series | pd.DataFrame) -> Migration:
    """Transition matrix between two segment assignments.

    Parameters
    ----------
    before, after : Series or DataFrame
        Segment labels indexed by ``customer_id``, or frames returned by
        :meth:`RuleSet.assign` (their ``segment`` column is used). Customers
        with a missing label count as absent.

    Returns
    -------
    Migration
        ``counts`` and row ``shares``; customers only in ``after`` are in
        the ``"(new)"`` row, customers only in ``before`` in the
        ``"(gone)"`` column (each added only when such customers exist).
        Segments of a categorical input keep their order and appear even
        when empty.

    Examples
    --------
    >>> b = pd.Series(["A", "B"], index=[1, 2])
    >>> a = pd.Series(["A", "A"], index=[2, 3])
    >>> m = migration(b, a)
    >>> m.counts.index.tolist(), m.counts.columns.tolist()
    (['A', 'B', '(new)'], ['A', '(gone)'])
    >>> m.counts.to_numpy().tolist()
    [[0, 1], [1, 0], [1, 0]]
    """
    b = _labels(before, "before")
    a = _labels(after, "after")
    rows = _order(b)
    cols = _order(a)
    ids = b.index.union(a.index)
    bl = b.astype(object).reindex(ids).fillna(NEW_LABEL)
    al = a.astype(object).reindex(ids).fillna(GONE_LABEL)
    if (bl == NEW_LABEL).any():
        rows.append(NEW_LABEL)
    if (al == GONE_LABEL).any():
        cols.append(GONE_LABEL)
    pairs = pd.DataFrame({"before": bl.to_numpy(), "after": al.to_numpy()})
    counts = (
        pairs.groupby(["before", "after"], sort=False)
        .size()
        .unstack("after", fill_value=0)
        .reindex(index=rows, columns=cols, fill_value=0)
        .astype("int64")
    )
    counts.index.name = "before"
    counts.columns.name = "after"
    totals = counts.sum(axis=1)
    shares = counts.div(totals.where(totals > 0, 1), axis=0)
    return Migration(counts=counts, shares=shares)
