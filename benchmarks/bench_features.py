"""Print the features' costs: example building (time, memory), materialize,
online lookup latency and a day-boundary snapshot build. Figures are printed,
never asserted.

    .venv/bin/python benchmarks/bench_features.py [--data PATH] [--redis-url URL]
        [--windows 7,28] [--lookups 300] [--batch 1]

Uses a temporary state dir; the Redis database given is reset (``fm:`` keys).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bench_build(tx, state: Path, days: int, start: datetime) -> None:
    from orchestration.training_data import build_examples

    for label in ("cold", "cached"):
        t0 = time.perf_counter()
        ex = build_examples(tx, start, start + timedelta(days=days), state_dir=state)
        seconds = time.perf_counter() - t0
        print(f"build_examples {days:>2}-day window ({label:>6}): {len(ex.labels):>7} "
              f"rows in {seconds:6.2f} s, process max RSS {_rss_gb():.2f} GB")


async def bench_lookup(tx, url: str, state: Path, day: datetime, n: int,
                       batch: int, store_kind: str) -> None:
    from fraudmesh.config import Settings
    from fraudmesh.schemas import Payment
    from orchestration.materialize import materialize_async
    from services.features import FeatureClient

    settings = Settings(state_dir=state / store_kind, redis_url=url,
                        online_store=store_kind)
    t0 = time.perf_counter()
    summary = await materialize_async(None, day.date(), redis_url=url,
                                      settings=settings, transactions=tx)
    print(f"materialize ({store_kind}) until {day.date()}: {summary.payments} "
          f"payments in {time.perf_counter() - t0:.1f} s")
    rows = tx[(tx["tx_datetime"] >= day)].head(n * batch)
    payments = [
        Payment(payment_id=r.payment_key, customer_id=r.customer_key,
                terminal_id=r.terminal_key, amount_minor=round(r.tx_amount * 100),
                currency="eur", amount=float(r.tx_amount),
                created=r.tx_datetime.to_pydatetime())
        for r in rows.itertuples()
    ]
    client = FeatureClient(url, settings)
    await client.lookup(payments[:1])  # loads Feast
    lookups, records = [], []
    for i in range(0, len(payments), batch):
        chunk = payments[i:i + batch]
        t0 = time.perf_counter()
        await client.lookup(chunk)
        t1 = time.perf_counter()
        await client.record(chunk)
        lookups.append((t1 - t0) * 1e3)
        records.append((time.perf_counter() - t1) * 1e3)
    # The day boundary: the first payment after midnight waits for this.
    next_day = int(day.timestamp()) // 86400 + 1
    t0, c0 = time.perf_counter(), time.process_time()
    customers, terminals = await client.push_snapshot(next_day)
    print(f"day-boundary snapshot ({store_kind}): {customers} customers, "
          f"{terminals} terminals in {time.perf_counter() - t0:.2f} s "
          f"({time.process_time() - c0:.2f} s CPU)")
    await client.close()
    p = np.percentile
    print(f"online lookup ({store_kind}, batch {batch}): p50 {p(lookups, 50):.2f} ms, "
          f"p95 {p(lookups, 95):.2f} ms, p99 {p(lookups, 99):.2f} ms; "
          f"record p50 {p(records, 50):.2f} ms ({len(lookups)} calls)")


def main() -> None:
    from fraudmesh.dataset import default_data_path, load_transactions

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=default_data_path())
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--windows", default="7,28")
    parser.add_argument("--start", default="2018-08-15")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()

    t0 = time.perf_counter()
    tx = load_transactions(args.data)
    print(f"loaded {len(tx)} payments from {args.data} in "
          f"{time.perf_counter() - t0:.1f} s")
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        for days in (int(w) for w in args.windows.split(",") if w):
            last = tx["tx_datetime"].iloc[-1].normalize().to_pydatetime()
            begin = min(start, last - timedelta(days=days))
            bench_build(tx, state, days, begin)
        for kind in args.stores.split(","):
            asyncio.run(bench_lookup(tx, args.redis_url, state, start,
                                     args.lookups, args.batch, kind))


if __name__ == "__main__":
    main()
