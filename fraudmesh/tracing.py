"""One payment is one trace, across every Ray Serve hop (issue 5).

Ray Serve does not carry OpenTelemetry context across DeploymentHandle calls, so
every hop receives the W3C context explicitly as a ``carrier`` (a
``dict[str, str]`` holding ``traceparent``, ``tracestate`` and ``baggage``) and
passes on the carrier it gets back from :func:`hop`::

    setup_tracing("features")                      # once per process, idempotent
    with hop("features.lookup", carrier, {"fraudmesh.batch_size": 3}) as h:
        ...                                        # h.span is the server span
        await next_handle.method.remote(..., carrier=h.carrier)
    with client_span("feast.online_read", {"fraudmesh.feature_count": 12}):
        ...                                        # client span for I/O

Configuration is the standard ``OTEL_*`` environment (read once, in
:func:`setup_tracing`):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``: where
  spans go. Neither set: nothing is exported, spans are not recorded (the
  sampler drops them all), but trace ids are still made and carried, so the
  score response and the log lines keep their trace id.
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``:
  ``http/protobuf`` (default, port 4318) or ``grpc`` (port 4317).
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: default
  ``parentbased_traceidratio`` with ratio ``1.0`` (every payment is traced; a
  caller's sampled flag in ``traceparent`` is honoured).
- ``FRAUDMESH_TRACE_REDIS_COMMANDS=1``: also a client span for every Redis
  command or pipeline (opentelemetry-instrumentation-redis). Off by default:
  the store operations on a payment's path have their own client spans
  (``redis.history.read``, ...), so per-command spans would double them on the
  hot path, and the webhook consumers' blocking stream reads would each make a
  root trace of their own every second.
- ``OTEL_SERVICE_NAME`` overrides the service name given in code;
  ``OTEL_RESOURCE_ATTRIBUTES`` adds resource attributes; ``OTEL_BSP_*`` tune
  the batch span processor.

Attribute rules: never a card number, email, IP address or secret; payment and
customer ids only through :func:`hash_id`. :func:`safe_attributes` enforces this
on the attributes given to :func:`hop` and :func:`client_span`, and the exporter
scrubs every span once more before it leaves the process (third-party
instrumentation and direct ``span.set_attribute`` calls included).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import ipaddress
import logging
import os
import random
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "Hop",
    "PAYMENT_HASH_KEY",
    "carrier_from_headers",
    "client_span",
    "current_payment_hash",
    "current_trace_id",
    "hash_id",
    "hop",
    "hops",
    "payment_attributes",
    "route_hop",
    "safe_attributes",
    "score_bucket",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
]

_TRACER_NAME = "fraudmesh"
_log = logging.getLogger(__name__)

#: Span attribute and W3C baggage key holding the hashed payment id.
PAYMENT_HASH_KEY = "fraudmesh.payment_id_hash"

_FLUSH_TIMEOUT_MS = 5_000
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


# --------------------------------------------------------------------------
# Setup


@dataclass
class _State:
    """The process's tracing set-up; guarded by ``_LOCK`` when written."""

    provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once set up
    tracer: trace.Tracer | None = None
    exporting: bool = False
    service_name: str | None = None
    deployment: str | None = None
    redis_instrumented: bool = False


_STATE = _State()
_LOCK = threading.Lock()


def setup_tracing(service_name: str, **resource_attributes: Any) -> None:
    """Configure the OpenTelemetry SDK for this process, once; later calls no-op.

    Call it at the start of each process that makes spans: every Ray Serve
    replica (in its constructor) and the ingress. ``service_name`` is the
    service name unless ``OTEL_SERVICE_NAME`` is set. ``resource_attributes``
    are added to the resource: plain names become ``fraudmesh.<name>``
    (``model_version="v3"`` -> ``fraudmesh.model_version``), dotted names stay
    as given. Inside a replica the deployment, application and
    replica id are added from ``serve.get_replica_context()``.

    Also installs the logging filter (:mod:`fraudmesh.logging`) on the root
    handlers (and a stderr handler where there is none, as in a fresh
    replica), so every log line carries the trace id.
    """
    with _LOCK:
        if _STATE.provider is not None:
            return
        provider, exporting = _build_provider(
            service_name, resource_attributes, os.environ
        )
        _install(provider, exporting=exporting)
        _STATE.service_name = service_name
        _STATE.deployment = _replica_deployment() or service_name
        if exporting:
            if _flag(os.environ.get("FRAUDMESH_TRACE_REDIS_COMMANDS")):
                _instrument_redis(provider)
            # A process that ends without its shutdown path still flushes.
            atexit.register(shutdown_tracing)
    # Imported here: fraudmesh.logging imports this module.
    from fraudmesh import logging as fm_logging

    fm_logging.ensure_logging(deployment=_STATE.deployment)
    _log.debug(
        "tracing set up for %s (export %s)",
        service_name,
        "on" if exporting else "off",
    )


