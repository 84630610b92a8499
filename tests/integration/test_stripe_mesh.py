"""Stripe end to end: signed webhooks into the real Ray Serve mesh, real actuation
through the Stripe SDK against localstripe, real Redis.

The mesh runs with STRIPE_API_BASE pointing at the localstripe fixture, a fake
test key and two webhook secrets (a rotation), in live actuation mode
(``mesh_env`` in tests/integration/conftest.py). localstripe emits no
``payment_intent.created`` nor charge events, so those are built here from
localstripe's own objects and signed with Stripe's scheme
(tests/stripe_signing.py); the events localstripe does emit
(``payment_intent.succeeded``, ``customer.*``) it delivers itself to the mesh.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlencode

import httpx
import pandas as pd
import pytest
import redis
import stripe

from fraudmesh.dataset import SAMPLE_PATH, load_transactions
from services.webhooks import payment_key
from tests.stripe_signing import OLD_SECRET, SECRET, event_body, sign

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAKE_KEY = "sk_test_fraudmesh_localstripe"
MESH_DAY = pd.Timestamp("2018-08-29", tz="UTC")
CREATED = int(MESH_DAY.timestamp()) + 3600  # 01:00 on the mesh's first day
EXPECTED_STATUS = {
    "allow": {"succeeded"},
    # localstripe lets the test card through 3-D Secure (see test_stripe_actuation)
    "challenge": {"succeeded"},
    "review": {"requires_capture"},
    "block": {"canceled"},
}


@pytest.fixture(scope="module")
def client(mesh_url: str, localstripe):
    # localstripe delivers the events it emits to the mesh, signed.
    form = {"url": f"{mesh_url}/v1/webhooks/stripe", "secret": SECRET}
    events = [
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "customer.created",
        "customer.updated",
    ]
    body = list(form.items()) + [("events[]", e) for e in events]
    httpx.post(
        f"{localstripe.url}/_config/webhooks/fraudmesh",
        content=urlencode(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    ).raise_for_status()
    with httpx.Client(base_url=mesh_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stripe_api(localstripe):
    return stripe.StripeClient(FAKE_KEY, base_addresses={"api": localstripe.url})


@pytest.fixture(scope="module")
def rstate(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


def new_intent(api, *, customer=None, amount=4250, created=CREATED, **extra) -> dict:
    customer = customer or f"cus_test_stripe_{uuid.uuid4().hex[:8]}"
    intent = api.v1.payment_intents.create(
        {
            "amount": amount,
            "currency": "eur",
            "payment_method": "pm_card_visa",
            "metadata": {
                "customer_id": customer,
                "terminal_id": "term_test_stripe",
                "fraudmesh_created": str(created),
            },
            **extra,
        }
    )
    return intent.to_dict()


def post(client, body: bytes, header: str | None = None) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(body) if header is None else header,
    }
    return client.post("/v1/webhooks/stripe", content=body, headers=headers)


def wait_state(
    rstate,
    pid: str,
    field: str = "decision",
    value: str | None = None,
    timeout_s: float = 60.0,
) -> dict:
    deadline = time.monotonic() + timeout_s
    state: dict = {}
    while time.monotonic() < deadline:
        state = rstate.hgetall(payment_key(pid))
        if field in state and (value is None or state[field] == value):
            return state
        time.sleep(0.05)
    raise AssertionError(f"{pid}: no {field}={value} within {timeout_s} s: {state}")


def test_payment_intent_created_is_scored_and_enforced_in_stripe(
    client, stripe_api, rstate
):
    intent = new_intent(stripe_api)
    body = event_body("payment_intent.created", intent)
    started = time.perf_counter()
    r = post(client, body)
    ack_ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False
    print(f"webhook acknowledged in {ack_ms:.1f} ms")
    state = wait_state(rstate, intent["id"])
    assert state["actuation_mode"] == "live"
    decision = state["decision"]
    live = stripe_api.v1.payment_intents.retrieve(intent["id"])
    assert live.status in EXPECTED_STATUS[decision], (decision, live.status)
    if live.status == "succeeded":
        # localstripe's own payment_intent.succeeded comes back through the webhook.
        wait_state(rstate, intent["id"], "status", "succeeded")


def test_bad_signatures_answer_400_and_change_nothing(client, stripe_api, rstate):
    intent = new_intent(stripe_api)
    body = event_body("payment_intent.created", intent)
    cases = {
        "tampered": (body.replace(b'"amount": 4250', b'"amount": 1'), sign(body)),
        "stale": (body, sign(body, timestamp=int(time.time()) - 400)),
        "wrong secret": (body, sign(body, "whsec_not_ours")),
        "missing": (body, ""),
    }
    for name, (payload, header) in cases.items():
        r = post(client, payload, header)
        assert r.status_code == 400, (name, r.text)
        assert r.json()["errors"][0]["field"] == "Stripe-Signature", name
    time.sleep(1.0)
    assert rstate.exists(payment_key(intent["id"])) == 0


def test_rotation_duplicates_unknown_types_order_and_newer_payloads(
    client, stripe_api, rstate
):
    intent = new_intent(stripe_api)
    body = event_body("payment_intent.created", intent)
    # Signed with the previous secret only: still configured during the rotation.
    assert post(client, body, sign(body, OLD_SECRET)).status_code == 200
    again = post(client, body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    unknown = event_body("invoice.finalized", {"id": "in_test"})
    r = post(client, unknown)
    assert r.status_code == 200 and r.json()["ignored"] is True
    wait_state(rstate, intent["id"])

    # A newer API version's payload: latest_charge, no charges list.
    now = int(time.time())
    paid = {**intent, "status": "succeeded", "latest_charge": "ch_test_newer"}
    paid.pop("charges", None)
    post(client, event_body("payment_intent.succeeded", paid, created=now + 5))
    wait_state(rstate, intent["id"], "status", "succeeded")
    # An older failure arriving later does not overwrite it.
    failed = {**intent, "status": "requires_payment_method"}
    post(client, event_body("payment_intent.payment_failed", failed, created=now))
    time.sleep(1.5)
    assert rstate.hget(payment_key(intent["id"]), "status") == "succeeded"


def quiet_customers(n: int) -> list[tuple[str, float]]:
    """Sample customers with a month of history and no payment from the day
    before the mesh's first day on, so the replay test never meets them."""
    frame = load_transactions(SAMPLE_PATH)
    month = frame[
        (frame.tx_datetime < MESH_DAY)
        & (frame.tx_datetime >= MESH_DAY - pd.Timedelta(days=30))
    ]
    stats = month.groupby("customer_key").tx_amount.agg(["count", "mean"])
    last = frame.groupby("customer_key").tx_datetime.max()
    quiet = stats[
        (stats["count"] >= 5)
        & (last.reindex(stats.index) < MESH_DAY - pd.Timedelta(days=1))
    ]
    return list(quiet["mean"].items())[:n]


