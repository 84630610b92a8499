"""Unit tests of fraudmesh.tracing and fraudmesh.logging (no Ray, no cluster).

Spans are collected with the SDK's own in-memory exporter where the test is
about span structure, and sent over real OTLP/HTTP to the test receiver where
the test is about export.
"""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from fraudmesh import tracing
from fraudmesh.errors import ConfigError
from fraudmesh.logging import JsonFormatter, TraceContextFilter
from tests.otlp_receiver import OtlpReceiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def memory() -> InMemorySpanExporter:
    """A recording provider installed as fraudmesh's for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._install(provider, exporting=True)
    yield exporter
    tracing._uninstall()


def _processors(provider: TracerProvider) -> tuple:
    return provider._active_span_processor._span_processors


# ---------------------------------------------------------------- setup


def test_no_endpoint_means_no_exporter_and_no_recording() -> None:
    provider, exporting = tracing._build_provider("ingest", {}, {})
    assert not exporting
    assert _processors(provider) == ()
    assert provider.sampler is ALWAYS_OFF
    span = provider.get_tracer("t").start_span("x")
    # Not recorded, yet it has a real trace id for responses and logs.
    assert not span.is_recording()
    assert span.get_span_context().is_valid


def test_http_endpoint_installs_batch_processor_with_http_exporter() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    provider, exporting = tracing._build_provider("ingest", {}, env)
    assert exporting
    (processor,) = _processors(provider)
    assert type(processor).__name__ == "BatchSpanProcessor"
    exporter = processor._batch_processor._exporter._inner
    assert type(exporter).__module__.endswith("proto.http.trace_exporter")
    assert isinstance(provider.sampler, ParentBased)
    provider.shutdown()


def test_grpc_protocol_selects_grpc_exporter() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    exporter = tracing._build_exporter(env)
    assert type(exporter).__module__.endswith("proto.grpc.trace_exporter")
    exporter.shutdown()


def test_unknown_protocol_is_a_config_error_naming_the_variable() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL.*http/json"):
        tracing._build_exporter(env)


def test_resource_names_service_and_model_version(monkeypatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    resource = tracing._build_resource("model", {"model_version": "v7"}, {})
    assert resource.attributes["service.name"] == "model"
    assert resource.attributes["service.namespace"] == "fraudmesh"
    assert resource.attributes["fraudmesh.model_version"] == "v7"


def test_otel_service_name_overrides_code(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fraudmesh-staging")
    env = {"OTEL_SERVICE_NAME": "fraudmesh-staging"}
    resource = tracing._build_resource("model", {}, env)
    assert resource.attributes["service.name"] == "fraudmesh-staging"


def test_sampler_from_environment_is_honoured(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = tracing._build_sampler({"OTEL_TRACES_SAMPLER": "x"})
    assert "0.25" in sampler.get_description()
    default = tracing._build_sampler({})
    assert "TraceIdRatioBased{1.0}" in default.get_description()


# ---------------------------------------------------------------- propagation


def test_hops_across_carriers_make_one_trace_with_a_parent_chain(memory) -> None:
    with tracing.hop("ingress.score", None) as ingress:
        first = ingress.carrier
    # Each later hop runs "elsewhere": only the carrier links them.
    with tracing.hop("ingest.normalise", first) as ingest:
        pass
    with tracing.hop("features.lookup", ingest.carrier) as features:
        pass

    spans = {s.name: s for s in memory.get_finished_spans()}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert spans["ingress.score"].parent is None
    assert spans["ingest.normalise"].parent.span_id == (
        spans["ingress.score"].context.span_id
    )
    assert spans["features.lookup"].parent.span_id == (
        spans["ingest.normalise"].context.span_id
    )
    assert spans["features.lookup"].kind is SpanKind.SERVER
    assert features.trace_id == ingress.trace_id
    assert "traceparent" in first


def test_a_callers_traceparent_header_is_continued(memory) -> None:
    headers = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01",
        "content-type": "application/json",
    }
    carrier = tracing.carrier_from_headers(headers)
    assert set(carrier) == {"traceparent"}
    with tracing.hop("ingress.score", carrier) as h:
        assert h.trace_id == CALLER_TRACE
    (span,) = memory.get_finished_spans()
    assert format(span.parent.span_id, "016x") == CALLER_PARENT


def test_a_garbled_traceparent_starts_a_new_trace(memory) -> None:
    with tracing.hop("ingress.score", {"traceparent": "00-nonsense"}) as h:
        assert h.trace_id not in (None, CALLER_TRACE)


def test_payment_hash_travels_in_the_baggage(memory) -> None:
    attrs = tracing.payment_attributes("pi_123")
    with tracing.hop("ingress.score", None, attrs) as ingress:
        pass
    with tracing.hop("policy.decide", ingress.carrier):
        assert tracing.current_payment_hash() == tracing.hash_id("pi_123")
    assert tracing.current_payment_hash() is None
    for span in memory.get_finished_spans():
        assert span.attributes[tracing.PAYMENT_HASH_KEY] == tracing.hash_id("pi_123")


@pytest.mark.parametrize(
    ("score", "bucket"), [(0.0, "0.0-0.1"), (0.42, "0.4-0.5"), (1.0, "0.9-1.0")]
)
def test_score_bucket(score: float, bucket: str) -> None:
    assert tracing.score_bucket(score) == bucket


def test_client_span_nests_under_the_hop(memory) -> None:
    with (
        tracing.hop("features.lookup", None),
        tracing.client_span("redis.history.read", {"fraudmesh.batch_size": 2}),
    ):
        pass
    client, server = memory.get_finished_spans()
    assert client.kind is SpanKind.CLIENT
    assert client.parent.span_id == server.context.span_id
    assert client.attributes["fraudmesh.batch_size"] == 2


def test_without_export_trace_ids_are_still_carried() -> None:
    provider, _ = tracing._build_provider("ingress", {}, {})
    tracing._install(provider, exporting=False)
    try:
        with tracing.hop("ingress.score", None) as first:
            assert not first.span.is_recording()
            assert tracing.current_trace_id() == first.trace_id
        with tracing.hop("ingest.normalise", first.carrier) as second:
            assert second.trace_id == first.trace_id
    finally:
        tracing._uninstall()


@pytest.fixture
def light() -> None:
    """tracing set up without an endpoint (the light path)."""
    provider, _ = tracing._build_provider("ingress", {}, {})
    tracing._install(provider, exporting=False)
    yield
    tracing._uninstall()


def test_light_hops_carry_payment_hash_and_callers_context(light) -> None:
    carrier = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01",
        "tracestate": "vendor=1",
        "baggage": "tenant=acme",
    }
    with tracing.hop("ingress.score", carrier, tracing.payment_attributes("pi_1")) as a:
        assert a.trace_id == CALLER_TRACE
        assert tracing.current_payment_hash() == tracing.hash_id("pi_1")
    assert a.carrier["tracestate"] == "vendor=1"
    assert a.carrier["traceparent"].endswith("-01")
    assert a.carrier["baggage"].startswith("tenant=acme,")
    with tracing.hop("ingest.score", a.carrier) as b:
        assert tracing.current_payment_hash() == tracing.hash_id("pi_1")
        with tracing.client_span("redis.history.read") as span:
            assert not span.is_recording()
            assert tracing.current_trace_id() == CALLER_TRACE
    assert b.carrier["traceparent"].split("-")[2] != CALLER_PARENT


def test_light_and_recording_processes_share_one_trace(light, memory) -> None:
    # `memory` installs a recording provider after `light`: the second process.
    tracing._uninstall()
    provider, _ = tracing._build_provider("ingress", {}, {})
    tracing._install(provider, exporting=False)
    with tracing.hop("ingress.score", None, tracing.payment_attributes("pi_2")) as a:
        pass
    recording = TracerProvider()
    recording.add_span_processor(SimpleSpanProcessor(memory))
    tracing._install(recording, exporting=True)
    with tracing.hop("ingest.score", a.carrier) as b:
        assert tracing.current_payment_hash() == tracing.hash_id("pi_2")
    assert b.trace_id == a.trace_id
    (span,) = memory.get_finished_spans()
    assert format(span.parent.span_id, "016x") == a.carrier["traceparent"][36:52]
    assert span.attributes[tracing.PAYMENT_HASH_KEY] == tracing.hash_id("pi_2")


# ---------------------------------------------------------------- errors


def test_an_error_is_recorded_with_status_error_and_reraised(memory) -> None:
    with (
        pytest.raises(KeyError),
        tracing.hop("model.score", None),
        tracing.client_span("torch.predict"),
    ):
        raise KeyError("feature missing")
    for span in memory.get_finished_spans():
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "KeyError"
        assert span.events[0].name == "exception"


def test_a_successful_hop_leaves_status_unset(memory) -> None:
    with tracing.hop("policy.decide", None) as h:
        h.set(decision="block", score_bucket="0.9-1.0")
    (span,) = memory.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["fraudmesh.decision"] == "block"


# ---------------------------------------------------------------- scrubbing


@pytest.mark.parametrize(
    "key",
    [
        "card.number",
        "fraudmesh.email",
        "customer_email",
        "client.ip",
        "ip_address",
        "stripe.api_key",
        "webhook.secret",
        "http.request.header.authorization",
        "stripe.signature",
        "billing.address",
    ],
)
def test_forbidden_keys_are_dropped(key: str) -> None:
    assert tracing.safe_attributes({key: "x", "fraudmesh.decision": "allow"}) == {
        "fraudmesh.decision": "allow"
    }


@pytest.mark.parametrize(
    ("value", "leak"),
    [
        ("customer jane.doe@example.com failed", "jane.doe@example.com"),
        ("pan 4242 4242 4242 4242 used", "4242 4242 4242 4242"),
        ("from 203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("key sk_test_51AbCdEf", "sk_test_51AbCdEf"),
        ("whsec_abc123", "whsec_abc123"),
        ("pi_12345 blocked", "pi_12345"),
    ],
)
def test_forbidden_values_are_masked(value: str, leak: str) -> None:
    cleaned = tracing.safe_attributes({"fraudmesh.note": value})["fraudmesh.note"]
    assert leak not in cleaned


def test_harmless_values_are_kept() -> None:
    attrs = {
        "fraudmesh.decision": "challenge",
        "fraudmesh.score_bucket": "0.4-0.5",
        "fraudmesh.reason": "card_country_mismatch",
        "fraudmesh.model_version": "20260101T000000-abc",
        "fraudmesh.batch_size": 64,
        "fraudmesh.payment_id_hash": tracing.hash_id("pi_1"),
        "fraudmesh.amount_minor": 1234567890123,
        "server.address": "redis.internal",
    }
    assert tracing.safe_attributes(attrs) == attrs
    assert tracing.find_forbidden(attrs) == []


def test_exporter_scrubs_what_bypassed_the_helper() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(tracing._ScrubbingExporter(exporter))
    )
    tracing._install(provider, exporting=True)
    try:
        with pytest.raises(ValueError), tracing.hop("ingest.normalise", None) as h:
            h.span.set_attribute("customer.email", "a@b.example")
            h.span.set_attribute("net.peer.name", "10.1.2.3")
            raise ValueError("bad email a@b.example for pi_99")
    finally:
        tracing._uninstall()
    (span,) = exporter.get_finished_spans()
    assert "customer.email" not in span.attributes
    assert span.attributes["net.peer.name"] == tracing.REDACTED
    message = span.events[0].attributes["exception.message"]
    assert "a@b.example" not in message and "pi_99" not in message


# ---------------------------------------------------------------- logging


def test_log_records_carry_trace_payment_and_deployment(memory) -> None:
    context_filter = TraceContextFilter(deployment="Policy")
    attrs = tracing.payment_attributes("pi_7")
    with tracing.hop("policy.decide", None, attrs) as h:
        record = logging.LogRecord("services.policy", logging.WARNING, "", 0,
                                   "decided %s", ("block",), None)  # fmt: skip
        assert context_filter.filter(record)
    assert record.trace_id == h.trace_id
    assert record.payment_hash == tracing.hash_id("pi_7")
    assert record.deployment == "Policy"

    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "decided block"
    assert line["trace_id"] == h.trace_id
    assert line["level"] == "WARNING"


def test_log_records_outside_a_trace_get_placeholders() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    TraceContextFilter().filter(record)
    assert (record.trace_id, record.payment_hash, record.deployment) == ("-",) * 3


# ---------------------------------------------------------------- export


def test_spans_reach_a_real_otlp_http_receiver_and_flush_on_shutdown() -> None:
    receiver = OtlpReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            # A long schedule delay: only the shutdown flush can deliver.
            mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
            provider, exporting = tracing._build_provider(
                "ingress", {"model_version": "v1"}, env
            )
        assert exporting
        tracing._install(provider, exporting=True)
        with tracing.hop("ingress.score", None, tracing.payment_attributes("pi_5")):
            pass
        tracing.shutdown_tracing()
        tracing.shutdown_tracing()  # twice is fine
        (span,) = receiver.wait_for(lambda s: len(s) >= 1, timeout_s=10)
    finally:
        tracing._uninstall()
        receiver.stop()
    assert span.name == "ingress.score"
    assert span.kind == "server"
    assert span.service == "ingress"
    assert span.resource["fraudmesh.model_version"] == "v1"
    assert span.attributes[tracing.PAYMENT_HASH_KEY] == tracing.hash_id("pi_5")


@pytest.mark.parametrize("recording", [True, False])
def test_tag_payment_names_the_payment_after_the_hop_began(recording, memory):
    if not recording:
        provider, _ = tracing._build_provider("ingest", {}, {})
        tracing._install(provider, exporting=False)
    with tracing.hop("ingest.score", None) as h:
        assert tracing.current_payment_hash() is None
        h.tag_payment("pi_test_42")
        assert tracing.current_payment_hash() == tracing.hash_id("pi_test_42")
        with tracing.hop("model.score", h.carrier):
            assert tracing.current_payment_hash() == tracing.hash_id("pi_test_42")
    assert tracing.current_payment_hash() is None
    if recording:
        attrs = {s.name: s.attributes for s in memory.get_finished_spans()}
        assert attrs["ingest.score"][tracing.PAYMENT_HASH_KEY] == (
            tracing.hash_id("pi_test_42")
        )
        assert attrs["model.score"][tracing.PAYMENT_HASH_KEY] == (
            tracing.hash_id("pi_test_42")
        )


def test_ids_with_underscores_are_hashed_too() -> None:
    cleaned = tracing.safe_attributes({"m": "failed for pi_test_ab12 and cus_x_1"})
    assert "pi_test" not in cleaned["m"] and "cus_x" not in cleaned["m"]


def test_a_hop_nests_under_a_local_server_span_of_the_same_trace(memory) -> None:
    # FastAPI's native telemetry continues the caller's traceparent in its own
    # HTTP span; the ingress hop, handed the same header, nests under it.
    from opentelemetry import propagate

    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"}
    http_tracer = tracing.tracer()
    with (
        http_tracer.start_as_current_span(
            "POST /v1/score", context=propagate.extract(header)
        ) as http_span,
        tracing.hop("ingress.score", header),
    ):
        pass
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert spans["ingress.score"].parent.span_id == http_span.get_span_context().span_id
    assert format(spans["POST /v1/score"].parent.span_id, "016x") == CALLER_PARENT


def test_a_route_hop_is_the_http_server_span(memory) -> None:
    # At the ingress the request's HTTP server span is the hop: it takes the
    # attributes and parents the next hop; no second span is made.
    from opentelemetry import propagate

    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"}
    with (
        tracing.tracer().start_as_current_span(
            "POST /v1/score", context=propagate.extract(header),
            kind=SpanKind.SERVER,
        ) as http_span,
        tracing.route_hop("ingress.score", header,
                          tracing.payment_attributes("pi_7")) as h,
    ):
        assert h.span is http_span
        with tracing.hop("ingest.score", h.carrier):
            pass
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert set(spans) == {"POST /v1/score", "ingest.score"}
    root = spans["POST /v1/score"]
    assert root.attributes[tracing.PAYMENT_HASH_KEY] == tracing.hash_id("pi_7")
    assert spans["ingest.score"].parent.span_id == root.context.span_id
    # The payment travelled in the baggage to the next hop.
    ingest = spans["ingest.score"]
    assert ingest.attributes[tracing.PAYMENT_HASH_KEY] == tracing.hash_id("pi_7")


def test_a_route_hop_without_a_server_span_makes_its_own(memory) -> None:
    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"}
    with tracing.route_hop("ingress.score", header) as h:
        assert h.trace_id == CALLER_TRACE
    (span,) = memory.get_finished_spans()
    assert span.name == "ingress.score"
    assert format(span.parent.span_id, "016x") == CALLER_PARENT
    # A server span of another trace is not the hop either.
    with (
        tracing.tracer().start_as_current_span("POST /v1/score"),
        tracing.route_hop("ingress.score", header) as h,
    ):
        assert h.trace_id == CALLER_TRACE


def test_a_route_hop_records_an_error_on_the_server_span(memory) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.tracer().start_as_current_span("POST /v1/score"),
        tracing.route_hop("ingress.score", None),
    ):
        raise RuntimeError("boom")
    (span,) = memory.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR


def test_without_export_no_global_provider_is_set() -> None:
    from opentelemetry import trace as otel_trace

    before = otel_trace.get_tracer_provider()
    provider, _ = tracing._build_provider("ingress", {}, {})
    tracing._install(provider, exporting=False)
    try:
        assert otel_trace.get_tracer_provider() is before
    finally:
        tracing._uninstall()


_LOG_SCRIPT = """
import logging
from fraudmesh import tracing
tracing.setup_tracing("policy")
assert not tracing.is_exporting()
with tracing.hop("policy.decide", None, tracing.payment_attributes("pi_9")) as h:
    logging.getLogger("services.policy").warning("declined: %s", "velocity")
