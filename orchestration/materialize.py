"""Warm the online feature state from a data file, as of the start of a day.

``run_materialize(data, until)`` makes Redis and the Feast online store look as
if the mesh had seen every payment before ``until`` (00:00 UTC) and every label
of payments before ``until - 7 days`` (the label delay):

- the last HISTORY_KEEP payments of each customer (history lists);
- per-day customer and terminal aggregates of the 38 days before ``until``,
  fraud counts only from payments before ``until - 7 days``;
- each terminal's known frauds (payments before ``until - 7 days``, within the
  look-back of the time since its latest fraud);
- ``seen`` records of the last 8 days' payments (so later labels find their
  terminal and a replayed id is not counted twice);
- the snapshot rows of ``until`` in the Feast online store, computed from those
  Redis aggregates by the online code path itself.

It first removes every ``fm:`` key in the Redis database: it is a reset, not a
merge. Labels of payments from ``until - 7 days`` on must be sent later (at
payment time + 7 days), as a replay does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from redis.exceptions import RedisError

from feature_repo import history as hs
from feature_repo import transforms as tf
from fraudmesh.config import Settings, get_settings
from fraudmesh.dataset import day_start, default_data_path, load_transactions
from fraudmesh.errors import ConfigError, DataError, HistoryStoreError

log = logging.getLogger("fraudmesh.features.materialize")
PIPELINE_CHUNK = 5_000


@dataclass(frozen=True)
class MaterializeSummary:
    until: date
    payments: int
    customers: int
    snapshot_customers: int
    snapshot_terminals: int
    seconds: float


def run_materialize(
    data: str | Path | None,
    until: str | date,
    *,
    redis_url: str | None = None,
    settings: Settings | None = None,
    transactions: pd.DataFrame | None = None,
) -> MaterializeSummary:
    """Warm Redis and the Feast online store for scoring from ``until`` on.

    ``transactions`` (a ``load_transactions`` frame) skips reading ``data``.
    Raises DataError for a bad file or date, ConfigError without a Redis URL,
    HistoryStoreError / FeatureStoreError when Redis / Feast fail.
    """
    return asyncio.run(materialize_async(data, until, redis_url=redis_url,
                                         settings=settings,
                                         transactions=transactions))


async def materialize_async(
    data: str | Path | None,
    until: str | date,
    *,
    redis_url: str | None = None,
    settings: Settings | None = None,
    transactions: pd.DataFrame | None = None,
) -> MaterializeSummary:
    """``run_materialize`` for a caller already in an event loop.

    The Redis warm-up runs in a worker thread; the snapshot push on this loop.
    """
    started = time.monotonic()
    settings = settings or get_settings()
    url = redis_url or settings.redis_url
    if not url:
        raise ConfigError("REDIS_URL", "materialize needs a Redis URL; set REDIS_URL "
                          "or pass --redis-url")
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError("REDIS_URL", f"{_safe(url)!r} is not a Redis URL: {exc}"
                          ) from exc
    day = _parse_until(until)
    cutoff = day_start(day)
    if transactions is None:
        path = Path(data) if data is not None else default_data_path()
        tx = load_transactions(path, end=cutoff)
        if tx.empty:
            raise DataError(f"no payments before --until {day}", path=path)
    else:
        tx = transactions[transactions["tx_datetime"] < pd.Timestamp(cutoff)]
    day_number = int(cutoff.timestamp()) // tf.SECONDS_PER_DAY
    await asyncio.to_thread(_warm_redis, url, tx, day_number, cutoff)
    n_cust, n_term = await _push_snapshot(url, settings, day_number)
    summary = MaterializeSummary(day, len(tx), tx["customer_key"].nunique(),
                                 n_cust, n_term, time.monotonic() - started)
    log.info("materialized %s", summary)
    return summary


def _warm_redis(url: str, tx: pd.DataFrame, day: int, cutoff: datetime) -> None:
    client = redis.Redis.from_url(url)
    try:
        _reset(client)
        _write_history(client, tx)
        _write_aggregates(client, tx, day)
        _write_terminal_frauds(client, tx, cutoff)
        _write_seen(client, tx, cutoff)
    except RedisError as exc:
        raise HistoryStoreError(f"warming Redis at {_safe(url)} failed: {exc}"
                                ) from exc
    finally:
        client.close()


def _parse_until(until: str | date) -> date:
    if isinstance(until, datetime):
        return until.date()
    if isinstance(until, date):
        return until
    from fraudmesh.dataset import parse_day

    return parse_day(until, option="--until")


def _safe(url: str) -> str:
    """The URL without credentials, for messages."""
    return url.split("@")[-1]


def _reset(client: redis.Redis) -> None:
    batch = []
    for key in client.scan_iter(match=f"{hs.PREFIX}*", count=5_000):
        batch.append(key)
        if len(batch) >= PIPELINE_CHUNK:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def _write_history(client: redis.Redis, tx: pd.DataFrame) -> None:
    """Each customer's last HISTORY_KEEP payments, oldest first (file order)."""
    tail = tx.groupby("customer_key", sort=False).tail(hs.HISTORY_KEEP)
    unix_s = tail["tx_datetime"].astype("int64").to_numpy() // 1_000_000_000
    encoded = [
        f"{t}|{a!r}|{term}|{tf.EVENT_PAYMENT}|{pid}"
        for t, a, term, pid in zip(unix_s.tolist(), tail["tx_amount"].tolist(),
                                   tail["terminal_key"].tolist(),
                                   tail["payment_key"].tolist(), strict=True)
    ]
    frame = pd.DataFrame({"c": tail["customer_key"].to_numpy(), "e": encoded})
    pipe = client.pipeline(transaction=False)
    for i, (customer, events) in enumerate(frame.groupby("c", sort=False)["e"]):
        pipe.rpush(hs.history_key(customer), *events.tolist())
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()


