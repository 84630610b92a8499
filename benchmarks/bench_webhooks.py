"""Webhook acknowledgement cost: verify (Stripe SDK) + dedup + enqueue (Redis).

Prints figures, asserts nothing. Needs Redis (``FRAUDMESH_TEST_REDIS_URL``,
default database 15 of 127.0.0.1:6379; it writes under a stream of its own and
removes it).

    .venv/bin/python benchmarks/bench_webhooks.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.webhooks import EventQueue, Receiver, verify  # noqa: E402
from tests.stripe_signing import SECRET, event_body, sign  # noqa: E402


def _pi(i: int) -> dict:
    return {
        "id": f"pi_bench_{i}",
        "object": "payment_intent",
        "amount": 4200,
        "currency": "eur",
        "customer": "cus_bench",
        "created": int(time.time()),
        "status": "requires_confirmation",
        "metadata": {"terminal_id": "t"},
    }


async def main(n: int) -> None:
    url = os.environ.get("FRAUDMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = aioredis.Redis.from_url(url)
    stream = f"bench:webhooks:{uuid.uuid4().hex[:8]}"
    queue = EventQueue(client, stream=stream)
    receiver = Receiver(queue, ["whsec_rotated_out", SECRET])
    run = uuid.uuid4().hex[:6]
    bodies = [
        event_body("payment_intent.created", _pi(i), event_id=f"evt_bench_{run}_{i}")
        for i in range(n)
    ]
    headers = [sign(b) for b in bodies]

    started = time.perf_counter()
    for b, h in zip(bodies, headers, strict=True):
        verify(b, h, [SECRET])
    verify_us = (time.perf_counter() - started) / n * 1e6

    latencies = []
    started = time.perf_counter()
    for b, h in zip(bodies, headers, strict=True):
        t0 = time.perf_counter()
        status, _ = await receiver.receive(b, h)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert status == 200
    wall = time.perf_counter() - started
    dup0 = time.perf_counter()
    for b, h in zip(bodies[:200], headers[:200], strict=True):
        await receiver.receive(b, h)
    dup_ms = (time.perf_counter() - dup0) / 200 * 1000

    lat = np.array(latencies)
    print(f"events: {n}, body {len(bodies[0])} bytes")
    print(f"signature verification (SDK, 1 secret): {verify_us:.0f} us/event")
    print(
        "receive (verify with 2 secrets + SET NX + XADD, one at a time): "
        f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
        f"{n / wall:.0f} events/s"
    )
    print(f"duplicate delivery answered in {dup_ms:.2f} ms")
    await client.delete(
        stream, *[f"fraudmesh:stripe:seen:evt_bench_{run}_{i}" for i in range(n)]
    )
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    asyncio.run(main(parser.parse_args().n))
