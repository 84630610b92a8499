"""The mesh against its floor: a no-op chain of the same five hops, same settings.

Prints, in one run, side by side:

- p50 / p99 latency of single payments sent open loop at ``--rate`` (20/s);
- the most single payments per second (closed loop, ``--concurrency``);
- payments per second through ``/v1/score/batch`` with 64 payments per request.

Targets (issue 3): real p50/p99 within 1.5x of the no-op chain's; real max
single payments/s at least 0.7x the no-op chain's; batch at least 1,000/s.

Both run at once in one Ray instance, as two Serve applications behind the same
HTTP proxy (the real mesh at ``/``, the no-op chain at ``/noop``), and are
measured in alternating rounds (``--rounds``, each ``--seconds / --rounds``
long per measure): on a shared 2-core machine the speed drifts by tens of
percent over minutes, and alternation puts both sides under the same drift.
The no-op chain has the real deployments' options except its CPU reservation
(a token 0.01 each, so both fit Ray's 2 CPUs; a reservation does not limit
speed).

The real mesh traces every payment (``--sample-ratio 1``) to a discarding
OTLP/HTTP endpoint (benchmarks/otlp_sink.py, in its own process), so its
figures include making, batching, encoding and posting every span; the no-op
chain traces nothing. ``--no-tracing`` measures the real mesh without.

    .venv/bin/python benchmarks/bench_mesh.py [--seconds 20] [--rounds 4] [--no-fast]

The payments are the data's payments of one UTC day, the day after the warmed
state, in time order, sent again with fresh ids when the day runs out. The
Features deployment builds a day's snapshot once, at the first payment after
midnight UTC (about 2 s of CPU on the full data set; benchmarks/bench_features.py
prints it), and payments of that day wait for it. In production that is once a
day; a week of payments replayed in a few minutes would put several of these
builds inside the measures, which then measure the day boundary rather than
scoring.

Uses the trained model under the state dir (``fraudmesh train`` or the demo makes
one) and warms the online state with ``run_materialize``.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from fraudmesh.dataset import day_start, default_data_path, load_transactions
from orchestration.graph import deployment_options
from orchestration.replay import payment_body
from orchestration.serving import start_mesh, wait_ready

noop_api = FastAPI()
NOOP_CPU_RESERVATION = 0.01
NOOP_PREFIX = "/noop"


@serve.deployment
class NoopActuation:
    async def act_many(self, payments, decisions, scores, carrier=None):
        return [{"mode": "dry-run"} for _ in payments]


@serve.deployment
class NoopPolicy:
    def __init__(self, actuation):
        self._actuation = actuation

    async def decide(self, payments, scored, carrier=None):
        return await self._actuation.act_many.remote(payments, [], [], carrier=carrier)


@serve.deployment
class NoopModel:
    def __init__(self, policy):
        self._policy = policy

    async def score(self, payments, inputs, carrier=None):
        return await self._policy.decide.remote(payments, inputs, carrier=carrier)


@serve.deployment
class NoopFeatures:
    async def lookup(self, payments, carrier=None):
        return payments


@serve.deployment
class NoopIngest:
    def __init__(self, features, model):
        self._features = features
        self._model = model

    async def score(self, bodies, batch=False, carrier=None):
        inputs = await self._features.lookup.remote(bodies, carrier=carrier)
        await self._model.score.remote(bodies, inputs, carrier=carrier)
        return {"results": [{"payment_id": b["id"]} for b in bodies]}


@serve.deployment
@serve.ingress(noop_api)
class NoopIngress:
    def __init__(self, ingest):
        self._ingest = ingest

    @noop_api.post("/v1/score")
    async def score(self, request: Request):
        body = json.loads(await request.body())
        answer = await self._ingest.score.remote([body], False)
        return JSONResponse(answer["results"][0])

    @noop_api.post("/v1/score/batch")
    async def score_batch(self, request: Request):
        body = json.loads(await request.body())
        answer = await self._ingest.score.remote(body["payments"], True)
        return JSONResponse(answer)

    @noop_api.get("/healthz")
    async def healthz(self):
        return JSONResponse({"status": "ok"})


def noop_app():
    def opts(deployment, name):
        options = deployment_options(name)
        options.pop("user_config", None)
        options["ray_actor_options"] = {"num_cpus": NOOP_CPU_RESERVATION}
        return deployment.options(name=name, **options)

    actuation = opts(NoopActuation, "Actuation").bind()
    policy = opts(NoopPolicy, "Policy").bind(actuation)
    model = opts(NoopModel, "Model").bind(policy)
    features = opts(NoopFeatures, "Features").bind()
    ingest = opts(NoopIngest, "Ingest").bind(features, model)
    return opts(NoopIngress, "Ingress").bind(ingest)


class Bodies:
    """Real payments from the data set, with fresh ids so none is a repeat."""

    def __init__(self, frame, run: str) -> None:
        self._rows = frame.to_dict("records")
        self._run = run
        self._i = 0

    def next(self) -> dict[str, Any]:
        row = self._rows[self._i % len(self._rows)]
        body = payment_body(row)
        body["id"] = f"{body['id']}_{self._run}_{self._i}"
        self._i += 1
        return body


async def open_loop(url: str, bodies: Bodies, rate: float, seconds: float) -> dict:
    """Single payments at ``rate`` per second, each sent on time whatever the
    answers before it (open loop); the latency of each, after 10 warm-ups."""
    latencies_ms: list[float] = []
    errors = 0

    async def one(session):
        nonlocal errors
        started = time.perf_counter()
        async with session.post(f"{url}/v1/score", json=bodies.next()) as r:
            await r.read()
            if r.status != 200:
                errors += 1
        latencies_ms.append((time.perf_counter() - started) * 1000)

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(10):  # warm up
            await one(session)
        latencies_ms.clear()
        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
    return {"latencies_ms": latencies_ms, "errors": errors}


async def closed_loop(
    url: str, bodies: Bodies, concurrency: int, seconds: float, batch: int = 0
) -> dict:
    """``concurrency`` clients, each sending its next request on the answer."""
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session):
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            if batch:
                payload = {"payments": [bodies.next() for _ in range(batch)]}
                path = "/v1/score/batch"
            else:
                payload, path = bodies.next(), "/v1/score"
            async with session.post(url + path, json=payload) as r:
                await r.read()
                if r.status == 200:
                    done += batch or 1
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"done": done, "elapsed_s": elapsed, "errors": errors}


async def measure(targets: dict[str, tuple[str, Bodies]], args) -> dict:
    """Every measure on every target, in ``args.rounds`` alternating rounds."""
    piece = args.seconds / args.rounds
    raw: dict[str, dict[str, list]] = {
        name: {"open": [], "max": [], "batch": []} for name in targets
    }
    order = list(targets)
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}: {' then '.join(order)}", flush=True)
        for measure_name in ("open", "max", "batch"):
            for name in order:
                url, bodies = targets[name]
                if measure_name == "open":
                    got = await open_loop(url, bodies, args.rate, piece)
                elif measure_name == "max":
                    got = await closed_loop(url, bodies, args.concurrency, piece)
                else:
                    got = await closed_loop(
                        url, bodies, args.batch_concurrency, piece, batch=64
                    )
                raw[name][measure_name].append(got)
                if measure_name == "open":
                    lat = got["latencies_ms"]
                    print(f"  open {name}: p50 {np.percentile(lat, 50):.1f} "
                          f"p99 {np.percentile(lat, 99):.1f} ms", flush=True)
        order.reverse()  # whoever went first goes second next round
    return {name: summarise(parts) for name, parts in raw.items()}


def summarise(parts: dict[str, list]) -> dict:
    latencies = np.array([x for got in parts["open"] for x in got["latencies_ms"]])

    def rate(runs: list[dict]) -> float:
        return sum(r["done"] for r in runs) / sum(r["elapsed_s"] for r in runs)

    errors = sum(got["errors"] for runs in parts.values() for got in runs)
    return {
        "open": {
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "n": len(latencies),
        },
        "max": {"payments_per_s": rate(parts["max"])},
        "batch": {"payments_per_s": rate(parts["batch"])},
        "errors": errors,
    }


def warm_state(data: Path, day, redis_url: str) -> None:
    from orchestration.materialize import run_materialize

    run_materialize(data, day, redis_url=redis_url)


_OTEL_KEYS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


class Sink:
    """benchmarks/otlp_sink.py in a child process, on a free port."""

    def __init__(self) -> None:
        self.port = _free_port()
        script = Path(__file__).with_name("otlp_sink.py")
        self._proc = subprocess.Popen([sys.executable, str(script), str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def tracing_env(sink: Sink | None, ratio: float) -> dict[str, str | None]:
    """The OTEL_* settings of one run: the sink and the ratio, or none at all."""
    if sink is None:
        return dict.fromkeys(_OTEL_KEYS)
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


def start_both(args, sink: Sink | None):
    """The real mesh at ``/`` and the no-op chain at ``/noop``, one Ray."""
    # Set before Ray starts: every replica inherits this process's environment.
    saved = {k: os.environ.get(k) for k in _OTEL_KEYS}
    for key, value in tracing_env(sink, args.sample_ratio).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        mesh = start_mesh(
            port=args.port,
            state_dir=args.state_dir,
            fast=args.fast,
            models_dir=args.models_dir,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        serve.run(noop_app(), name="noop", route_prefix=NOOP_PREFIX, blocking=False)
        wait_ready(mesh.url + NOOP_PREFIX)
    except BaseException:
        mesh.stop()
        raise
    return mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="per measure and side, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--no-fast", dest="fast", action="store_false")
    parser.add_argument(
        "--no-tracing", dest="tracing", action="store_false",
        help="the real mesh without tracing (default: every payment traced)",
    )
    parser.add_argument("--sample-ratio", type=float, default=1.0)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--state-dir", type=Path, default=Path(".fraudmesh/bench"))
    args = parser.parse_args()
    args.port = args.port or _free_port()
    if args.models_dir is None:
        # The models `fraudmesh train` or the demo made, not the bench state dir's.
        from fraudmesh.config import get_settings

        args.models_dir = get_settings().models_path
    from models.artifact import find_latest

    if find_latest(args.models_dir) is None:
        sys.exit(f"bench_mesh: no model under {args.models_dir}; run `make demo` "
                 "or `fraudmesh train --until DATE` first")

    args.data = args.data or default_data_path()
    frame = load_transactions(args.data)
    first_day = (frame["tx_datetime"].max() - timedelta(days=7)).date()
    # One day's payments, sent again with fresh ids when they run out: the
    # measures stay inside one UTC day (see the module docstring).
    day = frame["tx_datetime"] >= day_start(first_day)
    day &= frame["tx_datetime"] < day_start(first_day) + timedelta(days=1)
    window = frame[day]
    run = uuid.uuid4().hex[:8]
    sink = Sink() if args.tracing else None
    try:
        mesh = start_both(args, sink)
        try:
            warm_state(args.data, first_day, mesh.redis_url)
            targets = {
                "noop": (mesh.url + NOOP_PREFIX, Bodies(window, run + "n")),
                "real": (mesh.url, Bodies(window, run + "r")),
            }
            before = sink.stats() if sink else None
            results = asyncio.run(measure(targets, args))
        finally:
            mesh.stop()  # replicas flush their last spans to the sink
        if sink is not None:
            after = sink.stats()
            results["real"]["otlp_exports"] = after["requests"] - before["requests"]
            results["real"]["otlp_bytes"] = after["bytes"] - before["bytes"]
    finally:
        if sink is not None:
            sink.stop()
    report(results, args)


def _free_port() -> int:
    from orchestration.serving import free_port

    return free_port()


def report(results: dict, args) -> None:
    noop, real = results.get("noop"), results.get("real")
    rows = [
        (f"p50 single @{args.rate:g}/s (ms)", "open", "p50_ms", 1.5, "<="),
        (f"p99 single @{args.rate:g}/s (ms)", "open", "p99_ms", 1.5, "<="),
        ("max single payments/s", "max", "payments_per_s", 0.7, ">="),
        ("batch-64 payments/s", "batch", "payments_per_s", None, ">="),
    ]
    print()
    print(f"{'':28} {'no-op chain':>12} {'real mesh':>12} {'ratio':>7}  target")
    for label, group, key, factor, sense in rows:
        a = noop[group][key] if noop else float("nan")
        b = real[group][key] if real else float("nan")
        ratio = b / a if a else float("nan")
        target = "real >= 1000" if factor is None else f"ratio {sense} {factor}"
        print(f"{label:28} {a:12.1f} {b:12.1f} {ratio:7.2f}  {target}")
    for name, r in results.items():
        print(f"{name}: {r['errors']} non-200 answers; fast settings: {args.fast}")
    print(
        f"{args.rounds} alternating rounds; {args.seconds:g} s per measure and "
        f"side in all; open loop: {noop['open']['n']} and {real['open']['n']} "
        "payments"
    )
    if real is not None:
        if args.tracing:
            print(
                f"real mesh tracing: sample ratio {args.sample_ratio:g}, "
                f"{real['otlp_exports']} OTLP exports, "
                f"{real['otlp_bytes'] / 1e6:.1f} MB received by the sink"
            )
        else:
            print("real mesh tracing: off (--no-tracing)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
