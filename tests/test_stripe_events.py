"""Unit tests of the pure Stripe event mapping (no Redis, no Ray, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fraudmesh.errors import WebhookError
from fraudmesh.schemas import LabelSource
from fraudmesh.stripe_events import (
    AccountChange,
    CustomerProfile,
    FraudLabel,
    PaymentOutcome,
    RadarSignal,
    ScorePayment,
    Version,
    diff_profile,
    is_newer,
    map_event,
    parse_event,
    profile_digests,
)

ARRIVAL = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def event(etype: str, obj: dict, *, created: int = 1_700_000_000, **extra) -> dict:
    data = {"object": obj, **extra}
    return {
        "id": f"evt_{etype.replace('.', '_')}_{created}",
        "object": "event",
        "type": etype,
        "created": created,
        "api_version": "2026-10-28.endive",
        "data": data,
    }


def pi(**overrides) -> dict:
    obj = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 12_345,
        "currency": "eur",
        "customer": "cus_7",
        "created": 1_700_000_000,
        "status": "requires_confirmation",
        "capture_method": "automatic",
        "metadata": {"terminal_id": "term_3"},
        "latest_charge": None,
    }
    obj.update(overrides)
    return obj


def mapped(raw: dict) -> list:
    return map_event(parse_event(json.dumps(raw).encode()), arrival_time=ARRIVAL)


def test_payment_intent_created_becomes_a_score_request():
    [msg] = mapped(event("payment_intent.created", pi()))
    assert isinstance(msg, ScorePayment)
    assert msg.request.id == "pi_1"
    assert msg.request.amount == 12_345
    assert msg.request.customer == "cus_7"
    assert msg.request.metadata.terminal_id == "term_3"
    assert msg.status == "requires_confirmation"
    assert msg.version.key == "payment_intent:pi_1:status"


def test_metadata_supplies_customer_and_business_time():
    obj = pi(
        customer=None,
        metadata={
            "customer_id": "cus_9",
            "terminal_id": "t",
            "fraudmesh_created": "1530000000",
        },
    )
    [msg] = mapped(event("payment_intent.created", obj))
    assert msg.request.customer == "cus_9"
    assert msg.request.created == 1_530_000_000


def test_payment_intent_without_customer_is_a_clear_error():
    raw = event("payment_intent.created", pi(customer=None, metadata={}))
    with pytest.raises(WebhookError, match="no customer"):
        mapped(raw)


def test_unknown_currency_is_a_clear_error():
    with pytest.raises(WebhookError, match="currency"):
        mapped(event("payment_intent.created", pi(currency="xyz")))


@pytest.mark.parametrize(
    ("etype", "outcome"),
    [
        ("payment_intent.succeeded", "succeeded"),
        ("payment_intent.payment_failed", "failed"),
        ("payment_intent.canceled", "canceled"),
    ],
)
def test_outcomes(etype, outcome):
    [msg] = mapped(event(etype, pi(status=outcome)))
    assert isinstance(msg, PaymentOutcome)
    assert msg.outcome == outcome
    assert msg.at == datetime.fromtimestamp(1_700_000_000, tz=UTC)


def test_newer_api_version_latest_charge_without_charges_list():
    charge = {"id": "ch_9", "payment_method_details": {"card": {"country": "DE"}}}
    obj = pi(status="succeeded", latest_charge=charge)
    assert "charges" not in obj
    [msg] = mapped(event("payment_intent.succeeded", obj))
    assert msg.charge_id == "ch_9"
    [score] = mapped(event("payment_intent.created", obj))
    assert score.request.signals.card_country == "DE"
    # Only an id, not expanded:
    [msg] = mapped(event("payment_intent.succeeded", pi(latest_charge="ch_10")))
    assert msg.charge_id == "ch_10"


def test_older_api_version_charges_list():
    obj = pi(status="succeeded")
    del obj["latest_charge"]
    obj["charges"] = {"object": "list", "data": [{"id": "ch_old"}]}
    [msg] = mapped(event("payment_intent.succeeded", obj))
    assert msg.charge_id == "ch_old"


def test_charge_radar_signal():
    charge = {
        "id": "ch_1",
        "payment_intent": "pi_1",
        "captured": False,
        "outcome": {"risk_score": 71, "risk_level": "elevated", "type": "authorized"},
    }
    [msg] = mapped(event("charge.succeeded", charge))
    assert isinstance(msg, RadarSignal)
    assert (msg.payment_id, msg.risk_score, msg.risk_level) == ("pi_1", 71, "elevated")
    assert msg.version.key == "charge:ch_1:radar"


def test_charge_without_radar_gives_nothing():
    assert mapped(event("charge.updated", {"id": "ch_1", "outcome": None})) == []
    no_assess = {"id": "ch_1", "outcome": {"risk_level": "not_assessed"}}
    assert mapped(event("charge.succeeded", no_assess)) == []


def test_fraud_dispute_label_keeps_event_and_arrival_time():
    dispute = {
        "id": "dp_1",
        "charge": "ch_1",
        "payment_intent": "pi_1",
        "reason": "fraudulent",
    }
    [msg] = mapped(event("charge.dispute.created", dispute, created=1_600_000_000))
    assert isinstance(msg, FraudLabel)
    label = msg.to_label()
    assert label.is_fraud and label.source is LabelSource.DISPUTE
    assert label.event_time == datetime.fromtimestamp(1_600_000_000, tz=UTC)
    assert label.arrival_time == ARRIVAL
    assert not msg.refundable


def test_non_fraud_dispute_is_no_label():
    dispute = {"id": "dp_1", "charge": "ch_1", "reason": "product_not_received"}
    assert mapped(event("charge.dispute.created", dispute)) == []


def test_early_fraud_warning_is_refundable():
    efw = {
        "id": "issfr_1",
        "charge": "ch_1",
        "payment_intent": "pi_1",
        "actionable": True,
        "fraud_type": "card_never_received",
    }
    [msg] = mapped(event("radar.early_fraud_warning.created", efw))
    assert msg.source is LabelSource.EARLY_FRAUD_WARNING and msg.refundable


def test_fraud_refund_label_from_fraud_details_or_refund_reason():
    charge = {
        "id": "ch_1",
        "payment_intent": "pi_1",
        "fraud_details": {"user_report": "fraudulent"},
    }
    [msg] = mapped(event("charge.refunded", charge))
    assert msg.source is LabelSource.REFUND
    charge = {
        "id": "ch_2",
        "payment_intent": "pi_2",
        "refunds": {"data": [{"reason": "fraudulent"}]},
    }
    assert len(mapped(event("charge.refunded", charge))) == 1
    charge = {"id": "ch_3", "refunds": {"data": [{"reason": "duplicate"}]}}
    assert mapped(event("charge.refunded", charge)) == []


def test_review_closed():
    review = {
        "id": "prv_1",
        "charge": "ch_1",
        "payment_intent": "pi_1",
        "closed_reason": "refunded_as_fraud",
    }
    [msg] = mapped(event("review.closed", review))
    assert msg.is_fraud and msg.source is LabelSource.ANALYST
    review = {"id": "prv_1", "charge": "ch_1", "reason": "approved"}
    [msg] = mapped(event("review.closed", review))
    assert not msg.is_fraud and msg.release_hold and msg.payment_id is None


def test_customer_update_with_previous_attributes_is_an_account_change():
    customer = {
        "id": "cus_7",
        "email": "new@example.org",
        "phone": "+1 555",
        "address": {"city": "Paris"},
    }
    raw = event(
        "customer.updated",
        customer,
        previous_attributes={"email": "old@example.org", "name": "x"},
    )
    profile, change = mapped(raw)
    assert isinstance(profile, CustomerProfile) and isinstance(change, AccountChange)
    assert change.changed == ("email",)
    assert change.customer_id == "cus_7"
    # Digests only: no clear value anywhere in the profile.
    assert "new@example.org" not in repr(profile)


def test_customer_update_without_previous_attributes_compares_digests():
    old = profile_digests({"email": "a@example.org", "phone": "1"})
    new = profile_digests({"email": "b@example.org", "phone": "1"})
    assert diff_profile(old, new) == ["email"]
    assert diff_profile(None, new) == []
    assert diff_profile(old, old) == []
    [profile] = mapped(event("customer.updated", {"id": "cus_7", "email": "x@y.z"}))
    assert isinstance(profile, CustomerProfile)


def test_unknown_type_maps_to_nothing():
    assert mapped(event("invoice.paid", {"id": "in_1"})) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "JSON"),
        (b"[]", "object"),
        (json.dumps({"type": "x", "created": 1, "data": {"object": {}}}), "'id'"),
        (
            json.dumps(
                {"id": "evt", "type": "x", "created": "soon", "data": {"object": {}}}
            ),
            "'created'",
        ),
        (json.dumps({"id": "evt", "type": "x", "created": 1}), "data.object"),
    ],
)
def test_parse_errors_name_the_field(body, field):
    with pytest.raises(WebhookError, match=field):
        parse_event(body)


def test_versions_order_events_per_object():
    old = Version("k", 100, 0, "evt_a")
    new = Version("k", 200, 0, "evt_b")
    assert is_newer(new, old)
    assert not is_newer(old, new)
    assert is_newer(old, None)
    assert is_newer(new, new)  # a redelivery of the same event is re-applied
    tie_created = Version("k", 200, 0, "evt_c")
    tie_done = Version("k", 200, 2, "evt_d")
    assert is_newer(tie_done, tie_created) and not is_newer(tie_created, tie_done)
    assert Version.decode("k", new.encode()) == new
