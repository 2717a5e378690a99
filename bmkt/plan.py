"""Send plans: who gets which campaign, in which arm, when — and who must not.

A send plan turns a segment assignment and behavioural triggers into the rows
the sending step consumes. Every row is an email to a person, so the plan is
built around guarantees rather than scores:

1. **Suppression is absolute.** A customer who unsubscribed, complained, hard
   bounced, gave no email consent, has no or a malformed address, is on the
   user's suppression list or was forgotten through :func:`bmkt.privacy.forget`
   never appears in :attr:`SendPlan.sends`, whatever the campaign
   configuration says. Consent and mailability are *whitelisted*: only
   ``email_status == "subscribed"`` with ``email_consent`` exactly ``True``
   passes; unknown values exclude.
2. **Holdouts are deterministic.** A customer's control-group membership and
   A/B arm are a hash of the customer id, the campaign id and a salt (see
   :func:`stable_uniform`), so reruns put the same people in the same arms.
3. **Contact pressure is capped**: at most ``max_per_day`` emails per recipient
   and send day, and at most ``frequency_cap`` emails in ``cap_days`` days,
   history included.

Campaign configuration
----------------------
Campaigns are data (YAML, see ``bmkt/resources/campaigns.yaml`` and
:func:`load_campaigns`). Each campaign has:

``campaign_id`` (required)
    Letters, digits, ``_ . -``; names the published files.
``name``, ``description``
    For people (``name`` defaults to the id).
``kind``
    ``marketing`` (default and only option: bmkt plans marketing email only;
    transactional email is sent by the shop system, bypasses these caps and is
    not planned here).
``audience`` (required)
    ``segments`` (list of segment names), ``triggers`` (list of trigger names,
    see :data:`TRIGGERS`), ``trigger_within_days`` (only triggers fired within
    that many days before ``as_of``) or ``all: true``. With both segments and
    triggers, a customer must match **both** (a listed segment *and* a listed
    trigger: "cart abandoners among Champions"); list one of them to widen.
    Unknown trigger names are a :class:`~bmkt.errors.ConfigError` when the
    file is loaded. Unknown segment names are a ``ConfigError`` too (when
    planning, or at load time given ``known_segments``), not a warning: a
    typo would silently send nothing. A segment is known when it is a value
    of the assignment's ``segment`` column or has an ``in_<slug>`` column, so
    the assignment should carry an ``in_<slug>`` column for every segment it
    defines, even an empty one.
``template`` (required)
    A Jinja2 file name (looked up in the template folder, then in
    ``bmkt/resources/templates``) or an inline template.
``subject``
    Optional inline Jinja2 subject line.
``offer``
    Optional text handed to the template and the send list.
``variants``
    ``{name: weight}``; weights positive, normalised to sum 1. Default
    ``{A: 1}``. Arms are laid out on [0, 1) in name order.
``holdout_share``
    Share of the eligible audience held out as control, in [0, 1); default 0.10.
``priority``
    Integer; the higher wins arbitration (ties: smaller ``campaign_id``).
``send_date``
    Local calendar date of the send; default: the first day after the data
    window (``as_of`` ``2024-06-30`` sends on ``2024-07-01``).
``send_hour``
    Local hour used when a customer has no ``preferred_hour``; default 10.
``send_window``
    ``[first, last]`` local hours; preferred hours outside are clamped into
    it. Default ``[0, 23]`` (no clamping).
``uplift_top_share``
    Optional share in (0, 1]: send only to the customers whose predicted
    ``uplift`` ranks in that top share of the eligible audience.
``enabled``
    ``false`` keeps a campaign in the file without planning it.

A ``defaults:`` mapping at the top of the file applies to every campaign.

Order of decisions
------------------
For every campaign and audience member, in this order:

1. **Suppression** (customer level, reasons in :data:`SUPPRESSION_REASONS`).
2. **Global control group**: ``global_control_share`` of customers (hash of
   customer id and salt only) receive no campaign at all.
3. **Holdout**, drawn among the *eligible* (non-suppressed, not global
   control) audience, so treatment and holdout are comparable: both are
   customers we were allowed to email.
4. **Uplift targeting** (``uplift_top_share``): the top share is ranked over
   the whole eligible audience; holdout members keep their ``uplift_top``
   flag so the measurement compares like with like.
5. **Variant** (A/B arm), hashed like the holdout with another purpose key.
6. **Arbitration**, per recipient *address* (case-insensitive; two customer
   records sharing an address are one person): candidates in priority order
   (ties: campaign id, then customer) take at most ``max_per_day`` slots per
   send day (counting history ``sent`` events that day), then at most
   ``frequency_cap`` emails counting the history's ``sent`` events in the
   ``cap_days`` days before ``as_of`` **plus every email planned now**, on
   whatever send day (conservative: a plan spanning several days never
   exceeds the cap in any window ending at ``as_of`` or later). Held-out
   customers take part *as if sent*: they take the slot and count towards
   the cap, and lose to higher-priority campaigns exactly like treated
   customers. So both arms of every campaign are thinned by arbitration
   alike, and a held-out customer gets no other campaign in its place.

Customers who were not sent and not held out are listed in
:attr:`SendPlan.exclusions` with the first reason in :data:`EXCLUSION_REASONS`
(precedence order) and all their reasons; so for every campaign
``audience = sent + holdout + excluded``.

Measurement: because arbitration treats both arms alike, the sends and the
holdout of a campaign are comparable groups (``uplift_below_top`` customers
are outside both), which is what :func:`bmkt.report.incrementality`
compares.

Large bases
-----------
Above :data:`PLAN_CHUNK` customers (1M) the plan is built part by part
(about that many customers each, one part in memory at a time) and put
together. Customers are split by a hash of their address, so every decision
stays the same: suppression, global control, holdout, arm and send time are
per customer, and arbitration per address, which a part holds whole. The
result equals the one-part plan (tested). A campaign with
``uplift_top_share`` ranks its whole audience, so with one the plan is built
in one part.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from bmkt import engine
from bmkt.errors import ConfigError, DataError, data_problem
from bmkt.schema import EMAIL_REGEX, parse_as_of

log = logging.getLogger(__name__)

__all__ = [
    "TRIGGERS",
    "KINDS",
    "SUPPRESSION_REASONS",
    "EXCLUSION_REASONS",
    "SEND_COLUMNS",
    "HOLDOUT_COLUMNS",
    "Audience",
    "Campaign",
    "Exclusions",
    "SendPlan",
    "load_campaigns",
    "build_plan",
    "render_preview",
    "stable_uniform",
    "id_hashes",
    "draw_uniform",
    "id_strings",
    "slugify",
    "local_to_utc",
    "read_id_list",
]

#: Trigger names campaigns may target (produced by the triggers step).
TRIGGERS: tuple[str, ...] = (
    "cart_abandonment",
    "browse_abandonment",
    "welcome",
    "post_purchase",
    "reengagement",
    "winback",
    "anniversary",
    "replenishment",
)

#: Campaign kinds bmkt plans. Marketing only: transactional email (receipts,
#: shipping notices) is sent by the shop system and is not capped or planned.
KINDS: tuple[str, ...] = ("marketing",)

#: Customer-level reasons never to email someone, in precedence order.
SUPPRESSION_REASONS: tuple[str, ...] = (
    "forgotten",  # erased through bmkt.privacy.forget
    "suppression_list",  # on the user's global suppression list (id or address)
    "unknown_customer",  # audience member absent from the customers table
    "complained",
    "unsubscribed",
    "bounced",  # hard bounce
    "email_status_unknown",  # null or unexpected email_status
    "no_consent",  # email_consent is not exactly True
    "missing_email",
    "invalid_email",  # fails EMAIL_REGEX or starts with = + - @ (formula-like)
    "address_suppressed",  # another record with the same address opted out/bounced
)

#: Every exclusion reason, in precedence order (the first applicable is counted).
EXCLUSION_REASONS: tuple[str, ...] = SUPPRESSION_REASONS + (
    "global_control",
    "uplift_below_top",
    "daily_limit",
    "frequency_cap",
)

#: Columns of :attr:`SendPlan.sends`, in order.
SEND_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "email",
    "campaign_id",
    "variant",
    "send_at_utc",
    "segment",
    "offer",
    "rec_1",
    "rec_2",
    "rec_3",
    "trigger",
    "triggered_at",
    "abandoned_products",
    "trigger_products",
    "trigger_categories",
)

#: Columns of :attr:`SendPlan.holdouts`, in order (no email address).
HOLDOUT_COLUMNS: tuple[str, ...] = ("customer_id", "campaign_id", "segment", "uplift_top")

#: Columns of :attr:`Exclusions.rows`, in order (no email address).
EXCLUSION_COLUMNS: tuple[str, ...] = ("customer_id", "campaign_id", "reason", "reasons")

#: Separator of product ids in list-valued send-list fields.
LIST_SEPARATOR = "|"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TEMPLATE_FILE = re.compile(r"^[\w./-]+\.(html|htm|j2|jinja|jinja2|txt)$")
_EMAIL_RE = re.compile(EMAIL_REGEX)
#: First characters that make a spreadsheet read a cell as a formula.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
_BAD_STATUSES = ("complained", "unsubscribed", "bounced")
_DEFAULT_CAMPAIGNS = "campaigns.yaml"
_SEP = "\x1f"  # unit separator between the parts of a hashed key

_CAMPAIGN_FIELDS = (
    "campaign_id",
    "name",
    "description",
    "kind",
    "audience",
    "template",
    "subject",
    "offer",
    "variants",
    "holdout_share",
    "priority",
    "send_date",
    "send_hour",
    "send_window",
    "uplift_top_share",
    "enabled",
)
_AUDIENCE_FIELDS = ("segments", "triggers", "trigger_within_days", "all")
_TOP_FIELDS = ("version", "description", "defaults", "campaigns")


# --------------------------------------------------------------------------- ids and hashing


def _one_id(v: Any) -> str | None:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return None
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def id_strings(ids: Iterable[Any] | pd.Series) -> pd.Series:
    """Canonical text form of identifiers, used for matching and hashing.

    Integers (also integral floats such as ``5.0``, which pandas makes of
    integer ids with gaps) become ``"5"``; text is kept as is; nulls stay null.
    So ``5``, ``5.0`` and ``"5"`` are the same customer, whatever the dtype of
    the frame they come from.

    Parameters
    ----------
    ids : iterable or Series

    Returns
    -------
    Series of str (object dtype), aligned with ``ids`` when it is a Series.
    """
    s = ids if isinstance(ids, pd.Series) else pd.Series(list(ids), dtype=object)
    if s.dtype.kind in "iu" and isinstance(s.dtype, np.dtype):  # Arrow's decimal text: str(int)
        text = pa.array(s.to_numpy()).cast(pa.string()).to_numpy(zero_copy_only=False)
        return pd.Series(text, index=s.index, name=s.name, dtype=object)
    return s.map(_one_id).astype(object)


_INTEGRAL_TEXT = re.compile(r"^\s*([+-]?)0*(\d+?)(?:\.0*)?\s*$")


def integer_key(key: str) -> str:
    """Canonical form of an id written as text, for stores with integer ids.

    ``"0042"``, ``" 42 "`` and ``"42.0"`` all become ``"42"`` (as spreadsheets
    and CSV exports write integer ids); anything else is returned unchanged.
    """
    m = _INTEGRAL_TEXT.match(key)
    if not m:
        return key
    sign, digits = m.groups()
    return ("-" if sign == "-" and digits != "0" else "") + digits


def _blake64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def id_hashes(keys: pd.Series, salt: str) -> np.ndarray:
    """Stage 1 of :func:`stable_uniform`: ``blake2b-64(salt \\x1f id)`` per canonical id.

    One ``hashlib`` call per *distinct* id (about 0.6 s per million).
    """
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    if (codes < 0).any():
        raise DataError(f"{int((codes < 0).sum())} null customer ids cannot be hashed.")
    blake = hashlib.blake2b
    prefix = salt + _SEP
    buf = b"".join(
        blake((prefix + k).encode("utf-8"), digest_size=8).digest() for k in uniques.tolist()
    )
    h = np.frombuffer(buf, dtype=">u8").astype(np.uint64)
    return h[codes] if len(codes) else np.zeros(0, dtype=np.uint64)


def draw_uniform(base: np.ndarray, salt: str, purpose: str, campaign_id: str = "") -> np.ndarray:
    """Stage 2 of :func:`stable_uniform`: mix the id hashes with a purpose/campaign key."""
    key = np.uint64(_blake64(_SEP.join([salt, purpose, str(campaign_id)])))
    x = np.asarray(base, dtype=np.uint64) ^ key
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def stable_uniform(
    ids: Iterable[Any] | pd.Series, salt: str, purpose: str, campaign_id: str = ""
) -> np.ndarray:
    """A uniform number in [0, 1) per id, stable across runs, processes and platforms.

    Two stages, so that a million customers and many campaigns stay fast:

    1. ``h = blake2b(salt + "\\x1f" + id, digest_size=8)`` read as a big-endian
       uint64, ``id`` being :func:`id_strings` (one ``hashlib`` call per customer);
    2. ``x = h XOR k`` with ``k = blake2b(salt, purpose, campaign_id joined by
       "\\x1f", digest_size=8)``, mixed by the MurmurHash3 64-bit finaliser
       (``x ^= x >> 33; x *= 0xff51afd7ed558ccd; x ^= x >> 33;
       x *= 0xc4ceb9fe1a85ec53; x ^= x >> 33``, arithmetic mod 2**64), and
       ``u = (x >> 11) / 2**53``.

    Python's ``hash`` (randomised per process) and pandas' ``hash_pandas_object``
    (ignores its key for integer ids; an implementation detail that may change
    between versions) are deliberately not used.

    Anyone can recompute an assignment: holdout is ``u < holdout_share`` with
    ``purpose="holdout"``; the arm is found by laying the normalised weights
    (in variant-name order) on [0, 1) with ``purpose="variant"``; the global
    control is ``u < share`` with ``purpose="global_control"`` and no campaign.

    Parameters
    ----------
    ids : iterable or Series
        Customer ids.
    salt : str
        Changing it reshuffles every group (it is not a secret).
    purpose : str
        ``"holdout"``, ``"variant"``, ``"global_control"``, ...
    campaign_id : str
        Empty for campaign-independent draws.

    Returns
    -------
    numpy.ndarray of float64

    Examples
    --------
    >>> u = stable_uniform([1, 2, 3], "bmkt", "holdout", "spring")
    >>> bool(((u >= 0) & (u < 1)).all())
    True
    """
    return draw_uniform(id_hashes(id_strings(ids), salt), salt, purpose, campaign_id)


def slugify(name: str) -> str:
    """Segment name to the ``in_<slug>`` column suffix: ``"Can't Lose Them"`` -> ``cant_lose_them``.

    Lower case; apostrophes dropped; any other run of non-alphanumerics becomes ``_``.
    """
    s = re.sub(r"['’]", "", str(name).lower())
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


def _slug_variants(name: str) -> tuple[str, ...]:
    # tolerate the other common slug convention (apostrophe as a separator)
    alt = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return tuple(dict.fromkeys((slugify(name), alt)))


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Audience:
    """Who a campaign targets (see the module docstring)."""

    segments: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    trigger_within_days: int | None = None
    all: bool = False


@dataclass(frozen=True)
class Campaign:
    """One validated campaign (build it with :func:`load_campaigns`)."""

    campaign_id: str
    name: str
    audience: Audience
    template: str
    kind: str = "marketing"
    description: str | None = None
    subject: str | None = None
    offer: str | None = None
    variants: tuple[tuple[str, float], ...] = (("A", 1.0),)
    holdout_share: float = 0.10
    priority: int = 0
    send_date: date | None = None
    send_hour: int = 10
    send_window: tuple[int, int] = (0, 23)
    uplift_top_share: float | None = None
    enabled: bool = True

    @property
    def template_is_file(self) -> bool:
        """Whether :attr:`template` names a file (rather than being inline Jinja2)."""
        return bool(_TEMPLATE_FILE.match(self.template))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for manifests)."""
        d = asdict(self)
        d["audience"] = {
            "segments": list(self.audience.segments),
            "triggers": list(self.audience.triggers),
            "trigger_within_days": self.audience.trigger_within_days,
            "all": self.audience.all,
        }
        d["variants"] = dict(self.variants)
        d["send_window"] = list(self.send_window)
        d["send_date"] = self.send_date.isoformat() if self.send_date else None
        return d


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc}).") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_unknown(where: str, given: Iterable[str], valid: Sequence[str], what: str) -> None:
    bad = sorted(set(map(str, given)) - set(valid))
    if bad:
        got = bad[0] if len(bad) == 1 else bad
        raise ConfigError(
            f"{where}: unknown field {got!r}. Valid options for {what} are {sorted(valid)}. "
            f"Got {got!r}."
        )


