"""Stripe events to fraudmesh messages: a pure mapping, no I/O, no clock.

:func:`parse_event` turns a verified webhook body into a :class:`StripeEvent`;
:func:`map_event` turns an event into the messages fraudmesh acts on:

- ``payment_intent.created`` -> :class:`ScorePayment` (score it through the graph)
- ``payment_intent.succeeded`` / ``.payment_failed`` / ``.canceled`` ->
  :class:`PaymentOutcome`
- ``charge.succeeded`` / ``charge.updated`` -> :class:`RadarSignal` when the charge
  carries Radar's ``outcome.risk_score`` or ``risk_level``
- ``charge.dispute.created`` (reason ``fraudulent``),
  ``radar.early_fraud_warning.created``, ``charge.refunded`` (reason
  ``fraudulent``), ``review.closed`` -> :class:`FraudLabel`
- ``customer.updated`` -> :class:`CustomerProfile` (digests of email, phone and
  address) and, when Stripe sent ``previous_attributes``, :class:`AccountChange`

Contracts:

- Every message carries a :class:`Version` (the object it is about, the event's
  ``created`` and a rank for same-second ties); the caller applies a message only
  when :func:`is_newer` says so, so an older event never overwrites newer state.
- Timestamps are UTC-aware ``datetime`` values.
- Emails, phone numbers and addresses never leave this module in clear: a
  :class:`CustomerProfile` holds truncated SHA-256 digests, enough to tell that a
  value changed and nothing more.
- Payloads of older and newer API versions are both read: a PaymentIntent with a
  ``charges`` list (before 2022-11-15) or with only ``latest_charge`` (a charge id
  or an expanded charge object).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from fraudmesh.errors import WebhookError
from fraudmesh.schemas import Label, LabelSource, PaymentRequest

# Metadata keys a merchant (or `fraudmesh replay --stripe`) may set on a
# PaymentIntent. `terminal_id` is the same key `POST /v1/score` requires;
# `customer_id` stands in when the PaymentIntent has no Stripe customer;
# `fraudmesh_created` (unix seconds) is the payment's business time when it differs
# from Stripe's object creation (replays and imported payments).
META_TERMINAL = "terminal_id"
META_CUSTOMER = "customer_id"
META_CREATED = "fraudmesh_created"
UNKNOWN_TERMINAL = "term_unknown"

PROFILE_FIELDS = ("email", "phone", "address")

SCORE_TYPES = frozenset({"payment_intent.created"})
OUTCOME_TYPES = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.payment_failed": "failed",
    "payment_intent.canceled": "canceled",
}
RADAR_TYPES = frozenset({"charge.succeeded", "charge.updated"})
LABEL_TYPES = frozenset(
    {
        "charge.dispute.created",
        "radar.early_fraud_warning.created",
        "charge.refunded",
        "review.closed",
    }
)
CUSTOMER_TYPES = frozenset({"customer.created", "customer.updated"})
HANDLED_TYPES = (
    SCORE_TYPES | frozenset(OUTCOME_TYPES) | RADAR_TYPES | LABEL_TYPES | CUSTOMER_TYPES
)

# Same-second ties between events about one payment: a later stage wins.
_STATUS_RANK = {"created": 0, "failed": 1, "succeeded": 2, "canceled": 3}


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """The parts of a Stripe event fraudmesh reads."""

    id: str
    type: str
    created: datetime
    api_version: str | None
    object: Mapping[str, Any]
    previous_attributes: Mapping[str, Any] | None
    livemode: bool = False

    @property
    def created_s(self) -> int:
        return int(self.created.timestamp())


@dataclass(frozen=True, slots=True)
class Version:
    """Where a message's state lives and how new it is (see :func:`is_newer`)."""

    key: str
    created_s: int
    rank: int
    event_id: str

    def encode(self) -> str:
        return f"{self.created_s}:{self.rank}:{self.event_id}"

    @classmethod
    def decode(cls, key: str, raw: str | bytes) -> Version:
        text = raw.decode() if isinstance(raw, bytes) else raw
        created, rank, event_id = text.split(":", 2)
        return cls(key, int(created), int(rank), event_id)


