"""A seeded online-store simulator whose ground truth is known.

:func:`simulate_store` returns the contract tables of :mod:`bmkt.schema`
(``customers``, ``orders``, ``order_lines``, ``web_events``, ``email_events``,
``campaigns``) plus a ``truth`` table holding every customer's latent traits,
so that CLV, churn, engagement and uplift code can be checked against the
values that generated the data. :func:`write_store` writes the tables as one
Parquet file each, atomically.

Everything is vectorised with numpy; the only Python loop runs over campaigns
(about one a week), because a campaign's unsubscribes, complaints and hard
bounces change who can be mailed next.

Generative model
----------------
Time runs in days over the window ``[end + 1 day - days, end + 1 day)``
(``end`` is a date; its whole day is included). All defaults live in
:class:`SimulationParams`.

Customers
    Sign up uniformly over the window, at a local time of day near their
    preferred hour. A share ``nonbuyer_share`` never buys (newsletter
    prospects). Each buyer makes a first purchase shortly after signing up
    (exponential lag, mean ``first_purchase_lag_hours``); that purchase is
    time 0 of the buyer's BG/NBD clock.
Purchases (BG/NBD, Fader, Hardie & Lee 2005a)
    Per buyer ``lambda ~ Gamma(shape=r, scale=1/alpha)`` (purchases per day)
    and ``p ~ Beta(a, b)``. Repeat purchases form a Poisson process with rate
    ``lambda``; after each *repeat* purchase the buyer drops out with
    probability ``p`` (no dropout at time 0). With ``N ~ Poisson(lambda T)``
    arrivals in the buyer's window of length ``T`` and ``J ~ Geometric(p)``
    purchases before dropout, the buyer makes ``K = min(N, J)`` repeat
    purchases in the window, is alive at the end iff ``J > N`` (probability
    ``exp(-lambda p T)``) and drops out at the ``J``-th purchase otherwise.
    So under BG/NBD a one-time buyer is alive by construction.
    With ``dropout_at_first_purchase=True`` the buyer may also drop out right
    after the first purchase (the MBG/NBD process of Batislam, Denizel &
    Filiztekin 2007): ``J - 1`` repeat purchases, alive at the end with
    probability ``(1 - p) exp(-lambda p T)``; in life many one-time buyers
    never come back, and this is the setting in which a churn model can be
    judged against the truth on one-time buyers too.
    The ``K`` purchase times are the first ``K`` of ``N`` uniform order
    statistics on the window, drawn from exponential spacings (Devroye 1986,
    ch. V.3) so that only ``K`` numbers are drawn per buyer. Each purchase is
    then moved to the nearest moment whose local clock shows the buyer's
    preferred hour (plus normal noise, sd ``hour_sd`` hours): this shifts a
    purchase by at most 12 hours and leaves the counts untouched.
Spend (Gamma-Gamma, Fader, Hardie & Lee 2005b)
    Per customer ``nu ~ Gamma(shape=q, scale=1/gamma)``; each order's net
    revenue ``~ Gamma(shape=p, scale=1/nu)``, so the customer's expected
    order value is ``p / nu`` (``truth.expected_spend``; population mean
    ``p * gamma / (q - 1)``, 60 with the defaults). A share of orders carries
    a discount (``orders.discount`` is the amount granted on top of the net
    revenue, which stays Gamma-Gamma); a share ``refund_share`` is later
    partly or fully refunded by a separate order row with negative revenue
    (refund rows are not purchases and have no order lines).
Order lines
    1-4 lines per order; each line's category is drawn from the customer's
    Dirichlet category preferences and the product from that category's
    products (``n_products`` products, one category each, skewed popularity).
    Unit prices are the products' list prices rescaled so that
    ``sum(quantity * price)`` equals the order revenue up to rounding to cents.
Email (campaigns, holdouts, Apple Mail Privacy Protection)
    ``campaigns_per_week`` campaigns go out evenly over the window. Each goes
    to a random share (``audience_share_range``) of customers who signed up
    before it, are subscribed and consent; a share ``holdout_share`` of them
    is held out ('holdout' event, never sent), the rest get 'sent' and then
    'delivered' or 'bounce' (hard bounces for bad addresses, which become
    ``bounced``; a few soft bounces which do not). A delivered email is opened
    by the human with probability ``engagement * fade``; opens land near the
    preferred local hour; clicks follow a human open with probability
    ``click_propensity``; unsubscribes follow human opens, complaints come
    straight from the inbox, and both end the customer's mailability
    (``customers.email_status`` is the status at the end). Customers behind a
    privacy proxy (share ``privacy_proxy_share``; Apple 2021, Mail Privacy
    Protection) show one machine 'open' 1-10 s after every delivery with the
    proxy's user agent, whatever they do; their human opens are invisible,
    their clicks are not. ``machine_open`` is null unless
    ``flag_machine_opens`` (then True for proxy opens, False for human opens).
Engagement fades before dropout
    Open, click, campaign-response and browsing intensities are multiplied by
    ``fade(t) = floor + (1 - floor) * clip((dropout_at - t) / fade_days, 0, 1)``
    (1 for customers who never drop out), so they decay over the
    ``fade_days`` before the dropout and stay near ``fade_floor`` afterwards.
Heterogeneous email response (Radcliffe & Surry 2011)
    Buyers are persuadable, sure things, lost causes or sleeping dogs
    (``response_shares``); never-buyers are lost causes. At every campaign,
    every alive sure thing buys within 5 days with probability
    ``sure_thing_rate * fade`` and every alive sleeping dog with probability
    ``sleeping_dog_rate * fade`` unless a delivered email puts them off;
    a persuadable who receives the email buys with probability
    ``u * fade`` (``u ~ Beta(persuadable_a, persuadable_b)``). These
    campaign-driven orders come on top of the BG/NBD purchases (well under a
    tenth of all orders) and are never placed after the customer's dropout. Hence
    ``truth.true_uplift = P(order within 5 days | emailed) - P(order within 5
    days | held out) = (pi_T - pi_H) * exp(-5 lambda)``, with ``pi_T`` and
    ``pi_H`` the campaign-driven order probabilities when emailed and when
    held out, for an alive, fully engaged customer: ``u exp(-5 lambda)`` for
    persuadables, ``-sleeping_dog_rate exp(-5 lambda)`` for sleeping dogs and
    0 otherwise (sure things buy either way). The lift realised at a past
    campaign is ``true_uplift * fade(sent_at)`` for customers alive then and
    0 for the others, so it is smaller on average than ``true_uplift``.
Web events
    Every purchase is preceded by a short session (page view, search,
    product views, add to cart, checkout start). Browse sessions (views,
    often of the same product repeatedly, no cart add) and abandoned carts
    (add to cart with no order in the next 24 hours) arrive as Poisson
    processes whose rates grow with the purchase rate and fade before dropout.

Truth table
    One row per customer (:data:`TRUTH_COLUMNS`). ``purchase_rate``
    (lambda per day), ``dropout_p`` and ``expected_spend`` (``p / nu``) are
    NaN for never-buyers; ``alive_at_end`` is False and ``dropout_at`` NaT for
    them. ``dropout_at`` is the time of the last purchase of buyers who
    dropped out inside the window, NaT for those alive at the end.
    ``n_repeat_purchases_simulated`` counts the BG/NBD repeat purchases in the
    window (campaign-driven orders excluded; with ``email=False`` every
    buyer has exactly ``1 + n_repeat_purchases_simulated`` purchase rows).
    ``timezone`` is the true zone, also where ``customers.timezone`` is null.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S., & Lee, K. L. (2005a). "Counting your
   customers" the easy way: An alternative to the Pareto/NBD model.
   *Marketing Science*, 24(2), 275-284.
.. [2] Fader, P. S., Hardie, B. G. S., & Lee, K. L. (2005b). RFM and CLV:
   Using iso-value curves for customer base analysis. *Journal of Marketing
   Research*, 42(4), 415-430.
.. [3] Apple (2021). Mail Privacy Protection. Apple Platform Security /
   WWDC 2021 "Mail Privacy Protection" (remote content, including tracking
   pixels, is fetched privately by a proxy when a message is received).
.. [4] Radcliffe, N. J., & Surry, P. D. (2011). Real-world uplift modelling
   with significance-based uplift trees. Stochastic Solutions white paper.
.. [5] Devroye, L. (1986). *Non-Uniform Random Variate Generation*. Springer.

Examples
--------
>>> from bmkt.simulate import simulate_store
>>> tables = simulate_store(n_customers=500, days=120, seed=1)
>>> sorted(tables)
['campaigns', 'customers', 'email_events', 'order_lines', 'orders', 'truth', 'web_events']
>>> int(tables["customers"]["customer_id"].max())
500
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from bmkt.errors import ConfigError, PublishError
from bmkt.schema import CONTRACTS, EMAIL_EVENT_TYPES, EMAIL_STATUSES, WEB_EVENT_TYPES

log = logging.getLogger(__name__)

__all__ = [
    "SimulationParams",
    "simulate_store",
    "simulate_to_folder",
    "write_store",
    "TABLES",
    "TRUTH_COLUMNS",
    "TIMEZONES",
    "CATEGORIES",
    "RESPONSE_TYPES",
    "PROXY_USER_AGENT",
    "HUMAN_USER_AGENTS",
]

#: Tables returned by :func:`simulate_store`, in write order.
TABLES: tuple[str, ...] = (
    "customers",
    "orders",
    "order_lines",
    "web_events",
    "email_events",
    "campaigns",
    "truth",
)

#: Columns of the ``truth`` table (one row per customer).
TRUTH_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "is_buyer",
    "alive_at_end",
    "dropout_at",
    "purchase_rate",
    "dropout_p",
    "expected_spend",
    "n_repeat_purchases_simulated",
    "engagement",
    "click_propensity",
    "preferred_hour",
    "timezone",
    "favourite_category",
    "privacy_proxy",
    "response_type",
    "true_uplift",
)

TIMEZONES: tuple[str, ...] = (
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)
_TZ_WEIGHTS = np.array([0.30, 0.18, 0.12, 0.15, 0.10, 0.08, 0.07])
_TZ_COUNTRY = ("DE", "GB", "FR", "US", "US", "JP", "AU")
_COUNTRIES = ("DE", "GB", "FR", "US", "JP", "AU", "AT", "CH", "NL", "CA")

CATEGORIES: tuple[str, ...] = (
    "apparel",
    "shoes",
    "accessories",
    "beauty",
    "home",
    "electronics",
    "sports",
    "books",
)
#: Median list price per category (currency units).
_CATEGORY_PRICE = np.array([35.0, 70.0, 25.0, 20.0, 40.0, 120.0, 50.0, 15.0])
_SEARCH_TERMS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "summer dress", "jeans"),
    ("sneakers", "running shoes", "boots"),
    ("bag", "sunglasses", "watch"),
    ("face cream", "perfume", "shampoo"),
    ("cushion", "lamp", "bed linen"),
    ("headphones", "charger", "speaker"),
    ("yoga mat", "football", "water bottle"),
    ("novel", "cookbook", "travel guide"),
)
_QUERIES: tuple[str, ...] = tuple(q for terms in _SEARCH_TERMS for q in terms)

_CHANNELS = ("web", "app", "store")
_KINDS = ("promotional", "newsletter")
_VARIANTS = ("A", "B")
RESPONSE_TYPES: tuple[str, ...] = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog")
_PERSUADABLE, _SURE_THING, _LOST_CAUSE, _SLEEPING_DOG = range(4)

#: User agent reported for opens fetched by Apple Mail Privacy Protection's proxy.
PROXY_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
#: User agents of human opens and clicks (one device per customer).
HUMAN_USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Microsoft Outlook 16.0.17531; ms-office; "
    "MSOffice 16)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
)
_USER_AGENTS = (PROXY_USER_AGENT, *HUMAN_USER_AGENTS)

#: Relative frequency of each preferred local hour 0..23 (evening peak).
_HOUR_WEIGHTS = np.array(
    [0.4, 0.2, 0.1, 0.1, 0.1, 0.3, 0.8, 1.8, 2.6, 2.8, 2.4, 2.4,
     3.0, 2.6, 2.0, 2.0, 2.3, 2.8, 3.6, 4.4, 4.6, 3.8, 2.4, 1.0]
)  # fmt: skip

# Email event codes: chronological rank within one (campaign, customer).
_EMAIL_CODES = {name: i for i, name in enumerate(EMAIL_EVENT_TYPES)}
_E_SENT, _E_DELIVERED, _E_OPEN, _E_CLICK = (
    _EMAIL_CODES[k] for k in ("sent", "delivered", "open", "click")
)
_E_BOUNCE, _E_UNSUB, _E_COMPLAINT, _E_HOLDOUT = (
    _EMAIL_CODES[k] for k in ("bounce", "unsubscribe", "complaint", "holdout")
)
_E_RANK = np.zeros(len(EMAIL_EVENT_TYPES), dtype=np.int64)
for _rank, _code in enumerate(
    (_E_HOLDOUT, _E_SENT, _E_BOUNCE, _E_DELIVERED, _E_OPEN, _E_CLICK, _E_UNSUB, _E_COMPLAINT)
):
    _E_RANK[_code] = _rank
_W_CODES = {name: i for i, name in enumerate(WEB_EVENT_TYPES)}
_S_SUBSCRIBED, _S_UNSUBSCRIBED, _S_BOUNCED, _S_COMPLAINED = (
    EMAIL_STATUSES.index(s) for s in ("subscribed", "unsubscribed", "bounced", "complained")
)

_NS_PER_DAY = 86_400_000_000_000
_MS_PER_DAY = 86_400_000
_MINUTE = 1.0 / 1440.0
_SECOND = 1.0 / 86_400.0


@dataclass(frozen=True)
class SimulationParams:
    """Generative parameters of :func:`simulate_store`, with their defaults.

    Rates are per day, shares are probabilities. See the module docstring for
    how each parameter enters the model.

    Parameters
    ----------
    nonbuyer_share : float, default 0.3
        Share of customers who sign up but never buy.
    first_purchase_lag_hours : float, default 0.5
        Mean of the exponential lag between signup and first purchase.
    r, alpha : float, default 0.8, 40.0
        BG/NBD purchase rate ``lambda ~ Gamma(shape=r, scale=1/alpha)`` per
        day: mean 0.02, one purchase every 50 days while alive.
    a, b : float, default 0.8, 4.0
        BG/NBD dropout probability ``p ~ Beta(a, b)`` (mean 0.17).
    dropout_at_first_purchase : bool, default False
        Let buyers drop out at their first purchase too (MBG/NBD) instead of
        only after repeat purchases (BG/NBD).
    p, q, gamma : float, default 6.0, 4.0, 30.0
        Gamma-Gamma spend: ``nu ~ Gamma(shape=q, scale=1/gamma)``, order value
        ``~ Gamma(shape=p, scale=1/nu)``; mean order value
        ``p * gamma / (q - 1) = 60``.
    discount_share : float, default 0.25
        Share of orders with a discount.
    discount_rates : tuple of float, default (0.05, 0.1, 0.15, 0.2, 0.3)
        Discount rates drawn uniformly for discounted orders.
    refund_share : float, default 0.02
        Share of orders later (partly) refunded.
    channel_shares : tuple of float, default (0.6, 0.3, 0.1)
        Shares of the web, app and store channels.
    n_products : int, default 200
        Products in the catalogue (each in one of the 8 categories).
    category_concentration : float, default 0.5
        Dirichlet concentration of the customers' category preferences.
    privacy_proxy_share : float, default 0.4
        Share of customers whose opens go through a privacy proxy (Apple MPP).
    campaigns_per_week : float, default 1.0
        Email campaigns per week.
    promotional_share : float, default 0.6
        Share of campaigns of kind 'promotional' (the rest are newsletters).
    audience_share_range : tuple of float, default (0.5, 0.7)
        Each campaign targets a share of the mailable customers drawn
        uniformly from this range.
    holdout_share : float, default 0.1
        Share of a campaign's audience held out.
    bad_address_share : float, default 0.01
        Share of customers whose address hard-bounces on the first send.
    soft_bounce_rate : float, default 0.01
        Probability a send bounces softly (status unchanged).
    engagement_a, engagement_b : float, default 1.2, 4.0
        Beta prior of the human open probability per delivered email.
    click_a, click_b : float, default 1.5, 8.0
        Beta prior of the click probability given a human open.
    unsubscribe_rate : float, default 0.005
        Probability of unsubscribing after a human open (x3 for sleeping dogs).
    complaint_rate : float, default 0.0005
        Probability of a spam complaint per delivered email.
    flag_machine_opens : bool, default False
        Whether the ESP flags opens: ``machine_open`` True for proxy opens and
        False for human opens (null on every event when False).
    fade_days, fade_floor : float, default 60.0, 0.03
        Engagement decays linearly over ``fade_days`` before dropout down to
        ``fade_floor`` times its level.
    hour_sd : float, default 1.5
        Spread (hours) of human activity around the preferred local hour.
    response_shares : tuple of float, default (0.2, 0.15, 0.6, 0.05)
        Shares of persuadables, sure things, lost causes and sleeping dogs
        among buyers.
    persuadable_a, persuadable_b : float, default 2.0, 30.0
        Beta prior of a persuadable's extra order probability per delivered
        email (mean 0.0625).
    sure_thing_rate : float, default 0.03
        A sure thing's order probability around each campaign, emailed or not.
    sleeping_dog_rate : float, default 0.04
        A sleeping dog's order probability around each campaign when not
        emailed (a delivered email cancels it).
    response_window_days : float, default 5.0
        Window after a campaign in which campaign-driven orders fall.
    initial_status_shares : tuple of float, default (0.03, 0.01, 0.003)
        Shares of customers who are unsubscribed, bounced or complained at
        signup (the rest are subscribed).
    email_consent_share, sms_consent_share : float, default 0.95, 0.35
        Shares with marketing email / SMS consent.
    timezone_null_share, country_null_share : float, default 0.1, 0.03
        Shares with unknown time zone / country in ``customers``.
    country_mismatch_share : float, default 0.05
        Share whose country does not follow from their time zone.
    browse_base_rate : float, default 0.005
        Browse sessions per day of every customer.
    browse_per_purchase : float, default 0.4
        Extra browse sessions per expected purchase (rate ``+ 0.4 lambda``).
    abandoned_per_purchase : float, default 0.2
        Abandoned-cart sessions per expected purchase (rate ``0.2 lambda``;
        never-buyers use ``0.2 * browse_base_rate``).
    """

    nonbuyer_share: float = 0.3
    first_purchase_lag_hours: float = 0.5
    r: float = 0.8
    alpha: float = 40.0
    a: float = 0.8
    b: float = 4.0
    dropout_at_first_purchase: bool = False
    p: float = 6.0
    q: float = 4.0
    gamma: float = 30.0
    discount_share: float = 0.25
    discount_rates: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)
    refund_share: float = 0.02
    channel_shares: tuple[float, ...] = (0.6, 0.3, 0.1)
    n_products: int = 200
    category_concentration: float = 0.5
    privacy_proxy_share: float = 0.4
    campaigns_per_week: float = 1.0
    promotional_share: float = 0.6
    audience_share_range: tuple[float, float] = (0.5, 0.7)
    holdout_share: float = 0.1
    bad_address_share: float = 0.01
    soft_bounce_rate: float = 0.01
    engagement_a: float = 1.2
    engagement_b: float = 4.0
    click_a: float = 1.5
    click_b: float = 8.0
    unsubscribe_rate: float = 0.005
    complaint_rate: float = 0.0005
    flag_machine_opens: bool = False
    fade_days: float = 60.0
    fade_floor: float = 0.03
    hour_sd: float = 1.5
    response_shares: tuple[float, ...] = (0.2, 0.15, 0.6, 0.05)
    persuadable_a: float = 2.0
    persuadable_b: float = 30.0
    sure_thing_rate: float = 0.03
    sleeping_dog_rate: float = 0.04
    response_window_days: float = 5.0
    initial_status_shares: tuple[float, ...] = (0.03, 0.01, 0.003)
    email_consent_share: float = 0.95
    sms_consent_share: float = 0.35
    timezone_null_share: float = 0.1
    country_null_share: float = 0.03
    country_mismatch_share: float = 0.05
    browse_base_rate: float = 0.005
    browse_per_purchase: float = 0.4
    abandoned_per_purchase: float = 0.2

    _SHARES = (
        "nonbuyer_share",
        "discount_share",
        "refund_share",
        "privacy_proxy_share",
        "promotional_share",
        "holdout_share",
        "bad_address_share",
        "soft_bounce_rate",
        "unsubscribe_rate",
        "complaint_rate",
        "fade_floor",
        "sure_thing_rate",
        "sleeping_dog_rate",
        "email_consent_share",
        "sms_consent_share",
        "timezone_null_share",
        "country_null_share",
        "country_mismatch_share",
    )
    _POSITIVE = (
        "first_purchase_lag_hours",
        "r",
        "alpha",
        "a",
        "b",
        "p",
        "q",
        "gamma",
        "category_concentration",
        "engagement_a",
        "engagement_b",
        "click_a",
        "click_b",
        "fade_days",
        "hour_sd",
        "persuadable_a",
        "persuadable_b",
        "response_window_days",
    )
    _NON_NEGATIVE = (
        "campaigns_per_week",
        "browse_base_rate",
        "browse_per_purchase",
        "abandoned_per_purchase",
    )

    def __post_init__(self) -> None:
        for name in self._SHARES:
            _check_share(name, getattr(self, name))
        for name in self._POSITIVE:
            value = getattr(self, name)
            if not _is_real(value) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"Valid values for {name!r} are > 0. Got {value!r}.")
        for name in self._NON_NEGATIVE:
            value = getattr(self, name)
            if not _is_real(value) or not value >= 0 or not math.isfinite(value):
                raise ConfigError(f"Valid values for {name!r} are >= 0. Got {value!r}.")
        for name in ("dropout_at_first_purchase", "flag_machine_opens"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ConfigError(
                    f"Valid values for {name!r} are True or False. Got {getattr(self, name)!r}."
                )
        for name in ("discount_rates",):
            rates = getattr(self, name)
            if len(rates) == 0 or any(not _is_real(v) or not 0 <= v < 1 for v in rates):
                raise ConfigError(
                    f"Valid values for {name!r} are one or more rates in [0, 1). Got {rates!r}."
                )
        for name, n in (("channel_shares", 3), ("response_shares", 4)):
            shares = getattr(self, name)
            if (
                len(shares) != n
                or any(not _is_real(v) or not 0 <= v <= 1 for v in shares)
                or abs(sum(shares) - 1) > 1e-6
            ):
                raise ConfigError(
                    f"Valid values for {name!r} are {n} shares in [0, 1] summing to 1. "
                    f"Got {shares!r}."
                )
        shares = self.initial_status_shares
        if len(shares) != 3 or any(not _is_real(v) or v < 0 for v in shares) or sum(shares) > 1:
            raise ConfigError(
                "Valid values for 'initial_status_shares' are 3 shares (unsubscribed, bounced, "
                f"complained) >= 0 summing to at most 1. Got {shares!r}."
            )
        lo_hi = self.audience_share_range
        if (
            len(lo_hi) != 2
            or not all(_is_real(v) for v in lo_hi)
            or not 0 <= lo_hi[0] <= lo_hi[1] <= 1
        ):
            raise ConfigError(
                "Valid values for 'audience_share_range' are (low, high) with "
                f"0 <= low <= high <= 1. Got {lo_hi!r}."
            )
        if (
            not isinstance(self.n_products, numbers.Integral)
            or isinstance(self.n_products, bool)
            or self.n_products < len(CATEGORIES)
        ):
            raise ConfigError(
                f"Valid values for 'n_products' are integers >= {len(CATEGORIES)}. "
                f"Got {self.n_products!r}."
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all parameters."""
        return tuple(f.name for f in fields(cls))


