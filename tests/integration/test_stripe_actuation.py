"""Actuation through the real Stripe SDK against localstripe (started by the tests).

The emulator sits behind a recording proxy (tests/stripe_emulator.py). Where
localstripe lacks a parameter Stripe has (``cancellation_reason`` on cancel,
``reason`` on refunds, ``payment_method_options`` on confirm), the test checks the
exact request the SDK sent, and the proxy strips the parameter before forwarding
so the state change can be seen too. fraudmesh's calls are Stripe's real ones.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe

from fraudmesh.config import Settings
from fraudmesh.schemas import Decision, Payment
from services.actuation import ActuationConfig, StripeActuator

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FAKE_KEY = "sk_test_fraudmesh_localstripe"
FAST = ActuationConfig(
    timeout_s=5.0,
    max_attempts=3,
    backoff_base_s=0.01,
    backoff_cap_s=0.05,
    breaker_failures=2,
    breaker_reset_s=60.0,
)


@pytest.fixture
def settings(localstripe, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", FAKE_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", localstripe.url)
    monkeypatch.setenv("FRAUDMESH_ACTUATION_MODE", "live")
    localstripe.clear_faults()
    localstripe.clear_requests()
    yield Settings()
    localstripe.clear_faults()  # never leave faults for the tests after this one


@pytest.fixture
async def stripe_client(localstripe):
    http = stripe.HTTPXClient()
    client = stripe.StripeClient(
        FAKE_KEY, base_addresses={"api": localstripe.url}, http_client=http
    )
    yield client
    await http.close_async()


@pytest.fixture
async def actuator(settings):
    act = StripeActuator(settings, FAST)
    yield act
    await act.close()


async def new_intent(client: stripe.StripeClient, **extra) -> str:
    # pm_card_visa: Stripe's test payment method id, so no card number here.
    params = {
        "amount": 4200,
        "currency": "eur",
        "payment_method": "pm_card_visa",
        **extra,
    }
    intent = await client.v1.payment_intents.create_async(params)
    assert intent.status == "requires_confirmation"
    return intent.id


def payment(pid: str) -> Payment:
    return Payment(
        payment_id=pid,
        customer_id="cus_1",
        terminal_id="term_1",
        amount_minor=4200,
        currency="eur",
        amount=42.0,
        created=datetime.now(UTC),
    )


async def status(client, pid: str) -> str:
    return (await client.v1.payment_intents.retrieve_async(pid)).status


async def test_allow_confirms_and_the_payment_succeeds(actuator, stripe_client):
    pid = await new_intent(stripe_client)
    record = await actuator.act(payment(pid), Decision.ALLOW)
    assert record["mode"] == "live" and record["status"] == "done"
    assert record["action"] == "confirm"
    assert await status(stripe_client, pid) == "succeeded"


async def test_review_holds_then_analyst_approves_and_it_is_captured(
    actuator, stripe_client
):
    pid = await new_intent(stripe_client)
    record = await actuator.act(payment(pid), Decision.REVIEW)
    assert record["action"] == "hold_for_review" and record["status"] == "done"
    assert await status(stripe_client, pid) == "requires_capture"
    record = await actuator.resolve_review(pid, approve=True)
    assert record["action"] == "capture"
    assert await status(stripe_client, pid) == "succeeded"


async def test_review_rejected_cancels_as_fraudulent(
    actuator, stripe_client, localstripe
):
    pid = await new_intent(stripe_client)
    await actuator.act(payment(pid), Decision.REVIEW)
    record = await actuator.resolve_review(pid, approve=False)
    assert record["action"] == "cancel"
    assert await status(stripe_client, pid) == "canceled"
    [sent] = localstripe.requests(rf"/v1/payment_intents/{pid}/cancel$")
    # localstripe's cancel takes no parameters; Stripe's takes this one.
    assert sent["params"] == {"cancellation_reason": "fraudulent"}
    assert sent["stripped"] == ["cancellation_reason"]
    assert sent["idempotency_key"] == f"fraudmesh-{pid}-cancel-fraudulent"


async def test_block_cancels(actuator, stripe_client):
    pid = await new_intent(stripe_client)
    record = await actuator.act(payment(pid), Decision.BLOCK)
    assert record["action"] == "cancel" and record["stripe_status"] == "canceled"
    assert await status(stripe_client, pid) == "canceled"


async def test_challenge_confirms_with_3ds_requested(
    actuator, stripe_client, localstripe
):
    pid = await new_intent(stripe_client)
    record = await actuator.act(payment(pid), Decision.CHALLENGE)
    assert record["action"] == "confirm_3ds" and record["status"] == "done"
    [sent] = localstripe.requests(rf"/v1/payment_intents/{pid}/confirm$")
    # localstripe's confirm rejects payment_method_options; the SDK sent it.
    assert sent["params"] == {
        "payment_method_options[card][request_three_d_secure]": "any"
    }
    # The test card needs no authentication, so the emulator lets it through.
    assert await status(stripe_client, pid) == "succeeded"


async def test_fraud_after_capture_refunds_with_reason(
    actuator, stripe_client, localstripe
):
    pid = await new_intent(stripe_client)
    await actuator.act(payment(pid), Decision.ALLOW)
    record = await actuator.on_label(pid, is_fraud=True, refundable=True)
    assert record["action"] == "refund" and record["status"] == "done"
    [sent] = localstripe.requests(r"^/v1/refunds$")
    # localstripe's Refund has no reason; Stripe's does.
    assert sent["params"] == {"payment_intent": pid, "reason": "fraudulent"}
    refunds = await stripe_client.v1.refunds.list_async({"payment_intent": pid})
    assert [r.amount for r in refunds.data] == [4200]


async def test_a_lost_answer_is_retried_with_the_same_key_and_acts_once(
    actuator, stripe_client, localstripe
):
    pid = await new_intent(stripe_client, capture_method="manual")
    await stripe_client.v1.payment_intents.confirm_async(pid)
    # The emulator captures, then the answer is lost (a 502 to the client).
    localstripe.fault(rf"/v1/payment_intents/{pid}/capture$", 502, after_forward=True)
    record = await actuator.act(payment(pid), Decision.ALLOW)
    assert record["status"] == "done" and record["action"] == "capture"
    sent = localstripe.requests(rf"/v1/payment_intents/{pid}/capture$")
    assert len(sent) == 2
    assert {s["idempotency_key"] for s in sent} == {f"fraudmesh-{pid}-capture"}
    assert [s["forwarded"] for s in sent] == [True, False]
    assert sent[1]["replayed"]
    assert await status(stripe_client, pid) == "succeeded"


async def test_429_is_retried_and_400_is_not(actuator, stripe_client, localstripe):
    pid = await new_intent(stripe_client)
    localstripe.fault(rf"/v1/payment_intents/{pid}/confirm$", 429, retry_after=0)
    record = await actuator.act(payment(pid), Decision.ALLOW)
    assert record["status"] == "done"
    assert len(localstripe.requests(rf"/v1/payment_intents/{pid}/confirm$")) == 2
    # Acting again on the succeeded payment needs no call at all.
    again = await actuator.act(payment(pid), Decision.ALLOW)
    assert again["action"] == "none" and again["calls"] == []


async def test_stripe_errors_become_actuation_errors_with_request_id(
    actuator, localstripe
):
    record = await actuator.act(payment("pi_does_not_exist"), Decision.ALLOW)
    assert len(localstripe.requests("pi_does_not_exist")) == 1  # 404: no retry
    assert record["status"] == "failed"
    assert "pi_does_not_exist" in record["error"]
    assert record["request_id"]
    assert actuator.breaker.failures == 0  # a 404 is not Stripe being down


async def test_circuit_breaker_falls_back_to_the_safe_decision(
    actuator, stripe_client, localstripe
):
    pid = await new_intent(stripe_client)
    localstripe.fault(r"/v1/payment_intents/", 503, times=100)
    first = await actuator.act(payment(pid), Decision.ALLOW)
    assert first["status"] == "failed"
    second = await actuator.act(payment(pid), Decision.ALLOW)
    assert second["status"] == "skipped"
    assert second["fallback_decision"] == "review"
    assert "circuit breaker open" in second["note"]
    sent = len(localstripe.requests(r"/v1/payment_intents/"))
    third = await actuator.act(payment(pid), Decision.ALLOW)
    assert third["status"] == "skipped" and third["decision"] == "review"
    assert len(localstripe.requests(r"/v1/payment_intents/")) == sent  # no call
    localstripe.clear_faults()