def test_account_change_shortly_before_a_large_payment_raises_the_risk(
    client, stripe_api, rstate
):
    (victim, victim_mean), (control, control_mean) = quiet_customers(2)
    changed_at = CREATED - 2 * 3600
    update = event_body(
        "customer.updated",
        {"id": victim, "object": "customer", "email": "new-owner@example.org"},
        previous_attributes={"email": "owner@example.org"},
        created=changed_at,
    )
    assert post(client, update).status_code == 200
    time.sleep(1.0)  # the account change is in the history before the payment

    answers = {}
    for customer, mean in ((victim, victim_mean), (control, control_mean)):
        amount = int(round(mean * 10 * 100))
        intent = new_intent(stripe_api, customer=customer, amount=amount)
        assert (
            post(client, event_body("payment_intent.created", intent)).status_code
            == 200
        )
        answers[customer] = wait_state(rstate, intent["id"])
    victim_reasons = answers[victim]["reasons"]
    assert "account takeover" in victim_reasons, victim_reasons
    assert answers[victim]["decision"] != "allow"
    assert "account takeover" not in answers[control]["reasons"]


def test_analyst_approves_or_rejects_a_held_payment(client, stripe_api, localstripe):
    held = []
    for _ in range(2):
        intent = new_intent(stripe_api, capture_method="manual")
        stripe_api.v1.payment_intents.confirm(intent["id"])
        held.append(intent["id"])
    r = client.post(f"/v1/reviews/{held[0]}", json={"verdict": "approve"})
    assert r.status_code == 200, r.text
    assert r.json()["actuation_mode"] == "live"
    assert stripe_api.v1.payment_intents.retrieve(held[0]).status == "succeeded"
    r = client.post(f"/v1/reviews/{held[1]}", json={"verdict": "fraud"})
    assert r.status_code == 200, r.text
    assert stripe_api.v1.payment_intents.retrieve(held[1]).status == "canceled"
    [sent] = localstripe.requests(rf"/v1/payment_intents/{held[1]}/cancel$")
    assert sent["params"] == {"cancellation_reason": "fraudulent"}
    bad = client.post(f"/v1/reviews/{held[1]}", json={"verdict": "maybe"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "verdict"
    # A payment id that could never be one: 422 naming it, and the id itself
    # is not repeated in the answer.
    for bad_id in ("pi%20x", "pi_" + "9" * 300):
        bad = client.post(f"/v1/reviews/{bad_id}", json={"verdict": "fraud"})
        assert bad.status_code == 422, bad.text
        assert bad.json()["errors"][0]["field"] == "payment_id"
        assert "999" not in bad.text and "pi x" not in bad.text


def test_radar_highest_risk_on_the_charge_blocks_the_payment(
    client, stripe_api, rstate
):
    intent = new_intent(stripe_api, capture_method="manual")
    assert post(client, event_body("payment_intent.created", intent)).status_code == 200
    wait_state(rstate, intent["id"])
    charge = {
        "id": f"ch_test_{uuid.uuid4().hex[:8]}",
        "object": "charge",
        "payment_intent": intent["id"],
        "captured": False,
        "outcome": {"risk_score": 95, "risk_level": "highest", "type": "authorized"},
    }
    assert post(client, event_body("charge.succeeded", charge)).status_code == 200
    state = wait_state(rstate, intent["id"], "radar_redecided", "1")
    assert state["decision"] == "block"
    assert "Radar" in state["reasons"]
    live = stripe_api.v1.payment_intents.retrieve(intent["id"])
    refunds = (
        stripe_api.v1.refunds.list({"payment_intent": intent["id"]}).data
        if live.status == "succeeded"
        else []
    )
    assert live.status == "canceled" or refunds


def test_an_event_taken_by_a_replica_that_died_is_processed_by_another(
    client, stripe_api, rstate
):
    """Accepted (verified, queued), then read by a replica that died before
    acknowledging it: a live Webhooks replica claims it once it has been idle for
    ``claim_idle_s`` (30 s in serve_config.yaml) and processes it."""
    from services.webhooks import GROUP, STREAM, seen_key

    intent = new_intent(stripe_api)
    body = event_body("payment_intent.created", intent)
    event_id = f"evt_dead_replica_{intent['id']}"
    rstate.set(seen_key(event_id), event_id, ex=3600)
    # Queued and, in the same transaction, read by the replica that then dies:
    # the entry is pending under its name and no live consumer got it.
    with rstate.pipeline(transaction=True) as pipe:
        pipe.xadd(
            STREAM,
            {
                "id": event_id,
                "type": "payment_intent.created",
                "body": body.decode(),
                "arrived": repr(time.time()),
            },
        )
        pipe.xreadgroup(GROUP, "replica-that-died", {STREAM: ">"}, count=1)
        _, taken = pipe.execute()
    [[_stream, [(_entry_id, fields)]]] = taken
    assert fields["id"] == event_id
    assert not rstate.exists(payment_key(intent["id"]))
    state = wait_state(rstate, intent["id"], timeout_s=90)
    assert state["decision"] in EXPECTED_STATUS
    pending = rstate.xpending_range(STREAM, GROUP, min="-", max="+", count=1000)
    assert all(p["consumer"] != "replica-that-died" for p in pending)