def is_newer(incoming: Version, stored: Version | None) -> bool:
    """True when ``incoming`` may be applied over ``stored``.

    Newer (``created``, ``rank``) wins; the same event again (a redelivery after a
    crash mid-processing) is applied again, which callers make idempotent.
    """
    if stored is None or stored.event_id == incoming.event_id:
        return True
    return (incoming.created_s, incoming.rank) > (stored.created_s, stored.rank)


@dataclass(frozen=True, slots=True)
class ScorePayment:
    request: PaymentRequest
    status: str | None
    capture_method: str | None
    version: Version


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    payment_id: str
    outcome: str  # succeeded, failed, canceled
    at: datetime
    customer_id: str | None
    amount_minor: int | None
    currency: str | None
    charge_id: str | None
    failure_code: str | None
    cancellation_reason: str | None
    version: Version


@dataclass(frozen=True, slots=True)
class RadarSignal:
    payment_id: str | None
    charge_id: str
    risk_score: int | None
    risk_level: str | None
    outcome_type: str | None
    captured: bool | None
    at: datetime
    version: Version


@dataclass(frozen=True, slots=True)
class FraudLabel:
    """A label, and what Stripe already did about the payment.

    ``payment_id`` may be missing in old payloads that name only the charge; the
    caller resolves ``charge_id`` to the payment then. ``refundable`` is true when
    refunding is the right follow-up (an early fraud warning that is actionable, an
    analyst verdict); a dispute or a refund already took the money back.
    """

    payment_id: str | None
    charge_id: str | None
    is_fraud: bool
    source: LabelSource
    event_time: datetime
    arrival_time: datetime
    refundable: bool
    release_hold: bool

    def to_label(self, payment_id: str | None = None) -> Label:
        pid = payment_id or self.payment_id
        if pid is None:
            raise WebhookError("label without a payment id; resolve charge_id first")
        return Label(
            payment_id=pid,
            is_fraud=self.is_fraud,
            source=self.source,
            event_time=self.event_time,
            arrival_time=self.arrival_time,
        )


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    """Digests of the customer's email, phone and address (never the values)."""

    customer_id: str
    digests: Mapping[str, str | None]
    version: Version


@dataclass(frozen=True, slots=True)
class AccountChange:
    customer_id: str
    at: datetime
    changed: tuple[str, ...]
    version: Version


Message = (
    ScorePayment
    | PaymentOutcome
    | RadarSignal
    | FraudLabel
    | CustomerProfile
    | AccountChange
)


def parse_event(payload: bytes | str | Mapping[str, Any]) -> StripeEvent:
    """A verified webhook body as a StripeEvent; WebhookError names the field."""
    if isinstance(payload, bytes | str):
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WebhookError(f"body is not JSON: {exc}") from exc
    else:
        raw = payload
    if not isinstance(raw, Mapping):
        raise WebhookError("body must be a JSON object (a Stripe event)")
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookError("field 'id': missing; a Stripe event has an evt_ id")
    etype = raw.get("type")
    if not isinstance(etype, str) or not etype:
        raise WebhookError("field 'type': missing", event_id=event_id)
    created = raw.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise WebhookError(
            f"field 'created': expected unix seconds, got {created!r}",
            event_id=event_id,
        )
    data = raw.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise WebhookError("field 'data.object': missing", event_id=event_id)
    previous = data.get("previous_attributes")
    return StripeEvent(
        id=event_id,
        type=etype,
        created=datetime.fromtimestamp(created, tz=UTC),
        api_version=raw.get("api_version"),
        object=obj,
        previous_attributes=previous if isinstance(previous, Mapping) else None,
        livemode=bool(raw.get("livemode", False)),
    )


