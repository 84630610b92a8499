"""Ray Serve session fixtures: Ray once per test session, the mesh deployed once.

- ``mesh_env``: environment of every replica, applied to ``os.environ`` before
  ``ray.init`` (other streams add their variables here: Stripe, OTLP). The
  Stripe variables point at the ``localstripe`` fixture (tests/conftest.py).
- ``ray_serve``: Ray started once (``address="local"``, 2 CPUs, no dashboard)
  and Serve's HTTP proxy on a free port; yields the base URL of the proxy.
- ``mesh_models_dir``: a small model trained on the shipped sample (slow, once).
- ``mesh_url``: the fraudmesh app deployed once per session against the test
  Redis (``FRAUDMESH_TEST_REDIS_URL``, default db 15) and a tmp state dir, with
  the online state warmed for :data:`MESH_DAY`.

Ray's default HTTP proxy is used here, not HAProxy: HAProxy's side ports and
files are per machine, and several engineers' test runs share this one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraudmesh.dataset import SAMPLE_PATH
from tests.conftest import TEST_REDIS_URL

# The first day the integration tier scores; the model learns from before it.
MESH_DAY = "2018-08-29"


@pytest.fixture(scope="session")
def mesh_state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mesh-state")


@pytest.fixture(scope="session")
def mesh_env(mesh_state_dir: Path, localstripe, otlp_receiver) -> dict[str, str]:
    """Environment variables every replica inherits (set before ``ray.init``)."""
    from orchestration.serving import haproxy_available, serve_env
    from tests.stripe_signing import OLD_SECRET, SECRET

    return {
        # Serve's settings as `fraudmesh serve` has them (HAProxy ingress,
        # throughput-optimised mode, its log settings), so replicas run here as
        # they do there.
        **serve_env(mesh_state_dir, fast=haproxy_available()),
        "FRAUDMESH_STATE_DIR": str(mesh_state_dir),
        "REDIS_URL": TEST_REDIS_URL,
        "FRAUDMESH_TORCH_THREADS": "1",
        # Stripe: live actuation against the localstripe fixture, a fake test
        # key, and two webhook secrets as during a rotation.
        "STRIPE_API_BASE": localstripe.url,
        "STRIPE_API_KEY": "sk_test_fraudmesh_localstripe",
        "STRIPE_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
        "FRAUDMESH_ACTUATION_MODE": "live",
        # Tracing: every replica exports its spans over OTLP/HTTP to the
        # session's receiver (tests/otlp_receiver.py), flushed every 200 ms.
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


@pytest.fixture(scope="session")
def ray_serve(mesh_env: dict[str, str]) -> Iterator[str]:
    import ray
    from ray import serve

    from fraudmesh.config import get_settings
    from orchestration.serving import free_port, private_dirs

    saved = {k: os.environ.get(k) for k in mesh_env}
    os.environ.update(mesh_env)
    get_settings.cache_clear()
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        for path in private_dirs(mesh_env):  # serve_env's temp dirs
            shutil.rmtree(path, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def mesh_models_dir(tmp_path_factory, mesh_state_dir: Path) -> Path:
    """A small two-member ensemble trained on the sample before MESH_DAY (about a
    minute), so serving loads an ensemble as in production."""
    from models.training import TrainConfig
    from orchestration.training_job import run_train

    out = tmp_path_factory.mktemp("mesh-models")
    config = TrainConfig(
        max_epochs=2, patience=1, hidden=16, static_hidden=32, members=2,
        negative_fraction=0.25,
    )
    run_train(
        data=SAMPLE_PATH,
        until=MESH_DAY,
        out=out,
        train_days=7,
        config=config,
        state_dir=mesh_state_dir,
    )
    return out


@pytest.fixture(scope="session")
def mesh_url(
    ray_serve: str, redis_url: str, mesh_models_dir: Path, mesh_state_dir: Path
) -> str:
    """The app deployed once per session; the online state warm for MESH_DAY."""
    from ray import serve

    from fraudmesh.config import get_settings
    from orchestration.graph import build_app
    from orchestration.materialize import run_materialize
    from orchestration.serving import APP_NAME, wait_ready

    run_materialize(SAMPLE_PATH, MESH_DAY, redis_url=redis_url, settings=get_settings())
    app = build_app(redis_url=redis_url, models_dir=mesh_models_dir)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    wait_ready(ray_serve, timeout_s=300)
    return ray_serve
