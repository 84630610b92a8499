"""The cost of tracing per payment, on versus off, measured in the same run.

Two parts, both printed:

1. ``hops``: in-process cost of the tracing a payment goes through (six hop
   spans with a carrier handed from one to the next, as the mesh does, plus
   four client spans), with tracing absent (plain calls), set up without an
   endpoint (trace ids only, nothing recorded), and exporting over OTLP/HTTP to
   a real receiver in a child process. Microseconds per payment, wall and CPU.
2. ``mesh`` (``--mesh``): the real mesh twice in one Ray instance, one
   application with tracing exporting to the receiver and one without an
   endpoint, fed the same real payments alternately: p50 / p99 of single
   payments at ``--rate`` (open loop) and the most payments per second
   (closed loop), and the CPU time the app's replicas spend per payment at that
   rate (steadier than latency when other work shares the machine). Needs a
   trained model (``fraudmesh train`` or the demo) and ``REDIS_URL``.

    .venv/bin/python benchmarks/bench_tracing.py            # hops only
    REDIS_URL=redis://127.0.0.1:6379/14 \\
      .venv/bin/python benchmarks/bench_tracing.py --mesh [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fraudmesh import tracing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

HOPS = ("ingress", "ingest", "features", "model", "policy", "actuation")
CLIENT_SPANS = ("redis.history.read", "feast.online_read", "redis.history.append")
SPANS_PER_PAYMENT = len(HOPS) + len(CLIENT_SPANS) + 1  # + stripe.capture


# ------------------------------------------------------------------ receiver


class ReceiverProcess:
    """The test OTLP/HTTP receiver in a child process, so that decoding spans
    does not compete with the measured process for its interpreter lock (a
    collector or Jaeger runs elsewhere too)."""

    def __init__(self) -> None:
        import subprocess

        from orchestration.serving import free_port

        self.port = free_port()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_receiver", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.endpoint = self._proc.stdout.readline().strip()
        if not self.endpoint:
            raise RuntimeError("the OTLP receiver process did not start")

    def spans(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"{self.endpoint}/count", timeout=10) as r:
            return json.load(r)["spans"]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


# ------------------------------------------------------------------ hops


def _one_payment_traced(i: int) -> str | None:
    carrier: dict[str, str] | None = None
    attrs = tracing.payment_attributes(f"pi_{i}")
    trace_id = None
    for n, name in enumerate(HOPS):
        with tracing.hop(f"{name}.score", carrier, attrs if n == 0 else None) as h:
            if name == "features":
                for client in CLIENT_SPANS:
                    with tracing.client_span(client, {"fraudmesh.batch_size": 1}):
                        pass
            if name == "actuation":
                with tracing.client_span("stripe.capture"):
                    pass
            if name == "policy":
                h.set(decision="allow", score_bucket=tracing.score_bucket(0.12))
            carrier = h.carrier
            trace_id = trace_id or h.trace_id
    return trace_id


def _one_payment_plain(i: int) -> str | None:
    # The same call structure with no tracing at all: the floor.
    carrier: dict[str, str] = {}
    for _name in HOPS:
        carrier = dict(carrier)
    return None


def _per_payment(fn, n: int, flush=None, repeats: int = 5) -> tuple[float, float]:
    """Median (wall µs, CPU µs) per payment over ``repeats`` runs of ``n``.

    CPU time is the whole process's (the export thread included, and the
    final ``flush`` of what is still queued), so it holds up better than wall
    time when other work shares the machine.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            fn(i)
        if flush is not None:
            flush()
        walls.append((time.perf_counter() - wall) / n * 1e6)
        cpus.append((time.process_time() - cpu) / n * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def bench_hops(n: int) -> dict[str, float]:
    """µs per payment: plain, tracing without endpoint, tracing exporting."""
    results: dict[str, float] = {}
    results["plain_us"], results["plain_cpu_us"] = _per_payment(_one_payment_plain, n)

    provider, exporting = tracing._build_provider("bench", {}, {})
    assert not exporting
    tracing._install(provider, exporting=False)
    results["off_us"], results["off_cpu_us"] = _per_payment(_one_payment_traced, n)
    tracing._uninstall()

    receiver = ReceiverProcess()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    provider, exporting = tracing._build_provider("bench", {}, env)
    assert exporting
    tracing._install(provider, exporting=True)
    results["on_us"], results["on_cpu_us"] = _per_payment(
        _one_payment_traced, n, flush=lambda: provider.force_flush(60_000)
    )
    provider.shutdown()
    tracing._uninstall()
    results["spans_received"] = receiver.spans()
    results["spans_made"] = 5 * n * SPANS_PER_PAYMENT
    receiver.stop()
    return results


# ------------------------------------------------------------------ mesh


def _serve_config(out: Path, env: dict[str, str]) -> Path:
    """The project's serve config for a side-by-side run: ``env`` in every
    replica's environment, one replica per deployment and half the CPUs each,
    so that two copies of the mesh fit in one 2-CPU Ray instance."""
    import yaml

    from orchestration.graph import SERVE_CONFIG_PATH

    config = yaml.safe_load(SERVE_CONFIG_PATH.read_text())
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            actor = deployment.setdefault("ray_actor_options", {})
            actor["num_cpus"] = float(actor.get("num_cpus", 0.1)) / 2
            runtime_env = actor.setdefault("runtime_env", {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 1
    out.write_text(yaml.safe_dump(config))
    return out


def _app(config_path: Path, models_dir: Path | None) -> Any:
    from orchestration.graph import build_app

    return build_app(models_dir=models_dir, config_path=config_path)


def _replica_cpu_s(app: str) -> float:
    """CPU seconds used so far by this run's replicas of ``app``.

    Replicas are found among this process's descendants (the Ray instance it
    started) by their process title, ``ray::ServeReplica:<app>:<deployment>``,
    so other meshes on the machine are not counted.
    """
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if f"ServeReplica:{app}:" in title:
                times = proc.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


async def _measure_mesh(urls: dict[str, str], bodies: Any, args) -> dict:
    from benchmarks.bench_mesh import closed_loop, open_loop

    out: dict[str, dict[str, list]] = {name: {} for name in urls}
    for _round in range(args.rounds):
        # Alternate so that drift on the shared machine hits both alike.
        for name, (app, url) in urls.items():
            cpu = _replica_cpu_s(app)
            o = await open_loop(url, bodies, args.rate, args.seconds)
            cpu_ms = (_replica_cpu_s(app) - cpu) * 1000 / max(o["n"], 1)
            m = await closed_loop(url, bodies, args.concurrency, args.seconds)
            for key, value in (
                ("p50_ms", o["p50_ms"]),
                ("p99_ms", o["p99_ms"]),
                ("cpu_ms", cpu_ms),
                ("max_per_s", m["payments_per_s"]),
                ("errors", o["errors"] + m["errors"]),
            ):
                out[name].setdefault(key, []).append(value)
    return {
        name: {k: statistics.median(v) for k, v in series.items()}
        for name, series in out.items()
    }


def bench_mesh(args) -> dict:
    import tempfile
    import uuid
    from datetime import timedelta

    from ray import serve

    from benchmarks.bench_mesh import Bodies
    from fraudmesh.dataset import default_data_path, load_transactions
    from orchestration.serving import APP_NAME, free_port, start_mesh, wait_ready

    if not os.environ.get("REDIS_URL"):
        raise SystemExit("--mesh needs REDIS_URL (e.g. redis://127.0.0.1:6379/14)")
    receiver = ReceiverProcess()
    traced_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        os.environ.pop(key, None)  # the untraced app must have no endpoint
    data = args.data or default_data_path()
    frame = load_transactions(data)
    first_day = (frame["tx_datetime"].max() - timedelta(days=7)).date()
    window = frame[frame["tx_datetime"] >= frame["tx_datetime"].max() - timedelta(7)]
    bodies = Bodies(window, uuid.uuid4().hex[:8])

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    off_config = _serve_config(tmp / "off.yaml", {})
    on_config = _serve_config(tmp / "on.yaml", traced_env)
    # The untraced copy at "/", started with Ray; the traced one beside it.
    mesh = start_mesh(
        port=free_port(),
        state_dir=args.state_dir,
        fast=args.fast,
        models_dir=args.models_dir,
        app=_app(off_config, args.models_dir),
    )
    try:
        if not args.cold:
            from orchestration.materialize import run_materialize

            run_materialize(data, first_day, redis_url=mesh.redis_url)
        serve.run(
            _app(on_config, args.models_dir),
            name="fraudmesh-traced",
            route_prefix="/traced",
            blocking=False,
        )
        wait_ready(f"{mesh.url}/traced")
        urls = {
            "off": (APP_NAME, mesh.url),
            "on": ("fraudmesh-traced", f"{mesh.url}/traced"),
        }
        print("measuring the mesh, tracing off and on ...", flush=True)
        results = asyncio.run(_measure_mesh(urls, bodies, args))
    finally:
        mesh.stop()
        time.sleep(1.0)
        results_spans = receiver.spans()
        receiver.stop()
    results["spans_received"] = results_spans
    return results


# ------------------------------------------------------------------ report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--mesh", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--no-fast", dest="fast", action="store_false")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--state-dir", type=Path, default=Path(".fraudmesh/bench"))
    parser.add_argument(
        "--cold", action="store_true", help="skip warming the online state"
    )
    args = parser.parse_args()

    hops = bench_hops(args.payments)
    print(
        f"\ntracing cost in-process, per payment ({SPANS_PER_PAYMENT} spans; "
        f"{args.payments} payments x 5; median)"
    )
    print(f"{'':28} {'wall µs':>9} {'CPU µs':>9}")
    for key, label in (
        ("plain", "no tracing at all"),
        ("off", "tracing off (no endpoint)"),
        ("on", "tracing on (OTLP/HTTP)"),
    ):
        print(f"  {label:26} {hops[key + '_us']:9.1f} {hops[key + '_cpu_us']:9.1f}")
    on_off = hops["on_us"] - hops["off_us"]
    on_off_cpu = hops["on_cpu_us"] - hops["off_cpu_us"]
    print(f"  {'on - off':26} {on_off:9.1f} {on_off_cpu:9.1f}")
    print(f"  spans received {hops['spans_received']} of {hops['spans_made']}")
    result = {"hops": hops}

    if args.mesh:
        mesh = bench_mesh(args)
        off, on = mesh["off"], mesh["on"]
        print(f"\nreal mesh, same Ray run, {args.rounds} alternating rounds (median)")
        print(f"{'':26} {'off':>9} {'on':>9} {'on-off':>9} {'ratio':>7}")
        for key, label in (
            ("p50_ms", f"p50 single @{args.rate:g}/s ms"),
            ("p99_ms", f"p99 single @{args.rate:g}/s ms"),
            ("cpu_ms", "replica CPU ms / payment"),
            ("max_per_s", "max single payments/s"),
        ):
            a, b = off[key], on[key]
            print(f"{label:26} {a:9.1f} {b:9.1f} {b - a:9.1f} {b / a:7.2f}")
        print(f"non-200 answers: off {off['errors']:.0f}, on {on['errors']:.0f}; "
              f"spans received {mesh['spans_received']}")  # fmt: skip
        result["mesh"] = mesh
    print(json.dumps(result))


if __name__ == "__main__":
    main()
