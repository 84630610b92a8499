"""Ingest's validation (pure) and its idempotency store (real Redis)."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from fraudmesh.schemas import Payment
from services.ingest import (
    IdempotencyStore,
    Waves,
    conflicting_repeats,
    decode_stored,
    fingerprint,
    validate_labels,
    validate_payments,
)


def body(**overrides) -> dict:
    b = {
        "id": "pi_1",
        "amount": 1050,
        "currency": "EUR",
        "customer": "cus_1",
        "created": 1535529600,
        "metadata": {"terminal_id": "term_1"},
    }
    b.update(overrides)
    return b


def fields(errors: list[dict]) -> set[str]:
    return {e["field"] for e in errors}


@pytest.mark.parametrize(
    ("currency", "minor", "major"),
    [
        ("eur", 1050, 10.5),
        ("jpy", 1050, 1050.0),
        ("kwd", 1050, 1.05),
        ("bhd", 5, 0.005),
    ],
)
def test_amounts_respect_the_currency_minor_unit(currency, minor, major):
    payments, errors = validate_payments([body(currency=currency, amount=minor)])
    assert errors == []
    assert payments[0].amount == pytest.approx(major)
    assert payments[0].amount_minor == minor
    assert payments[0].currency == currency


def test_payment_is_normalised():
    (p,), _ = validate_payments([body()], prefix=None)
    assert (p.payment_id, p.customer_id, p.terminal_id) == ("pi_1", "cus_1", "term_1")
    assert p.created.tzinfo is not None
    assert p.created.isoformat() == "2018-08-29T08:00:00+00:00"


def test_every_bad_field_is_named():
    bad = body(currency="xyz", amount=-1, created="soon")
    del bad["metadata"]["terminal_id"]
    payments, errors = validate_payments([bad], prefix=None)
    assert payments == []
    assert fields(errors) == {"currency", "amount", "created", "metadata.terminal_id"}
    assert all(e["message"] for e in errors)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount": "1050"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 10.0}, "amount"),
        ({"created": "1535529600"}, "created"),
        ({"created": 1_535_529_600_000}, "created"),  # milliseconds
        ({"created": 0}, "created"),  # 1970: before 2000
        ({"created": 4_000_000_000}, "created"),  # 2096: after this machine's clock
        ({"currency": "xau"}, "currency"),  # gold is no card currency
        ({"currency": "xxx"}, "currency"),  # "no currency"
        ({"id": " pi_lead"}, "id"),  # whitespace is refused, not stripped
        ({"id": "pi_\u00a0nbsp"}, "id"),
        ({"id": "pi_\u200bzero_width"}, "id"),
        ({"id": "pi_\u202eoverride"}, "id"),
        ({"id": "pi_\ufffd"}, "id"),  # what undecodable bytes in a URL become
        ({"id": "pi_\ud800"}, "id"),  # a lone surrogate
        ({"customer": "cus_\u2028"}, "customer"),
    ],
)
def test_wrong_types_odd_times_currencies_and_ids_are_refused(overrides, field):
    payments, errors = validate_payments([body(**overrides)], prefix=None)
    assert payments == []
    assert fields(errors) == {field}
    if overrides.get("created") == 1_535_529_600_000:
        assert "milliseconds" in errors[0]["message"]
    assert not errors[0]["message"].startswith("Value error")


def test_batch_errors_carry_the_index_and_nothing_is_returned():
    payments, errors = validate_payments([body(), body(amount=1.5), "x"])
    assert payments == []
    assert fields(errors) == {"payments[1].amount", "payments[2]"}


def test_labels_are_validated():
    label = {
        "payment_id": "pi_1",
        "is_fraud": True,
        "source": "dispute",
        "event_time": "2018-08-29T00:00:00Z",
    }
    labels, errors = validate_labels([label])
    assert errors == [] and labels[0].is_fraud
    _, errors = validate_labels([{**label, "event_time": "later"}])
    assert fields(errors) == {"labels[0].event_time"}
    for absurd in (-1, "9999-12-31T23:59:59Z"):
        _, errors = validate_labels([{**label, "payment_created": absurd}])
        assert fields(errors) == {"labels[0].payment_created"}, absurd
        assert "2000-01-01" in errors[0]["message"]
    # The ids a label names go into Redis keys: the payment's id rules apply.
    for bad in ("t\n\x00/..", "t" * 256, "t\ud800"):
        _, errors = validate_labels([{**label, "terminal_id": bad,
                                      "customer_id": bad}])
        assert fields(errors) == {"labels[0].terminal_id", "labels[0].customer_id"}
    for loose in ("yes", 0, 1):  # never coerced to a boolean
        _, errors = validate_labels([{**label, "is_fraud": loose}])
        assert fields(errors) == {"labels[0].is_fraud"}, loose


def test_accented_ids_and_real_x_currencies_are_accepted():
    payments, errors = validate_payments(
        [body(id="pi_café", customer="cus_Ωmega", currency="xof")], prefix=None)
    assert errors == []
    assert payments[0].payment_id == "pi_café" and payments[0].currency == "xof"


def test_a_lone_surrogate_id_hashes_for_its_span():
    from fraudmesh.tracing import hash_id

    assert len(hash_id("pi_\ud800")) == 16


def _payment(pid: str, **overrides) -> Payment:
    payments, errors = validate_payments([body(id=pid, **overrides)], prefix=None)
    assert errors == []
    return payments[0]


@pytest.mark.integration
async def test_idempotency_claims_once_and_answers_the_stored_response(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    store = IdempotencyStore(client, wait_s=2.0)
    a, b = _payment("pi_a"), _payment("pi_b")
    try:
        await client.delete("fm:idem:pi_a", "fm:idem:pi_b")
        first = await store.claim([a, b])
        assert first == [None, None]
        (again,) = await store.claim([a])
        assert again.startswith(b"pending")
        assert decode_stored(again) == (fingerprint(a), None)

        async def finish_later():
            await asyncio.sleep(0.05)
            await store.store([{"payment_id": "pi_a", "decision": "allow"}],
                              [fingerprint(a)])

        waited, _ = await asyncio.gather(store.wait_for("pi_a"), finish_later())
        # Answered without the fingerprint it is stored with.
        assert waited == {"payment_id": "pi_a", "decision": "allow"}
        (stored,) = await store.claim([a])
        assert json.loads(stored)["decision"] == "allow"
        assert decode_stored(stored) == (
            fingerprint(a), {"payment_id": "pi_a", "decision": "allow"})
        assert 0 < await client.ttl("fm:idem:pi_a") <= store.ttl_s

        await store.release(["pi_b"])
        assert await store.claim([b]) == [None]
        await store.release(["pi_b"])
        assert await store.wait_for("pi_b") is None  # released: not pending
    finally:
        await client.aclose()


def test_a_fingerprint_is_what_the_id_stands_for():
    a = _payment("pi_f")
    assert fingerprint(_payment("pi_f")) == fingerprint(a)
    for change in ({"amount": 1051}, {"currency": "usd"}, {"customer": "cus_9"},
                   {"created": 1535529601}, {"metadata": {"terminal_id": "t_9"}}):
        assert fingerprint(_payment("pi_f", **change)) != fingerprint(a), change
    # A response stored before fingerprints existed is not checked.
    assert decode_stored(b'{"payment_id": "pi_f"}') == (None, {"payment_id": "pi_f"})
    assert decode_stored(b"pending") == (None, None)


def test_a_batch_repeating_an_id_for_another_payment_names_it():
    same, other = _payment("pi_r"), _payment("pi_r", amount=99)
    assert conflicting_repeats([same, _payment("pi_s"), same]) == []
    assert conflicting_repeats([same, _payment("pi_s"), other]) == [2]


@pytest.mark.integration
async def test_concurrent_claims_of_one_id_have_one_winner(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    store = IdempotencyStore(client)
    race = _payment("pi_race")
    try:
        await client.delete("fm:idem:pi_race")
        results = await asyncio.gather(*(store.claim([race]) for _ in range(20)))
        assert sum(r == [None] for r in results) == 1
    finally:
        await client.aclose()


# ------------------------------------------------------------------ waves


async def _turns(n: int = 5) -> None:
    """Let the event loop run what is ready (a few turns, no time passing)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_lone_request_goes_at_once_and_queued_ones_share_a_wave():
    async def scenario():
        release = asyncio.Event()
        waves: list[list[str]] = []

        async def run(items):
            waves.append(list(items))
            if len(waves) == 1:
                await release.wait()  # the first wave holds the only slot
            return [f"done {x}" for x in items]

        w = Waves(run, slots=1)
        first = asyncio.ensure_future(w.submit("a"))
        await _turns()
        assert waves == [["a"]]  # nothing to wait for: sent at once
        queued = [asyncio.ensure_future(w.submit(x)) for x in "bcd"]
        await _turns()
        assert waves == [["a"]]  # the slot is busy: they queue
        release.set()
        got = await asyncio.gather(first, *queued)
        assert got == ["done a", "done b", "done c", "done d"]
        assert waves == [["a"], ["b", "c", "d"]]  # one wave for the queue

    asyncio.run(scenario())


def test_a_failed_wave_fails_each_of_its_requests_and_the_next_wave_runs():
    async def scenario():
        calls = 0

        async def run(items):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("features down")
            return list(items)

        w = Waves(run, slots=2)
        with pytest.raises(RuntimeError, match="features down"):
            await w.submit("a")
        assert await w.submit("b") == "b"

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_its_wave_running():
    async def scenario():
        release = asyncio.Event()
        done: list[str] = []

        async def run(items):
            await release.wait()
            done.extend(items)
            return list(items)

        w = Waves(run, slots=1)
        gone = asyncio.ensure_future(w.submit("a"))
        await _turns()
        gone.cancel()
        release.set()
        await asyncio.sleep(0.01)
        assert done == ["a"]  # scored and stored all the same
        assert await w.submit("b") == "b"

    asyncio.run(scenario())
