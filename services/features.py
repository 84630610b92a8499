"""Features: Feast online lookup plus the behaviour history in Redis.

``FeatureClient`` holds the online feature logic without Ray, so tests and jobs use
it directly; the ``Features`` deployment wraps its ``lookup``, ``record_labels``
and ``record_account_change`` (same names, plus a ``carrier`` keyword for
tracing); scored payments are recorded by ``lookup(..., record=True)``.

- ``await client.lookup(payments) -> list[ModelInput]``: Feast online features and
  the behaviour history strictly *before* each payment, in input order. Reads only,
  except at a day boundary (below), where the batch's payments of the earlier day
  are recorded first (idempotent) so the new day's snapshot counts them. An
  unknown customer or terminal gets zero snapshot features and an empty history.
  Earlier payments of the same batch count as history of later ones, as offline.
- ``await client.lookup(payments, record=True)``: the same, and records the
  payments (below) in the same Redis round trip, queued after the reads.
- ``await client.record(payments)``: append each payment to its customer's
  history (atomic append-and-trim) and to the per-day aggregates; a payment id
  already recorded is skipped (``SET NX`` in the same Lua script).
- ``await client.record_labels(labels)``: fold labels into the terminal's per-day
  fraud count and its set of known frauds (payment times, for the time since its
  latest fraud); repeating a label changes nothing, a changed verdict is
  corrected.
- ``await client.record_account_change(customer_id, at, changed)``.
- Day boundaries: the first lookup of a payment of a new UTC day computes that
  day's snapshot rows from the Redis aggregates (the same functions as offline)
  and pushes them to the Feast online store in one batch, under a Redis lock so
  one replica does it, before that payment is scored. A payment of an earlier day
  arriving after that reads the newer snapshot (a bounded online drift).

All timestamps are UTC; Redis errors raise HistoryStoreError, Feast errors
FeatureStoreError, both chained to the cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from ray import serve
from redis.exceptions import NoScriptError, RedisError

from feature_repo import history as hs
from feature_repo import transforms as tf
from feature_repo.transforms import ModelInput
from fraudmesh.config import Settings, get_settings
from fraudmesh.errors import FeatureStoreError, HistoryStoreError
from fraudmesh.replica import settle
from fraudmesh.schemas import Label, Payment
from fraudmesh.tracing import (
    Carriers,
    client_span,
    hop,
    hops,
    setup_tracing,
    shutdown_tracing,
)

log = logging.getLogger("fraudmesh.features")
SNAPSHOT_LOCK_TTL_S = 120
SNAPSHOT_WAIT_S = 90.0
SNAPSHOT_POLL_S = 0.05

# KEYS: seen, history, customer day hash, terminal day hash.
# ARGV: seen value, seen ttl, event, keep, customer, terminal, amount, amount^2,
# aggregate ttl. Returns 1 when recorded, 0 for a payment id seen before.
_RECORD_PAYMENT = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('HINCRBY', KEYS[3], ARGV[5] .. ':n', 1)
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[5] .. ':s', ARGV[7])
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[5] .. ':q', ARGV[8])
redis.call('HINCRBY', KEYS[4], ARGV[6] .. ':n', 1)
redis.call('EXPIRE', KEYS[3], ARGV[9])
redis.call('EXPIRE', KEYS[4], ARGV[9])
return 1
"""
# KEYS: history. ARGV: event, keep.
_APPEND_EVENT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return 1
"""
# KEYS: label key, terminal day hash, terminal frauds set. ARGV: 1/0, terminal,
# ttl, payment id, payment unix_s, seconds of frauds kept.
# Stores the verdict and moves the fraud count by the change only, so a repeated
# label is a no-op and a reversed one is corrected; the frauds set gains or loses
# the payment the same way, and forgets frauds older than the look-back.
_RECORD_LABEL = """
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
local delta = tonumber(ARGV[1]) - before
if delta ~= 0 then redis.call('HINCRBY', KEYS[2], ARGV[2] .. ':f', delta) end
if ARGV[1] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf',
             '(' .. (tonumber(ARGV[5]) - tonumber(ARGV[6])))
  redis.call('EXPIRE', KEYS[3], ARGV[6])
