"""Ingress: the HTTP API of the mesh (FastAPI on Ray Serve).

Routes:

- ``POST /v1/score``: one payment (a Stripe-PaymentIntent-shaped object) ->
  a ScoreResponse.
- ``POST /v1/score/batch``: ``{"payments": [...]}`` (1..MAX_BATCH) ->
  ``{"results": [ScoreResponse, ...]}`` in request order; one call per hop for
  the whole batch.
- ``POST /v1/labels``: ``{"labels": [Label, ...]}`` -> ``{"accepted": n}``.
- ``POST /v1/webhooks/stripe``: Stripe's signed events (raw bytes to Webhooks);
  ``POST /v1/reviews/{payment_id}``: an analyst's verdict on a held payment.
- ``GET /healthz``: 200 once every deployment of the application is running and
  Redis answers, else 503.
- ``GET /metrics``: Prometheus text of this ingress replica.

Bad input answers 422 ``{"error": "invalid_request", "errors": [{"field",
"message"}]}`` naming every bad field; nothing of a rejected batch is scored. A
caller's W3C ``traceparent`` header becomes the parent of the payment's trace.
"""

import asyncio
import json
import logging
import time
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import TypeAdapter, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from fraudmesh.errors import FraudmeshError, HistoryStoreError
from fraudmesh.replica import settle
from fraudmesh.schemas import Identifier
from fraudmesh.tracing import (
    payment_attributes,
    route_hop,
    setup_tracing,
    shutdown_tracing,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
# A full batch of 1,000 payments is well under 1 MiB; 4 MiB leaves room for
# metadata and refuses what only a mistake or an attack sends.
MAX_BODY_BYTES = 4 * 1024 * 1024
_HEALTH_CACHE_S = 1.0

# FastAPI's own telemetry keeps the HTTP server span (`POST /v1/score`, which
# continues a caller's traceparent); each route's hop is that span
# (fraudmesh.tracing.route_hop). Its per-operation spans (endpoint,
# dependencies) would add two spans per payment that say nothing the hop spans
# don't, and its metrics and logs are off (GET /metrics is ours).
# No schema or docs pages (the README documents the API), and a path with a
# trailing slash is not redirected: it is no route (404), like any other.
api = FastAPI(
    title="fraudmesh",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    redirect_slashes=False,
    telemetry={"operation_spans": False, "metrics": False, "logs": False},
)



class _Metrics:
    """The ingress's Prometheus metrics, declared once per process.

    Built lazily (see :func:`_metrics`): the route methods are pickled by value
    when the class is decorated, and metric objects hold locks.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.payments = Counter(
            "fraudmesh_payments_total",
            "Payments scored, by decision (a repeat of a payment id is not "
            "counted again: see fraudmesh_duplicate_payments_total).",
            ["decision"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "fraudmesh_duplicate_payments_total",
            "Repeats of a payment id answered with the earlier decision.",
            registry=self.registry,
        )
        self.invalid = Counter(
            "fraudmesh_invalid_requests_total",
            "Requests refused as bad input (422, or 413 for a body too large).",
            ["route"],
            registry=self.registry,
        )
        self.failed = Counter(
            "fraudmesh_failed_requests_total",
            "Requests answered 5xx.",
            ["route"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fraudmesh_request_latency_seconds",
            "Time from request to response inside the ingress.",
            ["route"],
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5),
            registry=self.registry,
        )


@lru_cache(maxsize=1)
def _metrics() -> _Metrics:
    return _Metrics()


def _invalid(route: str, errors: list[dict]) -> JSONResponse:
    _metrics().invalid.labels(route).inc()
    return JSONResponse(
        status_code=422, content={"error": "invalid_request", "errors": errors}
    )


def _carrier(request: Request) -> dict[str, str]:
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = request.headers.get(name)
        if value:
            carrier[name] = value
    return carrier


@lru_cache(maxsize=1)
def _identifier() -> TypeAdapter:
    return TypeAdapter(Identifier)


def _payment_id(value: str) -> tuple[str, list[dict] | None]:
    """A payment id from the URL path, checked as a body's ``id`` is (the
    message never repeats the id)."""
    try:
        return _identifier().validate_python(value), None
    except ValidationError as exc:
        return value, [{"field": "payment_id", "message": exc.errors()[0]["msg"]}]


def _score_attributes(bodies: list, batch: bool) -> dict[str, Any]:
    """Span attributes of a score request: batch size, and for one payment its
    hashed id (carried in the trace baggage to every later hop and log line)."""
    attributes: dict[str, Any] = {"fraudmesh.batch_size": len(bodies)}
    payment_id = None if batch else bodies[0].get("id")
    if isinstance(payment_id, str) and payment_id:
        attributes.update(payment_attributes(payment_id))
    return attributes


class BodyTooLarge(Exception):
    """A request body above MAX_BODY_BYTES (answered 413)."""


async def _read_body(request: Request) -> bytes:
    """The body's bytes; BodyTooLarge beyond MAX_BODY_BYTES, judged by
    Content-Length before reading when the client sends it, else as it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise BodyTooLarge
    return bytes(raw)


