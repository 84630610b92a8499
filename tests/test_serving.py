"""orchestration.serving's settings for the Ray process tree (no Ray started)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestration.serving import (
    CONTROL_LOOP_ENV,
    LOG_BUFFER_ENV,
    private_dirs,
    serve_env,
)


def test_a_mesh_gives_feasts_metrics_a_dir_it_removes(monkeypatch, tmp_path):
    # As in a fresh process tree (this one may have imported Feast already).
    monkeypatch.delenv("PROMETHEUS_MULTIPROCESS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env = serve_env(tmp_path, fast=False)
    own = Path(env["PROMETHEUS_MULTIPROCESS_DIR"])
    pattern = "feast_metrics_*"
    before = set(Path(tempfile.gettempdir()).glob(pattern))
    try:
        assert own.is_dir()
        # A replica importing Feast under this env uses the mesh's dir and
        # makes no /tmp/feast_metrics_* of its own (which a killed replica
        # would leave behind).
        got = subprocess.run(
            [sys.executable, "-c",
             "import os, feast.metrics; print(os.environ['PROMETHEUS_MULTIPROC_DIR'])"],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        )
        assert got.stdout.strip() == str(own)
        assert set(Path(tempfile.gettempdir()).glob(pattern)) == before
    finally:
        shutil.rmtree(own, ignore_errors=True)


def test_a_dir_named_by_the_environment_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", str(tmp_path))
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in serve_env(tmp_path, fast=False)


def _settings(tmp_path, fast: bool) -> dict[str, str]:
    """serve_env's settings, its private temp dirs removed again."""
    env = serve_env(tmp_path, fast=fast)
    for path in private_dirs(env):
        shutil.rmtree(path, ignore_errors=True)
    return env


def test_the_controller_loop_is_slowed_unless_the_environment_says(monkeypatch,
                                                                  tmp_path):
    monkeypatch.delenv(CONTROL_LOOP_ENV, raising=False)
    assert _settings(tmp_path, fast=False)[CONTROL_LOOP_ENV] == "0.5"
    monkeypatch.setenv(CONTROL_LOOP_ENV, "0.2")
    assert CONTROL_LOOP_ENV not in _settings(tmp_path, fast=False)


def test_fast_serving_keeps_replica_logs_unbuffered(monkeypatch, tmp_path):
    # Ray's throughput-optimised mode buffers 1,000 records per replica and
    # never writes them at a stop: a replica's warnings would be lost.
    monkeypatch.delenv(LOG_BUFFER_ENV, raising=False)
    assert _settings(tmp_path, fast=True)[LOG_BUFFER_ENV] == "1"
    monkeypatch.setenv(LOG_BUFFER_ENV, "50")
    assert _settings(tmp_path, fast=True)[LOG_BUFFER_ENV] == "50"