else
  redis.call('ZREM', KEYS[3], ARGV[4])
end
return delta
"""
# KEYS: latest-day key. ARGV: day. Raises the latest day, never lowers it.
_RAISE_LATEST = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
# KEYS: lock. ARGV: owner. Deletes the lock only if we still own it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unix_s(at: datetime) -> int:
    """A UTC-aware datetime as whole unix seconds (floor)."""
    return int(at.timestamp() // 1)


class FeatureClient:
    """Online features for a batch of payments (see the module docstring)."""

    def __init__(self, redis_url: str, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._redis = aioredis.Redis.from_url(redis_url)
        self._record_payment = self._redis.register_script(_RECORD_PAYMENT)
        self._append_event = self._redis.register_script(_APPEND_EVENT)
        self._record_label = self._redis.register_script(_RECORD_LABEL)
        self._raise_latest = self._redis.register_script(_RAISE_LATEST)
        self._release = self._redis.register_script(_RELEASE)
        self._store = None
        self._store_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_day = -1  # latest day known to be in the online store
        self._owner = uuid.uuid4().hex

    # ----------------------------------------------------------- lifecycle

    def open_store(self):
        """Load the Feast store now (blocking, seconds); idempotent."""
        if self._store is None:
            from feature_repo.store import open_store

            self._store = open_store(self._settings)
        return self._store

    async def _feast(self):
        if self._store is None:
            async with self._store_lock:  # one load per client, not per request
                if self._store is None:
                    await asyncio.to_thread(self.open_store)
        return self._store

    async def close(self) -> None:
        await self._redis.aclose()

    # -------------------------------------------------------------- lookup

    async def lookup(self, payments: Sequence[Payment], *,
                     record: bool = False) -> list[ModelInput]:
        """Model inputs of ``payments`` in input order (history before each).

        ``record=True`` also records the payments (as :meth:`record`): the
        writes follow the history reads in the same Redis pipeline, so Redis
        runs them after the reads (they cannot leak into the payments' own
        features) and the lookup costs no extra round trip.
        """
        if not payments:
            return []
        times = np.array([unix_s(p.created) for p in payments], dtype=np.int64)
        # The Redis round trip and the Feast read side by side: gather starts
        # the history first, so its pipeline is on the wire and Redis answers
        # while the Feast read runs. A day boundary may record the batch's
        # earlier payments meanwhile; the history drops repeated payment ids,
        # so they count once either way.
        got = await asyncio.gather(self._history(payments, times, record=record),
                                   self._online_by_day(payments, times),
                                   return_exceptions=True)
        for outcome in got:
            if isinstance(outcome, BaseException):
                raise outcome
        (block, terminal_label, reset), online = got[0], got[1]
        if reset:
            # The state was reset under this replica (materialize) while the
            # Feast read ran on the old day cache: read again on the new one.
            online = await self._online_by_day(payments, times)
        amount = np.array([p.amount for p in payments], dtype=np.float64)
        snapshot = {n: online[n] for n in tf.CUSTOMER_SNAPSHOT_FEATURES
                    + tf.TERMINAL_SNAPSHOT_FEATURES}
        # Request-time features from the snapshot row, as offline (see
        # feature_repo/definitions.py for why they are not a Feast view).
        static, sequence, lengths, columns = tf.model_inputs(
            snapshot, block, times, amount, terminal_label)
        since_change = tf.hours_since_account_change(block, times)
        prior = (block.mask & (block.kind == tf.EVENT_PAYMENT)).sum(axis=1)
        return [
            ModelInput(static=static[i], sequence=sequence[i],
                       length=int(lengths[i]),
                       context=_context(columns, i, since_change[i], int(prior[i])))
            for i in range(len(payments))
        ]

    async def _history(
        self, payments: Sequence[Payment], times: np.ndarray, *, record: bool
    ) -> tuple[tf.HistoryBlock, dict[str, np.ndarray], bool]:
        """The history block, the terminal label features and whether the state
        was reset behind this replica's back; one round trip, which also
        records the payments after the reads when ``record``."""
        customers = sorted({p.customer_id for p in payments})
        terminals = sorted({p.terminal_id for p in payments})
        # Only frauds paid at least the delay before a payment of the batch and
        # within the look-back of the earliest one can matter.
        newest = int(times.max()) - tf.LABEL_DELAY_DAYS * tf.SECONDS_PER_DAY
        oldest = int(times.min()) - hs.TERMINAL_FRAUD_KEEP_S
        try:
            def build(pipe) -> None:
                for c in customers:
                    pipe.lrange(hs.history_key(c), 0, -1)
                for t in terminals:
                    pipe.zrangebyscore(hs.terminal_frauds_key(t), oldest,
                                       newest, withscores=True)
                pipe.get(hs.SNAPSHOT_LATEST_KEY)
                if record:
                    _queue_script(pipe, self._record_payment,
                                  _record_calls(payments))

            with client_span("redis.history.read",
                             {"fraudmesh.customers": len(customers),
                              "fraudmesh.recorded": record}):
                replies = await self._pipeline(build, self._record_payment)
            reads = len(customers) + len(terminals)
            raw, frauds = replies[:len(customers)], replies[len(customers):reads]
            latest = replies[reads]
        except RedisError as exc:
            raise HistoryStoreError(f"reading the history failed: {exc}") from exc
        latest_day = -1 if latest is None else int(latest)
        reset = latest_day < self._snapshot_day
        if reset:
            # The state was reset (materialize) behind this replica's back: forget
            # the cached day, so the next day boundary is built again.
            self._snapshot_day = latest_day
        own: dict[str, list[hs.Event]] = {c: [] for c in customers}
        for p, t in zip(payments, times, strict=True):  # the batch's own payments
            own[p.customer_id].append(hs.Event(int(t), p.amount, p.terminal_id,
                                               tf.EVENT_PAYMENT, p.payment_id))
        stored = {c: hs.decode_events(r, own[c])
                  for c, r in zip(customers, raw, strict=True)}
        block = tf.empty_block(len(payments))
        for i, (p, t) in enumerate(zip(payments, times, strict=True)):
            hs.fill_history(block, i, stored[p.customer_id], int(t), p.payment_id,
                            p.terminal_id)
        fraud_terminal = [t for t, got in zip(terminals, frauds, strict=True)
                          for _ in got]
        fraud_unix_s = [int(score) for got in frauds for _, score in got]
        label = tf.terminal_fraud_recency(
            np.array(fraud_terminal, dtype=str), np.array(fraud_unix_s, np.int64),
            np.array([p.terminal_id for p in payments], dtype=str), times)
        return block, label, reset

    async def _online_by_day(self, payments: Sequence[Payment],
                             times: np.ndarray) -> dict[str, np.ndarray]:
        """Online features, one Feast call per UTC day of the batch, oldest day
        first, each after that day's snapshot is in the store (so a batch
        spanning midnight reads each payment's own day)."""
        days = times // tf.SECONDS_PER_DAY
        out: dict[str, np.ndarray] = {}
        for day in np.unique(days):
            if day > self._snapshot_day and day > days.min():
                # The new day's snapshot must count this batch's payments of the
                # days before; recording is idempotent, so record() skips them.
                await self.record([p for p, d in zip(payments, days, strict=True)
                                   if d < day])
            await self.ensure_snapshot(int(day))
            rows = np.flatnonzero(days == day)
            got = await self._online_features([payments[i] for i in rows])
            for name, values in got.items():
                out.setdefault(name, np.full(len(payments), np.nan))[rows] = values
        return out

    async def _online_features(self, payments: Sequence[Payment]
                               ) -> dict[str, np.ndarray]:
        from feature_repo.definitions import online_feature_refs

        store = await self._feast()
        # Columns rather than a dict per row: Feast converts either to columns.
        rows = {"customer_id": [p.customer_id for p in payments],
                "terminal_id": [p.terminal_id for p in payments]}
        try:
            with client_span("feast.online_read", {"fraudmesh.rows": len(payments)}):
                # On the event loop, not in a thread: the read is CPU work in
                # Python (SQLite answers from a local file), so a thread would
                # only trade it for GIL hand-offs. The lookup's Redis round trip
                # is already on the wire meanwhile (see lookup()).
                got = store.get_online_features(
                    features=online_feature_refs(), entity_rows=rows).to_dict()
        except Exception as exc:  # Feast raises untyped errors; translate here
            raise FeatureStoreError(
                f"Feast online lookup failed ({type(exc).__name__}: {exc})") from exc
        return {name: np.array([np.nan if v is None else v for v in values],
                               dtype=np.float64)
                for name, values in got.items()
                if name not in ("customer_id", "terminal_id")}

    # ------------------------------------------------------------- records

    async def record(self, payments: Sequence[Payment]) -> int:
        """Record ``payments``; returns how many were new (duplicates skipped)."""
        if not payments:
            return 0
        try:
            with client_span("redis.history.append", {"fraudmesh.batch_size":
                                                     len(payments)}):
                results = await self._pipeline(
                    lambda pipe: _queue_script(pipe, self._record_payment,
                                               _record_calls(payments)),
                    self._record_payment)
        except RedisError as exc:
            raise HistoryStoreError(f"recording payments failed: {exc}") from exc
        return int(sum(int(r) for r in results))

    async def _pipeline(self, build: Callable[[Any], None], script) -> list:
        """One pipeline round trip; ``build(pipe)`` queues the commands.

        Scripts are queued by SHA (``pipe.evalsha``), without the SCRIPT EXISTS
        round trip redis-py's pipelines add before each use of a registered
        script; when the server does not know ``script`` (restarted, SCRIPT
        FLUSH) it is loaded and the pipeline run again. Every script and read
        here may run twice without harm.
        """
        for attempt in (1, 2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    build(pipe)
                    return await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(script.script)
        raise AssertionError("unreachable")

    async def record_account_change(self, customer_id: str, at: datetime,
                                    changed: list[str]) -> None:
        """An account-change event (e.g. changed=["email"]) in the history."""
        event = hs.Event(unix_s(at), 0.0, "", tf.EVENT_ACCOUNT_CHANGE,
                         hs.ACCOUNT_CHANGE_ID + ":" + ",".join(sorted(changed)))
        try:
            with client_span("redis.history.append"):
                await self._append_event(keys=[hs.history_key(customer_id)],
                                         args=[hs.encode_event(event),
                                               hs.HISTORY_KEEP])
        except RedisError as exc:
            raise HistoryStoreError(f"recording an account change failed: {exc}"
                                    ) from exc

    async def record_labels(self, labels: Sequence[Label]) -> int:
        """Fold labels into terminal fraud counts; returns how many changed one.

        The terminal and day come from the label, else from the recorded payment;
        a label of a payment never recorded and without them is skipped (WARNING).
        """
        if not labels:
            return 0
        try:
            where = await self._label_targets(labels)
            calls = []
            for label, target in zip(labels, where, strict=True):
                if target is None:
                    continue
                terminal, paid_s = target
                day = paid_s // tf.SECONDS_PER_DAY
                calls.append((
                    [hs.label_key(label.payment_id), hs.terminal_day_key(day),
                     hs.terminal_frauds_key(terminal)],
                    [int(label.is_fraud), terminal, hs.SEEN_TTL_S,
                     label.payment_id, paid_s, hs.TERMINAL_FRAUD_KEEP_S]))
            with client_span("redis.labels.fold", {"fraudmesh.batch_size":
                                                  len(labels)}):
                results = await self._pipeline(
                    lambda pipe: _queue_script(pipe, self._record_label, calls),
                    self._record_label)
        except RedisError as exc:
            raise HistoryStoreError(f"recording labels failed: {exc}") from exc
        skipped = sum(t is None for t in where)
        if skipped:
            log.warning("%d labels skipped: payment unknown and no terminal/time "
                        "in the label", skipped)
        return sum(1 for r in results if int(r) != 0)

    async def _label_targets(self, labels: Sequence[Label]):
        missing = [lb.payment_id for lb in labels
                   if lb.terminal_id is None or lb.payment_created is None]
        seen = {}
        if missing:
            values = await self._redis.mget([hs.seen_key(p) for p in missing])
            seen = {p: hs.decode_seen(v) for p, v in zip(missing, values,
                                                         strict=True) if v}
        out = []
        for lb in labels:
            if lb.terminal_id is not None and lb.payment_created is not None:
                out.append((lb.terminal_id, unix_s(lb.payment_created)))
            else:
                out.append(seen.get(lb.payment_id))
        return out

    # ------------------------------------------------------------ snapshots

    async def ensure_snapshot(self, day: int) -> None:
        """Make sure the snapshot rows of ``day`` (or a later day) are online.

        One replica builds them under ``fm:snap:lock:{day}``; the others wait for
        ``fm:snap:latest`` to reach the day (at most SNAPSHOT_WAIT_S, then
        FeatureStoreError).
        """
        if day <= self._snapshot_day:
            return
        # One coroutine per process checks and builds; the others wait here
        # rather than all polling Redis.
        async with self._snapshot_lock:
            deadline = time.monotonic() + SNAPSHOT_WAIT_S
            while day > self._snapshot_day:
                latest = await self._latest_day()
                if latest >= day:
                    self._snapshot_day = latest
                    break
                if await self._try_build(day):
                    self._snapshot_day = day
                    break
                if time.monotonic() > deadline:
                    raise FeatureStoreError(
                        f"snapshot of day {day} not ready after {SNAPSHOT_WAIT_S}s; "
                        "is another replica stuck building it?")
                await asyncio.sleep(SNAPSHOT_POLL_S)

    async def _latest_day(self) -> int:
        try:
            value = await self._redis.get(hs.SNAPSHOT_LATEST_KEY)
        except RedisError as exc:
            raise HistoryStoreError(f"reading the snapshot day failed: {exc}"
                                    ) from exc
        return -1 if value is None else int(value)

    async def _try_build(self, day: int) -> bool:
        lock = hs.snapshot_lock_key(day)
        try:
            if not await self._redis.set(lock, self._owner, nx=True,
                                         ex=SNAPSHOT_LOCK_TTL_S):
                return False
            try:
                await self.push_snapshot(day)
                await self._raise_latest(keys=[hs.SNAPSHOT_LATEST_KEY], args=[day])
            finally:
                await self._release(keys=[lock], args=[self._owner])
        except RedisError as exc:
            raise HistoryStoreError(f"building the snapshot of day {day} failed: "
                                    f"{exc}") from exc
        return True

    async def push_snapshot(self, day: int) -> tuple[int, int]:
        """Compute ``day``'s snapshot rows from Redis and push them (one batch per
        view). Returns (customer rows, terminal rows). No lock: see
        ``ensure_snapshot``."""
        from feature_repo import snapshots

        cust_days = range(day - tf.CUSTOMER_LOOKBACK_DAYS, day)
        term_days = range(day - tf.TERMINAL_LOOKBACK_DAYS, day)
        with client_span("redis.aggregates.read"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for d in cust_days:
                    pipe.hgetall(hs.customer_day_key(d))
                for d in term_days:
                    pipe.hgetall(hs.terminal_day_key(d))
                raw = await pipe.execute()
        cust = hs.aggregates_from_hashes(raw[:len(cust_days)], cust_days[0],
                                         ("n", "s", "q"))
        term = hs.aggregates_from_hashes(raw[len(cust_days):], term_days[0],
                                         ("n", "f"))
        customers = snapshots.customer_rows(cust, day)
        terminals = snapshots.terminal_rows(term, day)
        await self._push(customers, terminals)
        log.info("snapshot of day %d pushed: %d customers, %d terminals", day,
                 len(customers), len(terminals))
        return len(customers), len(terminals)

    async def mark_snapshot_day(self, day: int) -> None:
        """Record ``day`` as the latest day in the online store (materialize)."""
        try:
            await self._redis.set(hs.SNAPSHOT_LATEST_KEY, day)
        except RedisError as exc:
            raise HistoryStoreError(f"recording the snapshot day failed: {exc}"
                                    ) from exc
        self._snapshot_day = day

    async def _push(self, customers, terminals) -> None:
        from feast.data_source import PushMode

        from feature_repo.definitions import CUSTOMER_PUSH, TERMINAL_PUSH

        store = await self._feast()

        def push() -> None:
            for name, frame in ((CUSTOMER_PUSH, customers), (TERMINAL_PUSH,
                                                             terminals)):
                if len(frame):
                    store.push(name, frame, to=PushMode.ONLINE)

        try:
            with client_span("feast.push"):
                await asyncio.to_thread(push)
        except Exception as exc:  # Feast raises untyped errors; translate here
            raise FeatureStoreError(
                f"pushing snapshot rows failed ({type(exc).__name__}: {exc})"
            ) from exc


def _queue_script(pipe, script, calls: Sequence[tuple[list, list]]) -> None:
    """Queue ``script`` by SHA once per ``(keys, args)`` (see ``_pipeline``)."""
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)


def _record_calls(payments: Sequence[Payment]) -> list[tuple[list, list]]:
    """The record-payment script's ``(keys, args)`` for each payment."""
    return [(_payment_keys(p), _payment_args(p)) for p in payments]


def _payment_keys(p: Payment) -> list[str]:
    day = unix_s(p.created) // tf.SECONDS_PER_DAY
    return [hs.seen_key(p.payment_id), hs.history_key(p.customer_id),
            hs.customer_day_key(day), hs.terminal_day_key(day)]


def _payment_args(p: Payment) -> list:
    t = unix_s(p.created)
    amount = float(p.amount)
    event = hs.Event(t, amount, p.terminal_id, tf.EVENT_PAYMENT, p.payment_id)
    return [hs.seen_value(p.customer_id, p.terminal_id, t),
            hs.SEEN_TTL_S, hs.encode_event(event), hs.HISTORY_KEEP, p.customer_id,
            p.terminal_id, repr(amount), repr(amount * amount), hs.AGGREGATE_TTL_S]


def _context(columns: dict[str, np.ndarray], i: int,
             hours_since_change: float | None,
             prior_payments: int) -> dict[str, float | bool | None]:
    known = columns["customer_count_30d"][i] > 0
    return {
        # Known to the daily snapshot or to the behaviour history: a customer
        # new to both is paying here for the first time (Policy's rule 4).
        "first_payment": not known and prior_payments == 0,
        "customer_mean_amount_30d":
            float(columns["customer_mean_amount_30d"][i]) if known else None,
        "amount_over_usual":
            float(columns["amount_over_usual"][i]) if known else None,
        "hours_since_account_change": hours_since_change,
        "terminal_fraud_ratio_30d": float(columns["terminal_fraud_ratio_30d"][i]),
    }


@serve.deployment
class Features:
    """Ray Serve deployment around FeatureClient; loads Feast once per replica."""

    def __init__(self, redis_url: str, settings: Settings | None = None) -> None:
        setup_tracing("features")
        self._client = FeatureClient(redis_url, settings)
        self._client.open_store()  # seconds; the replica is ready only after it
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    async def lookup(self, payments: list[Payment], carrier: Carriers = None, *,
                     record: bool = False) -> list[ModelInput]:
        """Model inputs; ``record=True`` also records the payments (one hop).
        ``carrier``: one, or one per payment (see ``fraudmesh.tracing.hops``)."""
        with hops("features.lookup", carrier,
                  {"fraudmesh.batch_size": len(payments)}):
            return await self._client.lookup(payments, record=record)

    async def record_labels(self, labels: list[Label],
                            carrier: dict[str, str] | None = None) -> int:
        with hop("features.record_labels", carrier,
                 {"fraudmesh.batch_size": len(labels)}):
            return await self._client.record_labels(labels)

    async def record_account_change(self, customer_id: str, at: datetime,
                                    changed: list[str],
                                    carrier: dict[str, str] | None = None) -> None:
        with hop("features.record_account_change", carrier):
            await self._client.record_account_change(customer_id, at, changed)


    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