def _name_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: 'audience.{key}' must be a list of names. Got {value!r}.")
    return tuple(dict.fromkeys(value))


def _parse_audience(where: str, raw: Any, known_segments: set[str] | None) -> Audience:
    if raw == "all":
        return Audience(all=True)
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: 'audience' must be a mapping with 'segments' and/or 'triggers' "
            f"(or 'all: true'). Got {raw!r}."
        )
    _check_unknown(where, raw, _AUDIENCE_FIELDS, "'audience'")
    segments = _name_list(where, "segments", raw.get("segments"))
    triggers = _name_list(where, "triggers", raw.get("triggers"))
    for t in triggers:
        if t not in TRIGGERS:
            raise ConfigError(
                f"{where}: Valid options for 'audience.triggers' are {list(TRIGGERS)}. Got {t!r}."
            )
    if known_segments is not None:
        _check_segments(where, segments, known_segments, set())
    within = raw.get("trigger_within_days")
    if within is not None and (not _is_int(within) or within < 0):
        raise ConfigError(
            f"{where}: 'audience.trigger_within_days' must be a whole number >= 0. Got {within!r}."
        )
    everyone = raw.get("all", False)
    if not isinstance(everyone, bool):
        raise ConfigError(f"{where}: 'audience.all' must be true or false. Got {everyone!r}.")
    if everyone and (segments or triggers):
        raise ConfigError(f"{where}: 'audience.all' cannot be combined with segments or triggers.")
    if not (everyone or segments or triggers):
        raise ConfigError(
            f"{where}: the audience is empty. List 'segments' and/or 'triggers', "
            "or set 'all: true'."
        )
    return Audience(segments, triggers, within, everyone)


def _check_segments(where: str, segments: Iterable[str], known: set[str], slugs: set[str]) -> None:
    for s in segments:
        if s in known or any(v in slugs for v in _slug_variants(s)):
            continue
        raise ConfigError(
            f"{where}: Valid options for 'audience.segments' are {sorted(known)} "
            f"(the segments of the assignment). Got {s!r}."
        )


def _parse_date(where: str, value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value if type(value) is date else value.date()  # type: ignore[attr-defined]
    try:
        ts = pd.Timestamp(str(value))
    except (TypeError, ValueError):
        ts = pd.NaT
    if ts is pd.NaT or ts != ts.normalize():
        raise ConfigError(f"{where}: 'send_date' must be a date (YYYY-MM-DD). Got {value!r}.")
    return ts.date()


def _parse_campaign(raw: Any, i: int, known_segments: set[str] | None) -> Campaign:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"campaign #{i + 1}: expected a mapping of fields. Got {raw!r}.")
    cid = raw.get("campaign_id")
    if _is_int(cid):
        cid = str(cid)
    if not isinstance(cid, str) or not _ID_PATTERN.match(cid):
        raise ConfigError(
            f"campaign #{i + 1}: 'campaign_id' is required: letters, digits, '_', '.', '-' "
            f"(starting with a letter or digit). Got {cid!r}."
        )
    where = f"campaign {cid!r}"
    _check_unknown(where, raw, _CAMPAIGN_FIELDS, "campaign fields")

    kind = raw.get("kind", "marketing")
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: Valid options for 'kind' are {list(KINDS)}. Got {kind!r}. "
            "(bmkt plans marketing email only; transactional email is sent by the shop.)"
        )
    if "audience" not in raw:
        raise ConfigError(f"{where}: 'audience' is required.")
    audience = _parse_audience(where, raw["audience"], known_segments)

    template = raw.get("template")
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(
            f"{where}: 'template' is required: a Jinja2 file name or an inline template."
        )
    name = raw.get("name", cid)
    subject = raw.get("subject")
    description = raw.get("description")
    for key, val in (("name", name), ("subject", subject), ("description", description)):
        if val is not None and not isinstance(val, str):
            raise ConfigError(f"{where}: '{key}' must be text. Got {val!r}.")
    offer = raw.get("offer")
    if offer is not None:
        if not isinstance(offer, str | int | float) or isinstance(offer, bool):
            raise ConfigError(f"{where}: 'offer' must be text. Got {offer!r}.")
        offer = str(offer)

    variants_raw = raw.get("variants", {"A": 1})
    if not isinstance(variants_raw, Mapping) or not variants_raw:
        raise ConfigError(
            f"{where}: 'variants' must be a mapping of variant name to weight. Got {variants_raw!r}."
        )
    for vname, w in variants_raw.items():
        if not isinstance(vname, str) or not _ID_PATTERN.match(vname):
            raise ConfigError(
                f"{where}: variant names must be letters, digits, '_', '.', '-'. Got {vname!r}."
            )
        if not _is_number(w) or w <= 0:
            raise ConfigError(
                f"{where}: variant weights must be positive numbers. Got {vname!r}: {w!r}."
            )
    total = float(sum(variants_raw.values()))
    variants = tuple((v, float(variants_raw[v]) / total) for v in sorted(variants_raw))

    holdout = raw.get("holdout_share", 0.10)
    if not _is_number(holdout) or not 0 <= holdout < 1:
        raise ConfigError(f"{where}: 'holdout_share' must be a number in [0, 1). Got {holdout!r}.")
    priority = raw.get("priority", 0)
    if not _is_int(priority):
        raise ConfigError(f"{where}: 'priority' must be a whole number. Got {priority!r}.")
    send_hour = raw.get("send_hour", 10)
    if not _is_int(send_hour) or not 0 <= send_hour <= 23:
        raise ConfigError(f"{where}: 'send_hour' must be a whole hour 0-23. Got {send_hour!r}.")
    window = raw.get("send_window", [0, 23])
    if (
        not isinstance(window, list | tuple)
        or len(window) != 2
        or not all(_is_int(h) and 0 <= h <= 23 for h in window)
        or window[0] > window[1]
    ):
        raise ConfigError(
            f"{where}: 'send_window' must be [first, last] whole hours 0-23, first <= last. "
            f"Got {window!r}."
        )
    if not window[0] <= send_hour <= window[1]:
        raise ConfigError(
            f"{where}: 'send_hour' {send_hour} is outside 'send_window' {list(window)}."
        )
    top = raw.get("uplift_top_share")
    if top is not None and (not _is_number(top) or not 0 < top <= 1):
        raise ConfigError(f"{where}: 'uplift_top_share' must be a number in (0, 1]. Got {top!r}.")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: 'enabled' must be true or false. Got {enabled!r}.")
    return Campaign(
        campaign_id=cid,
        name=name,
        description=description,
        kind=kind,
        audience=audience,
        template=template,
        subject=subject,
        offer=offer,
        variants=variants,
        holdout_share=float(holdout),
        priority=int(priority),
        send_date=_parse_date(where, raw.get("send_date")),
        send_hour=int(send_hour),
        send_window=(int(window[0]), int(window[1])),
        uplift_top_share=None if top is None else float(top),
        enabled=enabled,
    )


