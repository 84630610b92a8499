"""The mesh end to end on real Ray Serve and real Redis.

Payments here use customers and terminals of their own (``cus_test_*``), so they
leave the sample's customers untouched for the replay test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from feature_repo import history as hs

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DECISIONS = {"allow", "challenge", "review", "block"}
CREATED = 1535529600 + 3600  # 2018-08-29 01:00 UTC, the mesh's first day


def payment(**overrides) -> dict:
    body = {
        "id": f"pi_test_{uuid.uuid4().hex[:12]}",
        "amount": 4250,
        "currency": "eur",
        "customer": f"cus_test_{uuid.uuid4().hex[:6]}",
        "created": CREATED,
        "metadata": {"terminal_id": "term_test_1"},
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def client(mesh_url: str):
    with httpx.Client(base_url=mesh_url, timeout=60) as c:
        yield c


def history_events(redis_url: str, customer: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen(hs.history_key(customer))
    finally:
        client.close()


def fields_of(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    return {e["field"] for e in body["errors"]}


def test_scores_a_payment_with_decision_reasons_and_version(client):
    body = payment()
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["payment_id"] == body["id"]
    assert 0.0 <= out["score"] <= 1.0
    assert out["decision"] in DECISIONS
    assert out["reasons"] and all(isinstance(x, str) and x for x in out["reasons"])
    assert out["model_version"]
    assert out["actuation_mode"] in {"dry-run", "shadow", "live"}
    assert out["action"] is not None
    assert out["duplicate"] is False
    assert "trace_id" in out


def test_a_huge_amount_for_a_new_customer_is_not_allowed_silently(client):
    r = client.post("/v1/score", json=payment(amount=2_500_000))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reasons"][0].startswith("risk ")
    # A first payment at or above the review limit is never allowed (Policy's
    # first-payment rule when the model's risk is low; tests/test_policy.py).
    assert out["decision"] in ("review", "block"), out


def test_batch_answers_in_request_order(client):
    bodies = [payment(amount=100 * (i + 1)) for i in range(5)]
    r = client.post("/v1/score/batch", json={"payments": bodies})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["payment_id"] for x in results] == [b["id"] for b in bodies]
    assert all(x["decision"] in DECISIONS for x in results)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "xyz"}, "currency"),
        ({"amount": -5}, "amount"),
        ({"metadata": {}}, "metadata.terminal_id"),
        ({"amount": "ten"}, "amount"),
        ({"created": "yesterday"}, "created"),
        ({"amount": 12.5}, "amount"),
        ({"id": "pi_x/../customers/cus_1"}, "id"),
        ({"customer": "cus\u0000x"}, "customer"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, change, field):
    assert field in fields_of(client.post("/v1/score", json=payment(**change)))


def test_every_bad_field_is_named_and_batch_paths_carry_the_index(client):
    bad = payment(currency="zzz", amount=-1)
    del bad["customer"]
    assert fields_of(client.post("/v1/score", json=bad)) == {
        "currency",
        "amount",
        "customer",
    }
    r = client.post("/v1/score/batch", json={"payments": [payment(), bad]})
    assert "payments[1].currency" in fields_of(r)
    assert "body" in fields_of(client.post("/v1/score", content=b"{not json"))
    assert "payments" in fields_of(client.post("/v1/score/batch", json={"x": 1}))


@pytest.mark.parametrize(("currency", "amount"), [("jpy", 5000), ("kwd", 12_345)])
def test_zero_and_three_decimal_currencies(client, currency, amount):
    r = client.post("/v1/score", json=payment(currency=currency, amount=amount))
    assert r.status_code == 200, r.text


def test_a_repeat_answers_the_earlier_decision_and_counts_once(client, redis_url):
    body = payment()
    first = client.post("/v1/score", json=body).json()
    again = client.post("/v1/score", json=body).json()
    assert again["duplicate"] is True
    for key in ("score", "decision", "reasons", "model_version", "trace_id"):
        assert again[key] == first[key]
    assert history_events(redis_url, body["customer"]) == 1


def test_an_id_reused_for_another_payment_is_refused(client, redis_url):
    body = payment()
    assert client.post("/v1/score", json=body).status_code == 200
    other = {**body, "amount": body["amount"] + 1}
    r = client.post("/v1/score", json=other)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "id_reused"
    assert r.json()["errors"][0]["field"] == "id"
    # In a batch: the reused one is named; the batch's new payment is kept
    # (scored and stored) and its answer comes with the refusal, so sending it
    # again answers it as a repeat with the same decision.
    fresh = payment()
    r = client.post("/v1/score/batch", json={"payments": [fresh, other]})
    assert r.status_code == 409, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["payments[1].id"]
    kept, refused = r.json()["results"]
    assert refused is None
    assert kept["payment_id"] == fresh["id"] and kept["duplicate"] is False
    again = client.post("/v1/score", json=fresh).json()
    assert again["duplicate"] is True
    assert again["decision"] == kept["decision"]
    # Within one batch, before anything is scored: a 422.
    twin = payment()
    r = client.post("/v1/score/batch", json={"payments": [
        twin, {**twin, "currency": "usd"}]})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["payments[1].id"]
    assert history_events(redis_url, twin["customer"]) == 0
    # The same payment again is still a plain repeat.
    assert client.post("/v1/score", json=body).json()["duplicate"] is True
    assert history_events(redis_url, body["customer"]) == 1


def test_concurrent_duplicates_are_scored_once(mesh_url, redis_url):
    body = payment()

    async def burst():
        async with httpx.AsyncClient(base_url=mesh_url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/v1/score", json=body) for _ in range(6))
            )

    answers = [r.json() for r in asyncio.run(burst())]
    assert sum(not a["duplicate"] for a in answers) == 1
    assert len({a["score"] for a in answers}) == 1
    assert history_events(redis_url, body["customer"]) == 1


def test_labels_are_accepted_and_bad_labels_named(client):
    label = {
        "payment_id": "pi_test_label",
        "is_fraud": True,
        "source": "analyst",
        "event_time": "2018-08-29T02:00:00Z",
        "terminal_id": "term_test_1",
        "payment_created": "2018-08-29T01:00:00Z",
    }
    r = client.post("/v1/labels", json={"labels": [label]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    bad = {**label, "source": "rumour"}
    r = client.post("/v1/labels", json={"labels": [bad]})
    assert "labels[0].source" in fields_of(r)


def test_deep_nesting_and_huge_bodies_are_refused_not_crashed(client):
    nested = "[" * 5000 + "]" * 5000
    body = '{"id": "pi_deep", "metadata": {"x": ' + nested + "}}"
    r = client.post(
        "/v1/score", content=body, headers={"content-type": "application/json"}
    )
    assert fields_of(r) == {"body"}
    assert "nested" in r.json()["errors"][0]["message"]
    # More digits than Python reads into an int.
    r = client.post("/v1/score", content='{"amount": ' + "9" * 5000 + "}",
                    headers={"content-type": "application/json"})
    assert fields_of(r) == {"body"}
    huge = payment(metadata={"terminal_id": "t", "pad": "x" * (5 * 1024 * 1024)})
    r = client.post("/v1/score", json=huge)
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["field"] == "body"
    assert client.get("/healthz").status_code == 200


def _counted(client, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name)


def test_healthz_and_metrics(client):
    assert client.get("/healthz").status_code == 200
    assert client.head("/healthz").status_code == 200  # load balancers' probe
    scored = _counted(client, "fraudmesh_payments_total")
    repeats = _counted(client, "fraudmesh_duplicate_payments_total")
    body = payment()
    assert client.post("/v1/score", json=body).status_code == 200
    assert client.post("/v1/score", json=body).json()["duplicate"] is True
    # The repeat is counted as a repeat, not as a second payment.
    assert _counted(client, "fraudmesh_payments_total") == scored + 1
    assert _counted(client, "fraudmesh_duplicate_payments_total") == repeats + 1
    assert "fraudmesh_request_latency_seconds_bucket" in client.get("/metrics").text


def test_a_replicas_warning_reaches_its_serve_log(client):
    # A label for a payment never recorded, without terminal or time, is
    # skipped with a WARNING from services.features in the Features replica.
    # Serve drops what a replica writes to stderr below its log level, so the
    # warning must reach the replica's own log file (fraudmesh.logging).
    import ray._private.worker as ray_worker

    logs = Path(ray_worker._global_node.get_logs_dir_path()) / "serve"
    needle = "labels skipped: payment unknown"

    def count() -> int:
        return sum(p.read_text(errors="replace").count(needle)
                   for p in logs.glob("replica_*Features*.log"))

    before = count()
    label = {"payment_id": f"pi_never_seen_{uuid.uuid4().hex[:8]}",
             "is_fraud": True, "source": "analyst",
             "event_time": "2018-08-29T02:00:00Z"}
    r = client.post("/v1/labels", json={"labels": [label]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15
    while count() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count() > before