def _build_provider(
    service_name: str,
    resource_attributes: Mapping[str, Any],
    environ: Mapping[str, str],
) -> tuple[Any, bool]:
    """The provider the environment asks for, and whether it exports."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    resource = _build_resource(service_name, resource_attributes, environ)
    exporter = _build_exporter(environ)
    if exporter is None:
        # No endpoint: drop every span at the sampler (near-zero cost) but keep
        # generating and carrying trace ids for responses and log lines.
        return (
            TracerProvider(
                resource=resource, sampler=ALWAYS_OFF, shutdown_on_exit=False
            ),
            False,
        )
    provider = TracerProvider(resource=resource, sampler=_build_sampler(environ))
    # BatchSpanProcessor reads OTEL_BSP_SCHEDULE_DELAY / _MAX_QUEUE_SIZE /
    # _MAX_EXPORT_BATCH_SIZE / _EXPORT_TIMEOUT itself. Our default export batch
    # is smaller than the SDK's 512: encoding a batch holds the GIL, and 512
    # spans at once stall the replica's event loop for tens of milliseconds,
    # which shows in the latency tail; 64 spread the same work thinly.
    own_sizes = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_QUEUE_SIZE"}
    batch_size = None if own_sizes & set(environ) else 64
    provider.add_span_processor(
        BatchSpanProcessor(
            _ScrubbingExporter(exporter), max_export_batch_size=batch_size
        )
    )
    return provider, True


def _build_sampler(environ: Mapping[str, str]) -> Any:
    """``OTEL_TRACES_SAMPLER`` when set, else parent-based ratio 1.0."""
    from opentelemetry.sdk.trace import sampling

    if environ.get("OTEL_TRACES_SAMPLER"):
        # The SDK's own parser, so every standard sampler name is honoured.
        return sampling._get_from_env_or_default()
    return sampling.ParentBasedTraceIdRatio(1.0)


def _otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


def _otlp_signal_endpoint(environ: Mapping[str, str], path: str) -> str:
    """The traces endpoint: the per-signal variable as is, else base + ``path``."""
    signal = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if signal:
        return signal
    return environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + path


def _otlp_protocol(environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    return protocol.strip().lower()


def _build_exporter(environ: Mapping[str, str]) -> Any:
    """The OTLP span exporter for the configured protocol, None without endpoint.

    The endpoint comes from ``environ``; the exporters read headers, timeout,
    compression and TLS settings from the ``OTEL_EXPORTER_OTLP_*`` variables
    themselves.
    """
    from fraudmesh.errors import ConfigError

    if _otlp_endpoint(environ) is None:
        return None
    protocol = _otlp_protocol(environ)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=_otlp_signal_endpoint(environ, ""))
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=_otlp_signal_endpoint(environ, "/v1/traces"))
    raise ConfigError(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        f"unsupported protocol {protocol!r}; use 'grpc' or 'http/protobuf'",
    )


def _build_resource(
    service_name: str,
    resource_attributes: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Any:
    """Resource of this process: service, deployment, replica, model version."""
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = {"service.namespace": "fraudmesh"}
    if not environ.get("OTEL_SERVICE_NAME"):
        # Resource.create gives given attributes precedence over the
        # environment; leave service.name out so OTEL_SERVICE_NAME wins.
        attrs["service.name"] = service_name
    version = _package_version()
    if version:
        attrs["service.version"] = version
    attrs.update(_replica_attributes())
    for key, value in resource_attributes.items():
        if value is not None:
            attrs[_resource_key(key)] = value
    return Resource.create(safe_attributes(attrs))


def _resource_key(name: str) -> str:
    if "." in name:
        return name
    return f"fraudmesh.{name}"


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fraudmesh")
    except PackageNotFoundError:
        return None


def _replica_context() -> Any:
    """Ray Serve's replica context, or None outside a replica (or without Ray)."""
    try:
        from ray import serve
        from ray.serve.exceptions import RayServeException
    except ImportError:
        return None
    try:
        return serve.get_replica_context()
    except RayServeException:
        return None


