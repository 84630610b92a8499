"""Webhooks: Stripe's signed events in, acknowledged fast, processed after.

``POST /v1/webhooks/stripe`` (the ingress) hands the raw body bytes and the
``Stripe-Signature`` header to :meth:`Webhooks.receive`, which answers at once:

1. :func:`verify` checks the signature with the Stripe SDK on the raw bytes (never
   a re-serialised body), 300 s tolerance, any of the configured secrets
   (``STRIPE_WEBHOOK_SECRET``, comma-separated during a rotation) against any
   ``v1`` signature of the header. Failure: 400, nothing stored.
2. An event type fraudmesh does not use: 200, logged once per type at INFO.
3. :meth:`EventQueue.enqueue` deduplicates by event id (``SET NX EX``, 4 days:
   Stripe retries for up to 3) and appends the event to a Redis stream in one
   atomic script, so an accepted event is never lost and never queued twice.
   Redis down: 503, so Stripe delivers again later.

A consumer task per replica reads the stream in a consumer group
(``XREADGROUP``), processes each event (:class:`EventProcessor`) and only then
acknowledges it (``XACK``). Entries a dead replica had read but not acknowledged
are claimed by a live one after ``claim_idle_s`` (``XAUTOCLAIM``). An event that
keeps failing goes to a dead-letter stream after ``max_deliveries``.

Processing is ordered per object: each message carries a
:class:`fraudmesh.stripe_events.Version` and state is written only when the event
is newer than what is stored (an atomic compare-and-set), so an older event never
overwrites newer state. Emails, phone numbers and addresses are kept only as
digests; card numbers and IPs never reach this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
import stripe
from ray import serve
from ray.serve.handle import DeploymentHandle

from fraudmesh.config import Settings, get_settings
from fraudmesh.errors import (
    ConfigError,
    FraudmeshError,
    HistoryStoreError,
    WebhookError,
)
from fraudmesh.replica import settle
from fraudmesh.schemas import Label, LabelSource, Payment, PaymentRequest
from fraudmesh.stripe_events import (
    HANDLED_TYPES,
    AccountChange,
    CustomerProfile,
    FraudLabel,
    Message,
    PaymentOutcome,
    RadarSignal,
    ScorePayment,
    StripeEvent,
    Version,
    diff_profile,
    map_event,
    parse_event,
)
from fraudmesh.tracing import hash_id, hop, setup_tracing, shutdown_tracing

log = logging.getLogger("fraudmesh.webhooks")

TOLERANCE_S = 300
DEDUP_TTL_S = 4 * 24 * 3600  # Stripe retries for up to 3 days
STATE_TTL_S = 90 * 24 * 3600

PREFIX = "fraudmesh:stripe:"
STREAM = PREFIX + "events"
DEAD_STREAM = PREFIX + "events:dead"
DEAD_MAXLEN = 100_000  # the newest dead letters are kept for inspection
GROUP = "fraudmesh-webhooks"


def seen_key(event_id: str) -> str:
    return f"{PREFIX}seen:{event_id}"


def version_key(key: str) -> str:
    return f"{PREFIX}version:{key}"


def payment_key(payment_id: str) -> str:
    return f"{PREFIX}payment:{payment_id}"


def charge_key(charge_id: str) -> str:
    return f"{PREFIX}charge:{charge_id}"


def profile_key(customer_id: str) -> str:
    return f"{PREFIX}profile:{customer_id}"


# -- verification ----------------------------------------------------------------


def verify(body: bytes, header: str | None, secrets: list[str]) -> None:
    """Raise WebhookError unless ``header`` signs ``body`` with one of ``secrets``.

    Stripe's scheme (checked by the SDK): ``t=<unix>,v1=<hex>[,v1=<hex>...]``,
    HMAC-SHA256 of ``"<t>.<raw body>"``; at most 300 s old.
    """
    if not secrets:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET", "not set; webhooks cannot be verified"
        )
    if not header:
        raise WebhookError("header 'Stripe-Signature': missing")
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE_S)
            return
        except stripe.SignatureVerificationError as exc:
            # A signature that matches but is too old: stale, whatever the secret.
            stale = stale or "tolerance" in str(exc)
        except UnicodeDecodeError as exc:
            raise WebhookError("body: not UTF-8 text") from exc
    if stale:
        raise WebhookError(
            f"header 'Stripe-Signature': timestamp older than {TOLERANCE_S} s; "
            "the event was replayed or the clocks disagree"
        )
    raise WebhookError(
        "header 'Stripe-Signature': no v1 signature matches the body with the "
        "configured STRIPE_WEBHOOK_SECRET"
    )


def peek(body: bytes) -> tuple[str, str]:
    """The event id and type of a verified body (full parsing comes later)."""
    event = parse_event(body)
    return event.id, event.type


# -- the durable queue --------------------------------------------------------------

_ENQUEUE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'type', ARGV[3],
                    'body', ARGV[4], 'arrived', ARGV[5])
end
return false
"""