async def _json_body(request: Request) -> tuple[Any, list[dict] | None]:
    """The parsed JSON body, or the 422 errors naming ``body`` (BodyTooLarge
    as :func:`_read_body`)."""
    raw = await _read_body(request)
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [{"field": "body", "message": f"not valid JSON ({exc})"}]
    except ValueError:  # an integer of more digits than Python converts
        return None, [{"field": "body", "message": "holds a number too long to "
                       "read (over 4,300 digits)"}]
    except RecursionError:
        return None, [{"field": "body", "message": "JSON nested too deeply"}]


_ROUTES = {
    "/v1/score": "score",
    "/v1/score/batch": "batch",
    "/v1/labels": "labels",
    "/v1/webhooks/stripe": "webhooks",
}


def _route(request: Request) -> str:
    path = request.url.path
    return _ROUTES.get(path, "reviews" if path.startswith("/v1/reviews/") else "other")


@api.exception_handler(BodyTooLarge)
async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
    _metrics().invalid.labels(_route(request)).inc()
    return JSONResponse(
        status_code=413,
        content={
            "error": "too_large",
            "errors": [
                {"field": "body", "message": f"larger than {MAX_BODY_BYTES} bytes"}
            ],
        },
    )


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (no such route, a method the route does not
    take) in this API's error shape rather than FastAPI's ``{"detail"}``."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: f"no route {request.url.path}",
               405: f"{request.method} is not allowed here"}
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": codes.get(exc.status_code, "http_error"),
                 "message": message.get(exc.status_code, str(exc.detail))},
        headers=getattr(exc, "headers", None),
    )


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any other failure: a JSON 500, counted; the log names the error type
    only (its message could quote the request)."""
    _metrics().failed.labels(_route(request)).inc()
    logger.error("unexpected %s on %s", type(exc).__name__, _route(request))
    return JSONResponse(
        status_code=500,
        content={"error": "internal", "message": "unexpected error; see the log"},
    )


class _Contained:
    """ASGI middleware: a failure no route handled is answered here with
    :func:`_unexpected` and goes no further. Starlette's own last-resort
    handler answers the same but then raises the exception again to the
    server, which logs its traceback and message (where a request's data can
    appear). A failure after the answer has started is left to the server,
    which can only close the connection."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            response = await _unexpected(Request(scope), exc)
            await response(scope, receive, send)


api.add_middleware(_Contained)


def _list_field(body: Any, name: str) -> tuple[list | None, list[dict] | None]:
    if not isinstance(body, dict) or not isinstance(body.get(name), list):
        return None, [{"field": name, "message": f"must be a list of {name}"}]
    items = body[name]
    if not 1 <= len(items) <= MAX_BATCH:
        return None, [
            {
                "field": name,
                "message": f"holds {len(items)} items; send 1 to {MAX_BATCH}",
            }
        ]
    return items, None


