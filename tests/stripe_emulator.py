"""localstripe behind a recording proxy: the Stripe API the tests talk to.

Run as a subprocess (``python tests/stripe_emulator.py``); it prints
``READY <port>`` once both servers listen on loopback. The ``localstripe`` session
fixture (tests/conftest.py) starts and stops it.

Why a proxy in front of localstripe (1.15.10):

- localstripe rejects some parameters real Stripe accepts (``UNSUPPORTED`` below,
  each with the reason). fraudmesh sends Stripe's real parameters, never bent to
  the emulator; the proxy records every request exactly as the SDK sent it, then
  strips those parameters before forwarding, so the tests can check both the
  request and the state change in the emulator.
- localstripe has no idempotency keys. The proxy replays the first answer for a
  repeated ``Idempotency-Key``, as Stripe documents, so "a retry never acts twice"
  is checked over real HTTP.
- Faults (429, 5xx, a lost answer after the upstream acted) can be injected with
  ``POST /_emulator/faults`` to exercise retries and the circuit breaker.

localstripe pickles its store to a fixed /tmp path on every write; that is turned
off here so concurrent test sessions never share state.

Control endpoints: ``GET/DELETE /_emulator/requests``, ``POST/DELETE
/_emulator/faults``. Everything else is proxied to localstripe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from urllib.parse import parse_qsl

from aiohttp import ClientSession, web

UNSUPPORTED: list[tuple[str, str, tuple[str, ...], str]] = [
    (
        "POST",
        r"^/v1/payment_intents/[^/]+/cancel$",
        ("cancellation_reason",),
        "localstripe's cancel accepts no parameters",
    ),
    (
        "POST",
        r"^/v1/refunds$",
        ("reason",),
        "localstripe's Refund has no reason",
    ),
    (
        "POST",
        r"^/v1/payment_intents/[^/]+/confirm$",
        ("payment_method_options",),
        "localstripe's confirm accepts no payment_method_options",
    ),
]


def _strip(method: str, path: str, pairs: list[tuple[str, str]]) -> list[str]:
    removed: list[str] = []
    for m, pattern, names, _why in UNSUPPORTED:
        if m != method or not re.match(pattern, path):
            continue
        for key, _value in list(pairs):
            if any(key == n or key.startswith(n + "[") for n in names):
                pairs.remove((key, _value))
                removed.append(key)
    return removed


class Emulator:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        self.replies: dict[str, tuple[int, bytes, str]] = {}
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
        key = request.headers.get("Idempotency-Key")
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "params": dict(pairs),
            "idempotency_key": key,
            "stripe_version": request.headers.get("Stripe-Version"),
            "forwarded": False,
            "replayed": False,
        }
        self.requests.append(entry)
        fault = self._take_fault(request.method, request.path)
        if fault is not None and not fault.get("after_forward"):
            entry["status"] = fault["status"]
            return self._fault_response(fault)
        if key and request.method == "POST" and key in self.replies:
            status, data, ctype = self.replies[key]
            entry.update(replayed=True, status=status)
            return web.Response(
                status=status,
                body=data,
                content_type=ctype.split(";")[0],
                headers={"Idempotent-Replayed": "true", "Request-Id": "req_emu"},
            )
        entry["stripped"] = _strip(request.method, request.path, pairs)
        status, data, ctype = await self._forward(request, pairs)
        entry.update(forwarded=True, status=status)
        if key and request.method == "POST" and status < 500:
            self.replies[key] = (status, data, ctype)
        if fault is not None:  # the upstream acted; the answer is lost
            return self._fault_response(fault)
        return web.Response(
            status=status,
            body=data,
            content_type=ctype.split(";")[0],
            headers={"Request-Id": f"req_emu_{len(self.requests)}"},
        )

    async def _forward(
        self, request: web.Request, pairs: list[tuple[str, str]]
    ) -> tuple[int, bytes, str]:
        assert self.session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "stripe-version")
        }
        url = self.upstream + request.path
        if request.query_string:
            url += "?" + request.query_string
        data = None
        if request.method in ("POST", "DELETE"):
            data = (
                "&".join(f"{_q(k)}={_q(v)}" for k, v in pairs).encode()
                if pairs
                else b""
            )
        async with self.session.request(
            request.method, url, headers=headers, data=data
        ) as resp:
            return resp.status, await resp.read(), resp.content_type or "text/plain"

    def _take_fault(self, method: str, path: str) -> dict | None:
        for fault in self.faults:
            if fault.get("method", method) != method:
                continue
            if not re.search(fault["path_regex"], path):
                continue
            if fault["times"] <= 0:
                continue
            fault["times"] -= 1
            return fault
        return None

    @staticmethod
    def _fault_response(fault: dict) -> web.Response:
        headers = {"Request-Id": "req_fault"}
        if fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        if fault.get("should_retry") is not None:
            headers["Stripe-Should-Retry"] = str(fault["should_retry"]).lower()
        body = {"error": {"type": "api_error", "message": "injected fault"}}
        return web.json_response(body, status=fault["status"], headers=headers)

    # -- control ---------------------------------------------------------------

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({})

    async def add_fault(self, request: web.Request) -> web.Response:
        fault = await request.json()
        fault.setdefault("times", 1)
        self.faults.append(fault)
        return web.json_response(fault)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({})


class EmulatorProcess:
    """The emulator as a subprocess of the test session, with its control API."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self._read_ready(timeout_s)
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def _read_ready(self, timeout_s: float) -> str:
        import selectors

        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            self.stop()
            raise RuntimeError(f"Stripe emulator not ready within {timeout_s} s")
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"Stripe emulator failed to start: {line!r}")
        return line

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    # -- control API (blocking; tests call it between steps) --------------------

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def requests(self, path_regex: str = "") -> list[dict]:
        found = self._call("GET", "/_emulator/requests")
        assert isinstance(found, list)
        return [r for r in found if re.search(path_regex, r["path"])]

    def clear_requests(self) -> None:
        self._call("DELETE", "/_emulator/requests")

    def fault(self, path_regex: str, status: int, times: int = 1, **extra) -> None:
        fault = {"path_regex": path_regex, "status": status, "times": times, **extra}
        self._call("POST", "/_emulator/faults", fault)

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def main() -> None:
    from localstripe import resources
    from localstripe.server import app as localstripe_app

    # No shared /tmp/localstripe.pickle between concurrent sessions.
    resources.Store.dump_to_disk = lambda self: None

    upstream_sock = _loopback_socket()
    runner_up = web.AppRunner(localstripe_app, access_log=None)
    await runner_up.setup()
    await web.SockSite(runner_up, upstream_sock).start()
    upstream = f"http://127.0.0.1:{upstream_sock.getsockname()[1]}"

    emulator = Emulator(upstream)
    emulator.session = ClientSession()
    proxy = web.Application(client_max_size=16 * 1024 * 1024)
    proxy.router.add_get("/_emulator/requests", emulator.get_requests)
    proxy.router.add_delete("/_emulator/requests", emulator.clear_requests)
    proxy.router.add_post("/_emulator/faults", emulator.add_fault)
    proxy.router.add_delete("/_emulator/faults", emulator.clear_faults)
    proxy.router.add_route("*", "/{tail:.*}", emulator.handle)
    proxy_sock = _loopback_socket()
    runner = web.AppRunner(proxy, access_log=None)
    await runner.setup()
    await web.SockSite(runner, proxy_sock).start()

    print(f"READY {proxy_sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.session.close()
        await runner.cleanup()
        await runner_up.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
