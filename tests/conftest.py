"""Shared fixtures.

Real services only: Redis on loopback (``FRAUDMESH_TEST_REDIS_URL``, default
database 15 of 127.0.0.1:6379, flushed at session start), and a Ray instance
started once per test session by the ``ray_serve`` fixture in
``tests/integration``.
"""

from __future__ import annotations

import os

import pytest

from tests.otlp_receiver import otlp_receiver  # noqa: F401 (session fixture)
from tests.stripe_emulator import EmulatorProcess

TEST_REDIS_URL = os.environ.get("FRAUDMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis database for this test session, emptied first."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis is not reachable at {TEST_REDIS_URL}: {exc}")
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def localstripe():
    """localstripe (a stateful Stripe API emulator) behind a recording proxy.

    A subprocess on a free loopback port for the session; ``.url`` is the API
    base for ``STRIPE_API_BASE``; ``.requests()`` shows the requests exactly as
    the SDK sent them (see tests/stripe_emulator.py for why the proxy exists).
    """
    emulator = EmulatorProcess().start()
    try:
        yield emulator
    finally:
        emulator.stop()
