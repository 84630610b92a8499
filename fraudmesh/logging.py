"""Log lines that name their payment's trace: a filter, a JSON format.

:class:`TraceContextFilter` adds to every record it sees:

- ``trace_id``: the current span's 32-hex trace id (``-`` outside a trace),
- ``span_id``: the current span id (``-``),
- ``payment_hash``: the hashed payment id of the current hop, from the W3C
  baggage the hops carry (``-`` when the hop is not about one payment),
- ``deployment``: the Ray Serve deployment (or process) name.

Call sites do nothing: ``log.warning("lookup failed for %d payments", n)`` inside
a :func:`fraudmesh.tracing.hop` comes out with the trace id of that payment.
:func:`fraudmesh.tracing.setup_tracing` installs the filter on the root
logger's handlers; :func:`setup_logging` sets up a handler for processes that
have none, as text or JSON (``FRAUDMESH_LOG_FORMAT=json``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import UTC, datetime
from typing import Any

from fraudmesh import tracing

__all__ = [
    "JsonFormatter",
    "ServeLogHandler",
    "TEXT_FORMAT",
    "TraceContextFilter",
    "ensure_logging",
    "setup_logging",
]

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [%(deployment)s trace=%(trace_id)s "
    "payment=%(payment_hash)s] %(message)s"
)
_FIELDS = ("trace_id", "span_id", "payment_hash", "deployment")


class TraceContextFilter(logging.Filter):
    """Adds trace id, span id, hashed payment id and deployment to each record.

    Never drops a record. A field already set on the record (``extra=``) is
    kept.
    """

    def __init__(self, deployment: str | None = None) -> None:
        super().__init__()
        self.deployment = deployment or "-"

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            record.trace_id = tracing.current_trace_id() or "-"
        if getattr(record, "span_id", None) is None:
            record.span_id = tracing.current_span_id() or "-"
        if getattr(record, "payment_hash", None) is None:
            record.payment_hash = tracing.current_payment_hash() or "-"
        if getattr(record, "deployment", None) is None:
            record.deployment = self.deployment
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, trace fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _has_filter(handler: logging.Handler) -> TraceContextFilter | None:
    for existing in handler.filters:
        if isinstance(existing, TraceContextFilter):
            return existing
    return None


def install_filter(deployment: str | None = None) -> None:
    """Put a :class:`TraceContextFilter` on every root handler (once each).

    Handlers of the ``ray.serve`` logger get one too; :func:`setup_logging`
    adds its handler with one.
    """
    global _DEPLOYMENT
    _DEPLOYMENT = deployment or _DEPLOYMENT
    # Ray Serve's replica logger has its own handlers (the replica log file);
    # lines logged through it carry the trace fields too.
    handlers = logging.getLogger().handlers + logging.getLogger("ray.serve").handlers
    for handler in handlers:
        existing = _has_filter(handler)
        if existing is None:
            handler.addFilter(TraceContextFilter(_DEPLOYMENT))
        elif deployment:
            existing.deployment = deployment


_DEPLOYMENT: str | None = None


def setup_logging(
    level: int | str = logging.INFO,
    *,
    json_format: bool | None = None,
    deployment: str | None = None,
) -> logging.Handler:
    """A stderr handler on the root logger with the trace filter; returns it.

    ``json_format`` None reads ``FRAUDMESH_LOG_FORMAT`` (``json`` or ``text``,
    default text). Calling it again replaces the handler it added before.
    """
    if json_format is None:
        json_format = os.environ.get("FRAUDMESH_LOG_FORMAT", "text").lower() == "json"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fraudmesh", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._fraudmesh = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(TraceContextFilter(deployment or _DEPLOYMENT))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class ServeLogHandler(logging.Handler):
    """Hands records to Ray Serve's replica logger, whose handlers write the
    replica's log file (``logs/serve/replica_<app>_<deployment>_<id>.log``),
    when they pass that logger's level (the app's ``logging_config``)."""

    def emit(self, record: logging.LogRecord) -> None:
        serve_logger = logging.getLogger("ray.serve")
        if record.levelno >= serve_logger.getEffectiveLevel():
            serve_logger.handle(record)


def ensure_logging(deployment: str | None = None) -> None:
    """The trace filter on every root handler; a handler of ours when there is none.

    In a Ray Serve replica, ``sys.stderr`` is Serve's: what is written there is
    logged again at INFO through Serve's logger, whose level (WARNING in
    serve_config.yaml) then drops it, so a stderr handler would lose the
    warnings of ``services.*``. There the root logger gets a
    :class:`ServeLogHandler` instead, and our records land in the replica's
    log beside Serve's own. Elsewhere, a stderr handler (:func:`setup_logging`)
    when the root has none. Level from ``FRAUDMESH_LOG_LEVEL`` (default INFO).
    """
    install_filter(deployment)
    root = logging.getLogger()
    level = os.environ.get("FRAUDMESH_LOG_LEVEL", "INFO").upper()
    if tracing._replica_context() is not None:
        if not any(isinstance(h, ServeLogHandler) for h in root.handlers):
            handler = ServeLogHandler()
            handler.addFilter(TraceContextFilter(deployment or _DEPLOYMENT))
            root.addHandler(handler)
            root.setLevel(level)
        return
    if not root.handlers:
        setup_logging(level, deployment=deployment)


# Library notices that tell someone running fraudmesh nothing: ibis warns about a
# DuckDB method it calls itself. Anything else still shows.
_QUIET = (
    (DeprecationWarning, r"fetch_arrow_table\(\) is deprecated"),
)


def quiet_library_notices() -> None:
    """Hide the notices above. Call after ``import feast``: Feast's modules put
    warning filters of their own in front when they are imported."""
    for category, message in _QUIET:
        warnings.filterwarnings("ignore", message=message, category=category)


# Ray's notice at every local start that token authentication is on (its
# default, which fraudmesh keeps): news to nobody running the demo. The notice
# that it is *off* still shows.
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_RAY_AUTH_ON = "Token authentication is enabled for this Ray cluster"


def _not_ray_auth_on(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_RAY_AUTH_ON)


def quiet_ray_notices() -> None:
    """Hide Ray's token-auth-on notice; call before ``ray.init``. Idempotent."""
    logger = logging.getLogger(_RAY_AUTH_LOGGER)
    if _not_ray_auth_on not in logger.filters:
        logger.addFilter(_not_ray_auth_on)
