"""A real OTLP/HTTP trace receiver for tests (the thing Jaeger's port 4318 is).

An aiohttp server on a free loopback port, in a background thread of the test
process, accepts ``POST /v1/traces`` (``application/x-protobuf``, optionally
gzip), decodes each ``ExportTraceServiceRequest`` with opentelemetry-proto and
keeps the spans. The exporter in every Ray Serve replica sends to it when the
``mesh_env`` fixture points ``OTEL_EXPORTER_OTLP_ENDPOINT`` at it.

    receiver = OtlpReceiver().start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    ...
    spans = receiver.wait_for(lambda s: len(s) >= 6, timeout_s=20)
    receiver.stop()
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer"}
_KINDS[5] = "consumer"
_STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, with ids as hex strings."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    status: str
    status_message: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return None if which is None else getattr(v, which)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        kind=_KINDS.get(s.kind, str(s.kind)),
                        status=_STATUS.get(s.status.code, str(s.status.code)),
                        status_message=s.status.message,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes),
                        resource=resource,
                        events=[(e.name, _attrs(e.attributes)) for e in s.events],
                    )
                )
    return spans


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OtlpReceiver:
    """The receiver; thread-safe reads of what arrived."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self._spans: list[ReceivedSpan] = []
        self._bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds
        ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        # Decoded lazily by readers: the handler stays cheap, so a session
        # that never looks at spans pays almost nothing for them.
        with self._arrived:
            self._bodies.append(body)
            self.requests += 1
            self._arrived.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def _decode_pending(self) -> None:
        # Caller holds self._lock.
        for body in self._bodies:
            self._spans.extend(decode(body))
        self._bodies.clear()

    async def _count(self, request: web.Request) -> web.Response:
        with self._lock:
            self._decode_pending()
            return web.json_response(
                {"spans": len(self._spans), "requests": self.requests}
            )

    def start(self) -> OtlpReceiver:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v1/traces", self._handle)
            app.router.add_get("/count", self._count)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="otlp-receiver", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"OTLP receiver did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            self._decode_pending()
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._bodies.clear()
            self._spans.clear()

    def wait_for(
        self,
        predicate: Callable[[list[ReceivedSpan]], bool],
        timeout_s: float = 30.0,
    ) -> list[ReceivedSpan]:
        """Spans once ``predicate(spans)`` holds; AssertionError after timeout."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            self._decode_pending()
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({s.name for s in self._spans})
                    raise AssertionError(
                        f"spans did not arrive within {timeout_s} s; "
                        f"{len(self._spans)} received: {names}"
                    )
                self._arrived.wait(min(left, 0.5))
                self._decode_pending()
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]


@pytest.fixture(scope="session")
def otlp_receiver() -> Any:
    """A real OTLP/HTTP receiver for the whole session (started before Ray)."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def main() -> None:
    """``python -m tests.otlp_receiver PORT``: serve until killed (benchmarks run
    it apart from the process they measure); ``GET /count`` answers the counts.
    """
    import sys

    receiver = OtlpReceiver(int(sys.argv[1])).start()
    print(receiver.endpoint, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