def map_event(event: StripeEvent, *, arrival_time: datetime) -> list[Message]:
    """The messages an event implies; [] for a handled type with nothing to do.

    Raises WebhookError when the object lacks a field fraudmesh needs (the event
    cannot be used, retrying will not help). Unknown types give [].
    """
    if event.type in SCORE_TYPES:
        return [_score_payment(event)]
    if event.type in OUTCOME_TYPES:
        return [_outcome(event)]
    if event.type in RADAR_TYPES:
        signal = _radar(event)
        return [] if signal is None else [signal]
    if event.type in LABEL_TYPES:
        label = _label(event, arrival_time)
        return [] if label is None else [label]
    if event.type in CUSTOMER_TYPES:
        return _customer(event)
    return []


# -- payment intents -----------------------------------------------------------


def _require_str(event: StripeEvent, name: str) -> str:
    value = event.object.get(name)
    if not isinstance(value, str) or not value:
        raise WebhookError(
            f"field 'data.object.{name}': missing in {event.type}",
            event_id=event.id,
        )
    return value


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def latest_charge(obj: Mapping[str, Any]) -> Mapping[str, Any] | str | None:
    """A PaymentIntent's latest charge: an object, an id, or None.

    Newer API versions send ``latest_charge`` (an id, or an object when expanded)
    and no ``charges`` list; older ones send ``charges.data``.
    """
    latest = obj.get("latest_charge")
    if isinstance(latest, Mapping | str) and latest:
        return latest
    charges = obj.get("charges")
    data = charges.get("data") if isinstance(charges, Mapping) else None
    if isinstance(data, list) and data and isinstance(data[-1], Mapping):
        return data[-1]
    return None


def charge_id_of(charge: Mapping[str, Any] | str | None) -> str | None:
    if isinstance(charge, str):
        return charge
    if isinstance(charge, Mapping):
        cid = charge.get("id")
        return cid if isinstance(cid, str) else None
    return None


def payment_created_s(obj: Mapping[str, Any]) -> int | None:
    """Business time of a PaymentIntent: metadata override, else ``created``."""
    override = _metadata(obj).get(META_CREATED)
    if override not in (None, ""):
        try:
            return int(float(override))
        except (TypeError, ValueError):
            return None
    created = obj.get("created")
    return created if isinstance(created, int) else None