def _write_aggregates(client: redis.Redis, tx: pd.DataFrame, day: int) -> None:
    """Per-day hashes of the look-back; frauds only of days before day - 7."""
    from feature_repo.snapshots import day_aggregates, unix_seconds

    first = day - tf.TERMINAL_LOOKBACK_DAYS
    days = unix_seconds(tx["tx_datetime"]) // tf.SECONDS_PER_DAY
    recent = tx.loc[days >= first].copy()
    recent_days = days[days >= first]
    known = recent_days < day - tf.LABEL_DELAY_DAYS
    recent["tx_fraud"] = np.where(known, recent["tx_fraud"].to_numpy(), 0)
    cust, term = day_aggregates(recent, first, day - first)
    pipe = client.pipeline(transaction=False)
    for col in range(day - first):
        d = first + col
        _hset_day(pipe, hs.customer_day_key(d), cust.keys,
                  {"n": cust.columns["count"][:, col], "s": cust.columns["sum"][:, col],
                   "q": cust.columns["sumsq"][:, col]})
        _hset_day(pipe, hs.terminal_day_key(d), term.keys,
                  {"n": term.columns["count"][:, col],
                   "f": term.columns["fraud"][:, col]})
        pipe.execute()
    frauds = recent.loc[known & (recent["tx_fraud"].to_numpy() == 1), "payment_key"]
    for pid in frauds.tolist():
        pipe.set(hs.label_key(pid), 1, ex=hs.SEEN_TTL_S)
    pipe.execute()


def _write_terminal_frauds(client: redis.Redis, tx: pd.DataFrame,
                           cutoff: datetime) -> None:
    """The sorted sets of frauds whose labels are known by ``cutoff``."""
    from feature_repo.snapshots import unix_seconds

    known_before = int(cutoff.timestamp()) - tf.LABEL_DELAY_DAYS * tf.SECONDS_PER_DAY
    unix_s = unix_seconds(tx["tx_datetime"])
    keep = ((tx["tx_fraud"].to_numpy() == 1) & (unix_s < known_before)
            & (unix_s >= known_before - hs.TERMINAL_FRAUD_KEEP_S))
    frauds = pd.DataFrame({"terminal": tx["terminal_key"].to_numpy()[keep],
                           "payment": tx["payment_key"].to_numpy()[keep],
                           "unix_s": unix_s[keep]})
    pipe = client.pipeline(transaction=False)
    for i, (terminal, rows) in enumerate(frauds.groupby("terminal", sort=False)):
        key = hs.terminal_frauds_key(terminal)
        pipe.zadd(key, dict(zip(rows["payment"].tolist(), rows["unix_s"].tolist(),
                                strict=True)))
        pipe.expire(key, hs.TERMINAL_FRAUD_KEEP_S)
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()


def _hset_day(pipe, key: str, keys: np.ndarray, stats: dict[str, np.ndarray]) -> None:
    active = stats["n"] > 0
    if not active.any():
        return
    mapping = {}
    for stat, values in stats.items():
        for entity, value in zip(keys[active].tolist(), values[active].tolist(),
                                 strict=True):
            mapping[f"{entity}:{stat}"] = (str(int(value)) if stat in ("n", "f")
                                           else repr(float(value)))
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, hs.AGGREGATE_TTL_S)


def _write_seen(client: redis.Redis, tx: pd.DataFrame, cutoff: datetime) -> None:
    since = pd.Timestamp(cutoff - timedelta(days=tf.LABEL_DELAY_DAYS + 1))
    recent = tx[tx["tx_datetime"] >= since]
    unix_s = recent["tx_datetime"].astype("int64").to_numpy() // 1_000_000_000
    pipe = client.pipeline(transaction=False)
    for i, (pid, c, t, s) in enumerate(zip(
            recent["payment_key"].tolist(), recent["customer_key"].tolist(),
            recent["terminal_key"].tolist(), unix_s.tolist(), strict=True)):
        pipe.set(hs.seen_key(pid), hs.seen_value(c, t, s), ex=hs.SEEN_TTL_S)
        if i % PIPELINE_CHUNK == PIPELINE_CHUNK - 1:
            pipe.execute()
    pipe.execute()


async def _push_snapshot(url: str, settings: Settings, day: int) -> tuple[int, int]:
    from services.features import FeatureClient

    client = FeatureClient(url, settings)
    try:
        counts = await client.push_snapshot(day)
        await client.mark_snapshot_day(day)
    finally:
        await client.close()
    return counts
