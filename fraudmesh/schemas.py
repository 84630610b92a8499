"""The messages that cross the mesh: payment in, decision out, labels back.

Contracts:
- Timestamps are timezone-aware UTC ``datetime`` values; unix seconds on the wire.
- Amounts are integers in the currency's minor unit on the wire (``amount``), and
  ``Payment.amount`` is the same value in major units, which is what features and
  the model see.
- Identifiers are opaque strings. The public data set's integer ids map to
  ``cus_<n>``, ``term_<n>`` and ``pi_<n>`` (see :mod:`fraudmesh.dataset`).
"""

from __future__ import annotations

import re
import time
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from fraudmesh.currency import is_known_currency, to_major

# No control characters, whitespace or URL delimiters: ids end up in Redis keys,
# log lines and Stripe API paths.
_BAD_ID_CHARACTERS = re.compile(r"[\x00-\x20\x7f/?#%&\\]")


def _invisible(ch: str) -> bool:
    """Whitespace, control, format (zero-width, bidi overrides), surrogate,
    private or unassigned characters, and U+FFFD (what undecodable bytes became)."""
    return unicodedata.category(ch)[0] in "CZ" or ch == "\ufffd"


def _plain_id(value: str) -> str:
    if _BAD_ID_CHARACTERS.search(value) or (
        not value.isascii() and any(_invisible(ch) for ch in value)
    ):
        raise ValueError(
            "must not contain whitespace, control or invisible characters or any "
            "of / ? # % & \\"
        )
    return value


# Not stripped: an id with whitespace is refused (see _plain_id), not altered.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255),
    AfterValidator(_plain_id),
]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True)]

# 2100-01-01 00:00 UTC: a later `created` is a unit mistake (milliseconds).
MAX_CREATED_S = 4_102_444_800
# Labels and payments older than this are a mistake, not history.
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MIN_CREATED_S = int(MIN_TIME.timestamp())
# How far after this machine's clock a payment's `created` may be (clock skew).
# A payment from the future would move the features' day forward for everyone.
FUTURE_SKEW_S = 24 * 3600
# Stripe's own ceiling for a PaymentIntent amount (99,999,999 in minor units).
MAX_AMOUNT_MINOR = 99_999_999


class Decision(StrEnum):
    ALLOW = "allow"
    CHALLENGE = "challenge"
    REVIEW = "review"
    BLOCK = "block"


class Signals(BaseModel):
    """Optional context a merchant may send with a payment."""

    model_config = ConfigDict(extra="forbid")

    card_country: CountryCode | None = None
    ip_country: CountryCode | None = None
    email_domain: Annotated[str, StringConstraints(max_length=255)] | None = None
    device_id_hash: Annotated[str, StringConstraints(max_length=128)] | None = None


class PaymentMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    terminal_id: Identifier


class PaymentRequest(BaseModel):
    """``POST /v1/score`` body: a payment shaped like a Stripe PaymentIntent."""

    model_config = ConfigDict(extra="ignore")

    id: Identifier
    # Strict: a string, a boolean or a float is a wrong type, never coerced.
    amount: int = Field(
        ge=0, le=MAX_AMOUNT_MINOR, strict=True, description="minor units"
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")]
    customer: Identifier
    created: int = Field(ge=0, strict=True, description="unix seconds, UTC")
    metadata: PaymentMetadata
    signals: Signals = Field(default_factory=Signals)

    @field_validator("created")
    @classmethod
    def _seconds(cls, value: int) -> int:
        if value >= MAX_CREATED_S:
            raise ValueError(
                f"{value} is after 2100-01-01; send unix seconds, not milliseconds"
            )
        if value < MIN_CREATED_S:
            raise ValueError(f"{value} is before 2000-01-01")
        if value > time.time() + FUTURE_SKEW_S:
            raise ValueError(
                f"{value} is more than a day after this machine's clock"
            )
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if not is_known_currency(value):
            raise ValueError(f"unknown currency {value!r}; use an ISO 4217 code")
        return value.lower()


class Payment(BaseModel):
    """A validated payment in canonical form, as Ingest hands it on."""

    model_config = ConfigDict(frozen=True)

    payment_id: str
    customer_id: str
    terminal_id: str
    amount_minor: int
    currency: str
    amount: float = Field(description="major units of `currency`")
    created: datetime
    signals: Signals = Field(default_factory=Signals)

    @model_validator(mode="after")
    def _utc(self) -> Payment:
        if self.created.tzinfo is None:
            raise ValueError("created must be timezone-aware (UTC)")
        return self

    @classmethod
    def from_request(cls, request: PaymentRequest) -> Payment:
        return cls(
            payment_id=request.id,
            customer_id=request.customer,
            terminal_id=request.metadata.terminal_id,
            amount_minor=request.amount,
            currency=request.currency,
            amount=to_major(request.amount, request.currency),
            created=datetime.fromtimestamp(request.created, tz=UTC),
            signals=request.signals,
        )


class ScoreResponse(BaseModel):
    """What ``POST /v1/score`` answers for one payment."""

    payment_id: str
    score: float = Field(ge=0.0, le=1.0)
    decision: Decision
    reasons: list[str]
    model_version: str
    trace_id: str | None = None
    actuation_mode: str
    action: dict | None = Field(
        default=None, description="the Stripe call the decision implies"
    )
    duplicate: bool = Field(
        default=False, description="true when this payment id was scored before"
    )


class LabelSource(StrEnum):
    DISPUTE = "dispute"
    EARLY_FRAUD_WARNING = "early_fraud_warning"
    REFUND = "refund"
    ANALYST = "analyst"
    REPLAY = "replay"


class Label(BaseModel):
    """A fraud (or genuine) label for a payment scored earlier.

    ``event_time`` is when the fact happened (the dispute was opened);
    ``arrival_time`` is when fraudmesh learnt it. Features only use labels of
    payments older than the label delay.
    """

    payment_id: Identifier
    # Strict: "yes", 0 or 1 are wrong types, never coerced.
    is_fraud: bool = Field(strict=True)
    source: LabelSource
    event_time: datetime
    arrival_time: datetime | None = None
    customer_id: Identifier | None = None
    terminal_id: Identifier | None = None
    payment_created: datetime | None = None

    @field_validator("event_time", "arrival_time", "payment_created")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive times are UTC
        if not MIN_TIME <= value < datetime.fromtimestamp(MAX_CREATED_S, tz=UTC):
            raise ValueError(
                f"{value.isoformat()} is not between 2000-01-01 and 2100-01-01"
            )
        return value
