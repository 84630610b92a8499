"""Webhook receiving and processing against real Redis (no Ray).

The mesh behind the processor is a recording stand-in here (``RecordingGraph``):
these tests are about the queue, deduplication, ordering and mapping; the same
events go through the real Ray Serve mesh in test_stripe_mesh.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from fraudmesh.schemas import LabelSource
from services.webhooks import (
    DEAD_STREAM,
    Consumer,
    EventProcessor,
    EventQueue,
    Receiver,
    StateStore,
)
from tests.stripe_signing import SECRET, event_body, sign

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

_ids = itertools.count()


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}{next(_ids)}"


class RecordingGraph:
    """Stands in for the Ray Serve mesh: records calls, answers like it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def score(self, body):
        self.calls.append(("score", body))
        return {
            "payment_id": body["id"],
            "score": 0.3,
            "decision": "challenge",
            "reasons": ["gray zone"],
            "model_version": "v1",
            "actuation_mode": "dry-run",
            "action": {"mode": "dry-run"},
        }

    async def redecide(self, payment, score, model_version, radar):
        self.calls.append(("redecide", (payment.payment_id, score, dict(radar))))
        return {
            "payment_id": payment.payment_id,
            "score": score,
            "decision": "block",
            "reasons": ["Stripe Radar"],
            "model_version": model_version,
            "actuation_mode": "dry-run",
            "action": {"mode": "dry-run"},
        }

    async def record_labels(self, labels):
        self.calls.append(("labels", labels))

    async def record_account_change(self, customer_id, at, changed):
        self.calls.append(("account_change", (customer_id, at, changed)))

    async def on_label(self, payment_id, is_fraud, refundable):
        self.calls.append(("on_label", (payment_id, is_fraud, refundable)))
        return {"mode": "dry-run"}

    async def resolve_review(self, payment_id, approve):
        self.calls.append(("resolve_review", (payment_id, approve)))
        return {"mode": "dry-run"}

    def of(self, kind: str) -> list[Any]:
        return [args for k, args in self.calls if k == kind]


