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