# --------------------------------------------------------------------------- checks


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_share(name: str, value: Any) -> None:
    if not _is_real(value) or not 0 <= value <= 1:
        raise ConfigError(f"Valid values for {name!r} are between 0 and 1. Got {value!r}.")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"Valid values for {name!r} are integers >= {minimum}. Got {value!r}.")
    return int(value)


def _parse_end(end: str | pd.Timestamp) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(end)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Valid values for 'end' are dates such as '2024-06-30'. Got {end!r}."
        ) from exc
    if ts is pd.NaT or pd.isna(ts):
        raise ConfigError(f"Valid values for 'end' are dates such as '2024-06-30'. Got {end!r}.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


# --------------------------------------------------------------------------- helpers


def _group_offsets(counts: np.ndarray) -> np.ndarray:
    """Start offset of each group in a flat array holding ``counts`` per group."""
    offsets = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    return offsets


def _position_in_group(counts: np.ndarray) -> np.ndarray:
    """0-based position of every element within its group."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_group_offsets(counts), counts)


def _labels(codes: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Object array of strings for integer ``codes`` (``-1`` is null).

    Every row points at one shared Python string per label, so a column costs
    8 bytes a row however long its values are (user agents), and it survives a
    Parquet round trip unchanged.
    """
    lookup = np.array([*labels, None], dtype=object)
    return lookup[np.asarray(codes)]  # -1 picks the trailing None


def _empty_frame(table: str) -> pd.DataFrame:
    """An empty ``email_events``, ``web_events`` or ``campaigns`` frame with the usual dtypes."""
    ints, codes = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    if table == "email_events":
        return _email_frame(ints, ints, codes, ints, codes, codes, codes)
    if table == "web_events":
        return _web_frame(ints, ints, codes, ints, codes, codes)
    return pd.DataFrame(
        {
            "campaign_id": ints,
            "name": np.zeros(0, dtype=object),
            "kind": np.zeros(0, dtype=object),
            "sent_at": np.zeros(0, dtype="datetime64[ns]"),
        }
    )


def _email_frame(
    customer_id: np.ndarray,
    campaign_id: np.ndarray,
    variant: np.ndarray,
    occurred_ns: np.ndarray,
    event_type: np.ndarray,
    user_agent: np.ndarray,
    machine: np.ndarray,
) -> pd.DataFrame:
    machine_open = pd.arrays.BooleanArray(machine > 0, machine < 0)
    return pd.DataFrame(
        {
            "customer_id": customer_id.astype(np.int64, copy=False),
            "campaign_id": campaign_id.astype(np.int64, copy=False),
            "variant": _labels(variant, _VARIANTS),
            "occurred_at": occurred_ns.astype(np.int64, copy=False).view("datetime64[ns]"),
            "event_type": _labels(event_type, EMAIL_EVENT_TYPES),
            "user_agent": _labels(user_agent, _USER_AGENTS),
            "machine_open": machine_open,
        },
        copy=False,
    )


def _web_frame(
    customer_id: np.ndarray,
    occurred_ns: np.ndarray,
    event_type: np.ndarray,
    product_id: np.ndarray,
    category: np.ndarray,
    query: np.ndarray,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": customer_id.astype(np.int64, copy=False),
            "occurred_at": occurred_ns.astype(np.int64, copy=False).view("datetime64[ns]"),
            "event_type": _labels(event_type, WEB_EVENT_TYPES),
            "product_id": pd.arrays.IntegerArray(
                np.where(product_id > 0, product_id, 0).astype(np.int64), product_id <= 0
            ),
            "category": _labels(category, CATEGORIES),
            "query": _labels(query, _QUERIES),
        },
        copy=False,
    )


