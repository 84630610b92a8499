"""The Feast store, configured from ``fraudmesh.config.Settings``.

- Online store: SQLite under the state dir by default (a file, no server), Redis
  (``REDIS_URL``) when ``FRAUDMESH_ONLINE_STORE=redis``.
- Registry: a file under the state dir by default; a ``postgresql://`` URL in
  ``FRAUDMESH_FEAST_REGISTRY`` selects Feast's SQL registry.
- Offline store: DuckDB (a fraction of the time and memory of the dask store).

``import feast`` takes seconds: this module imports it lazily, and ``open_store``
returns one store per (settings, snapshot dir) per process.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fraudmesh.config import OnlineStoreKind, Settings
from fraudmesh.errors import ConfigError, FeatureStoreError

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("fraudmesh.features.store")
PROJECT = "fraudmesh"
_stores: dict[tuple, FeatureStore] = {}
_lock = threading.Lock()


def feast_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "feast"


def redis_connection_string(url: str) -> str:
    """``redis://host:port/db`` as Feast's ``host:port,db=N[,password=...]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError("REDIS_URL", f"expected redis://host:port/db, got scheme "
                          f"{parts.scheme!r}")
    text = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    db = parts.path.strip("/")
    if db:
        text += f",db={db}"
    if parts.password:
        text += f",password={parts.password}"
    if parts.scheme == "rediss":
        text += ",ssl=true"
    return text


def registry_config(settings: Settings, default_path: Path) -> dict:
    """The registry section: SQL on PostgreSQL for a postgresql:// URL, else a file."""
    value = settings.feast_registry
    if value and value.startswith(("postgresql://", "postgres://", "postgresql+")):
        url = value.split("://", 1)[1]
        return {"registry_type": "sql", "path": f"postgresql+psycopg://{url}",
                "cache_ttl_seconds": 60, "sqlalchemy_config_kwargs":
                {"pool_pre_ping": True}}
    path = Path(value) if value else default_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"registry_type": "file", "path": str(path), "cache_ttl_seconds": 60}


def online_config(settings: Settings) -> dict:
    if settings.online_store == OnlineStoreKind.REDIS:
        if not settings.redis_url:
            raise ConfigError("FRAUDMESH_ONLINE_STORE",
                              "redis needs REDIS_URL; set it or use sqlite")
        return {"type": "redis",
                "connection_string": redis_connection_string(settings.redis_url)}
    path = feast_dir(settings) / "online.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"type": "sqlite", "path": str(path)}


def repo_config(settings: Settings, *, registry_path: Path | None = None):
    from feast.repo_config import RepoConfig

    base = feast_dir(settings)
    base.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=registry_config(settings, registry_path or base / "registry.db"),
        online_store=online_config(settings),
        offline_store={"type": "duckdb"},
        entity_key_serialization_version=3,
        repo_path=str(base),
    )


def open_store(
    settings: Settings,
    snapshot_dir: Path | None = None,
    *,
    registry_path: Path | None = None,
) -> FeatureStore:
    """The process's Feast store for ``settings``, definitions applied once.

    ``snapshot_dir`` is where the batch sources read daily snapshot tables
    (default ``<state_dir>/snapshots/online``). Raises FeatureStoreError when Feast
    cannot open or apply the repository.
    """
    snapshot_dir = snapshot_dir or Path(settings.state_dir) / "snapshots" / "online"
    key = (settings.model_dump_json(), str(snapshot_dir), str(registry_path))
    with _lock:  # one store per process; Feast objects are costly to build
        store = _stores.get(key)
        if store is None:
            store = _open(settings, snapshot_dir, registry_path)
            _stores[key] = store
    return store


@contextmanager
def _apply_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX flock), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(settings: Settings, snapshot_dir: Path, registry_path: Path | None):
    from feast import FeatureStore

    from feature_repo.definitions import build_definitions
    from fraudmesh.logging import quiet_library_notices

    quiet_library_notices()  # after Feast's imports, which set filters of their own

    try:
        config = repo_config(settings, registry_path=registry_path)
        # Replicas starting together would each rewrite a file registry; a file
        # lock beside the state serialises them (the SQL registry has its own
        # transactions). Creating the store also writes the registry file.
        with _apply_lock(feast_dir(settings) / "apply.lock"):
            store = FeatureStore(config=config)
            store.apply(build_definitions(snapshot_dir))
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise FeatureStoreError(f"could not open the Feast repository: {exc}") from exc
    except Exception as exc:  # Feast raises its own untyped errors; translate here
        raise FeatureStoreError(
            f"could not open the Feast repository ({type(exc).__name__}: {exc})"
        ) from exc
    log.info("feast store ready: online=%s", settings.online_store)
    return store