def load_campaigns(
    config: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    known_segments: Iterable[str] | None = None,
) -> list[Campaign]:
    """Load and validate a campaign configuration.

    Parameters
    ----------
    config : path, mapping, list or None
        A YAML file, a parsed mapping (``{"campaigns": [...], "defaults": {...}}``),
        a list of campaign mappings, or ``None`` for the bundled example
        ``bmkt/resources/campaigns.yaml``. A list of :class:`Campaign` is
        returned as is.
    known_segments : iterable of str, optional
        When given, audience segments must be among them. Without it,
        segments are checked against the assignment in :func:`build_plan`.

    Returns
    -------
    list of Campaign
        In file order.

    Raises
    ------
    ConfigError
        Naming the campaign and the field: unknown fields, unknown trigger or
        segment names, non-positive variant weights, ``holdout_share`` outside
        [0, 1), duplicate ids, unreadable YAML.

    Examples
    --------
    >>> cs = load_campaigns({"campaigns": [{"campaign_id": "c1", "template": "x.html",
    ...     "audience": {"triggers": ["welcome"]}, "variants": {"A": 3, "B": 1}}]})
    >>> cs[0].variants
    (('A', 0.75), ('B', 0.25))
    """
    if isinstance(config, Sequence) and config and all(isinstance(c, Campaign) for c in config):
        return list(config)  # type: ignore[arg-type]
    if config is None:
        text = resources.files("bmkt").joinpath("resources", _DEFAULT_CAMPAIGNS).read_text()
        raw: Any = _parse_yaml(text, f"bmkt/resources/{_DEFAULT_CAMPAIGNS}")
        source = f"bmkt/resources/{_DEFAULT_CAMPAIGNS}"
    elif isinstance(config, Mapping | list | tuple):
        raw, source = config, "campaign config"
    else:
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"campaign config {str(path)!r}: cannot read ({exc}).") from None
        raw, source = _parse_yaml(text, str(path)), str(path)

    defaults: Mapping[str, Any] = {}
    if isinstance(raw, Mapping):
        _check_unknown(source, raw, _TOP_FIELDS, "the top level")
        defaults = raw.get("defaults") or {}
        if not isinstance(defaults, Mapping):
            raise ConfigError(f"{source}: 'defaults' must be a mapping. Got {defaults!r}.")
        if "campaign_id" in defaults:
            raise ConfigError(f"{source}: 'defaults' cannot set 'campaign_id'.")
        _check_unknown(f"{source}: defaults", defaults, _CAMPAIGN_FIELDS, "campaign fields")
        raw = raw.get("campaigns")
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(f"{source}: expected a non-empty list of campaigns under 'campaigns'.")
    known = None if known_segments is None else set(known_segments)
    campaigns = [
        _parse_campaign({**defaults, **c} if isinstance(c, Mapping) else c, i, known)
        for i, c in enumerate(raw)
    ]
    seen: set[str] = set()
    for c in campaigns:
        if c.campaign_id in seen:
            raise ConfigError(f"{source}: campaign_id {c.campaign_id!r} is used twice.")
        seen.add(c.campaign_id)
    return campaigns


# --------------------------------------------------------------------------- results


@dataclass
class Exclusions:
    """Why audience members were not sent.

    Attributes
    ----------
    rows : DataFrame
        One row per excluded (customer, campaign): ``customer_id``,
        ``campaign_id``, ``reason`` (the first in :data:`EXCLUSION_REASONS`)
        and ``reasons`` (every applicable reason, ``;``-separated, in
        precedence order).
    suppressed : DataFrame
        Every customer of the base who may not be emailed at all, whatever
        the campaign: ``customer_id``, ``reason``, ``reasons``.
    """

    rows: pd.DataFrame
    suppressed: pd.DataFrame

    @property
    def counts(self) -> pd.DataFrame:
        """Excluded customers per campaign and (first) reason, in precedence order."""
        if self.rows.empty:
            return pd.DataFrame({"campaign_id": [], "reason": [], "customers": []}).astype(
                {"campaign_id": object, "reason": object, "customers": "int64"}
            )
        reason = pd.Categorical(self.rows["reason"], categories=EXCLUSION_REASONS, ordered=True)
        out = (
            self.rows.assign(reason=reason)
            .groupby(["campaign_id", "reason"], observed=True)
            .size()
            .rename("customers")
            .reset_index()
            .sort_values(["campaign_id", "reason"], kind="mergesort")
        )
        out["reason"] = out["reason"].astype(str)
        return out.reset_index(drop=True)

    def by_reason(self) -> dict[str, int]:
        """Excluded (customer, campaign) pairs per first reason, in precedence order."""
        vc = self.rows["reason"].value_counts() if len(self.rows) else pd.Series(dtype=int)
        return {r: int(vc[r]) for r in EXCLUSION_REASONS if r in vc.index}