_CAS_VERSION = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local c, r, e = string.match(cur, '^(%d+):(%d+):(.*)$')
  if e ~= ARGV[3] then
    local ic = tonumber(ARGV[1])
    local ir = tonumber(ARGV[2])
    c = tonumber(c)
    r = tonumber(r)
    if ic < c or (ic == c and ir <= r) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3],
           'EX', ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    event_id: str
    event_type: str
    body: bytes
    arrived_s: float
    deliveries: int = 1


class EventQueue:
    """Verified events in a Redis stream, consumed by a group with acks."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        claim_idle_s: float = 30.0,
        max_deliveries: int = 5,
    ) -> None:
        self._redis = client
        self.stream = stream
        self.group = group
        self.claim_idle_s = claim_idle_s
        self.max_deliveries = max_deliveries
        self._enqueue = client.register_script(_ENQUEUE)
        self._group_ready = False

    async def enqueue(self, event_id: str, event_type: str, body: bytes) -> bool:
        """Queue an event once; False when its id was queued before (a duplicate)."""
        try:
            added = await self._enqueue(
                keys=[seen_key(event_id), self.stream],
                args=[event_id, DEDUP_TTL_S, event_type, body, repr(time.time())],
            )
        except aioredis.RedisError as exc:
            raise HistoryStoreError(
                f"queueing webhook {event_id} in Redis failed ({exc}); Stripe will "
                "deliver it again"
            ) from exc
        return added is not None

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(
                self.stream, self.group, id="0", mkstream=True
            )
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(
        self, consumer: str, *, count: int = 32, block_ms: int = 1000
    ) -> list[Entry]:
        """Stale entries of dead consumers first, then new ones (blocking)."""
        await self.ensure_group()
        try:
            return await self._read(consumer, count, block_ms)
        except aioredis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream or group vanished (Redis flushed or restored):
                # recreate it on the next read.
                self._group_ready = False
            raise

    async def _read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        claimed = await self._redis.xautoclaim(
            self.stream,
            self.group,
            consumer,
            min_idle_time=int(self.claim_idle_s * 1000),
            start_id="0-0",
            count=count,
        )
        entries = claimed[1] if claimed else []
        if entries:
            return await self._with_deliveries(entries)
        replies = await self._redis.xreadgroup(
            self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        fresh = [e for _stream, items in replies or [] for e in items]
        return [self._entry(eid, fields) for eid, fields in fresh]

    async def _with_deliveries(self, entries: list) -> list[Entry]:
        out = []
        for eid, fields in entries:
            if fields is None:  # deleted while pending
                await self._redis.xack(self.stream, self.group, eid)
                continue
            pending = await self._redis.xpending_range(
                self.stream, self.group, min=eid, max=eid, count=1
            )
            times = pending[0]["times_delivered"] if pending else 1
            out.append(self._entry(eid, fields, times))
        return out

    @staticmethod
    def _entry(eid: Any, fields: Mapping[bytes, bytes], times: int = 1) -> Entry:
        return Entry(
            entry_id=eid.decode() if isinstance(eid, bytes) else str(eid),
            event_id=fields[b"id"].decode(),
            event_type=fields[b"type"].decode(),
            body=fields[b"body"],
            arrived_s=float(fields[b"arrived"]),
            deliveries=times,
        )

    async def ack(self, entry: Entry) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry.entry_id)
            pipe.xdel(self.stream, entry.entry_id)
            await pipe.execute()

    async def dead_letter(self, entry: Entry, error: str) -> None:
        """Move an event that cannot be processed aside, with the reason."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                DEAD_STREAM,
                maxlen=DEAD_MAXLEN,
                approximate=True,
                fields={
                    "id": entry.event_id,
                    "type": entry.event_type,
                    "body": entry.body,
                    "error": error[:500],
                },
            )
            pipe.xack(self.stream, self.group, entry.entry_id)
            pipe.xdel(self.stream, entry.entry_id)
            await pipe.execute()

    async def pending(self) -> int:
        await self.ensure_group()
        info = await self._redis.xpending(self.stream, self.group)
        return int(info["pending"])