def _replica_deployment() -> str | None:
    ctx = _replica_context()
    return None if ctx is None else ctx.deployment


def _replica_attributes() -> dict[str, str]:
    ctx = _replica_context()
    if ctx is None:
        return {}
    replica_id = ctx.replica_id.unique_id
    return {
        "fraudmesh.deployment": ctx.deployment,
        "fraudmesh.app": ctx.app_name,
        "fraudmesh.replica_id": replica_id,
        "service.instance.id": f"{ctx.deployment}#{replica_id}",
    }


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _instrument_redis(provider: Any) -> None:
    """Client spans for every Redis command (arguments sanitised to ``?``)."""
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:  # optional: client_span() still covers our own calls
        _log.warning("opentelemetry-instrumentation-redis is not installed")
        return
    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    _STATE.redis_instrumented = True


def _install(provider: Any, *, exporting: bool) -> None:
    """Make ``provider`` this module's provider (and the global one if unset)."""
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer(_TRACER_NAME, _package_version())
    _STATE.exporting = exporting
    # The global provider can be set once per process; setup_tracing is the
    # only caller in production, so this is the first and only time. Without
    # export it stays unset, so that libraries with their own telemetry
    # (FastAPI's native spans, the Redis instrumentation) stay off and cost
    # nothing.
    if exporting and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def _uninstall() -> None:
    """Forget the set-up (tests only; the global provider stays)."""
    with _LOCK:
        _STATE.provider = None
        _STATE.tracer = None
        _STATE.exporting = False


def tracer() -> trace.Tracer:
    """The fraudmesh tracer (a no-op proxy before :func:`setup_tracing`)."""
    return _STATE.tracer or trace.get_tracer(_TRACER_NAME)


def is_exporting() -> bool:
    """True when spans of this process are exported."""
    return _STATE.exporting


def shutdown_tracing(timeout_ms: int = _FLUSH_TIMEOUT_MS) -> None:
    """Export pending spans (``force_flush``), then shut the provider down.

    Call from each replica's shutdown path (``__del__`` of a deployment) and
    after ``serve.shutdown()``, so the last payments before a stop are not
    lost. Safe to call twice, and before or without :func:`setup_tracing`.
    """
    with _LOCK:
        provider = _STATE.provider
        if provider is None or getattr(provider, "_fm_shut_down", False):
            return
        provider._fm_shut_down = True
    if not provider.force_flush(timeout_ms):
        _log.warning("tracing: spans not flushed within %d ms", timeout_ms)
    provider.shutdown()


# --------------------------------------------------------------------------
# Attribute scrubbing

_FORBIDDEN_KEY_WORDS = frozenset(
    {
        "card", "pan", "cvc", "cvv", "exp_month", "exp_year", "iban",
        "email", "ip", "phone", "address", "name_on_card",
        "secret", "password", "token", "api_key", "apikey", "authorization",
        "signature", "cookie",
    }
)  # fmt: skip
# Infrastructure keys from the OpenTelemetry conventions that say "address" but
# name a server, not a person; their values are still checked (an IP literal
# is dropped).
_ALLOWED_KEYS = frozenset({"server.address", "net.peer.name", "network.peer.address"})
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_CARD_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_SECRET_RE = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_\w+|\bwhsec_\w+")
_STRIPE_ID_RE = re.compile(r"\b(?:pi|ch|cus|pm|py|re|dp|src|evt)_\w+")
REDACTED = "[redacted]"
# Every pattern above needs one of these: "@" (email), ":" (IPv6), "_" (keys,
# ids), a digit-dot-digit (IPv4) or four digits in a row, maybe spaced (card).
_SUSPECT_RE = re.compile(r"[@:_]|\d\.\d|(?:\d[ -]?){3}\d")