def customer_of(obj: Mapping[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    if isinstance(customer, str) and customer:
        return customer
    fallback = _metadata(obj).get(META_CUSTOMER)
    return fallback if isinstance(fallback, str) and fallback else None


def payment_request(obj: Mapping[str, Any]) -> PaymentRequest:
    """The ``POST /v1/score`` body a PaymentIntent object stands for.

    Raises WebhookError naming the field when the PaymentIntent cannot be scored.
    """
    pid = obj.get("id")
    customer = customer_of(obj)
    if customer is None:
        raise WebhookError(
            f"PaymentIntent {pid}: no customer; set `customer` or "
            f"metadata.{META_CUSTOMER}",
            event_id=None,
        )
    meta = _metadata(obj)
    terminal = meta.get(META_TERMINAL) or UNKNOWN_TERMINAL
    body = {
        "id": pid,
        "amount": obj.get("amount"),
        "currency": obj.get("currency"),
        "customer": customer,
        "created": payment_created_s(obj),
        "metadata": {"terminal_id": terminal},
        "signals": _signals(obj),
    }
    try:
        return PaymentRequest.model_validate(body)
    except PydanticValidationError as exc:
        fields = ", ".join(
            ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
            for err in exc.errors()
        )
        raise WebhookError(f"PaymentIntent {pid} cannot be scored: {fields}") from exc


def _signals(obj: Mapping[str, Any]) -> dict[str, Any]:
    signals: dict[str, Any] = {}
    email = obj.get("receipt_email")
    if isinstance(email, str) and "@" in email:
        signals["email_domain"] = email.rsplit("@", 1)[1].lower()[:255]
    charge = latest_charge(obj)
    if isinstance(charge, Mapping):
        card = _card_details(charge)
        country = card.get("country") if card else None
        if isinstance(country, str) and len(country) == 2:
            signals["card_country"] = country
    return signals


def _card_details(charge: Mapping[str, Any]) -> Mapping[str, Any] | None:
    details = charge.get("payment_method_details")
    card = details.get("card") if isinstance(details, Mapping) else None
    return card if isinstance(card, Mapping) else None


def card_fingerprint(charge: Mapping[str, Any] | None) -> str | None:
    """The card fingerprint of a charge object (for Radar block lists)."""
    card = _card_details(charge) if isinstance(charge, Mapping) else None
    fingerprint = card.get("fingerprint") if card else None
    return fingerprint if isinstance(fingerprint, str) else None


def _score_payment(event: StripeEvent) -> ScorePayment:
    pid = _require_str(event, "id")
    try:
        request = payment_request(event.object)
    except WebhookError as exc:
        raise WebhookError(str(exc), event_id=event.id) from exc
    status = event.object.get("status")
    capture = event.object.get("capture_method")
    return ScorePayment(
        request=request,
        status=status if isinstance(status, str) else None,
        capture_method=capture if isinstance(capture, str) else None,
        version=Version(
            f"payment_intent:{pid}:status",
            event.created_s,
            _STATUS_RANK["created"],
            event.id,
        ),
    )


def _outcome(event: StripeEvent) -> PaymentOutcome:
    obj = event.object
    pid = _require_str(event, "id")
    outcome = OUTCOME_TYPES[event.type]
    error = obj.get("last_payment_error")
    failure = error.get("code") if isinstance(error, Mapping) else None
    reason = obj.get("cancellation_reason")
    amount = obj.get("amount")
    currency = obj.get("currency")
    return PaymentOutcome(
        payment_id=pid,
        outcome=outcome,
        at=event.created,
        customer_id=customer_of(obj),
        amount_minor=amount if isinstance(amount, int) else None,
        currency=currency if isinstance(currency, str) else None,
        charge_id=charge_id_of(latest_charge(obj)),
        failure_code=failure if isinstance(failure, str) else None,
        cancellation_reason=reason if isinstance(reason, str) else None,
        version=Version(
            f"payment_intent:{pid}:status",
            event.created_s,
            _STATUS_RANK[outcome],
            event.id,
        ),
    )


# -- charges and Radar -----------------------------------------------------------


def radar_of(charge: Mapping[str, Any]) -> tuple[int | None, str | None, str | None]:
    """Radar's ``outcome.risk_score``, ``risk_level`` and ``type`` of a charge."""
    outcome = charge.get("outcome")
    if not isinstance(outcome, Mapping):
        return None, None, None
    score = outcome.get("risk_score")
    level = outcome.get("risk_level")
    kind = outcome.get("type")
    score = score if isinstance(score, int) and not isinstance(score, bool) else None
    # Stripe answers "not_assessed" / "unknown" when Radar did not evaluate.
    if not isinstance(level, str) or level in ("not_assessed", "unknown"):
        level = None
    return score, level, kind if isinstance(kind, str) else None


def _radar(event: StripeEvent) -> RadarSignal | None:
    obj = event.object
    cid = _require_str(event, "id")
    score, level, kind = radar_of(obj)
    if score is None and level is None:
        return None
    pid = obj.get("payment_intent")
    captured = obj.get("captured")
    return RadarSignal(
        payment_id=pid if isinstance(pid, str) and pid else None,
        charge_id=cid,
        risk_score=score,
        risk_level=level,
        outcome_type=kind,
        captured=captured if isinstance(captured, bool) else None,
        at=event.created,
        version=Version(f"charge:{cid}:radar", event.created_s, 0, event.id),
    )


# -- labels ------------------------------------------------------------------------


def _label(event: StripeEvent, arrival: datetime) -> FraudLabel | None:
    obj = event.object
    if event.type == "charge.dispute.created":
        if obj.get("reason") != "fraudulent":
            return None
        return _make_label(
            event,
            arrival,
            obj.get("charge"),
            True,
            LabelSource.DISPUTE,
            refundable=False,
        )
    if event.type == "radar.early_fraud_warning.created":
        actionable = obj.get("actionable")
        return _make_label(
            event,
            arrival,
            obj.get("charge"),
            True,
            LabelSource.EARLY_FRAUD_WARNING,
            refundable=actionable is not False,
        )
    if event.type == "charge.refunded":
        if not _refunded_as_fraud(obj):
            return None
        return _make_label(
            event, arrival, obj.get("id"), True, LabelSource.REFUND, refundable=False
        )
    # review.closed: `closed_reason` in newer versions, `reason` in older ones.
    reason = obj.get("closed_reason") or obj.get("reason")
    if reason == "refunded_as_fraud":
        return _make_label(
            event,
            arrival,
            obj.get("charge"),
            True,
            LabelSource.ANALYST,
            refundable=False,
        )
    if reason == "approved":
        return _make_label(
            event,
            arrival,
            obj.get("charge"),
            False,
            LabelSource.ANALYST,
            refundable=False,
            release=True,
        )
    return None


def _refunded_as_fraud(charge: Mapping[str, Any]) -> bool:
    details = charge.get("fraud_details")
    if isinstance(details, Mapping) and details.get("user_report") == "fraudulent":
        return True
    refunds = charge.get("refunds")
    data = refunds.get("data") if isinstance(refunds, Mapping) else None
    return isinstance(data, list) and any(
        isinstance(r, Mapping) and r.get("reason") == "fraudulent" for r in data
    )


def _make_label(
    event: StripeEvent,
    arrival: datetime,
    charge: Any,
    is_fraud: bool,
    source: LabelSource,
    *,
    refundable: bool,
    release: bool = False,
) -> FraudLabel:
    obj = event.object
    pid = obj.get("payment_intent")
    if isinstance(pid, Mapping):
        pid = pid.get("id")
    cid = charge_id_of(charge)
    if not (isinstance(pid, str) and pid) and cid is None:
        raise WebhookError(
            f"{event.type}: neither 'payment_intent' nor 'charge' in data.object",
            event_id=event.id,
        )
    return FraudLabel(
        payment_id=pid if isinstance(pid, str) and pid else None,
        charge_id=cid,
        is_fraud=is_fraud,
        source=source,
        event_time=event.created,
        arrival_time=arrival,
        refundable=refundable,
        release_hold=release,
    )


# -- customers ---------------------------------------------------------------------


def _digest(value: Any) -> str | None:
    if value in (None, "", {}):
        return None
    if isinstance(value, Mapping):
        text = json.dumps(
            {
                k: (str(v).strip().lower() if v is not None else None)
                for k, v in value.items()
                if v not in (None, "")
            },
            sort_keys=True,
        )
    else:
        text = str(value).strip().lower()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def profile_digests(customer: Mapping[str, Any]) -> dict[str, str | None]:
    """Digests of the profile fields whose change signals a possible takeover."""
    return {name: _digest(customer.get(name)) for name in PROFILE_FIELDS}


def diff_profile(
    old: Mapping[str, str | None] | None, new: Mapping[str, str | None]
) -> list[str]:
    """Fields whose digest changed; [] when there is no earlier profile.

    A field set for the first time (None before) is not a change of details.
    """
    if old is None:
        return []
    return [
        name
        for name in PROFILE_FIELDS
        if old.get(name) is not None and old.get(name) != new.get(name)
    ]


def _customer(event: StripeEvent) -> list[Message]:
    cid = _require_str(event, "id")
    version = Version(f"customer:{cid}:profile", event.created_s, 0, event.id)
    messages: list[Message] = [
        CustomerProfile(cid, profile_digests(event.object), version)
    ]
    previous = event.previous_attributes
    if event.type == "customer.updated" and previous is not None:
        changed = tuple(
            name
            for name in PROFILE_FIELDS
            if name in previous
            and _digest(previous.get(name)) is not None
            and _digest(previous.get(name)) != _digest(event.object.get(name))
        )
        if changed:
            messages.append(AccountChange(cid, event.created, changed, version))
    return messages