# -- state -------------------------------------------------------------------------


class StateStore:
    """Per-object versions and the little state webhooks keep, in Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._cas = client.register_script(_CAS_VERSION)

    async def advance(self, version: Version) -> bool:
        """Record ``version`` if it is newer than the stored one (atomic)."""
        applied = await self._cas(
            keys=[version_key(version.key)],
            args=[version.created_s, version.rank, version.event_id, STATE_TTL_S],
        )
        return bool(applied)

    async def payment(self, payment_id: str) -> dict[str, str]:
        raw = await self._redis.hgetall(payment_key(payment_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def claim_once(self, payment_id: str, what: str) -> bool:
        """True for the first caller to claim ``what`` on the payment, once."""
        return bool(
            await self._redis.hsetnx(payment_key(payment_id), f"claim:{what}", "1")
        )

    async def update_payment(self, payment_id: str, values: Mapping[str, Any]) -> None:
        clean = {k: _text(v) for k, v in values.items() if v is not None}
        if not clean:
            return
        key = payment_key(payment_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=clean)
            pipe.expire(key, STATE_TTL_S)
            await pipe.execute()

    async def link_charge(self, charge_id: str | None, payment_id: str | None) -> None:
        if charge_id and payment_id:
            await self._redis.set(charge_key(charge_id), payment_id, ex=STATE_TTL_S)

    async def payment_of_charge(self, charge_id: str | None) -> str | None:
        if not charge_id:
            return None
        value = await self._redis.get(charge_key(charge_id))
        return value.decode() if value else None

    async def swap_profile(
        self, customer_id: str, digests: Mapping[str, str | None]
    ) -> dict[str, str | None] | None:
        """Store the customer's digests; the earlier ones, or None when new."""
        key = profile_key(customer_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.set(key, json.dumps(dict(digests)), ex=STATE_TTL_S)
            old, _ = await pipe.execute()
        return json.loads(old) if old else None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


# -- processing -------------------------------------------------------------------


class Graph(Protocol):
    """What processing needs from the mesh (the deployment wires handles)."""

    async def score(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def redecide(
        self,
        payment: Payment,
        score: float,
        model_version: str,
        radar: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    async def record_labels(self, labels: list[Label]) -> None: ...

    async def record_account_change(
        self, customer_id: str, at: datetime, changed: list[str]
    ) -> None: ...

    async def on_label(
        self, payment_id: str, is_fraud: bool, refundable: bool
    ) -> dict[str, Any]: ...

    async def resolve_review(
        self, payment_id: str, approve: bool
    ) -> dict[str, Any]: ...


class EventProcessor:
    """Applies one verified event's messages, newest state wins."""

    def __init__(self, state: StateStore, graph: Graph) -> None:
        self.state = state
        self.graph = graph

    async def process(self, entry: Entry) -> list[str]:
        """Apply an event; what was done, in words (for logs and tests)."""
        event = parse_event(entry.body)
        arrival = datetime.fromtimestamp(entry.arrived_s, tz=UTC)
        done: list[str] = []
        for message in map_event(event, arrival_time=arrival):
            done.append(await self._apply(message, event, entry.arrived_s))
        return done

    async def _apply(
        self, message: Message, event: StripeEvent, arrived_s: float = 0.0
    ) -> str:
        if isinstance(message, ScorePayment):
            return await self._score(message, arrived_s)
        if isinstance(message, PaymentOutcome):
            return await self._outcome(message)
        if isinstance(message, RadarSignal):
            return await self._radar(message)
        if isinstance(message, FraudLabel):
            return await self._label(message)
        if isinstance(message, CustomerProfile):
            return await self._profile(message, event)
        if isinstance(message, AccountChange):
            await self.graph.record_account_change(
                message.customer_id, message.at, list(message.changed)
            )
            return f"account change {','.join(message.changed)}"
        raise TypeError(f"unhandled message {type(message).__name__}")

    async def _score(self, msg: ScorePayment, arrived_s: float = 0.0) -> str:
        pid = msg.request.id
        body = msg.request.model_dump(mode="json")
        started_s = time.time()
        if await self.state.advance(msg.version) and msg.status:
            await self.state.update_payment(pid, {"status": msg.status})
        answer = await self.graph.score(body)
        timings = {
            # Where the time goes on the asynchronous path (seconds, ms).
            "queued_at": repr(arrived_s) if arrived_s else None,
            "processing_started_at": repr(started_s),
            "score_ms": round((time.time() - started_s) * 1000, 1),
        }
        await self.state.update_payment(
            pid, {**_decision_fields(answer, request=body), **timings}
        )
        stored = await self.state.payment(pid)
        if "radar_risk_score" in stored or "radar_risk_level" in stored:
            return await self._redecide(pid, stored)
        return f"scored {answer.get('decision')}"

    async def _outcome(self, msg: PaymentOutcome) -> str:
        await self.state.link_charge(msg.charge_id, msg.payment_id)
        if not await self.state.advance(msg.version):
            return f"stale {msg.outcome} ignored"
        await self.state.update_payment(
            msg.payment_id,
            {
                "status": msg.outcome,
                "outcome_at": msg.at.isoformat(),
                "failure_code": msg.failure_code,
                "cancellation_reason": msg.cancellation_reason,
            },
        )
        return f"outcome {msg.outcome}"

    async def _radar(self, msg: RadarSignal) -> str:
        pid = msg.payment_id or await self.state.payment_of_charge(msg.charge_id)
        await self.state.link_charge(msg.charge_id, pid)
        if pid is None:
            return "radar signal for an unknown payment ignored"
        if not await self.state.advance(msg.version):
            return "stale radar signal ignored"
        await self.state.update_payment(
            pid,
            {"radar_risk_score": msg.risk_score, "radar_risk_level": msg.risk_level},
        )
        stored = await self.state.payment(pid)
        if "request" not in stored:
            return "radar signal kept until the payment is scored"
        return await self._redecide(pid, stored)

    async def _redecide(self, pid: str, stored: Mapping[str, str]) -> str:
        request = PaymentRequest.model_validate(json.loads(stored["request"]))
        radar = {
            "radar_risk_score": _opt_int(stored.get("radar_risk_score")),
            "radar_risk_level": stored.get("radar_risk_level"),
        }
        # The payment's scoring and its Radar signal run in separate lanes; when
        # they finish together both see the other's write and would re-decide.
        # One re-decision per Radar reading: the first to claim it does it.
        reading = f"redecide:{radar['radar_risk_score']}:{radar['radar_risk_level']}"
        if not await self.state.claim_once(pid, reading):
            return "re-decision with this Radar reading already made"
        answer = await self.graph.redecide(
            Payment.from_request(request),
            float(stored["score"]),
            stored.get("model_version", ""),
            radar,
        )
        await self.state.update_payment(
            pid, {**_decision_fields(answer), "radar_redecided": "1"}
        )
        return f"re-decided with Radar: {answer.get('decision')}"

    async def _label(self, msg: FraudLabel) -> str:
        pid = msg.payment_id or await self.state.payment_of_charge(msg.charge_id)
        if pid is None:
            raise WebhookError(
                f"{msg.source.value} label for charge {msg.charge_id}: the payment "
                "is unknown"
            )
        await self.state.link_charge(msg.charge_id, pid)
        stored = await self.state.payment(pid)
        label = _enrich(msg.to_label(pid), stored)
        await self.graph.record_labels([label])
        await self.state.update_payment(
            pid,
            {
                "label": "fraud" if msg.is_fraud else "genuine",
                "label_source": msg.source.value,
            },
        )
        if msg.release_hold and stored.get("decision") == "review":
            action = await self.graph.resolve_review(pid, approve=True)
            await self.state.update_payment(pid, {"review_action": action})
        elif msg.is_fraud:
            action = await self.graph.on_label(pid, True, msg.refundable)
            await self.state.update_payment(pid, {"label_action": action})
        return f"label {msg.source.value} fraud={msg.is_fraud}"

    async def _profile(self, msg: CustomerProfile, event: StripeEvent) -> str:
        if not await self.state.advance(msg.version):
            return "stale customer profile ignored"
        old = await self.state.swap_profile(msg.customer_id, msg.digests)
        if event.previous_attributes is not None:
            return "profile stored"  # changes come from previous_attributes
        changed = diff_profile(old, msg.digests)
        if changed:
            await self.graph.record_account_change(
                msg.customer_id, event.created, changed
            )
            return f"account change {','.join(changed)}"
        return "profile stored"


def _decision_fields(
    answer: Mapping[str, Any], request: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    action = answer.get("action") or {}
    return {
        "request": request,
        "score": answer.get("score"),
        "decision": action.get("fallback_decision") or answer.get("decision"),
        "reasons": answer.get("reasons"),
        "model_version": answer.get("model_version"),
        "actuation_mode": answer.get("actuation_mode"),
        "action": action or None,
        "decided_at": repr(time.time()),
    }


def _enrich(label: Label, stored: Mapping[str, str]) -> Label:
    if "request" not in stored:
        return label
    request = json.loads(stored["request"])
    return label.model_copy(
        update={
            "customer_id": label.customer_id or request.get("customer"),
            "terminal_id": label.terminal_id
            or (request.get("metadata") or {}).get("terminal_id"),
            "payment_created": label.payment_created
            or datetime.fromtimestamp(int(request["created"]), tz=UTC),
        }
    )


def _opt_int(value: str | None) -> int | None:
    if value in (None, "", "null"):
        return None
    return int(float(value))


# -- the consumer loop -------------------------------------------------------------


class Consumer:
    """Reads, processes and acknowledges events until stopped.

    Lifecycle: ``start()`` creates the task (a reference is kept, so it is not
    garbage-collected); ``stop()`` cancels it and waits. A failing event is left
    unacknowledged for a retry (after ``claim_idle_s``) and dead-lettered after
    ``max_deliveries``; the loop itself never dies of one event.
    """

    def __init__(
        self,
        queue: EventQueue,
        processor: EventProcessor,
        name: str | None = None,
        *,
        block_ms: int = 1000,
        max_in_flight: int = 64,
    ) -> None:
        self.queue = queue
        self.processor = processor
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.block_ms = block_ms
        self.max_in_flight = max_in_flight
        self.processed = 0
        self._task: asyncio.Task | None = None
        # Hazard: two events about one object (created, then succeeded) must not
        # race, so each object has a lane: an entry starts when the previous one
        # of its lane is done. Different objects run concurrently. The version
        # compare-and-set still orders events across replicas.
        self._lanes: dict[str, asyncio.Task] = {}
        self._in_flight: dict[str, asyncio.Task] = {}  # entry id -> task

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancel the reader and the entries in flight (they stay pending)."""
        task, self._task = self._task, None
        tasks = [t for t in (task, *self._in_flight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self) -> None:
        delay_s = 0.5
        while True:
            free = self.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(
                    list(self._in_flight.values()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                continue
            try:
                entries = await self.queue.read(
                    self.name, count=free, block_ms=self.block_ms
                )
                delay_s = 0.5
            except aioredis.RedisError as exc:
                log.warning(
                    "webhook queue unreachable (%s); retrying in %.1f s", exc, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
                continue
            for entry in entries:
                self._dispatch(entry)

    def _dispatch(self, entry: Entry) -> None:
        if entry.entry_id in self._in_flight:
            return  # our own entry, reclaimed while still being processed
        lane = object_of(entry.body)
        previous = self._lanes.get(lane)
        task = asyncio.get_running_loop().create_task(self._after(previous, entry))
        self._lanes[lane] = task
        self._in_flight[entry.entry_id] = task

        def done(t: asyncio.Task, lane: str = lane, eid: str = entry.entry_id) -> None:
            self._in_flight.pop(eid, None)
            if self._lanes.get(lane) is t:
                del self._lanes[lane]

        task.add_done_callback(done)

    async def _after(self, previous: asyncio.Task | None, entry: Entry) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own business
        try:
            await self.handle(entry)
        except Exception:
            # Not acknowledged: the entry is delivered again after claim_idle_s.
            log.warning(
                "webhook %s failed unexpectedly; it stays pending",
                entry.event_id,
                exc_info=True,
            )

    async def handle_batch(self, entries: list[Entry]) -> None:
        """Process entries as the loop does (lanes per object) and wait for them."""
        for entry in entries:
            self._dispatch(entry)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()))

    async def handle(self, entry: Entry) -> None:
        """Process one entry; ack on success, leave or dead-letter on failure."""
        try:
            with hop("webhooks.process", None, {"stripe.event_type": entry.event_type}):
                done = await self.processor.process(entry)
        except WebhookError as exc:
            # The event itself is unusable: retrying cannot help.
            log.warning(
                "webhook %s (%s) cannot be used: %s",
                entry.event_id,
                entry.event_type,
                exc,
            )
            await self.queue.dead_letter(entry, str(exc))
            return
        except (FraudmeshError, aioredis.RedisError, OSError, RuntimeError) as exc:
            if entry.deliveries >= self.queue.max_deliveries:
                log.warning(
                    "webhook %s failed %d times, dead-lettered: %s",
                    entry.event_id,
                    entry.deliveries,
                    exc,
                )
                await self.queue.dead_letter(entry, str(exc))
            else:
                log.warning(
                    "webhook %s failed (%s); it stays pending for a retry",
                    entry.event_id,
                    exc,
                )
            return
        await self.queue.ack(entry)
        self.processed += 1
        log.debug("webhook %s %s: %s", entry.event_id, entry.event_type, done)


def object_of(body: bytes) -> str:
    """The payment (or other object) an event is about, for ordering lanes."""
    try:
        obj = json.loads(body)["data"]["object"]
        meta = obj.get("metadata") or {}
        ref = (
            obj.get("payment_intent")
            or obj.get("customer")
            or meta.get("customer_id")
            or obj.get("id")
        )
        if isinstance(ref, dict):
            ref = ref.get("id")
        return str(ref)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


# -- receiving ------------------------------------------------------------------------


class Receiver:
    """Verify, filter and enqueue: the fast part that answers Stripe."""

    def __init__(self, queue: EventQueue, secrets: list[str]) -> None:
        self.queue = queue
        self.secrets = secrets
        self._logged_types: set[str] = set()

    async def receive(self, body: bytes, signature: str | None) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one delivery."""
        try:
            verify(body, signature, self.secrets)
            event_id, event_type = peek(body)
        except ConfigError as exc:
            log.warning("webhook rejected: %s", exc)
            return 503, {"error": "not_configured", "message": str(exc)}
        except WebhookError as exc:
            return 400, {
                "error": "invalid_webhook",
                "message": str(exc),
                "errors": [{"field": _field_of(str(exc)), "message": str(exc)}],
            }
        if event_type not in HANDLED_TYPES:
            if event_type not in self._logged_types:
                self._logged_types.add(event_type)
                log.info(
                    "Stripe event type %s is not used by fraudmesh; "
                    "acknowledged and ignored",
                    event_type,
                )
            return 200, {"received": True, "id": event_id, "ignored": True}
        try:
            queued = await self.queue.enqueue(event_id, event_type, body)
        except HistoryStoreError as exc:
            log.warning("webhook %s not accepted: %s", event_id, exc)
            return 503, {"error": "unavailable", "message": str(exc)}
        return 200, {"received": True, "id": event_id, "duplicate": not queued}


def _field_of(message: str) -> str:
    if message.startswith("header 'Stripe-Signature'"):
        return "Stripe-Signature"
    if message.startswith("field '"):
        return message.split("'", 2)[1]
    return "body"


# -- the deployment -------------------------------------------------------------------


class HandleGraph:
    """:class:`Graph` over the mesh's deployment handles."""

    def __init__(
        self,
        ingest: DeploymentHandle,
        features: DeploymentHandle,
        policy: DeploymentHandle,
        actuation: DeploymentHandle,
    ) -> None:
        self._ingest = ingest
        self._features = features
        self._policy = policy
        self._actuation = actuation

    @staticmethod
    def _carrier() -> dict[str, str]:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    async def score(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._ingest.score.remote([body], False, carrier=self._carrier())
        if "errors" in answer:
            raise WebhookError(f"payment rejected by Ingest: {answer['errors']}")
        if "id_reused" in answer:
            raise WebhookError("payment id used before for a different payment")
        if "pending" in answer:
            raise WebhookError("payment still being scored by an earlier request")
        return answer["results"][0]

    async def redecide(
        self,
        payment: Payment,
        score: float,
        model_version: str,
        radar: Mapping[str, Any],
    ) -> dict[str, Any]:
        carrier = self._carrier()
        [inputs] = await self._features.lookup.remote([payment], carrier=carrier)
        context = {**(getattr(inputs, "context", None) or {}), **radar}
        scored = {
            "score": score,
            "model_version": model_version,
            "contributions": [],
            "context": context,
        }
        [answer] = await self._policy.decide.remote(
            [payment], [scored], carrier=carrier
        )
        return answer

    async def record_labels(self, labels: list[Label]) -> None:
        await self._features.record_labels.remote(labels, carrier=self._carrier())

    async def record_account_change(
        self, customer_id: str, at: datetime, changed: list[str]
    ) -> None:
        await self._features.record_account_change.remote(
            customer_id, at, changed, carrier=self._carrier()
        )

    async def on_label(
        self, payment_id: str, is_fraud: bool, refundable: bool
    ) -> dict[str, Any]:
        return await self._actuation.on_label.remote(
            payment_id, is_fraud, refundable, carrier=self._carrier()
        )

    async def resolve_review(self, payment_id: str, approve: bool) -> dict[str, Any]:
        return await self._actuation.resolve_review.remote(
            payment_id, approve, carrier=self._carrier()
        )


@serve.deployment
class Webhooks:
    """``receive`` answers Stripe; a background consumer processes the events."""

    def __init__(
        self,
        ingest: DeploymentHandle,
        features: DeploymentHandle,
        policy: DeploymentHandle,
        actuation: DeploymentHandle,
        redis_url: str,
        settings: Settings | None = None,
    ) -> None:
        setup_tracing("webhooks")
        settings = settings or get_settings()
        self._redis = aioredis.Redis.from_url(redis_url)
        self._queue = EventQueue(self._redis)
        self._receiver = Receiver(self._queue, settings.webhook_secrets)
        self._graph = HandleGraph(ingest, features, policy, actuation)
        processor = EventProcessor(StateStore(self._redis), self._graph)
        self._consumer = Consumer(self._queue, processor)
        self._state = processor.state
        # Serve runs the constructor on the replica's event loop; without one
        # (e.g. a test), the consumer starts on the first call instead.
        with contextlib.suppress(RuntimeError):
            self._consumer.start()
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        config = dict(user_config or {})
        self._queue.claim_idle_s = float(
            config.get("claim_idle_s", self._queue.claim_idle_s)
        )
        self._queue.max_deliveries = int(
            config.get("max_deliveries", self._queue.max_deliveries)
        )

    async def receive(
        self, body: bytes, signature: str | None, carrier: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``{"status_code", "body"}`` for the ingress to answer Stripe with."""
        self._consumer.start()
        with hop("webhooks.receive", carrier) as h:
            status, answer = await self._receiver.receive(body, signature)
            h.span.set_attribute("http.status_code", status)
        return {"status_code": status, "body": answer}

    async def review(
        self, payment_id: str, approve: bool, carrier: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """An analyst's verdict on a held payment: label it, capture or cancel."""
        with hop(
            "webhooks.review",
            carrier,
            {"fraudmesh.payment_id_hash": hash_id(payment_id)},
        ):
            stored = await self._state.payment(payment_id)
            now = datetime.now(UTC)
            label = _enrich(
                Label(
                    payment_id=payment_id,
                    is_fraud=not approve,
                    source=LabelSource.ANALYST,
                    event_time=now,
                    arrival_time=now,
                ),
                stored,
            )
            await self._graph.record_labels([label])
            action = await self._graph.resolve_review(payment_id, approve)
            await self._state.update_payment(
                payment_id,
                {
                    "label": "genuine" if approve else "fraud",
                    "label_source": "analyst",
                    "review_action": action,
                },
            )
        return {
            "payment_id": payment_id,
            "approved": approve,
            "action": action,
            "actuation_mode": action.get("mode"),
        }

    async def payment_state(self, payment_id: str) -> dict[str, str]:
        return await self._state.payment(payment_id)

    async def check_health(self) -> None:
        self._consumer.start()  # restarts a loop that died
        try:
            await self._redis.ping()
        except aioredis.RedisError as exc:
            raise HistoryStoreError(f"Redis does not answer ({exc})") from exc

    async def __del__(self) -> None:
        await self._consumer.stop()
        shutdown_tracing()  # export the last spans
