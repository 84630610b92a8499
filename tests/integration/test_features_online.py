"""The online features against real Redis and a real Feast store (SQLite and
Redis online stores in tmp dirs; the SQL registry on the real PostgreSQL).

The parity test is the contract between training and serving: a payment scored
online after ``materialize`` gets the same static vector and sequence as
``build_examples`` gives it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import redis

from feature_repo import history as hs
from feature_repo import transforms as tf
from fraudmesh.config import Settings
from fraudmesh.dataset import SAMPLE_PATH, load_transactions
from fraudmesh.errors import ConfigError, DataError
from fraudmesh.schemas import Label, LabelSource, Payment
from orchestration.materialize import materialize_async
from orchestration.training_data import build_examples
from services.features import FeatureClient

pytestmark = pytest.mark.integration

DAY = datetime(2018, 8, 1, tzinfo=UTC)
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def small_tx() -> pd.DataFrame:
    """The sample's payments of every 25th customer, up to 2018-08-03."""
    tx = load_transactions(SAMPLE_PATH, end=DAY + timedelta(days=2))
    return tx[tx["customer_id"] % 25 == 0].reset_index(drop=True)


@pytest.fixture
def clean_redis(redis_url):
    """The test database emptied (history and Feast's Redis rows alike)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


def _settings(tmp_path, url, kind="sqlite", registry=None) -> Settings:
    return Settings(state_dir=tmp_path, redis_url=url, online_store=kind,
                    feast_registry=registry)


def _payments(frame: pd.DataFrame) -> list[Payment]:
    return [
        Payment(payment_id=r.payment_key, customer_id=r.customer_key,
                terminal_id=r.terminal_key, amount_minor=round(r.tx_amount * 100),
                currency="eur", amount=float(r.tx_amount),
                created=r.tx_datetime.to_pydatetime())
        for r in frame.itertuples()
    ]


def _labels(frame: pd.DataFrame) -> list[Label]:
    return [Label(payment_id=r.payment_key, is_fraud=bool(r.tx_fraud),
                  source=LabelSource.REPLAY,
                  event_time=r.tx_datetime.to_pydatetime() + timedelta(days=7))
            for r in frame.itertuples()]


async def _stream(client: FeatureClient, tx: pd.DataFrame, frame: pd.DataFrame,
                  batch: int) -> list:
    """Score and record ``frame`` in time order, labels arriving 7 days late."""
    payments = _payments(frame)
    inputs, next_label_day = [], DAY.date()
    for i in range(0, len(payments), batch):
        chunk = payments[i:i + batch]
        while next_label_day <= chunk[-1].created.date():
            # Labels of payments on day d - 7 arrive during day d - 1 at the
            # latest, so they are in before day d's first payment.
            start = pd.Timestamp(next_label_day, tz="UTC") - pd.Timedelta(days=7)
            due = tx[(tx["tx_datetime"] >= start)
                     & (tx["tx_datetime"] < start + pd.Timedelta(days=1))]
            await client.record_labels(_labels(due))
            next_label_day += timedelta(days=1)
        inputs += await client.lookup(chunk)
        await client.record(chunk)
    return inputs


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_online_inputs_equal_training_examples(store, small_tx, clean_redis,
                                                     tmp_path):
    """Train/serve parity over two days, a day boundary and late labels, on both
    online stores (the online-store contract)."""
    settings = _settings(tmp_path, clean_redis, store)
    await materialize_async(None, DAY.date(), settings=settings,
                            transactions=small_tx)
    ex = build_examples(small_tx, DAY, DAY + timedelta(days=2), state_dir=tmp_path)
    client = FeatureClient(clean_redis, settings)
    try:
        online = await _stream(client, small_tx, ex.frame, batch=8)
    finally:
        await client.close()
    static = np.stack([m.static for m in online])
    sequence = np.stack([m.sequence for m in online])
    np.testing.assert_allclose(static, ex.static, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sequence, ex.sequence, rtol=1e-5, atol=1e-5)
    assert [m.length for m in online] == ex.lengths.tolist()
    assert all("customer_mean_amount_30d" in m.context for m in online)
    # Not vacuous: some payments see a terminal fraud known for at least 7 days.
    since = ex.static[:, tf.STATIC_FEATURES.index("log_hours_since_terminal_fraud")]
    assert (since < np.log1p(tf.NO_TERMINAL_FRAUD_SECONDS / 3600) - 1e-3).any()


def _payment(pid: str, customer: str, at: datetime, amount: float = 10.0,
             terminal: str = "term_1") -> Payment:
    return Payment(payment_id=pid, customer_id=customer, terminal_id=terminal,
                   amount_minor=round(amount * 100), currency="eur", amount=amount,
                   created=at)


async def test_duplicate_payment_ids_are_not_counted_twice(clean_redis, tmp_path):
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    at = DAY + timedelta(hours=3)
    p = _payment("pi_dup", "cus_dup", at)
    try:
        assert await client.record([p]) == 1
        assert await client.record([p, p]) == 0
    finally:
        await client.close()
    r = redis.Redis.from_url(clean_redis)
    day = int(at.timestamp()) // 86_400
    assert r.llen(hs.history_key("cus_dup")) == 1
    assert r.hget(hs.customer_day_key(day), "cus_dup:n") == b"1"
    assert r.hget(hs.terminal_day_key(day), "term_1:n") == b"1"
    r.close()


async def test_lookup_with_record_reads_before_it_writes(clean_redis, tmp_path):
    """One call scores on the history before the payments, then records them."""
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    first = _payment("pi_lr1", "cus_lr", DAY + timedelta(hours=1))
    second = _payment("pi_lr2", "cus_lr", DAY + timedelta(hours=2))
    try:
        [plain] = await client.lookup([first])
        [got] = await client.lookup([first], record=True)
        assert got.length == 0  # its own write did not reach its features
        np.testing.assert_array_equal(got.static, plain.static)
        assert await client.record([first]) == 0  # already recorded
        [later] = await client.lookup([second], record=True)
        assert later.length == 1
    finally:
        await client.close()
    r = redis.Redis.from_url(clean_redis)
    assert r.llen(hs.history_key("cus_lr")) == 2
    r.close()


async def test_writes_survive_a_script_flush(clean_redis, tmp_path):
    """Scripts run by SHA; a server that forgot them (restart, SCRIPT FLUSH)
    gets them loaded again and the write goes through once."""
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    at = DAY + timedelta(hours=3)
    label = Label(payment_id="pi_sf1", is_fraud=True, source=LabelSource.DISPUTE,
                  event_time=at + timedelta(days=8), terminal_id="term_1",
                  payment_created=at)
    r = redis.Redis.from_url(clean_redis)
    try:
        r.script_flush()
        assert await client.record([_payment("pi_sf1", "cus_sf", at)]) == 1
        r.script_flush()
        assert await client.record_labels([label]) == 1
        r.script_flush()
        assert await client.record([_payment("pi_sf1", "cus_sf", at)]) == 0
        r.script_flush()  # the lookup's pipeline mixes reads and the script
        [got] = await client.lookup([_payment("pi_sf2", "cus_sf", at
                                              + timedelta(hours=1))], record=True)
        assert got.length == 1
    finally:
        await client.close()
    assert r.llen(hs.history_key("cus_sf")) == 2
    r.close()


async def test_history_append_and_trim_is_atomic_under_concurrency(clean_redis,
                                                                   tmp_path):
    settings = _settings(tmp_path, clean_redis)
    clients = [FeatureClient(clean_redis, settings) for _ in range(4)]
    n = 200
    payments = [_payment(f"pi_c{i}", "cus_busy", DAY + timedelta(seconds=i))
                for i in range(n)]
    try:
        await asyncio.gather(*(clients[i % 4].record([p])
                               for i, p in enumerate(payments)))
    finally:
        for c in clients:
            await c.close()
    r = redis.Redis.from_url(clean_redis)
    kept = [hs.decode_event(e) for e in r.lrange(hs.history_key("cus_busy"), 0, -1)]
    day = int(DAY.timestamp()) // 86_400
    assert len(kept) == hs.HISTORY_KEEP
    assert len({e.event_id for e in kept}) == hs.HISTORY_KEEP
    assert r.hget(hs.customer_day_key(day), "cus_busy:n") == str(n).encode()
    r.close()


class _CountingClient(FeatureClient):
    """Counts snapshot builds (the real build runs; nothing is faked)."""

    builds = 0

    async def push_snapshot(self, day: int) -> tuple[int, int]:
        type(self).builds += 1
        await asyncio.sleep(0.2)  # widen the race window
        return await super().push_snapshot(day)


async def test_day_boundary_push_happens_once(clean_redis, tmp_path):
    settings = _settings(tmp_path, clean_redis)
    _CountingClient.builds = 0
    clients = [_CountingClient(clean_redis, settings) for _ in range(3)]
    await clients[0].record([_payment("pi_y", "cus_b", DAY - timedelta(hours=1))])
    first = [_payment(f"pi_b{i}", "cus_b", DAY + timedelta(minutes=i))
             for i in range(3)]
    try:
        inputs = await asyncio.gather(*(c.lookup([p]) for c, p in
                                        zip(clients, first, strict=True)))
        assert _CountingClient.builds == 1
        await clients[1].lookup([_payment("pi_b9", "cus_b", DAY + timedelta(hours=5))])
        assert _CountingClient.builds == 1
    finally:
        for c in clients:
            await c.close()
    count = tf.STATIC_FEATURES.index("customer_count_1d")
    assert all(x[0].static[count] == 1.0 for x in inputs)


async def test_labels_are_idempotent_and_corrected(clean_redis, tmp_path):
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    at = DAY + timedelta(hours=1)
    label = Label(payment_id="pi_l", is_fraud=True, source=LabelSource.DISPUTE,
                  event_time=at + timedelta(days=2))
    try:
        await client.record([_payment("pi_l", "cus_l", at, terminal="term_l")])
        assert await client.record_labels([label]) == 1
        assert await client.record_labels([label]) == 0
        reversed_ = label.model_copy(update={"is_fraud": False})
        assert await client.record_labels([reversed_]) == 1
        unknown = label.model_copy(update={"payment_id": "pi_never"})
        assert await client.record_labels([unknown]) == 0
    finally:
        await client.close()
    r = redis.Redis.from_url(clean_redis)
    day = int(at.timestamp()) // 86_400
    assert r.hget(hs.terminal_day_key(day), "term_l:f") == b"0"
    r.close()


async def test_a_fraud_label_reaches_the_terminal_only_after_the_delay(
        clean_redis, tmp_path):
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    paid = DAY + timedelta(hours=1)
    label = Label(payment_id="pi_tf", is_fraud=True, source=LabelSource.DISPUTE,
                  event_time=paid + timedelta(days=2))
    column = tf.STATIC_FEATURES.index("log_hours_since_terminal_fraud")
    none = np.log1p(tf.NO_TERMINAL_FRAUD_SECONDS / 3600)

    async def hours_since(at: datetime, terminal: str = "term_tf") -> float:
        [got] = await client.lookup([_payment(f"pi_q{at:%d%H}{terminal}",
                                              "cus_q", at, terminal=terminal)])
        return float(got.static[column])

    try:
        await client.record([_payment("pi_tf", "cus_tf", paid, terminal="term_tf")])
        await client.record_labels([label])
        inside = await hours_since(paid + timedelta(days=6, hours=23))
        after = await hours_since(paid + timedelta(days=7, hours=5))
        elsewhere = await hours_since(paid + timedelta(days=8), "term_other")
        await client.record_labels([label.model_copy(update={"is_fraud": False})])
        reversed_ = await hours_since(paid + timedelta(days=7, hours=6))
    finally:
        await client.close()
    assert inside == pytest.approx(none)
    assert np.expm1(after) == pytest.approx(7 * 24 + 5, abs=1e-3)
    assert elsewhere == pytest.approx(none)
    assert reversed_ == pytest.approx(none)


async def test_account_change_enters_the_history(clean_redis, tmp_path):
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    at = DAY + timedelta(hours=2)
    try:
        await client.record_account_change("cus_a", at, ["email"])
        [got] = await client.lookup([_payment("pi_a", "cus_a", at + timedelta(
            hours=3), amount=500.0)])
    finally:
        await client.close()
    assert got.context["hours_since_account_change"] == pytest.approx(3.0)
    assert got.context["customer_mean_amount_30d"] is None
    flag = tf.STATIC_FEATURES.index("account_change_last_24h")
    assert got.static[flag] == 1.0 and got.length == 1


async def test_unknown_entities_get_zero_features(clean_redis, tmp_path):
    client = FeatureClient(clean_redis, _settings(tmp_path, clean_redis))
    try:
        [got] = await client.lookup([_payment("pi_u", "cus_new", DAY, 42.0,
                                              "term_new")])
    finally:
        await client.close()
    names = tf.CUSTOMER_SNAPSHOT_FEATURES + tf.TERMINAL_SNAPSHOT_FEATURES
    assert not got.static[[tf.STATIC_FEATURES.index(n) for n in names]].any()
    assert got.static[tf.STATIC_FEATURES.index("amount_over_usual")] == 1.0
    assert got.length == 0


@pytest.mark.slow
async def test_sql_registry_on_postgresql(small_tx, clean_redis, tmp_path):
    """The production registry option against the real PostgreSQL."""
    pytest.importorskip("psycopg")
    settings = _settings(tmp_path, clean_redis, registry=POSTGRES_URL)
    await materialize_async(None, DAY.date(), settings=settings,
                            transactions=small_tx)
    from feature_repo.store import open_store

    store = open_store(settings)
    assert store.config.registry.registry_type == "sql"
    views = {v.name for v in store.list_feature_views()}
    assert {"customer_spending", "terminal_risk"} <= views
    row = small_tx[small_tx["tx_datetime"] >= pd.Timestamp(DAY)].iloc[0]
    client = FeatureClient(clean_redis, settings)
    try:
        [got] = await client.lookup(_payments(row.to_frame().T.infer_objects()))
    finally:
        await client.close()
    assert got.static[tf.STATIC_FEATURES.index("customer_count_30d")] > 0


async def test_materialize_errors_name_the_file_and_date(clean_redis, tmp_path):
    settings = _settings(tmp_path, clean_redis)
    with pytest.raises(DataError, match="no-such.parquet"):
        await materialize_async(tmp_path / "no-such.parquet", "2018-08-01",
                                settings=settings)
    with pytest.raises(DataError, match="--until.*2018-02-30"):
        await materialize_async(SAMPLE_PATH, "2018-02-30", settings=settings)
    with pytest.raises(DataError, match="before --until 2000-01-01"):
        await materialize_async(SAMPLE_PATH, "2000-01-01", settings=settings)
    with pytest.raises(ConfigError, match="REDIS_URL.*not a Redis URL"):
        await materialize_async(SAMPLE_PATH, "2018-08-01", settings=settings,
                                redis_url="garbage")


async def test_a_running_client_notices_a_materialize_reset(small_tx, clean_redis,
                                                            tmp_path):
    settings = _settings(tmp_path, clean_redis)
    await materialize_async(None, DAY.date(), settings=settings,
                            transactions=small_tx)
    _CountingClient.builds = 0
    client = _CountingClient(clean_redis, settings)
    later = DAY + timedelta(days=1, hours=1)
    try:
        await client.lookup([_payment("pi_r1", "cus_r", later)])
        assert _CountingClient.builds == 1
        await materialize_async(None, DAY.date(), settings=settings,
                                transactions=small_tx)
        await client.lookup([_payment("pi_r2", "cus_r", later)])  # sees the reset
        await client.lookup([_payment("pi_r3", "cus_r", later)])
        assert _CountingClient.builds == 2
    finally:
        await client.close()