# --------------------------------------------------------------------------- simulator


class _Store:
    """The latent state of one simulation; each ``step_*`` method fills in a part."""

    def __init__(
        self,
        n_customers: int,
        days: int,
        end: pd.Timestamp,
        params: SimulationParams,
        seed: int | None,
        email: bool,
        web: bool,
        schedule: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.n = n_customers
        self.schedule = schedule  # (sent day, kind) of the campaigns, when shared
        self.days = days
        self.horizon = float(days)  # exclusive end of the window, in days
        self.start = end + pd.Timedelta(days=1) - pd.Timedelta(days=days)
        self.prm = params
        self.email = email
        self.web = web
        names = ("customers", "purchases", "spend", "campaigns", "orders", "lines", "web")
        children = np.random.SeedSequence(seed).spawn(len(names))
        self.rng = {k: np.random.default_rng(s) for k, s in zip(names, children, strict=True)}
        self.offsets = self._utc_offsets()

    # -- time -------------------------------------------------------------------------
    def _utc_offsets(self) -> np.ndarray:
        """UTC offset (days) of each time zone at noon UTC of every day of the window."""
        noon = pd.date_range(
            self.start + pd.Timedelta(hours=12), periods=self.days + 3, freq="D", tz="UTC"
        )
        out = np.empty((len(TIMEZONES), len(noon)))
        naive = noon.tz_localize(None)
        for i, tz in enumerate(TIMEZONES):
            out[i] = np.asarray(
                (noon.tz_convert(tz).tz_localize(None) - naive) / pd.Timedelta(days=1)
            )
        return out

    def _snap(
        self, rng: np.random.Generator, t: np.ndarray, cust: np.ndarray, noise_sd: float, mode: str
    ) -> np.ndarray:
        """Move ``t`` to the nearest / next moment at the customer's local preferred hour.

        The target hour is ``preferred_hour + N(0, noise_sd)`` in the
        customer's (true) time zone; ``mode`` is ``"nearest"`` (moves by at
        most 12 hours) or ``"next"`` (moves forward by less than a day).
        """
        hour = self.pref_hour[cust] + rng.normal(0.0, noise_sd, len(t))
        day_idx = np.clip(t, 0, self.offsets.shape[1] - 1).astype(np.int64)
        off = self.offsets[self.tz[cust], day_idx]
        local = t + off
        target = np.floor(local) + np.mod(hour, 24.0) / 24.0
        if mode == "nearest":
            delta = target - local
            delta -= np.round(delta)
            out = local + delta
        else:
            out = np.where(target >= local, target, target + 1.0)
        return out - off

    def _fade(self, cust: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Engagement multiplier: 1 until ``fade_days`` before dropout, then down to the floor."""
        floor = self.prm.fade_floor
        share = np.clip((self.tau[cust] - t) / self.prm.fade_days, 0.0, 1.0)
        return floor + (1.0 - floor) * share

    def to_ns(self, t: np.ndarray) -> np.ndarray:
        """Days since the window start -> int64 epoch nanoseconds (ms resolution, < end)."""
        ms = np.multiply(t, float(_MS_PER_DAY))
        np.floor(ms, out=ms)
        np.clip(ms, 0.0, self.days * _MS_PER_DAY - 1.0, out=ms)
        out = ms.astype(np.int64)
        del ms
        out *= 1_000_000
        out += self.start.value
        return out

    # -- customers ----------------------------------------------------------------------
    def step_customers(self) -> None:
        """Draw every customer's signup, traits, preferences and mailability; the catalogue."""
        prm, n = self.prm, self.n
        rng = self.rng["customers"]
        self.tz = rng.choice(len(TIMEZONES), n, p=_TZ_WEIGHTS).astype(np.int8)
        self.pref_hour = rng.choice(24, n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()).astype(np.int64)
        signup = rng.uniform(0.0, self.horizon, n)
        signup = self._snap(rng, signup, np.arange(n), 2 * prm.hour_sd, "nearest")
        # ids follow signup order; the traits above are iid so sorting keeps them iid.
        self.signup = np.sort(np.clip(signup, 0.0, self.horizon - 1e-6))
        self.is_buyer = rng.random(n) >= prm.nonbuyer_share
        self.lam = rng.gamma(prm.r, 1.0 / prm.alpha, n)
        self.dropout_p = np.clip(rng.beta(prm.a, prm.b, n), 1e-12, 1.0)
        self.nu = rng.gamma(prm.q, 1.0 / prm.gamma, n)
        self.engagement = rng.beta(prm.engagement_a, prm.engagement_b, n)
        self.click = rng.beta(prm.click_a, prm.click_b, n)
        self.proxy = rng.random(n) < prm.privacy_proxy_share
        self.device = rng.integers(1, len(_USER_AGENTS), n).astype(np.int8)
        resp = rng.choice(4, n, p=np.asarray(prm.response_shares)).astype(np.int8)
        self.response = np.where(self.is_buyer, resp, _LOST_CAUSE).astype(np.int8)
        self.u = np.where(
            self.response == _PERSUADABLE, rng.beta(prm.persuadable_a, prm.persuadable_b, n), 0.0
        )
        pref = rng.gamma(prm.category_concentration, 1.0, (n, len(CATEGORIES)))
        pref += 1e-12
        pref /= pref.sum(axis=1, keepdims=True)
        self.favourite = pref.argmax(axis=1).astype(np.int8)
        cum = np.cumsum(pref, axis=1)
        self.cum_pref = [
            np.ascontiguousarray(cum[:, j], dtype=np.float32) for j in range(cum.shape[1] - 1)
        ]
        del pref, cum
        # mailability at signup
        s_unsub, s_bounced, s_compl = prm.initial_status_shares
        status = rng.choice(
            4, n, p=[1 - s_unsub - s_bounced - s_compl, s_unsub, s_bounced, s_compl]
        )
        self.status0 = status.astype(np.int8)  # codes follow EMAIL_STATUSES
        self.consent0 = rng.random(n) < prm.email_consent_share
        self.bad_address = rng.random(n) < prm.bad_address_share
        self.sms = rng.random(n) < prm.sms_consent_share
        tz_null = rng.random(n) < prm.timezone_null_share
        self.tz_observed = np.where(tz_null, -1, self.tz)
        country = np.asarray([_COUNTRIES.index(c) for c in _TZ_COUNTRY])[self.tz]
        mismatch = rng.random(n) < prm.country_mismatch_share
        country = np.where(mismatch, rng.integers(0, len(_COUNTRIES), n), country)
        self.country = np.where(rng.random(n) < prm.country_null_share, -1, country)
        # product catalogue
        k = np.arange(prm.n_products)
        self.product_cat = (k % len(CATEGORIES)).astype(np.int8)
        self.cat_size = np.bincount(self.product_cat, minlength=len(CATEGORIES))
        self.list_price = np.round(
            _CATEGORY_PRICE[self.product_cat] * rng.lognormal(0.0, 0.5, prm.n_products), 2
        )
        self.sure_things = np.flatnonzero(self.response == _SURE_THING)
        self.sleeping_dogs = np.flatnonzero(self.response == _SLEEPING_DOG)
        self.tau = np.full(n, np.inf)  # dropout time (inf: never drops out in the window)
        self.t0 = np.full(n, np.inf)  # first purchase (inf: never buys)

    # -- purchases (BG/NBD) ---------------------------------------------------------------
    def step_purchases(self) -> None:
        """BG/NBD purchases of the buyers (first + repeats), their dropout and spend."""
        prm = self.prm
        rng = self.rng["purchases"]
        buyers = np.flatnonzero(self.is_buyer)
        nb = len(buyers)
        signup = self.signup[buyers]
        lag = rng.exponential(prm.first_purchase_lag_hours / 24.0, nb)
        t0 = signup + np.minimum(lag, (self.horizon - signup) / 2.0)
        window = self.horizon - t0
        lam, p = self.lam[buyers], self.dropout_p[buyers]
        n_window = rng.poisson(lam * window)  # arrivals in the window without dropout
        n_before_dropout = rng.geometric(p)  # J: repeat purchases up to and incl. dropout
        if prm.dropout_at_first_purchase:  # MBG/NBD: the first purchase is one of the J
            n_before_dropout = n_before_dropout - 1
        k = np.minimum(n_window, n_before_dropout)
        alive = n_before_dropout > n_window
        # first k of n_window uniform order statistics via exponential spacings
        grp = np.repeat(np.arange(nb), k)
        spacing = np.cumsum(rng.exponential(1.0, int(k.sum())))
        offsets = _group_offsets(k)
        prev = np.concatenate(([0.0], spacing))[offsets]
        partial = spacing - prev[grp]
        last = np.where(k > 0, np.concatenate(([0.0], spacing))[offsets + k] - prev, 0.0)
        total = last + rng.gamma((n_window - k + 1).astype(np.float64))
        times = t0[grp] + partial / total[grp] * window[grp]
        cust = buyers[grp]
        times = self._snap(rng, times, cust, prm.hour_sd, "nearest")
        times = np.clip(times, t0[grp] + _SECOND, self.horizon - 1e-9)
        dropped = ~alive
        tau = np.full(nb, np.inf)
        has = k > 0
        if has.any():
            last_time = np.maximum.reduceat(times, offsets[has])
            tau[has] = np.where(dropped[has], last_time, np.inf)
        tau[~has & dropped] = t0[~has & dropped]  # MBG/NBD: gone after the first purchase
        self.t0[buyers] = t0
        self.tau[buyers] = tau
        self.alive = np.zeros(self.n, dtype=bool)
        self.alive[buyers] = alive
        self.n_repeat = np.zeros(self.n, dtype=np.int64)
        self.n_repeat[buyers] = k
        self.order_cust = [buyers, cust]
        self.order_t = [t0, times]
        rng_spend = self.rng["spend"]
        self.order_rev = [rng_spend.gamma(prm.p, 1.0 / self.nu[c]) for c in self.order_cust]
        log.debug(
            "BG/NBD: %d buyers, %d repeat purchases, %d alive", nb, int(k.sum()), int(alive.sum())
        )

    # -- campaigns -----------------------------------------------------------------------
    def step_campaigns(self) -> None:
        """Campaigns, their email events and the orders they cause, one campaign at a time."""
        prm = self.prm
        rng = self.rng["campaigns"]
        n_camp = int(round(prm.campaigns_per_week * self.days / 7.0)) if self.email else 0
        self.status_end = status = self.status0.copy()
        if n_camp == 0:
            self.campaigns = _empty_frame("campaigns")
            return
        if self.schedule is None:  # evenly spread over the window, in the (UTC) morning
            day = np.floor((np.arange(n_camp) + rng.uniform(0.1, 0.9, n_camp)) * self.days / n_camp)
            sent = np.sort(
                np.minimum(day + rng.uniform(7.0, 11.0, n_camp) / 24.0, self.horizon - 1.0 / 24)
            )
            kind = (rng.random(n_camp) >= prm.promotional_share).astype(np.int64)
            self.schedule = (sent, kind)
        else:  # another block of the same store: the same campaigns
            sent, kind = self.schedule
            n_camp = len(sent)
        sent_ns = self.to_ns(sent)
        dates = pd.DatetimeIndex(sent_ns.view("datetime64[ns]")).strftime("%Y-%m-%d")
        names = [
            f"{'Promotion' if k == 0 else 'Newsletter'} {d} #{i + 1}"
            for i, (k, d) in enumerate(zip(kind, dates, strict=True))
        ]
        self.campaigns = pd.DataFrame(
            {
                "campaign_id": np.arange(1, n_camp + 1, dtype=np.int64),
                "name": np.array(names, dtype=object),
                "kind": _labels(kind, _KINDS),
                "sent_at": sent_ns.view("datetime64[ns]"),
            }
        )
        mailable = (status == _S_SUBSCRIBED) & self.consent0
        columns = ("cust", "camp", "t", "type", "var", "ua", "mo")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in columns}
        resp_cust: list[np.ndarray] = []
        resp_t: list[np.ndarray] = []
        for c in range(n_camp):
            events, delivered, delivered_t = self._send_campaign(rng, c, sent[c], mailable, status)
            for key in columns:
                parts[key].append(events[key])
            r_cust, r_t = self._campaign_orders(rng, sent[c], delivered, delivered_t)
            resp_cust.append(r_cust)
            resp_t.append(r_t)
        self.email_parts = {}
        for key in columns:  # pop as we go: the pieces are freed one column at a time
            self.email_parts[key] = np.concatenate(parts.pop(key))
        rc, rt = np.concatenate(resp_cust), np.concatenate(resp_t)
        self.order_cust.append(rc)
        self.order_t.append(rt)
        self.order_rev.append(rng.gamma(prm.p, 1.0 / self.nu[rc]))
        log.debug(
            "campaigns: %d, email events: %d, campaign-driven orders: %d",
            n_camp, len(self.email_parts["cust"]), len(rc),
        )  # fmt: skip

    def _send_campaign(
        self,
        rng: np.random.Generator,
        c: int,
        s: float,
        mailable: np.ndarray,
        status: np.ndarray,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Email events of campaign ``c`` sent at ``s``; updates ``mailable`` and ``status``.

        Returns the events (final dtypes, sorted by customer then event order)
        and the delivered customers with their delivery times.
        """
        prm, H = self.prm, self.horizon
        n_signed = int(np.searchsorted(self.signup, s))  # ids follow signup order
        elig = np.flatnonzero(mailable[:n_signed])
        aud = elig[rng.random(len(elig)) < rng.uniform(*prm.audience_share_range)]
        hold = rng.random(len(aud)) < prm.holdout_share
        h_idx, t_idx = aud[hold], aud[~hold]
        nt = len(t_idx)
        var = rng.integers(0, 2, nt).astype(np.int8)
        sent_t = s + rng.uniform(0.0, 20 * _MINUTE, nt)
        bounced = self.bad_address[t_idx] | (rng.random(nt) < prm.soft_bounce_rate)
        bounce_t = sent_t[bounced] + rng.uniform(1, 300, int(bounced.sum())) * _SECOND
        ok = ~bounced
        d_idx, d_var = t_idx[ok], var[ok]
        d_t = sent_t[ok] + rng.uniform(2, 120, len(d_idx)) * _SECOND
        # the human opens (hidden behind a proxy), clicks and opts out
        latent_open = rng.random(len(d_idx)) < self.engagement[d_idx] * self._fade(d_idx, d_t)
        o_idx, o_var = d_idx[latent_open], d_var[latent_open]
        o_t = self._snap(rng, d_t[latent_open] + 5 * _MINUTE, o_idx, prm.hour_sd, "next")
        o_t += (rng.random(len(o_idx)) < 0.15).astype(np.float64)  # some open a day later
        clicked = rng.random(len(o_idx)) < self.click[o_idx]
        c_t = o_t[clicked] + rng.exponential(3 * _MINUTE, int(clicked.sum())) + 5 * _SECOND
        unsub_p = np.where(
            self.response[o_idx] == _SLEEPING_DOG, 3 * prm.unsubscribe_rate, prm.unsubscribe_rate
        )
        unsub = rng.random(len(o_idx)) < unsub_p
        u_t = o_t[unsub] + rng.exponential(5 * _MINUTE, int(unsub.sum())) + 30 * _SECOND
        complaint = (rng.random(len(d_idx)) < prm.complaint_rate) & ~np.isin(
            d_idx, o_idx[unsub], assume_unique=True
        )
        comp_t = d_t[complaint] + rng.uniform(0.01, 1.0, int(complaint.sum()))
        # the proxy fetches every delivered email within seconds
        proxy = self.proxy[d_idx]
        m_t = d_t[proxy] + rng.uniform(1.0, 10.0, int(proxy.sum())) * _SECOND
        human = ~self.proxy[o_idx]
        flag = prm.flag_machine_opens
        blocks = [
            # (customers, times, event code, variants, user agents, machine_open code)
            (h_idx, np.full(len(h_idx), s), _E_HOLDOUT, None, None, -1),
            (t_idx, sent_t, _E_SENT, var, None, -1),
            (t_idx[bounced], bounce_t, _E_BOUNCE, var[bounced], None, -1),
            (d_idx, d_t, _E_DELIVERED, d_var, None, -1),
            (d_idx[proxy], m_t, _E_OPEN, d_var[proxy], 0, 1 if flag else -1),
            (o_idx[human], o_t[human], _E_OPEN, o_var[human], "device", 0 if flag else -1),
            (o_idx[clicked], c_t, _E_CLICK, o_var[clicked], "device", -1),
            (o_idx[unsub], u_t, _E_UNSUB, o_var[unsub], None, -1),
            (d_idx[complaint], comp_t, _E_COMPLAINT, d_var[complaint], None, -1),
        ]
        cs, ts, types, vs, uas, mos = [], [], [], [], [], []
        for b_cust, b_t, code, b_var, ua, mo in blocks:
            keep = b_t < H
            b_cust, b_t = b_cust[keep], b_t[keep]
            m = len(b_cust)
            cs.append(b_cust)
            ts.append(b_t)
            types.append(np.full(m, code, dtype=np.int8))
            vs.append(np.full(m, -1, dtype=np.int8) if b_var is None else b_var[keep])
            if ua is None:
                uas.append(np.full(m, -1, dtype=np.int8))
            elif ua == "device":
                uas.append(self.device[b_cust])
            else:
                uas.append(np.full(m, ua, dtype=np.int8))
            mos.append(np.full(m, mo, dtype=np.int8))
            # mailability changes take effect for later campaigns
            if code == _E_UNSUB:
                status[b_cust] = _S_UNSUBSCRIBED
                mailable[b_cust] = False
            elif code == _E_COMPLAINT:
                status[b_cust] = _S_COMPLAINED
                mailable[b_cust] = False
            elif code == _E_BOUNCE:
                hard = b_cust[self.bad_address[b_cust]]
                status[hard] = _S_BOUNCED
                mailable[hard] = False
        cust = np.concatenate(cs)
        etype = np.concatenate(types)
        order = np.argsort(cust.astype(np.int64) * 8 + _E_RANK[etype], kind="stable")
        events = {
            "cust": cust[order].astype(np.int64) + 1,
            "camp": np.full(len(order), c + 1, dtype=np.int64),
            "t": self.to_ns(np.concatenate(ts)[order]),
            "type": etype[order],
            "var": np.concatenate(vs)[order],
            "ua": np.concatenate(uas)[order],
            "mo": np.concatenate(mos)[order],
        }
        return events, d_idx, d_t

    def _campaign_orders(
        self, rng: np.random.Generator, s: float, delivered: np.ndarray, delivered_t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Orders caused (or prevented) by a campaign sent at ``s``: customers and times.

        Only alive buyers respond, damped by their fading engagement, and no
        order lands after the customer's dropout or outside the response window.
        """
        prm = self.prm
        window = prm.response_window_days
        is_pers = self.response[delivered] == _PERSUADABLE
        pers, pers_t = delivered[is_pers], delivered_t[is_pers]
        live = (self.t0[pers] < pers_t) & (pers_t < self.tau[pers])
        pers, pers_t = pers[live], pers_t[live]
        hit = rng.random(len(pers)) < self.u[pers] * self._fade(pers, pers_t)
        cust, base = [pers[hit]], [pers_t[hit]]
        for group, rate in (
            (self.sure_things, prm.sure_thing_rate),
            (self.sleeping_dogs, prm.sleeping_dog_rate),
        ):
            g = group[(self.t0[group] < s) & (s < self.tau[group])]
            if group is self.sleeping_dogs:  # a delivered email puts them off
                g = g[~np.isin(g, delivered, assume_unique=True)]
            hit = rng.random(len(g)) < rate * self._fade(g, s)
            cust.append(g[hit])
            base.append(np.full(int(hit.sum()), s))
        r_cust, r_base = np.concatenate(cust), np.concatenate(base)
        delay = np.clip(rng.exponential(1.0, len(r_cust)), 0.0, max(window - 1.1, 0.0))
        r_t = self._snap(rng, r_base + delay + 10 * _MINUTE, r_cust, prm.hour_sd, "next")
        keep = (r_t < self.horizon) & (r_t < self.tau[r_cust]) & (r_t < r_base + window)
        return r_cust[keep], r_t[keep]

    # -- orders and lines ----------------------------------------------------------------------
    def _draw_products(
        self, rng: np.random.Generator, cust: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Category from the customer's preferences, product from that category (0-based)."""
        u = rng.random(len(cust), dtype=np.float32)
        cat = np.zeros(len(cust), dtype=np.int64)
        for col in self.cum_pref:
            cat += u > col[cust]
        within = np.floor(self.cat_size[cat] * rng.random(len(cust)) ** 2).astype(np.int64)
        product = cat + len(CATEGORIES) * within
        return product, cat

    def step_orders(self) -> None:
        """Order rows (with discounts, channels and refunds) and order lines."""
        prm = self.prm
        rng = self.rng["orders"]
        cust = np.concatenate(self.order_cust)
        t = np.concatenate(self.order_t)
        rev = np.maximum(np.round(np.concatenate(self.order_rev), 2), 0.01)
        n_pos = len(cust)
        channel = rng.choice(3, n_pos, p=np.asarray(prm.channel_shares))
        rates = np.asarray(prm.discount_rates)[rng.integers(0, len(prm.discount_rates), n_pos)]
        discounted = rng.random(n_pos) < prm.discount_share
        discount = np.where(discounted, np.round(rev * rates / (1.0 - rates), 2), 0.0)
        refunded = np.flatnonzero(rng.random(n_pos) < prm.refund_share)
        ref_t = t[refunded] + rng.uniform(1.0, 21.0, len(refunded))
        frac = np.where(rng.random(len(refunded)) < 0.6, 1.0, rng.uniform(0.2, 0.9, len(refunded)))
        keep = ref_t < self.horizon
        refunded, ref_t, frac = refunded[keep], ref_t[keep], frac[keep]
        all_cust = np.concatenate([cust, cust[refunded]])
        all_t = np.concatenate([t, ref_t])
        ns = self.to_ns(all_t)
        order = np.argsort(ns, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.orders = pd.DataFrame(
            {
                "order_id": np.arange(1, len(order) + 1, dtype=np.int64),
                "customer_id": all_cust[order].astype(np.int64) + 1,
                "ordered_at": ns[order].view("datetime64[ns]"),
                "revenue": np.concatenate([rev, -np.round(rev[refunded] * frac, 2)])[order],
                "discount": np.concatenate([discount, np.zeros(len(refunded))])[order],
                "channel": _labels(np.concatenate([channel, channel[refunded]])[order], _CHANNELS),
            }
        )
        # order lines of the purchases (refunds have none)
        rng = self.rng["lines"]
        n_lines = 1 + rng.binomial(3, 0.25, n_pos)
        line_order = np.repeat(np.arange(n_pos), n_lines)
        product, cat = self._draw_products(rng, cust[line_order])
        qty = 1 + rng.poisson(0.2, len(line_order))
        weight = self.list_price[product] * qty
        wsum = np.bincount(line_order, weights=weight, minlength=n_pos)
        price = np.maximum(np.round(rev[line_order] * weight / wsum[line_order] / qty, 2), 0.01)
        line_ids = rank[line_order] + 1
        lo = np.argsort(line_ids, kind="stable")
        self.order_lines = pd.DataFrame(
            {
                "order_id": line_ids[lo].astype(np.int64),
                "product_id": product[lo] + 1,
                "category": _labels(cat[lo], CATEGORIES),
                "quantity": qty[lo].astype(np.int64),
                "price": price[lo],
            }
        )
        first = _group_offsets(n_lines)
        self.purchase = {
            "cust": cust,
            "t": t,
            "product": product[first],
            "cat": cat[first],
        }

    # -- web -----------------------------------------------------------------------------------
    def step_web(self) -> None:
        """Purchase funnels, browse sessions and abandoned carts."""
        if not self.web:
            self.web_events = _empty_frame("web_events")
            return
        prm = self.prm
        rng = self.rng["web"]
        pv, pg, se = _W_CODES["product_view"], _W_CODES["page_view"], _W_CODES["search"]
        atc, chk = _W_CODES["add_to_cart"], _W_CODES["checkout_start"]
        # slot: (event code, probability, product: 0 none / 1 target / 2 other)
        funnel = [(pg, 0.4, 0), (se, 0.25, 0), (pv, 0.3, 2), (pv, 1.0, 1), (pv, 0.3, 1),
                  (pv, 0.1, 1), (atc, 1.0, 1), (chk, 1.0, 1)]  # fmt: skip
        browse = [(pg, 0.6, 0), (se, 0.3, 0), (pv, 1.0, 1), (pv, 0.4, 1), (pv, 0.15, 1),
                  (pv, 0.4, 2), (pv, 0.2, 2)]  # fmt: skip
        abandon = [(pg, 0.5, 0), (pv, 1.0, 1), (pv, 0.3, 1), (atc, 1.0, 1), (chk, 0.25, 1)]

        out: list[tuple[np.ndarray, ...]] = []
        # 1. a short session before every purchase, ending just before the order
        pur = self.purchase
        out.append(self._sessions(rng, funnel, pur["cust"], pur["t"], pur["product"],
                                  pur["cat"], anchor="end"))  # fmt: skip

        # 2. browse sessions and 3. abandoned carts: thinned Poisson processes
        lam = np.where(self.is_buyer, self.lam, 0.0)
        span = self.horizon - self.signup
        for template, rate in (
            (browse, prm.browse_base_rate + prm.browse_per_purchase * lam),
            (abandon, np.where(self.is_buyer, prm.abandoned_per_purchase * lam,
                               0.2 * prm.browse_base_rate)),
        ):  # fmt: skip
            m = rng.poisson(rate * span)
            sc = np.repeat(np.arange(self.n), m)
            st = self.signup[sc] + rng.random(len(sc)) * span[sc]
            keep = rng.random(len(sc)) < self._fade(sc, st)
            sc, st = sc[keep], st[keep]
            st = np.clip(
                self._snap(rng, st, sc, prm.hour_sd, "nearest"),
                self.signup[sc],
                self.horizon - 1e-6,
            )
            if template is abandon:
                st, sc = self._drop_followed_by_order(st, sc)
            product, cat = self._draw_products(rng, sc)
            out.append(self._sessions(rng, template, sc, st, product, cat, anchor="start"))

        cust, t, etype, product, cat, query = (np.concatenate(x) for x in zip(*out, strict=True))
        del out
        sel = np.flatnonzero(t < self.horizon)
        ns = self.to_ns(t[sel])
        del t
        order = np.argsort(ns, kind="stable")
        ns = ns[order]
        sel = sel[order]
        del order
        self.web_events = _web_frame(
            cust[sel].astype(np.int64) + 1,
            ns,
            etype[sel],
            product[sel],
            cat[sel],
            query[sel],
        )

    def _drop_followed_by_order(
        self, st: np.ndarray, sc: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Drop abandoned-cart sessions followed by an order of the customer within a day."""
        key_orders = self.purchase["cust"] * (self.horizon + 10.0) + self.purchase["t"]
        key_orders = np.sort(key_orders)
        key = sc * (self.horizon + 10.0) + st
        nxt = np.searchsorted(key_orders, key, side="right")
        has_next = nxt < len(key_orders)
        gap = np.where(has_next, key_orders[np.minimum(nxt, len(key_orders) - 1)] - key, np.inf)
        keep = gap > 1.0
        return st[keep], sc[keep]

    def _sessions(
        self,
        rng: np.random.Generator,
        template: list[tuple[int, float, int]],
        cust: np.ndarray,
        anchor_t: np.ndarray,
        product: np.ndarray,
        cat: np.ndarray,
        anchor: str,
    ) -> tuple[np.ndarray, ...]:
        """Expand sessions into events following ``template`` (one row per present slot)."""
        n_s, n_slots = len(cust), len(template)
        present = np.empty((n_s, n_slots), dtype=bool)
        for j, (_, prob, _) in enumerate(template):
            present[:, j] = True if prob >= 1 else rng.random(n_s, dtype=np.float32) < prob
        sess, slot = np.nonzero(present)
        counts = present.sum(axis=1)
        del present
        pos = _position_in_group(counts)
        codes = np.array([s[0] for s in template], dtype=np.int8)
        kinds = np.array([s[2] for s in template], dtype=np.int8)
        gap = rng.uniform(0.5, 4.0, n_s) * _MINUTE
        if anchor == "end":
            # compress the session when it would start before signup
            room = anchor_t - self.signup[cust]
            gap = np.minimum(gap, room / (counts + 1))
            after = counts[sess] - pos
            t = anchor_t[sess] - after * gap[sess]
        else:
            t = anchor_t[sess] + (pos + 0.5 * rng.random(len(sess))) * gap[sess]
        e_cust = cust[sess].astype(np.int32)
        kind = kinds[slot]
        other, other_cat = self._draw_products(rng, e_cust[kind == 2])
        e_product = np.where(kind == 1, product[sess] + 1, 0).astype(np.int32)
        e_cat = cat[sess].astype(np.int16)
        e_product[kind == 2] = other + 1
        e_cat[kind == 2] = other_cat
        e_type = codes[slot]
        is_search = e_type == _W_CODES["search"]
        query = np.where(is_search, e_cat * 3 + rng.integers(0, 3, len(sess)), -1).astype(np.int16)
        return e_cust, t, e_type, e_product, e_cat, query

    # -- assemble ---------------------------------------------------------------------------------
    def customers_frame(self) -> pd.DataFrame:
        n = self.n
        status = self.status_end
        consent = self.consent0 & ~np.isin(status, (_S_UNSUBSCRIBED, _S_COMPLAINED))
        ids = np.arange(1, n + 1, dtype=np.int64)
        return pd.DataFrame(
            {
                "customer_id": ids,
                "email": _emails(ids),
                "created_at": self.to_ns(self.signup).view("datetime64[ns]"),
                "timezone": _labels(self.tz_observed, TIMEZONES),
                "country": _labels(self.country, _COUNTRIES),
                "email_status": _labels(status, EMAIL_STATUSES),
                "email_consent": consent,
                "sms_consent": self.sms,
            }
        )

    def email_frame(self) -> pd.DataFrame:
        if not self.email or not hasattr(self, "email_parts"):
            return _empty_frame("email_events")
        e = self.email_parts
        frame = _email_frame(
            e["cust"],
            e["camp"],
            e["var"],
            e["t"],
            e["type"],
            e["ua"],
            e["mo"],
        )
        del self.email_parts
        return frame

    def truth_frame(self) -> pd.DataFrame:
        buyer = self.is_buyer
        dropped = np.isfinite(self.tau)
        dropout_ns = np.where(
            dropped, self.to_ns(np.where(dropped, self.tau, 0.0)), np.iinfo(np.int64).min
        )
        nan = np.nan
        uplift_scale = np.exp(-self.prm.response_window_days * self.lam)
        pi_t = np.where(self.response == _PERSUADABLE, self.u, 0.0)
        pi_h = np.where(self.response == _SLEEPING_DOG, self.prm.sleeping_dog_rate, 0.0)
        return pd.DataFrame(
            {
                "customer_id": np.arange(1, self.n + 1, dtype=np.int64),
                "is_buyer": buyer,
                "alive_at_end": self.alive,
                "dropout_at": dropout_ns.view("datetime64[ns]"),
                "purchase_rate": np.where(buyer, self.lam, nan),
                "dropout_p": np.where(buyer, self.dropout_p, nan),
                "expected_spend": np.where(buyer, self.prm.p / self.nu, nan),
                "n_repeat_purchases_simulated": self.n_repeat,
                "engagement": self.engagement,
                "click_propensity": self.click,
                "preferred_hour": self.pref_hour,
                "timezone": _labels(self.tz, TIMEZONES),
                "favourite_category": _labels(self.favourite, CATEGORIES),
                "privacy_proxy": self.proxy,
                "response_type": _labels(self.response, RESPONSE_TYPES),
                "true_uplift": np.where(buyer, (pi_t - pi_h) * uplift_scale, 0.0),
            }
        )


def simulate_store(
    n_customers: int = 10_000,
    days: int = 730,
    seed: int = 0,
    end: str | pd.Timestamp = "2024-06-30",
    privacy_proxy_share: float = 0.4,
    campaigns_per_week: float = 1.0,
    email: bool = True,
    web: bool = True,
    progress: bool = False,
    **params: Any,
) -> dict[str, pd.DataFrame]:
    """Simulate an online store with known ground truth.

    The generative model (BG/NBD purchases, Gamma-Gamma spend, campaigns with
    holdouts, privacy-proxy opens, fading engagement, heterogeneous uplift)
    is described in the module docstring.

    Parameters
    ----------
    n_customers : int, default 10_000
        Customers to simulate (ids ``1..n_customers`` in signup order).
    days : int, default 730
        Length of the history in days, ending with the day ``end``.
    seed : int, default 0
        Seed of the random generator; the same seed gives identical tables
        (``None`` draws fresh entropy).
    end : str or pandas.Timestamp, default "2024-06-30"
        Last day of data. Every timestamp is before ``end + 1 day`` (a time of
        day is ignored; zone-aware values are converted to UTC first).
    privacy_proxy_share : float, default 0.4
        Share of customers behind a privacy proxy (Apple Mail Privacy
        Protection): every delivered email shows a machine open.
    campaigns_per_week : float, default 1.0
        Email campaigns per week.
    email : bool, default True
        Simulate campaigns; ``False`` gives a pure BG/NBD store with empty
        ``email_events`` and ``campaigns``.
    web : bool, default True
        Simulate web events; ``False`` leaves ``web_events`` empty.
    progress : bool, default False
        Show a progress bar over the generation steps.
    **params
        Any field of :class:`SimulationParams` (e.g. ``r=0.5``,
        ``flag_machine_opens=True``).

    Returns
    -------
    dict of str to pandas.DataFrame
        ``customers``, ``orders``, ``order_lines``, ``web_events``,
        ``email_events`` and ``campaigns`` with exactly the columns of their
        contracts in :mod:`bmkt.schema`, and ``truth`` with
        :data:`TRUTH_COLUMNS`. Ids are int64 (``Int64`` for the nullable
        ``web_events.product_id``), timestamps naive UTC ``datetime64[ns]``,
        strings object arrays sharing one Python string per distinct value.

    Raises
    ------
    ConfigError
        When an argument or parameter is invalid.

    References
    ----------
    Fader, Hardie & Lee (2005), "Counting your customers" the easy way, and
    RFM and CLV: using iso-value curves; see the module docstring.

    Examples
    --------
    >>> t = simulate_store(n_customers=200, days=90, seed=3, email=False)
    >>> len(t["campaigns"]), bool(t["truth"]["is_buyer"].any())
    (0, True)
    """
    n_customers = _check_int("n_customers", n_customers, 1)
    days = _check_int("days", days, 1)
    if seed is not None:
        seed = _check_int("seed", seed, 0)
    end_day = _parse_end(end)
    prm = _params(privacy_proxy_share, campaigns_per_week, params)
    tables, _ = _simulate(n_customers, days, end_day, prm, seed, bool(email), bool(web), progress)
    return tables


def _params(
    privacy_proxy_share: float, campaigns_per_week: float, params: dict[str, Any]
) -> SimulationParams:
    """The checked parameters of a simulation; unknown names are a ConfigError."""
    unknown = sorted(set(params) - set(SimulationParams.field_names()))
    if unknown:
        raise ConfigError(
            f"Valid options for simulation parameters are {list(SimulationParams.field_names())}. "
            f"Got unknown {unknown}."
        )
    return SimulationParams(
        privacy_proxy_share=privacy_proxy_share, campaigns_per_week=campaigns_per_week, **params
    )


def _simulate(
    n_customers: int,
    days: int,
    end_day: pd.Timestamp,
    prm: SimulationParams,
    seed: Any,
    email: bool,
    web: bool,
    progress: bool,
    schedule: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, pd.DataFrame], tuple[np.ndarray, np.ndarray] | None]:
    """Run the generation steps; also return the campaign schedule for other blocks."""
    started = time.perf_counter()
    log.info(
        "Simulating %d customers over %d days ending %s (seed=%s, email=%s, web=%s)",
        n_customers, days, end_day.date(), seed, email, web,
    )  # fmt: skip
    store = _Store(n_customers, days, end_day, prm, seed, email, web, schedule)
    steps = [
        ("customers", store.step_customers),
        ("purchases", store.step_purchases),
        ("campaigns", store.step_campaigns),
        ("orders", store.step_orders),
        ("web events", store.step_web),
    ]
    tables: dict[str, pd.DataFrame] = {}
    with tqdm(total=len(steps) + 1, desc="simulate_store", disable=not progress) as bar:
        for name, step in steps:
            bar.set_postfix_str(name)
            t_step = time.perf_counter()
            step()
            log.debug("step %s took %.2fs", name, time.perf_counter() - t_step)
            bar.update()
        bar.set_postfix_str("tables")
        tables["customers"] = store.customers_frame()
        tables["orders"] = store.orders
        tables["order_lines"] = store.order_lines
        tables["web_events"] = store.web_events
        tables["email_events"] = store.email_frame()
        tables["campaigns"] = store.campaigns
        tables["truth"] = store.truth_frame()
        bar.update()
    for name, frame in tables.items():
        expected = CONTRACTS[name].column_names if name in CONTRACTS else TRUTH_COLUMNS
        assert tuple(frame.columns) == tuple(expected), (name, list(frame.columns))
    log.info(
        "Simulated store in %.1fs: %s",
        time.perf_counter() - started,
        ", ".join(f"{k}={len(v):,}" for k, v in tables.items()),
    )
    return {name: tables[name] for name in TABLES}, store.schedule


#: Id columns shifted per block by :func:`simulate_to_folder` (campaigns are shared).
def _emails(ids: np.ndarray) -> np.ndarray:
    """The simulated address of each customer id: ``customer<id>@example.com``."""
    email = pc.binary_join_element_wise(
        "customer", pa.array(ids).cast(pa.string()), "@example.com", ""
    )
    return email.to_numpy(zero_copy_only=False).astype(object)


_BLOCK_IDS = {
    "customers": ("customer_id",),
    "orders": ("order_id", "customer_id"),
    "order_lines": ("order_id",),
    "web_events": ("customer_id",),
    "email_events": ("customer_id",),
    "truth": ("customer_id",),
}


def simulate_to_folder(
    out_dir: str | os.PathLike[str],
    n_customers: int,
    *,
    block_size: int = 1_000_000,
    days: int = 730,
    seed: int = 0,
    end: str | pd.Timestamp = "2024-06-30",
    privacy_proxy_share: float = 0.4,
    campaigns_per_week: float = 1.0,
    email: bool = True,
    web: bool = True,
    progress: bool = False,
    **params: Any,
) -> dict[str, Path]:
    """Simulate a store too large for memory, block by block, into a folder.

    Customers are simulated in independent blocks of ``block_size`` (the
    model treats customers independently given the campaigns, which all
    blocks share), each written as soon as it is drawn, so peak memory is
    that of one block (about 7 GB per million customers with email and web).
    Ids are shifted per block so that they stay unique; one block gives
    exactly the tables of :func:`simulate_store` with the same arguments.

    Parameters
    ----------
    out_dir : path-like
        Folder to (re)place, atomically as in :func:`write_store`; it gets one
        folder per table (``orders/part-00000.parquet``, ...) that
        :func:`bmkt.io.open_store` and ``bmkt ingest`` read as they are.
    n_customers : int
        Customers in all.
    block_size : int, default 1_000_000
        Customers per block.
    days, seed, end, privacy_proxy_share, campaigns_per_week, email, web, **params
        As in :func:`simulate_store`; block ``i > 0`` is seeded from
        ``(seed, i)``.
    progress : bool
        Show a progress bar over the blocks.

    Returns
    -------
    dict of str to pathlib.Path
        The folder of each table.
    """
    from tqdm.auto import tqdm

    n_customers = _check_int("n_customers", n_customers, 1)
    block_size = _check_int("block_size", block_size, 1)
    days = _check_int("days", days, 1)
    seed = _check_int("seed", seed, 0)
    end_day = _parse_end(end)
    prm = _params(privacy_proxy_share, campaigns_per_week, params)
    sizes = [block_size] * (n_customers // block_size)
    if n_customers % block_size:
        sizes.append(n_customers % block_size)

    def fill(tmp: Path) -> dict[str, Path]:
        schedule = None
        shift = {"customer_id": 0, "order_id": 0}
        for i, size in enumerate(tqdm(sizes, desc="blocks", disable=not progress)):
            block_seed = seed if i == 0 else [seed, i]
            tables, schedule = _simulate(
                size, days, end_day, prm, block_seed, bool(email), bool(web), False, schedule
            )
            n_orders = int(tables["orders"]["order_id"].max()) if len(tables["orders"]) else 0
            for name in TABLES:
                if name == "campaigns" and i > 0:
                    continue
                frame = tables.pop(name)
                for col in _BLOCK_IDS.get(name, ()):
                    frame[col] = frame[col] + shift[col]
                if name == "customers" and i > 0:  # addresses follow the shifted ids
                    frame["email"] = _emails(frame["customer_id"].to_numpy())
                folder = tmp / name
                folder.mkdir(exist_ok=True)
                frame.to_parquet(folder / f"part-{i:05d}.parquet", index=False)
                del frame
            shift["customer_id"] += size
            shift["order_id"] += n_orders
        return {name: Path(out_dir) / name for name in TABLES}

    return _write_atomically(out_dir, fill, allowed=lambda p: p.is_dir() or p.suffix == ".parquet")


def write_store(
    tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write each table to ``out_dir/<name>.parquet``, atomically.

    The files are written into a temporary folder next to ``out_dir`` which
    then replaces ``out_dir`` by renames, so readers see either the old store
    or the complete new one, and a failure leaves ``out_dir`` untouched.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        Tables by name (e.g. the result of :func:`simulate_store`).
    out_dir : path-like
        Folder to (re)place. An existing folder may only hold ``*.parquet``
        files, which are all replaced.

    Returns
    -------
    dict of str to pathlib.Path
        The written file of each table.

    Raises
    ------
    ConfigError
        When ``out_dir`` is a file or a folder holding other files, or a table
        name is not a plain file stem.
    PublishError
        When writing fails; nothing partial is left behind.
    """
    out = Path(out_dir)
    for name in tables:
        if not name or Path(name).name != name or name.startswith("."):
            raise ConfigError(f"Valid table names are plain file stems. Got {name!r}.")

    def fill(tmp: Path) -> dict[str, Path]:
        paths = {}
        for name, frame in tables.items():
            path = tmp / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            paths[name] = out / path.name
            log.debug("wrote %s (%d rows)", path.name, len(frame))
        return paths

    return _write_atomically(out, fill, allowed=lambda p: p.is_file() and p.suffix == ".parquet")


def _write_atomically(
    out_dir: str | os.PathLike[str],
    fill: Any,
    allowed: Any,
) -> dict[str, Path]:
    """Let ``fill(tmp)`` write a store into a temporary folder, then swap it in for ``out_dir``."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"Valid values for 'out_dir' are folders. Got the file {str(out)!r}.")
        foreign = sorted(p.name for p in out.iterdir() if not allowed(p))
        if foreign:
            raise ConfigError(
                f"{str(out)!r} holds files that are not store tables, e.g. {foreign[:5]}; "
                "refusing to replace it."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        paths = fill(tmp)
        if out.exists():
            backup = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
            os.replace(out, backup)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(backup, out)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PublishError(f"Could not write the store to {str(out)!r}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Wrote %d tables to %s", len(paths), out)
    return paths