@pytest.fixture
async def redis_client(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def mesh(redis_client):
    """Receiver, queue on a stream of its own, processor and a consumer."""
    queue = EventQueue(redis_client, stream=uid("test:stream"), claim_idle_s=0.2)
    graph = RecordingGraph()
    processor = EventProcessor(StateStore(redis_client), graph)
    receiver = Receiver(queue, [SECRET])
    consumer = Consumer(queue, processor, "consumer-a", block_ms=50)
    yield receiver, queue, graph, consumer
    await consumer.stop()
    await redis_client.delete(queue.stream)


async def deliver(receiver, body: bytes, header: str | None = None):
    return await receiver.receive(body, sign(body) if header is None else header)


async def drain(queue: EventQueue, consumer: Consumer) -> None:
    await consumer.handle_batch(await queue.read(consumer.name, block_ms=50))


def pi_obj(pid: str, **extra) -> dict:
    return {
        "id": pid,
        "object": "payment_intent",
        "amount": 5000,
        "currency": "eur",
        "customer": "cus_42",
        "created": int(time.time()),
        "status": "requires_confirmation",
        "metadata": {"terminal_id": "term_9"},
        **extra,
    }


async def test_valid_event_is_acknowledged_queued_and_processed(mesh, redis_client):
    receiver, queue, graph, consumer = mesh
    pid = uid("pi")
    status, answer = await deliver(
        receiver, event_body("payment_intent.created", pi_obj(pid))
    )
    assert status == 200 and answer["duplicate"] is False
    assert await redis_client.xlen(queue.stream) == 1
    await drain(queue, consumer)
    [body] = graph.of("score")
    assert body["id"] == pid and body["amount"] == 5000
    assert await redis_client.xlen(queue.stream) == 0
    assert await queue.pending() == 0


async def test_bad_signatures_answer_400_and_change_nothing(mesh, redis_client):
    receiver, queue, _graph, _consumer = mesh
    body = event_body("payment_intent.created", pi_obj(uid("pi")))
    tampered = body.replace(b"5000", b"5")
    status, answer = await deliver(receiver, tampered, sign(body))
    assert status == 400 and answer["errors"][0]["field"] == "Stripe-Signature"
    stale = sign(body, timestamp=int(time.time()) - 600)
    status, answer = await deliver(receiver, body, stale)
    assert status == 400 and "older than 300 s" in answer["message"]
    status, _ = await deliver(receiver, body, sign(body, "whsec_wrong"))
    assert status == 400
    assert await redis_client.xlen(queue.stream) == 0


async def test_rotated_secret(mesh, redis_client):
    _receiver, queue, graph, _consumer = mesh
    receiver = Receiver(queue, ["whsec_new", SECRET])
    body = event_body("payment_intent.created", pi_obj(uid("pi")))
    assert (await deliver(receiver, body, sign(body, "whsec_new")))[0] == 200


async def test_duplicate_delivery_is_queued_once(mesh, redis_client):
    receiver, queue, graph, consumer = mesh
    body = event_body("payment_intent.created", pi_obj(uid("pi")))
    first = await deliver(receiver, body)
    again = await deliver(receiver, body)
    assert first[1]["duplicate"] is False and again[1]["duplicate"] is True
    assert await redis_client.xlen(queue.stream) == 1
    await drain(queue, consumer)
    assert len(graph.of("score")) == 1
    ttl = await redis_client.ttl(f"fraudmesh:stripe:seen:{first[1]['id']}")
    assert ttl >= 3 * 24 * 3600


async def test_unknown_type_answers_200_and_logs_once(mesh, redis_client, caplog):
    receiver, queue, _graph, _consumer = mesh
    caplog.set_level(logging.INFO, logger="fraudmesh.webhooks")
    etype = f"invoice.{uid('x')}"
    for _ in range(3):
        body = event_body(etype, {"id": uid("in")})
        status, answer = await deliver(receiver, body)
        assert status == 200 and answer["ignored"] is True
    logged = [r for r in caplog.records if etype in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.INFO
    assert await redis_client.xlen(queue.stream) == 0


async def test_accepted_event_survives_a_consumer_that_died(mesh, redis_client):
    receiver, queue, graph, _consumer = mesh
    body = event_body("payment_intent.created", pi_obj(uid("pi")))
    await deliver(receiver, body)
    # Replica A reads the event, then dies before acknowledging it.
    [taken] = await queue.read("replica-a", block_ms=50)
    assert await queue.pending() == 1
    # Replica B (a restart) claims it once it has been idle long enough.
    await asyncio.sleep(0.3)
    b = Consumer(
        queue, EventProcessor(StateStore(redis_client), graph), "replica-b", block_ms=50
    )
    b.start()
    for _ in range(100):
        if b.processed:
            break
        await asyncio.sleep(0.05)
    await b.stop()
    assert b.processed == 1 and len(graph.of("score")) == 1
    assert await queue.pending() == 0


async def test_older_outcome_never_overwrites_newer(mesh, redis_client):
    receiver, queue, _graph, consumer = mesh
    pid = uid("pi")
    now = int(time.time())
    succeeded = event_body(
        "payment_intent.succeeded", pi_obj(pid, status="succeeded"), created=now - 10
    )
    failed = event_body(
        "payment_intent.payment_failed",
        pi_obj(pid, status="requires_payment_method"),
        created=now - 100,
    )
    await deliver(receiver, succeeded)
    await deliver(receiver, failed)
    await drain(queue, consumer)
    state = await consumer.processor.state.payment(pid)
    assert state["status"] == "succeeded"


async def test_account_change_from_previous_attributes(mesh):
    receiver, queue, graph, consumer = mesh
    cid = uid("cus")
    body = event_body(
        "customer.updated",
        {"id": cid, "email": "n@example.org"},
        previous_attributes={"email": "o@example.org"},
    )
    await deliver(receiver, body)
    await drain(queue, consumer)
    [(customer, at, changed)] = graph.of("account_change")
    assert customer == cid and changed == ["email"] and isinstance(at, datetime)


async def test_account_change_by_digest_and_stale_update_ignored(mesh):
    receiver, queue, graph, consumer = mesh
    cid = uid("cus")
    now = int(time.time())
    # No previous_attributes (as localstripe sends): compare with the stored profile.
    for i, (email, phone, t) in enumerate(
        [
            ("a@example.org", "+33 1", now - 300),  # baseline
            ("b@example.org", "+33 1", now - 200),  # email changed
            ("b@example.org", "+33 2", now - 100),  # phone changed
            ("a@example.org", "+33 1", now - 250),  # late, older: ignored
        ]
    ):
        body = event_body(
            "customer.updated",
            {"id": cid, "email": email, "phone": phone},
            created=t,
            event_id=f"evt_{cid}_{i}",
        )
        await deliver(receiver, body)
        await drain(queue, consumer)
    assert [c[2] for c in graph.of("account_change")] == [["email"], ["phone"]]


async def test_dispute_label_with_times_and_newer_api_charge_link(mesh):
    receiver, queue, graph, consumer = mesh
    pid, cid = uid("pi"), uid("ch")
    # Newer API version: latest_charge, no charges list.
    paid = pi_obj(pid, status="succeeded", latest_charge=cid)
    assert "charges" not in paid
    await deliver(receiver, event_body("payment_intent.created", pi_obj(pid)))
    await deliver(receiver, event_body("payment_intent.succeeded", paid))
    await drain(queue, consumer)
    # An early fraud warning naming only the charge resolves to the payment.
    t = int(time.time()) - 60
    efw = {"id": uid("issfr"), "charge": cid, "actionable": True}
    await deliver(
        receiver, event_body("radar.early_fraud_warning.created", efw, created=t)
    )
    await drain(queue, consumer)
    [[label]] = graph.of("labels")
    assert label.payment_id == pid and label.source is LabelSource.EARLY_FRAUD_WARNING
    assert int(label.event_time.timestamp()) == t
    assert label.arrival_time >= label.event_time
    assert label.customer_id == "cus_42" and label.terminal_id == "term_9"
    assert graph.of("on_label") == [(pid, True, True)]


async def test_radar_signal_redecides_a_scored_payment(mesh):
    receiver, queue, graph, consumer = mesh
    pid, cid = uid("pi"), uid("ch")
    await deliver(receiver, event_body("payment_intent.created", pi_obj(pid)))
    charge = {
        "id": cid,
        "payment_intent": pid,
        "captured": False,
        "outcome": {"risk_score": 91, "risk_level": "highest"},
    }
    await deliver(receiver, event_body("charge.succeeded", charge))
    await drain(queue, consumer)
    [(rid, score, radar)] = graph.of("redecide")
    assert rid == pid and score == 0.3
    assert radar == {"radar_risk_score": 91, "radar_risk_level": "highest"}
    state = await consumer.processor.state.payment(pid)
    assert state["decision"] == "block" and state["radar_redecided"] == "1"


async def test_unusable_event_is_dead_lettered(mesh, redis_client):
    receiver, queue, _graph, consumer = mesh
    # Valid signature, but the PaymentIntent has no customer: cannot be scored.
    obj = pi_obj(uid("pi"), customer=None)
    await deliver(receiver, event_body("payment_intent.created", obj))
    before = await redis_client.xlen(DEAD_STREAM)
    await drain(queue, consumer)
    assert await redis_client.xlen(DEAD_STREAM) == before + 1
    assert await queue.pending() == 0


async def test_queue_recovers_when_the_stream_and_group_vanish(mesh, redis_client):
    receiver, queue, graph, consumer = mesh
    await queue.ensure_group()
    await redis_client.delete(queue.stream)  # e.g. Redis flushed under us
    with pytest.raises(aioredis.ResponseError):
        await queue.read(consumer.name, block_ms=10)
    await deliver(receiver, event_body("payment_intent.created", pi_obj(uid("pi"))))
    await drain(queue, consumer)
    assert len(graph.of("score")) == 1


async def test_one_radar_reading_redecides_once_when_both_lanes_finish_together(mesh):
    """Scoring and the Radar signal run in separate lanes; when both see the
    other's write they both reach the re-decision, which must happen once."""
    receiver, queue, graph, consumer = mesh
    pid = uid("pi")
    await deliver(receiver, event_body("payment_intent.created", pi_obj(pid)))
    await drain(queue, consumer)
    state = consumer.processor.state
    await state.update_payment(
        pid, {"radar_risk_score": 91, "radar_risk_level": "highest"}
    )
    stored = await state.payment(pid)
    await asyncio.gather(
        consumer.processor._redecide(pid, stored),
        consumer.processor._redecide(pid, stored),
    )
    assert len(graph.of("redecide")) == 1
