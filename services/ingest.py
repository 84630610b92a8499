"""Ingest: validate and normalise payments; answer a repeated payment id once.

Contracts:

- :func:`validate_payments` turns request bodies into :class:`Payment` values or a
  list of ``{"field", "message"}`` errors naming every bad field (the HTTP 422
  body). Amounts arrive in the currency's minor unit and leave in major units.
- Idempotency: the first request for a payment id claims it atomically in Redis
  (``SET NX``) and stores its response with a TTL. A later request for the same id
  answers the stored response (``duplicate: true``) and is not recorded again.
  A concurrent duplicate finds the claim still pending and waits (bounded) for the
  first request's response, so a payment is never counted twice. The claim and
  the stored response carry the payment's :func:`fingerprint`: a later request
  using the id for a different payment (customer, terminal, amount, currency or
  time) is refused with :class:`IdReused`, as Stripe refuses an idempotency key
  reused with other parameters.
- The ``Ingest`` hop calls Features.lookup with ``record=True`` (the history
  *before* each payment is read, then the new payments are appended, in the same
  call, so recording cannot leak into their own scores), then Model.score (which
  calls Policy, which calls Actuation).
- Waves: the payments of concurrent requests go down the mesh together (see
  :class:`Waves`): each hop is one call for all of them, and each payment stays
  in its own request's trace (one carrier per payment).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
import redis.asyncio as aioredis
from ray import serve
from ray.serve.handle import DeploymentHandle

from fraudmesh.errors import HistoryStoreError
from fraudmesh.replica import settle
from fraudmesh.schemas import Label, Payment, PaymentRequest
from fraudmesh.tracing import hop, setup_tracing, shutdown_tracing

logger = logging.getLogger(__name__)

_PENDING = b"pending"  # claim value prefix, followed by ":" and the fingerprint
_FINGERPRINT_KEY = "_fingerprint"  # in a stored response, removed when answered
# Under the features prefix, so `materialize` (which resets it) clears them too:
# a replay after a fresh materialize scores every payment again.
IDEMPOTENCY_PREFIX = "fm:idem:"


def _field_name(prefix: str, loc: Sequence[Any]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "body"


def pydantic_errors(exc: pydantic.ValidationError, prefix: str) -> list[dict]:
    """Pydantic's errors as ``{"field", "message"}``, field as a dotted path."""
    return [
        {"field": _field_name(prefix, e["loc"]),
         # Our validators' messages without pydantic's "Value error, " prefix.
         "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def validate_payments(
    bodies: Sequence[Any], *, prefix: str | None = "payments"
) -> tuple[list[Payment], list[dict]]:
    """Payments from request bodies, or the errors naming each bad field.

    ``prefix`` names the list in field paths (``payments[3].amount``); ``None``
    for a single payment (``amount``). Either every payment is valid, or none
    is returned.
    """
    payments, errors = [], []
    for i, body in enumerate(bodies):
        where = "" if prefix is None else f"{prefix}[{i}]"
        if not isinstance(body, Mapping):
            errors.append({"field": where or "body", "message": "must be an object"})
            continue
        try:
            payments.append(Payment.from_request(PaymentRequest.model_validate(body)))
        except pydantic.ValidationError as exc:
            errors.extend(pydantic_errors(exc, where))
    return ([] if errors else payments), errors


def fingerprint(p: Payment) -> str:
    """What a payment id stands for: customer, terminal, amount, currency, time."""
    text = "|".join((p.customer_id, p.terminal_id, str(p.amount_minor),
                     p.currency, str(int(p.created.timestamp()))))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def conflicting_repeats(payments: Sequence[Payment]) -> list[int]:
    """Indices of payments whose id an earlier one of ``payments`` has, with a
    different fingerprint (a repeat of the same payment is fine)."""
    first: dict[str, str] = {}
    out = []
    for i, p in enumerate(payments):
        fp = fingerprint(p)
        if first.setdefault(p.payment_id, fp) != fp:
            out.append(i)
    return out


def decode_stored(stored: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """A claim's value as (fingerprint, response as answered again): the
    response is None while the claim is pending, the fingerprint None for a
    value stored without one."""
    if stored.startswith(_PENDING):
        return stored[len(_PENDING) + 1:].decode() or None, None
    answer = json.loads(stored)
    return answer.pop(_FINGERPRINT_KEY, None), answer


def validate_labels(bodies: Sequence[Any]) -> tuple[list[Label], list[dict]]:
    labels, errors = [], []
    for i, body in enumerate(bodies):
        try:
            labels.append(Label.model_validate(body))
        except pydantic.ValidationError as exc:
            errors.extend(pydantic_errors(exc, f"labels[{i}]"))
    return ([] if errors else labels), errors


class IdempotencyStore:
    """Payment id -> stored response, in Redis, claimed atomically.

    Hazard: between the claim and the stored response another request for the
    same id sees ``pending``; it polls (bounded by ``wait_s``) rather than
    scoring again. A claim whose owner dies expires after ``pending_ttl_s``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_s: int = 8 * 24 * 3600,
        pending_ttl_s: int = 30,
        wait_s: float = 10.0,
    ) -> None:
        self._redis = client
        self.ttl_s = ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.wait_s = wait_s

    async def claim(self, payments: Sequence[Payment]) -> list[bytes | None]:
        """Per payment: ``None`` when this call claimed its id, else the value
        stored there (a pending claim or a response)."""
        try:
            # SET NX GET (Redis 7+): sets when absent and answers the value that
            # was there, so a claim and the lookup of an earlier one are one
            # command per id.
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in payments:
                    pipe.set(
                        IDEMPOTENCY_PREFIX + p.payment_id,
                        _PENDING + b":" + fingerprint(p).encode(),
                        nx=True,
                        get=True,
                        ex=self.pending_ttl_s,
                    )
                return await pipe.execute()
        except aioredis.RedisError as exc:
            raise HistoryStoreError(
                f"idempotency claim in Redis failed ({exc}); is Redis up?"
            ) from exc

    async def store(self, responses: Sequence[Mapping[str, Any]],
                    fingerprints: Sequence[str]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r, fp in zip(responses, fingerprints, strict=True):
                    pipe.set(
                        IDEMPOTENCY_PREFIX + r["payment_id"],
                        json.dumps({**r, _FINGERPRINT_KEY: fp},
                                   separators=(",", ":")),
                        ex=self.ttl_s,
                    )
                await pipe.execute()
        except aioredis.RedisError as exc:
            raise HistoryStoreError(
                f"storing responses in Redis failed ({exc}); is Redis up?"
            ) from exc

    async def release(self, ids: Sequence[str]) -> None:
        """Drop claims of payments that failed, so a retry scores them."""
        if ids:
            await self._redis.delete(*(IDEMPOTENCY_PREFIX + pid for pid in ids))

    async def wait_for(self, pid: str) -> dict[str, Any] | None:
        """The stored response of a pending claim, or None after ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        delay_s = 0.005
        while time.monotonic() < deadline:
            value = await self._redis.get(IDEMPOTENCY_PREFIX + pid)
            if value is None:
                return None  # the owner failed and released it
            _, answer = decode_stored(value)
            if answer is not None:
                return answer
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.1)
        return None


class PendingDuplicate(Exception):
    """A repeat of a payment id still being scored elsewhere after the wait."""


class IdReused(Exception):
    """Payment ids used before for a different payment; ``args[0]``: the
    request's indices of them, ``args[1]``: the request's answers (None at
    those indices)."""


class Waves:
    """Sends the payments of concurrent requests down the mesh in waves.

    A request goes at once while fewer than ``slots`` waves are in flight (so a
    lone payment never waits); otherwise it queues, and the next wave to start
    takes every queued request. A wave makes one call per hop for all of its
    payments, so under load the handle hops, the largest cost per payment, are
    shared. (Ray's ``serve.batch`` forms a batch before it waits for a free
    slot, so with no batch wait it does not merge calls that queue behind busy
    slots; with a wait, every lone payment would pay it.)

    ``run(items)`` returns one outcome per item, or raises, which fails every
    item of the wave.
    """

    def __init__(self, run: Any, slots: int = 4) -> None:
        self._run = run
        self.slots = slots
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._busy = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queue and self._busy < self.slots:
            wave, self._queue = self._queue, []
            self._busy += 1
            task = asyncio.create_task(self._go(wave))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _go(self, wave: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in wave])
        except BaseException as exc:  # every request of the wave gets the error
            for _, future in wave:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), outcome in zip(wave, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            self._busy -= 1
            self._start()


@serve.deployment
class Ingest:
    """The Ingest hop. ``score`` answers ``{"results": [...]}``, or ``{"errors"}``
    (invalid), ``{"id_reused": [indices], "results": [...]}`` (ids used before
    for other payments; the others' answers, None at those indices)
    or ``{"pending": payment_id}`` (a repeat still being scored after the wait)."""

    def __init__(
        self,
        features: DeploymentHandle,
        model: DeploymentHandle,
        redis_url: str,
    ) -> None:
        setup_tracing("ingest")
        self._features = features
        self._model = model
        self._redis = aioredis.Redis.from_url(redis_url)
        self._idem = IdempotencyStore(self._redis)
        self._waves = Waves(self._score_wave)
        self._storing: set[asyncio.Task] = set()
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        config = dict(user_config or {})
        self._idem.ttl_s = int(config.get("idempotency_ttl_s", self._idem.ttl_s))
        self._idem.wait_s = float(config.get("duplicate_wait_s", self._idem.wait_s))
        slots = int(config.get("waves_in_flight", self._waves.slots))
        self._waves.slots = max(1, slots)

    async def score(
        self,
        bodies: list[Any],
        batch: bool = False,
        carrier: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        attributes = {"fraudmesh.batch_size": len(bodies)}
        with hop("ingest.score", carrier, attributes) as h:
            payments, errors = validate_payments(
                bodies, prefix="payments" if batch else None
            )
            if not errors:
                errors = [{"field": f"payments[{i}].id",
                           "message": "repeats an earlier payment's id with a "
                           "different customer, terminal, amount, currency or time"}
                          for i in conflicting_repeats(payments)]
            if errors:
                return {"errors": errors}
            if len(payments) == 1:
                # Webhook-borne payments reach Ingest first: name them here.
                h.tag_payment(payments[0].payment_id)
            # Refusals are answers, not exceptions: an exception leaving a
            # deployment is logged by Serve as a failed request, with its
            # traceback, and these are the client's mistakes.
            try:
                return {"results": await self._score_valid(payments, h)}
            except IdReused as exc:
                return {"id_reused": list(exc.args[0]), "results": exc.args[1]}
            except PendingDuplicate as exc:
                return {"pending": exc.args[0]}

    async def _score_valid(self, payments: list[Payment], h: Any) -> list[dict]:
        unique: dict[str, Payment] = {}
        for p in payments:
            unique.setdefault(p.payment_id, p)
        ids = list(unique)
        seen, answers = await self._waves.submit((list(unique.values()), h))
        stored = {pid: decode_stored(value)
                  for pid, value in zip(ids, seen, strict=True) if value is not None}
        reused = {pid for pid, (fp, _) in stored.items()
                  if fp not in (None, fingerprint(unique[pid]))}
        for pid, (_, earlier) in stored.items():
            if pid in reused:
                continue
            if earlier is None:  # still pending
                earlier = await self._idem.wait_for(pid)
            if earlier is None:
                raise PendingDuplicate(pid)
            answers[pid] = {**earlier, "duplicate": True}

        out: list[dict | None] = []
        first: set[str] = set()
        for p in payments:
            if p.payment_id in reused:
                out.append(None)
                continue
            answer = answers[p.payment_id]
            if p.payment_id in first:
                answer = {**answer, "duplicate": True}
            first.add(p.payment_id)
            out.append(answer)
        if reused:
            # The request's other payments were scored and kept: their answers
            # go back with the refusal, so the caller need not send them again.
            raise IdReused(
                [i for i, p in enumerate(payments) if p.payment_id in reused], out)
        return out

    async def _score_wave(
        self, items: list[tuple[list[Payment], Any]]
    ) -> list[tuple[list[bytes | None], dict[str, dict]]]:
        """Claim the payments of a wave's requests and score those claimed.

        Per request (item): its claim results (None: claimed here, else what
        was stored) and its new answers by payment id; the answers are stored
        for repeats after this returns (see _store_later). The claim and the
        feature lookup run side by side, saving a round trip: the lookup's
        history write is idempotent by payment id, so for a repeat it changes
        nothing and its features are dropped.
        """
        payments = [p for ps, _ in items for p in ps]
        owner = [k for k, (ps, _) in enumerate(items) for _ in ps]
        # One request: its carrier; several: one per payment (tracing.hops).
        carriers = [items[k][1].carrier for k in owner]

        def carrier_of(rows: list[int]) -> Any:
            return items[0][1].carrier if len(items) == 1 else [carriers[i]
                                                                 for i in rows]

        lookup = self._features.lookup.remote(
            payments, carrier=carrier_of(list(range(len(payments)))), record=True)
        try:
            seen = await self._idem.claim(payments)
        except BaseException:
            lookup.cancel()
            raise
        rows = [i for i, stored in enumerate(seen) if stored is None]
        responses: list[dict] = []
        if not rows:
            lookup.cancel()
        else:
            new = [payments[i] for i in rows]
            try:
                inputs = await lookup
                responses = await self._model.score.remote(
                    new, [inputs[i] for i in rows], carrier=carrier_of(rows))
            except BaseException:
                # Cancelled or failed: free the claims so a retry scores them.
                # Shielded so a cancellation cannot leave the ids claimed until
                # the pending TTL.
                await asyncio.shield(self._idem.release([p.payment_id for p in new]))
                raise
            for i, r in zip(rows, responses, strict=True):
                r["trace_id"] = items[owner[i]][1].trace_id
                r["duplicate"] = False
            self._store_later(responses, [fingerprint(p) for p in new])
        outcomes: list[tuple[list[bytes | None], dict[str, dict]]] = [
            ([], {}) for _ in items]
        for i, stored in enumerate(seen):
            outcomes[owner[i]][0].append(stored)
        for i, r in zip(rows, responses, strict=True):
            outcomes[owner[i]][1][r["payment_id"]] = r
        return outcomes

    def _store_later(self, responses: list[dict], fingerprints: list[str]) -> None:
        """Store the answers for repeats without holding up this answer.

        Until the store lands, a repeat finds the claim pending and waits for
        it (IdempotencyStore.wait_for). Should the store fail, the claim stays
        pending until its TTL, as it did when the store was awaited, and the
        failure is logged.
        """
        task = asyncio.create_task(self._idem.store(responses, fingerprints))
        self._storing.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task) -> None:
        self._storing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("storing answers for repeats failed: %s", task.exception())

    async def record_labels(
        self, bodies: list[Any], carrier: dict[str, str] | None = None
    ) -> dict[str, Any]:
        attributes = {"fraudmesh.batch_size": len(bodies)}
        with hop("ingest.labels", carrier, attributes) as h:
            labels, errors = validate_labels(bodies)
            if errors:
                return {"errors": errors}
            await self._features.record_labels.remote(labels, carrier=h.carrier)
            return {"accepted": len(labels)}

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except aioredis.RedisError as exc:
            raise HistoryStoreError(f"Redis does not answer ({exc})") from exc


    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