@functools.lru_cache(maxsize=4096)  # attribute keys are a small, fixed set
def _key_is_forbidden(key: str) -> bool:
    if key in _ALLOWED_KEYS:
        return False
    lowered = key.lower()
    words = set(re.split(r"[._\-\s]+", lowered))
    return bool(words & _FORBIDDEN_KEY_WORDS) or any(
        w in lowered for w in ("api_key", "apikey", "name_on_card")
    )


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _scrub_text(text: str) -> str:
    """``text`` with emails, card numbers, IPs, secrets and raw Stripe ids masked."""
    if not _SUSPECT_RE.search(text):
        return text  # the common case: nothing the patterns below could match
    if _is_ip(text.strip()):
        return REDACTED
    text = _EMAIL_RE.sub(REDACTED, text)
    text = _SECRET_RE.sub(REDACTED, text)
    text = _CARD_RE.sub(
        lambda m: REDACTED if _luhn_ok(re.sub(r"\D", "", m.group())) else m.group(),
        text,
    )
    text = _IPV4_RE.sub(lambda m: REDACTED if _is_ip(m.group()) else m.group(), text)
    text = _IPV6_RE.sub(lambda m: REDACTED if _is_ip(m.group()) else m.group(), text)
    return _STRIPE_ID_RE.sub(lambda m: "#" + hash_id(m.group()), text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, bytes):
        return REDACTED
    if isinstance(value, Sequence):
        return [_scrub_value(v) for v in value]
    return value


def find_forbidden(attributes: Mapping[str, Any] | None) -> list[str]:
    """The keys of ``attributes`` that are forbidden or hold forbidden values."""
    bad = []
    for key, value in (attributes or {}).items():
        if _key_is_forbidden(key) or _scrub_value(value) != _as_list(value):
            bad.append(key)
    return bad


def _as_list(value: Any) -> Any:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Sequence):
        return list(value)
    return value


