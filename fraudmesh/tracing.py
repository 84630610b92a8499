"""CONTRACT (first cut), to be completed by the tracing work (issue 5).

One payment is one trace. Ray Serve does not carry OpenTelemetry context across
DeploymentHandle calls, so every hop receives the W3C context explicitly as a
``carrier`` (a ``dict[str, str]`` holding ``traceparent``/``tracestate``) and
passes on the carrier it gets back from :func:`hop`.

    setup_tracing("features")                      # once per process, idempotent
    with hop("features.lookup", carrier, {"fraudmesh.batch_size": 3}) as h:
        ...                                        # h.span is the server span
        await next_handle.method.remote(..., carrier=h.carrier)
    with client_span("redis.history.read"):        # client span for I/O
        ...

Attribute rules: never a card number, email, IP address or secret; payment ids
only through :func:`hash_id`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_TRACER_NAME = "fraudmesh"


def setup_tracing(service_name: str, **resource_attributes: Any) -> None:
    """Configure the SDK for this process once (no-op export without an endpoint)."""
    # Completed by the tracing work: OTLP exporter from OTEL_* variables,
    # parent-based ratio sampling, resource attributes.
    return None


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def hash_id(value: str) -> str:
    """A stable, non-reversible short digest for ids placed in span attributes."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass
class Hop:
    span: Span
    carrier: dict[str, str] = field(default_factory=dict)

    @property
    def trace_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def hop(
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.SERVER,
) -> Iterator[Hop]:
    """A span for one hop under ``carrier``'s context; yields the carrier to pass on.

    An exception leaving the block is recorded on the span (status error) and
    re-raised.
    """
    parent = propagate.extract(dict(carrier or {}))
    with tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        out: dict[str, str] = {}
        propagate.inject(out)
        try:
            yield Hop(span=span, carrier=out)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


@contextmanager
def client_span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A client span (Redis, Feast, Stripe) under the current span."""
    with tracer().start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=dict(attributes or {})
    ) as span:
        yield span


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def shutdown_tracing() -> None:
    """Flush pending spans (force_flush) and shut the provider down."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()
