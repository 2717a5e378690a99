"""Data contracts: the input tables bmkt reads, their columns, types and meaning.

The contract is data, not code: :data:`CONTRACTS` maps a table name to a
:class:`TableContract`. Validation (:mod:`bmkt.validate`), loading
(:mod:`bmkt.io`) and the simulator (:mod:`bmkt.simulate`) all read it, and
:func:`contracts_markdown` renders it for the README (``bmkt contracts``).

Column kinds
------------
``id``
    An identifier: integer or text. Every table must use the same kind for
    the same identifier (``customers.customer_id`` and ``orders.customer_id``
    both integers, or both text).
``string``, ``int``, ``float``, ``bool``
    As named. ``float`` accepts integers.
``timestamp``
    A point in time, stored in UTC without a zone. The normalisation rule:
    zone-aware values (``2024-03-01T10:00:00+02:00``, a pandas column with a
    ``tz``) are converted to UTC; naive values are taken to be UTC already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

EMAIL_STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
WEB_EVENT_TYPES = ("page_view", "product_view", "search", "add_to_cart", "checkout_start")
EMAIL_EVENT_TYPES = (
    "sent",
    "delivered",
    "open",
    "click",
    "bounce",
    "unsubscribe",
    "complaint",
    "holdout",
)
COLUMN_KINDS = ("id", "string", "int", "float", "bool", "timestamp")

#: A deliberately simple address check: something@something.tld, no spaces.
EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


@dataclass(frozen=True)
class Column:
    """One column of a contract table.

    Parameters
    ----------
    name : str
        Column name.
    kind : str
        One of :data:`COLUMN_KINDS`.
    description : str
        What the column means, for the docs.
    required : bool
        Whether the column must be present.
    nullable : bool
        Whether null values are allowed.
    values : tuple of str, optional
        Allowed values (for categorical text columns).
    """

    name: str
    kind: str
    description: str
    required: bool = True
    nullable: bool = False
    values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in COLUMN_KINDS:
            raise ValueError(
                f"Valid options for 'kind' are {COLUMN_KINDS}. Got {self.kind!r} for {self.name!r}."
            )


@dataclass(frozen=True)
class TableContract:
    """The contract of one input table.

    Parameters
    ----------
    name : str
        Table name (also the file stem: ``orders.csv``, ``orders.parquet``).
    description : str
        What one row is.
    columns : tuple of Column
        The columns, required and optional.
    key : tuple of str
        Columns that identify a row (must be unique and non-null); empty when
        the table has no key.
    references : dict
        ``{column: (table, column)}`` foreign keys that must resolve.
    required : bool
        Whether a store must contain this table.
    """

    name: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    references: dict[str, tuple[str, str]] = field(default_factory=dict)
    required: bool = False

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind == "timestamp")


CUSTOMERS = TableContract(
    name="customers",
    description="One row per customer known to the store.",
    key=("customer_id",),
    required=True,
    columns=(
        Column("customer_id", "id", "Customer identifier."),
        Column(
            "email",
            "string",
            "Email address; null when none is known. Only send lists ever carry it.",
            nullable=True,
        ),
        Column("created_at", "timestamp", "When the customer signed up (UTC)."),
        Column(
            "timezone",
            "string",
            "IANA time zone name (e.g. 'Europe/Berlin'); used for send times.",
            required=False,
            nullable=True,
        ),
        Column("country", "string", "ISO 3166 country code.", required=False, nullable=True),
        Column(
            "email_status",
            "string",
            "Mailability: subscribed, unsubscribed, bounced (hard) or complained.",
            values=EMAIL_STATUSES,
        ),
        Column(
            "email_consent",
            "bool",
            "Marketing email consent on record. No consent, no marketing email.",
        ),
        Column(
            "sms_consent",
            "bool",
            "Marketing SMS consent on record.",
            required=False,
            nullable=True,
        ),
    ),
)

ORDERS = TableContract(
    name="orders",
    description="One row per order (refunds are orders with negative revenue).",
    key=("order_id",),
    references={"customer_id": ("customers", "customer_id")},
    required=True,
    columns=(
        Column("order_id", "id", "Order identifier."),
        Column("customer_id", "id", "Who ordered."),
        Column("ordered_at", "timestamp", "When the order was placed (UTC)."),
        Column("revenue", "float", "Net revenue of the order; negative for a refund."),
        Column(
            "discount",
            "float",
            "Discount granted on the order (currency, >= 0).",
            required=False,
            nullable=True,
        ),
        Column(
            "channel",
            "string",
            "Where the order was placed (web, app, store, ...).",
            required=False,
            nullable=True,
        ),
    ),
)

ORDER_LINES = TableContract(
    name="order_lines",
    description="One row per product line of an order.",
    references={"order_id": ("orders", "order_id")},
    columns=(
        Column("order_id", "id", "The order the line belongs to."),
        Column("product_id", "id", "Product identifier."),
        Column("category", "string", "Product category.", nullable=True),
        Column("quantity", "int", "Units bought."),
        Column("price", "float", "Unit price."),
    ),
)

WEB_EVENTS = TableContract(
    name="web_events",
    description="One row per tracked web or app event of a known customer.",
    references={"customer_id": ("customers", "customer_id")},
    columns=(
        Column("customer_id", "id", "Who acted."),
        Column("occurred_at", "timestamp", "When (UTC)."),
        Column(
            "event_type",
            "string",
            "page_view, product_view, search, add_to_cart or checkout_start.",
            values=WEB_EVENT_TYPES,
        ),
        Column("product_id", "id", "Product viewed or added; null otherwise.", nullable=True),
        Column("category", "string", "Category of the product or page.", nullable=True),
        Column("query", "string", "Search text for search events.", required=False, nullable=True),
    ),
)

EMAIL_EVENTS = TableContract(
    name="email_events",
    description=(
        "One row per email event. 'holdout' marks a customer drawn into a campaign's "
        "control group (never sent), so lift can be measured."
    ),
    references={
        "customer_id": ("customers", "customer_id"),
        "campaign_id": ("campaigns", "campaign_id"),
    },
    columns=(
        Column("customer_id", "id", "Recipient (or held-out customer)."),
        Column("campaign_id", "id", "Campaign."),
        Column(
            "variant", "string", "A/B variant sent; null when none.", required=False, nullable=True
        ),
        Column("occurred_at", "timestamp", "When (UTC)."),
        Column(
            "event_type",
            "string",
            "sent, delivered, open, click, bounce, unsubscribe, complaint or holdout.",
            values=EMAIL_EVENT_TYPES,
        ),
        Column(
            "user_agent",
            "string",
            "User agent of an open or click, where the ESP reports it.",
            required=False,
            nullable=True,
        ),
        Column(
            "machine_open",
            "bool",
            "True when the ESP flags an open as made by a privacy proxy "
            "(e.g. Apple Mail Privacy Protection); null when unknown.",
            required=False,
            nullable=True,
        ),
    ),
)

CAMPAIGNS = TableContract(
    name="campaigns",
    description="One row per email campaign.",
    key=("campaign_id",),
    columns=(
        Column("campaign_id", "id", "Campaign identifier."),
        Column("name", "string", "Human-readable name."),
        Column("kind", "string", "promotional, newsletter, triggered, ..."),
        Column("sent_at", "timestamp", "When the campaign went out (UTC)."),
    ),
)

#: All contracts by table name, in load order (referenced tables first).
CONTRACTS: dict[str, TableContract] = {
    t.name: t for t in (CUSTOMERS, CAMPAIGNS, ORDERS, ORDER_LINES, WEB_EVENTS, EMAIL_EVENTS)
}

#: Tables every store must have.
REQUIRED_TABLES: tuple[str, ...] = tuple(n for n, t in CONTRACTS.items() if t.required)


def contracts_markdown() -> str:
    """Render every contract as Markdown tables (used by ``bmkt contracts``)."""
    lines: list[str] = []
    for table in CONTRACTS.values():
        need = "required" if table.required else "optional"
        lines.append(f"### `{table.name}` ({need})")
        lines.append("")
        lines.append(table.description)
        if table.key:
            lines.append(f"Key: `{', '.join(table.key)}`.")
        if table.references:
            refs = ", ".join(f"`{c}` -> `{t}.{tc}`" for c, (t, tc) in table.references.items())
            lines.append(f"References: {refs}.")
        lines.append("")
        lines.append("| column | kind | required | nulls | meaning |")
        lines.append("|---|---|---|---|---|")
        for c in table.columns:
            meaning = c.description
            if c.values:
                meaning += " Allowed: " + ", ".join(f"`{v}`" for v in c.values) + "."
            lines.append(
                f"| `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} "
                f"| {'yes' if c.nullable else 'no'} | {meaning} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_as_of(as_of: object) -> pd.Timestamp:
    """Return the exclusive end of the data window for a run date ``as_of``.

    A date without a time of day (``"2024-06-30"``) means *through the end of
    that day*: the window ends at ``2024-07-01 00:00`` (exclusive). A value
    with a time of day ends the window right after that instant. Zone-aware
    values are converted to UTC; the result is naive UTC, like every contract
    timestamp.

    Raises
    ------
    ConfigError
        If ``as_of`` cannot be parsed.
    """
    import pandas as pd

    from bmkt.errors import ConfigError

    try:
        ts = pd.Timestamp(as_of)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"as_of: cannot parse {as_of!r} as a date ({exc}).") from None
    if ts is pd.NaT:
        raise ConfigError(f"as_of: cannot parse {as_of!r} as a date.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts == ts.normalize() and not (isinstance(as_of, str) and ":" in as_of):
        return ts + pd.Timedelta(days=1)
    return ts + pd.Timedelta(microseconds=1)
