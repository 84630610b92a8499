"""CONTRACT STUB, to be replaced by the Stripe work (issue 4).

``Actuation.act(payment, decision, score) -> dict``: the Stripe call the decision
implies, as a record ``{"mode", "action", "method", "path", "params",
"idempotency_key", "status"}``. In dry-run mode (the default without
``STRIPE_API_KEY``) the call is built and recorded, not sent.
"""

from __future__ import annotations

from ray import serve

from fraudmesh.schemas import Decision, Payment

_ACTIONS = {
    Decision.ALLOW: ("capture", "/v1/payment_intents/{id}/capture", {}),
    Decision.CHALLENGE: (
        "confirm_3ds",
        "/v1/payment_intents/{id}/confirm",
        {"payment_method_options": {"card": {"request_three_d_secure": "any"}}},
    ),
    Decision.REVIEW: ("hold_for_review", "/v1/payment_intents/{id}", {}),
    Decision.BLOCK: (
        "cancel",
        "/v1/payment_intents/{id}/cancel",
        {"cancellation_reason": "fraudulent"},
    ),
}


def plan_action(payment: Payment, decision: Decision) -> dict:
    action, path, params = _ACTIONS[decision]
    return {
        "mode": "dry-run",
        "action": action,
        "method": "POST",
        "path": path.format(id=payment.payment_id),
        "params": params,
        "idempotency_key": f"fraudmesh:{payment.payment_id}:{action}",
        "status": "recorded",
    }


@serve.deployment
class Actuation:
    async def act(
        self,
        payment: Payment,
        decision: Decision,
        score: float,
        carrier: dict[str, str] | None = None,
    ) -> dict:
        return plan_action(payment, decision)

    async def act_many(
        self,
        payments: list[Payment],
        decisions: list[Decision],
        scores: list[float],
        carrier: dict[str, str] | None = None,
    ) -> list[dict]:
        """One call for a batch (the batch endpoint): a record per payment, in order."""
        return [plan_action(p, d) for p, d in zip(payments, decisions, strict=True)]
