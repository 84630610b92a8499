"""Unit tests of actuation's pure parts: plans, retry rules, breaker, modes.

Calls against a real Stripe emulator are in tests/integration/test_stripe_actuation.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe

from fraudmesh.config import ActuationMode, Settings
from fraudmesh.errors import ActuationError, ConfigError
from fraudmesh.schemas import Decision, Payment
from services.actuation import (
    ActuationConfig,
    Breaker,
    BreakerState,
    Step,
    StripeActuator,
    backoff_s,
    idempotency_key,
    is_retryable,
    plan,
    plan_label,
    plan_review,
    retry_after_s,
    should_stop,
    translate,
)


def steps(p) -> list[str]:
    return [c.step.value for c in p.calls]


def test_allow_confirms_or_captures():
    assert steps(plan("pi_1", Decision.ALLOW, "requires_confirmation")) == ["confirm"]
    assert steps(plan("pi_1", Decision.ALLOW, "requires_capture")) == ["capture"]
    assert steps(plan("pi_1", Decision.ALLOW, None)) == ["confirm"]
    assert plan("pi_1", Decision.ALLOW, "succeeded").calls == ()


def test_challenge_asks_for_3ds():
    p = plan("pi_1", Decision.CHALLENGE, "requires_confirmation")
    [call] = p.calls
    assert call.path == "/v1/payment_intents/pi_1/confirm"
    assert call.params == {
        "payment_method_options": {"card": {"request_three_d_secure": "any"}}
    }


def test_review_holds_with_manual_capture():
    p = plan("pi_1", Decision.REVIEW, "requires_confirmation")
    assert steps(p) == ["hold-manual-capture", "hold-confirm"]
    assert p.calls[0].params == {"capture_method": "manual"}
    assert plan("pi_1", Decision.REVIEW, "requires_capture").calls == ()


def test_block_cancels_or_refunds():
    p = plan("pi_1", Decision.BLOCK, "requires_capture")
    assert steps(p) == ["cancel-fraudulent"]
    assert p.calls[0].params == {"cancellation_reason": "fraudulent"}
    p = plan("pi_1", Decision.BLOCK, "succeeded")
    assert p.action == "refund"
    assert p.calls[0].params == {"payment_intent": "pi_1", "reason": "fraudulent"}
    assert plan("pi_1", Decision.BLOCK, "canceled").calls == ()


def test_review_resolution():
    assert steps(plan_review("pi_1", True, "requires_capture")) == ["capture"]
    assert steps(plan_review("pi_1", False, "requires_capture")) == [
        "cancel-fraudulent"
    ]
    assert plan_review("pi_1", True, "succeeded").calls == ()


def test_label_after_capture_refunds_and_block_values_stay_private():
    block = {Step.BLOCK_CARD: ("rsl_cards", "fp_secret")}
    p = plan_label("pi_1", True, True, "succeeded", block_values=block)
    assert steps(p) == ["refund-fraudulent", "blocklist-card"]
    record = p.calls[1].record()
    assert record["params"] == "<redacted>" and "fp_secret" not in repr(record)
    assert plan_label("pi_1", False, True, "succeeded").calls == ()
    # A dispute (not refundable) on a captured payment: no refund.
    assert plan_label("pi_1", True, False, "succeeded").calls == ()
    assert steps(plan_label("pi_1", True, False, "requires_capture")) == [
        "cancel-fraudulent"
    ]


def test_idempotency_keys_are_deterministic_per_payment_and_step():
    assert idempotency_key("pi_1", Step.CAPTURE) == idempotency_key(
        "pi_1", Step.CAPTURE
    )
    assert idempotency_key("pi_1", Step.CAPTURE) != idempotency_key(
        "pi_2", Step.CAPTURE
    )
    assert idempotency_key("pi_1", Step.CAPTURE) != idempotency_key("pi_1", Step.CANCEL)


def _error(cls, status, headers=None):
    if cls is stripe.CardError:
        return cls(
            "boom", None, "card_declined", http_status=status, headers=headers or {}
        )
    if cls is stripe.InvalidRequestError:
        return cls("boom", None, http_status=status, headers=headers or {})
    return cls("boom", http_status=status, headers=headers or {})


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (_error(stripe.RateLimitError, 429), True),
        (_error(stripe.APIError, 500), True),
        (_error(stripe.APIError, 503), True),
        (stripe.APIConnectionError("network", should_retry=True), True),
        (TimeoutError(), True),
        (_error(stripe.InvalidRequestError, 400), False),
        (_error(stripe.CardError, 402), False),
        (_error(stripe.InvalidRequestError, 409), False),
        (_error(stripe.APIError, 500, {"Stripe-Should-Retry": "false"}), False),
        (
            _error(stripe.InvalidRequestError, 409, {"stripe-should-retry": "true"}),
            True,
        ),
        (ValueError("not stripe"), False),
    ],
)
def test_which_errors_retry(exc, retry):
    assert is_retryable(exc) is retry


def test_backoff_grows_caps_jitters_and_honours_hints():
    waits = [backoff_s(a, base_s=0.5, cap_s=4.0, jitter=1.0) for a in (1, 2, 3, 4, 5)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_s(3, base_s=0.5, cap_s=4.0, jitter=0.0) == 1.0
    assert backoff_s(1, base_s=0.5, cap_s=4.0, jitter=0.3, hint_s=2.0) == 2.0
    assert backoff_s(1, base_s=0.5, cap_s=4.0, jitter=0.3, hint_s=60.0) == 4.0
    exc = _error(stripe.RateLimitError, 429, {"Retry-After": "3"})
    assert retry_after_s(exc) == 3.0
    assert retry_after_s(_error(stripe.APIError, 500)) is None


def test_when_to_stop():
    kw = {"max_attempts": 3, "wait_s": 1.0, "budget_s": 10.0}
    assert not should_stop(1, elapsed_s=0.0, **kw)
    assert should_stop(3, elapsed_s=0.0, **kw)
    assert should_stop(1, elapsed_s=9.5, **kw)


def test_breaker_opens_half_opens_and_closes():
    b = Breaker(failure_threshold=2, reset_after_s=10.0)
    assert b.allow(0.0)
    b.record_failure(0.0)
    assert b.state is BreakerState.CLOSED
    b.record_failure(1.0)
    assert b.state is BreakerState.OPEN and not b.allow(5.0)
    assert b.allow(11.5) and b.state is BreakerState.HALF_OPEN
    b.record_failure(11.6)
    assert b.state is BreakerState.OPEN and not b.allow(12.0)
    assert b.allow(22.0)
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.failures == 0


def test_stripe_errors_translate_with_request_id():
    exc = stripe.InvalidRequestError(
        "No such payment_intent",
        param="id",
        http_status=404,
        headers={"request-id": "req_123"},
        code="resource_missing",
    )
    err = translate(exc, "pi_1", "capture")
    assert isinstance(err, ActuationError)
    assert err.request_id == "req_123" and err.http_status == 404
    assert "pi_1" in str(err) and "resource_missing" in str(err)


def test_config_rejects_unknown_keys_and_bad_safe_decision():
    with pytest.raises(ConfigError, match="unknown keys"):
        ActuationConfig.from_user_config({"timeout": 1})
    with pytest.raises(ConfigError, match="safe_decision"):
        ActuationConfig(safe_decision="shrug")


PAYMENT = Payment(
    payment_id="pi_1",
    customer_id="cus_1",
    terminal_id="term_1",
    amount_minor=1000,
    currency="eur",
    amount=10.0,
    created=datetime(2026, 1, 1, tzinfo=UTC),
)


async def test_dry_run_without_key_records_the_calls(monkeypatch):
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("FRAUDMESH_ACTUATION_MODE", raising=False)
    actuator = StripeActuator(Settings())
    assert actuator.mode is ActuationMode.DRY_RUN
    record = await actuator.act(PAYMENT, Decision.BLOCK)
    assert record["mode"] == "dry-run" and record["status"] == "recorded"
    assert record["path"] == "/v1/payment_intents/pi_1/cancel"
    assert record["params"] == {"cancellation_reason": "fraudulent"}
    assert record["idempotency_key"] == "fraudmesh-pi_1-cancel-fraudulent"


async def test_shadow_never_plans_calls():
    actuator = StripeActuator(Settings(actuation_mode="shadow"))
    record = await actuator.act(PAYMENT, Decision.CHALLENGE)
    assert record["mode"] == "shadow" and record["calls"] == []
    assert record["action"] == "confirm_3ds"


def test_live_without_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        StripeActuator(Settings(actuation_mode="live"))


def test_the_safe_fallback_is_the_decision_in_force_and_says_so():
    from services.policy import PolicyDecision, enforced

    outcome = PolicyDecision(Decision.ALLOW, ["risk 0.05 is below ..."], 0.05)
    assert enforced(outcome, {"mode": "live", "status": "done"}) == {
        "decision": "allow",
        "reasons": ["risk 0.05 is below ..."],
    }
    action = {
        "mode": "live",
        "status": "skipped",
        "fallback_decision": "review",
        "note": "Stripe circuit breaker open ...: fell back to 'review'",
    }
    out = enforced(outcome, action)
    assert out["decision"] == "review"
    assert out["reasons"][-1].startswith("Stripe circuit breaker open")