print(h.trace_id)
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_fresh_process_logs_lines_with_trace_and_payment(log_format) -> None:
    # A new interpreter, as a replica is: setup_tracing is the only set-up.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["FRAUDMESH_LOG_FORMAT"] = log_format
    done = subprocess.run(
        [sys.executable, "-c", _LOG_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    trace_id = done.stdout.strip()
    [line] = [x for x in done.stderr.splitlines() if "declined" in x]
    payment_hash = tracing.hash_id("pi_9")
    if log_format == "json":
        entry = json.loads(line)
        assert entry["trace_id"] == trace_id
        assert entry["payment_hash"] == payment_hash
        assert entry["deployment"] == "policy"
        assert entry["message"] == "declined: velocity"
    else:
        assert f"trace={trace_id}" in line
        assert f"payment={payment_hash}" in line
        assert "[policy " in line


_REDIS_SCRIPT = """
import sys
import redis
from fraudmesh import tracing
tracing.setup_tracing("ingest")
client = redis.Redis.from_url(sys.argv[1])
with tracing.hop("ingest.score", None):
    with tracing.client_span("redis.idempotency.claim"):
        client.set("fm:test:trace", "1", ex=5)
tracing.shutdown_tracing()
"""


@pytest.mark.parametrize("flag", ["", "1"])
def test_redis_command_spans_only_when_asked(flag, redis_url) -> None:
    # A new interpreter, as a replica is: the instrumentation is process-wide.
    import os
    import subprocess
    import sys

    receiver = OtlpReceiver().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
               OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
               FRAUDMESH_TRACE_REDIS_COMMANDS=flag)
    try:
        subprocess.run([sys.executable, "-c", _REDIS_SCRIPT, redis_url], env=env,
                       capture_output=True, timeout=60, check=True)
        spans = receiver.wait_for(lambda s: len(s) >= 2, timeout_s=10)
    finally:
        receiver.stop()
    names = {s.name for s in spans}
    assert {"ingest.score", "redis.idempotency.claim"} <= names
    assert ("SET" in names) == (flag == "1")


def test_hops_make_one_span_per_trace_and_carry_each_payment_on(memory) -> None:
    # A wave: payments 0 and 2 of one request, payment 1 of another.
    with tracing.hop("ingest.score", None, tracing.payment_attributes("pi_a")) as a:
        pass
    with tracing.hop("ingest.score", None, tracing.payment_attributes("pi_b")) as b:
        pass
    memory.clear()
    carriers = [a.carrier, b.carrier, a.carrier]
    with tracing.hops("features.lookup", carriers) as h:
        with tracing.client_span("feast.online_read"):
            pass
        groups = h.groups(3)
        onward = h.carrier
    spans = memory.get_finished_spans()
    lookups = [s for s in spans if s.name == "features.lookup"]
    assert len(lookups) == 2
    by_trace = {format(s.context.trace_id, "032x"): s for s in lookups}
    assert set(by_trace) == {a.trace_id, b.trace_id}
    assert by_trace[a.trace_id].attributes["fraudmesh.batch_size"] == 2
    assert by_trace[b.trace_id].attributes["fraudmesh.batch_size"] == 1
    assert by_trace[b.trace_id].attributes[tracing.PAYMENT_HASH_KEY] == (
        tracing.hash_id("pi_b"))
    assert [rows for _, rows in groups] == [[0, 2], [1]]
    # The next hop gets one carrier per payment, each of its own trace.
    assert [c["traceparent"].split("-")[1] for c in onward] == [
        a.trace_id, b.trace_id, a.trace_id]
    # Client spans go under the first carrier's hop.
    (client,) = [s for s in spans if s.name == "feast.online_read"]
    assert client.parent.span_id == by_trace[a.trace_id].context.span_id


def test_hops_with_one_carrier_are_a_hop(memory) -> None:
    with tracing.hops("policy.decide", None, {"fraudmesh.batch_size": 3}) as h:
        assert isinstance(h.carrier, dict)
        assert [rows for _, rows in h.groups(3)] == [[0, 1, 2]]
    (span,) = memory.get_finished_spans()
    assert span.attributes["fraudmesh.batch_size"] == 3


def test_a_hops_context_is_its_own_payment_trace(memory) -> None:
    with tracing.hop("ingest.score", None) as a:
        pass
    with tracing.hop("ingest.score", None) as b:
        pass
    assert a.trace_id != b.trace_id
    memory.clear()
    with tracing.hops("actuation.act_many", [a.carrier, b.carrier]) as h:
        for one, _ in h.groups(2):
            with one.active():
                assert tracing.current_trace_id() == one.trace_id
    assert {s.name for s in memory.get_finished_spans()} == {"actuation.act_many"}