def _count(results) -> None:
    """Payments scored, by decision; repeats on their own counter."""
    metrics = _metrics()
    for r in results:
        if r.get("duplicate"):
            metrics.duplicates.inc()
        else:
            metrics.payments.labels(r["decision"]).inc()


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(
        self, ingest: DeploymentHandle, webhooks: DeploymentHandle | None = None
    ) -> None:
        setup_tracing("ingress")
        _metrics()
        self._ingest = ingest
        self._webhooks = webhooks
        self._ready_at = 0.0
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    async def _score(self, route: str, bodies: list, batch: bool, request: Request):
        started = time.perf_counter()
        attributes = _score_attributes(bodies, batch)
        with route_hop("ingress.score", _carrier(request), attributes) as h:
            try:
                answer = await self._ingest.score.remote(
                    bodies, batch, carrier=h.carrier
                )
            except HistoryStoreError as exc:
                # Ray hands a deployment's exception on as a RayTaskError that
                # is also a HistoryStoreError; its text is Ray's traceback, with
                # the replica's pid and address. The log gets ours (it names the
                # store's address); the client, that the store is down.
                _metrics().failed.labels(route).inc()
                logger.warning("scoring failed: %s",
                               getattr(exc, "cause", None) or exc)
                return JSONResponse(
                    status_code=503,
                    content={"error": "unavailable",
                             "message": "the history store (Redis) does not "
                             "answer; retry shortly"},
                )
        if "id_reused" in answer:
            _metrics().invalid.labels(route).inc()
            content = {
                "error": "id_reused",
                "errors": [
                    {"field": f"payments[{i}].id" if batch else "id",
                     "message": "was used before for a different payment "
                     "(customer, terminal, amount, currency or time)"}
                    for i in answer["id_reused"]
                ],
            }
            if batch:  # the batch's other payments were scored: their answers
                content["results"] = answer["results"]
                _count(r for r in answer["results"] if r is not None)
            return JSONResponse(status_code=409, content=content)
        if "pending" in answer:
            return JSONResponse(
                status_code=409,
                content={
                    "error": "duplicate_in_progress",
                    "message": f"payment {answer['pending']} is still being "
                    "scored; retry in a moment",
                },
            )
        if "errors" in answer:
            return _invalid(route, answer["errors"])
        results = answer["results"]
        _count(results)
        _metrics().latency.labels(route).observe(time.perf_counter() - started)
        return JSONResponse(results[0] if not batch else {"results": results})

    @api.post("/v1/score")
    async def score(self, request: Request):
        body, errors = await _json_body(request)
        if errors:
            return _invalid("score", errors)
        if not isinstance(body, dict):
            error = {"field": "body", "message": "must be an object"}
            return _invalid("score", [error])
        return await self._score("score", [body], False, request)

    @api.post("/v1/score/batch")
    async def score_batch(self, request: Request):
        body, errors = await _json_body(request)
        payments, errors = (None, errors) if errors else _list_field(body, "payments")
        if errors:
            return _invalid("batch", errors)
        return await self._score("batch", payments, True, request)

    @api.post("/v1/labels")
    async def labels(self, request: Request):
        body, errors = await _json_body(request)
        labels, errors = (None, errors) if errors else _list_field(body, "labels")
        if errors:
            return _invalid("labels", errors)
        with route_hop("ingress.labels", _carrier(request)) as h:
            answer = await self._ingest.record_labels.remote(labels, carrier=h.carrier)
        if "errors" in answer:
            return _invalid("labels", answer["errors"])
        return JSONResponse(answer)

    @api.post("/v1/webhooks/stripe")
    async def stripe_webhook(self, request: Request):
        """Stripe's events: the raw body bytes and signature go to Webhooks.

        The body is passed on exactly as received: the signature covers those
        bytes, never a re-serialised JSON.
        """
        if self._webhooks is None:
            return JSONResponse(
                status_code=404,
                content={"error": "not_configured", "message": "no Webhooks"},
            )
        body = await _read_body(request)
        signature = request.headers.get("Stripe-Signature")
        with route_hop("ingress.stripe_webhook", _carrier(request)) as h:
            answer = await self._webhooks.receive.remote(
                body, signature, carrier=h.carrier
            )
        return JSONResponse(status_code=answer["status_code"], content=answer["body"])

    @api.post("/v1/reviews/{payment_id}")
    async def review(self, payment_id: str, request: Request):
        """An analyst's verdict on a payment held for review.

        Body ``{"verdict": "approve" | "fraud"}``: approve captures the held
        payment, fraud cancels it (reason fraudulent); both become labels.
        """
        payment_id, errors = _payment_id(payment_id)
        if errors:
            return _invalid("reviews", errors)
        body, errors = await _json_body(request)
        verdict = body.get("verdict") if isinstance(body, dict) else None
        if errors or verdict not in ("approve", "fraud"):
            return _invalid(
                "reviews",
                errors
                or [{"field": "verdict", "message": "must be 'approve' or 'fraud'"}],
            )
        if self._webhooks is None:
            return JSONResponse(
                status_code=404,
                content={"error": "not_configured", "message": "no Webhooks"},
            )
        with route_hop("ingress.review", _carrier(request)) as h:
            answer = await self._webhooks.review.remote(
                payment_id, verdict == "approve", carrier=h.carrier
            )
        return JSONResponse(answer)

    @api.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self):
        if time.monotonic() - self._ready_at < _HEALTH_CACHE_S:
            return JSONResponse({"status": "ok"})
        problem = await self._not_ready()
        if problem:
            return JSONResponse(
                status_code=503, content={"status": "starting", "detail": problem}
            )
        self._ready_at = time.monotonic()
        return JSONResponse({"status": "ok"})

    async def _not_ready(self) -> str | None:
        """Why the mesh is not ready yet, or None when every deployment runs."""
        app_name = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(app_name)
        if app is None or app.status != "RUNNING":
            return f"application {app_name} is {getattr(app, 'status', 'missing')}"
        for name, deployment in app.deployments.items():
            if deployment.status != "HEALTHY":
                return f"deployment {name} is {deployment.status}"
        try:
            await asyncio.wait_for(self._ingest.ping.remote(), timeout=5.0)
        except (TimeoutError, FraudmeshError, OSError) as exc:
            return f"Ingest cannot reach Redis ({type(exc).__name__})"
        return None

    @api.get("/metrics")
    async def metrics(self):
        registry = _metrics().registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