@dataclass
class SendPlan:
    """The result of :func:`build_plan`.

    Attributes
    ----------
    sends : DataFrame
        One row per email to send, columns :data:`SEND_COLUMNS`
        (``send_at_utc`` naive UTC), sorted by campaign and customer.
    holdouts : DataFrame
        Held-out customers per campaign (never sent), :data:`HOLDOUT_COLUMNS`.
    exclusions : Exclusions
        Who was not sent and why.
    global_control : DataFrame
        Non-suppressed customers of the base in the global control group
        (``customer_id``, ``segment``); empty when the share is 0.
    params : dict
        Parameters and counts of the run (JSON-ready; no personal data).
    """

    sends: pd.DataFrame
    holdouts: pd.DataFrame
    exclusions: Exclusions
    global_control: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Per campaign: audience, excluded, holdout, sent (``audience = sum of the rest``)."""
        ids = self.params.get("campaign_ids", [])
        sent = self.sends.groupby("campaign_id").size()
        held = self.holdouts.groupby("campaign_id").size()
        excl = self.exclusions.rows.groupby("campaign_id").size()
        out = pd.DataFrame(index=pd.Index(ids, name="campaign_id"))
        out["sent"] = sent.reindex(out.index).fillna(0).astype("int64")
        out["holdout"] = held.reindex(out.index).fillna(0).astype("int64")
        out["excluded"] = excl.reindex(out.index).fillna(0).astype("int64")
        out["audience"] = out.sum(axis=1)
        return out[["audience", "excluded", "holdout", "sent"]]


# --------------------------------------------------------------------------- inputs


def read_id_list(source: str | os.PathLike[str]) -> list[str]:
    """Read ids (or addresses) from a CSV with a ``customer_id`` column or a text file.

    A CSV whose header holds ``customer_id`` and/or ``email`` is read by those
    columns (other columns are ignored); otherwise every non-empty line that
    does not start with ``#`` is one entry. Values are stripped of
    surrounding blanks; empty cells are skipped.

    Raises
    ------
    ConfigError
        When the file cannot be read.
    """
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"id list {str(path)!r}: cannot read ({exc}).") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return []
    header = [h.strip().strip('"') for h in lines[0].split(",")]
    columns = [c for c in ("customer_id", "email") if c in header]
    if columns:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        frame.columns = [str(c).strip() for c in frame.columns]
        values = [v.strip() for c in columns for v in frame[c].tolist()]
        return [v for v in values if v and not v.startswith("#")]
    return lines


def _suppression_entries(
    suppression: Iterable[Any] | str | os.PathLike[str] | None,
) -> tuple[set[str], set[str], str | None]:
    """Split a suppression list into (id keys, lower-case addresses, source)."""
    if suppression is None:
        return set(), set(), None
    if isinstance(suppression, str | os.PathLike):
        path = Path(suppression)
        if not path.is_file():
            raise ConfigError(f"suppression list {str(path)!r}: no such file.")
        values: list[Any] = read_id_list(path)
        source: str | None = str(path)
    else:
        values, source = list(suppression), "iterable"
    keys = [k for k in id_strings(pd.Series(values, dtype=object)).tolist() if k is not None]
    addresses = {k.strip().lower() for k in keys if "@" in k}
    ids = {k.strip() for k in keys if "@" not in k}
    return ids, addresses, source


def _forgotten_keys(forgotten: str | os.PathLike[str] | None) -> tuple[set[str], str | None]:
    from bmkt.privacy import default_suppression_path, read_suppression

    if forgotten is None:
        path = default_suppression_path()
        if not path.is_file():
            log.info("no forgotten-customer suppression file at %s", path)
            return set(), None
    else:
        path = Path(forgotten)
        if not path.is_file():
            raise ConfigError(f"forgotten-customer suppression file {str(path)!r}: no such file.")
    return set(read_suppression(path)), str(path)


def _to_frame(data: Any, what: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    from ibis.expr.types import Table

    if isinstance(data, Table):
        if columns is not None:
            data = data.select([c for c in columns if c in data.columns])
        return engine.to_pandas(data)
    if isinstance(data, pd.DataFrame):
        return data
    raise ConfigError(
        f"{what}: expected a pandas DataFrame or an Ibis table, got {type(data).__name__}."
    )


def _require(frame: pd.DataFrame, table: str, columns: Sequence[str]) -> None:
    for c in columns:
        if c not in frame.columns:
            raise DataError(
                f"{table}.{c}: required column is missing "
                f"(columns present: {', '.join(map(str, frame.columns))})"
            )


def _naive_utc(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s, errors="coerce", utc=False)
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s


def _true_only(s: pd.Series) -> np.ndarray:
    """True only where the value is a boolean True (null, text, 1 -> False)."""
    if s.dtype == bool:
        return s.to_numpy()
    if isinstance(s.dtype, pd.BooleanDtype):
        return s.fillna(False).to_numpy(dtype=bool)
    values = s.to_numpy(dtype=object)
    is_true = np.fromiter((v is True or v is np.True_ for v in values), bool, len(values))
    odd = [v for v in values if not (isinstance(v, bool | np.bool_) or _is_missing(v))]
    if odd:
        log.warning(
            "customers.email_consent: %d values are not booleans (e.g. %r); they count as "
            "no consent",
            len(odd),
            odd[0],
        )
    return is_true


def _prepare_customers(
    customers: pd.DataFrame,
    supp_ids: set[str],
    supp_addresses: set[str],
    forgotten: set[str],
) -> pd.DataFrame:
    """Customer table with ``_key``, ``_addr`` and suppression ``reason``/``reasons``."""
    _require(customers, "customers", ("customer_id", "email", "email_status", "email_consent"))
    cols = ["customer_id", "email", "email_status", "email_consent"]
    cols += ["timezone"] if "timezone" in customers.columns else []
    cust = customers[cols].copy()
    if "timezone" not in cust.columns:
        cust["timezone"] = None
    cust["_key"] = id_strings(cust["customer_id"]).to_numpy()
    if cust["_key"].isna().any():
        n = int(cust["_key"].isna().sum())
        raise data_problem("customers", "customer_id", n, "is null")
    dup = cust["_key"].duplicated(keep=False)
    if dup.any():
        raise data_problem(
            "customers",
            "customer_id",
            int(dup.sum()),
            "is duplicated",
            sorted(cust.loc[dup, "customer_id"].unique().tolist())[:5],
        )
    # address checks on the text as given (non-text is no address)
    present_a, valid_a, addr_a = _addresses(cust["email"])
    present = pd.Series(present_a, index=cust.index, dtype=bool)
    valid = pd.Series(valid_a, index=cust.index, dtype=bool)
    addr = pd.Series(addr_a, index=cust.index, dtype=object)
    # statuses take a handful of values: normalise each distinct one once
    codes, uniques = pd.factorize(cust["email_status"])
    norm = pd.Series(uniques).astype("string").str.strip().str.lower().astype(object)
    norm = np.append(norm.where(norm.notna(), None).to_numpy(dtype=object), None)
    status = pd.Series(norm[codes], index=cust.index, dtype=object)
    consent = _true_only(cust["email_consent"])
    bad_addr = set(addr[status.isin(_BAD_STATUSES) & addr.notna()])
    masks = {
        "forgotten": cust["_key"].isin(forgotten).to_numpy(),
        "suppression_list": (cust["_key"].isin(supp_ids) | addr.isin(supp_addresses)).to_numpy(),
        "unknown_customer": np.zeros(len(cust), dtype=bool),
        "complained": (status == "complained").to_numpy(),
        "unsubscribed": (status == "unsubscribed").to_numpy(),
        "bounced": (status == "bounced").to_numpy(),
        "email_status_unknown": (~status.isin(("subscribed",) + _BAD_STATUSES)).to_numpy(),
        "no_consent": ~consent,
        "missing_email": ~present.to_numpy(dtype=bool),
        "invalid_email": (present & ~valid).to_numpy(dtype=bool),
        "address_suppressed": (addr.isin(bad_addr) & ~status.isin(_BAD_STATUSES)).to_numpy(),
    }
    assert tuple(masks) == SUPPRESSION_REASONS
    cust["_addr"] = addr.to_numpy()
    cust["reason"], cust["reasons"] = _reason_columns(masks, len(cust))
    return cust


def _address_of(v: Any) -> tuple[bool, bool, str | None]:
    """One value: present (non-blank text), valid, and the address (stripped, lower case)."""
    stripped = v.strip() if isinstance(v, str) else ""
    ok = bool(stripped) and _EMAIL_RE.match(v) is not None and not v.startswith(FORMULA_PREFIXES)
    return bool(stripped), ok, stripped.lower() if ok else None


#: Text of printable ASCII only (no blank, no control character): ``str.strip`` leaves it
#: as it is, and the address pattern means the same to Python's ``re`` and to RE2.
_PRINTABLE_ASCII = r"^[!-~]+$"


def _addresses(email: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per value: present (non-blank text), valid, and the address (stripped, lower case).

    :func:`_address_of` of every value. The address is None unless valid;
    arbitration and shared-address suppression read it. Values of printable
    ASCII (nearly every address) are checked by Arrow's compute functions
    (1M addresses: 0.3 s instead of 3 s of Python); nulls, other text and
    values that are not text go through :func:`_address_of` one by one.
    """
    values = email.to_numpy(dtype=object)
    n = len(values)
    present = np.zeros(n, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    addr = np.full(n, None, dtype=object)
    # only when every value is text or null (Arrow would also take bytes, say, as text)
    if n and pd.api.types.infer_dtype(values, skipna=True) == "string":
        text = pa.array(values, type=pa.string(), from_pandas=True)
        simple = pc.fill_null(pc.match_substring_regex(text, _PRINTABLE_ASCII), False)
        ok = pc.and_(simple, pc.match_substring_regex(text, EMAIL_REGEX))
        for prefix in FORMULA_PREFIXES:
            ok = pc.and_not(ok, pc.starts_with(text, prefix))
        ok = pc.fill_null(ok, False)
        fast = simple.to_numpy(zero_copy_only=False)
        present[fast] = True
        valid = ok.to_numpy(zero_copy_only=False).copy()
        lowered = pc.ascii_lower(pc.filter(text, ok)).to_numpy(zero_copy_only=False)
        addr[valid] = lowered
        slow = np.flatnonzero(~fast & ~pd.isna(values))  # nulls: not present, as set
    else:
        slow = np.arange(n)
    for i in slow.tolist():
        present[i], valid[i], addr[i] = _address_of(values[i])
    return present, valid, addr


def _reason_columns(masks: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """First applicable reason (or None) and all reasons joined by ``;``."""
    first = np.full(n, None, dtype=object)
    joined = np.full(n, "", dtype=object)
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        first[(first == None) & m] = name  # noqa: E711 - elementwise on object array
        joined[m] = joined[m] + (name + ";")
    joined = np.array([s[:-1] if s else None for s in joined], dtype=object)
    return first, joined


def _prepare_assignment(assignment: pd.DataFrame | None) -> pd.DataFrame | None:
    if assignment is None:
        return None
    frame = _to_frame(assignment, "assignment")
    if "customer_id" in frame.columns:
        frame = frame.set_index("customer_id")
    _require(frame, "assignment", ("segment",))
    out = frame.reset_index(names="_source_id")
    out["_key"] = id_strings(out["_source_id"]).to_numpy()
    dup = out["_key"].duplicated(keep=False)
    if dup.any():
        raise data_problem(
            "assignment",
            "customer_id",
            int(dup.sum()),
            "is duplicated (one primary segment per customer)",
            out.loc[dup, "_source_id"].unique().tolist()[:5],
        )
    return out


def _prepare_triggers(triggers: pd.DataFrame | None, end: pd.Timestamp) -> pd.DataFrame | None:
    if triggers is None:
        return None
    frame = _to_frame(triggers, "triggers")
    _require(frame, "triggers", ("customer_id", "trigger", "triggered_at"))
    used = ("customer_id", "trigger", "triggered_at", "products", "categories")
    out = frame[[c for c in used if c in frame.columns]].copy()  # what campaigns read
    out["triggered_at"] = _naive_utc(out["triggered_at"])
    out["_key"] = id_strings(out["customer_id"]).to_numpy()
    later = out["triggered_at"] >= end
    if later.any():
        log.info("ignoring %d triggers fired at or after as_of", int(later.sum()))
    out = out[~later & out["triggered_at"].notna() & out["_key"].notna()]
    unknown = sorted(set(out["trigger"].dropna().astype(str)) - set(TRIGGERS))
    if unknown:
        log.info("ignoring triggers no campaign can target: %s", unknown)
    # per customer, most recent first; on equal times, trigger name decides (deterministic).
    # Customers come in order of first appearance (only the order within one counts).
    customer = pd.factorize(out["_key"])[0]
    when = out["triggered_at"].to_numpy().view(np.int64)
    name, names = pd.factorize(out["trigger"], sort=True)
    name = np.where(name < 0, len(names), name)  # a null name sorts last
    return out.iloc[np.lexsort((name, -when, customer))]


def _join_list(v: Any) -> str | None:
    if isinstance(v, list | tuple | np.ndarray | pd.Series | set | frozenset):
        items = list(v)
        if isinstance(v, set | frozenset):
            items = sorted(items, key=str)
        keys = [k for k in map(_one_id, items) if k is not None]  # id_strings, item by item
        return LIST_SEPARATOR.join(keys) if keys else None
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return str(v)


def _lexsort(keys: list[np.ndarray]) -> np.ndarray:
    """``np.lexsort(keys)``, without sorting when the rows already come in that order.

    (Recommendations usually arrive sorted by customer and rank.)
    """
    n = len(keys[0])
    if n > 1 and not any(k.dtype.kind == "f" and np.isnan(k).any() for k in keys):
        in_order = np.ones(n - 1, dtype=bool)
        tied = np.ones(n - 1, dtype=bool)
        for k in reversed(keys):  # the last key is the primary one
            in_order &= ~(tied & (k[:-1] > k[1:]))
            tied &= k[:-1] == k[1:]
        if in_order.all():
            return np.arange(n)
    return np.lexsort(keys)


#: The send list's personalised-content columns (product ids, best first).
REC_COLUMNS = ("rec_1", "rec_2", "rec_3")


def _recommendation_columns(recommendations: pd.DataFrame | None) -> pd.DataFrame:
    # as below (pivot + reindex): a column nobody fills is float NaN, also with no rows
    empty = pd.DataFrame(
        {"_key": pd.Series(dtype=object), **{c: pd.Series(dtype="float64") for c in REC_COLUMNS}}
    )
    if recommendations is None:
        return empty
    rec = _to_frame(recommendations, "recommendations")
    _require(rec, "recommendations", ("customer_id", "product_id"))
    if rec.empty:
        return empty
    keys, key_text = _id_codes(rec["customer_id"])
    products, product_text = _id_codes(rec["product_id"])
    # order within a customer: rank, score (descending), then product id as text
    product_order = np.empty(len(product_text), dtype=np.int64)
    product_order[np.argsort(product_text, kind="stable")] = np.arange(len(product_text))
    prod = np.where(products >= 0, product_order[products], -1)
    rank = rec["rank"].to_numpy() if "rank" in rec.columns else None
    score = rec["score"].to_numpy() if "score" in rec.columns else None
    if (rank is None or rank.dtype.kind in "iuf") and (score is None or score.dtype.kind == "f"):
        # a stable sort on numbers, as the frame sort: NaN ranks and scores last
        sort_keys = [prod] + ([-score] if score is not None else [])
        sort_keys += ([rank] if rank is not None else []) + [keys]
        order = _lexsort(sort_keys)
    else:
        work = pd.DataFrame({"_k": keys, "_p": prod})
        by, asc = ["_k"], [True]
        if rank is not None:
            work["rank"] = rank
            by, asc = by + ["rank"], asc + [True]
        if score is not None:
            work["score"] = score
            by, asc = by + ["score"], asc + [False]
        work = work.sort_values(by + ["_p"], ascending=asc + [True], kind="mergesort")
        order = work.index.to_numpy()
    k, p = keys[order], prod[order]
    listed_ok = (k >= 0) & (p >= 0)
    k, p = k[listed_ok], p[listed_ok]
    # the first of each (customer, product), then its place within the customer
    pair = k.astype(np.int64) * max(len(product_text), 1) + p
    first = np.zeros(len(k), dtype=bool)
    first[np.unique(pair, return_index=True)[1]] = True
    k, p = k[first], p[first]
    new_k = np.ones(len(k), dtype=bool)
    new_k[1:] = k[1:] != k[:-1]
    starts = np.flatnonzero(new_k)
    n = np.arange(len(k)) - np.repeat(starts, np.diff(np.append(starts, len(k))))
    listed = np.unique(k)
    row = np.searchsorted(listed, k)
    by_order = np.empty(len(product_text), dtype=np.int64)
    by_order[product_order] = np.arange(len(product_text))
    text = product_text[by_order[p]]
    wide = {"_key": key_text[listed]}
    for i, col in enumerate(REC_COLUMNS):
        at = n == i
        if at.any():
            values = np.full(len(listed), np.nan, dtype=object)
            values[row[at]] = text[at]
        else:  # as pivot + reindex: a column nobody fills is float NaN
            values = np.full(len(listed), np.nan)
        wide[col] = values
    return pd.DataFrame(wide)


def _id_codes(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A code per row for the canonical text of the id (:func:`id_strings`); -1 for null.

    Returns ``(codes, texts)``: ``texts[codes]`` is the canonical text of each row.
    """
    if isinstance(ids.dtype, np.dtype) and ids.dtype.kind in "iu":
        codes, uniques = pd.factorize(ids.to_numpy())
        return codes, id_strings(pd.Series(uniques)).to_numpy(dtype=object)
    codes, uniques = pd.factorize(id_strings(ids).to_numpy(dtype=object))
    return codes, np.asarray(uniques, dtype=object)


def _left_join(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """``left.merge(right, on="_key", how="left")`` for a ``right`` with unique keys.

    (A reindex of ``right`` by ``left``'s keys: the same rows, values and
    missing-value upcasts, without the merge's factorisation of both sides.)
    """
    found = right.set_index("_key").reindex(left["_key"].to_numpy())
    out = left.reset_index(drop=True)
    for col in found.columns:
        out[col] = found[col].to_numpy()
    return out


def _features_frame(features: pd.DataFrame | None) -> pd.DataFrame:
    if features is None:
        return pd.DataFrame(columns=["_key", "preferred_hour", "uplift", "send_timezone"])
    f = _to_frame(features, "features")
    if "customer_id" in f.columns:
        f = f.set_index("customer_id")
    index = f.index
    ids = (  # integer ids take id_strings' vectorised path
        pd.Series(index.to_numpy())
        if isinstance(index.dtype, np.dtype) and index.dtype.kind in "iu"
        else pd.Series(index, dtype=object)
    )
    out = pd.DataFrame({"_key": id_strings(ids).to_numpy()})
    for col in ("preferred_hour", "uplift"):
        out[col] = pd.to_numeric(f[col], errors="coerce").to_numpy() if col in f.columns else np.nan
    if "send_time_source" in f.columns:  # a population fallback is no preference
        fallback = (f["send_time_source"] == "fallback").to_numpy()
        out.loc[fallback, "preferred_hour"] = np.nan
    zone = f["send_timezone"] if "send_timezone" in f.columns else pd.Series(None, index=f.index)
    out["send_timezone"] = zone.astype(object).where(zone.notna(), None).to_numpy()
    dup = out["_key"].duplicated(keep=False)
    if dup.any():
        raise data_problem(
            "features",
            "customer_id",
            int(dup.sum()),
            "is duplicated",
            out.loc[dup, "_key"][:5].tolist(),
        )
    return out


def _history(
    email_events: Any, cust: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """``sent`` events in [start, end) with the recipient address (``_addr``, ``_day``)."""
    cols = ["customer_id", "occurred_at", "event_type"]
    if email_events is None:
        return pd.DataFrame({"_addr": [], "_day": pd.to_datetime([])})
    from ibis.expr.types import Table

    if isinstance(email_events, Table):
        t = email_events
        t = t.filter((t.event_type == "sent") & (t.occurred_at >= start) & (t.occurred_at < end))
        ev = engine.to_pandas(t.select(cols))
    else:
        ev = _to_frame(email_events, "email_events")
        _require(ev, "email_events", cols)
        ev = ev.loc[ev["event_type"] == "sent", cols].copy()
    ev["occurred_at"] = _naive_utc(ev["occurred_at"])
    ev = ev[(ev["occurred_at"] >= start) & (ev["occurred_at"] < end)]
    ev["_key"] = id_strings(ev["customer_id"]).to_numpy()
    # the recipient's address (customer keys are unique): an inner join in event order
    pos = pd.Index(cust["_key"].to_numpy()).get_indexer(ev["_key"].to_numpy())
    addr = np.where(pos >= 0, cust["_addr"].to_numpy(dtype=object)[pos], None)
    ev = ev.assign(_addr=addr)[pd.notna(addr)]
    return pd.DataFrame(
        {"_addr": ev["_addr"].to_numpy(), "_day": ev["occurred_at"].dt.normalize().to_numpy()}
    )


# --------------------------------------------------------------------------- send times


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def local_to_utc(local: pd.Series, timezones: pd.Series) -> pd.Series:
    """Convert naive local wall-clock times in per-row IANA zones to naive UTC.

    Missing or unknown zones are taken as UTC. DST: a wall-clock time that
    does not exist (spring forward) moves forward to the first valid instant
    (``nonexistent="shift_forward"``); an ambiguous one (fall back) is read
    as standard time, the later of the two instants (``ambiguous=False``).

    Parameters
    ----------
    local : Series of datetime64
        Naive local times.
    timezones : Series of str
        IANA names (``"Europe/Berlin"``), aligned with ``local``.

    Returns
    -------
    Series of datetime64 (naive UTC), aligned with ``local``.

    Examples
    --------
    >>> t = local_to_utc(pd.Series(pd.to_datetime(["2024-07-01 09:00"])), pd.Series(["Europe/Berlin"]))
    >>> str(t.iloc[0])
    '2024-07-01 07:00:00'
    """
    local = pd.Series(pd.to_datetime(local), index=local.index)
    names = pd.Series(timezones, index=local.index).astype(object).fillna("")
    # send times take few distinct values per zone: convert each (zone, time) pair once
    zone_code, zone_names = pd.factorize(names, sort=True)
    time_code, times = pd.factorize(local.to_numpy(), use_na_sentinel=False)
    pair_code, pairs = pd.factorize(zone_code.astype(np.int64) * len(times) + time_code)
    pair_zone, pair_time = pairs // max(len(times), 1), pairs % max(len(times), 1)
    converted = np.full(len(pairs), np.datetime64("NaT"), dtype="datetime64[ns]")
    unknown: list[str] = []
    for z, name in enumerate(zone_names):
        zone = _zone(name)
        if zone is None and name:
            unknown.append(str(name))
        sel = np.flatnonzero(pair_zone == z)
        vals = pd.DatetimeIndex(times[pair_time[sel]])
        if zone is not None:
            vals = vals.tz_localize(
                zone, nonexistent="shift_forward", ambiguous=np.zeros(len(vals), dtype=bool)
            )
            vals = vals.tz_convert("UTC").tz_localize(None)
        converted[sel] = vals.as_unit("ns").to_numpy()
    out = pd.Series(converted[pair_code], index=local.index, dtype="datetime64[ns]")
    if unknown:
        log.warning("unknown time zones treated as UTC: %s", sorted(unknown)[:5])
    return out


# --------------------------------------------------------------------------- the plan


def _segment_info(assign: pd.DataFrame | None) -> tuple[set[str], set[str]]:
    if assign is None:
        return set(), set()
    known = {str(s) for s in assign["segment"].dropna().unique()}
    slugs = {c[3:] for c in assign.columns if isinstance(c, str) and c.startswith("in_")}
    return known, slugs


def _audience(
    c: Campaign,
    cust: pd.DataFrame,
    assign: pd.DataFrame | None,
    trig: pd.DataFrame | None,
    end: pd.Timestamp,
) -> pd.DataFrame:
    """Audience members of one campaign: ``_key``, ``_source_id`` and trigger context."""
    a = c.audience
    frame: pd.DataFrame | None = None
    if a.all:
        frame = pd.DataFrame({"_key": cust["_key"].to_numpy(), "_source_id": cust["customer_id"]})
    if a.segments:
        assert assign is not None
        mask = np.zeros(len(assign), dtype=bool)
        for s in a.segments:
            mask |= (assign["segment"].astype(object) == s).to_numpy()
            for slug in _slug_variants(s):
                col = f"in_{slug}"
                if col in assign.columns:
                    mask |= assign[col].fillna(False).astype(bool).to_numpy()
        frame = assign.loc[mask, ["_key", "_source_id"]]
    if a.triggers:
        if trig is None:
            t = pd.DataFrame(columns=["_key", "customer_id", "trigger", "triggered_at"])
        else:
            t = trig[trig["trigger"].isin(a.triggers)]
            if a.trigger_within_days is not None:
                t = t[t["triggered_at"] >= end - pd.Timedelta(days=a.trigger_within_days)]
        t = t.drop_duplicates("_key", keep="first")
        ctx = pd.DataFrame(
            {
                "_key": t["_key"].to_numpy(),
                "_trig_source_id": t["customer_id"].to_numpy(),
                "trigger": t["trigger"].astype(object).to_numpy(),
                "triggered_at": pd.to_datetime(t["triggered_at"]).to_numpy(),
                "trigger_products": (
                    t["products"].map(_join_list).to_numpy() if "products" in t else None
                ),
                "trigger_categories": (
                    t["categories"].map(_join_list).to_numpy() if "categories" in t else None
                ),
            }
        )
        if frame is None:
            frame = ctx.rename(columns={"_trig_source_id": "_source_id"})
        else:
            frame = frame.merge(ctx, on="_key", how="inner").drop(columns="_trig_source_id")
    assert frame is not None
    frame = frame.drop_duplicates("_key").reset_index(drop=True)
    for col in ("trigger", "triggered_at", "trigger_products", "trigger_categories"):
        if col not in frame.columns:
            frame[col] = pd.NaT if col == "triggered_at" else None
    return frame


def _cumcount(codes: np.ndarray) -> np.ndarray:
    """How many earlier elements share each element's code (``groupby().cumcount()``)."""
    order = np.argsort(codes, kind="stable")
    ranked = codes[order]
    new = np.ones(len(ranked), dtype=bool)
    new[1:] = ranked[1:] != ranked[:-1]
    starts = np.flatnonzero(new)
    out = np.empty(len(codes), dtype=np.int64)
    out[order] = np.arange(len(codes)) - np.repeat(starts, np.diff(np.append(starts, len(codes))))
    return out


def _arbitrate(
    cand: pd.DataFrame,
    history: pd.DataFrame,
    max_per_day: int,
    frequency_cap: int,
) -> np.ndarray:
    """Reason (None = send, ``daily_limit``, ``frequency_cap``) per candidate row."""
    if cand.empty:
        return np.zeros(0, dtype=object)
    if cand["_addr"].isna().any():  # not from build_plan (its candidates have addresses)
        return _arbitrate_frames(cand, history, max_per_day, frequency_cap)
    # candidates in priority order (ties: campaign id, then customer key as text)
    campaign = pd.factorize(cand["campaign_id"], sort=True)[0]
    key = pd.factorize(cand["_key"], sort=True)[0]
    order = np.lexsort((key, campaign, -cand["_priority"].to_numpy(dtype=np.int64)))
    # recipients and days as codes shared with the history
    n = len(cand)
    addr = pd.factorize(
        np.concatenate([cand["_addr"].to_numpy(object), history["_addr"].to_numpy(object)])
    )[0]
    days = np.concatenate(
        [
            cand["_day"].to_numpy(dtype="datetime64[ns]"),
            history["_day"].to_numpy(dtype="datetime64[ns]"),
        ]
    )
    day = pd.factorize(days.view(np.int64))[0]
    n_days = int(day.max()) + 1
    slot = addr.astype(np.int64) * n_days + day
    n_addr = int(addr.max()) + 1
    day_used = pd.Series(slot[n:]).value_counts()
    window_used = np.bincount(addr[n:], minlength=n_addr)
    c_slot, c_addr = slot[:n][order], addr[:n][order]
    day_rank = _cumcount(c_slot) + day_used.reindex(c_slot, fill_value=0).to_numpy(np.int64)
    reason = np.full(n, None, dtype=object)
    lost_day = day_rank >= max_per_day
    reason[lost_day] = "daily_limit"
    keep = ~lost_day
    rank = _cumcount(c_addr[keep]) + window_used[c_addr[keep]]
    sub = reason[keep]
    sub[rank >= frequency_cap] = "frequency_cap"
    reason[keep] = sub
    out = np.empty(n, dtype=object)
    out[order] = reason
    return out


def _arbitrate_frames(
    cand: pd.DataFrame,
    history: pd.DataFrame,
    max_per_day: int,
    frequency_cap: int,
) -> np.ndarray:
    """:func:`_arbitrate` with frame operations (candidates without an address)."""
    order = cand.sort_values(
        ["_priority", "campaign_id", "_key"], ascending=[False, True, True], kind="mergesort"
    )
    day_used = history.groupby(["_addr", "_day"]).size().rename("_day_used")
    window_used = history.groupby("_addr").size().rename("_window_used")
    o = order[["_addr", "_day"]].join(day_used, on=["_addr", "_day"]).join(window_used, on="_addr")
    day_rank = order.groupby(["_addr", "_day"], sort=False).cumcount().to_numpy()
    day_rank = day_rank + o["_day_used"].fillna(0).to_numpy(dtype=np.int64)
    reason = np.full(len(order), None, dtype=object)
    lost_day = day_rank >= max_per_day
    reason[lost_day] = "daily_limit"
    keep = ~lost_day
    kept = order[keep]
    rank = kept.groupby("_addr", sort=False).cumcount().to_numpy()
    rank = rank + o.loc[keep, "_window_used"].fillna(0).to_numpy(dtype=np.int64)
    sub = reason[keep]
    sub[rank >= frequency_cap] = "frequency_cap"
    reason[keep] = sub
    return pd.Series(reason, index=order.index).reindex(cand.index).to_numpy()


def _check_params(
    max_per_day: Any, frequency_cap: Any, cap_days: Any, global_control_share: Any, salt: Any
) -> None:
    if not _is_int(max_per_day) or max_per_day < 1:
        raise ConfigError(f"max_per_day must be a whole number >= 1. Got {max_per_day!r}.")
    if not _is_int(frequency_cap) or frequency_cap < 0:
        raise ConfigError(f"frequency_cap must be a whole number >= 0. Got {frequency_cap!r}.")
    if not _is_int(cap_days) or cap_days < 1:
        raise ConfigError(f"cap_days must be a whole number >= 1. Got {cap_days!r}.")
    if not _is_number(global_control_share) or not 0 <= global_control_share < 1:
        raise ConfigError(
            f"global_control_share must be a number in [0, 1). Got {global_control_share!r}."
        )
    if not isinstance(salt, str) or not salt or _SEP in salt:
        raise ConfigError(f"salt must be a non-empty text. Got {salt!r}.")


def build_plan(
    customers: Any,
    assignment: pd.DataFrame | None,
    triggers: pd.DataFrame | None,
    campaigns: Any,
    as_of: Any,
    email_events: Any = None,
    features: pd.DataFrame | None = None,
    recommendations: pd.DataFrame | None = None,
    suppression: Iterable[Any] | str | os.PathLike[str] | None = None,
    global_control_share: float = 0.0,
    max_per_day: int = 1,
    frequency_cap: int = 3,
    cap_days: int = 7,
    salt: str = "bmkt",
    forgotten: str | os.PathLike[str] | None = None,
) -> SendPlan:
    """Build the send plan: recipients, arms, send times, holdouts and exclusions.

    See the module docstring for the order of decisions and the guarantees.

    Parameters
    ----------
    customers : DataFrame, Ibis table or Store
        The ``customers`` contract table (``customer_id``, ``email``,
        ``email_status``, ``email_consent``, optional ``timezone``). Given a
        :class:`bmkt.io.Store`, its conformed ``customers`` table is used, and
        its ``email_events`` when ``email_events`` is None.
    assignment : DataFrame or None
        Indexed by customer id: ``segment`` (primary segment) and boolean
        ``in_<slug>`` membership columns (slug: :func:`slugify`). A campaign
        segment matches a customer whose primary segment has that name or
        whose ``in_<slug>`` is True.
    triggers : DataFrame or None
        Long table ``customer_id``, ``trigger``, ``triggered_at`` and context
        (``products``, ``categories``: lists). The most recent matching
        trigger gives the context. Triggers at or after ``as_of`` are ignored.
    campaigns : list of Campaign, path, mapping or None
        Passed to :func:`load_campaigns` unless already loaded.
    as_of : date-like
        Run date (see :func:`bmkt.schema.parse_as_of`).
    email_events : DataFrame or Ibis table, optional
        Email history; its ``sent`` events count towards the caps.
    features : DataFrame, optional
        Indexed by customer id, with ``preferred_hour`` (local hour 0-23) and/or
        ``uplift`` (needed by campaigns with ``uplift_top_share``). Optional
        ``send_timezone``: the zone ``preferred_hour`` was estimated in, used
        when ``customers.timezone`` is null; optional ``send_time_source``:
        rows marked ``"fallback"`` (a population default, not the customer's
        own history) get the campaign's ``send_hour`` instead.
    recommendations : DataFrame, optional
        ``customer_id``, ``rank``, ``product_id``, ``score``; the top 3 become
        ``rec_1`` .. ``rec_3``.
    suppression : iterable or path, optional
        Global suppression list: customer ids and/or email addresses (an entry
        with ``@`` is an address, matched case-insensitively), or a CSV/text
        file of them (see :func:`read_id_list`).
    global_control_share : float
        Share of customers (hash of id and salt) excluded from every campaign.
    max_per_day : int
        Emails per recipient and send day.
    frequency_cap : int
        Emails per recipient in ``cap_days`` days, history included.
    cap_days : int
        Length of the frequency-cap window, ending at ``as_of``.
    salt : str
        Salt of every hash draw; changing it reshuffles holdouts and arms.
    forgotten : path, optional
        The forgotten-customer suppression file written by
        :func:`bmkt.privacy.forget`. Default:
        :func:`bmkt.privacy.default_suppression_path` when that file exists.
        An explicit path that does not exist is an error.

    Returns
    -------
    SendPlan

    Raises
    ------
    ConfigError
        Bad parameters, unknown segment names, ``uplift_top_share`` without an
        ``uplift`` feature, a ``send_date`` before ``as_of``.
    DataError
        Missing columns, duplicate or null customer ids.
    """
    from bmkt.io import Store

    _check_params(max_per_day, frequency_cap, cap_days, global_control_share, salt)
    camps = [c for c in load_campaigns(campaigns) if c.enabled]
    end = parse_as_of(as_of)

    if isinstance(customers, Store):
        store = customers
        customers = store.table("customers")
        if email_events is None and "email_events" in store:
            email_events = store.table("email_events")
    cust_frame = _to_frame(
        customers,
        "customers",
        ["customer_id", "email", "email_status", "email_consent", "timezone"],
    )
    settings = {  # lists and files are read once, whatever the number of parts
        "suppression": _suppression_entries(suppression),
        "global_control_share": global_control_share,
        "max_per_day": max_per_day,
        "frequency_cap": frequency_cap,
        "cap_days": cap_days,
        "salt": salt,
        "forgotten": _forgotten_keys(forgotten),
    }
    n_parts = -(-len(cust_frame) // PLAN_CHUNK)
    if n_parts > 1 and _can_split(cust_frame, camps):
        return _plan_in_parts(
            n_parts, cust_frame, assignment, triggers, camps, as_of, end, email_events,
            features, recommendations, settings,
        )  # fmt: skip
    return _plan(
        cust_frame, assignment, triggers, camps, as_of, end, email_events, features,
        recommendations, **settings,
    )  # fmt: skip


def _plan(
    cust_frame: pd.DataFrame,
    assignment: pd.DataFrame | None,
    triggers: pd.DataFrame | None,
    camps: list[Campaign],
    as_of: Any,
    end: pd.Timestamp,
    email_events: Any,
    features: pd.DataFrame | None,
    recommendations: pd.DataFrame | None,
    suppression: tuple[set[str], set[str], str | None],
    global_control_share: float,
    max_per_day: int,
    frequency_cap: int,
    cap_days: int,
    salt: str,
    forgotten: tuple[set[str], str | None],
    known: tuple[set[str], set[str]] | None = None,
) -> SendPlan:
    """:func:`build_plan` on a customers frame and the enabled campaigns.

    ``known`` (segment names and ``in_`` slugs) overrides what the given
    assignment defines: a part of the customers (:func:`_plan_in_parts`) is
    checked against the segments of the whole assignment. ``suppression`` and
    ``forgotten`` are the entries :func:`_suppression_entries` and
    :func:`_forgotten_keys` read.
    """
    default_day = end.normalize()
    supp_ids, supp_addr, supp_source = suppression  # read by _suppression_entries
    forgotten_keys, forgotten_source = forgotten  # read by _forgotten_keys
    if cust_frame["customer_id"].dtype.kind in "iuf":  # integer ids: "0042", "42.0" are 42
        supp_ids = {integer_key(k) for k in supp_ids}
        forgotten_keys = {integer_key(k) for k in forgotten_keys}
    cust = _prepare_customers(cust_frame, supp_ids, supp_addr, forgotten_keys)
    assign = _prepare_assignment(assignment)
    trig = _prepare_triggers(triggers, end)
    feats = _features_frame(features)
    recs = _recommendation_columns(recommendations)

    known_segments, slugs = _segment_info(assign) if known is None else known
    for c in camps:
        where = f"campaign {c.campaign_id!r}"
        if c.audience.segments:
            if assign is None:
                raise ConfigError(f"{where}: targets segments but no segment assignment was given.")
            _check_segments(where, c.audience.segments, known_segments, slugs)
        if c.uplift_top_share is not None and feats["uplift"].isna().all():
            raise ConfigError(
                f"{where}: 'uplift_top_share' needs an 'uplift' column in features "
                "(predicted uplift per customer)."
            )
        if c.send_date is not None and pd.Timestamp(c.send_date) < default_day:
            raise ConfigError(
                f"{where}: 'send_date' {c.send_date} is before the first send day after "
                f"as_of ({default_day.date()})."
            )

    # global control (hash of customer id and salt only), personal features, segment
    cust["_hash"] = id_hashes(cust["_key"], salt)
    cust["_gc"] = (
        draw_uniform(cust["_hash"].to_numpy(), salt, "global_control") < global_control_share
    )
    cust = _left_join(cust, feats)
    # the zone the preferred hour was estimated in (inferred when customers.timezone is null)
    inferred = cust["send_timezone"].notna() & cust["timezone"].isna()
    cust.loc[inferred, "timezone"] = cust.loc[inferred, "send_timezone"]
    seg_of = assign.set_index("_key")["segment"] if assign is not None else pd.Series(dtype=object)
    cust["segment"] = cust["_key"].map(seg_of).astype(object)
    cust["customer_id"] = cust["customer_id"].astype(object)  # no float upcast on merges
    cust_cols = ["customer_id", "email", "_addr", "timezone", "reason", "reasons", "_gc", "_hash"]
    cust_cols += ["preferred_hour", "uplift", "segment"]

    excluded: list[pd.DataFrame] = []
    held: list[pd.DataFrame] = []
    cands: list[pd.DataFrame] = []
    cust_index = pd.Index(cust["_key"].to_numpy())
    for c in camps:
        aud = _audience(c, cust, assign, trig, end)
        pos = cust_index.get_indexer(aud["_key"].to_numpy())
        unknown = pos < 0
        if unknown.any():  # audience members absent from the customers table
            u = aud.loc[unknown]
            first, joined = _reason_columns(
                {
                    "forgotten": u["_key"].isin(forgotten_keys).to_numpy(),
                    "suppression_list": u["_key"].isin(supp_ids).to_numpy(),
                    "unknown_customer": np.ones(len(u), dtype=bool),
                },
                len(u),
            )
            excluded.append(
                pd.DataFrame(
                    {
                        "customer_id": u["_source_id"].to_numpy(dtype=object),
                        "campaign_id": c.campaign_id,
                        "reason": first,
                        "reasons": joined,
                    }
                )
            )
        aud = aud.loc[~unknown].drop(columns="_source_id").reset_index(drop=True)
        m = pd.concat([aud, cust[cust_cols].iloc[pos[~unknown]].reset_index(drop=True)], axis=1)
        m["campaign_id"] = c.campaign_id
        suppressed = m["reason"].notna().to_numpy()
        in_gc = m["_gc"].to_numpy(dtype=bool)
        gc = ~suppressed & in_gc
        reasons = m["reasons"].to_numpy(dtype=object).copy()
        both = suppressed & in_gc
        reasons[both] = reasons[both] + ";global_control"
        reasons[gc] = "global_control"
        reason = m["reason"].to_numpy(dtype=object).copy()
        reason[gc] = "global_control"
        out = suppressed | gc
        excluded.append(
            pd.DataFrame(
                {
                    "customer_id": m.loc[out, "customer_id"].to_numpy(dtype=object),
                    "campaign_id": c.campaign_id,
                    "reason": reason[out],
                    "reasons": reasons[out],
                }
            )
        )
        eligible = m.loc[~out].reset_index(drop=True)

        # holdout among the eligible audience; uplift top share over the same audience
        base = eligible["_hash"].to_numpy(dtype=np.uint64)
        is_holdout = draw_uniform(base, salt, "holdout", c.campaign_id) < c.holdout_share
        top = np.ones(len(eligible), dtype=bool)
        if c.uplift_top_share is not None:
            n_top = int(math.ceil(c.uplift_top_share * len(eligible)))
            tie = draw_uniform(base, salt, "uplift_tie", c.campaign_id)
            score = eligible["uplift"].to_numpy(dtype=float)
            ranked = np.lexsort((tie, np.where(np.isnan(score), np.inf, -score)))
            top = np.zeros(len(eligible), dtype=bool)
            top[ranked[:n_top]] = True
        b = eligible.loc[~is_holdout & ~top]
        excluded.append(
            pd.DataFrame(
                {
                    "customer_id": b["customer_id"].to_numpy(dtype=object),
                    "campaign_id": c.campaign_id,
                    "reason": "uplift_below_top",
                    "reasons": "uplift_below_top",
                }
            )
        )

        # arm, day, local hour. Held-out customers go through arbitration like the
        # treated ("as if sent"): they take the day's slot and count towards the cap,
        # so both arms lose customers to other campaigns in the same way.
        pool = is_holdout | top
        treat = eligible.loc[pool].copy()
        treat["_holdout"] = is_holdout[pool]
        treat["_uplift_top"] = (
            top[pool] if c.uplift_top_share is not None else np.full(int(pool.sum()), np.nan)
        )
        u_v = draw_uniform(treat["_hash"].to_numpy(dtype=np.uint64), salt, "variant", c.campaign_id)
        names = np.asarray([v for v, _ in c.variants], dtype=object)
        cum = np.cumsum([w for _, w in c.variants])
        treat["variant"] = np.where(
            treat["_holdout"].to_numpy(),
            None,
            names[np.minimum(np.searchsorted(cum, u_v, side="right"), len(names) - 1)],
        )
        treat["_priority"] = c.priority
        treat["_day"] = pd.Timestamp(c.send_date) if c.send_date is not None else default_day
        pref = treat["preferred_hour"].to_numpy(dtype=float)
        ok = np.isfinite(pref) & (pref >= 0) & (pref < 24)
        hour = np.where(ok, np.floor(np.where(ok, pref, 0)), c.send_hour).astype(np.int64)
        treat["_hour"] = np.clip(hour, c.send_window[0], c.send_window[1])
        treat["offer"] = c.offer
        cands.append(treat)

    history = _history(email_events, cust, end - pd.Timedelta(days=cap_days), end)
    cand = _concat(cands)
    cand = cand if cand is not None else pd.DataFrame()
    sends = pd.DataFrame(columns=list(SEND_COLUMNS))
    if not cand.empty:
        arb = _arbitrate(cand, history, max_per_day, frequency_cap)
        lost = pd.notna(arb)
        excluded.append(
            pd.DataFrame(
                {
                    "customer_id": cand.loc[lost, "customer_id"].to_numpy(dtype=object),
                    "campaign_id": cand.loc[lost, "campaign_id"].to_numpy(),
                    "reason": arb[lost],
                    "reasons": arb[lost],
                }
            )
        )
        won = cand.loc[~lost]
        h = won.loc[won["_holdout"].astype(bool)]
        held.append(
            pd.DataFrame(
                {
                    "customer_id": h["customer_id"].to_numpy(dtype=object),
                    "campaign_id": h["campaign_id"].to_numpy(),
                    "segment": h["segment"].to_numpy(dtype=object),
                    "uplift_top": pd.array(
                        [pd.NA if pd.isna(v) else bool(v) for v in h["_uplift_top"]],
                        dtype="boolean",
                    ),
                }
            )
        )
        sends = won.loc[~won["_holdout"].astype(bool)].copy()
    if len(sends):
        local = sends["_day"] + pd.to_timedelta(sends["_hour"].astype("int64"), unit="h")
        utc = local_to_utc(local, sends["timezone"])
        # never before the data window closes: a local hour that has already
        # passed (zones ahead of UTC) moves to the same local hour the next day
        early = (utc < end).to_numpy()
        if early.any():
            later = local_to_utc(local + pd.Timedelta(days=1), sends["timezone"])
            utc = utc.where(~early, later)
        sends["send_at_utc"] = utc
        sends = _left_join(sends, recs)
        sends["abandoned_products"] = sends["trigger_products"].where(
            sends["trigger"] == "cart_abandonment", None
        )
    id_dtype = cust_frame["customer_id"].dtype
    sends = _finish(sends, SEND_COLUMNS, id_dtype)
    sends["send_at_utc"] = pd.to_datetime(sends["send_at_utc"])
    sends["triggered_at"] = pd.to_datetime(sends["triggered_at"])
    holdouts = _finish(_concat(held), HOLDOUT_COLUMNS, id_dtype)
    rows = _finish(_concat(excluded), EXCLUSION_COLUMNS, id_dtype)
    base_supp = cust.loc[cust["reason"].notna()]
    suppressed_frame = _finish(
        base_supp, ("customer_id", "reason", "reasons"), id_dtype, by=("customer_id",)
    )
    gc_frame = _finish(
        cust.loc[cust["_gc"] & cust["reason"].isna()],
        ("customer_id", "segment"),
        id_dtype,
        by=("customer_id",),
    )
    plan = SendPlan(
        sends=sends,
        holdouts=holdouts,
        exclusions=Exclusions(rows=rows, suppressed=suppressed_frame),
        global_control=gc_frame,
    )
    plan.params = {
        "as_of": str(as_of),
        "window_end": end.isoformat(),
        "default_send_date": default_day.date().isoformat(),
        "salt": salt,
        "hash": "blake2b-64 per customer id, mixed per purpose and campaign (stable_uniform)",
        "max_per_day": max_per_day,
        "frequency_cap": frequency_cap,
        "cap_days": cap_days,
        "global_control_share": float(global_control_share),
        "campaign_ids": [c.campaign_id for c in camps],
        "campaigns": [c.to_dict() for c in camps],
        "customers": int(len(cust)),
        "history_sent_events": int(len(history)),
        "suppression_list": {
            "source": supp_source,
            "ids": len(supp_ids),
            "addresses": len(supp_addr),
        },
        "forgotten": {"source": forgotten_source, "ids": len(forgotten_keys)},
        "suppressed_customers": {
            r: int((base_supp["reason"] == r).sum())
            for r in SUPPRESSION_REASONS
            if (base_supp["reason"] == r).any()
        },
        "rows": {
            "sends": int(len(sends)),
            "holdouts": int(len(holdouts)),
            "exclusions": int(len(rows)),
            "global_control": int(len(gc_frame)),
        },
        "exclusions_by_reason": plan.exclusions.by_reason(),
    }
    log.info(
        "send plan: %d sends, %d held out, %d excluded, %d campaigns",
        len(sends),
        len(holdouts),
        len(rows),
        len(camps),
    )
    return plan


#: Above this many customers the plan is built in parts of about this many
#: (customers who share an address always in the same part), one at a time, so
#: that only one part's candidates are held at once.
PLAN_CHUNK = 1_000_000


def _can_split(cust: pd.DataFrame, camps: list[Campaign]) -> bool:
    """Whether :func:`_plan_in_parts` gives the plan of the whole base.

    It does unless a campaign ranks its whole audience (``uplift_top_share``).
    Only integer ids that are unique are split (anything else goes the
    one-part way, which reports the problem).
    """
    if any(c.uplift_top_share is not None for c in camps):
        log.info("send plan in one part: a campaign ranks its whole audience by uplift")
        return False
    if "customer_id" not in cust.columns or "email" not in cust.columns:
        return False
    ids = cust["customer_id"]
    return isinstance(ids.dtype, np.dtype) and ids.dtype.kind in "iu" and ids.is_unique


def _address_parts(cust: pd.DataFrame, n_parts: int) -> np.ndarray:
    """The part of each customer: a hash of the address as arbitration reads it.

    Customers with the same address (as :func:`_prepare_customers` reads
    it) land in the same part, so the daily limit, the frequency cap and
    shared-address suppression, which go by address, see all of an
    address's customers; customers without a valid address (suppressed
    anyway) are spread by id.
    """
    addr = np.asarray(_addresses(cust["email"])[2], dtype=object)
    valid = pd.notna(addr)
    h = pd.util.hash_array(cust["customer_id"].to_numpy())
    if valid.any():
        h[valid] = pd.util.hash_array(addr[valid])
    return (h % np.uint64(n_parts)).astype(np.int64)


class _PartOf:
    """The part of any frame's customer ids: that of the customer, part 0 when unknown."""

    def __init__(self, cust_ids: pd.Series, parts: np.ndarray) -> None:
        self._ids = cust_ids
        self._index = pd.Index(cust_ids.to_numpy())
        self._text: pd.Index | None = None
        self.parts = parts

    def __call__(self, ids: pd.Series | pd.Index) -> np.ndarray:
        if isinstance(ids.dtype, np.dtype) and ids.dtype.kind in "iu":
            pos = self._index.get_indexer(np.asarray(ids))
        else:  # as the plan matches ids: by their canonical text (5, 5.0 and "5")
            if self._text is None:
                self._text = pd.Index(id_strings(self._ids).to_numpy(dtype=object))
            pos = self._text.get_indexer(id_strings(pd.Series(np.asarray(ids, dtype=object))))
        return np.where(pos >= 0, self.parts[np.maximum(pos, 0)], 0)


#: The columns of the triggers and features frames :func:`_plan` reads.
_READ = {
    "triggers": ("customer_id", "trigger", "triggered_at", "products", "categories"),
    "features": (
        "customer_id", "preferred_hour", "uplift", "send_time_source", "send_timezone"
    ),
}  # fmt: skip


def _ids_of(frame: pd.DataFrame) -> pd.Series | pd.Index:
    return frame["customer_id"] if "customer_id" in frame.columns else frame.index


def _plan_in_parts(
    n_parts: int,
    cust_frame: pd.DataFrame,
    assignment: Any,
    triggers: Any,
    camps: list[Campaign],
    as_of: Any,
    end: pd.Timestamp,
    email_events: Any,
    features: Any,
    recommendations: Any,
    settings: dict[str, Any],
) -> SendPlan:
    """:func:`_plan` part by part of the customers (split by address), then put together.

    Every decision is per customer (suppression, global control, holdout and
    arm draws, send time) or per address (arbitration), and a part holds all
    customers of its addresses, so the result equals the one-part plan.
    """
    from ibis.expr.types import Table

    parts = _address_parts(cust_frame, n_parts)
    part_of = _PartOf(cust_frame["customer_id"], parts)
    frames: dict[str, pd.DataFrame | None] = {}
    for name, data in (
        ("assignment", assignment),
        ("triggers", triggers),
        ("features", features),
        ("recommendations", recommendations),
    ):
        frames[name] = None if data is None else _to_frame(data, name)
    # what the one-part plan checks, checked on the whole frames (whole counts, early)
    if frames["triggers"] is not None:
        _require(frames["triggers"], "triggers", ("customer_id", "trigger", "triggered_at"))
    if frames["recommendations"] is not None:
        _require(frames["recommendations"], "recommendations", ("customer_id", "product_id"))
    for name, used in _READ.items():  # only what the plan reads is split
        f = frames[name]
        if f is not None:
            frames[name] = f[[c for c in f.columns if c in used]]
    known = None
    if frames["assignment"] is not None:
        known = _segment_info(_prepare_assignment(frames["assignment"]))
    if frames["features"] is not None:
        _features_frame(frames["features"])  # duplicated ids
    if frames["triggers"] is not None:  # text times parsed as one column, not per part
        frames["triggers"]["triggered_at"] = _naive_utc(frames["triggers"]["triggered_at"])
    cols = ["customer_id", "occurred_at", "event_type"]
    start = end - pd.Timedelta(days=int(settings["cap_days"]))
    if isinstance(email_events, Table):  # the sent events of the cap window, read once
        t = email_events
        t = t.filter((t.event_type == "sent") & (t.occurred_at >= start) & (t.occurred_at < end))
        frames["email_events"] = engine.to_pandas(t.select(cols))
    elif email_events is not None:
        ev = _to_frame(email_events, "email_events")
        _require(ev, "email_events", cols)
        ev = ev.loc[ev["event_type"] == "sent", cols].copy()
        ev["occurred_at"] = _naive_utc(ev["occurred_at"])
        frames["email_events"] = ev[(ev["occurred_at"] >= start) & (ev["occurred_at"] < end)]
    else:
        frames["email_events"] = None
    where = {name: None if f is None else part_of(_ids_of(f)) for name, f in frames.items()}
    plans = []
    for k in range(n_parts):

        def mine(name: str, k: int = k) -> pd.DataFrame | None:
            f = frames[name]
            return None if f is None else f.iloc[np.flatnonzero(where[name] == k)]

        plans.append(
            _plan(
                cust_frame.iloc[np.flatnonzero(parts == k)].reset_index(drop=True),
                mine("assignment"),
                mine("triggers"),
                camps,
                as_of,
                end,
                mine("email_events"),
                mine("features"),
                mine("recommendations"),
                **settings,
                known=known,
            )
        )
        log.info("send plan: part %d of %d done", k + 1, n_parts)
    frames.clear()  # the split inputs are not needed while the parts are put together
    where.clear()
    part_of._text = None
    return _combine(plans, cust_frame["customer_id"].dtype)


def _combine(plans: list[SendPlan], id_dtype: Any) -> SendPlan:
    """One plan of the parts' plans (each part has its own customers).

    The parts' frames are already finished (:func:`_finish`): they are put
    together and sorted as one, each part's frames released as they go.
    """
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in _PARTS}
    params = [p.params for p in plans]
    while plans:
        p = plans.pop(0)
        for k, f in zip(_PARTS, _plan_frames(p), strict=True):
            frames[k].append(f)
        del p
    sends = _merge_finished(frames.pop("sends"), SEND_COLUMNS, id_dtype)
    sends["send_at_utc"] = pd.to_datetime(sends["send_at_utc"])
    sends["triggered_at"] = pd.to_datetime(sends["triggered_at"])
    by_id = ("customer_id",)
    plan = SendPlan(
        sends=sends,
        holdouts=_merge_finished(frames.pop("holdouts"), HOLDOUT_COLUMNS, id_dtype),
        exclusions=Exclusions(
            rows=_merge_finished(frames.pop("rows"), EXCLUSION_COLUMNS, id_dtype),
            suppressed=_merge_finished(
                frames.pop("suppressed"), ("customer_id", "reason", "reasons"), id_dtype, by_id
            ),
        ),
        global_control=_merge_finished(
            frames.pop("global_control"), ("customer_id", "segment"), id_dtype, by_id
        ),
    )
    return _combined_params(plan, params)


_PARTS = ("sends", "holdouts", "rows", "suppressed", "global_control")


def _plan_frames(p: SendPlan) -> tuple[pd.DataFrame, ...]:
    return p.sends, p.holdouts, p.exclusions.rows, p.exclusions.suppressed, p.global_control


def _merge_finished(
    frames: list[pd.DataFrame],
    columns: Sequence[str],
    id_dtype: Any,
    by: Sequence[str] = ("campaign_id", "customer_id"),
) -> pd.DataFrame:
    """:func:`_finish` of the row-bound frames, which are finished each."""
    out = _concat(frames)
    frames.clear()
    if out is None:
        return _finish(None, columns, id_dtype)
    return out.take(_row_order(out, by)).reset_index(drop=True)


def _combined_params(plan: SendPlan, parts: list[dict[str, Any]]) -> SendPlan:
    """The parameters and counts of the whole plan from those of its parts."""
    params = dict(parts[0])
    for key in ("customers", "history_sent_events"):
        params[key] = sum(int(p[key]) for p in parts)
    supp = {r: sum(p["suppressed_customers"].get(r, 0) for p in parts)
            for r in SUPPRESSION_REASONS}  # fmt: skip
    params["suppressed_customers"] = {r: n for r, n in supp.items() if n}
    params["rows"] = {
        "sends": int(len(plan.sends)),
        "holdouts": int(len(plan.holdouts)),
        "exclusions": int(len(plan.exclusions.rows)),
        "global_control": int(len(plan.global_control)),
    }
    params["exclusions_by_reason"] = plan.exclusions.by_reason()
    plan.params = params
    log.info(
        "send plan: %d sends, %d held out, %d excluded (%d parts)",
        len(plan.sends), len(plan.holdouts), len(plan.exclusions.rows), len(parts),
    )  # fmt: skip
    return plan


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """Row-bind frames with the same columns, column by column.

    (``pd.concat`` of whole frames scans object blocks value by value for
    all-null columns; per-column concatenation does not.)
    """
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    return pd.DataFrame(
        {c: pd.concat([f[c] for f in frames], ignore_index=True) for c in frames[0].columns}
    )


def _finish(
    frame: pd.DataFrame | None,
    columns: Sequence[str],
    id_dtype: Any = object,
    by: Sequence[str] = ("campaign_id", "customer_id"),
) -> pd.DataFrame:
    """Select ``columns`` in order, restore the id dtype, sort rows deterministically."""
    if frame is None or frame.empty:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        if "customer_id" in out.columns and isinstance(id_dtype, np.dtype):
            out["customer_id"] = out["customer_id"].astype(id_dtype)
        return out
    out = frame.loc[:, list(columns)].copy()
    if "customer_id" in out.columns:
        out["customer_id"] = _restore_ids(out["customer_id"], id_dtype)
    return out.iloc[_row_order(out, by)].reset_index(drop=True)


def _row_order(out: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Positions of the rows sorted by ``by`` (stable; mixed-type ids sort too)."""
    sort_frame = pd.DataFrame({f"_{i}": _sortable(out[b]).to_numpy() for i, b in enumerate(by)})
    return sort_frame.sort_values(list(sort_frame.columns), kind="mergesort").index.to_numpy()


def _restore_ids(s: pd.Series, id_dtype: Any) -> pd.Series:
    """Give ids back the customers table's dtype when every value fits it."""
    if isinstance(id_dtype, np.dtype) and id_dtype.kind in "iu":
        if pd.api.types.infer_dtype(s, skipna=False) == "integer":
            return s.astype(id_dtype)
    return s.astype(object)


def _sortable(s: pd.Series) -> pd.Series:
    """A sort key that works for mixed-type id columns (numbers first, then text)."""
    if s.dtype.kind in "iufM":
        return s
    kind = pd.api.types.infer_dtype(s, skipna=False)
    if kind in ("string", "integer", "floating"):
        return s
    # numbers exactly (ints past 2**53 and negatives included), then text
    return s.map(lambda v: (0, Decimal(v), "") if _is_number(v) else (1, 0, str(v)))


# --------------------------------------------------------------------------- preview


_PREVIEW_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>bmkt send plan preview</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
section{margin-bottom:3rem}
article{border:1px solid #ccc;border-radius:6px;padding:.75rem;margin:.75rem 0}
.meta{color:#555;font-size:.9rem}
iframe{width:100%;height:360px;border:1px solid #eee}
</style></head><body>
<h1>Send plan preview</h1>
<p class="meta">as_of {{ as_of }} &middot; {{ n_sends }} sends &middot; customer ids only, no addresses</p>
{% for c in campaigns %}
<section>
<h2>{{ c.name }} <small>({{ c.campaign_id }})</small></h2>
<p class="meta">{{ c.n_sends }} sends &middot; {{ c.n_holdout }} held out &middot; priority {{ c.priority }}{% if c.offer %} &middot; offer: {{ c.offer }}{% endif %}</p>
{% for v in c.variants %}
<h3>Variant {{ v.name }} ({{ v.n }} sends)</h3>
{% for s in v.samples %}
<article>
<p class="meta">customer {{ s.customer_id }} &middot; segment {{ s.segment }} &middot; send at {{ s.send_at_utc }}</p>
{% if s.subject %}<p><strong>Subject:</strong> {{ s.subject }}</p>{% endif %}
<iframe sandbox srcdoc="{{ s.body }}"></iframe>
</article>
{% else %}<p class="meta">no recipients</p>
{% endfor %}
{% endfor %}
</section>
{% endfor %}
</body></html>
"""


def _template_env(template_dir: str | os.PathLike[str] | None) -> Any:
    import jinja2

    paths = [str(template_dir)] if template_dir is not None else []
    paths.append(str(resources.files("bmkt").joinpath("resources", "templates")))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _context(row: Mapping[str, Any], c: Campaign) -> dict[str, Any]:
    ctx = {k: (None if _is_missing(v) else v) for k, v in row.items() if k != "email"}
    ctx["campaign_name"] = c.name
    ctx["recommendations"] = [ctx[k] for k in ("rec_1", "rec_2", "rec_3") if ctx.get(k)]
    ap = ctx.get("abandoned_products")
    ctx["abandoned"] = ap.split(LIST_SEPARATOR) if isinstance(ap, str) and ap else []
    ts = ctx.get("send_at_utc")
    if isinstance(ts, pd.Timestamp):
        ctx["send_at_utc"] = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ctx


def _is_missing(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def render_preview(
    plan: SendPlan,
    campaigns: Any,
    out_path: str | os.PathLike[str],
    n_per_variant: int = 3,
    template_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Render a sample of each campaign's emails, per variant, into one HTML file.

    Templates are Jinja2 with autoescaping on and undefined names as errors.
    They receive the send-list row **without the email address** (``customer_id``,
    ``variant``, ``segment``, ``offer``, ``rec_1``..``rec_3``, ``trigger``, ...)
    plus ``campaign_name``, ``recommendations`` (list) and ``abandoned`` (list).
    Samples are the ``n_per_variant`` recipients with the lowest preview hash
    (a deterministic spread over the list). The page carries customer ids only.

    Parameters
    ----------
    plan : SendPlan
    campaigns : list of Campaign, path, mapping or None
        The campaigns the plan was built from.
    out_path : path-like
        The HTML file to write (folders are created).
    n_per_variant : int
        Samples per variant.
    template_dir : path-like, optional
        Searched for template files before ``bmkt/resources/templates``.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ConfigError
        A template file is missing or fails to render (names the campaign).
    """
    import jinja2

    env = _template_env(template_dir)
    camps = load_campaigns(campaigns)
    sections = []
    for c in camps:
        if c.campaign_id not in plan.params.get("campaign_ids", [c.campaign_id]):
            continue
        where = f"campaign {c.campaign_id!r}"
        try:
            body_t = (
                env.get_template(c.template) if c.template_is_file else env.from_string(c.template)
            )
            subject_t = env.from_string(c.subject) if c.subject else None
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(
                f"{where}: template {exc.name!r} not found in "
                f"{template_dir or 'bmkt/resources/templates'}."
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{where}: template syntax error: {exc}.") from None
        rows = plan.sends[plan.sends["campaign_id"] == c.campaign_id]
        variants = []
        for vname, _ in c.variants:
            vr = rows[rows["variant"] == vname]
            u = stable_uniform(vr["customer_id"], "preview", "preview", c.campaign_id)
            sample = vr.iloc[np.argsort(u, kind="stable")[:n_per_variant]]
            samples = []
            for row in sample.to_dict("records"):
                ctx = _context(row, c)
                try:
                    samples.append(
                        {
                            "customer_id": ctx["customer_id"],
                            "segment": ctx.get("segment"),
                            "send_at_utc": ctx.get("send_at_utc"),
                            "subject": subject_t.render(ctx) if subject_t else None,
                            "body": body_t.render(ctx),
                        }
                    )
                except jinja2.TemplateError as exc:
                    raise ConfigError(f"{where}: template failed to render: {exc}.") from None
            variants.append({"name": vname, "n": len(vr), "samples": samples})
        sections.append(
            {
                "campaign_id": c.campaign_id,
                "name": c.name,
                "priority": c.priority,
                "offer": c.offer,
                "n_sends": len(rows),
                "n_holdout": int((plan.holdouts["campaign_id"] == c.campaign_id).sum()),
                "variants": variants,
            }
        )
    page = jinja2.Environment(autoescape=True).from_string(_PREVIEW_PAGE)
    html = page.render(as_of=plan.params.get("as_of"), n_sends=len(plan.sends), campaigns=sections)
    leaked = find_emails(html, plan.sends["email"].dropna())
    if leaked:
        raise DataError(
            f"preview: {len(leaked)} email addresses would appear in the preview "
            "(templates must not print addresses); nothing was written."
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8", newline="\n")
    os.replace(tmp, out)
    log.info("wrote send plan preview %s", out)
    return out


_ADDRESS_TOKEN = re.compile(r"[^@\s<>\"'&;,()\[\]]+@[^@\s<>\"'&;,()\[\]]+\.[^@\s<>\"'&;,()\[\]]+")


def find_emails(text: str, emails: Iterable[str]) -> list[str]:
    """Which of ``emails`` appear in ``text`` (case-insensitive, as whole tokens)."""
    if "@" not in text:  # every address token holds an @
        return []
    known = {e.strip().lower() for e in emails if isinstance(e, str)}
    if not known:
        return []
    # a token never spans a line break: only lines with an @ can hold one
    lines = text.split("\n") if len(text) > 1 << 16 else [text]
    found = {
        m.group(0).lower() for line in lines if "@" in line for m in _ADDRESS_TOKEN.finditer(line)
    }
    return sorted(found & known)