def safe_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``attributes`` fit for a span: no PII, no secrets, no None.

    Keys naming card data, emails, IP addresses, phones, addresses or secrets
    are dropped; string values have emails, card numbers (Luhn-valid), IP
    addresses and Stripe secrets replaced by ``[redacted]``, and raw Stripe ids
    (``pi_…``, ``cus_…``) replaced by ``#`` + :func:`hash_id`. A dropped key is
    logged once at WARNING (its value never is).
    """
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if value is None:
            continue
        if _key_is_forbidden(key):
            _warn_dropped(key)
            continue
        out[key] = _scrub_value(value)
    return out


_WARNED: set[str] = set()


def _warn_dropped(key: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning("tracing: attribute %r is not allowed on spans; dropped", key)


class _ScrubbingExporter:
    """Wraps the OTLP exporter: every span is scrubbed before it leaves.

    Spans, their events (exception messages) and status descriptions pass
    through :func:`safe_attributes` / the text scrubber; clean spans are sent
    as they are, dirty ones as scrubbed copies.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def export(self, spans: Sequence[Any]) -> Any:
        return self._inner.export([_scrubbed_span(s) for s in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _scrubbed_span(span: Any) -> Any:
    from opentelemetry.sdk.trace import Event, ReadableSpan

    attrs = dict(span.attributes or {})
    clean_attrs = safe_attributes(attrs)
    events = list(span.events)
    clean_events = [
        Event(e.name, safe_attributes(dict(e.attributes or {})), e.timestamp)
        for e in events
    ]
    status = span.status
    description = status.description
    clean_description = None if description is None else _scrub_text(description)
    if (
        clean_attrs == _listed(attrs)
        and all(
            dict(c.attributes) == _listed(dict(e.attributes or {}))
            for c, e in zip(clean_events, events, strict=True)
        )
        and clean_description == description
    ):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=clean_attrs,
        events=clean_events,
        links=span.links,
        kind=span.kind,
        status=Status(status.status_code, clean_description),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _listed(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _as_list(v) for k, v in attrs.items() if v is not None}


# --------------------------------------------------------------------------
# Hops and client spans


def hash_id(value: str) -> str:
    """A stable, non-reversible short digest for ids placed in span attributes."""
    # surrogatepass: an id not yet validated (a lone surrogate) still hashes.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def score_bucket(score: float) -> str:
    """The tenth ``score`` falls in, as ``"0.7-0.8"`` (``"0.9-1.0"`` for 1.0)."""
    tenth = min(max(int(score * 10), 0), 9)
    return f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}"


def payment_attributes(payment_id: str) -> dict[str, str]:
    """``{PAYMENT_HASH_KEY: hash_id(payment_id)}``, for a hop's attributes.

    Given to :func:`hop`, the hash is also put in the carrier's W3C baggage, so
    later hops and their log lines know the payment without being told.
    """
    return {PAYMENT_HASH_KEY: hash_id(payment_id)}


def carrier_from_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C trace headers of an HTTP request (a caller's ``traceparent``)."""
    if not headers:
        return {}
    out = {}
    for name in _TRACE_HEADERS:
        value = headers.get(name)
        if value:
            out[name] = value
    return out


@dataclass
class Hop:
    """One hop's server span and the carrier to pass to the next hop."""

    span: Span
    carrier: dict[str, str] = field(default_factory=dict)
    # The context inside the hop (its span current, its baggage), for work
    # started elsewhere on its behalf (see Hop.active).
    context: otel_context.Context | None = None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this hop's context current: tasks created inside inherit it."""
        token = otel_context.attach(self.context or otel_context.get_current())
        try:
            yield
        finally:
            otel_context.detach(token)

    @property
    def trace_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    _tokens: list[object] = field(default_factory=list, repr=False)

    def set(self, **attributes: Any) -> None:
        """Set scrubbed attributes (``decision="block"``) as ``fraudmesh.<name>``."""
        if self.span.is_recording():
            self.span.set_attributes(
                safe_attributes({_attribute_key(k): v for k, v in attributes.items()})
            )

    def tag_payment(self, payment_id: str) -> None:
        """Name the payment once it is known inside the hop (after validation).

        Sets the hashed id on the span, in the baggage of :attr:`carrier` (so
        later hops get it) and in the current context (so this hop's log lines
        carry it from here on). Undone when the hop ends.
        """
        payment_hash = hash_id(payment_id)
        if self.span.is_recording():
            self.span.set_attribute(PAYMENT_HASH_KEY, payment_hash)
        inbound = self.carrier.get("baggage", "")
        if _baggage_member(inbound, PAYMENT_HASH_KEY) is None:
            member = f"{PAYMENT_HASH_KEY}={payment_hash}"
            self.carrier["baggage"] = f"{inbound},{member}" if inbound else member
        ctx = baggage.set_baggage(PAYMENT_HASH_KEY, payment_hash)
        self._tokens.append(otel_context.attach(ctx))

    def _release(self) -> None:
        # Tokens are detached newest first, before the hop's own context.
        while self._tokens:
            otel_context.detach(self._tokens.pop())


def _attribute_key(name: str) -> str:
    return name if "." in name else f"fraudmesh.{name}"


@contextmanager
def hop(
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.SERVER,
) -> Iterator[Hop]:
    """A span for one hop under ``carrier``'s context; yields the carrier to pass on.

    ``carrier`` is what the previous hop passed (``None`` or ``{}``: the current
    context, a new trace at the ingress). The span is current inside the
    block, so client spans and log lines nest under it. ``attributes`` pass
    :func:`safe_attributes`; a :data:`PAYMENT_HASH_KEY` among them also goes
    into the baggage. An
    exception leaving the block is recorded on the span (status ERROR) and
    re-raised; ``asyncio.CancelledError`` too (a cancelled hop is not a
    success).
    """
    if not _STATE.exporting:
        with _light_hop(carrier, attributes) as light:
            yield light
        return
    parent = _parent_context(carrier)
    attributes = dict(attributes or {})
    payment_hash = attributes.get(PAYMENT_HASH_KEY)
    if payment_hash:
        parent = baggage.set_baggage(PAYMENT_HASH_KEY, payment_hash, parent)
    else:
        # Every hop span of a single payment carries its hash (Jaeger tag search).
        inherited = baggage.get_baggage(PAYMENT_HASH_KEY, parent)
        if inherited:
            attributes[PAYMENT_HASH_KEY] = str(inherited)
    token = otel_context.attach(parent)
    try:
        with _span(name, attributes, kind) as span:
            out: dict[str, str] = {}
            propagate.inject(out)
            current = Hop(span=span, carrier=out,
                          context=otel_context.get_current())
            try:
                yield current
            finally:
                current._release()
    finally:
        otel_context.detach(token)


Carriers = Mapping[str, str] | Sequence[Mapping[str, str] | None] | None


@dataclass
class Hops:
    """The hops of one call that serves the payments of several traces.

    Made by :func:`hops`: one hop span per distinct incoming carrier (one per
    trace), all covering the same shared work. :attr:`carrier` has the shape
    the call was given, for the next hop.
    """

    hops: list[Hop]
    of_payment: list[int] | None  # payment i -> index into hops; None: one carrier

    @property
    def carrier(self) -> Carriers:
        """One carrier (the call got one) or one per payment (it got a list)."""
        if self.of_payment is None:
            return self.hops[0].carrier
        return [self.hops[i].carrier for i in self.of_payment]

    def groups(self, n_payments: int) -> list[tuple[Hop, list[int]]]:
        """Each hop with the payments (indices, of ``n_payments``) it serves."""
        if self.of_payment is None:
            return [(self.hops[0], list(range(n_payments)))]
        return [(h, [i for i, g in enumerate(self.of_payment) if g == k])
                for k, h in enumerate(self.hops)]


@contextmanager
def hops(
    name: str,
    carrier: Carriers,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Hops]:
    """:func:`hop` for a call given one carrier, or one carrier per payment.

    Ingest sends payments of concurrent requests down the mesh together (see
    ``services.ingest``); each payment still belongs to its own request's
    trace, so such a call gets a list of carriers and makes a hop span for each
    distinct one, with ``fraudmesh.batch_size`` set to its payments' count. The
    first carrier's hop is current inside the block (client spans and log
    lines go there). ``attributes`` go on every hop.
    """
    if carrier is None or isinstance(carrier, Mapping):
        with hop(name, carrier, attributes) as single:
            yield Hops(hops=[single], of_payment=None)
        return
    index: dict[str, int] = {}
    of_payment: list[int] = []
    groups: list[Mapping[str, str] | None] = []
    for c in carrier:
        key = (c or {}).get("traceparent", "") + "|" + (c or {}).get("baggage", "")
        if key not in index or not key.strip("|"):
            index[key] = len(groups)
            groups.append(c)
        of_payment.append(index[key])
    sizes = [of_payment.count(g) for g in range(len(groups))]
    with ExitStack() as stack:
        made: list[Hop] = [None] * len(groups)  # type: ignore[list-item]
        # Entered last, the first group's hop is the current one.
        for g in reversed(range(len(groups))):
            made[g] = stack.enter_context(hop(
                name, groups[g],
                {**(attributes or {}), "fraudmesh.batch_size": sizes[g]}))
        yield Hops(hops=made, of_payment=of_payment)


@contextmanager
def route_hop(
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Hop]:
    """:func:`hop` for an HTTP route handler, without a span of its own.

    At the ingress, FastAPI's telemetry has already made the request's HTTP
    server span (``POST /v1/score``, continuing a caller's ``traceparent``) and
    made it current: that span takes the hop's attributes and is the parent of
    the next hop, so a request is one span here rather than two. An exception
    leaving the block is recorded on it, as :func:`hop` does. Without such a
    span (nothing exported, or no HTTP server span of the carrier's trace) this
    is ``hop(name, carrier, attributes)``.
    """
    server = trace.get_current_span()
    if not (_STATE.exporting and server.is_recording()
            and _continues(carrier, server.get_span_context())):
        with hop(name, carrier, attributes) as plain:
            yield plain
        return
    attributes = dict(attributes or {})
    ctx = _parent_context(carrier)
    payment_hash = attributes.get(PAYMENT_HASH_KEY)
    if payment_hash:
        ctx = baggage.set_baggage(PAYMENT_HASH_KEY, payment_hash, ctx)
    token = otel_context.attach(ctx)
    try:
        if attributes:
            server.set_attributes(safe_attributes(attributes))
        out: dict[str, str] = {}
        propagate.inject(out)
        current = Hop(span=server, carrier=out,
                      context=otel_context.get_current())
        try:
            yield current
        except BaseException as exc:
            server.record_exception(exc)
            server.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            current._release()
    finally:
        otel_context.detach(token)


def _continues(carrier: Mapping[str, str] | None, local: trace.SpanContext) -> bool:
    """Whether ``local`` (a server span) is of the trace ``carrier`` names; a
    carrier without a valid ``traceparent`` names none, so any span will do."""
    if not local.is_valid or local.is_remote:
        return False
    remote = trace.get_current_span(propagate.extract(carrier or {})).get_span_context()
    return not remote.is_valid or remote.trace_id == local.trace_id


def _parent_context(carrier: Mapping[str, str] | None) -> otel_context.Context:
    """The context a recorded hop starts under.

    No carrier: the current context (a new trace when there is none). A carrier
    of the trace that is already current here (FastAPI's own HTTP server span
    continued the caller's ``traceparent``): the current context, so the hop
    nests under the local span, with the carrier's baggage. Else the carrier's.
    """
    current = otel_context.get_current()
    if not carrier:
        return current
    extracted = propagate.extract(carrier)
    local = trace.get_current_span(current).get_span_context()
    remote = trace.get_current_span(extracted).get_span_context()
    if not (local.is_valid and remote.is_valid and local.trace_id == remote.trace_id):
        return extracted
    for key, value in baggage.get_all(extracted).items():
        current = baggage.set_baggage(key, value, current)
    return current


_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE = "0" * 32
_INVALID_PARENT = "0" * 16


@contextmanager
def _light_hop(
    carrier: Mapping[str, str] | None, attributes: Mapping[str, Any] | None
) -> Iterator[Hop]:
    """:func:`hop` without export: W3C ids made and carried, nothing recorded.

    Same carrier format as the SDK path (``traceparent``, ``tracestate`` and
    ``baggage`` passed on), so processes with and without export interoperate;
    it skips the SDK's span machinery, which is most of the cost of a hop.
    """
    # A new root is marked sampled: a later process that does export (another
    # configuration) still records its part of the trace.
    trace_id, flags, inbound_baggage = None, "01", None
    if carrier:
        match = _TRACEPARENT_RE.fullmatch(carrier.get("traceparent", "").strip())
        if match and match[1] != _INVALID_TRACE and match[2] != _INVALID_PARENT:
            trace_id, flags = int(match[1], 16), match[3]
        inbound_baggage = carrier.get("baggage")
    else:
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            trace_id, flags = current.trace_id, f"{current.trace_flags:02x}"
    trace_id = trace_id or random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    span = trace.NonRecordingSpan(
        trace.SpanContext(trace_id, span_id, False, trace.TraceFlags(int(flags, 16)))
    )
    out = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags}"}
    if carrier and carrier.get("tracestate"):
        out["tracestate"] = carrier["tracestate"]

    payment_hash = (attributes or {}).get(PAYMENT_HASH_KEY)
    if not carrier:
        payment_hash = payment_hash or current_payment_hash()
    elif not payment_hash and inbound_baggage:
        payment_hash = _baggage_member(inbound_baggage, PAYMENT_HASH_KEY)
    if inbound_baggage:
        out["baggage"] = inbound_baggage
    ctx = trace.set_span_in_context(span)
    if payment_hash:
        ctx = baggage.set_baggage(PAYMENT_HASH_KEY, payment_hash, ctx)
        if _baggage_member(inbound_baggage or "", PAYMENT_HASH_KEY) is None:
            member = f"{PAYMENT_HASH_KEY}={payment_hash}"
            out["baggage"] = (
                f"{inbound_baggage},{member}" if inbound_baggage else member
            )
    token = otel_context.attach(ctx)
    current = Hop(span=span, carrier=out, context=otel_context.get_current())
    try:
        yield current
    finally:
        current._release()
        otel_context.detach(token)


def _baggage_member(header: str, key: str) -> str | None:
    for member in header.split(","):
        name, _, value = member.partition("=")
        if name.strip() == key:
            return value.split(";", 1)[0].strip() or None
    return None


@contextmanager
def client_span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A client span (Redis, Feast, Stripe) under the current span.

    Errors are recorded as in :func:`hop`. Attributes pass
    :func:`safe_attributes`. Without export it yields the current span and
    costs next to nothing.
    """
    if not _STATE.exporting:
        yield trace.get_current_span()
        return
    with _span(name, attributes, SpanKind.CLIENT) as span:
        yield span


@contextmanager
def _span(
    name: str, attributes: Mapping[str, Any] | None, kind: SpanKind
) -> Iterator[Span]:
    with tracer().start_as_current_span(
        name,
        kind=kind,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if attributes and span.is_recording():
            span.set_attributes(safe_attributes(attributes))
        try:
            yield span
        except BaseException as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def current_trace_id() -> str | None:
    """The 32-hex trace id of the current span, None outside any span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else None


def current_payment_hash() -> str | None:
    """The hashed payment id of the current hop (from the baggage), or None."""
    value = baggage.get_baggage(PAYMENT_HASH_KEY)
    return None if value is None else str(value)
