"""Unit tests of webhook verification (the Stripe SDK on raw bytes; no Redis)."""

from __future__ import annotations

import json
import time

import pytest

from fraudmesh.errors import ConfigError, WebhookError
from fraudmesh.stripe_events import HANDLED_TYPES
from services.webhooks import peek, verify
from tests.stripe_signing import OLD_SECRET, SECRET, event_body, sign

BODY = event_body("payment_intent.created", {"id": "pi_1"})


def test_valid_signature():
    verify(BODY, sign(BODY), [SECRET])


def test_tampered_body_is_rejected():
    header = sign(BODY)
    tampered = BODY.replace(b"pi_1", b"pi_2")
    with pytest.raises(WebhookError, match="no v1 signature matches"):
        verify(tampered, header, [SECRET])


def test_reserialised_body_is_not_the_signed_body():
    # Verification is on the raw bytes: the same JSON, re-serialised, fails.
    compact = json.dumps(json.loads(BODY)).encode()
    with pytest.raises(WebhookError):
        verify(compact, sign(BODY), [SECRET])


def test_stale_signature_is_rejected():
    old = int(time.time()) - 301
    with pytest.raises(WebhookError, match="older than 300 s"):
        verify(BODY, sign(BODY, timestamp=old), [SECRET])
    verify(BODY, sign(BODY, timestamp=int(time.time()) - 290), [SECRET])


def test_rotation_several_secrets_and_several_signatures():
    # During a rotation Stripe signs with both secrets; either configured works.
    both = sign(BODY, OLD_SECRET, SECRET)
    verify(BODY, both, [SECRET])
    verify(BODY, both, [OLD_SECRET])
    # Only the old secret signs; we accept both while rotating.
    verify(BODY, sign(BODY, OLD_SECRET), [SECRET, OLD_SECRET])
    with pytest.raises(WebhookError):
        verify(BODY, sign(BODY, "whsec_someone_else"), [SECRET, OLD_SECRET])


def test_unknown_schemes_are_ignored_beside_v1():
    verify(BODY, sign(BODY, extra="v0=deadbeef"), [SECRET])


@pytest.mark.parametrize("header", [None, "", "garbage", "t=1", "v1=abc"])
def test_missing_or_malformed_header(header):
    with pytest.raises(WebhookError, match="Stripe-Signature"):
        verify(BODY, header, [SECRET])


def test_no_secret_configured_is_a_config_error():
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        verify(BODY, sign(BODY), [])


def test_peek_reads_id_and_type():
    event_id, etype = peek(BODY)
    assert etype == "payment_intent.created" and event_id.startswith("evt_")
    assert etype in HANDLED_TYPES


def test_replay_signs_as_stripe_does():
    from orchestration.stripe_replay import event_from_object, signature_header

    body = event_from_object("payment_intent.created", {"id": "pi_9"}, event_id="e")
    verify(body, signature_header(body, SECRET), [SECRET])


def test_replay_intents_carry_no_card_data():
    import pandas as pd

    from orchestration.stripe_replay import intent_params

    row = {
        "tx_amount": 12.5,
        "customer_key": "cus_1",
        "terminal_key": "term_2",
        "payment_key": "pi_3",
        "tx_datetime": pd.Timestamp("2018-08-29 01:00", tz="UTC"),
    }
    params = intent_params(row)
    assert params["amount"] == 1250 and params["payment_method"] == "pm_card_visa"
    assert params["metadata"]["fraudmesh_created"] == "1535504400"


def test_lanes_follow_the_payment_or_customer():
    from services.webhooks import object_of

    charge = event_body("charge.succeeded", {"id": "ch_1", "payment_intent": "pi_1"})
    intent = event_body("payment_intent.created", {"id": "pi_2", "customer": "cus_1"})
    guest = event_body(
        "payment_intent.created", {"id": "pi_3", "metadata": {"customer_id": "cus_9"}}
    )
    assert object_of(charge) == "pi_1"
    assert object_of(intent) == "cus_1"
    assert object_of(guest) == "cus_9"
    assert object_of(b"not json") == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "STRIPE_WEBHOOK_SECRET"),
        ({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, "STRIPE_API_KEY"),
        (
            {"STRIPE_WEBHOOK_SECRET": "whsec_x", "STRIPE_API_KEY": "sk_live_x"},
            "refuses a live key",
        ),
    ],
)
def test_replay_stripe_needs_a_secret_and_a_test_key(monkeypatch, env, message):
    from typer.testing import CliRunner

    from fraudmesh.config import get_settings
    from orchestration.cli import app

    for name in ("STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["replay", "--stripe", "--from", "2018-08-29", "--to", "2018-08-29"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
