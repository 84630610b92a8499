"""``fraudmesh replay --stripe`` on a slice of the mesh's first day.

Each payment becomes a PaymentIntent in localstripe; the replay builds and signs
``payment_intent.created`` from localstripe's object (localstripe emits none),
the real mesh scores it from the webhook and Actuation enforces the decision in
localstripe, whose own ``payment_intent.succeeded`` comes back signed.
"""

from __future__ import annotations

from datetime import date

import pytest

from fraudmesh.config import Settings
from fraudmesh.dataset import SAMPLE_PATH
from orchestration.report import build_report
from orchestration.stripe_replay import print_stripe_summary, replay_stripe

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EXPECTED = {
    "allow": {"succeeded"},
    "challenge": {"succeeded"},
    "review": {"requires_capture"},
    "block": {"canceled"},
}


def test_replay_drives_the_stripe_path(mesh_url, localstripe, redis_url):
    settings = Settings()
    assert settings.stripe_api_base == localstripe.url
    result, summary = replay_stripe(
        SAMPLE_PATH,
        date(2018, 8, 29),
        date(2018, 8, 29),
        mesh_url,
        limit=40,
        redis_url=redis_url,
        settings=settings,
        show_progress=False,
    )
    frame = result.frame
    assert len(frame) == 40 and frame["stripe_id"].str.startswith("pi_").all()
    assert set(frame["actuation_mode"]) == {"live"}
    assert summary["emulator"] is True
    assert summary["actuation_mode"] == "live"
    assert sum(summary["payment_intent_statuses"].values()) == 40
    # Every decision was enforced in Stripe.
    import stripe

    api = stripe.StripeClient(
        settings.stripe_api_key.get_secret_value(),
        base_addresses={"api": localstripe.url},
    )
    for stripe_id, decision in zip(frame["stripe_id"], frame["decision"], strict=True):
        status = api.v1.payment_intents.retrieve(stripe_id).status
        assert status in EXPECTED[decision], (stripe_id, decision, status)

    report = build_report(result, None)
    report["stripe"] = summary
    assert report["actuation_modes"] == ["live"]
    print_stripe_summary(summary)
    print(
        f"replay --stripe: {report['payments']} payments, "
        f"{report['payments_per_s']} /s, decision latency p50 "
        f"{report['latency_ms']['p50']} ms p99 {report['latency_ms']['p99']} ms"
    )
