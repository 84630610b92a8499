"""One trace per payment through the real mesh, received over real OTLP/HTTP.

Every replica of the session's Ray Serve run exports to the ``otlp_receiver``
fixture (``mesh_env`` points ``OTEL_EXPORTER_OTLP_ENDPOINT`` at it before Ray
starts). Payments here use customers and terminals of their own.
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from fraudmesh import tracing
from tests.otlp_receiver import ReceivedSpan
from tests.stripe_signing import event_body, sign

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CREATED = 1535529600 + 7200  # 2018-08-29 02:00 UTC, the mesh's first day
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_PARENT = "b7ad6b7169203331"
# Hop spans of one /v1/score call and the hop each hangs under. The ingress's
# hop is FastAPI's HTTP server span itself (tracing.route_hop).
PARENT_OF = {
    "ingest.score": "POST /v1/score",
    "features.lookup": "ingest.score",
    "model.score": "ingest.score",
    "policy.decide": "model.score",
}
SERVICES = {"ingress", "ingest", "features", "model", "policy", "actuation"}
SECRET_LOOKING = re.compile(r"sk_(live|test)_|whsec_|@|\bpi_\w|\bcus_\w")


def payment(**overrides) -> dict:
    body = {
        "id": f"pi_trace_{uuid.uuid4().hex[:12]}",
        "amount": 3150,
        "currency": "eur",
        "customer": f"cus_trace_{uuid.uuid4().hex[:6]}",
        "created": CREATED,
        "metadata": {"terminal_id": "term_trace_1"},
        "signals": {"email_domain": "example.com", "ip_country": "FR"},
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def client(mesh_url: str):
    with httpx.Client(base_url=mesh_url, timeout=60) as c:
        yield c


def _actuation_span(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
    for s in spans:
        if s.name.startswith("actuation.act"):
            return s
    return None


def _complete(spans: list[ReceivedSpan]) -> bool:
    # FastAPI's HTTP server span ends after our hops and may come in a later
    # export batch than theirs: a trace is complete only with it.
    names = {s.name for s in spans}
    http_server = any(s.kind == "server" and s.name.startswith("POST ") for s in spans)
    return (
        set(PARENT_OF) - {"ingest.score"} <= names
        and "ingest.score" in names
        and bool(_actuation_span(spans))
        and http_server
    )


def wait_for_trace(receiver, trace_id: str) -> list[ReceivedSpan]:
    receiver.wait_for(
        lambda spans: _complete([s for s in spans if s.trace_id == trace_id]),
        timeout_s=30,
    )
    return receiver.trace(trace_id)


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


def ancestors(spans: list[ReceivedSpan], span: ReceivedSpan) -> list[str]:
    """Span ids above ``span`` within ``spans``, nearest first."""
    index = {s.span_id: s for s in spans}
    out, parent = [], span.parent_span_id
    while parent in index:
        out.append(parent)
        parent = index[parent].parent_span_id
    return out


def http_root(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    [root] = [s for s in spans if s.name == name and s.kind == "server"]
    assert root.service == "ingress"
    return root


def assert_chain(spans: list[ReceivedSpan]) -> None:
    named = by_name(spans)
    [ingress] = [s for s in spans if s.service == "ingress"]  # one span, no more
    named[PARENT_OF["ingest.score"]] = ingress  # /v1/score or /v1/score/batch
    for child, parent in PARENT_OF.items():
        assert named[child].parent_span_id == named[parent].span_id, child
        assert named[child].start_ns >= named[parent].start_ns, child
        assert named[child].end_ns <= named[parent].end_ns, child
    actuation = _actuation_span(spans)
    assert actuation.parent_span_id == named["policy.decide"].span_id
    # Features answers before the model is asked.
    assert named["features.lookup"].end_ns <= named["model.score"].start_ns
    for s in spans:
        assert s.kind in ("server", "client", "internal"), s.name


def test_a_payment_is_one_trace_through_every_deployment(client, otlp_receiver):
    body = payment()
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    trace_id = r.json()["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)

    spans = wait_for_trace(otlp_receiver, trace_id)
    assert {s.service for s in spans} >= SERVICES
    assert_chain(spans)
    named = by_name(spans)
    # The root: FastAPI's own HTTP server span in the ingress, which is also
    # the ingress's hop (it carries the hop's attributes).
    root = http_root(spans, "POST /v1/score")
    assert root.parent_span_id is None
    assert root.attributes["http.response.status_code"] == 200
    assert named["ingest.score"].parent_span_id == root.span_id

    payment_hash = tracing.hash_id(body["id"])
    for name in ("POST /v1/score", "ingest.score", "model.score", "policy.decide"):
        assert named[name].attributes[tracing.PAYMENT_HASH_KEY] == payment_hash
    policy = named["policy.decide"].attributes
    assert policy["fraudmesh.decision"] == r.json()["decision"]
    assert policy["fraudmesh.score_bucket"] == tracing.score_bucket(r.json()["score"])
    model = named["model.score"]
    assert model.attributes["fraudmesh.model_version"] == r.json()["model_version"]
    assert model.attributes["fraudmesh.feature_count"] > 0
    assert model.attributes["fraudmesh.batch_size"] == 1

    # Resource: deployment and replica of each process.
    assert model.resource["fraudmesh.deployment"] == "Model"
    assert model.resource["fraudmesh.replica_id"]
    # Client spans (Redis commands, Stripe calls) hang inside the hops.
    clients = [s for s in spans if s.kind == "client"]
    assert clients
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in clients)


def test_each_payment_has_its_own_trace(client, otlp_receiver):
    bodies = [payment() for _ in range(3)]
    trace_ids = []
    for body in bodies:
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        trace_ids.append(r.json()["trace_id"])
    assert len(set(trace_ids)) == 3
    for body, trace_id in zip(bodies, trace_ids, strict=True):
        wait_for_trace(otlp_receiver, trace_id)
        payment_hash = tracing.hash_id(body["id"])
        tagged = {
            s.trace_id
            for s in otlp_receiver.spans()
            if s.attributes.get(tracing.PAYMENT_HASH_KEY) == payment_hash
        }
        assert tagged == {trace_id}


def test_concurrent_payments_each_keep_their_own_whole_trace(mesh_url, otlp_receiver):
    # Concurrent requests may share a wave down the mesh (services/ingest.py,
    # Waves); each payment must still be one trace through every deployment.
    from concurrent.futures import ThreadPoolExecutor

    bodies = [payment() for _ in range(12)]

    def send(body):
        with httpx.Client(base_url=mesh_url, timeout=60) as c:
            return c.post("/v1/score", json=body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(send, bodies))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert len({r.json()["trace_id"] for r in answers}) == len(bodies)
    for body, r in zip(bodies, answers, strict=True):
        spans = wait_for_trace(otlp_receiver, r.json()["trace_id"])
        assert_chain(spans)
        named = by_name(spans)
        payment_hash = tracing.hash_id(body["id"])
        for name in ("ingest.score", "features.lookup", "model.score",
                     "policy.decide"):
            assert named[name].attributes[tracing.PAYMENT_HASH_KEY] == payment_hash
            assert named[name].attributes["fraudmesh.batch_size"] == 1
        assert named["policy.decide"].attributes["fraudmesh.decision"] == (
            r.json()["decision"])


def test_a_callers_traceparent_is_the_parent(client, otlp_receiver):
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"}
    r = client.post("/v1/score", json=payment(), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["trace_id"] == CALLER_TRACE
    spans = wait_for_trace(otlp_receiver, CALLER_TRACE)
    root = http_root(spans, "POST /v1/score")
    assert root.parent_span_id == CALLER_PARENT
    assert by_name(spans)["ingest.score"].parent_span_id == root.span_id
    assert_chain(spans)


def test_a_batch_is_one_trace_with_its_size(client, otlp_receiver):
    bodies = [payment() for _ in range(4)]
    r = client.post("/v1/score/batch", json={"payments": bodies})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len({x["trace_id"] for x in results}) == 1
    spans = wait_for_trace(otlp_receiver, results[0]["trace_id"])
    assert_chain(spans)
    assert by_name(spans)["ingest.score"].attributes["fraudmesh.batch_size"] == 4


def test_a_webhook_is_traced_from_delivery_to_actuation(client, otlp_receiver):
    pid = f"pi_trace_{uuid.uuid4().hex[:12]}"
    obj = {
        "id": pid,
        "object": "payment_intent",
        "amount": 2000,
        "currency": "eur",
        "customer": f"cus_trace_{uuid.uuid4().hex[:6]}",
        "created": CREATED,
        "status": "requires_confirmation",
        "metadata": {"terminal_id": "term_trace_2"},
    }
    raw = event_body("payment_intent.created", obj)
    headers = {
        "Stripe-Signature": sign(raw),
        "Content-Type": "application/json",
        "traceparent": f"00-{uuid.uuid4().hex}-{CALLER_PARENT}-01",
    }
    delivery_trace = headers["traceparent"].split("-")[1]
    r = client.post("/v1/webhooks/stripe", content=raw, headers=headers)
    assert r.status_code == 200, r.text

    # The delivery: the caller's trace, through the ingress to Webhooks. The
    # ingress and the Webhooks replica export from different processes, each
    # on its own batch schedule: wait for the spans of both.
    delivery_names = {"POST /v1/webhooks/stripe", "webhooks.receive"}
    otlp_receiver.wait_for(
        lambda spans: (
            delivery_names <= {s.name for s in spans if s.trace_id == delivery_trace}
        ),
        timeout_s=30,
    )
    delivery_spans = otlp_receiver.trace(delivery_trace)
    delivery = by_name(delivery_spans)
    root = http_root(delivery_spans, "POST /v1/webhooks/stripe")
    assert root.parent_span_id == CALLER_PARENT
    receive = delivery["webhooks.receive"]
    assert receive.parent_span_id == root.span_id
    assert receive.service == "webhooks"

    # The processing: the queued event scored through every hop, one trace.
    payment_hash = tracing.hash_id(pid)

    def processed(spans: list[ReceivedSpan]) -> bool:
        traces = {
            s.trace_id
            for s in spans
            if s.name == "ingest.score"
            and s.attributes.get(tracing.PAYMENT_HASH_KEY) == payment_hash
        }
        return any(_complete_from_ingest(spans, t) for t in traces)

    spans = otlp_receiver.wait_for(processed, timeout_s=60)
    [trace_id] = {
        s.trace_id
        for s in spans
        if s.name == "ingest.score"
        and s.attributes.get(tracing.PAYMENT_HASH_KEY) == payment_hash
    }
    trace = by_name(otlp_receiver.trace(trace_id))
    assert trace["ingest.score"].parent_span_id == trace["webhooks.process"].span_id
    assert trace["webhooks.process"].attributes["stripe.event_type"] == (
        "payment_intent.created"
    )


def _complete_from_ingest(spans: list[ReceivedSpan], trace_id: str) -> bool:
    names = {s.name for s in spans if s.trace_id == trace_id}
    wanted = {"webhooks.process", "ingest.score", "model.score", "policy.decide"}
    return wanted <= names


def test_no_span_carries_card_data_emails_ips_or_secrets(client, otlp_receiver):
    # Runs after the tests above (file order): checks every span received in
    # the session so far, from every deployment and every instrumentation.
    r = client.post("/v1/score", json=payment())
    assert r.status_code == 200, r.text
    wait_for_trace(otlp_receiver, r.json()["trace_id"])
    spans = otlp_receiver.spans()
    assert spans
    for s in spans:
        for where, attrs in [("attributes", s.attributes), ("resource", s.resource)]:
            assert tracing.find_forbidden(attrs) == [], (s.name, where)
            text = json.dumps(attrs)
            assert not SECRET_LOOKING.search(text), (s.name, where, text)
        for event_name, attrs in s.events:
            assert tracing.find_forbidden(attrs) == [], (s.name, event_name)
            assert not SECRET_LOOKING.search(json.dumps(attrs)), (s.name, attrs)
        assert not SECRET_LOOKING.search(s.status_message), s.name
